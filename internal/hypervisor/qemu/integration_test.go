package qemu

// Integration tests: they run the real qemu-system-x86_64 with the guest
// kernel and no initrd, so the kernel boots until it cannot mount a root
// filesystem and panics. With panic=-1 and -no-reboot QEMU then exits, which
// exercises launch → running → guest output → exit without needing an image.
// Kept to a few short VMs: the host has 2 shared cores.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
	"hypeman/internal/hypervisor/qemu/qmp"
	"hypeman/internal/procfs"
	"hypeman/internal/testutil/tier"
)

// testKernel finds a PVH vmlinux: $HYPEMAN_TEST_KERNEL, else the one the
// setup step installs.
func testKernel(t testing.TB) string {
	t.Helper()
	tier.VM(t)
	cands := []string{os.Getenv("HYPEMAN_TEST_KERNEL"), "/var/lib/hypeman/system/kernel/current/vmlinux"}
	for _, p := range cands {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	tier.Missing(t, "no guest kernel: run the setup step (installs /var/lib/hypeman/system/kernel/current/vmlinux) or set HYPEMAN_TEST_KERNEL to a PVH vmlinux")
	return ""
}

func newTestDriver(t testing.TB) *Driver {
	t.Helper()
	tier.VM(t)
	d, err := New(context.Background(), Config{})
	if err != nil {
		t.Fatalf("qemu driver: %v (is qemu-system-x86 installed?)", err)
	}
	return d
}

// longDir returns a dir whose socket paths exceed the 107-byte sun_path limit.
func longDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), strings.Repeat("long-instance-dir-", 5))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if n := len(filepath.Join(dir, QMPSocketName)); n <= qmp.MaxUnixPath {
		t.Fatalf("dir not long enough: %d", n)
	}
	return dir
}

func baseConfig(t *testing.T, dir, cmdline string) hypervisor.VMConfig {
	return hypervisor.VMConfig{
		ID:         "it-" + filepath.Base(filepath.Dir(dir)),
		Dir:        dir,
		KernelPath: testKernel(t),
		Cmdline:    cmdline,
		MemoryMiB:  256,
		VCPUs:      1,
	}
}

