package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"hypeman/internal/guest/guestproc"
	"hypeman/internal/testutil/tier"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// makeRoot builds an instance root with static busybox, so execs really
// chroot into it (the tests run as root, as the guest init does).
func makeRoot(t *testing.T) string {
	t.Helper()
	tier.Root(t, "agent tests chroot into a busybox root")
	tier.File(t, "/usr/bin/busybox", "Debian busybox-static")
	bb, err := os.ReadFile("/usr/bin/busybox")
	if err != nil {
		t.Fatalf("agent tests need a static busybox at /usr/bin/busybox (Debian busybox-static): %v", err)
	}
	root := t.TempDir()
	require.NoError(t, os.Chmod(root, 0o755))
	for _, d := range []string{"bin", "etc", "tmp", "home/app", "data"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	require.NoError(t, os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755))
	for _, app := range []string{"sh", "echo", "cat", "sleep", "id", "pwd", "env", "stty", "printf", "ls", "head"} {
		require.NoError(t, os.Symlink("busybox", filepath.Join(root, "bin", app)))
	}
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/passwd"),
		[]byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\napp:x:1000:\nextra:x:2000:app\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "data/file.txt"), []byte("hello file\n"), 0o640))
	require.NoError(t, os.WriteFile(filepath.Join(root, "data/noexec"), []byte("x"), 0o644))
	require.NoError(t, os.Symlink("/data/file.txt", filepath.Join(root, "data/link")))
	return root
}

type harness struct {
	root     string
	client   *Client
	shutdown atomic.Int32
	served   chan error
	cancel   context.CancelFunc
}

// newHarness runs a Server and a Client over an in-memory connection; opts
// adjust the server before it starts.
func newHarness(t *testing.T, opts ...func(*Server)) *harness {
	t.Helper()
	h := &harness{root: makeRoot(t), served: make(chan error, 1)}
	srv := &Server{
		Root:       h.root,
		BaseEnv:    map[string]string{"BASE": "base", "OVERRIDE": "base"},
		DefaultCwd: "/data",
		Hostname:   "testhost",
		Starter:    guestproc.DirectStarter{},
		Shutdown:   func() { h.shutdown.Add(1) },
	}
	for _, o := range opts {
		o(srv)
	}
	guestEnd, hostEnd := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.served <- srv.Serve(ctx, guestEnd) }()
	c, err := NewClient(ctxT(t), hostEnd)
	require.NoError(t, err)
	h.client = c
	t.Cleanup(func() {
		c.Close()
		cancel()
		select {
		case <-h.served:
		case <-time.After(10 * time.Second):
			t.Error("server did not stop")
		}
	})
	return h
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type execOut struct {
	res            ExecResult
	stdout, stderr string
}

func (h *harness) run(t *testing.T, req ExecRequest, stdin io.Reader) execOut {
	t.Helper()
	var out, errb bytes.Buffer
	res, err := h.client.Exec(ctxT(t), req, ExecIO{Stdin: stdin, Stdout: &out, Stderr: &errb})
	require.NoError(t, err)
	return execOut{res, out.String(), errb.String()}
}

func TestPingStatShutdown(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	require.NoError(t, h.client.Ping(ctx))

	fi, err := h.client.Stat(ctx, "/data/file.txt")
	require.NoError(t, err)
	assert.True(t, fi.Exists)
	assert.Equal(t, int64(len("hello file\n")), fi.Size)
	assert.Equal(t, os.FileMode(0o640), fi.Mode.Perm())
	assert.False(t, fi.IsDir)
	assert.WithinDuration(t, time.Now(), fi.ModTime, time.Minute)

	fi, err = h.client.Stat(ctx, "/data/link")
	require.NoError(t, err)
	assert.Equal(t, "/data/file.txt", fi.LinkTarget)
	assert.NotZero(t, fi.Mode&os.ModeSymlink)

	fi, err = h.client.Stat(ctx, "/data")
	require.NoError(t, err)
	assert.True(t, fi.IsDir)

	fi, err = h.client.Stat(ctx, "/nope/x")
	require.NoError(t, err)
	assert.False(t, fi.Exists)

	// ".." cannot leave the root: /../../etc/passwd is the root's passwd.
	fi, err = h.client.Stat(ctx, "/../../etc/passwd")
	require.NoError(t, err)
	st, _ := os.Stat(filepath.Join(h.root, "etc/passwd"))
	assert.Equal(t, st.Size(), fi.Size)

	_, err = h.client.Stat(ctx, "relative")
	var re *RemoteError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, CodeBadRequest, re.Code)

	require.NoError(t, h.client.Shutdown(ctx))
	waitFor(t, func() bool { return h.shutdown.Load() == 1 }, "shutdown callback")
}

