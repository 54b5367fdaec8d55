package instances

import (
	"errors"
	"fmt"
	"time"

	"hypeman/internal/autostandby"
	"hypeman/internal/health"
	"hypeman/internal/instances/state"
	"hypeman/internal/restart"
)

// Instance is the public view of an instance (what the API returns).
type Instance struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Image       string            `json:"image"`
	ImageDigest string            `json:"image_digest,omitempty"`
	State       state.State       `json:"state"`
	StateError  *string           `json:"state_error"`
	Size        string            `json:"size"`
	VCPUs       int               `json:"vcpus"`
	OverlaySize string            `json:"overlay_size"`
	Env         map[string]string `json:"env,omitempty"`
	Entrypoint  []string          `json:"entrypoint,omitempty"`
	Cmd         []string          `json:"cmd,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	ExpiresAt   *time.Time        `json:"expires_at"`
	StartedAt   *time.Time        `json:"started_at"`
	StoppedAt   *time.Time        `json:"stopped_at"`
	ExitCode    *int              `json:"exit_code"`
	ExitMessage *string           `json:"exit_message"`
	HasSnapshot bool              `json:"has_snapshot"`
	Hypervisor  string            `json:"hypervisor"`
	Platform    string            `json:"platform,omitempty"` // the image's os/arch
	Network     *NetworkInfo      `json:"network,omitempty"`
	// RestartPolicy is omitted when the policy is never.
	RestartPolicy *restart.Policy `json:"restart_policy,omitempty"`
	RestartStatus *restart.Status `json:"restart_status,omitempty"`
	HealthCheck   *health.Check   `json:"health_check,omitempty"`
	HealthStatus  *health.Status  `json:"health_status,omitempty"`

	AutoStandby *autostandby.Policy `json:"auto_standby,omitempty"` // see autostandby.go
	// SnapshotPolicy is the instance's compression policy (nil: none set,
	// the server default applies).
	SnapshotPolicy *SnapshotPolicy `json:"snapshot_policy,omitempty"`
	// StandbyCompression describes the saved state while Standby (nil
	// otherwise, and for states saved before it was recorded).
	StandbyCompression *StandbyCompression `json:"standby_compression,omitempty"`
	// Knobs in force, in display form ("3GB", "100MB/s", "1Gbps"); "" = not
	// set (no hotplug memory, no limit).
	HotplugSize       string `json:"hotplug_size,omitempty"`
	DiskIOBps         string `json:"disk_io_bps,omitempty"`
	BandwidthDownload string `json:"bandwidth_download,omitempty"`
	BandwidthUpload   string `json:"bandwidth_upload,omitempty"`
	// Volumes mounted from the next (or the current) boot on.
	Volumes []VolumeMount `json:"volumes,omitempty"`
	// ForkCount is how many forks of this Template exist (0 for other
	// instances); ForkOfTemplate is the Template this instance was forked
	// from ("" if none). See templates.go.
	ForkCount      int    `json:"fork_count"`
	ForkOfTemplate string `json:"fork_of_template,omitempty"`
	// StartMode is how the instance's current (or last) boot started:
	// StartCold (a kernel boot) or StartWarm (restored from a pre-booted
	// template); "" for instances never booted by this build (forks,
	// older instances).
	StartMode string `json:"start_mode,omitempty"`
	// StopTimeout is the program's SIGTERM → SIGKILL window on a stop
	// ("30s"; the server default when the instance has none).
	StopTimeout string `json:"stop_timeout,omitempty"`
	// WorkingDir is the program's working directory set at create ("" =
	// the image's WORKDIR).
	WorkingDir string `json:"working_dir,omitempty"`
	// Pid is the VMM process id while one is alive (0 otherwise).
	Pid int `json:"-"`
}

// Metadata is what is persisted per instance (metadata.json).
type Metadata struct {
	// Version is the metadata.json format (metadataVersion; a file
	// without one is version 1). persist writes it.
	Version        int               `json:"version"`
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Image          string            `json:"image"`
	ImageDigest    string            `json:"image_digest"`
	MemoryBytes    int64             `json:"memory_bytes"`
	Size           string            `json:"size"`
	VCPUs          int               `json:"vcpus"`
	OverlayBytes   int64             `json:"overlay_bytes"`
	OverlaySize    string            `json:"overlay_size"`
	Env            map[string]string `json:"env,omitempty"`
	Entrypoint     []string          `json:"entrypoint,omitempty"`
	Cmd            []string          `json:"cmd,omitempty"`
	Tags           map[string]string `json:"tags,omitempty"`
	SkipGuestAgent bool              `json:"skip_guest_agent,omitempty"`
	// NetworkDisabled opts the instance out of networking.
	NetworkDisabled bool       `json:"network_disabled,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
	StartedAt       *time.Time `json:"started_at,omitempty"`
	StoppedAt       *time.Time `json:"stopped_at,omitempty"`
	ExitCode        *int       `json:"exit_code,omitempty"`
	ExitMessage     *string    `json:"exit_message,omitempty"`
	HasSnapshot     bool       `json:"has_snapshot"`
	Hypervisor      string     `json:"hypervisor"`
	// Platform is the os/arch of the image last booted.
	Platform string `json:"platform,omitempty"`
	// BootSerialOffset is the size of serial.log when the current (or last)
	// boot began: markers before it belong to earlier boots.
	BootSerialOffset int64 `json:"boot_serial_offset"`
	// Transition names a multi-step operation in progress ("standby",
	// "restore", "delete", and "fork" on a fork that has not reached its
	// target state yet). It is persisted before the first step so that a
	// daemon killed midway finishes or rolls back the operation on restart
	// instead of leaving a half state (see adoptTransition and
	// discardAtLoad).
	Transition string `json:"transition,omitempty"`
	// ReturnTo is set while an instance is on standby only for the length
	// of another operation (a fork from Running): the state it must end in.
	// A daemon killed midway restores it to that state on start.
	ReturnTo state.State `json:"return_to,omitempty"`
	// ProgramStarted and AgentReady record that the current boot's guest
	// printed its program-start and agent-ready markers: the console log
	// holding them may be rotated away before a later daemon re-adopts the
	// VM and replays the log.
	ProgramStarted bool `json:"program_started,omitempty"`
	AgentReady     bool `json:"agent_ready,omitempty"`
	// RestoredAt is set when the running VM was restored from a snapshot
	// (cleared by a fresh boot): its program started before the restore,
	// so no start marker will appear in this VM's serial log.
	RestoredAt *time.Time `json:"restored_at,omitempty"`
	// ExitKind says how the last boot ended (see restart.ExitInfo):
	// stopped_by_hypeman, launch_failed, code, vm_crashed.
	ExitKind string `json:"exit_kind,omitempty"`
	// Restart policy and health check, with their persisted status.
	RestartPolicy restart.Policy `json:"restart_policy,omitzero"`
	RestartStatus restart.Status `json:"restart_status,omitzero"`
	HealthCheck   health.Check   `json:"health_check,omitzero"`
	HealthStatus  health.Status  `json:"health_status,omitzero"`

	AutoStandby autostandby.Policy `json:"auto_standby,omitzero"` // see autostandby.go
	// ForkedFrom is the source instance of a fork.
	ForkedFrom string `json:"forked_from,omitempty"`
	// StartMode: see Instance.StartMode.
	StartMode string `json:"start_mode,omitempty"`
	// SnapshotPolicy is the instance's compression policy (never mutated
	// after create: copies of Metadata share it).
	SnapshotPolicy *SnapshotPolicy `json:"snapshot_policy,omitempty"`
	// StandbyCompression describes the standby state while HasSnapshot.
	StandbyCompression StandbyCompression `json:"standby_compression,omitzero"`
	// Limits: hotplug memory, disk I/O and network bandwidth limits.
	Limits Limits `json:"limits,omitzero"`
	// Volumes the instance mounts, in disk order (see deriveDisks). Only
	// written by format version 2 (metadataVersionFor).
	Volumes []attachedVolume `json:"volumes,omitempty"`
	// Templates (templates.go): IsTemplate marks a Standby instance
	// promoted to Template (format version 3); ForkCount counts the
	// instances whose ForkOfTemplate names it (recounted at load).
	IsTemplate     bool   `json:"is_template,omitempty"`
	ForkCount      int    `json:"fork_count,omitempty"`
	ForkOfTemplate string `json:"fork_of_template,omitempty"`
	// ExpiresAt is when the expiry controller deletes the instance
	// (package expiry; nil: never). No format version bump: a build
	// without expiry ignores it and the instance simply lives on.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// StopTimeout is the instance's stop_timeout (Go duration, resolved
	// at create; "" in metadata written before it existed = the server's
	// default). No format version bump: a build without it stops the
	// instance with the server default. See stoptimeout.go.
	StopTimeout string `json:"stop_timeout,omitempty"`
	// WorkingDir replaces the image's WORKDIR for the program (absolute,
	// clean; "" = the image's). No format version bump: a build without
	// it runs the program in the image's WORKDIR.
	WorkingDir string `json:"working_dir,omitempty"`
}

