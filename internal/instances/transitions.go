package instances

import (
	"slices"
	"strings"

	"hypeman/internal/instances/state"
)

// Action is a user-requested lifecycle operation.
type Action string

const (
	ActionStart   Action = "start"
	ActionStop    Action = "stop"
	ActionDelete  Action = "delete"
	ActionStandby Action = "standby"
	ActionRestore Action = "restore"
	ActionPause   Action = "pause"
	ActionResume  Action = "resume"
	ActionFork    Action = "fork"
	ActionExec    Action = "exec"
	// Templates (templates.go).
	ActionPromote Action = "promote-template"
	ActionDemote  Action = "demote-template"
)

// allowed is the single-hop transition table: which actions each state
// accepts. Delete is always allowed (it stops what runs). Stop from
// Unknown/Shutdown/Created kills the VMM; it is how a user recovers.
var allowedActions = map[state.State][]Action{
	state.Created:      {ActionStop, ActionDelete},
	state.Initializing: {ActionStop, ActionDelete},
	state.Running:      {ActionStop, ActionStandby, ActionPause, ActionFork, ActionExec, ActionDelete},
	state.Paused:       {ActionResume, ActionStop, ActionStandby, ActionDelete},
	state.Shutdown:     {ActionStop, ActionDelete},
	state.Stopped:      {ActionStart, ActionFork, ActionDelete},
	state.Standby:      {ActionRestore, ActionFork, ActionPromote, ActionDelete},
	// Restore, delete and demote of a Template are refused while it has
	// forks (templates.go); restore un-promotes it first.
	state.Template: {ActionFork, ActionRestore, ActionDemote, ActionDelete},
	state.Unknown:  {ActionStop, ActionDelete},
}

// Allowed returns the actions permitted in s.
func Allowed(s state.State) []Action { return slices.Clone(allowedActions[s]) }

// checkTransition returns a *TransitionError when a is not allowed in s.
func checkTransition(a Action, s state.State) error {
	if slices.Contains(allowedActions[s], a) {
		return nil
	}
	return &TransitionError{Action: a, State: s, Allowed: Allowed(s)}
}

func joinActions(as []Action) string {
	ss := make([]string, len(as))
	for i, a := range as {
		ss[i] = string(a)
	}
	return strings.Join(ss, ", ")
}
