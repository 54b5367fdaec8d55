// Package upstreamcli builds and runs hypeman's own CLI (kernel/hypeman-cli
// with its Go SDK, kept unmodified in the shared/compat directory next to
// the repository) for tests that check wire compatibility: hypeman users
// drive hypemand with that binary, so tests do too. It also builds small
// test programs against that SDK (SDKProgram), for what the CLI does not
// expose.
//
// Why a package: several tests (the stream protocols, the API conformance
// test) need the same binary, built the same way - from a copy of the
// sources, because shared/ is read-only in CI, with dependencies from the Go
// module proxy - and once per test process. A build that fails fails the
// test with the reason: a compatibility test that skips proves nothing.
package upstreamcli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/testutil"
)

// CompatDirEnv overrides where the compat sources are looked up.
const CompatDirEnv = "HYPEMAN_COMPAT_DIR"

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// CompatDir is the directory holding hypeman-cli/ and hypeman-go/:
// $HYPEMAN_COMPAT_DIR, else shared/compat in the repository's directory or
// the nearest ancestor that has one (the repository may be a worktree
// nested deeper than the shared directory).
func CompatDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv(CompatDirEnv); d != "" {
		return d
	}
	for dir := filepath.Dir(testutil.RepoRoot(t)); ; dir = filepath.Dir(dir) {
		c := filepath.Join(dir, "shared", "compat")
		if _, err := os.Stat(filepath.Join(c, "hypeman-cli", "go.mod")); err == nil {
			return c
		}
		if dir == filepath.Dir(dir) {
			t.Fatalf("hypeman's CLI sources not found: no shared/compat/hypeman-cli above %s (set %s)", testutil.RepoRoot(t), CompatDirEnv)
			return ""
		}
	}
}

// Binary builds the CLI once per test process and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	compat := CompatDir(t)
	buildOnce.Do(func() { binPath, buildErr = build(compat) })
	if buildErr != nil {
		t.Fatalf("build hypeman's CLI from %s: %v", compat, buildErr)
	}
	return binPath
}

func build(compat string) (string, error) {
	dir, err := os.MkdirTemp("", "hypeman-upstream-cli-")
	if err != nil {
		return "", err
	}
	src := filepath.Join(dir, "compat")
	// The CLI's go.mod replaces the SDK with ../hypeman-go: copy both.
	for _, sub := range []string{"hypeman-cli", "hypeman-go"} {
		if err := os.CopyFS(filepath.Join(src, sub), os.DirFS(filepath.Join(compat, sub))); err != nil {
			return "", fmt.Errorf("copy %s: %w", sub, err)
		}
	}
	bin := filepath.Join(dir, "hypeman-upstream")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/hypeman")
	cmd.Dir = filepath.Join(src, "hypeman-cli")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v (dependencies come from the Go module proxy):\n%s", err, bytes.TrimSpace(out))
	}
	return bin, nil
}

// SDKProgram builds the Go program (package main) in dir against hypeman's
// Go SDK from the compat directory, unmodified, and returns the binary. The
// program gets its own module (the SDK is not a dependency of this
// repository): a go.mod requiring the SDK, replaced by a copy of the compat
// sources; the SDK's own dependencies come from the Go module proxy.
func SDKProgram(t testing.TB, dir string) string {
	t.Helper()
	compat := CompatDir(t)
	tmp := t.TempDir()
	sdk := filepath.Join(tmp, "hypeman-go")
	if err := os.CopyFS(sdk, os.DirFS(filepath.Join(compat, "hypeman-go"))); err != nil {
		t.Fatalf("copy hypeman's Go SDK: %v", err)
	}
	goVersion := "1.24.0"
	if b, err := os.ReadFile(filepath.Join(sdk, "go.mod")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "go "); ok {
				goVersion = v
				break
			}
		}
	}
	prog := filepath.Join(tmp, "prog")
	if err := os.CopyFS(prog, os.DirFS(dir)); err != nil {
		t.Fatalf("copy %s: %v", dir, err)
	}
	gomod := "module sdkprogram\n\ngo " + goVersion + "\n\nrequire github.com/kernel/hypeman-go v0.0.0\n\n" +
		"replace github.com/kernel/hypeman-go => ../hypeman-go\n"
	if err := os.WriteFile(filepath.Join(prog, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(tmp, filepath.Base(dir))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = prog
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s against hypeman's Go SDK (dependencies come from the Go module proxy): %v\n%s", dir, err, bytes.TrimSpace(out))
	}
	return bin
}

// CLI runs the binary against one server with a throwaway HOME (the CLI
// would otherwise read ~/.config/hypeman/cli.yaml).
type CLI struct {
	Bin     string
	BaseURL string
	Token   string
	Home    string
}

// New returns a CLI for the server at baseURL with the API token.
func New(t testing.TB, baseURL, token string) *CLI {
	t.Helper()
	return &CLI{Bin: Binary(t), BaseURL: baseURL, Token: token, Home: t.TempDir()}
}

// Result is one run.
type Result struct {
	Code           int
	Stdout, Stderr string
	Elapsed        time.Duration
}

func (r Result) String() string {
	return fmt.Sprintf("exit %d after %s\n--- stdout ---\n%s--- stderr ---\n%s", r.Code, r.Elapsed.Round(time.Millisecond), r.Stdout, r.Stderr)
}

// Command is the CLI's command line for args, run in dir ("" = the test
// process's), with stdin (nil: empty) and the CLI's environment set.
func (c *CLI) Command(ctx context.Context, dir string, stdin io.Reader, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.Bin, args...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), "HOME="+c.Home, "HYPEMAN_BASE_URL="+c.BaseURL, "HYPEMAN_API_KEY="+c.Token)
	if stdin == nil {
		stdin = bytes.NewReader(nil)
	}
	cmd.Stdin = stdin
	return cmd
}

// Run runs the CLI to its end, bounded by ctx. A CLI that cannot be
// started fails the test.
func (c *CLI) Run(t testing.TB, ctx context.Context, dir string, stdin []byte, args ...string) Result {
	t.Helper()
	cmd := c.Command(ctx, dir, bytes.NewReader(stdin), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	res := Result{Stdout: out.String(), Stderr: errb.String(), Elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		res.Code = ee.ExitCode()
	default:
		t.Fatalf("run %s %v: %v\n%s", c.Bin, args, err, res)
	}
	return res
}

// Follow starts a streaming command (logs -f) bounded by ctx and returns
// a scanner over its output lines; stop (safe to call more than once) ends
// it if still running, waits for it and returns what it wrote to stderr. A CLI that cannot be started
// fails the test.
func (c *CLI) Follow(t testing.TB, ctx context.Context, args ...string) (lines *bufio.Scanner, stop func() (stderr string)) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	cmd := c.Command(ctx, "", nil, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s %v: %v", c.Bin, args, err)
	}
	wait := sync.OnceFunc(func() { cancel(); cmd.Wait() })
	return bufio.NewScanner(stdout), func() string {
		wait()
		return errb.String()
	}
}

// cleanEnv is the environment without the variables the CLI reads, so a
// developer's own settings never leak into a test.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HYPEMAN_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return env
}
