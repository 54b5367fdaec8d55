// Package tier decides what a test may ask of the host, from one switch:
// HYPEMAN_TEST_TIER.
//
//   - unset or "full" (CI, `make test`): every test runs. A test whose
//     prerequisite is missing (QEMU, the guest kernel, root, a host tool)
//     FAILS with the fix in its message; it never skips, so a broken CI
//     host cannot turn the suite green by skipping it.
//   - "unit" (`make test-unit`): no VMs and no root. Tests that boot VMs or
//     need root skip with a message saying so, even where the host could
//     run them; tests that only need a host tool skip when it is missing.
//
// Why a package of its own: the VM and root helpers live in several
// packages (testutil, testutil/e2e, network/nettest, per-package kits);
// they must agree on one rule, and this package imports nothing of ours so
// every test package can use it without an import cycle.
package tier

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// Env is the environment variable that selects the tier.
const Env = "HYPEMAN_TEST_TIER"

// Tier names.
const (
	Full = "full"
	Unit = "unit"
)

// Current returns the selected tier, or an error for an unknown value (a
// typo must not silently run, or skip, the wrong tests).
func Current() (string, error) {
	switch v := os.Getenv(Env); v {
	case "", Full:
		return Full, nil
	case Unit:
		return Unit, nil
	default:
		return "", fmt.Errorf("%s=%q: want %q or %q (or unset)", Env, v, Unit, Full)
	}
}

func current(t testing.TB) string {
	t.Helper()
	c, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// IsUnit reports whether the unit tier is selected (fails t on a bad value).
func IsUnit(t testing.TB) bool {
	t.Helper()
	return current(t) == Unit
}

// VM marks a test that boots VMs: it skips in the unit tier. Call it
// before any other work (building the init, pushing images).
func VM(t testing.TB) {
	t.Helper()
	if IsUnit(t) {
		t.Skipf("boots VMs: skipped in the unit tier (%s=%s); `make test` runs it", Env, Unit)
	}
}

// Root marks a test that needs root (namespaces, bridges, chroot, loop
// mounts; why says which): it skips in the unit tier, and in the full tier
// fails unless the test runs as root.
func Root(t testing.TB, why string) {
	t.Helper()
	if IsUnit(t) {
		t.Skipf("needs root (%s): skipped in the unit tier (%s=%s); `make test` runs it as root", why, Env, Unit)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root (%s): run it as root, or run `make test-unit` for the tests that do not", why)
	}
}

// Missing reports a missing host prerequisite (format says what and how to
// get it): it skips in the unit tier and fails in the full tier.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if IsUnit(t) {
		t.Skipf("%s (skipped in the unit tier; `make test` fails on it)", msg)
	}
	t.Fatal(msg)
}

// Tools checks that every tool is on PATH; the first missing one is
// reported through Missing with the setup step that installs it.
func Tools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Missing(t, "%s not found on this host: run `make setup` (scripts/setup.sh)", tool)
			return
		}
	}
}

// File checks that a host file exists (e.g. /usr/bin/busybox from Debian's
// busybox-static); what names the package or step that provides it.
func File(t testing.TB, path, what string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		Missing(t, "%s missing (%s): %v", path, what, err)
	}
}
