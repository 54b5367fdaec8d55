// Package qemu is the QEMU implementation of hypervisor.Hypervisor.
//
// It owns everything QEMU-specific: choosing the accelerator (KVM only when it
// really works, else TCG), finding the host TSC rate the microvm guest needs,
// building the command line, launching qemu-system-x86_64 as a detached
// process group, re-attaching to it from a later daemon, and controlling it
// over QMP (package qmp).
//
// Why it is designed this way:
//   - The command line is a pure function of (VMConfig, accelerator, TSC
//     rate) so it can be unit-tested and replayed: the exact argv is saved in
//     qemu.args.json for restore-from-snapshot.
//   - QEMU runs in its own process group with its working directory set to
//     the instance dir, so it outlives the daemon, and all per-instance paths
//     on its command line are short relative names (unix socket paths are
//     limited to 107 bytes; test and instance dirs can be longer).
//   - The pid file records the process start time next to the pid: a later
//     daemon re-adopts (or kills) a VMM only if both still match and the
//     process is qemu, never a process that merely reused the pid.
//   - Exit of a re-adopted (non-child) VMM is observed with a pidfd in Go's
//     netpoller: no polling thread, and the watch is released on Close.
//   - Save/restore (standby, snapshots, forks) use QEMU's migration stream
//     through a pipe handed over QMP, so the driver checksums and optionally
//     compresses it in one pass; a snapshot dir appears atomically and
//     restore replays the recorded argv with "-S -incoming defer" (save.go).
//   - Templates keep guest RAM in a shared memory file, saved without it
//     (x-ignore-shared); clones map the file privately, copy-on-write, so
//     their untouched memory is one page-cache copy (memfile.go).
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"hypeman/internal/fsutil"
	"hypeman/internal/hypervisor"
	"hypeman/internal/hypervisor/qemu/qmp"
	"hypeman/internal/procfs"
)

// ErrAlreadyRunning is returned by Launch when a live VMM already owns the dir.
var ErrAlreadyRunning = errors.New("vmm already running in this dir")

// ErrExitedEarly is returned by Launch when QEMU exits before its QMP socket
// is ready (bad arguments, missing files); the error text carries the tail
// of vmm.log.
var ErrExitedEarly = errors.New("qemu exited during startup")

// Config configures a Driver. The zero value means: qemu-system-x86_64 from
// PATH, accelerator auto, TSC rate detected.
type Config struct {
	// Binary is the QEMU executable (default "qemu-system-x86_64").
	Binary string
	// Accel is auto (default), kvm or tcg.
	Accel hypervisor.Accelerator
	// TSCKHz overrides host TSC detection (tsc_early_khz for guests).
	TSCKHz int
	// KVMBootProbeKernel, when set, makes auto mode confirm a KVM choice by
	// booting this kernel (PVH vmlinux) under KVM with KVMBootProbeTimeout;
	// on failure it falls back to TCG.
	KVMBootProbeKernel  string
	KVMBootProbeTimeout time.Duration // default 15s
	// StartTimeout bounds QEMU start → QMP ready in Launch (default 15s).
	StartTimeout time.Duration
	// Probe and TSC default to the real host; tests substitute fakes.
	// StartProcess, when set, wraps the start of each QEMU process (e.g.
	// to start it inside the network namespace that holds its TAP device:
	// network.Manager.InNetNS). nil starts it directly.
	StartProcess func(start func() error) error
	Probe        HostProbe
	TSC          TSCSource
	Logger       *slog.Logger
}

// Driver launches and attaches QEMU VMs. Safe for concurrent use.
type Driver struct {
	cfg    Config
	binary string
	accel  hypervisor.AccelChoice
	log    *slog.Logger

	tscMu     sync.Mutex
	tscKHz    int
	tscSource string

	// installed QEMU version (`--version`), read once for Restore.
	verMu      sync.Mutex
	verOK      bool
	version    string
	versionPkg string

	// digests caches kernel/initrd sha256 sums for snapshots.
	digests digestCache
}

var _ hypervisor.Hypervisor = (*Driver)(nil)

