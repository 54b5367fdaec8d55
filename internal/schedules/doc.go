// Package schedules owns snapshot schedules (hypeman 0.3.0's
// /instances/{id}/snapshot-schedule): their validation, their persisted
// records, and the controller that takes the scheduled snapshots and prunes
// them by retention.
//
// Why it is shaped this way:
//
//   - One record per instance, a versioned JSON file written atomically
//     (temp, fsync, rename) under <data>/schedules. The record carries
//     next_run_at, so a restarted daemon resumes the schedule instead of
//     starting it over; a run missed while the daemon was down runs once at
//     start (next_run_at then moves to now+interval), never once per missed
//     interval.
//   - The record also lists the snapshots this schedule took. Retention
//     (max_count, max_age) prunes only those: a manual snapshot of the same
//     instance, or one taken by an earlier, deleted schedule, is never
//     touched. A listed snapshot a user deleted is dropped from the list.
//   - A run is the manager's ordinary Standby-kind snapshot of a Running
//     instance (pause, save, resume: the instance keeps running and is
//     paused only for the save). An instance that is not Running is skipped
//     and the run records why in last_error, as do failed snapshots and
//     prunes; the schedule carries on.
//   - The controller follows the lifecycle bus only to drop the schedule of
//     a deleted instance; timing is one timer for the earliest next_run_at
//     on an injectable clock, so tests drive it with a fake clock.
package schedules
