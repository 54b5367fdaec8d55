package conformance_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hypeman/internal/testutil"
	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/upstreamcli"
)

// TestUpstreamVolumes drives hypemand's volumes with hypeman's unmodified
// CLI (volume create/list/get/delete) and Go SDK (`sdkcheck volumes`,
// which also streams a from-archive body). No VM boots.
func TestUpstreamVolumes(t *testing.T) {
	s := e2e.Start(t)
	up := upstreamcli.New(t, s.BaseURL, s.Token)
	run := func(args ...string) upstreamcli.Result {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		return up.Run(t, ctx, "", nil, args...)
	}
	must := func(args ...string) string {
		t.Helper()
		r := run(args...)
		if r.Code != 0 {
			t.Fatalf("hypeman %s: %v\ndaemon log tail:\n%s", strings.Join(args, " "), r, tail(s.Logs(), 30))
		}
		return r.Stdout
	}

	t.Run("cli", func(t *testing.T) {
		id := strings.TrimSpace(must("volume", "create", "--name", "cli-vol", "--size", "1", "--tag", "via=cli"))
		if id == "" || strings.Contains(id, "\n") {
			t.Fatalf("volume create printed %q, want the id", id)
		}
		if got := strings.TrimSpace(must("volume", "list", "-q", "--tag", "via=cli")); got != id {
			t.Errorf("volume list -q --tag via=cli: %q, want %q", got, id)
		}
		if table := must("volume", "list"); !strings.Contains(table, "cli-vol") || !strings.Contains(table, "1 GB") {
			t.Errorf("volume list table:\n%s", table)
		}
		if out := must("--format", "json", "volume", "get", id); !strings.Contains(out, `"name": "cli-vol"`) && !strings.Contains(out, `"name":"cli-vol"`) {
			t.Errorf("volume get: %s", out)
		}
		if r := run("volume", "create", "--name", "cli-vol", "--size", "1"); r.Code == 0 || !strings.Contains(r.Stdout+r.Stderr, "conflict") {
			t.Errorf("duplicate name: %v", r)
		}
		must("volume", "delete", id)
		if got := strings.TrimSpace(must("volume", "list", "-q")); got != "" {
			t.Errorf("volume list after delete: %q", got)
		}
	})

	t.Run("sdk", func(t *testing.T) {
		bin := upstreamcli.SDKProgram(t, filepath.Join(testutil.RepoRoot(t), "internal", "conformance", "testdata", "sdkcheck"))
		cmd := exec.CommandContext(t.Context(), bin, "volumes")
		cmd.Env = append(os.Environ(), "HYPEMAN_BASE_URL="+s.BaseURL, "HYPEMAN_API_KEY="+s.Token)
		out, err := cmd.CombinedOutput()
		t.Logf("sdkcheck volumes:\n%s", out)
		if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "PASS") {
			t.Fatalf("hypeman's Go SDK against hypemand's volumes: %v", err)
		}
	})
}
