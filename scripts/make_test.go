package scripts

import (
	"bufio"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"hypeman/internal/network/nettest"
	"hypeman/internal/system"
	"hypeman/internal/testutil"
	"hypeman/internal/testutil/tier"
)

// Issue 11 item 11: `make test` runs the full tier (a missing prerequisite
// fails) and `make test-unit` the unit tier; both log each run to its own
// file instead of one shared /tmp/hypeman-test.log.
func TestMakeTestTargetsSelectTierAndLogPerRun(t *testing.T) {
	tier.Tools(t, "make")
	for target, want := range map[string]string{"test": "HYPEMAN_TEST_TIER=full", "test-unit": "HYPEMAN_TEST_TIER=unit"} {
		cmd := exec.Command("make", "-n", "-C", repoRoot(t), target)
		cmd.Env = childEnv()
		out, code := run(t, cmd)
		if code != 0 || !strings.Contains(out, want) || !strings.Contains(out, ".test-logs") || strings.Contains(out, "/tmp/hypeman-test.log") {
			t.Errorf("make -n %s: exit %d, want %s and a per-run log under .test-logs:\n%s", target, code, want, out)
		}
	}
}

// fullLogRE finds the log path run_tests prints last.
var fullLogRE = regexp.MustCompile(`full log: (\S+)`)

// `make test-unit` as user nobody (no root, no /dev/kvm: it is root-only
// here) with QEMU replaced by a stub that records any call: the VM and
// root tests of the packages that have most of them skip with the tier's
// message, the rest pass, QEMU is never run, and the per-run log exists.
func TestMakeTestUnitAsNobodyWithoutQEMU(t *testing.T) {
	tier.Root(t, "it runs make test-unit as user nobody through setpriv")
	tier.Tools(t, "make", "setpriv")
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	goBin, _ = filepath.EvalSymlinks(goBin)
	const nobody = 65534

	// A copy of the tree nobody can read and write (the checkout may sit
	// under a root-only directory), and a Go cache kept across runs.
	work, err := os.MkdirTemp("", "hypeman-test-unit-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	repo := filepath.Join(work, "repo")
	copyTree(t, repoRoot(t), repo)
	stub := filepath.Join(work, "stub")
	calls := filepath.Join(work, "qemu-calls.log")
	os.MkdirAll(stub, 0o755)
	os.WriteFile(filepath.Join(stub, "qemu-system-x86_64"), []byte("#!/bin/sh\necho \"$*\" >> "+calls+"\nexit 1\n"), 0o755)
	os.WriteFile(calls, nil, 0o666)
	gocache := filepath.Join(os.TempDir(), "hypeman-test-nobody-go")
	os.MkdirAll(gocache, 0o755)
	for _, p := range []string{work, repo, gocache} {
		chownTree(t, p, nobody)
	}
	os.Chmod(work, 0o755)

	goEnv := func(k string) string {
		out, _ := exec.Command(goBin, "env", k).Output()
		return strings.TrimSpace(string(out))
	}
	pkgs := "./internal/hypervisor/qemu/... ./internal/network/... ./internal/guest/agent/ ./internal/testutil/tier/"
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"make", "-C", repo, "test-unit", "PKGS="+pkgs, "TESTFLAGS=-v")
	cmd.Env = []string{
		"HOME=" + work, "PATH=" + stub + ":" + filepath.Dir(goBin) + ":/usr/local/bin:/usr/bin:/bin",
		"GOPATH=" + filepath.Join(gocache, "gopath"), "GOCACHE=" + filepath.Join(gocache, "cache"),
		"GOFLAGS=-modcacherw", "GOPROXY=" + goEnv("GOPROXY"), "GOSUMDB=" + goEnv("GOSUMDB"), "GOTOOLCHAIN=local",
	}
	start := time.Now()
	out, code := run(t, cmd)
	t.Logf("make test-unit as nobody: exit %d in %s", code, time.Since(start).Round(time.Second))
	if code != 0 {
		t.Fatalf("make test-unit as nobody failed:\n%s", out)
	}
	for _, p := range []string{"hypeman/internal/hypervisor/qemu", "hypeman/internal/network", "hypeman/internal/guest/agent"} {
		if !regexp.MustCompile(`(?m)^ok\s+` + regexp.QuoteMeta(p) + `\s`).MatchString(out) {
			t.Errorf("no ok line for %s:\n%s", p, out)
		}
	}
	m := fullLogRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("make test-unit printed no log path:\n%s", out)
	}
	logb, err := os.ReadFile(m[1])
	if err != nil {
		t.Fatalf("per-run log: %v", err)
	}
	log := string(logb)
	for _, want := range []string{
		"--- SKIP: TestLaunchBootsKernelUntilPanicAndExits", "boots VMs: skipped in the unit tier",
		"--- SKIP: TestBridgeLifecycleInNetNS", "needs root (",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log %s lacks %q", m[1], want)
		}
	}
	if b, _ := os.ReadFile(calls); len(b) > 0 {
		t.Errorf("the unit tier ran QEMU:\n%s", b)
	}
}

