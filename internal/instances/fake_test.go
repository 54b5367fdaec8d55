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
	return h.start(cfg.Dir, hypervisor.RunStateRunning), nil
}

// start registers a new "running" VMM in dir.
func (h *fakeHV) start(dir string, st hypervisor.RunState) *fakeVM {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pid++
	vm := &fakeVM{dir: dir, pid: h.pid, done: make(chan struct{}), state: st, ioErrs: make(chan hypervisor.DiskError, 1)}
	h.vms[dir] = vm
	return vm
}

func (h *fakeHV) Attach(ctx context.Context, dir string) (hypervisor.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if vm, ok := h.vms[dir]; ok && !vm.exited() {
		return vm, nil
	}
	return nil, fmt.Errorf("attach %s: %w", dir, hypervisor.ErrNotRunning)
}

// Restore starts a paused VM in cfg.Dir from a dir SaveState wrote.
func (h *fakeHV) Restore(ctx context.Context, cfg hypervisor.RestoreConfig) (hypervisor.VM, error) {
	if _, err := os.Stat(filepath.Join(cfg.SnapshotDir, "state")); err != nil {
		return nil, fmt.Errorf("fake restore: %w", err)
	}
	return h.start(cfg.Dir, hypervisor.RunStatePaused), nil
}

func (h *fakeHV) vm(dir string) *fakeVM {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.vms[dir]
}

type fakeVM struct {
	dir    string
	pid    int
	mu     sync.Mutex
	state  hypervisor.RunState
	done   chan struct{}
	once   sync.Once
	ioErrs chan hypervisor.DiskError
	// diskErrs are reported by DiskErrors while state is io-error.
	diskErrs []hypervisor.DiskError
	// exiting: the VMM closed its control channel on its way out but is
	// not reaped yet (Status fails with ErrExiting, Done still open).
	exiting bool
}

// ioError stops the guest the way a failed disk write does.
func (v *fakeVM) ioError(de hypervisor.DiskError) {
	v.mu.Lock()
	v.state = hypervisor.RunStateIOError
	v.diskErrs = []hypervisor.DiskError{de}
	v.mu.Unlock()
	v.ioErrs <- de
}

// startExiting makes the VMM hang up its control channel without exiting.
func (v *fakeVM) startExiting() {
	v.mu.Lock()
	v.exiting = true
	v.mu.Unlock()
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
	if v.exiting {
		return "", fmt.Errorf("fake: qmp: connection closed: %w", hypervisor.ErrExiting)
	}
	return v.state, nil
}
func (v *fakeVM) DiskErrors(ctx context.Context) ([]hypervisor.DiskError, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state != hypervisor.RunStateIOError {
		return nil, nil
	}
	return append([]hypervisor.DiskError(nil), v.diskErrs...), nil
}
func (v *fakeVM) IOErrors() <-chan hypervisor.DiskError { return v.ioErrs }

// ReopenSerialLog: print opens the log by name for every line, so it
// follows a rename by itself.
func (v *fakeVM) ReopenSerialLog(ctx context.Context) error { return nil }
func (v *fakeVM) Pause(ctx context.Context) error {
	v.mu.Lock()
	v.state = hypervisor.RunStatePaused
	v.mu.Unlock()
	return nil
}
func (v *fakeVM) Resume(ctx context.Context) error {
	v.mu.Lock()
	v.state = hypervisor.RunStateRunning
	v.diskErrs = nil
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

// SaveState writes a one-file "snapshot" and leaves the VM paused.
func (v *fakeVM) SaveState(ctx context.Context, dir string, o hypervisor.SaveOptions) (*hypervisor.SnapshotInfo, error) {
	v.mu.Lock()
	v.state = hypervisor.RunStatePaused
	v.mu.Unlock()
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte("memory"), 0o644); err != nil {
		return nil, err
	}
	return &hypervisor.SnapshotInfo{Dir: dir, MemoryMiB: 1}, nil
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
	return newTestManagerWith(t, root, hv, nil)
}

// newTestManagerWith is newTestManager with config changes (e.g. StepHook).
func newTestManagerWith(t testing.TB, root string, hv *fakeHV, edit func(*Config)) (*Manager, *events.Bus) {
	t.Helper()
	bus := events.New(events.Options{})
	cfg := Config{Paths: paths.New(root), Hypervisor: hv, Images: fakeImages{}, Events: bus, GuestStopTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if edit != nil {
		edit(&cfg)
	}
	m, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); bus.Close() })
	return m, bus
}
