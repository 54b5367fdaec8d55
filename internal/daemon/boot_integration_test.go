package daemon_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hypeman/internal/config"
	"hypeman/internal/daemon"
	"hypeman/internal/hypervisor"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/system"
	"hypeman/internal/testutil"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/tier"
)

// newDaemon assembles the real core on a fresh data dir with the installed
// kernel and the test init binary. VMs are killed on cleanup.
func newDaemon(t *testing.T) *daemon.Daemon { return newDaemonB(t) }

func newDaemonB(t testing.TB) *daemon.Daemon {
	t.Helper()
	tier.VM(t)
	testutil.RequireTools(t, "qemu-system-x86_64", "mkfs.erofs", "mkfs.ext4")
	return newDaemonWith(t, nil)
}

// newDaemonWith is newDaemonB with extra settings. Networking is off unless
// a test asks for it (inside its own netns): tests never touch the host's
// network namespace.
func newDaemonWith(t testing.TB, extra map[string]string) *daemon.Daemon {
	t.Helper()
	tier.VM(t)
	settings := map[string]string{
		"data_dir":     t.TempDir(),
		"kernel_dir":   testutil.KernelDir(),
		"init_binary":  testutil.InitBinary(t),
		"network_mode": "none",
		// The tests' registries are in-process, on loopback.
		"registries_allow": "127.0.0.0/8",
		// No background template builds (extra VMs) unless a test asks.
		"warm_enabled": "false",
	}
	for k, v := range extra {
		settings[k] = v
	}
	cfg, err := config.Load("", nil, settings)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Kernel(t)      // clear message when missing
	var logger *slog.Logger // default: stderr, shown with the test output
	if _, bench := t.(*testing.B); bench {
		// Benchmark result lines must not be split by log lines.
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	d, err := daemon.New(context.Background(), cfg, logger)
	if err != nil {
		t.Fatalf("daemon: %v", err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		list, _ := d.Instances.List(ctx, instances.ListOptions{})
		for _, in := range list {
			_ = d.Instances.Delete(ctx, in.ID)
		}
		d.Close()
	})
	return d
}

// waitState polls until the instance reaches want (tests only; the product
// uses the event-driven wait).
func waitState(t *testing.T, d *daemon.Daemon, id string, want state.State, timeout time.Duration) *instances.Instance {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last *instances.Instance
	for time.Now().Before(deadline) {
		in, err := d.Instances.Get(context.Background(), id)
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		last = in
		if in.State == want {
			return in
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("instance %s: state %s after %s, want %s\nserial log:\n%s", id, last.State, timeout, want, serialLog(t, d, id))
	return nil
}

func serialLog(t *testing.T, d *daemon.Daemon, id string) string {
	b, _ := os.ReadFile(filepath.Join(d.Config.Paths().InstanceDir(id), hypervisor.SerialLogName))
	return string(b)
}

const bootTimeout = 90 * time.Second

func TestBootProgramOutputAndExitCodes(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/hello", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"echo hello-from-the-guest; exit 0"},
	}))
	ctx := context.Background()

	ok, err := d.Instances.Create(ctx, instances.CreateParams{Name: "ok", Image: ref, Size: "256MB", VCPUs: 1})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	bad, err := d.Instances.Create(ctx, instances.CreateParams{Name: "bad", Image: ref, Size: "256MB", VCPUs: 1,
		Cmd: []string{"echo failing on purpose >&2; exit 3"}})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if ok.State != state.Initializing && ok.State != state.Running && ok.State != state.Stopped {
		t.Fatalf("fresh instance state %s", ok.State)
	}
	got := waitState(t, d, ok.ID, state.Stopped, bootTimeout)
	if got.ExitCode == nil || *got.ExitCode != 0 {
		t.Fatalf("exit code %v (%v), want 0\n%s", got.ExitCode, got.ExitMessage, serialLog(t, d, ok.ID))
	}
	log := serialLog(t, d, ok.ID)
	if !strings.Contains(log, "hello-from-the-guest") || !strings.Contains(log, "HYPEMAN-PROGRAM-START") {
		t.Fatalf("program output missing from serial log:\n%s", log)
	}
	if got.StartedAt == nil || got.StoppedAt == nil || got.StoppedAt.Before(*got.StartedAt) {
		t.Fatalf("timestamps: started %v stopped %v", got.StartedAt, got.StoppedAt)
	}

	got = waitState(t, d, bad.ID, state.Stopped, bootTimeout)
	if got.ExitCode == nil || *got.ExitCode != 3 || got.ExitMessage == nil || !strings.Contains(*got.ExitMessage, "3") {
		t.Fatalf("exit %v %v, want code 3\n%s", got.ExitCode, got.ExitMessage, serialLog(t, d, bad.ID))
	}
	if !strings.Contains(serialLog(t, d, bad.ID), "failing on purpose") {
		t.Fatal("stderr of the program is not in the serial log")
	}
	// The app log API sees the same output.
	var lines []string
	if err := d.Instances.StreamLogs(ctx, bad.ID, instances.LogOptions{Source: instances.LogApp, Tail: 100}, func(l string) error {
		lines = append(lines, l)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "failing on purpose") {
		t.Fatalf("logs tail: %q", lines)
	}
}

func TestBootConfigReachesProgram(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	host := testimage.Registry(t)
	script := "#!/bin/sh\necho \"args=$*\"\necho \"pwd=$(pwd)\"\necho \"from_image=$FROM_IMAGE\"\necho \"from_req=$FROM_REQ\"\necho \"overridden=$OVERRIDE\"\necho \"uid=$(id -u)\"\n"
	ref := testimage.Push(t, host, "test/config", testimage.Busybox(t, testimage.Options{
		Files:      []testimage.File{{Path: "/app/show.sh", Data: []byte(script), Mode: 0o755}},
		Env:        []string{"FROM_IMAGE=image-value", "OVERRIDE=from-image"},
		Entrypoint: []string{"/app/show.sh"},
		Cmd:        []string{"default-arg"},
		WorkingDir: "/app",
		User:       "app",
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{
		Name: "cfg", Image: ref, Size: "256MB", VCPUs: 1,
		Env: map[string]string{"FROM_REQ": "request value", "OVERRIDE": "from-request"},
		Cmd: []string{"one", "two words"},
	})
	if err != nil {
		t.Fatal(err)
	}
	// working_dir replaces the image's WORKDIR (/app); a missing one is
	// created, as Docker does.
	wd, err := d.Instances.Create(ctx, instances.CreateParams{Name: "wd", Image: ref, Size: "256MB", VCPUs: 1, WorkingDir: "/srv/work"})
	if err != nil {
		t.Fatal(err)
	}
	got := waitState(t, d, in.ID, state.Stopped, bootTimeout)
	log := serialLog(t, d, in.ID)
	for _, want := range []string{"args=one two words", "pwd=/app", "from_image=image-value", "from_req=request value", "overridden=from-request", "uid=1000"} {
		if !strings.Contains(log, want) {
			t.Errorf("serial log lacks %q", want)
		}
	}
	if got.ExitCode == nil || *got.ExitCode != 0 {
		t.Errorf("exit %v %v", got.ExitCode, got.ExitMessage)
	}
	if t.Failed() {
		t.Log(log)
	}
	got = waitState(t, d, wd.ID, state.Stopped, bootTimeout)
	if wdLog := serialLog(t, d, wd.ID); !strings.Contains(wdLog, "pwd=/srv/work") || got.WorkingDir != "/srv/work" ||
		got.ExitCode == nil || *got.ExitCode != 0 {
		t.Errorf("working_dir /srv/work: instance %q, exit %v %v, serial log:\n%s", got.WorkingDir, got.ExitCode, got.ExitMessage, wdLog)
	}

	// Entrypoint override drops the image cmd (Docker semantics).
	in2, err := d.Instances.Create(ctx, instances.CreateParams{Name: "ep", Image: ref, Size: "256MB", VCPUs: 1,
		Entrypoint: []string{"/bin/echo", "entrypoint-override"}})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, in2.ID, state.Stopped, bootTimeout)
	log2 := serialLog(t, d, in2.ID)
	if !strings.Contains(log2, "entrypoint-override") || strings.Contains(log2, "default-arg") {
		t.Fatalf("entrypoint override:\n%s", log2)
	}
}

func TestBootWritableDiskPersistsAcrossBoots(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/persist", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd: []string{"mkdir -p /data; echo boot >> /data/boots; echo changed > /etc/motd; " +
			"echo boots=$(wc -l < /data/boots); cat /data/boots"},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "persist", Image: ref, Size: "256MB", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, in.ID, state.Stopped, bootTimeout)
	img, err := d.Images.Get(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	before := fileSum(t, img.DiskPath)
	if !strings.Contains(serialLog(t, d, in.ID), "boots=1") {
		t.Fatalf("first boot:\n%s", serialLog(t, d, in.ID))
	}
	if _, err := d.Instances.Start(ctx, in.ID, instances.StartParams{}); err != nil {
		t.Fatal(err)
	}
	got := waitState(t, d, in.ID, state.Stopped, bootTimeout)
	if !strings.Contains(serialLog(t, d, in.ID), "boots=2") {
		t.Fatalf("second boot did not see the first boot's file:\n%s", serialLog(t, d, in.ID))
	}
	if got.ExitCode == nil || *got.ExitCode != 0 {
		t.Fatalf("exit %v %v", got.ExitCode, got.ExitMessage)
	}
	if after := fileSum(t, img.DiskPath); after != before {
		t.Fatal("image disk changed while instances wrote to their overlay")
	}
}

func fileSum(t *testing.T, path string) [32]byte {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func TestBadInputGivesClearErrors(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	host := testimage.Registry(t)
	ctx := context.Background()

	_, err := d.Instances.Create(ctx, instances.CreateParams{Name: "nope", Image: host + "/does/not-exist:1"})
	if !errors.Is(err, images.ErrNotFoundUpstream) {
		t.Errorf("unknown image: got %v, want ErrNotFoundUpstream", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	_, err = d.Instances.Create(ctx, instances.CreateParams{Name: "unreach", Image: closed + "/x/y:1"})
	if !errors.Is(err, images.ErrRegistryUnreachable) || !strings.Contains(err.Error(), closed) {
		t.Errorf("unreachable registry: got %v", err)
	}
	_, err = d.Instances.Create(ctx, instances.CreateParams{Name: "Bad_Name", Image: "x"})
	var ia *instances.InvalidArgumentError
	if !errors.As(err, &ia) || ia.Field != "name" {
		t.Errorf("bad name: %v", err)
	}
	if _, err := d.Instances.Create(ctx, instances.CreateParams{Name: "huge", Image: "x", Size: "100TB"}); !errors.As(err, &ia) || ia.Field != "size" {
		t.Errorf("huge size: %v", err)
	}
	if _, err := d.Instances.Get(ctx, "missing"); !errors.Is(err, instances.ErrNotFound) {
		t.Errorf("get missing: %v", err)
	}
	list, _ := d.Instances.List(ctx, instances.ListOptions{})
	if len(list) != 0 {
		t.Errorf("failed creates left %d instances behind", len(list))
	}

	// Missing kernel: the daemon refuses to start and says how to fix it.
	cfg, _ := config.Load("", nil, map[string]string{"data_dir": t.TempDir(), "kernel_dir": t.TempDir(), "init_binary": testutil.InitBinary(t), "network_mode": "none"})
	_, err = daemon.New(ctx, cfg, nil)
	if !errors.Is(err, system.ErrKernelNotFound) || !strings.Contains(err.Error(), "setup") {
		t.Errorf("missing kernel: %v", err)
	}
}
