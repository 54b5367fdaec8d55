package scripts

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"hypeman/internal/testutil/tier"
)

// toolchainReachable checks that the Go module proxy serves the toolchain
// module go.mod needs (tests may reach the proxy; nothing else).
func toolchainReachable(t *testing.T, ver string) {
	t.Helper()
	tier.Tools(t, "bash", "curl", "unzip", "flock", "sha256sum", "base64")
	url := "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go" + ver + ".linux-" + runtime.GOARCH + ".info"
	c := &http.Client{Timeout: 20 * time.Second}
	resp, err := c.Get(url)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			err = &httpStatusError{resp.Status}
		}
	}
	if err != nil {
		tier.Missing(t, "the Go module proxy is unreachable (%s: %v): the setup test downloads the Go toolchain from it", url, err)
	}
}

type httpStatusError struct{ status string }

func (e *httpStatusError) Error() string { return e.status }

// setupGo runs `scripts/setup.sh go` on a host without a usable Go:
// extraPath comes first on a PATH stripped of every `go`.
func setupGo(t *testing.T, extraPath string, env ...string) (string, int) {
	t.Helper()
	path := pathWithoutGo()
	if extraPath != "" {
		path = extraPath + string(os.PathListSeparator) + path
	}
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "setup.sh"), "go")
	cmd.Env = childEnv(append([]string{"PATH=" + path}, env...)...)
	return run(t, cmd)
}

// Issue 11 item 10: on a host whose Go is missing or too old (Debian 12's
// 1.19), setup installs go.mod's toolchain from the module proxy, checked
// by its h1: hash, under a configurable prefix; a second run does nothing;
// the Makefile then builds with it; a wrong hash installs nothing.
func TestSetupInstallsGoToolchain(t *testing.T) {
	ver := goModVersion(t)
	toolchainReachable(t, ver)
	prefix := t.TempDir()
	// Downloads are kept across runs (70 MB); every use re-checks the hash.
	cache := filepath.Join(os.TempDir(), "hypeman-test-go-toolchain-cache")

	// An old Debian go on PATH.
	oldGo := t.TempDir()
	if err := os.WriteFile(filepath.Join(oldGo, "go"), []byte("#!/bin/sh\necho 'go version go1.19.8 linux/amd64'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, code := setupGo(t, oldGo, "HYPEMAN_GO_PREFIX="+prefix, "HYPEMAN_GO_CACHE="+cache)
	if code != 0 || !strings.Contains(out, "go 1.19.8, older than go.mod's "+ver) {
		t.Fatalf("setup go: exit %d\n%s", code, out)
	}
	root := filepath.Join(prefix, "go-"+ver)
	for _, bin := range []string{filepath.Join(prefix, "bin", "go"), filepath.Join(root, "bin", "go")} {
		cmd := exec.Command(bin, "version")
		cmd.Env = childEnv("GOTOOLCHAIN=local")
		got, code := run(t, cmd)
		if code != 0 || !strings.HasPrefix(got, "go version go"+ver+" linux/") {
			t.Fatalf("%s version: exit %d %q", bin, code, got)
		}
	}
	cmd := exec.Command(filepath.Join(prefix, "bin", "go"), "env", "GOROOT")
	cmd.Env = childEnv("GOTOOLCHAIN=local")
	if got, _ := run(t, cmd); strings.TrimSpace(got) != root {
		t.Fatalf("GOROOT of the linked go = %q, want %s", got, root)
	}
	if _, err := os.Stat(filepath.Join(root, "pkg", "tool")); err != nil {
		t.Fatalf("toolchain incomplete: %v", err)
	}

	t.Run("second run does nothing", func(t *testing.T) {
		start := time.Now()
		out, code := setupGo(t, oldGo, "HYPEMAN_GO_PREFIX="+prefix)
		if code != 0 || !strings.Contains(out, "present in "+root+", skipped") || strings.Contains(out, "fetching") {
			t.Fatalf("second run: exit %d\n%s", code, out)
		}
		t.Logf("second run: %s", time.Since(start).Round(time.Millisecond))
	})

	t.Run("Makefile builds with it", func(t *testing.T) {
		tier.Tools(t, "make")
		cmd := exec.Command("make", "-s", "-n", "-C", repoRoot(t), "init", "HYPEMAN_GO_PREFIX="+prefix)
		cmd.Env = childEnv("PATH=" + pathWithoutGo())
		out, code := run(t, cmd)
		if want := filepath.Join(root, "bin", "go") + " build"; code != 0 || !strings.Contains(out, want) {
			t.Fatalf("make -n init: exit %d, want %q in\n%s", code, want, out)
		}
	})

	t.Run("wrong hash installs nothing", func(t *testing.T) {
		// A private copy of the cache: a mismatch deletes the cached zip.
		private := t.TempDir()
		name := "golang.org-toolchain@v0.0.1-go" + ver + ".linux-" + runtime.GOARCH + ".zip"
		if data, err := os.ReadFile(filepath.Join(cache, name)); err == nil {
			if err := os.WriteFile(filepath.Join(private, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		other := t.TempDir()
		bad := "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
		out, code := setupGo(t, "", "HYPEMAN_GO_PREFIX="+other, "HYPEMAN_GO_CACHE="+private, "HYPEMAN_GO_H1="+bad)
		if code == 0 || !strings.Contains(out, "hash mismatch") || !strings.Contains(out, "want "+bad) {
			t.Fatalf("wrong hash: exit %d\n%s", code, out)
		}
		for _, p := range []string{filepath.Join(other, "go-"+ver), filepath.Join(other, "bin", "go")} {
			if _, err := os.Lstat(p); !os.IsNotExist(err) {
				t.Errorf("%s exists after a hash mismatch (%v)", p, err)
			}
		}
		if m, _ := filepath.Glob(filepath.Join(other, ".go-stage-*")); len(m) > 0 {
			t.Errorf("staging left behind: %v", m)
		}
	})
}
