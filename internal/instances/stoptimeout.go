package instances

// Stop timeouts: how long a stopped instance's program has between SIGTERM
// and SIGKILL.
//
// An instance's stop_timeout is set at create (default the server's
// GuestStopTimeout, resolved and persisted in Metadata.StopTimeout, so a
// later change of the server default never disagrees with what a running
// guest was booted with; metadata written before the field existed has ""
// and gets the server default). It is given to the guest init in its config
// at every boot, cold or warm (the per-run program config, never the
// template's), so the guest kills the program itself when the window ends
// and reports how it ended. The host waits that long plus the guest's
// teardown before it ends the VM itself. stopTimeout is the one place that
// derives the window from an instance.
//
// A stop request may shorten the window for that stop (StopParams.Timeout;
// the Kubernetes provider maps a pod's deletion grace period to it). The
// guest's own deadline was fixed at boot, so a shorter window is enforced
// on the host: the graceful request as usual, then, if the VM has not
// ended after the window plus shortStopSlack, the VMM is killed. 0s kills
// at once. A longer window than the instance's is refused: the guest would
// kill the program before it ends anyway.

import (
	"fmt"
	"time"

	"hypeman/internal/durations"
)

// Bounds of an instance's stop_timeout.
const (
	MinStopTimeout = time.Second
	MaxStopTimeout = time.Hour
)

// Slack the host adds to a stop window for the guest to tear down (stop
// the agent, unmount, sync, print its exit line, power off) once the
// program is gone. A shortened stop uses less: the caller asked for a
// bound.
const (
	stopTeardownSlack = 5 * time.Second
	shortStopSlack    = 2 * time.Second
)

// parseStopTimeout validates a create request's stop_timeout ("" = def)
// and returns the value to persist. The guest init counts whole seconds:
// it gets the value rounded up (guestStopSeconds), which the host's wait
// covers.
func parseStopTimeout(s string, def time.Duration) (string, error) {
	if s == "" {
		return durations.Format(def), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return "", &InvalidArgumentError{Field: "stop_timeout", Reason: fmt.Sprintf("%q is not a Go duration (e.g. 30s, 2m)", s)}
	}
	if d < MinStopTimeout || d > MaxStopTimeout {
		return "", &InvalidArgumentError{Field: "stop_timeout", Reason: fmt.Sprintf("%s is out of range (%s to %s)", s, durations.Format(MinStopTimeout), durations.Format(MaxStopTimeout))}
	}
	return durations.Format(d), nil
}

// stopTimeout is meta's SIGTERM → SIGKILL window: its stop_timeout, else
// the server's default.
func (m *Manager) stopTimeout(meta Metadata) time.Duration {
	if d, err := time.ParseDuration(meta.StopTimeout); err == nil && d > 0 {
		return d
	}
	return m.cfg.GuestStopTimeout
}

// guestStopSeconds is the window in the guest config's whole seconds
// (rounded up, never below 1).
func guestStopSeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

// StopParams change one stop.
type StopParams struct {
	// Timeout is this stop's SIGTERM → SIGKILL window, a Go duration from
	// 0s (kill at once) to the instance's stop_timeout; "" = the
	// instance's stop_timeout.
	Timeout string
}

// window resolves p against an instance whose stop timeout is full: the
// window of this stop and whether it is shorter than the guest's own.
func (p StopParams) window(full time.Duration) (time.Duration, bool, error) {
	if p.Timeout == "" {
		return full, false, nil
	}
	d, err := time.ParseDuration(p.Timeout)
	if err != nil {
		return 0, false, &InvalidArgumentError{Field: "timeout", Reason: fmt.Sprintf("%q is not a Go duration (e.g. 0s, 5s)", p.Timeout)}
	}
	if d < 0 || d > full {
		return 0, false, &InvalidArgumentError{Field: "timeout", Reason: fmt.Sprintf(
			"%s is out of range: 0s to the instance's stop_timeout (%s, set at create)", p.Timeout, durations.Format(full))}
	}
	return d, d < full, nil
}
