package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
)

// TestCLIAgainstRealDaemon drives a real hypemand (subprocess, real QEMU)
// only through cli.Run: push a docker-archive, pull from a registry, run an
// instance to Running, ps/logs/wait/events/stop/rm, and run a program that
// cannot start (run must report its exit code). Two VM boots.
func TestCLIAgainstRealDaemon(t *testing.T) {
	s := e2e.Start(t)
	env := map[string]string{"HYPEMAN_BASE_URL": s.BaseURL, "HYPEMAN_API_KEY": s.Token}
	cli := func(ctx context.Context, args ...string) result {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := Run(ctx, args, nil, &stdout, &stderr, func(k string) string { return env[k] })
		return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	}
	must := func(args ...string) result {
		t.Helper()
		start := time.Now()
		r := cli(t.Context(), args...)
		t.Logf("hypeman %s: %v", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
		if r.code != 0 {
			t.Fatalf("hypeman %s:\n%v\ndaemon log:\n%s", strings.Join(args, " "), r, s.Logs())
		}
		return r
	}

	// push: a docker-archive tarball becomes a ready image.
	img := testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"trap 'echo bye; exit 0' TERM; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"},
	})
	archive := filepath.Join(t.TempDir(), "ticker.tar")
	if err := tarball.WriteToFile(archive, name.MustParseReference("ticker:dev"), img); err != nil {
		t.Fatal(err)
	}
	if r := must("push", archive, "apps/ticker:v1"); r.stdout != "apps/ticker:v1\n" {
		t.Fatalf("push printed %q", r.stdout)
	}

	// pull from a loopback registry.
	reg := testimage.Registry(t)
	ref := testimage.Push(t, reg, "lib/bb:v1", testimage.Busybox(t, testimage.Options{}))
	if r := must("pull", ref); r.stdout != ref+"\n" {
		t.Fatalf("pull printed %q", r.stdout)
	}
	if r := must("images"); !strings.Contains(r.stdout, "apps/ticker:v1") || strings.Contains(r.stdout, "docker.io/apps") || !strings.Contains(r.stdout, ref) {
		t.Fatalf("images:\n%s", r.stdout)
	}

	// Follow this instance's events while it runs.
	evCtx, evCancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer evCancel()
	var (
		wg     sync.WaitGroup
		events result
	)

	id := strings.TrimSpace(must("run", "--name", "ticker", "-m", "256MB", "--cpus", "1", "apps/ticker:v1").stdout)
	if len(id) < 12 {
		t.Fatalf("run printed %q, want an ID", id)
	}
	wg.Add(1)
	go func() { defer wg.Done(); events = cli(evCtx, "events", "ticker") }()
	if r := must("ps"); !strings.Contains(r.stdout, id[:12]) || !strings.Contains(r.stdout, "Running") {
		t.Fatalf("ps:\n%s", r.stdout)
	}
	// Wait (bounded) for the ticker's second line rather than a fixed
	// second: boots under a loaded TCG host vary.
	var tail result
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		tail = must("logs", "--tail", "2", "ticker")
		if strings.Count(tail.stdout, "tick ") >= 2 || time.Now().After(deadline) {
			break
		}
	}
	if len(strings.Split(strings.TrimSpace(tail.stdout), "\n")) != 2 || !strings.HasPrefix(tail.stdout, "tick ") {
		t.Fatalf("logs --tail 2: %q", tail.stdout)
	}
	if r := must("wait", "ticker", "--state", "Running", "--timeout", "10s"); r.stdout != "Running\n" {
		t.Fatalf("wait: %q", r.stdout)
	}
	if r := cli(t.Context(), "rm", "ticker"); r.code != 1 || !strings.Contains(r.stderr, "it is Running") {
		t.Fatalf("rm of a running instance:\n%v", r)
	}
	must("stop", "ticker")
	if r := must("inspect", "ticker"); !strings.Contains(r.stdout, `"state": "Stopped"`) {
		t.Fatalf("inspect after stop:\n%s", r.stdout)
	}
	if r := must("ps"); strings.Contains(r.stdout, "ticker") {
		t.Fatalf("ps lists a Stopped instance:\n%s", r.stdout)
	}
	must("rm", "ticker")
	wg.Wait() // the instance's event stream ends with its deletion
	if events.code != 0 || !strings.Contains(events.stdout, "→ Stopped") || !strings.Contains(events.stdout, "→ deleted") {
		t.Fatalf("events:\n%v", events)
	}
	t.Logf("events:\n%s", events.stdout)

	// A program that cannot start never reaches Running: run reports the
	// exit code and fails. (One that starts and exits at once did reach
	// Running, and run succeeds.)
	r := cli(t.Context(), "run", "--name", "oops", "-m", "256MB", "--cpus", "1", "--entrypoint", "/no/such/program", ref)
	if r.code != 1 || !strings.Contains(r.stderr, "is Stopped instead of Running: exit code 127") {
		t.Fatalf("run of a failing program:\n%v", r)
	}
	t.Logf("failing run stderr:\n%s", r.stderr)
	must("rm", "-f", "oops")
}
