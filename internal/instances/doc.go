// Package instances is the instance manager: it owns every instance's
// lifecycle (create, start, stop, delete, standby/restore/fork, templates), its
// on-disk metadata, and the derivation of its state.
//
// Why it is shaped this way:
//   - State is derived on read, never stored: the truth is whether a VMM
//     process lives, what it reports over its control channel, and which
//     markers the guest printed. A stored state would go stale the moment the
//     daemon died or a guest exited on its own.
//   - Metadata (what the user asked for, exit info, timestamps) is one JSON file
//     per instance written atomically, cached in memory for fast listing.
//   - Every operation takes the instance's own lock and checks a single-hop
//     transition table first, so concurrent API calls cannot interleave on
//     one instance and invalid requests fail with the allowed actions.
//   - A watcher goroutine follows each live VM (serial markers, process exit)
//     and publishes derived transitions, so changes that happen while nobody
//     calls the API are still observed and recorded.
//   - A daemon may be killed at any instant. Every multi-step operation
//     (standby, restore, delete, fork, the temporary standby of a fork from
//     Running) persists its intent in metadata before its first step, and
//     load finishes or rolls it back (adoptTransition, discardAtLoad,
//     finishReturn); the temporary files an interrupted step
//     leaves are removed at load. Metadata a build cannot read (a newer
//     format version) is never written over: that instance shows as Unknown
//     with the reason and the others load.
//   - A VM's exit is recorded (exit code, reason) before anyone can see it
//     Stopped: readers that find the VMM gone or exiting wait for the
//     watcher's record (read).
//   - Templates (templates.go, hypeman PR #229's semantics): a promoted
//     Standby instance is a fork source; forks record their Template, whose
//     fork count is recomputed from them (at load too), and restore, start,
//     delete or demote of a Template with forks is refused naming them.
//   - Stop timeouts (stoptimeout.go): each instance has its own SIGTERM →
//     SIGKILL window, enforced by the guest init; a stop may shorten it,
//     which the host enforces (the guest's deadline is fixed at boot).
//   - Dependencies (images, hypervisor, guest agent, event sink) are small
//     interfaces declared here, at the consumer.
package instances
