// Package restart owns the restart policy of instances: the policy and
// status types (API and persisted JSON), the pure decision logic (backoff
// delay, whether and when to restart, when to give up), and the controller
// that applies it by reacting to lifecycle events.
//
// Why it is shaped this way:
//
//   - Every decision is one pure function, Decide, of what is persisted
//     (policy, status, exit information, start/stop times) and the current
//     time. The controller, the wait endpoint's restart-pending predicate
//     (Pending) and the checks run under the instance lock all call it, so
//     they cannot disagree, and a daemon restarted mid-backoff resumes from
//     the persisted NextAttemptAt instead of from in-memory timers.
//   - The controller never starts or stops a VM itself: it hands the
//     instance manager a check function (Instances.StartForRestart /
//     StopForRestart) that the manager runs under the instance's operation
//     lock, in the same critical section as the start or stop. A manual stop
//     that lands between the controller's decision and the start is
//     therefore seen by the check and wins (the TOCTOU found in hypeman's
//     review); a duplicate wake-up finds the instance no longer Stopped and
//     does nothing, so there is no double start.
//   - Health-check failures use the same path: the instance is stopped now
//     (no unhealthy VM kept running through the backoff) with
//     NextAttemptAt already set and last_reason=health_check_failed, and is
//     started again by the ordinary backoff machinery, under the same
//     backoff, max_attempts and stable_after rules.
//   - The manager, the clock, the random source and metrics are small
//     interfaces declared here (the consumer); tests drive the controller
//     with a fake clock and a fake manager that has the manager's lock
//     discipline.
package restart
