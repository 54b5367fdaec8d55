package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}`

type fakeCmd struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// fakeServer speaks the server side of QMP on one connection. handle runs in
// its own goroutine per command so replies can come back out of order.
type fakeServer struct {
	conn   net.Conn
	wmu    sync.Mutex
	wg     sync.WaitGroup
	mu     sync.Mutex
	seen   []string
	handle func(s *fakeServer, c fakeCmd)
}

func (s *fakeServer) send(raw string) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, _ = s.conn.Write([]byte(raw + "\r\n")) // QEMU ends lines with CRLF
}

func (s *fakeServer) reply(c fakeCmd, ret string) {
	s.send(fmt.Sprintf(`{"return": %s, "id": %s}`, ret, c.ID))
}

func (s *fakeServer) commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

func (s *fakeServer) serve(sendGreeting bool) {
	defer s.wg.Done()
	if sendGreeting {
		s.send(greeting)
	}
	dec := json.NewDecoder(s.conn)
	for {
		var c fakeCmd
		if err := dec.Decode(&c); err != nil {
			return
		}
		s.mu.Lock()
		s.seen = append(s.seen, c.Execute)
		s.mu.Unlock()
		if c.Execute == "qmp_capabilities" {
			s.reply(c, "{}")
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(s, c)
		}()
	}
}

// startFake returns a connected client side and the running fake server.
// Cleanup closes the server side and waits for its goroutines.
func startFake(t *testing.T, handle func(s *fakeServer, c fakeCmd)) (net.Conn, *fakeServer) {
	t.Helper()
	cli, srv := net.Pipe()
	s := &fakeServer{conn: srv, handle: handle}
	s.wg.Add(1)
	go s.serve(true)
	t.Cleanup(func() {
		srv.Close()
		s.wg.Wait()
	})
	return cli, s
}

func newClient(t *testing.T, handle func(s *fakeServer, c fakeCmd)) (*Client, *fakeServer) {
	t.Helper()
	conn, s := startFake(t, handle)
	c, err := NewClient(context.Background(), conn, Options{})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, s
}

func TestHandshakeRecordsVersionAndNegotiates(t *testing.T) {
	c, s := newClient(t, func(s *fakeServer, c fakeCmd) { s.reply(c, "{}") })
	v := c.Version()
	if v.Major != 7 || v.Minor != 2 || v.Micro != 22 || v.String() != "7.2.22" {
		t.Fatalf("version = %+v", v)
	}
	if !strings.Contains(v.Package, "Debian") {
		t.Fatalf("package = %q", v.Package)
	}
	if got := s.commands(); len(got) != 1 || got[0] != "qmp_capabilities" {
		t.Fatalf("commands after handshake = %v", got)
	}
}

func TestConcurrentExecuteGetsOwnReplies(t *testing.T) {
	c, _ := newClient(t, func(s *fakeServer, c fakeCmd) {
		// Reply after a random delay so replies interleave out of order.
		time.Sleep(time.Duration(rand.IntN(5000)) * time.Microsecond)
		var a struct{ N int }
		_ = json.Unmarshal(c.Arguments, &a)
		s.reply(c, fmt.Sprintf(`{"n": %d}`, a.N*10))
	})
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out struct{ N int }
			if err := c.Execute(context.Background(), "echo", map[string]int{"n": i}, &out); err != nil {
				errs <- err
				return
			}
			if out.N != i*10 {
				errs <- fmt.Errorf("call %d got reply %d", i, out.N)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestErrorReplyIsTyped(t *testing.T) {
	c, _ := newClient(t, func(s *fakeServer, c fakeCmd) {
		s.send(fmt.Sprintf(`{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": %s}`, c.ID))
	})
	err := c.Execute(context.Background(), "nope", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) {
		t.Fatalf("err = %v (%T), want *Error", err, err)
	}
	if qe.Class != "CommandNotFound" || qe.Command != "nope" || !strings.Contains(qe.Desc, "has not been found") {
		t.Fatalf("error = %+v", qe)
	}
}