func TestExecBasics(t *testing.T) {
	h := newHarness(t)
	o := h.run(t, ExecRequest{Argv: []string{"echo", "hi"}}, nil)
	assert.Equal(t, ExecResult{ExitCode: 0, Message: "exited with code 0"}, o.res)
	assert.Equal(t, "hi\n", o.stdout)

	o = h.run(t, ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}}, nil)
	assert.Equal(t, 3, o.res.ExitCode)
	assert.Equal(t, "out\n", o.stdout)
	assert.Equal(t, "err\n", o.stderr)

	// Environment: instance env, then request env; defaults; cwd default.
	o = h.run(t, ExecRequest{
		Argv: []string{"sh", "-c", `echo "$BASE $OVERRIDE $EXTRA $HOSTNAME $HOME $PATH"; pwd`},
		Env:  map[string]string{"OVERRIDE": "req", "EXTRA": "x"},
	}, nil)
	assert.Equal(t, "base req x testhost /root "+guestproc.DefaultPath+"\n/data\n", o.stdout)
	_, hasTerm := lookupLine(o.stdout, "TERM")
	assert.False(t, hasTerm)

	o = h.run(t, ExecRequest{Argv: []string{"sh", "-c", "id -u; id -g; id -G; pwd; echo $HOME"}, User: "app", Cwd: "/tmp"}, nil)
	assert.Equal(t, "1000\n1000\n1000 2000\n/tmp\n/home/app\n", o.stdout)

	// The process really is chrooted: / is the instance root.
	o = h.run(t, ExecRequest{Argv: []string{"cat", "/data/file.txt"}}, nil)
	assert.Equal(t, "hello file\n", o.stdout)

	o = h.run(t, ExecRequest{Argv: []string{"sh", "-c", "kill -9 $$"}}, nil)
	assert.Equal(t, ExecResult{ExitCode: 137, Message: "killed by signal 9 (SIGKILL)"}, o.res)
}

func lookupLine(s, prefix string) (string, bool) {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l, true
		}
	}
	return "", false
}

func TestExecNotRunnable(t *testing.T) {
	h := newHarness(t)
	o := h.run(t, ExecRequest{Argv: []string{"no-such-cmd"}}, nil)
	assert.Equal(t, 127, o.res.ExitCode)
	assert.Equal(t, "command not found: no-such-cmd", o.res.Message)
	assert.Equal(t, "command not found: no-such-cmd\n", o.stderr)

	o = h.run(t, ExecRequest{Argv: []string{"/data/noexec"}}, nil)
	assert.Equal(t, 126, o.res.ExitCode)
	assert.Equal(t, "permission denied: /data/noexec", o.res.Message)

	_, err := h.client.Exec(ctxT(t), ExecRequest{Argv: []string{"true"}, User: "ghost"}, ExecIO{})
	var re *RemoteError
	require.ErrorAs(t, err, &re)
	assert.Contains(t, re.Message, "ghost")

	_, err = h.client.Exec(ctxT(t), ExecRequest{Argv: []string{"echo"}, Cwd: "/missing"}, ExecIO{})
	require.ErrorAs(t, err, &re)
	assert.Contains(t, re.Message, "working directory does not exist")

	_, err = h.client.Exec(ctxT(t), ExecRequest{}, ExecIO{})
	require.ErrorAs(t, err, &re)
	assert.Equal(t, CodeBadRequest, re.Code)
}

