package conformance_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/upstreamcli"
)

// TestUpstreamScheduleAndTTL drives snapshot schedules with hypeman's
// unmodified CLI (snapshot schedule set/get/delete, with its validation
// errors), and instance expiry end to end: `run --ttl` (our CLI: the
// upstream CLI in compat has no --ttl flag), the daemon killed before the
// deadline and restarted after it, the instance deleted once.
func TestUpstreamScheduleAndTTL(t *testing.T) {
	s := e2e.Start(t)
	up := upstreamcli.New(t, s.BaseURL, s.Token)
	s.PushImage("conformance/idle:v1", testimage.Busybox(t, testimage.Options{Cmd: []string{"/bin/sh", "-c", "exec sleep 1000000"}}))
	f := &flow{t: t, s: s, up: up}
	ours := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, e2e.CLIBinary(t), args...)
		cmd.Env = append(os.Environ(), "HYPEMAN_BASE_URL="+s.BaseURL, "HYPEMAN_API_KEY="+s.Token)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	f.step("run", func(t *testing.T) {
		f.cli(t, nil, "run", "--name", "sched", "--memory", "256MB", "--cpus", "1", "conformance/idle:v1")
		f.wait(t, "sched", "Running")
	})

	f.step("snapshot schedule set/get/delete", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if r := up.Run(t, ctx, "", nil, "snapshot", "schedule", "set", "sched", "--interval", "30s", "--max-count", "2"); r.Code == 0 || !strings.Contains(r.Stdout+r.Stderr, "interval") {
			t.Errorf("interval below 1m: %v, want a 400 naming interval", r)
		}
		if r := up.Run(t, ctx, "", nil, "snapshot", "schedule", "set", "sched", "--interval", "1h", "--max-count", "1", "--name-prefix", "Bad_"); r.Code == 0 || !strings.Contains(r.Stdout+r.Stderr, "name_prefix") {
			t.Errorf("bad name prefix: %v, want a 400 naming name_prefix", r)
		}
		type schedule struct {
			InstanceID string            `json:"instance_id"`
			Interval   string            `json:"interval"`
			NamePrefix string            `json:"name_prefix"`
			Metadata   map[string]string `json:"metadata"`
			Retention  struct {
				MaxCount int    `json:"max_count"`
				MaxAge   string `json:"max_age"`
			} `json:"retention"`
			NextRunAt time.Time  `json:"next_run_at"`
			LastRunAt *time.Time `json:"last_run_at"`
		}
		var set, got schedule
		f.json(t, &set, "snapshot", "schedule", "set", "sched", "--interval", "1h", "--max-count", "2", "--max-age", "48h",
			"--name-prefix", "conf", "--metadata", "suite=conformance")
		in := f.inspect(t, "sched")
		if set.InstanceID != in.ID || set.Interval != "1h" || set.NamePrefix != "conf" || set.Metadata["suite"] != "conformance" ||
			set.Retention.MaxCount != 2 || set.Retention.MaxAge != "48h" || set.LastRunAt != nil ||
			set.NextRunAt.Before(time.Now().Add(50*time.Minute)) {
			t.Errorf("schedule set: %+v", set)
		}
		f.json(t, &got, "snapshot", "schedule", "get", "sched")
		if got.InstanceID != in.ID || got.Interval != "1h" || !got.NextRunAt.Equal(set.NextRunAt) {
			t.Errorf("schedule get: %+v, want %+v", got, set)
		}
		r := f.cli(t, nil, "snapshot", "schedule", "delete", "sched")
		if !strings.Contains(r.Stdout+r.Stderr, "sched") {
			t.Errorf("schedule delete printed %v", r)
		}
		if r := up.Run(t, ctx, "", nil, "snapshot", "schedule", "get", "sched"); r.Code == 0 || !strings.Contains(strings.ToLower(r.Stdout+r.Stderr), "not found") {
			t.Errorf("get after delete: %v, want not found", r)
		}
		f.cli(t, nil, "rm", "--force", "sched")
	})

	f.step("run --ttl survives a daemon restart and acts once", func(t *testing.T) {
		out, err := ours(t, "run", "-d", "--name", "brief", "--memory", "256MB", "--cpus", "1", "--ttl", "5s", "conformance/idle:v1")
		if err != nil {
			t.Fatalf("hypeman run --ttl: %v\n%s", err, out)
		}
		var in struct {
			ID        string     `json:"id"`
			ExpiresAt *time.Time `json:"expires_at"`
		}
		// hypeman's SDK types have no expires_at yet: read the API.
		if st, body := s.JSON("GET", "/instances/brief", nil, &in); st != 200 {
			t.Fatalf("GET brief: %d %s", st, body)
		}
		if in.ExpiresAt == nil || in.ExpiresAt.Sub(time.Now()) > 6*time.Second {
			t.Fatalf("expires_at %v, want about 5s from now", in.ExpiresAt)
		}
		// The daemon dies before the deadline (the VM keeps running) and
		// comes back after it.
		s.Kill()
		for time.Now().Before(in.ExpiresAt.Add(time.Second)) {
			time.Sleep(100 * time.Millisecond)
		}
		s.Restart()
		restarted := time.Now()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			st, _ := s.Do("GET", "/instances/"+in.ID, nil)
			if st == 404 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance still there (%d) two minutes after restart:\n%s", st, tail(s.Logs(), 30))
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("overdue instance deleted %v after the daemon came back", time.Since(restarted).Round(time.Millisecond))
		if pids := vmmsOf(in.ID); len(pids) != 0 {
			t.Fatalf("the expired instance's VMM still runs: pids %v", pids)
		}
		if n := strings.Count(s.Logs(), "deleted expired instance"); n != 1 {
			t.Fatalf("the restarted daemon logged %d expiry deletes, want 1:\n%s", n, tail(s.Logs(), 30))
		}
		// Another restart: nothing left to act on.
		s.Kill()
		s.Restart()
		var list []json.RawMessage
		if st, _ := s.JSON("GET", "/instances", nil, &list); st != 200 || len(list) != 0 {
			t.Fatalf("instances after a second restart: %d %s", st, list)
		}
		if n := strings.Count(s.Logs(), "deleted expired instance"); n != 0 {
			t.Fatalf("the second restart acted on an expiry again:\n%s", tail(s.Logs(), 30))
		}
	})
}

// vmmsOf lists the processes whose command line names instance id (its
// QEMU runs with the instance dir in its arguments).
func vmmsOf(id string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), "qemu") && strings.Contains(string(b), id) {
			out = append(out, e.Name())
		}
	}
	return out
}
