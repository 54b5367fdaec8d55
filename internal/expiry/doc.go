// Package expiry owns automatic instance expiry (hypeman 0.3.0's ttl /
// expires_at): turning the request fields into an absolute deadline, and
// the controller that deletes an instance when its deadline passes.
//
// Why it is shaped this way:
//
//   - The deadline is stored as an absolute time in the instance's own
//     metadata (written atomically by the manager), never as a timer: a
//     daemon that restarts re-arms from the metadata, and an instance whose
//     deadline passed while the daemon was down is deleted once at start.
//   - The controller never decides on a stale read. It asks the manager to
//     DeleteExpired(id, now), which re-checks the persisted deadline under
//     the instance's operation lock in the same critical section as the
//     delete: a PATCH that extended or cleared the ttl in between wins, and
//     a second wake-up (or a restarted daemon) finds the instance gone and
//     does nothing. The delete itself is the manager's crash-safe delete, so
//     "acts at most once" holds across restarts.
//   - It reacts to the lifecycle bus (a new or changed instance is re-read)
//     and to Refresh (PATCH), and keeps one timer for the earliest deadline;
//     the clock is injectable so tests run without sleeping.
package expiry
