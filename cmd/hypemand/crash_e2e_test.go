package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
)

var tickRE = regexp.MustCompile(`count (\d+)`)

// lastCount reads the counter's last printed value through the logs API.
func lastCountHTTP(t *testing.T, s *e2e.Server, id string) int {
	t.Helper()
	lines := collect(s.LogLines(context.Background(), "/instances/"+id+"/logs?tail=20"), 5*time.Second)
	n := -1
	for _, l := range lines {
		if m := tickRE.FindStringSubmatch(l); m != nil {
			n, _ = strconv.Atoi(m[1])
		}
	}
	return n
}

// Kill -9 the daemon at every step of standby and restore. After each
// restart the instance is in its old or its new state, never in between,
// and stays usable: the program keeps counting from where it was.
func TestCrashDuringStandbyAndRestore(t *testing.T) {
	t.Parallel()
	s := e2e.Start(t)
	pushImage(t, s, "apps/counter:v1", testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"i=0; while true; do i=$((i+1)); echo count $i; sleep 0.3; done"},
	})
	var in instance
	if st, body := s.JSON("POST", "/instances", map[string]any{"name": "crashy", "image": "apps/counter:v1", "size": "256MB", "vcpus": 1}, &in); st != 201 {
		t.Fatalf("create: %d %s", st, body)
	}
	if st, body := s.Do("GET", "/instances/crashy/wait?state=Running&timeout=90s", nil); st != 200 {
		t.Fatalf("wait: %d %s", st, body)
	}

	steps := []struct {
		step, op, want string
	}{
		{"standby:paused", "standby", "Running"},    // nothing saved yet: roll back
		{"standby:saved", "standby", "Running"},     // saved but not committed: roll back
		{"standby:committed", "standby", "Standby"}, // committed: finish
		{"restore:loaded", "restore", "Standby"},    // VM loaded but not committed: roll back
		{"restore:committed", "restore", "Running"}, // committed: finish (resume)
	}
	for _, c := range steps {
		before := -1
		if c.op == "standby" {
			time.Sleep(time.Second)
			before = lastCountHTTP(t, s, in.ID)
		}
		// Restart the daemon with the hook armed, then start the operation.
		s.Kill()
		s.Env = []string{"HYPEMAN_TEST_PAUSE_AT=" + c.step}
		s.Restart()
		go s.TryDo("POST", "/instances/"+in.ID+"/"+c.op, nil) // blocks in the daemon; fails when it dies
		if !s.WaitLog("test hook reached: "+c.step, 60*time.Second) {
			t.Fatalf("%s: hook never reached\n%s", c.step, s.Logs())
		}
		s.Kill()
		s.Env = nil
		s.Restart()

		var got instance
		if st, body := s.JSON("GET", "/instances/"+in.ID, nil, &got); st != 200 || got.State != c.want {
			t.Fatalf("killed at %s: state %q (%d %s), want %s\n%s", c.step, got.State, st, body, c.want, s.Logs())
		}
		if c.want == "Running" {
			after := lastCountHTTP(t, s, in.ID)
			for deadline := time.Now().Add(15 * time.Second); after <= before || after < 0; after = lastCountHTTP(t, s, in.ID) {
				if time.Now().After(deadline) {
					t.Fatalf("killed at %s: program not counting after restart (%d → %d)", c.step, before, after)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
		t.Logf("killed at %-18s → %s", c.step, fmt.Sprint(c.want))
	}
	// Still fully usable.
	if st, body := s.JSON("POST", "/instances/"+in.ID+"/stop", nil, &in); st != 200 || in.State != "Stopped" {
		t.Fatalf("final stop: %d %s", st, body)
	}
}

// vmmPid reads the pid of the instance's QEMU from its pid file.
func vmmPid(t *testing.T, s *e2e.Server, id string) int {
	t.Helper()
	var pf struct{ Pid int }
	b, err := os.ReadFile(filepath.Join(s.DataDir, "instances", id, "qemu.pid"))
	if err == nil {
		err = json.Unmarshal(b, &pf)
	}
	if err != nil || pf.Pid <= 0 {
		t.Fatalf("qemu.pid of %s: %v %q", id, err, b)
	}
	return pf.Pid
}

// qemuAlive: pid is a live (not zombie) qemu-system process.
func qemuAlive(pid int) bool {
	cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cl), "qemu-system") {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	i := strings.LastIndexByte(string(st), ')')
	return err == nil && i > 0 && i+2 < len(st) && st[i+2] != 'Z'
}

// instanceDirs lists the instance dirs in the data dir (dot-dirs included).
func instanceDirs(t *testing.T, s *e2e.Server) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.DataDir, "instances"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// armAndKill restarts the daemon with the step hook armed, starts the
// operation (which blocks in the daemon at step), kills the daemon there
// with -9 and starts a clean one on the same data dir.
func armAndKill(t *testing.T, s *e2e.Server, step, method, path string, body any) {
	t.Helper()
	s.Kill()
	s.Env = []string{"HYPEMAN_TEST_PAUSE_AT=" + step}
	s.Restart()
	go s.TryDo(method, path, body) // blocks in the daemon; fails when it dies
	if !s.WaitLog("test hook reached: "+step, 90*time.Second) {
		t.Fatalf("%s: hook never reached\n%s", step, s.Logs())
	}
	s.Kill()
	s.Env = nil
	s.Restart()
}

// Kill -9 the daemon at every step of deleting an instance whose restart
// policy is always: after the restart the instance is gone for good, VMM
// and files included (it used to come back: reconciled as a crashed VM and
// restarted, 2 of 9 kills).
func TestCrashDuringDelete(t *testing.T) {
	t.Parallel()
	s := e2e.Start(t)
	pushImage(t, s, "apps/sleeper:v1", testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"while true; do sleep 1; done"},
	})
	for i, step := range []string{"delete:intent", "delete:killed", "delete:renamed"} {
		var in instance
		req := map[string]any{"name": fmt.Sprintf("doomed%d", i), "image": "apps/sleeper:v1", "size": "256MB", "vcpus": 1,
			"restart_policy": map[string]any{"policy": "always", "backoff": "1s", "max_backoff": "1s", "stable_after": "10m"}}
		if st, body := s.JSON("POST", "/instances", req, &in); st != 201 {
			t.Fatalf("create: %d %s", st, body)
		}
		if st, body := s.Do("GET", "/instances/"+in.ID+"/wait?state=Running&timeout=120s", nil); st != 200 {
			t.Fatalf("wait: %d %s", st, body)
		}
		pid := vmmPid(t, s, in.ID)
		armAndKill(t, s, step, "DELETE", "/instances/"+in.ID, nil)

		if st, body := s.Do("GET", "/instances/"+in.ID, nil); st != 404 {
			t.Fatalf("killed at %s: instance is back: %d %s\n%s", step, st, body, s.Logs())
		}
		if qemuAlive(pid) {
			t.Fatalf("killed at %s: vmm %d still running", step, pid)
		}
		if dirs := instanceDirs(t, s); len(dirs) != 0 {
			t.Fatalf("killed at %s: left in the instances dir: %v", step, dirs)
		}
		t.Logf("killed at %-15s → deleted", step)
	}
}