func TestExecStdin(t *testing.T) {
	h := newHarness(t)
	big := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB, many frames
	o := h.run(t, ExecRequest{Argv: []string{"cat"}}, strings.NewReader(big))
	assert.Equal(t, 0, o.res.ExitCode)
	assert.Equal(t, len(big), len(o.stdout))
	assert.True(t, o.stdout == big)

	// nil stdin is an immediate EOF.
	o = h.run(t, ExecRequest{Argv: []string{"cat"}}, nil)
	assert.Equal(t, "", o.stdout)
	assert.Equal(t, 0, o.res.ExitCode)

	// Stdin that ends later: EOF reaches the process when the reader ends.
	pr, pw := io.Pipe()
	go func() {
		fmt.Fprintln(pw, "line1")
		time.Sleep(100 * time.Millisecond)
		fmt.Fprintln(pw, "line2")
		pw.Close()
	}()
	o = h.run(t, ExecRequest{Argv: []string{"sh", "-c", "cat; echo done"}}, pr)
	assert.Equal(t, "line1\nline2\ndone\n", o.stdout)
}

func TestExecConcurrent(t *testing.T) {
	h := newHarness(t)
	const n = 8
	var wg sync.WaitGroup
	outs := make([]execOut, n)
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			res, err := h.client.Exec(ctxT(t), ExecRequest{
				Argv: []string{"sh", "-c", "sleep 0.5; echo $0; exit $0", strconv.Itoa(i)},
			}, ExecIO{Stdout: &out})
			assert.NoError(t, err)
			outs[i] = execOut{res: res, stdout: out.String()}
		}()
	}
	wg.Wait()
	for i, o := range outs {
		assert.Equal(t, i, o.res.ExitCode)
		assert.Equal(t, strconv.Itoa(i)+"\n", o.stdout)
	}
	assert.Less(t, time.Since(start), 3*time.Second, "execs ran one after another")
}