// CreateParams is a create request after HTTP decoding (sizes still strings).
type CreateParams struct {
	Name string
	// ExpiresAt: see Metadata.ExpiresAt (resolved from ttl by the caller).
	ExpiresAt *time.Time
	Image     string
	Size      string // memory, default "1GB"
	// HotplugSize is memory the guest may grow into ("3GB"; "" or "0" =
	// none).
	HotplugSize string
	VCPUs       int    // default 2
	OverlaySize string // default "10GB"
	// DiskIOBps limits the writable disks' I/O ("100MB/s"; "" or "0" =
	// unlimited). See Limits and units.ParseRate.
	DiskIOBps string
	// BandwidthDownload / BandwidthUpload limit host → VM and VM → host
	// traffic ("1Gbps", "125MB/s"; "" or "0" = unlimited).
	BandwidthDownload string
	BandwidthUpload   string
	Env               map[string]string
	Entrypoint        []string
	Cmd               []string
	Tags              map[string]string
	SkipGuestAgent    bool
	// NetworkEnabled nil = default (enabled when the host has networking).
	NetworkEnabled *bool
	// RestartPolicy nil = never; HealthCheck nil = none.
	RestartPolicy *restart.Policy
	HealthCheck   *health.Check
	AutoStandby   *autostandby.Policy // nil = none (see autostandby.go)
	// NoPull: the caller may not pull (its token lacks image:write), so an
	// image the store does not hold fails with ErrPullNotAllowed instead of
	// being pulled. A pull already under way is waited for.
	NoPull bool
	// SnapshotPolicy nil = the server default compression, no delay.
	SnapshotPolicy *SnapshotPolicy
	// Volumes to attach (VolumeID may be a name). Needs Config.Volumes.
	Volumes []VolumeMount
	// StopTimeout is the program's SIGTERM → SIGKILL window on a stop
	// (Go duration, MinStopTimeout to MaxStopTimeout; "" =
	// the server's GuestStopTimeout).
	StopTimeout string
	// WorkingDir replaces the image's WORKDIR for the program (absolute,
	// clean, at most MaxWorkingDirLen bytes; "" = the image's).
	WorkingDir string
}

