package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// repoRoot is the directory holding go.mod (this package lives in scripts/).
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the repo root")
	}
	return filepath.Dir(filepath.Dir(file))
}

// goModVersion is the Go version go.mod asks for (toolchain line first).
func goModVersion(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^toolchain go(\S+)`).FindSubmatch(b); m != nil {
		return string(m[1])
	}
	if m := regexp.MustCompile(`(?m)^go (\S+)`).FindSubmatch(b); m != nil {
		return string(m[1])
	}
	t.Fatal("go.mod has no go line")
	return ""
}

// childEnv is the test's environment without the variables a parent make
// exports (so a nested make starts fresh) or that steer the go command,
// plus set (KEY=VALUE).
func childEnv(set ...string) []string {
	drop := map[string]bool{"MAKEFLAGS": true, "MAKELEVEL": true, "MFLAGS": true, "MAKEOVERRIDES": true,
		"GOROOT": true, "GOTOOLCHAIN": true, "GO": true, "HYPEMAN_GO_PREFIX": true, "HYPEMAN_GO_VERSION": true,
		"HYPEMAN_GO_H1": true, "HYPEMAN_GO_CACHE": true, "HYPEMAN_TEST_TIER": true,
		"HYPEMAN_INIT_BINARY": true, "HYPEMAN_KERNEL_DIR": true}
	for _, kv := range set {
		k, _, _ := strings.Cut(kv, "=")
		drop[k] = true
	}
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !drop[k] {
			env = append(env, kv)
		}
	}
	return append(env, set...)
}

// pathWithoutGo is $PATH minus every directory that holds a `go`
// command: what a fresh Debian host without Go looks like.
func pathWithoutGo() string {
	var keep []string
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		if _, err := os.Stat(filepath.Join(d, "go")); err == nil || d == "" {
			continue
		}
		keep = append(keep, d)
	}
	return strings.Join(keep, string(os.PathListSeparator))
}

// run executes cmd and returns its combined output and exit code.
func run(t testing.TB, cmd *exec.Cmd) (string, int) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return string(out), 0
}