// New resolves the QEMU binary and chooses the accelerator.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	if cfg.Accel == "" {
		cfg.Accel = hypervisor.AccelAuto
	}
	if cfg.Probe == nil {
		cfg.Probe = Host{}
	}
	if cfg.TSC == nil {
		cfg.TSC = Host{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 15 * time.Second
	}
	if cfg.KVMBootProbeTimeout <= 0 {
		cfg.KVMBootProbeTimeout = 15 * time.Second
	}
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	choice, err := DetectAccel(cfg.Accel, cfg.Probe)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	d := &Driver{cfg: cfg, binary: bin, log: cfg.Logger, tscKHz: cfg.TSCKHz}
	if cfg.TSCKHz > 0 {
		d.tscSource = "configuration"
	}
	if cfg.Accel == hypervisor.AccelAuto && choice.Accel == hypervisor.AccelKVM && cfg.KVMBootProbeKernel != "" {
		khz, _, _ := d.TSCKHz(ctx) // best effort: KVM guests calibrate without it
		if perr := BootProbe(ctx, bin, cfg.KVMBootProbeKernel, hypervisor.AccelKVM, khz, cfg.KVMBootProbeTimeout); perr != nil {
			choice = hypervisor.AccelChoice{Accel: hypervisor.AccelTCG, Reason: "KVM boot probe failed (" + perr.Error() + "), using TCG"}
		} else {
			choice.Reason += "; boot probe passed"
		}
	}
	d.accel = choice
	d.log.Info("qemu driver ready", "binary", bin, "accelerator", choice.Accel, "reason", choice.Reason)
	return d, nil
}

// Name implements hypervisor.Hypervisor.
func (d *Driver) Name() string { return "qemu" }

// MicrovmVirtioTransports is how many virtio-mmio transports QEMU 7.2's
// microvm machine creates with its default second IOAPIC (measured: the
// 25th virtio device fails with "No 'virtio-bus' bus found"). Every
// virtio device we add (disks, virtio-serial, NIC, balloon) takes one.
const MicrovmVirtioTransports = 24

// DeviceSlots implements hypervisor.DeviceBudget.
func (d *Driver) DeviceSlots() int { return MicrovmVirtioTransports }

// Accel implements hypervisor.Hypervisor.
func (d *Driver) Accel() hypervisor.AccelChoice { return d.accel }

// TSCKHz returns the host TSC rate (cached after the first success) and its
// source.
func (d *Driver) TSCKHz(ctx context.Context) (int, string, error) {
	d.tscMu.Lock()
	defer d.tscMu.Unlock()
	if d.tscKHz > 0 {
		return d.tscKHz, d.tscSource, nil
	}
	k, src, err := DetectTSCKHz(ctx, d.cfg.TSC)
	if err != nil {
		return 0, "", err
	}
	d.tscKHz, d.tscSource = k, src
	d.log.Info("host TSC rate", "khz", k, "source", src)
	return k, src, nil
}

// LaunchRecord is the content of qemu.args.json: the exact argv QEMU was
// started with (argv[0] is the binary; run it in the instance dir).
//
// For a VM started by Restore, Argv is the replayable command line (the
// snapshot's, with its overrides) without the "-S -incoming defer" the
// process was started with on top, and RestoredFrom names the snapshot.
type LaunchRecord struct {
	Argv         []string               `json:"argv"`
	Accel        hypervisor.Accelerator `json:"accelerator"`
	TSCKHz       int                    `json:"tsc_khz,omitempty"`
	RestoredFrom string                 `json:"restored_from,omitempty"`
}

// ReadLaunchRecord reads dir/qemu.args.json.
func ReadLaunchRecord(dir string) (LaunchRecord, error) {
	var r LaunchRecord
	err := fsutil.ReadJSON(filepath.Join(dir, ArgsFileName), &r)
	return r, err
}