// Errors callers branch on (the API maps them to status codes).
var (
	ErrNotFound  = errors.New("instance not found")
	ErrAmbiguous = errors.New("ambiguous instance reference")
	ErrNameInUse = errors.New("instance name already in use")
	ErrInvalid   = errors.New("invalid request")
	// ErrClosed: the manager was closed (daemon shutting down).
	ErrClosed = errors.New("instance manager closed")
	// ErrAgentUnavailable: the guest agent cannot be reached (not up yet,
	// disabled, or the guest is wedged).
	ErrAgentUnavailable = errors.New("guest agent unavailable")
	// ErrImageNotReady: the image is known but failed or cannot be used.
	ErrImageNotReady = errors.New("image not ready")
	// ErrPullNotAllowed: the image is not in the store and the request may
	// not pull it (CreateParams.NoPull).
	ErrPullNotAllowed = errors.New("image is not in the image store and this request may not pull it")
)

// InvalidArgumentError names the offending field; it wraps ErrInvalid.
type InvalidArgumentError struct {
	Field  string
	Reason string
}

func (e *InvalidArgumentError) Error() string {
	return fmt.Sprintf("invalid %s: %s", e.Field, e.Reason)
}
func (e *InvalidArgumentError) Unwrap() error { return ErrInvalid }

// TransitionError is returned when an action is not allowed in the current
// state; the API maps it to 409 with the allowed actions.
type TransitionError struct {
	Action  Action
	State   state.State
	Allowed []Action
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("cannot %s instance in state %s (allowed: %s)", e.Action, e.State, joinActions(e.Allowed))
}