// killOnCleanup makes sure no QEMU outlives a failing test.
func killOnCleanup(t testing.TB, dir string) {
	t.Cleanup(func() {
		pf, err := readPidFile(filepath.Join(dir, PidFileName))
		if err != nil || checkProcess(pf) != nil {
			return
		}
		syscall.Kill(-pf.Pid, syscall.SIGKILL)
		for range 100 {
			if checkProcess(pf) != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

var panicLine = regexp.MustCompile(`\[\s*([0-9.]+)\] Kernel panic`)

func TestLaunchBootsKernelUntilPanicAndExits(t *testing.T) {
	d := newTestDriver(t)
	dir := longDir(t)
	killOnCleanup(t, dir)
	cfg := baseConfig(t, dir, "console=ttyS0 panic=-1")
	disk := filepath.Join(dir, "config.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Disks = []hypervisor.Disk{{Path: disk, ReadOnly: true, Serial: "hm-config"}}
	cfg.AgentSocket = filepath.Join(dir, "agent.sock")
	cfg.Net = &hypervisor.NetConfig{User: true, MAC: "02:00:00:00:00:01", HostForwards: []string{"tcp:127.0.0.1:0-:80"}}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	hv, err := d.Launch(ctx, cfg)
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	defer hv.Close()
	v := hv.(*VM)
	t.Logf("QEMU start → QMP ready: %v (accelerator %s)", v.QMPReadyAfter(), d.Accel().Accel)

	c, err := v.QMP(ctx)
	if err != nil {
		t.Fatal(err)
	}
	events := c.Events(ctx)

	pf, err := readPidFile(filepath.Join(dir, PidFileName))
	if err != nil || pf.Pid != v.Pid() || checkProcess(pf) != nil {
		t.Fatalf("pid file %+v (%v) vs pid %d", pf, err, v.Pid())
	}
	rec, err := ReadLaunchRecord(dir)
	if err != nil || !strings.HasSuffix(rec.Argv[0], "qemu-system-x86_64") || rec.Accel != d.Accel().Accel {
		t.Fatalf("launch record %+v %v", rec, err)
	}
	st, err := procfs.ReadStat(v.Pid())
	if err != nil || st.Pgrp != v.Pid() {
		t.Fatalf("qemu not in its own process group: %+v %v", st, err)
	}
	if s, err := v.Status(ctx); err != nil || s != hypervisor.RunStateRunning {
		t.Fatalf("status = %q, %v", s, err)
	}
	ac, err := qmp.DialUnix(ctx, cfg.AgentSocket)
	if err != nil {
		t.Fatalf("agent socket not served: %v", err)
	}
	ac.Close()

	select {
	case <-v.Done():
	case <-ctx.Done():
		t.Fatal("qemu did not exit after the guest panic")
	}
	wall := time.Since(start)
	if err := v.ExitError(); err != nil {
		t.Errorf("qemu exit: %v", err)
	}

	serial, err := os.ReadFile(filepath.Join(dir, hypervisor.SerialLogName))
	if err != nil {
		t.Fatal(err)
	}
	khz, _, _ := d.TSCKHz(ctx)
	for _, want := range []string{"Linux version", "Command line: console=ttyS0 panic=-1 tsc_early_khz=" + strconv.Itoa(khz), "VFS: Unable to mount root fs"} {
		if !strings.Contains(string(serial), want) {
			t.Errorf("serial.log lacks %q", want)
		}
	}
	if m := panicLine.FindSubmatch(serial); m != nil {
		t.Logf("guest uptime at panic: %ss; wall launch → exit: %v", m[1], wall)
	}

	// The reboot request (panic=-1) shows up as a SHUTDOWN event.
	sawShutdown := false
	for ev := range events {
		if ev.Name == "SHUTDOWN" {
			sawShutdown = true
		}
	}
	if !sawShutdown {
		t.Error("no SHUTDOWN event before QEMU exited")
	}
	for _, f := range []string{PidFileName, QMPSocketName} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind after exit: %v", f, err)
		}
	}
	if _, err := v.Status(ctx); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("status after exit: %v", err)
	}
	if _, err := d.Attach(ctx, dir); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("attach after exit: %v", err)
	}
}

func TestAttachFromFreshDriverAfterHandleDropped(t *testing.T) {
	d := newTestDriver(t)
	dir := longDir(t)
	killOnCleanup(t, dir)
	// panic=0: after the panic the guest halts and QEMU stays up.
	cfg := baseConfig(t, dir, "console=ttyS0 panic=0 quiet")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	v1, err := d.Launch(ctx, cfg)
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	if _, err := d.Launch(ctx, cfg); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second launch into a live dir: %v", err)
	}
	pid := v1.Pid()
	// The daemon "dies": its handle goes away, the VM must not.
	v1.Close()
	pf, err := readPidFile(filepath.Join(dir, PidFileName))
	if err != nil || pf.Pid != pid {
		t.Fatalf("pid file %+v %v", pf, err)
	}
	if err := checkProcess(pf); err != nil {
		t.Fatalf("VM died with its handle: %v", err)
	}

	d2 := newTestDriver(t)
	v2, err := d2.Attach(ctx, dir)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	defer v2.Close()
	if v2.Pid() != pid {
		t.Fatalf("attached pid %d, launched %d", v2.Pid(), pid)
	}

	// QEMU serves one QMP client at a time: a second attach must fail
	// quickly and must not claim the VM is gone.
	sctx, scancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = d2.Attach(sctx, dir)
	scancel()
	if err == nil || errors.Is(err, hypervisor.ErrNotRunning) {
		t.Fatalf("concurrent attach: %v", err)
	}

	if s, err := v2.Status(ctx); err != nil || s != hypervisor.RunStateRunning {
		t.Fatalf("status = %q, %v", s, err)
	}
	if err := v2.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if s, err := v2.Status(ctx); err != nil || s != hypervisor.RunStatePaused {
		t.Fatalf("status after pause = %q, %v", s, err)
	}
	if err := v2.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if s, err := v2.Status(ctx); err != nil || s != hypervisor.RunStateRunning {
		t.Fatalf("status after resume = %q, %v", s, err)
	}

	// Graceful shutdown falls back to kill: this guest has no init to
	// handle the power button.
	start := time.Now()
	if err := v2.Shutdown(ctx, 500*time.Millisecond); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Fatalf("shutdown returned after %v, before its timeout", el)
	}
	select {
	case <-v2.Done():
	default:
		t.Fatal("Done not closed after Shutdown")
	}
	if err := checkProcess(pf); err == nil {
		t.Fatal("qemu still alive after Shutdown")
	}
}