// Kill -9 the daemon at the steps of a fork from Running: after the
// restart the source is Running and counting on, and the fork is either
// complete (Running) or gone without a trace (the source used to stay in
// Standby: 2 of 4 kills).
func TestCrashDuringForkFromRunning(t *testing.T) {
	t.Parallel()
	s := e2e.Start(t)
	pushImage(t, s, "apps/counter:v1", testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"i=0; while true; do i=$((i+1)); echo count $i; sleep 0.3; done"},
	})
	var src instance
	if st, body := s.JSON("POST", "/instances", map[string]any{"name": "src", "image": "apps/counter:v1", "size": "256MB", "vcpus": 1}, &src); st != 201 {
		t.Fatalf("create: %d %s", st, body)
	}
	if st, body := s.Do("GET", "/instances/src/wait?state=Running&timeout=120s", nil); st != 200 {
		t.Fatalf("wait: %d %s", st, body)
	}
	steps := []struct {
		step     string
		forkKept bool
	}{
		{"standby:committed", false},
		{"fork:created", false},
		{"fork:started", false},
		{"fork:done", true},
		{"restore:loaded", true},
	}
	for i, c := range steps {
		before := -1
		for deadline := time.Now().Add(30 * time.Second); before < 0; before = lastCountHTTP(t, s, src.ID) {
			if time.Now().After(deadline) {
				t.Fatal("source not counting")
			}
			time.Sleep(200 * time.Millisecond)
		}
		child := fmt.Sprintf("child%d", i)
		armAndKill(t, s, c.step, "POST", "/instances/src/fork", map[string]any{"name": child, "from_running": true})

		var got instance
		if st, body := s.JSON("GET", "/instances/src", nil, &got); st != 200 || got.State != "Running" {
			t.Fatalf("killed at %s: source %d %s\n%s", c.step, st, body, s.Logs())
		}
		after := lastCountHTTP(t, s, src.ID)
		for deadline := time.Now().Add(20 * time.Second); after <= before; after = lastCountHTTP(t, s, src.ID) {
			if time.Now().After(deadline) {
				t.Fatalf("killed at %s: source not counting after restart (%d → %d)", c.step, before, after)
			}
			time.Sleep(200 * time.Millisecond)
		}
		var fork instance
		st, body := s.JSON("GET", "/instances/"+child, nil, &fork)
		switch {
		case c.forkKept && (st != 200 || fork.State != "Running"):
			t.Fatalf("killed at %s: completed fork: %d %s", c.step, st, body)
		case !c.forkKept && st != 404:
			t.Fatalf("killed at %s: half fork still there: %d %s", c.step, st, body)
		}
		want := 1
		if c.forkKept {
			want = 2
		}
		if dirs := instanceDirs(t, s); len(dirs) != want {
			t.Fatalf("killed at %s: instance dirs %v, want %d", c.step, dirs, want)
		}
		if _, err := os.Stat(filepath.Join(s.DataDir, "instances", src.ID, "standby")); !os.IsNotExist(err) {
			t.Fatalf("killed at %s: source snapshot left behind (%v)", c.step, err)
		}
		if c.forkKept {
			if st, body := s.Do("DELETE", "/instances/"+child, nil); st != 204 {
				t.Fatalf("delete fork: %d %s", st, body)
			}
		}
		t.Logf("killed at %-17s → source Running (%d → %d), fork kept=%v", c.step, before, after, c.forkKept)
	}
}
