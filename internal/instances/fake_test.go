package instances

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
	"hypeman/internal/paths"
)

// fakeHV is an in-memory hypervisor: launched VMs "run" until killed or
// until the test makes the guest exit; the serial log is written by the
// test through the VM's helpers.
type fakeHV struct {
	mu  sync.Mutex
	vms map[string]*fakeVM // by dir
	pid int
}

func newFakeHV() *fakeHV { return &fakeHV{vms: map[string]*fakeVM{}, pid: 1000} }

func (h *fakeHV) Name() string { return "fake" }
func (h *fakeHV) Accel() hypervisor.AccelChoice {
	return hypervisor.AccelChoice{Accel: hypervisor.AccelTCG, Reason: "fake"}
}

func (h *fakeHV) Launch(ctx context.Context, cfg hypervisor.VMConfig) (hypervisor.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pid++
	vm := &fakeVM{dir: cfg.Dir, pid: h.pid, done: make(chan struct{}), state: hypervisor.RunStateRunning, cfg: cfg}
	if cfg.BalloonMiB > 0 {
		vm.memTarget = int64(cfg.MemoryMiB-cfg.BalloonMiB) << 20
	}
	h.vms[cfg.Dir] = vm
	return vm, nil
}

func (h *fakeHV) Attach(ctx context.Context, dir string) (hypervisor.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if vm, ok := h.vms[dir]; ok && !vm.exited() {
		return vm, nil
	}
	return nil, fmt.Errorf("attach %s: %w", dir, hypervisor.ErrNotRunning)
}

func (h *fakeHV) Restore(ctx context.Context, cfg hypervisor.RestoreConfig) (hypervisor.VM, error) {
	return nil, fmt.Errorf("fake: restore not supported")
}

func (h *fakeHV) vm(dir string) *fakeVM {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.vms[dir]
}

type fakeVM struct {
	dir   string
	pid   int
	cfg   hypervisor.VMConfig // as launched
	mu    sync.Mutex
	state hypervisor.RunState
	done  chan struct{}
	once  sync.Once
	// memTarget is the balloon target (0 = no balloon).
	memTarget int64
}

func (v *fakeVM) SetMemoryTarget(ctx context.Context, target int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.memTarget == 0 {
		return hypervisor.ErrNoBalloon
	}
	v.memTarget = target
	return nil
}

func (v *fakeVM) MemoryActual(ctx context.Context) (int64, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.memTarget == 0 {
		return 0, hypervisor.ErrNoBalloon
	}
	return v.memTarget, nil
}

func (v *fakeVM) exited() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// print appends a line to the serial log as the guest would.
func (v *fakeVM) print(line string) {
	f, _ := os.OpenFile(filepath.Join(v.dir, hypervisor.SerialLogName), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	fmt.Fprintln(f, line)
	f.Close()
}

// exit makes the guest print its exit marker and the VMM exit.
func (v *fakeVM) exit(code int, msg string) {
	v.print(guestconfig.FormatExit(guestconfig.Exit{Code: code, Message: msg}))
	v.once.Do(func() { close(v.done) })
}

func (v *fakeVM) Pid() int { return v.pid }
func (v *fakeVM) Status(ctx context.Context) (hypervisor.RunState, error) {
	if v.exited() {
		return "", hypervisor.ErrNotRunning
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.state, nil
}
func (v *fakeVM) Pause(ctx context.Context) error {
	v.mu.Lock()
	v.state = hypervisor.RunStatePaused
	v.mu.Unlock()
	return nil
}
func (v *fakeVM) Resume(ctx context.Context) error {
	v.mu.Lock()
	v.state = hypervisor.RunStateRunning
	v.mu.Unlock()
	return nil
}
func (v *fakeVM) Shutdown(ctx context.Context, timeout time.Duration) error {
	v.once.Do(func() { close(v.done) })
	return nil
}
func (v *fakeVM) Kill() error           { v.once.Do(func() { close(v.done) }); return nil }
func (v *fakeVM) Done() <-chan struct{} { return v.done }
func (v *fakeVM) Close() error          { return nil }
func (v *fakeVM) SaveState(ctx context.Context, dir string, o hypervisor.SaveOptions) (*hypervisor.SnapshotInfo, error) {
	return nil, fmt.Errorf("fake: save not supported")
}

type fakeImages struct{}

func (fakeImages) Resolve(ctx context.Context, ref string) (ImageInfo, error) {
	if ref == "missing" {
		return ImageInfo{}, fmt.Errorf("%w: %s", ErrImageNotReady, ref)
	}
	return ImageInfo{Name: ref, Digest: "sha256:abc", DiskPath: "/nonexistent/rootfs.erofs", FSType: "erofs", Cmd: []string{"/bin/true"}}, nil
}

func newTestManager(t testing.TB, root string, hv *fakeHV) (*Manager, *events.Bus) {
	t.Helper()
	bus := events.New(events.Options{})
	m, err := New(context.Background(), Config{Paths: paths.New(root), Hypervisor: hv, Images: fakeImages{}, Events: bus, GuestStopTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); bus.Close() })
	return m, bus
}
