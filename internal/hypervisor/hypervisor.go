// Package hypervisor defines the small interface the instance manager uses to
// run VMs, independent of the VMM behind it.
//
// Why so small: the manager needs to launch a VM from a fully resolved
// description, find it again after a daemon restart, ask its status, pause,
// resume, save/restore and stop it, and re-store a saved state with another
// compression (compression.go: the settings every driver accepts). Template
// VMs can keep their RAM in a file (VMConfig.MemoryFile) and be saved
// without it (SaveOptions.ExcludeMemory), so that many clones map one copy
// (RestoreConfig.MemoryFile) instead of each loading its own.
// Everything VMM-specific (command lines, QMP, accelerator probing, state
// codecs) lives in a driver package (today qemu), so a Cloud Hypervisor or
// Firecracker driver can be added without touching the manager.
package hypervisor

import (
	"context"
	"errors"
	"time"
)

// Accelerator is the CPU virtualization backend a driver uses.
type Accelerator string

const (
	AccelAuto Accelerator = "auto"
	AccelKVM  Accelerator = "kvm"
	AccelTCG  Accelerator = "tcg"
)

// AccelChoice is the accelerator in use and why it was chosen.
type AccelChoice struct {
	Accel  Accelerator `json:"accelerator"`
	Reason string      `json:"reason"`
}

// RunState is the VMM-reported run state of a live VM.
type RunState string

const (
	RunStateRunning  RunState = "running"  // vCPUs running
	RunStatePaused   RunState = "paused"   // stopped by us (pause/standby in progress)
	RunStateCreated  RunState = "created"  // launched, not started yet (incoming migration, prelaunch)
	RunStateShutdown RunState = "shutdown" // guest powered off, VMM still alive
	// RunStateIOError: the VMM stopped the vCPUs itself because a disk
	// request failed (e.g. the host filesystem is full); DiskErrors says
	// which disk and why, and Resume retries the request.
	RunStateIOError RunState = "io-error"
)

// DiskError is a disk whose last request failed and stopped the guest.
type DiskError struct {
	// File is the base name of the disk's file ("overlay.ext4").
	File string
	// NoSpace is set when the host filesystem is full (ENOSPC).
	NoSpace bool
	// Reason is the failure in words ("no space left on device").
	Reason string
}

// Disk is one virtio block device.
type Disk struct {
	Path     string
	ReadOnly bool
	// Serial is how the guest identifies the disk (see guestconfig.Serial*).
	Serial string
}

// NetConfig attaches one virtio-net device. Exactly one of TAP or User is set.
type NetConfig struct {
	MAC string
	// TAP is the name of an existing host TAP device.
	TAP string
	// User selects QEMU user-mode networking (slirp) when TAP is impossible.
	User bool
	// HostForwards are "tcp::HOSTPORT-:GUESTPORT" style forwards for User mode.
	HostForwards []string
}

// VMConfig fully describes a VM to launch. The driver must not consult
// anything else, so the same VMConfig always yields the same VM.
type VMConfig struct {
	// ID is for logs and process titles only.
	ID string
	// Dir is the instance runtime directory: the driver keeps its pid file,
	// control socket, serial log and VMM log there.
	Dir        string
	KernelPath string
	InitrdPath string
	Cmdline    string
	// MemoryMiB is the guest RAM the VM is built with.
	MemoryMiB int
	// BalloonMiB, when > 0, adds a memory balloon that holds this much of
	// MemoryMiB back from the guest from boot on: the guest starts with
	// MemoryMiB-BalloonMiB usable and grows into the rest when the balloon
	// is deflated (VM.SetMemoryTarget). The held-back memory is returned to
	// the host. Must be less than MemoryMiB.
	BalloonMiB int
	VCPUs      int
	Disks      []Disk
	// DiskIOBps, when > 0, limits the combined read+write throughput of
	// the writable disks to this many bytes per second (one budget shared
	// by all of them). Read-only disks are not limited.
	DiskIOBps int64
	// AgentSocket is the host unix socket path the guest agent channel is
	// bound to (the VMM listens, the host connects).
	AgentSocket string
	Net         *NetConfig
	// MemoryFile, when set (absolute path), backs guest RAM with this file
	// mapped shared: everything the guest has in RAM is in the file, so a
	// save with SaveOptions.ExcludeMemory leaves the RAM out of the state
	// and clones map the file instead of loading a copy. For template VMs
	// only. The driver creates the file (sparse, MemoryMiB long); it must
	// not exist (a clone may still map an old one). Cannot be combined with
	// BalloonMiB (see the driver for why). The caller removes the file when
	// no more clones will be restored from it: running clones keep their
	// mapping after the unlink (the space is freed when the last exits).
	MemoryFile string
}

