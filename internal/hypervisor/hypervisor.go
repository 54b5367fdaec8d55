// Package hypervisor defines the small interface the instance manager uses to
// run VMs, independent of the VMM behind it.
//
// Why so small: the manager needs to launch a VM from a fully resolved
// description, find it again after a daemon restart, ask its status, pause,
// resume, save/restore and stop it. Everything VMM-specific (command lines,
// QMP, accelerator probing) lives in a driver package (today qemu), so a Cloud
// Hypervisor or Firecracker driver can be added without touching the manager.
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
)

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
	MemoryMiB  int
	VCPUs      int
	Disks      []Disk
	// AgentSocket is the host unix socket path the guest agent channel is
	// bound to (the VMM listens, the host connects).
	AgentSocket string
	Net         *NetConfig
}

// Well-known file names inside VMConfig.Dir written by drivers.
const (
	SerialLogName = "serial.log" // guest console, appended
	VMMLogName    = "vmm.log"    // VMM stdout/stderr, appended
)

// ErrNotRunning is returned by Attach when no live VMM belongs to the dir.
var ErrNotRunning = errors.New("vmm not running")

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
}

// VM is a handle on one live VMM process.
type VM interface {
	Pid() int
	// Status queries the VMM. An error means the control channel failed.
	Status(ctx context.Context) (RunState, error)
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Shutdown asks the guest to power off (ACPI) and waits up to timeout
	// for the VMM to exit, then kills it.
	Shutdown(ctx context.Context, timeout time.Duration) error
	// Kill ends the VMM process group immediately.
	Kill() error
	// Done is closed when the VMM process has exited.
	Done() <-chan struct{}
	// Close releases the handle (control connection) without touching the VM.
	Close() error
}
