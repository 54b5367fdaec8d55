// Package health owns instance health checks: the check and status types
// (API and persisted JSON), the pure state machine that turns one probe
// result into the next status (Apply), and the controller that probes
// Running instances and reports an unhealthy one to the restart policy.
//
// Why it is shaped this way:
//
//   - The state machine is a pure function of (check, status, result, now,
//     start of the boot), so the start period and both thresholds are
//     unit-tested without clocks or VMs, and a daemon restarted while an
//     instance runs carries on from the persisted counters.
//   - The controller does not know how to reach a guest: probing is a
//     three-method Prober interface the instance manager implements with
//     the guest's IP and agent. Nor does it know restart policies: it tells
//     a Restarter (the restart controller) that a boot went unhealthy, and
//     the restart policy decides whether that means a restart; a
//     report-only check (Check.ReportOnly, a readiness check) is never
//     reported, so its verdict only shows in the status. Persistence
//     goes through a small Instances interface whose update callback runs
//     under the instance lock and carries the boot, so a result computed for
//     an earlier boot is never written over a newer one.
//   - One goroutine per checked instance, started when the instance becomes
//     Running (lifecycle events) and stopped when it leaves Running, plus a
//     periodic reconcile that catches missed events and configuration
//     changes. Timers, including the probe timeout, come from an injected
//     clock so tests drive everything with a fake one.
package health