// Well-known file names inside VMConfig.Dir written by drivers.
const (
	SerialLogName = "serial.log" // guest console, appended
	VMMLogName    = "vmm.log"    // VMM stdout/stderr, appended
)

// ErrNotRunning is returned by Attach when no live VMM belongs to the dir.
var ErrNotRunning = errors.New("vmm not running")

// ErrHostResources is wrapped by Launch when the host refused what the VM
// asks for (the kernel would not give QEMU the guest memory): the request
// was valid, this host cannot serve it now.
var ErrHostResources = errors.New("the host cannot provide the resources the VM asks for")

// ErrExiting is returned by VM methods when the VMM closed its control
// channel because it is exiting, but the process has not been reaped yet:
// the VM is going away (Done closes shortly), it is not in an unknown state.
var ErrExiting = errors.New("vmm is exiting")

// Snapshot errors returned by Restore (wrapped, with the reason in the text).
var (
	// ErrSnapshotIncompatible: the snapshot is intact but cannot run here
	// (other snapshot format, VMM version, accelerator, or the kernel/initrd
	// it was booted with changed or is missing).
	ErrSnapshotIncompatible = errors.New("snapshot incompatible")
	// ErrSnapshotCorrupt: the snapshot's files are damaged or incomplete
	// (unreadable metadata, missing or truncated state, checksum mismatch).
	ErrSnapshotCorrupt = errors.New("snapshot corrupt")
)

// SaveOptions tune VM.SaveState.
type SaveOptions struct {
	// Compression is how the state is stored (zero value: uncompressed).
	// It is compressed while it streams out of the VMM, so a slow level
	// makes the save (and the pause) longer; it must pass Validate.
	Compression Compression
	// ExcludeMemory: the VM was launched with VMConfig.MemoryFile; its RAM
	// is not written to the state (it stays in the file, which the caller
	// must keep unchanged from then on: the VM is normally killed after
	// the save, and Resume is refused). The snapshot records that it needs
	// its memory file (size and a fingerprint, checked by Restore), so its
	// state is tiny (device state only) and any Compression is moot.
	ExcludeMemory bool
}

// SnapshotInfo describes a saved VM state: a snapshot dir written by
// VM.SaveState.
type SnapshotInfo struct {
	Dir       string
	CreatedAt time.Time
	// MemoryMiB is the guest memory size.
	MemoryMiB int
	// StateBytes is the size of the state file on disk; StreamBytes the
	// uncompressed state (equal unless compressed).
	StateBytes  int64
	StreamBytes int64
	// Compression is how the state file is stored.
	Compression Compression
	// InstanceFiles are the files, relative to the instance dir, that the
	// restored VM opens (the disks kept in the instance dir: writable
	// overlay, config disk). Restore requires them in RestoreConfig.Dir with
	// the content they had when the state was saved: for a standby they stay
	// untouched in place; a fork needs its own copies in its own dir; a
	// snapshot kept for later must keep copies taken while the VM is
	// stopped (before or right after SaveState, before any resume).
	InstanceFiles []string
	// MemoryFile is set when the snapshot was saved with ExcludeMemory: the
	// memory file the saving VM used (absolute). Restore needs this file,
	// unchanged, in RestoreConfig.MemoryFile. Empty: the state holds the
	// whole RAM (self-contained).
	MemoryFile string
}

// RestoreConfig describes a VM to start from a snapshot.
type RestoreConfig struct {
	// ID is for logs and the process title; "" keeps the saved one.
	ID string
	// Dir is the instance dir to run in (absolute). It may differ from the
	// dir the snapshot was taken in (fork); it must hold the snapshot's
	// InstanceFiles. The driver writes its pid file, control socket, logs
	// and launch record there, as for Launch.
	Dir string
	// SnapshotDir is the snapshot to restore. It is only read, never
	// changed, so it can be restored any number of times.
	SnapshotDir string
	// Net, when set, replaces the saved network backend (a fork needs its
	// own TAP device). The VM must have been saved with a network device,
	// and Net.MAC must be empty or equal to the saved MAC: the MAC travels
	// in the device state (QEMU would silently keep the saved one), so a
	// fork that needs its own MAC must change it from inside the guest.
	Net *NetConfig
	// MemoryFile is the memory file of a snapshot saved with ExcludeMemory
	// (absolute path): the restored VM maps it privately (copy-on-write:
	// reads share the page cache with every other clone of it, writes go
	// to the clone's own anonymous memory; the file is never written).
	// Required for such snapshots (ErrSnapshotIncompatible without it; a
	// file of another size or content is ErrSnapshotCorrupt), refused for
	// others. The clone's own later SaveState without ExcludeMemory writes
	// its full RAM: that snapshot never needs this file.
	MemoryFile string
}