func TestKillLaunchedVM(t *testing.T) {
	d := newTestDriver(t)
	dir := filepath.Join(t.TempDir(), "vm")
	os.Mkdir(dir, 0o755)
	killOnCleanup(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := d.Launch(ctx, baseConfig(t, dir, "console=ttyS0 panic=0"))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.Done():
	default:
		t.Fatal("Done not closed after Kill")
	}
	if err := v.(*VM).ExitError(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("exit status = %v, want killed", err)
	}
	if _, err := os.Stat(filepath.Join(dir, PidFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file after kill: %v", err)
	}
}

func TestLaunchEarlyExitReportsLog(t *testing.T) {
	d := newTestDriver(t)
	dir := t.TempDir()
	killOnCleanup(t, dir)
	bogus := filepath.Join(dir, "not-a-kernel")
	os.WriteFile(bogus, []byte("definitely not an ELF"), 0o644)
	cfg := baseConfig(t, dir, "console=ttyS0")
	cfg.KernelPath = bogus
	_, err := d.Launch(context.Background(), cfg)
	if !errors.Is(err, ErrExitedEarly) {
		t.Fatalf("err = %v, want ErrExitedEarly", err)
	}
	// The error carries QEMU's own complaint from vmm.log.
	if !strings.Contains(err.Error(), "not-a-kernel") {
		t.Fatalf("error lacks the vmm.log tail: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, PidFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file left after failed launch: %v", err)
	}
}

func TestAttachStalePidFile(t *testing.T) {
	tier.Tools(t, "qemu-system-x86_64") // New resolves it (nothing is launched)
	d, err := New(context.Background(), Config{TSCKHz: 1_000_000})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := d.Attach(context.Background(), dir); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Fatalf("empty dir: %v", err)
	}
	// Our own pid with a wrong start time looks like a reused pid.
	writePidFile(filepath.Join(dir, PidFileName), PidFile{Pid: os.Getpid(), StartTime: 1})
	os.WriteFile(filepath.Join(dir, QMPSocketName), nil, 0o644)
	_, err = d.Attach(context.Background(), dir)
	if !errors.Is(err, hypervisor.ErrNotRunning) || !strings.Contains(err.Error(), "reused") {
		t.Fatalf("stale pid file: %v", err)
	}
	for _, f := range []string{PidFileName, QMPSocketName} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stale %s not removed: %v", f, err)
		}
	}
}

func TestBootProbe(t *testing.T) {
	kernel := testKernel(t)
	d := newTestDriver(t)
	khz, _, err := d.TSCKHz(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := BootProbe(context.Background(), d.binary, kernel, hypervisor.AccelTCG, khz, 60*time.Second); err != nil {
		t.Fatalf("TCG boot probe: %v", err)
	}
	t.Logf("TCG boot probe took %v", time.Since(start))
	if _, err := os.Stat("/dev/kvm"); errors.Is(err, os.ErrNotExist) {
		if err := BootProbe(context.Background(), d.binary, kernel, hypervisor.AccelKVM, khz, 10*time.Second); err == nil {
			t.Fatal("KVM boot probe passed without /dev/kvm")
		}
	}
}

// TestLaunchRefusedMemoryIsHostResources: guest memory the kernel will not
// map (more than RAM + swap under the default overcommit heuristic) is
// reported as ErrHostResources, not as an anonymous launch failure.
func TestLaunchRefusedMemoryIsHostResources(t *testing.T) {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		t.Fatal(err)
	}
	hostMiB := (uint64(si.Totalram) + uint64(si.Totalswap)) * uint64(si.Unit) >> 20
	if b, _ := os.ReadFile("/proc/sys/vm/overcommit_memory"); strings.TrimSpace(string(b)) == "1" {
		t.Skip("vm.overcommit_memory=1: the kernel maps any size")
	}
	d := newTestDriver(t)
	dir := t.TempDir()
	killOnCleanup(t, dir)
	cfg := baseConfig(t, dir, "console=ttyS0")
	cfg.MemoryMiB = int(hostMiB * 2)
	_, err := d.Launch(context.Background(), cfg)
	if !errors.Is(err, hypervisor.ErrHostResources) || !errors.Is(err, ErrExitedEarly) || !strings.Contains(err.Error(), "guest memory") {
		t.Fatalf("launch with %d MiB on a %d MiB host: %v, want ErrHostResources", cfg.MemoryMiB, hostMiB, err)
	}
}
