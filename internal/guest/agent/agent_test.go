package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
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

// tree is what ReadTree sent: entries in order, file contents by path.
type tree struct {
	entries []TreeEntry
	data    map[string]string
}

func (tr tree) paths() []string {
	var out []string
	for _, e := range tr.entries {
		out = append(out, e.Path)
	}
	return out
}

func (tr tree) get(t *testing.T, p string) TreeEntry {
	t.Helper()
	for _, e := range tr.entries {
		if e.Path == p {
			return e
		}
	}
	t.Fatalf("no entry %q in %v", p, tr.paths())
	return TreeEntry{}
}

func (h *harness) readTree(t *testing.T, req TreeRequest) (tree, error) {
	t.Helper()
	tr := tree{data: map[string]string{}}
	err := h.client.ReadTree(ctxT(t), req, func(e TreeEntry, data io.Reader) error {
		tr.entries = append(tr.entries, e)
		b, err := io.ReadAll(data)
		if err != nil {
			return err
		}
		if e.Regular() {
			tr.data[e.Path] = string(b)
		} else if len(b) != 0 {
			t.Errorf("%s: %d data bytes for a non-file", e.Path, len(b))
		}
		return nil
	})
	return tr, err
}

func (h *harness) put(t *testing.T, req PutRequest, data string) (int64, error) {
	t.Helper()
	var r io.Reader
	if data != "" {
		r = strings.NewReader(data)
	}
	return h.client.Put(ctxT(t), req, r)
}

