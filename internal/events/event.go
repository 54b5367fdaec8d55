// Package events owns instance lifecycle events: the in-memory bus every
// state change is published on, the bounded history behind SSE
// Last-Event-ID resume, the wait-for-state engine behind
// GET /instances/{id}/wait. (The HTTP layer, internal/api, encodes events
// as SSE.)
//
// Why it is shaped this way:
//
//   - One mutex orders everything. Publish assigns the event ID, appends to
//     the history ring and hands the event to each interested subscriber
//     while holding the bus lock, so every subscriber sees events in ID order
//     even with many concurrent publishers, and subscription removal (which
//     closes the channel under the same lock) can never race a send: there is
//     no "send on closed channel" path to guard against. The critical section
//     is O(subscribers of that instance + global subscribers) and never
//     blocks: sends are non-blocking.
//   - A slow consumer is cut off, not waited for. When a subscriber's buffer
//     is full the bus closes that subscription, counts the drop (metric
//     hypeman_events_dropped_total{consumer,reason}) and records a *LagError
//     on it. The consumer still drains every event it was given (in order),
//     then sees the channel closed and learns from Err exactly which event ID
//     it missed first; SubscribeSince resumes gap-free from the history when
//     the missed events are still retained. A closed channel is the signal
//     every Go consumer already handles, which a side "dropped" flag is not.
//   - Event IDs are seeded from the wall clock (microseconds) by default, so
//     they keep increasing across daemon restarts and a Last-Event-ID from a
//     previous daemon is recognised as "history lost" instead of being
//     silently mis-resumed.
//   - Wait takes every dependency (state reader, restart predicate, clock,
//     logger) as a parameter, so the manager's WaitForState is a thin wrapper
//     and the semantics are unit-tested here with a fake clock.
//   - Metrics are a two-method interface defined here (the consumer); the
//     Prometheus implementation lives in internal/events/eventsprom so this
//     package stays dependency-free.
package events

import (
	"time"

	"hypeman/internal/instances/state"
)

// Type is the kind of a lifecycle event. It is also the SSE "event:" field.
type Type string

const (
	// TypeStateChange is a transition From → To.
	TypeStateChange Type = "state_change"
	// TypeDeleted means the instance is gone. From is its last state, To is "".
	TypeDeleted Type = "deleted"
)

// Event is one lifecycle event of one instance.
type Event struct {
	// ID is assigned by the bus on Publish: strictly increasing per bus.
	ID         uint64      `json:"id"`
	Type       Type        `json:"type"`
	InstanceID string      `json:"instance_id"`
	From       state.State `json:"from"`
	To         state.State `json:"to"`
	// At is the time of the transition; the bus fills it when zero.
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

// StateChange builds a state-change event for Publish.
func StateChange(instanceID string, from, to state.State, reason string) Event {
	return Event{Type: TypeStateChange, InstanceID: instanceID, From: from, To: to, Reason: reason}
}

// Deleted builds the event published when an instance is deleted.
func Deleted(instanceID string, last state.State, reason string) Event {
	return Event{Type: TypeDeleted, InstanceID: instanceID, From: last, Reason: reason}
}
