package autostandby

import "time"

// StatusCode is AutoStandbyStatus.status.
type StatusCode string

// Status values (hypeman's enum).
const (
	StatusUnsupported      StatusCode = "unsupported"
	StatusDisabled         StatusCode = "disabled"
	StatusIneligible       StatusCode = "ineligible"
	StatusActive           StatusCode = "active"
	StatusIdleCountdown    StatusCode = "idle_countdown"
	StatusReadyForStandby  StatusCode = "ready_for_standby"
	StatusStandbyRequested StatusCode = "standby_requested"
	StatusError            StatusCode = "error"
)

// Reason is AutoStandbyStatus.reason.
type Reason string

// Reasons (hypeman's enum).
const (
	ReasonUnsupportedPlatform      Reason = "unsupported_platform"
	ReasonPolicyMissing            Reason = "policy_missing"
	ReasonPolicyDisabled           Reason = "policy_disabled"
	ReasonInstanceNotRunning       Reason = "instance_not_running"
	ReasonNetworkDisabled          Reason = "network_disabled"
	ReasonMissingIP                Reason = "missing_ip"
	ReasonHasVGPU                  Reason = "has_vgpu"
	ReasonActiveInboundConnections Reason = "active_inbound_connections"
	ReasonIdleTimeoutNotElapsed    Reason = "idle_timeout_not_elapsed"
	ReasonObserverError            Reason = "observer_error"
	ReasonReadyForStandby          Reason = "ready_for_standby"
)

// Status is one instance's diagnostic status (GET
// /instances/{id}/auto-standby/status). Optional fields are nil when they
// do not apply.
type Status struct {
	Supported                bool
	Configured               bool
	Enabled                  bool
	Eligible                 bool
	Status                   StatusCode
	Reason                   Reason
	ActiveInboundConnections int
	IdleTimeout              *time.Duration
	IdleSince                *time.Time
	LastInboundActivityAt    *time.Time
	NextStandbyAt            *time.Time
	HoldUntil                *time.Time
	CountdownRemaining       *time.Duration
	TrackingMode             string
	// Error is the observer's or the last standby's error (status error).
	Error string
}