// Hypervisor launches and re-attaches VMs.
type Hypervisor interface {
	// Name is the hypervisor name reported in the API ("qemu").
	Name() string
	// Accel is the accelerator this driver uses and why.
	Accel() AccelChoice
	// Launch starts a VM in its own process group (it outlives the daemon)
	// and returns once the control channel is up. The VM is running.
	Launch(ctx context.Context, cfg VMConfig) (VM, error)
	// Attach re-adopts a VM previously launched in dir by any process.
	// It returns ErrNotRunning (wrapped) when nothing alive is there.
	Attach(ctx context.Context, dir string) (VM, error)
	// Restore starts a VM from a snapshot written by VM.SaveState and
	// returns it paused (the caller resumes it) once the whole state is
	// loaded and verified. The snapshot is checked first: errors wrap
	// ErrSnapshotIncompatible or ErrSnapshotCorrupt with the reason.
	Restore(ctx context.Context, cfg RestoreConfig) (VM, error)
	// ConvertState writes a copy of the snapshot in srcDir to dstDir
	// (absolute, must not exist; it appears atomically, as for
	// VM.SaveState) with its state stored as c says: recompressed,
	// decompressed, or copied when it already is stored that way. srcDir
	// is only read; its state checksum is verified on the way (errors wrap
	// ErrSnapshotCorrupt). No VMM runs. On error (ctx ended included)
	// nothing is left at dstDir.
	ConvertState(ctx context.Context, srcDir, dstDir string, c Compression) (*SnapshotInfo, error)
}

// BuildReporter is implemented by drivers that can name the exact VMM build
// they run (callers type-assert a Hypervisor to it): a saved state is only
// restored by the build that wrote it, so caches of saved states key on it.
type BuildReporter interface {
	VMMBuild(ctx context.Context) (string, error)
}

// MemoryBalloon is implemented by VMs launched with a balloon
// (VMConfig.BalloonMiB > 0); callers type-assert a VM to it.
type MemoryBalloon interface {
	// SetMemoryTarget asks the guest to make target bytes of its RAM
	// usable (the balloon holds the rest). The guest follows
	// asynchronously; MemoryActual reports where it is.
	SetMemoryTarget(ctx context.Context, target int64) error
	// MemoryActual is the guest RAM not held by the balloon, in bytes.
	MemoryActual(ctx context.Context) (int64, error)
}

// DeviceBudget is implemented by drivers whose machine has a fixed number
// of device slots (callers type-assert a Hypervisor to it): every disk,
// NIC, balloon and serial controller takes one.
type DeviceBudget interface {
	// DeviceSlots is how many devices a VM can have in total.
	DeviceSlots() int
}

// ErrNoBalloon is returned by MemoryBalloon methods of a VM that has no
// balloon device.
var ErrNoBalloon = errors.New("vm has no memory balloon")

// VM is a handle on one live VMM process.
type VM interface {
	Pid() int
	// Status queries the VMM. An error means the control channel failed.
	Status(ctx context.Context) (RunState, error)
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// SaveState pauses the VM if it runs and writes its complete state
	// (memory, devices, how it was launched) into a new directory
	// snapshotDir (absolute), which must not exist. The directory appears
	// atomically (written under a temporary name, synced, renamed): a crash
	// never leaves one that looks valid. On success the VM is left stopped
	// with its disks flushed, normally to be killed by the caller; Resume
	// also works (a snapshot of a running VM), but a VM cannot be saved
	// twice without a Resume in between. On error the VM is left paused
	// (Resume continues it) and SaveState may be tried again; temporary
	// dirs left by an interrupted save to the same snapshotDir are removed.
	SaveState(ctx context.Context, snapshotDir string, opts SaveOptions) (*SnapshotInfo, error)
	// Shutdown asks the guest to power off (ACPI) and waits up to timeout
	// for the VMM to exit, then kills it.
	Shutdown(ctx context.Context, timeout time.Duration) error
	// Kill ends the VMM process group immediately.
	Kill() error
	// Done is closed when the VMM process has exited.
	Done() <-chan struct{}
	// IOErrors receives a notice each time the VMM stops the guest because
	// a disk request failed (the VM is then in RunStateIOError until
	// Resume). Buffered; a notice nobody reads in time is dropped
	// (DiskErrors reports the current failures at any time).
	IOErrors() <-chan DiskError
	// DiskErrors lists the disks whose I/O is currently failed.
	DiskErrors(ctx context.Context) ([]DiskError, error)
	// ReopenSerialLog makes the VMM close its serial log and create
	// SerialLogName in its dir afresh, after the caller renamed the old
	// file (log rotation). No output is lost: what was written before the
	// switch is in the renamed file, everything after in the new one.
	ReopenSerialLog(ctx context.Context) error
	// Close releases the handle (control connection) without touching the VM.
	Close() error
}