func TestPutAndReadTree(t *testing.T) {
	h := newHarness(t)
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC).Unix()
	big := strings.Repeat("0123456789abcdef", 300<<10/16+7) // several frames, not a multiple of one
	puts := []struct {
		req  PutRequest
		data string
	}{
		{PutRequest{Path: "/dest/pkg", Kind: PutDir, Mode: 0o750}, ""},
		{PutRequest{Path: "/dest/pkg/a.txt", Kind: PutFile, Mode: 0o600, UID: 1000, GID: 1000, Mtime: mtime}, "alpha"},
		{PutRequest{Path: "/dest/pkg/big.bin", Kind: PutFile}, big},
		{PutRequest{Path: "/dest/pkg/run.sh", Kind: PutFile, Mode: 0o755}, "#!/bin/sh\necho ran\n"},
		{PutRequest{Path: "/dest/pkg/suid", Kind: PutFile, Mode: 0o4755, UID: 1000}, "s"},
		{PutRequest{Path: "/dest/pkg/sub/deep.txt", Kind: PutFile}, "deep"}, // parent created
		{PutRequest{Path: "/dest/pkg/empty", Kind: PutFile}, ""},
		{PutRequest{Path: "/dest/pkg/link", Kind: PutSymlink, LinkTarget: "a.txt"}, ""},
	}
	for _, p := range puts {
		n, err := h.put(t, p.req, p.data)
		require.NoError(t, err, p.req.Path)
		assert.Equal(t, int64(len(p.data)), n, p.req.Path)
	}

	base := filepath.Join(h.root, "dest/pkg")
	st, err := os.Stat(filepath.Join(base, "a.txt"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	assert.Equal(t, uint32(1000), st.Sys().(*syscall.Stat_t).Uid)
	assert.Equal(t, mtime, st.ModTime().Unix())
	st, err = os.Stat(filepath.Join(base, "suid"))
	require.NoError(t, err)
	assert.Equal(t, os.ModeSetuid|0o755, st.Mode()&(os.ModeSetuid|os.ModePerm), "setuid survives the chown")
	st, err = os.Stat(filepath.Join(base, "big.bin"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), st.Mode().Perm(), "default mode of a new file")
	st, err = os.Stat(base)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o750), st.Mode().Perm())
	st, err = os.Stat(filepath.Join(base, "sub"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), st.Mode().Perm(), "created parent")
	l, err := os.Readlink(filepath.Join(base, "link"))
	require.NoError(t, err)
	assert.Equal(t, "a.txt", l)

	// The copied script runs in the guest.
	o := h.run(t, ExecRequest{Argv: []string{"/dest/pkg/run.sh"}}, nil)
	assert.Equal(t, "ran\n", o.stdout)

	// Rewriting a file without a mode keeps its mode; the content is replaced.
	_, err = h.put(t, PutRequest{Path: "/dest/pkg/a.txt", Kind: PutFile}, "beta")
	require.NoError(t, err)
	b, _ := os.ReadFile(filepath.Join(base, "a.txt"))
	assert.Equal(t, "beta", string(b))
	st, _ = os.Stat(filepath.Join(base, "a.txt"))
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	// A put of an existing directory applies its mode and mtime.
	_, err = h.put(t, PutRequest{Path: "/dest/pkg/sub", Kind: PutDir, Mode: 0o700, Mtime: mtime}, "")
	require.NoError(t, err)
	st, _ = os.Stat(filepath.Join(base, "sub"))
	assert.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	assert.Equal(t, mtime, st.ModTime().Unix())

	// The tree comes back relative to its top, directories first.
	got, err := h.readTree(t, TreeRequest{Path: "/dest/pkg/"})
	require.NoError(t, err)
	assert.Equal(t, []string{".", "a.txt", "big.bin", "empty", "link", "run.sh", "sub", "sub/deep.txt", "suid"}, got.paths())
	top := got.get(t, ".")
	assert.True(t, top.IsDir)
	assert.Equal(t, uint32(0o750), top.Mode)
	assert.Equal(t, "beta", got.data["a.txt"])
	assert.Equal(t, big, got.data["big.bin"])
	assert.Equal(t, "", got.data["empty"])
	a := got.get(t, "a.txt")
	assert.Equal(t, uint32(1000), a.UID)
	assert.Equal(t, uint32(0o600), a.Mode)
	assert.Equal(t, int64(4), a.Size)
	assert.Equal(t, uint32(0o4755), got.get(t, "suid").Mode)
	link := got.get(t, "link")
	assert.True(t, link.IsSymlink)
	assert.Equal(t, "a.txt", link.LinkTarget)
	assert.Equal(t, mtime, got.get(t, "sub").Mtime)

	// A single file is the entry "."; a symlink is sent as a link unless
	// followed.
	got, err = h.readTree(t, TreeRequest{Path: "/data/link"})
	require.NoError(t, err)
	require.Len(t, got.entries, 1)
	assert.Equal(t, TreeEntry{Path: ".", Mode: 0o777, IsSymlink: true, LinkTarget: "/data/file.txt", Mtime: got.entries[0].Mtime}, got.entries[0])
	got, err = h.readTree(t, TreeRequest{Path: "/data/link", FollowLinks: true})
	require.NoError(t, err)
	require.Len(t, got.entries, 1)
	assert.Equal(t, "hello file\n", got.data["."])
	assert.Equal(t, uint32(0o640), got.entries[0].Mode)

	_, err = h.readTree(t, TreeRequest{Path: "/data/missing"})
	assert.ErrorIs(t, err, ErrNotFound)

	// A visitor error ends the walk with it.
	boom := errors.New("visitor says no")
	err = h.client.ReadTree(ctxT(t), TreeRequest{Path: "/dest/pkg"}, func(TreeEntry, io.Reader) error { return boom })
	assert.ErrorIs(t, err, boom)
	// A visitor that reads nothing still gets every entry.
	n := 0
	require.NoError(t, h.client.ReadTree(ctxT(t), TreeRequest{Path: "/dest/pkg"}, func(TreeEntry, io.Reader) error { n++; return nil }))
	assert.Equal(t, 9, n)
}

