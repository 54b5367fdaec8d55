// Package state owns the names of instance states, the one definition shared
// by the instance manager, the lifecycle event bus, the wait engine, the API
// layer and the CLI.
//
// Why a leaf package: the manager (internal/instances) imports the event bus,
// and the bus must speak about states, so the state vocabulary cannot live in
// either of them without an import cycle. The strings are hypeman's exact
// wire values ("Running", not "running"); parsing is therefore exact and
// case-sensitive, so what we accept is exactly what hypeman accepts.
package state

import (
	"errors"
	"fmt"
	"strings"
)

// State is an instance lifecycle state as it appears on the wire.
type State string

// The instance states (hypeman's names).
const (
	Created      State = "Created"      // metadata and disks exist, VM never started
	Initializing State = "Initializing" // VMM launched, guest program not started yet
	Running      State = "Running"      // guest program running
	Paused       State = "Paused"       // vCPUs paused, memory resident
	Shutdown     State = "Shutdown"     // guest powered off, VMM still alive
	Stopped      State = "Stopped"      // no VMM process; program exited or was stopped
	Standby      State = "Standby"      // memory snapshotted to disk, no VMM process
	Template     State = "Template"     // a Standby instance promoted to fork source (hypeman PR #229); not woken while forks exist
	Unknown      State = "Unknown"      // state could not be determined
)

// ErrInvalid is wrapped by every error Parse returns.
var ErrInvalid = errors.New("invalid state")

// All returns every state in lifecycle order. The slice is fresh on each call.
func All() []State {
	return []State{Created, Initializing, Running, Paused, Shutdown, Stopped, Standby, Template, Unknown}
}

// Valid reports whether s is one of the defined states.
func (s State) Valid() bool {
	switch s {
	case Created, Initializing, Running, Paused, Shutdown, Stopped, Standby, Template, Unknown:
		return true
	}
	return false
}

// TerminalForWait reports whether a waiter that is not waiting for s should
// give up (return early, not timed out) when the instance reaches s: nothing
// will move the instance out of s by itself (unless a restart is pending,
// which the wait engine checks separately).
func (s State) TerminalForWait() bool {
	switch s {
	case Stopped, Standby, Template, Shutdown, Paused, Unknown:
		return true
	}
	return false
}

// String returns the wire name.
func (s State) String() string { return string(s) }

// Parse returns the State named exactly s (case-sensitive, hypeman's names).
func Parse(s string) (State, error) {
	st := State(s)
	if !st.Valid() {
		return "", fmt.Errorf("%w %q: want one of %s", ErrInvalid, s, names())
	}
	return st, nil
}

func names() string {
	all := All()
	out := make([]string, len(all))
	for i, s := range all {
		out[i] = string(s)
	}
	return strings.Join(out, ", ")
}
