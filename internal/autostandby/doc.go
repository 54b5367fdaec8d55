// Package autostandby owns idle-based automatic standby (hypeman 0.3.0's
// auto_standby): the policy type persisted in instance metadata, the
// diagnostic status (AutoStandbyStatus's status/reason enums), holds, the
// connection observer that reads the host's conntrack table, and the
// controller that puts an idle instance on standby through the instance
// manager's normal standby path.
//
// Why it is shaped this way:
//
//   - Idleness is "no qualifying inbound TCP connection for idle_timeout",
//     observed from the host side: guests are reached through a bridge, so
//     every inbound connection (from a peer on the bridge, through a
//     published port, or from hypemand's ingress proxy) has a conntrack
//     entry in the namespace that holds the bridge. The controller dumps
//     that table (netlink, see ConntrackObserver) once per poll for all
//     tracked instances; nothing runs in the guest.
//   - A connection that opens and closes between two polls still leaves an
//     entry (TIME_WAIT / CLOSE linger in conntrack for a while): every entry
//     the controller has not seen before counts as activity and restarts
//     the countdown, so short requests are not missed.
//   - The race hypeman fixed in its PR #318 (a connection arriving while the
//     standby is being taken) is closed under the instance's operation lock:
//     the manager pauses the VM, the controller's check dumps conntrack
//     again, and any new or still active qualifying connection makes the
//     manager resume the VM instead of saving it (the packets that queued
//     during the pause are then delivered; nothing is cut). A SYN that
//     arrives after that check reaches a VM that is being saved: the
//     client's TCP retransmits it, and an ingress request is held by the
//     wake path until the instance is restored.
//   - Which instances are tracked comes from the lifecycle events bus (a
//     state change re-evaluates that instance) plus a slow reconcile; the
//     policy lives in the instance's metadata, holds in a versioned state
//     file of their own written atomically, so both survive a daemon
//     restart. A countdown does not: after a restart it starts again, which
//     can only delay a standby, never cut a connection.
//   - The manager, clock, observer and metrics are small interfaces declared
//     here; unit tests drive the controller with a fake clock and a fake
//     observer.
package autostandby