func TestExecTTY(t *testing.T) {
	h := newHarness(t)
	o := h.run(t, ExecRequest{Argv: []string{"sh", "-c", "test -t 0 && test -t 1 && echo isatty; stty size; echo $TERM; echo err >&2"}, TTY: true, Rows: 24, Cols: 80}, nil)
	assert.Equal(t, 0, o.res.ExitCode)
	assert.Equal(t, "isatty\r\n24 80\r\nxterm\r\nerr\r\n", o.stdout, "tty output (stderr merged, onlcr)")
	assert.Empty(t, o.stderr)

	// Interactive: a shell reads commands typed on stdin; a resize arrives
	// before the command that prints the size.
	resize := make(chan WindowSize, 1)
	resize <- WindowSize{Rows: 50, Cols: 120}
	pr, pw := io.Pipe()
	var out syncBuffer
	done := make(chan ExecResult, 1)
	go func() {
		res, err := h.client.Exec(ctxT(t), ExecRequest{Argv: []string{"sh"}, TTY: true, Rows: 10, Cols: 10},
			ExecIO{Stdin: pr, Stdout: &out, Resize: resize})
		assert.NoError(t, err)
		done <- res
	}()
	waitFor(t, func() bool { return strings.Contains(out.String(), "#") }, "shell prompt")
	fmt.Fprint(pw, "stty size; exit 7\n")
	select {
	case res := <-done:
		assert.Equal(t, 7, res.ExitCode)
	case <-time.After(10 * time.Second):
		t.Fatalf("interactive shell did not exit; output %q", out.String())
	}
	assert.Contains(t, out.String(), "50 120")
	pw.Close()

	// Stdin EOF on a TTY is ^D: a shell waiting at its prompt exits.
	pr, pw = io.Pipe()
	out = syncBuffer{}
	go func() {
		res, err := h.client.Exec(ctxT(t), ExecRequest{Argv: []string{"sh"}, TTY: true}, ExecIO{Stdin: pr, Stdout: &out})
		assert.NoError(t, err)
		done <- res
	}()
	waitFor(t, func() bool { return strings.Contains(out.String(), "#") }, "shell prompt")
	pw.Close()
	select {
	case res := <-done:
		assert.Equal(t, 0, res.ExitCode)
	case <-time.After(10 * time.Second):
		t.Fatalf("shell did not exit on stdin EOF; output %q", out.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func pidAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie is as good as dead.
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

func readPid(t *testing.T, root string) int {
	t.Helper()
	var pid int
	waitFor(t, func() bool {
		b, err := os.ReadFile(filepath.Join(root, "tmp/pid"))
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	}, "pid file")
	return pid
}

func TestExecTimeoutAndCancel(t *testing.T) {
	h := newHarness(t)
	start := time.Now()
	o := h.run(t, ExecRequest{Argv: []string{"sh", "-c", "echo started; sleep 30"}, Timeout: 300 * time.Millisecond}, nil)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.True(t, o.res.TimedOut)
	assert.Equal(t, 137, o.res.ExitCode)
	assert.Equal(t, "timed out after 300ms: killed by signal 9 (SIGKILL)", o.res.Message)
	assert.Equal(t, "started\n", o.stdout)

	// Cancelling the context kills the command (and its group) in the guest.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := h.client.Exec(ctx, ExecRequest{Argv: []string{"sh", "-c", "echo $$ > /tmp/pid; sleep 30"}}, ExecIO{})
		errc <- err
	}()
	pid := readPid(t, h.root)
	cancel()
	select {
	case err := <-errc:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("Exec did not return after cancel")
	}
	waitFor(t, func() bool { return !pidAlive(pid) }, "cancelled exec to be killed")

	// A signal from the client reaches the process group.
	os.Remove(filepath.Join(h.root, "tmp/pid"))
	sigs := make(chan syscall.Signal, 1)
	res := make(chan ExecResult, 1)
	go func() {
		r, err := h.client.Exec(ctxT(t), ExecRequest{Argv: []string{"sh", "-c", "echo $$ > /tmp/pid; sleep 30"}}, ExecIO{Signals: sigs})
		assert.NoError(t, err)
		res <- r
	}()
	readPid(t, h.root)
	sigs <- syscall.SIGTERM
	select {
	case r := <-res:
		assert.Equal(t, 143, r.ExitCode)
	case <-time.After(5 * time.Second):
		t.Fatal("signal did not end the exec")
	}
}

func TestClientCloseKillsExec(t *testing.T) {
	h := newHarness(t)
	errc := make(chan error, 1)
	go func() {
		_, err := h.client.Exec(context.Background(), ExecRequest{Argv: []string{"sh", "-c", "echo $$ > /tmp/pid; sleep 30"}}, ExecIO{})
		errc <- err
	}()
	pid := readPid(t, h.root)
	require.NoError(t, h.client.Close())
	select {
	case err := <-errc:
		assert.Error(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Exec did not fail after Close")
	}
	select {
	case err := <-h.served:
		assert.NoError(t, err)
		h.served <- nil // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the client went away")
	}
	waitFor(t, func() bool { return !pidAlive(pid) }, "exec to be killed when the session ends")
}

type tarEntry struct {
	hdr  tar.Header
	data string
}

func makeTar(t *testing.T, entries []tarEntry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
		}
		require.NoError(t, tw.WriteHeader(&h))
		if e.data != "" {
			_, err := tw.Write([]byte(e.data))
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	return &buf
}

func readTar(t *testing.T, r io.Reader) map[string]tarEntry {
	t.Helper()
	out := map[string]tarEntry{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err)
		b, err := io.ReadAll(tr)
		require.NoError(t, err)
		out[h.Name] = tarEntry{hdr: *h, data: string(b)}
	}
}

func TestCopyRoundTrip(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	big := strings.Repeat("x", 300<<10)
	in := makeTar(t, []tarEntry{
		{hdr: tar.Header{Name: "pkg/", Typeflag: tar.TypeDir, Mode: 0o750}},
		{hdr: tar.Header{Name: "pkg/a.txt", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 1000}, data: "alpha"},
		{hdr: tar.Header{Name: "pkg/big.bin", Typeflag: tar.TypeReg, Mode: 0o644}, data: big},
		{hdr: tar.Header{Name: "pkg/run.sh", Typeflag: tar.TypeReg, Mode: 0o755}, data: "#!/bin/sh\necho ran\n"},
		{hdr: tar.Header{Name: "pkg/sub/deep.txt", Typeflag: tar.TypeReg, Mode: 0o644}, data: "deep"},
		{hdr: tar.Header{Name: "pkg/link", Typeflag: tar.TypeSymlink, Linkname: "a.txt"}},
		{hdr: tar.Header{Name: "pkg/hard", Typeflag: tar.TypeLink, Linkname: "pkg/a.txt"}},
	})
	require.NoError(t, h.client.CopyTo(ctx, "/dest/new", in))

	base := filepath.Join(h.root, "dest/new/pkg")
	b, err := os.ReadFile(filepath.Join(base, "a.txt"))
	require.NoError(t, err)
	assert.Equal(t, "alpha", string(b))
	st, err := os.Stat(filepath.Join(base, "a.txt"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	assert.Equal(t, uint32(1000), st.Sys().(*syscall.Stat_t).Uid)
	assert.Equal(t, 2020, st.ModTime().Year())
	assert.Equal(t, uint64(2), uint64(st.Sys().(*syscall.Stat_t).Nlink), "hard link")
	dst, err := os.Stat(base)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o750), dst.Mode().Perm())
	l, err := os.Readlink(filepath.Join(base, "link"))
	require.NoError(t, err)
	assert.Equal(t, "a.txt", l)

	// The copied script runs in the guest.
	o := h.run(t, ExecRequest{Argv: []string{"/dest/new/pkg/run.sh"}}, nil)
	assert.Equal(t, "ran\n", o.stdout)

	// And comes back the same way.
	var out bytes.Buffer
	require.NoError(t, h.client.CopyFrom(ctx, "/dest/new/pkg", &out))
	got := readTar(t, &out)
	var names []string
	for n := range got {
		names = append(names, n)
	}
	sort.Strings(names)
	assert.Equal(t, []string{"pkg/", "pkg/a.txt", "pkg/big.bin", "pkg/hard", "pkg/link", "pkg/run.sh", "pkg/sub/", "pkg/sub/deep.txt"}, names)
	assert.Equal(t, "alpha", got["pkg/a.txt"].data)
	assert.Equal(t, big, got["pkg/big.bin"].data)
	assert.Equal(t, int64(0o755), got["pkg/run.sh"].hdr.Mode&0o777)
	assert.Equal(t, "a.txt", got["pkg/link"].hdr.Linkname)
	assert.Equal(t, byte(tar.TypeSymlink), got["pkg/link"].hdr.Typeflag)
	assert.Equal(t, 1000, got["pkg/a.txt"].hdr.Uid)
	// One of the two hard-linked names is stored as a link to the other.
	hard := []byte{got["pkg/a.txt"].hdr.Typeflag, got["pkg/hard"].hdr.Typeflag}
	assert.Contains(t, hard, byte(tar.TypeLink))

	// A single file; a symlink is archived as a link, not followed.
	out.Reset()
	require.NoError(t, h.client.CopyFrom(ctx, "/data/link", &out))
	got = readTar(t, &out)
	require.Len(t, got, 1)
	assert.Equal(t, "/data/file.txt", got["link"].hdr.Linkname)

	out.Reset()
	err = h.client.CopyFrom(ctx, "/data/missing", &out)
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestCopyToTraversal(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	outside := filepath.Join(h.root, "data")
	before := listTree(t, h.root)
	cases := map[string][]tarEntry{
		"dotdot":        {{hdr: tar.Header{Name: "../escape.txt", Typeflag: tar.TypeReg, Mode: 0o644}, data: "x"}},
		"nested dotdot": {{hdr: tar.Header{Name: "a/../../escape.txt", Typeflag: tar.TypeReg, Mode: 0o644}, data: "x"}},
		"absolute symlink then write through it": {
			{hdr: tar.Header{Name: "abs", Typeflag: tar.TypeSymlink, Linkname: outside}},
			{hdr: tar.Header{Name: "abs/escape.txt", Typeflag: tar.TypeReg, Mode: 0o644}, data: "x"},
		},
		"relative symlink climbing out": {
			{hdr: tar.Header{Name: "up", Typeflag: tar.TypeSymlink, Linkname: "../../data"}},
			{hdr: tar.Header{Name: "up/escape.txt", Typeflag: tar.TypeReg, Mode: 0o644}, data: "x"},
		},
		"hard link to outside": {{hdr: tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../data/file.txt"}}},
	}
	for name, entries := range cases {
		err := h.client.CopyTo(ctx, "/dest", makeTar(t, entries))
		var re *RemoteError
		assert.ErrorAs(t, err, &re, name)
		// Nothing was created outside /dest.
		after := listTree(t, h.root)
		for p := range after {
			if !strings.HasPrefix(p, "dest") {
				assert.Contains(t, before, p, "%s: created %s outside the destination", name, p)
			}
		}
		os.RemoveAll(filepath.Join(h.root, "dest"))
	}
	// The leading "/" of an absolute entry name is relative to the destination.
	require.NoError(t, h.client.CopyTo(ctx, "/dest", makeTar(t, []tarEntry{
		{hdr: tar.Header{Name: "/etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, data: "not the real one"},
	})))
	b, err := os.ReadFile(filepath.Join(h.root, "dest/etc/passwd"))
	require.NoError(t, err)
	assert.Equal(t, "not the real one", string(b))
	b, _ = os.ReadFile(filepath.Join(h.root, "etc/passwd"))
	assert.Contains(t, string(b), "root:x:0:0")

	// A corrupt stream is an error, not a hang.
	err = h.client.CopyTo(ctx, "/dest", strings.NewReader(strings.Repeat("garbage!", 200)))
	assert.Error(t, err)
}

func listTree(t *testing.T, root string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	require.NoError(t, filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = true
		return nil
	}))
	return out
}

func TestFindPort(t *testing.T) {
	sys := t.TempDir()
	for dev, name := range map[string]string{"vport0p0": "other", "vport0p1": "hypeman.agent\n"} {
		require.NoError(t, os.MkdirAll(filepath.Join(sys, dev), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(sys, dev, "name"), []byte(name), 0o644))
	}
	p, err := FindPort(sys, "/dev", "hypeman.agent")
	require.NoError(t, err)
	assert.Equal(t, "/dev/vport0p1", p)
	_, err = FindPort(sys, "/dev", "missing")
	assert.ErrorIs(t, err, ErrPortNotFound)
	_, err = FindPort(filepath.Join(sys, "nonexistent"), "/dev", "x")
	assert.ErrorIs(t, err, ErrPortNotFound)
}

// TestServePortReconnects checks the reopen loop: when the host side goes
// away the session ends, the port is reopened and a new host session works;
// Ready fires once. The port device is replaced by an in-memory pipe per open.
func TestServePortReconnects(t *testing.T) {
	dir := t.TempDir()
	sys := filepath.Join(dir, "vport0p1")
	require.NoError(t, os.MkdirAll(sys, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(sys, "name"), []byte("hypeman.agent"), 0o644))

	hostEnds := make(chan net.Conn)
	var opens, ready atomic.Int32
	srv := &Server{Root: makeRoot(t), Starter: guestproc.DirectStarter{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- srv.ServePort(ctx, PortConfig{
			Name: "hypeman.agent", SysDir: dir, DevDir: dir, Retry: time.Millisecond,
			Ready: func() { ready.Add(1) },
			open: func(path string) (io.ReadWriteCloser, error) {
				if filepath.Base(path) != "vport0p1" {
					return nil, fmt.Errorf("opened %s", path)
				}
				opens.Add(1)
				g, h := net.Pipe()
				select {
				case hostEnds <- h:
				case <-ctx.Done():
				}
				return g, nil
			},
		})
	}()
	for i := range 3 {
		c, err := NewClient(ctxT(t), <-hostEnds)
		require.NoError(t, err)
		var out bytes.Buffer
		_, err = c.Exec(ctxT(t), ExecRequest{Argv: []string{"echo", strconv.Itoa(i)}}, ExecIO{Stdout: &out})
		require.NoError(t, err)
		assert.Equal(t, strconv.Itoa(i)+"\n", out.String())
		c.Close() // the host daemon goes away
	}
	cancel()
	// The loop may be blocked handing over a host end.
	select {
	case h := <-hostEnds:
		h.Close()
	case <-time.After(100 * time.Millisecond):
	}
	assert.ErrorIs(t, <-done, context.Canceled)
	assert.GreaterOrEqual(t, opens.Load(), int32(3))
	assert.Equal(t, int32(1), ready.Load())
}

// portRelay stands in for QEMU between a unix socket (host side) and the
// guest port. Like QEMU in the race it models, it does not tell the guest
// when a host disconnects if another host connects right away: the guest
// session simply keeps receiving bytes, now from the new host. Host bytes
// wait while the guest has the port closed, as QEMU holds them.
type portRelay struct {
	mu     sync.Mutex
	cond   *sync.Cond
	guest  net.Conn
	host   net.Conn
	closed bool
}

func newPortRelay(t *testing.T, ln net.Listener) (*portRelay, func(string) (io.ReadWriteCloser, error)) {
	r := &portRelay{}
	r.cond = sync.NewCond(&r.mu)
	var wg sync.WaitGroup
	open := func(string) (io.ReadWriteCloser, error) {
		g, relaySide := net.Pipe()
		r.mu.Lock()
		r.guest = relaySide
		r.cond.Broadcast()
		r.mu.Unlock()
		wg.Add(1)
		go func() { // guest → current host
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, err := relaySide.Read(buf)
				if err != nil {
					return
				}
				r.mu.Lock()
				h := r.host
				r.mu.Unlock()
				if h != nil {
					_, _ = h.Write(buf[:n])
				}
			}
		}()
		return g, nil
	}
	wg.Add(1)
	go func() { // accept hosts
		defer wg.Done()
		for {
			hc, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.host = hc
			r.mu.Unlock()
			wg.Add(1)
			go func() { // host → current guest, waiting for a guest that accepts
				defer wg.Done()
				buf := make([]byte, 64<<10)
				for {
					n, err := hc.Read(buf)
					if err != nil {
						return
					}
					for {
						r.mu.Lock()
						for r.guest == nil && !r.closed {
							r.cond.Wait()
						}
						g, closed := r.guest, r.closed
						r.mu.Unlock()
						if closed {
							return
						}
						if _, err := g.Write(buf[:n]); err == nil {
							break
						}
						r.mu.Lock()
						if r.guest == g {
							r.guest = nil // closed by the guest; wait for its reopen
						}
						r.mu.Unlock()
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		r.closed = true
		if r.guest != nil {
			r.guest.Close()
		}
		if r.host != nil {
			r.host.Close()
		}
		r.cond.Broadcast()
		r.mu.Unlock()
		wg.Wait()
	})
	return r, open
}

// TestStaleSessionReset reconnects a host without the guest ever seeing the
// disconnect: the guest session answers the second hello "stale", resets,
// its running exec is killed, and Dial's retry reaches a fresh session.
func TestStaleSessionReset(t *testing.T) {
	dir, err := os.MkdirTemp("", "agent-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sys := filepath.Join(dir, "vport0p1")
	require.NoError(t, os.MkdirAll(sys, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(sys, "name"), []byte("hypeman.agent"), 0o644))
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	_, open := newPortRelay(t, ln)

	root := makeRoot(t)
	srv := &Server{Root: root, Starter: guestproc.DirectStarter{}}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- srv.ServePort(ctx, PortConfig{Name: "hypeman.agent", SysDir: dir, DevDir: dir, Retry: time.Millisecond, open: open})
	}()
	defer func() {
		cancel()
		<-served
	}()

	c1, err := Dial(ctxT(t), sock)
	require.NoError(t, err)
	go func() {
		_, _ = c1.Exec(context.Background(), ExecRequest{Argv: []string{"sh", "-c", "echo $$ > /tmp/pid; sleep 30"}}, ExecIO{})
	}()
	pid := readPid(t, root)
	c1.Close()

	c2, err := Dial(ctxT(t), sock)
	require.NoError(t, err)
	defer c2.Close()
	var out bytes.Buffer
	res, err := c2.Exec(ctxT(t), ExecRequest{Argv: []string{"echo", "fresh"}}, ExecIO{Stdout: &out})
	require.NoError(t, err)
	assert.Equal(t, 0, res.ExitCode)
	assert.Equal(t, "fresh\n", out.String())
	waitFor(t, func() bool { return !pidAlive(pid) }, "the stale session's exec to be killed")
}