func TestPutRefusals(t *testing.T) {
	h := newHarness(t)
	for _, c := range []struct {
		name string
		req  PutRequest
		code string
	}{
		{"file over a directory", PutRequest{Path: "/data", Kind: PutFile}, CodeConflict},
		{"file at the root", PutRequest{Path: "/", Kind: PutFile}, CodeConflict},
		{"directory over a file", PutRequest{Path: "/data/file.txt", Kind: PutDir}, CodeConflict},
		{"symlink over a directory", PutRequest{Path: "/data", Kind: PutSymlink, LinkTarget: "x"}, CodeConflict},
		{"file under a file", PutRequest{Path: "/data/file.txt/x", Kind: PutFile}, CodeConflict},
		{"relative path", PutRequest{Path: "data/x", Kind: PutFile}, CodeBadRequest},
		{"unknown kind", PutRequest{Path: "/data/x", Kind: "fifo"}, CodeBadRequest},
		{"empty link target", PutRequest{Path: "/data/x", Kind: PutSymlink}, CodeBadRequest},
	} {
		_, err := h.put(t, c.req, "data")
		var re *RemoteError
		if assert.ErrorAs(t, err, &re, c.name) {
			assert.Equal(t, c.code, re.Code, "%s: %v", c.name, err)
		}
	}
	b, _ := os.ReadFile(filepath.Join(h.root, "data/file.txt"))
	assert.Equal(t, "hello file\n", string(b), "refused puts change nothing")

	// A client that aborts its upload gets its own error back.
	_, err := h.client.Put(ctxT(t), PutRequest{Path: "/data/aborted", Kind: PutFile}, io.MultiReader(strings.NewReader("part"), errReader{errors.New("disk unplugged")}))
	assert.ErrorContains(t, err, "disk unplugged")
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// TestCopyConfinedToRoot: whatever path or symlink a put or read_tree
// meets, it stays inside the instance root (chroot semantics).
func TestCopyConfinedToRoot(t *testing.T) {
	h := newHarness(t)
	outside := filepath.Dir(h.root) // the host directory holding the root
	before := listTree(t, outside)
	require.NoError(t, os.Symlink("/etc", filepath.Join(h.root, "data/abs")))
	require.NoError(t, os.Symlink("../../../../..", filepath.Join(h.root, "data/up")))
	require.NoError(t, os.Symlink(outside, filepath.Join(h.root, "data/hostpath")))
	require.NoError(t, os.Symlink("../../../../../../etc/passwd", filepath.Join(h.root, "data/pw")))

	cases := map[string]string{ // guest path → where it must land, relative to the root
		"/../../escape1.txt":     "escape1.txt",
		"/data/abs/escape2.txt":  "etc/escape2.txt",
		"/data/up/escape3.txt":   "escape3.txt",
		"/data/hostpath/esc.txt": strings.TrimPrefix(filepath.Join(outside, "esc.txt"), "/"),
	}
	for p, want := range cases {
		_, err := h.put(t, PutRequest{Path: p, Kind: PutFile}, "x")
		require.NoError(t, err, p)
		b, err := os.ReadFile(filepath.Join(h.root, want))
		require.NoError(t, err, "%s should land at <root>/%s", p, want)
		assert.Equal(t, "x", string(b))
	}
	// Symlinks a put creates are plain links; writing through them later
	// is re-rooted like any other.
	_, err := h.put(t, PutRequest{Path: "/dest/evil", Kind: PutSymlink, LinkTarget: outside}, "")
	require.NoError(t, err)
	_, err = h.put(t, PutRequest{Path: "/dest/evil/escape4.txt", Kind: PutFile}, "x")
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(h.root, outside, "escape4.txt"))
	require.NoError(t, err)

	// Following links reads the guest's files, never the host's.
	got, err := h.readTree(t, TreeRequest{Path: "/data/pw", FollowLinks: true})
	require.NoError(t, err)
	assert.Contains(t, got.data["."], "app:x:1000:1000", "the root's passwd, not the host's")
	got, err = h.readTree(t, TreeRequest{Path: "/data", FollowLinks: true})
	require.NoError(t, err)
	assert.Contains(t, got.data["pw"], "app:x:1000:1000")
	assert.True(t, got.get(t, "up").IsDir, "a linked directory is sent as a directory")
	assert.NotContains(t, got.paths(), "up/bin", "but not walked")

	after := listTree(t, outside)
	for p := range after {
		if !strings.HasPrefix(p, filepath.Base(h.root)) {
			assert.Contains(t, before, p, "created %s outside the root", p)
		}
	}
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
// Ready fires once. The port device is replaced by an in-memory pipe per open;
// a pipe whose host end is closed takes no deadlines, so this is the path of
// a port that is closed after every session (port_test.go has the port that
// stays open).
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
