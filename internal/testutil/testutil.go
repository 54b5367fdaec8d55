// Package testutil gives integration tests the real guest stack: the
// installed kernel, the static guest init, and an initrd built from both.
//
// Why a package: every VM-booting test needs the same three artefacts and
// the same clear failure when the host lacks them ("run make setup"), and
// building the init once per test binary instead of once per test keeps the
// suite fast on two cores.
package testutil

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"hypeman/internal/system"
	"hypeman/internal/testutil/tier"
)

// KernelDir is where tests look for the guest kernel: $HYPEMAN_KERNEL_DIR or
// the default data dir's kernel dir.
func KernelDir() string {
	if d := os.Getenv("HYPEMAN_KERNEL_DIR"); d != "" {
		return d
	}
	return "/var/lib/hypeman/system/kernel"
}

// Kernel loads the installed guest kernel for a test that boots VMs: in
// the unit tier (see package tier) the test is skipped; otherwise a missing
// kernel fails it with the fix.
func Kernel(t testing.TB) *system.Kernel {
	t.Helper()
	tier.VM(t)
	k, err := system.LoadKernel(KernelDir())
	if err != nil {
		t.Fatalf("guest kernel missing: %v\nrun `make setup` (scripts/setup.sh) to install it", err)
	}
	return k
}

var (
	initOnce sync.Once
	initPath string
	initErr  error
)

// InitBinary returns a static guest init binary: $HYPEMAN_INIT_BINARY when it
// exists (make test builds it), else one built once per test process.
func InitBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("HYPEMAN_INIT_BINARY"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	initOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hypeman-test-init-")
		if err != nil {
			initErr = err
			return
		}
		initPath = filepath.Join(dir, "hypeman-init")
		cmd := exec.Command("go", "build", "-trimpath", "-o", initPath, "./cmd/hypeman-init")
		cmd.Dir = RepoRoot(t)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			initErr = &buildError{out: strings.TrimSpace(string(out)), err: err}
		}
	})
	if initErr != nil {
		t.Fatalf("build guest init: %v", initErr)
	}
	return initPath
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// RepoRoot finds the module root from this source file's location.
func RepoRoot(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate repo root")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Initrd builds (or reuses from a shared cache) the initrd for the installed
// kernel and the test init binary.
func Initrd(t testing.TB) (kernel *system.Kernel, initrd string) {
	t.Helper()
	k := Kernel(t)
	cache := filepath.Join(os.TempDir(), "hypeman-test-initrd")
	p, err := system.BuildInitrd(context.Background(), system.InitrdSpec{InitBinary: InitBinary(t), Kernel: k}, cache)
	if err != nil {
		t.Fatalf("build initrd: %v", err)
	}
	return k, p
}

// RequireTools fails the test with a clear message if a host tool is
// missing (in the unit tier it skips instead; see package tier).
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	tier.Tools(t, tools...)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago (for
// a listener the code under test opens itself, such as an ingress).
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