// Launch implements hypervisor.Hypervisor. The VM outlives ctx; ctx only
// bounds the startup.
func (d *Driver) Launch(ctx context.Context, cfg hypervisor.VMConfig) (hypervisor.VM, error) {
	khz, _, err := d.TSCKHz(ctx)
	if err != nil {
		if d.accel.Accel == hypervisor.AccelTCG {
			return nil, fmt.Errorf("qemu launch: %w (set the TSC rate in the configuration)", err)
		}
		d.log.Warn("launching without tsc_early_khz", "err", err)
		khz = 0
	}
	args, err := BuildArgs(LaunchSpec{VM: cfg, Accel: d.accel.Accel, TSCKHz: khz})
	if err != nil {
		return nil, fmt.Errorf("qemu launch: %w", err)
	}
	for _, p := range []string{cfg.KernelPath, cfg.InitrdPath} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("qemu launch: %w", err)
		}
	}
	if cfg.MemoryFile != "" {
		if err := createMemoryFile(cfg.MemoryFile, int64(cfg.MemoryMiB)<<20); err != nil {
			return nil, fmt.Errorf("qemu launch: %w", err)
		}
	}
	rec := LaunchRecord{Argv: append([]string{d.binary}, args...), Accel: d.accel.Accel, TSCKHz: khz}
	v, err := d.start(ctx, cfg.Dir, cfg.ID, rec, nil)
	if err != nil {
		if cfg.MemoryFile != "" {
			os.Remove(cfg.MemoryFile)
		}
		return nil, fmt.Errorf("qemu launch: %w", err)
	}
	if cfg.BalloonMiB > 0 {
		// The guest's balloon driver loads ~1.5 s into boot and inflates
		// to this target then; QEMU keeps it in the device state, so
		// restores need nothing.
		target := int64(cfg.MemoryMiB-cfg.BalloonMiB) << 20
		if err := v.SetMemoryTarget(ctx, target); err != nil {
			if kerr := v.Kill(); kerr != nil {
				d.log.Warn("killing vm whose balloon could not be set", "err", kerr)
			}
			v.Close()
			return nil, fmt.Errorf("qemu launch: %w", err)
		}
	}
	return v, nil
}

// start runs rec.Argv (plus extra arguments, not recorded) in dir as a
// detached process group, records rec in qemu.args.json and returns once QMP
// is connected. Errors are not prefixed (callers add "qemu launch" etc.).
func (d *Driver) start(ctx context.Context, dir, id string, rec LaunchRecord, extra []string) (*VM, error) {
	pidPath := filepath.Join(dir, PidFileName)
	if pf, err := readPidFile(pidPath); err == nil {
		if err := checkProcess(pf); err == nil {
			return nil, fmt.Errorf("%s: %w (pid %d)", dir, ErrAlreadyRunning, pf.Pid)
		}
	}
	removeStale(dir)

	argv := append(append([]string(nil), rec.Argv...), extra...)
	args := argv[1:]
	if err := fsutil.WriteJSONAtomic(filepath.Join(dir, ArgsFileName), rec, 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, hypervisor.VMMLogName)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "hypeman %s: starting %s\n", time.Now().UTC().Format(time.RFC3339Nano), quoteArgv(argv))

	cmd := exec.Command(argv[0], args...)
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Own process group: the VM must survive the daemon (and its signals).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if d.cfg.StartProcess != nil {
		err = d.cfg.StartProcess(cmd.Start)
	} else {
		err = cmd.Start()
	}
	logf.Close() // the child has its own descriptor
	if err != nil {
		return nil, err
	}
	pid := cmd.Process.Pid
	// Not reaped yet (cmd.Wait runs below), so /proc/<pid> exists even if
	// QEMU already exited.
	st, statErr := procfs.ReadStat(pid)
	pf := PidFile{Pid: pid, StartTime: st.StartTime}

	exited := make(chan struct{})
	v := newVM(&VM{drv: d, dir: dir, pf: pf, child: true, log: d.log.With("vm", id, "pid", pid), done: exited})
	go func() {
		werr := cmd.Wait()
		v.mu.Lock()
		v.exitErr = werr
		v.mu.Unlock()
		// Clean up only if the files still describe this process (a new
		// launch into the same dir must not lose its pid file).
		if cur, err := readPidFile(pidPath); err == nil && cur == pf {
			os.Remove(filepath.Join(dir, QMPSocketName))
			os.Remove(pidPath)
		}
		v.log.Info("qemu exited", "status", exitStatus(werr))
		close(exited)
	}()
	fail := func(err error) (*VM, error) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
		os.Remove(pidPath)
		return nil, err
	}
	if statErr != nil {
		return fail(statErr)
	}
	if err := writePidFile(pidPath, pf); err != nil {
		return fail(err)
	}

	sctx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
	defer cancel()
	c, err := d.waitQMP(sctx, filepath.Join(dir, QMPSocketName), exited)
	if err != nil {
		select {
		case <-exited:
			v.mu.Lock()
			werr := v.exitErr
			v.mu.Unlock()
			tail := logTail(logPath, 20)
			if strings.Contains(tail, "cannot set up guest memory") {
				// The kernel refused the mmap of guest RAM (overcommit).
				return fail(fmt.Errorf("%w: %w (%s): %s", hypervisor.ErrHostResources, ErrExitedEarly, exitStatus(werr), tail))
			}
			return fail(fmt.Errorf("%w (%s): %s", ErrExitedEarly, exitStatus(werr), tail))
		default:
		}
		return fail(fmt.Errorf("waiting for QMP: %w; vmm.log: %s", err, logTail(logPath, 10)))
	}
	v.qmp = c
	v.qmpReady = time.Since(start)
	go v.watchEvents()
	v.log.Info("qemu launched", "qmp_ready_ms", v.qmpReady.Milliseconds(), "qemu", c.Version().String(), "accelerator", rec.Accel)
	return v, nil
}