// lineOffsets maps each line of text to its byte offset, in order.
func lineOffsets(text string) func(func(int, string) bool) {
	return func(yield func(int, string) bool) {
		off := 0
		for _, line := range strings.SplitAfter(text, "\n") {
			if !yield(off, line) {
				return
			}
			off += len(line)
		}
	}
}

// copyTree copies the source tree (no .git, build outputs or logs).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			switch rel {
			case ".git", "bin", ".test-logs":
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		fi, _ := in.Stat()
		o, err := os.OpenFile(filepath.Join(dst, rel), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fi.Mode().Perm()|0o444)
		if err != nil {
			return err
		}
		if _, err := io.Copy(o, in); err != nil {
			o.Close()
			return err
		}
		return o.Close()
	})
	if err != nil {
		t.Fatalf("copy %s: %v", src, err)
	}
}

func chownTree(t *testing.T, root string, uid int) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	})
	if err != nil {
		t.Fatalf("chown %s: %v", root, err)
	}
}

// Issue 11 item 10: `make run` as root says, before it happens, that it
// will create a bridge, enable IP forwarding and add NAT rules, and how to
// run without. The real `make run` runs inside a network namespace this
// test creates (so the bridge and rules land there, never on the host),
// with a scratch data dir and build dir, until hypemand is ready.
func TestMakeRunAnnouncesHostNetworkChangesFirst(t *testing.T) {
	tier.Root(t, "make run creates a bridge and NAT rules (inside a test network namespace)")
	tier.Tools(t, "make", "ip", "nft")
	kdir := testutil.KernelDir()
	if _, err := system.LoadKernel(kdir); err != nil {
		tier.Missing(t, "guest kernel missing (make setup installs it): %v", err)
	}
	ns := nettest.NewNS(t)
	cmd := exec.Command("ip", "netns", "exec", ns, "make", "-C", repoRoot(t), "run",
		"DATA_DIR="+t.TempDir(), "BIN="+t.TempDir())
	// Packages are the host's business (make setup); the kernel is the
	// installed one; the rest of setup runs for real.
	cmd.Env = childEnv("HYPEMAN_SKIP_PACKAGES=1", "HYPEMAN_KERNEL_DIR="+kdir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		out   strings.Builder
		ready = make(chan struct{})
		done  = make(chan struct{})
	)
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), "hypemand is ready") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	go func() { cmd.Wait(); pw.Close(); close(done) }()
	stop := func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) // make and hypemand: the group this test started
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	select {
	case <-ready:
	case <-done:
	case <-time.After(5 * time.Minute):
	}
	stop()
	mu.Lock()
	text := out.String()
	mu.Unlock()

	t.Logf("make run output:\n%s", text)
	notice := strings.Index(text, "guest networking changes this host's network")
	bridge := -1
	for off, line := range lineOffsets(text) {
		if strings.Contains(line, `msg="networking mode"`) && strings.Contains(line, "mode=bridge") {
			bridge = off
			break
		}
	}
	if notice < 0 || bridge < 0 || notice > bridge {
		t.Fatalf("want the notice before bridge setup (notice at %d, bridge mode at %d):\n%s", notice, bridge, text)
	}
	for _, want := range []string{"creates bridge vmbr0", "enables IPv4 forwarding", "adds NAT rules", "HYPEMAN_NETWORK_MODE=none", "HYPEMAN_NETWORK_NETNS="} {
		if !strings.Contains(text, want) {
			t.Errorf("make run output lacks %q", want)
		}
	}
	if !strings.Contains(text, "hypemand is ready") {
		t.Errorf("hypemand never became ready:\n%s", text)
	}
	// What was announced happened, in the test's namespace.
	if got, err := nettest.Exec(ns, "ip", "link", "show", "vmbr0"); err != nil {
		t.Errorf("no bridge vmbr0 in the test namespace: %v %s", err, got)
	}
}