func TestEventsDeliveredInOrderBetweenReplies(t *testing.T) {
	c, _ := newClient(t, func(s *fakeServer, c fakeCmd) {
		s.send(`{"timestamp": {"seconds": 1700000000, "microseconds": 250}, "event": "STOP"}`)
		s.send(`{"timestamp": {"seconds": 1700000001, "microseconds": 0}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}`)
		s.reply(c, "{}")
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := c.Events(ctx)
	if err := c.Execute(context.Background(), "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	e1 := recvEvent(t, ev)
	e2 := recvEvent(t, ev)
	if e1.Name != "STOP" || !e1.Time.Equal(time.Unix(1700000000, 250000)) {
		t.Fatalf("first event = %+v", e1)
	}
	var d struct {
		Guest  bool
		Reason string
	}
	if err := json.Unmarshal(e2.Data, &d); err != nil || e2.Name != "SHUTDOWN" || !d.Guest || d.Reason != "guest-shutdown" {
		t.Fatalf("second event = %+v (%v)", e2, err)
	}
	cancel()
	select {
	case _, ok := <-ev:
		if ok {
			t.Fatal("unexpected extra event")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("event channel not closed after ctx cancel")
	}
}

func recvEvent(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("event channel closed")
		}
		return e
	case <-time.After(2 * time.Second):
		t.Fatal("no event")
	}
	return Event{}
}

func TestContextCancelDoesNotDesyncStream(t *testing.T) {
	release, lateSent := make(chan struct{}), make(chan struct{})
	c, _ := newClient(t, func(s *fakeServer, c fakeCmd) {
		if c.Execute == "slow" {
			<-release
			s.reply(c, `{"which": "slow"}`)
			close(lateSent)
			return
		}
		s.reply(c, `{"which": "fast"}`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := c.Execute(ctx, "slow", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	close(release) // the late reply must be dropped, not handed to the next caller
	// Once it is on the wire, it precedes the next command's reply on the
	// stream: no need to give the reader time.
	<-lateSent
	var out struct{ Which string }
	if err := c.Execute(context.Background(), "fast", nil, &out); err != nil || out.Which != "fast" {
		t.Fatalf("after cancel: %+v %v", out, err)
	}
}

func TestServerHangupFailsPendingAndClosesEvents(t *testing.T) {
	started := make(chan struct{})
	c, s := newClient(t, func(s *fakeServer, c fakeCmd) {
		close(started)
		s.conn.Close() // QEMU exits mid-command
	})
	ev := c.Events(context.Background())
	err := c.Execute(context.Background(), "quit", nil, nil)
	<-started
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("Done not closed")
	}
	if _, ok := <-ev; ok {
		t.Fatal("event channel delivered instead of closing")
	}
	if err := c.Execute(context.Background(), "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after hangup err = %v", err)
	}
	if !c.ClosedByPeer() {
		t.Fatalf("hangup not reported as closed by peer (err %v)", c.Err())
	}
	_ = s
}

func TestCloseUnblocksPendingExecute(t *testing.T) {
	c, _ := newClient(t, func(s *fakeServer, c fakeCmd) {}) // never replies
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(context.Background(), "hang", nil, nil) }()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Execute still blocked after Close")
	}
	if ch := c.Events(context.Background()); ch != nil {
		if _, ok := <-ch; ok {
			t.Fatal("Events after Close delivered")
		}
	}
	if c.ClosedByPeer() {
		t.Fatal("our own Close reported as closed by peer")
	}
}

func TestHandshakeTimesOutWithoutGreeting(t *testing.T) {
	cli, srv := net.Pipe()
	s := &fakeServer{conn: srv, handle: func(*fakeServer, fakeCmd) {}}
	s.wg.Add(1)
	go s.serve(false) // like a second client on QEMU's busy QMP socket
	defer func() { srv.Close(); s.wg.Wait() }()
	start := time.Now()
	_, err := NewClient(context.Background(), cli, Options{HandshakeTimeout: 100 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "no greeting") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("handshake took %v", d)
	}
}

func TestNotAGreeting(t *testing.T) {
	cli, srv := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = srv.Write([]byte(`{"return": {}}` + "\n"))
	}()
	defer func() { srv.Close(); <-done }()
	if _, err := NewClient(context.Background(), cli, Options{}); err == nil || !strings.Contains(err.Error(), "greeting") {
		t.Fatalf("err = %v", err)
	}
}

func TestDialUnixLongPath(t *testing.T) {
	dir := t.TempDir()
	long := filepath.Join(dir, strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(long, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(long, "qmp.sock")
	if len(sock) <= MaxUnixPath {
		t.Fatalf("test path too short: %d", len(sock))
	}
	// Listen through a relative path, as QEMU does when run in the dir.
	l, err := listenUnixIn(long, "qmp.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		conn, err := l.Accept()
		if err != nil {
			return
		}
		s := &fakeServer{conn: conn, handle: func(s *fakeServer, c fakeCmd) { s.reply(c, `{"status": "running", "running": true}`) }}
		s.wg.Add(1)
		s.serve(true)
		s.wg.Wait()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, sock, Options{})
	if err != nil {
		t.Fatalf("Dial long path: %v", err)
	}
	var st struct{ Status string }
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status: %+v %v", st, err)
	}
	c.Close()
	<-srvDone
}

// listenUnixIn listens on dir/name using the /proc/self/fd trick in reverse
// (net.Listen has the same sun_path limit).
func listenUnixIn(dir, name string) (net.Listener, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return net.Listen("unix", fmt.Sprintf("/proc/self/fd/%d/%s", f.Fd(), name))
}

func TestExecuteFDPassesDescriptor(t *testing.T) {
	dir := t.TempDir()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	passed, err := os.Create(filepath.Join(dir, "passed"))
	if err != nil {
		t.Fatal(err)
	}
	defer passed.Close()

	type got struct {
		cmd string
		fds int
		ino uint64
	}
	recv := make(chan got, 1)
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		conn, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.Write([]byte(greeting + "\r\n"))
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4*4))
		var pending []byte
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			var g got
			if oobn > 0 {
				msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
				for _, m := range msgs {
					fds, _ := unix.ParseUnixRights(&m)
					for _, fd := range fds {
						var st unix.Stat_t
						unix.Fstat(fd, &st)
						g.fds++
						g.ino = st.Ino
						unix.Close(fd)
					}
				}
			}
			pending = append(pending, buf[:n]...)
			for {
				i := strings.IndexByte(string(pending), '\n')
				if i < 0 {
					break
				}
				var c fakeCmd
				json.Unmarshal(pending[:i], &c)
				pending = pending[i+1:]
				if c.Execute != "qmp_capabilities" {
					g.cmd = c.Execute
					recv <- g
				}
				conn.Write([]byte(fmt.Sprintf(`{"return": {}, "id": %s}`+"\r\n", c.ID)))
				g = got{}
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, filepath.Join(dir, "s"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ExecuteFD(ctx, "getfd", map[string]string{"fdname": "x"}, passed, nil); err != nil {
		t.Fatalf("ExecuteFD: %v", err)
	}
	g := <-recv
	var st unix.Stat_t
	unix.Fstat(int(passed.Fd()), &st)
	if g.cmd != "getfd" || g.fds != 1 || g.ino != st.Ino {
		t.Fatalf("server got %+v, want getfd with one fd of inode %d", g, st.Ino)
	}
	// The caller's file stays usable and commands without fds carry none.
	if _, err := passed.WriteString("still open"); err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(ctx, "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}
	if g := <-recv; g.fds != 0 {
		t.Fatalf("plain command carried %d fds", g.fds)
	}
	c.Close()
	<-srvDone
}

func TestExecuteFDNeedsUnixSocket(t *testing.T) {
	c, _ := newClient(t, func(s *fakeServer, c fakeCmd) { s.reply(c, "{}") })
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := c.ExecuteFD(context.Background(), "getfd", nil, f, nil); !errors.Is(err, ErrNoFDPassing) {
		t.Fatalf("err = %v", err)
	}
}