// waitQMP connects to the QMP socket as soon as QEMU listens on it.
func (d *Driver) waitQMP(ctx context.Context, sock string, exited <-chan struct{}) (*qmp.Client, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if _, err := os.Stat(sock); err == nil {
			c, err := qmp.Dial(ctx, sock, qmp.Options{Logger: d.log})
			if err == nil {
				return c, nil
			}
			lastErr = err
		}
		select {
		case <-exited:
			return nil, ErrExitedEarly
		case <-ctx.Done():
			if lastErr != nil {
				return nil, fmt.Errorf("%w (last error: %w)", ctx.Err(), lastErr)
			}
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// Attach implements hypervisor.Hypervisor. When the pid file names a process
// that is gone (or not ours), the stale pid file and QMP socket are removed
// and ErrNotRunning is returned. QEMU serves one QMP client at a time: attach
// fails (handshake timeout) while another handle on the VM is open.
func (d *Driver) Attach(ctx context.Context, dir string) (hypervisor.VM, error) {
	pidPath := filepath.Join(dir, PidFileName)
	pf, err := readPidFile(pidPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("qemu attach %s: no pid file: %w", dir, hypervisor.ErrNotRunning)
	}
	if err != nil {
		return nil, fmt.Errorf("qemu attach %s: %w", dir, err)
	}
	if err := checkProcess(pf); err != nil {
		if errors.Is(err, errStale) {
			removeStale(dir)
			return nil, fmt.Errorf("qemu attach %s: %w: %w", dir, hypervisor.ErrNotRunning, err)
		}
		return nil, fmt.Errorf("qemu attach %s: %w", dir, err)
	}
	done, stop, err := watchExit(pf, 250*time.Millisecond)
	if err != nil {
		if errors.Is(err, errStale) {
			removeStale(dir)
			return nil, fmt.Errorf("qemu attach %s: %w: %w", dir, hypervisor.ErrNotRunning, err)
		}
		return nil, fmt.Errorf("qemu attach %s: %w", dir, err)
	}
	c, err := qmp.Dial(ctx, filepath.Join(dir, QMPSocketName), qmp.Options{Logger: d.log})
	if err != nil {
		stop()
		if cerr := checkProcess(pf); errors.Is(cerr, errStale) {
			return nil, fmt.Errorf("qemu attach %s: %w: exited while attaching", dir, hypervisor.ErrNotRunning)
		}
		return nil, fmt.Errorf("qemu attach %s: %w", dir, err)
	}
	v := newVM(&VM{drv: d, dir: dir, pf: pf, log: d.log.With("dir", dir, "pid", pf.Pid), qmp: c, done: done, stopWatch: stop})
	go v.watchEvents()
	return v, nil
}

// removeStale deletes the pid file and QMP socket of a VMM that is gone.
func removeStale(dir string) {
	os.Remove(filepath.Join(dir, PidFileName))
	os.Remove(filepath.Join(dir, QMPSocketName))
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// logTail returns the last n lines of the file (at most 8 KiB read).
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	const max = 8 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		_, _ = f.Seek(st.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func quoteArgv(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\"'\\$") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}
