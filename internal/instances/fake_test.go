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
	"hypeman/internal/fsutil"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
	"hypeman/internal/paths"
	"hypeman/internal/testutil/tier"
)

// fakeHV is an in-memory hypervisor: launched VMs "run" until killed or
// until the test makes the guest exit; the serial log is written by the
// test through the VM's helpers.
type fakeHV struct {
	mu  sync.Mutex
	vms map[string]*fakeVM // by dir
	pid int
	// saves and converts record the compression of every SaveState and
	// ConvertState; convertHook, when set, runs at the start of
	// ConvertState (tests block conversions with it).
	saves, converts []hypervisor.Compression
	convertHook     func(ctx context.Context) error
}

// fakeStreamBytes is the "migration stream" size of every fake save; a
// compressed fake state is a quarter of it.
const fakeStreamBytes = 1000

// writeFakeState publishes a fake saved state in dir: fakeState.json names
// its compression.
func writeFakeState(dir string, c hypervisor.Compression) (*hypervisor.SnapshotInfo, error) {
	if _, err := os.Lstat(dir); err == nil {
		return nil, fmt.Errorf("%s: %w", dir, os.ErrExist)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := fsutil.WriteJSONAtomic(filepath.Join(dir, fakeStateFile), c, 0o644); err != nil {
		return nil, err
	}
	info := &hypervisor.SnapshotInfo{Dir: dir, StreamBytes: fakeStreamBytes, StateBytes: fakeStreamBytes, Compression: c}
	if c.Enabled() {
		info.StateBytes = fakeStreamBytes / 4
	}
	return info, nil
}

const fakeStateFile = "fake-state.json"

// readFakeState returns the compression of the fake state in dir.
func readFakeState(dir string) (hypervisor.Compression, error) {
	var c hypervisor.Compression
	err := fsutil.ReadJSON(filepath.Join(dir, fakeStateFile), &c)
	return c, err
}

func (h *fakeHV) ConvertState(ctx context.Context, src, dst string, c hypervisor.Compression) (*hypervisor.SnapshotInfo, error) {
	h.mu.Lock()
	h.converts = append(h.converts, c)
	hook := h.convertHook
	h.mu.Unlock()
	if hook != nil {
		if err := hook(ctx); err != nil {
			return nil, err
		}
	}
	if _, err := readFakeState(src); err != nil {
		return nil, fmt.Errorf("fake convert: %w", err)
	}
	return writeFakeState(dst, c)
}

func newFakeHV() *fakeHV { return &fakeHV{vms: map[string]*fakeVM{}, pid: 1000} }

func (h *fakeHV) Name() string { return "fake" }
func (h *fakeHV) Accel() hypervisor.AccelChoice {
	return hypervisor.AccelChoice{Accel: hypervisor.AccelTCG, Reason: "fake"}
}

func (h *fakeHV) Launch(ctx context.Context, cfg hypervisor.VMConfig) (hypervisor.VM, error) {
	return h.start(cfg, hypervisor.RunStateRunning), nil
}

// start registers a new fake VMM in dir.
func (h *fakeHV) start(cfg hypervisor.VMConfig, st hypervisor.RunState) *fakeVM {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pid++
	vm := &fakeVM{dir: cfg.Dir, pid: h.pid, done: make(chan struct{}), state: st, hv: h, cfg: cfg,
		ioErrs: make(chan hypervisor.DiskError, 1)}
	if cfg.BalloonMiB > 0 {
		vm.memTarget = int64(cfg.MemoryMiB-cfg.BalloonMiB) << 20
	}
	h.vms[cfg.Dir] = vm
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

// Restore "loads" a fake state: the VM comes up paused in cfg.Dir.
func (h *fakeHV) Restore(ctx context.Context, cfg hypervisor.RestoreConfig) (hypervisor.VM, error) {
	if _, err := readFakeState(cfg.SnapshotDir); err != nil {
		return nil, fmt.Errorf("fake restore: %w: %w", hypervisor.ErrSnapshotCorrupt, err)
	}
	return h.start(hypervisor.VMConfig{Dir: cfg.Dir}, hypervisor.RunStatePaused), nil
}

func (h *fakeHV) vm(dir string) *fakeVM {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.vms[dir]
}

type fakeVM struct {
	hv    *fakeHV
	dir   string
	pid   int
	cfg   hypervisor.VMConfig // as launched
	mu    sync.Mutex
	state hypervisor.RunState
	done  chan struct{}
	once  sync.Once
	// memTarget is the balloon target (0 = no balloon).
	memTarget int64
	ioErrs    chan hypervisor.DiskError
	// diskErrs are reported by DiskErrors while state is io-error.
	diskErrs []hypervisor.DiskError
	// exiting: the VMM closed its control channel on its way out but is
	// not reaped yet (Status fails with ErrExiting, Done still open).
	exiting bool
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
	if err := o.Compression.Validate(); err != nil {
		return nil, err
	}
	v.hv.mu.Lock()
	v.hv.saves = append(v.hv.saves, o.Compression)
	v.hv.mu.Unlock()
	v.mu.Lock()
	v.state = hypervisor.RunStatePaused
	v.mu.Unlock()
	return writeFakeState(dir, o.Compression)
}

type fakeImages struct{}

// ResolveLocal holds only the image named "local".
func (f fakeImages) ResolveLocal(ctx context.Context, ref string) (ImageInfo, error) {
	if ref != "local" {
		return ImageInfo{}, fmt.Errorf("%w: %s", ErrPullNotAllowed, ref)
	}
	return f.Resolve(ctx, ref)
}

func (fakeImages) Resolve(ctx context.Context, ref string) (ImageInfo, error) {
	if ref == "missing" {
		return ImageInfo{}, fmt.Errorf("%w: %s", ErrImageNotReady, ref)
	}
	img := ImageInfo{Name: ref, Digest: "sha256:abc", DiskPath: "/nonexistent/rootfs.erofs", FSType: "erofs", Cmd: []string{"/bin/true"}}
	if ref == "workdir-img" {
		img.WorkingDir = fakeImageWorkDir
	}
	return img, nil
}

// fakeImageWorkDir is the WORKDIR of fakeImages' image "workdir-img".
const fakeImageWorkDir = "/from-image"

func newTestManager(t testing.TB, root string, hv *fakeHV) (*Manager, *events.Bus) {
	return newTestManagerWith(t, root, hv, nil)
}

// newTestManagerWith lets a test adjust the Config (nil: no change).
func newTestManagerWith(t testing.TB, root string, hv *fakeHV, adjust func(*Config)) (*Manager, *events.Bus) {
	t.Helper()
	tier.Tools(t, "mkfs.ext4") // the manager formats real overlay disks
	bus := events.New(events.Options{})
	cfg := Config{Paths: paths.New(root), Hypervisor: hv, Images: fakeImages{}, Events: bus, GuestStopTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if adjust != nil {
		adjust(&cfg)
	}
	m, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); bus.Close() })
	return m, bus
}
