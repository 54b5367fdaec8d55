package main_test

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
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
