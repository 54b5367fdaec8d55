package cli

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"

	"hypeman/internal/testutil/e2e"
	"hypeman/internal/untar/untartest"
)

// TestVolumeCLIAgainstRealDaemon drives a real hypemand through the CLI:
// create empty and from a .tar.gz file (streamed through the daemon's real
// HTTP server), list with tags, get, refusals, persistence across a
// kill -9, rm. No VM boots.
func TestVolumeCLIAgainstRealDaemon(t *testing.T) {
	s := e2e.Start(t, "--volume-max-size-gb", "4")
	env := map[string]string{"HYPEMAN_BASE_URL": s.BaseURL, "HYPEMAN_API_KEY": s.Token}
	cli := func(args ...string) result {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := Run(context.Background(), args, nil, &stdout, &stderr, func(k string) string { return env[k] })
		return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	}
	must := func(args ...string) string {
		t.Helper()
		r := cli(args...)
		if r.code != 0 {
			t.Fatalf("hypeman %s:\n%v\ndaemon log:\n%s", strings.Join(args, " "), r, s.Logs())
		}
		return r.stdout
	}

	dataID := strings.TrimSpace(must("volume", "create", "--name", "data", "--size", "2", "--tag", "team=a"))
	archive := filepath.Join(t.TempDir(), "site.tar.gz")
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(untartest.Tar(t,
		untartest.Entry{Name: "www/", Typ: tar.TypeDir, Mode: 0o750, UID: 33, GID: 33},
		untartest.Entry{Name: "www/index.html", Data: "<h1>hi</h1>", Mode: 0o640, UID: 33, GID: 33}))
	zw.Close()
	os.WriteFile(archive, buf.Bytes(), 0o644)
	siteID := strings.TrimSpace(must("volume", "create", "--name", "site", "--size", "1", "--from-archive", archive))

	if out := must("volume", "list", "-q", "--tag", "team=a"); out != dataID+"\n" {
		t.Errorf("list -q --tag team=a = %q, want %q", out, dataID)
	}
	if out := must("volume", "list", "-q"); out != dataID+"\n"+siteID+"\n" {
		t.Errorf("list -q = %q", out)
	}
	site := mustJSON(t, must("volume", "get", "site"))
	if site["id"] != siteID || site["size_gb"] != float64(1) {
		t.Errorf("get site = %v", site)
	}
	// The archive's file, with its mode and owner, is inside the volume's disk.
	img := filepath.Join(s.DataDir, "volumes", siteID, "data.ext4")
	if out, err := exec.Command("debugfs", "-R", "cat /www/index.html", img).Output(); err != nil || string(out) != "<h1>hi</h1>" {
		t.Errorf("index.html in the volume = %q, %v", out, err)
	}
	if out, _ := exec.Command("debugfs", "-R", "stat /www/index.html", img).Output(); !strings.Contains(string(out), "Mode:  0640") ||
		!strings.Contains(string(out), "User:    33   Group:    33") {
		t.Errorf("index.html inode:\n%s", out)
	}

	// Refusals are clear and create nothing.
	evil := filepath.Join(t.TempDir(), "evil.tar.gz")
	buf.Reset()
	zw = gzip.NewWriter(&buf)
	zw.Write(untartest.Tar(t, untartest.Entry{Name: "../../etc/cron.d/evil", Data: "x"}))
	zw.Close()
	os.WriteFile(evil, buf.Bytes(), 0o644)
	for _, c := range []struct {
		args    []string
		mention string
	}{
		{[]string{"volume", "create", "--name", "evil", "--size", "1", "--from-archive", evil}, `"../../etc/cron.d/evil"`},
		{[]string{"volume", "create", "--name", "data", "--size", "1"}, `"data" is taken`},
		{[]string{"volume", "create", "--name", "huge", "--size", "5"}, "volume_max_size_gb"},
	} {
		if r := cli(c.args...); r.code != 1 || !strings.Contains(r.stderr, c.mention) {
			t.Errorf("%v: want exit 1 mentioning %q:\n%v", c.args, c.mention, r)
		}
	}

	// A killed daemon's successor has the same volumes.
	s.Kill()
	s.Restart()
	if out := must("volume", "list", "-q"); out != dataID+"\n"+siteID+"\n" {
		t.Errorf("after restart list -q = %q", out)
	}
	must("volume", "rm", "data", "site")
	if out := must("volume", "list", "-q"); out != "" {
		t.Errorf("after rm list -q = %q", out)
	}
	if entries, _ := os.ReadDir(filepath.Join(s.DataDir, "volumes")); len(entries) != 0 {
		t.Errorf("volumes dir not empty after rm: %d entries", len(entries))
	}
}
