package daemon_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"hypeman/internal/daemon"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/testutil/testimage"
)

// A running program gets SIGTERM on a graceful stop, and a VM keeps running
// across a daemon restart: the new daemon re-adopts it and can stop it.
func TestGracefulStopAndReadoption(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/loop", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"trap 'echo got-sigterm; exit 7' TERM; echo looping; while true; do sleep 0.2; done"},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "loop", Image: ref, Size: "256MB", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)
	// Running means the program was started; wait until it has installed
	// its TERM trap (it prints "looping" right after).
	waitFor(t, "program output", 30*time.Second, func() bool { return strings.Contains(serialLog(t, d, in.ID), "looping") })
	pid := mustGet(t, d, in.ID).Pid

	// Restart the daemon core on the same data dir: the VM must survive.
	cfg := d.Config
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d2, err := daemon.New(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Close() })
	got := mustGet(t, d2, in.ID)
	if got.State != state.Running || got.Pid != pid {
		t.Fatalf("after daemon restart: state %s pid %d (was %d)", got.State, got.Pid, pid)
	}

	start := time.Now()
	stopped, err := d2.Instances.Stop(ctx, "loop", instances.StopParams{})
	if err != nil {
		t.Fatal(err)
	}
	if stopped.State != state.Stopped {
		t.Fatalf("after stop: %s", stopped.State)
	}
	if stopped.ExitCode == nil || *stopped.ExitCode != 7 {
		t.Fatalf("exit %v %v: the program's TERM trap did not run\n%s", stopped.ExitCode, stopped.ExitMessage, serialLog(t, d2, in.ID))
	}
	if !strings.Contains(serialLog(t, d2, in.ID), "got-sigterm") {
		t.Fatal("no got-sigterm in serial log")
	}
	t.Logf("graceful stop took %s", time.Since(start))
	if _, err := d2.Instances.Stop(ctx, in.ID, instances.StopParams{}); err == nil || !strings.Contains(err.Error(), "allowed: start") {
		t.Fatalf("stop of a stopped instance: %v", err)
	}
	if err := d2.Instances.Delete(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
}

func mustGet(t *testing.T, d *daemon.Daemon, id string) *instances.Instance {
	t.Helper()
	in, err := d.Instances.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// A stop's timeout shortens the instance's stop_timeout: a program that
// ignores SIGTERM, in an instance with a 30s stop_timeout, is killed after
// a stop with timeout 1s, long before its own window would end.
func TestStopTimeoutKillsSigtermIgnorer(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/stubborn", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"trap '' TERM; echo ignoring; while true; do sleep 0.2; done"},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "stubborn", Image: ref, Size: "256MB", VCPUs: 1, StopTimeout: "30s"})
	if err != nil {
		t.Fatal(err)
	}
	if in.StopTimeout != "30s" {
		t.Fatalf("stop_timeout %q", in.StopTimeout)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)
	waitFor(t, "program output", 30*time.Second, func() bool { return strings.Contains(serialLog(t, d, in.ID), "ignoring") })

	start := time.Now()
	stopped, err := d.Instances.Stop(ctx, in.ID, instances.StopParams{Timeout: "1s"})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	msg := ""
	if stopped.ExitMessage != nil {
		msg = *stopped.ExitMessage
	}
	if stopped.State != state.Stopped || !strings.Contains(msg, "killed") {
		t.Fatalf("after stop: %s, exit message %q", stopped.State, msg)
	}
	if took >= 30*time.Second {
		t.Fatalf("stop took %s: the 1s timeout was not enforced within the 30s stop_timeout", took)
	}
	t.Logf("stop with timeout 1s took %s: %s", took, msg)
	if err := d.Instances.Delete(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
}
