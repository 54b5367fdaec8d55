package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// wsHandler upgrades and runs fn with the connection (a fake exec or cp
// endpoint).
func wsHandler(t *testing.T, fn func(ctx context.Context, conn *websocket.Conn)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer conn.CloseNow()
		conn.SetReadLimit(1 << 20)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		fn(ctx, conn)
	}
}

// readStartMsg reads the first text message into a map.
func readStartMsg(t *testing.T, ctx context.Context, conn *websocket.Conn) map[string]any {
	t.Helper()
	typ, data, err := conn.Read(ctx)
	if err != nil || typ != websocket.MessageText {
		t.Errorf("start message: %v %v", typ, err)
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Errorf("start message %q: %v", data, err)
	}
	return m
}

// readStdin collects binary messages until the empty one; text messages
// go to control.
func readStdin(ctx context.Context, conn *websocket.Conn, control func(map[string]any)) (string, error) {
	var b strings.Builder
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return b.String(), err
		}
		if typ == websocket.MessageText {
			var m map[string]any
			json.Unmarshal(data, &m)
			if control != nil {
				control(m)
			}
			continue
		}
		if len(data) == 0 {
			return b.String(), nil
		}
		b.Write(data)
	}
}

func out(ctx context.Context, conn *websocket.Conn, stream byte, s string) {
	conn.Write(ctx, websocket.MessageBinary, append([]byte{stream}, s...))
}

func final(ctx context.Context, conn *websocket.Conn, v string) {
	conn.Write(ctx, websocket.MessageText, []byte(v))
	conn.Close(websocket.StatusNormalClosure, "")
}

func TestExecNonInteractive(t *testing.T) {
	f := newFake(t)
	f.handle("GET /instances/{id}/exec", wsHandler(t, func(ctx context.Context, conn *websocket.Conn) {
		start := readStartMsg(t, ctx, conn)
		want := map[string]any{"command": []any{"sh", "-c", "echo hi --not-a-flag"}, "env": map[string]any{"A": "1"},
			"cwd": "/srv", "user": "nobody", "timeout": float64(5), "separate_stderr": true}
		if !reflect.DeepEqual(start, want) {
			t.Errorf("start\n got %v\nwant %v", start, want)
		}
		// Without -i, stdin ends at once.
		if in, err := readStdin(ctx, conn, nil); err != nil || in != "" {
			t.Errorf("stdin %q %v", in, err)
		}
		out(ctx, conn, 1, "hi\n")
		out(ctx, conn, 2, "warn\n")
		final(ctx, conn, `{"exitCode":7,"message":"exited with code 7","timed_out":false}`)
	}))
	o, stdout, stderr := testOptions(f.srv.URL, nil)
	o.stdin = strings.NewReader("must not be read")
	res := runWith(t, t.Context(), o, "exec", "-e", "A=1", "-w", "/srv", "-u", "nobody", "--timeout", "5s",
		"web", "--", "sh", "-c", "echo hi --not-a-flag")
	if res.code != 7 || stdout.String() != "hi\n" || stderr.String() != "warn\n" {
		t.Fatal(res)
	}
	reqs := f.requests("GET", "/instances/web/exec")
	if len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+testKey || !strings.HasPrefix(reqs[0].Header.Get("User-Agent"), "hypeman-cli/") {
		t.Fatalf("requests %+v", reqs)
	}
}

func TestExecInteractiveStdinAndExitZero(t *testing.T) {
	f := newFake(t)
	f.handle("GET /instances/{id}/exec", wsHandler(t, func(ctx context.Context, conn *websocket.Conn) {
		start := readStartMsg(t, ctx, conn)
		if _, ok := start["tty"]; ok {
			t.Errorf("tty sent without -t: %v", start)
		}
		in, err := readStdin(ctx, conn, nil)
		if err != nil {
			t.Errorf("stdin: %v", err)
		}
		out(ctx, conn, 1, strings.ToUpper(in))
		final(ctx, conn, `{"exitCode":0,"message":"exited with code 0","timed_out":false}`)
	}))
	o, stdout, _ := testOptions(f.srv.URL, nil)
	o.stdin = strings.NewReader(strings.Repeat("abc\n", 20000)) // several 32 KiB messages
	res := runWith(t, t.Context(), o, "exec", "-i", "web", "cat")
	if res.code != 0 || stdout.String() != strings.Repeat("ABC\n", 20000) {
		t.Fatalf("exit %d, %d bytes of stdout, stderr %q", res.code, stdout.Len(), res.stderr)
	}
}

func TestExecFailures(t *testing.T) {
	f := newFake(t)
	f.handle("GET /instances/stopped/exec", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusConflict, `{"code":"invalid_state","message":"cannot exec instance in state Stopped (allowed: start, fork, delete)"}`)
	})
	f.handle("GET /instances/noagent/exec", wsHandler(t, func(ctx context.Context, conn *websocket.Conn) {
		readStartMsg(t, ctx, conn)
		final(ctx, conn, `{"exitCode":127,"error":"guest agent unavailable: the instance was created with skip_guest_agent","code":"agent_unavailable"}`)
	}))
	f.handle("GET /instances/dropped/exec", wsHandler(t, func(ctx context.Context, conn *websocket.Conn) {
		readStartMsg(t, ctx, conn)
		out(ctx, conn, 1, "partial")
		conn.Close(websocket.StatusInternalError, "boom")
	}))
	f.handle("GET /instances/noexit/exec", wsHandler(t, func(ctx context.Context, conn *websocket.Conn) {
		readStartMsg(t, ctx, conn)
		final(ctx, conn, `{"exit_code":0}`)
	}))
	f.handle("GET /instances/timeout/exec", wsHandler(t, func(ctx context.Context, conn *websocket.Conn) {
		readStartMsg(t, ctx, conn)
		final(ctx, conn, `{"exitCode":124,"message":"timed out after 1s: killed by signal 9 (SIGKILL)","timed_out":true}`)
	}))
	for _, c := range []struct {
		inst  string
		code  int
		inErr string
	}{
		{"stopped", 1, "Error: cannot exec instance in state Stopped"},
		{"noagent", 1, "Error: guest agent unavailable"},
		{"dropped", 1, "closed the connection before the end (status 1011 boom)"},
		{"timeout", 124, "hypeman exec: timed out after 1s"},
		{"noexit", 1, "server sent an invalid message"},
	} {
		res := f.run("exec", c.inst, "true")
		if res.code != c.code || !strings.Contains(res.stderr, c.inErr) {
			t.Errorf("%s:\n%v", c.inst, res)
		}
	}
	// Usage errors never reach the server.
	n := len(f.requests("GET", "/"))
	for _, args := range [][]string{{"exec", "web"}, {"exec", "web", "--"}, {"exec", "--timeout", "1.5s", "web", "true"}, {"exec", "-e", "=x", "web", "true"}} {
		if res := f.run(args...); res.code != 1 || !strings.Contains(res.stderr, "--help") {
			t.Errorf("%v:\n%v", args, res)
		}
	}
	if len(f.requests("GET", "/")) != n {
		t.Fatal("a usage error reached the server")
	}
}

// TestExecTTY drives exec -it with a pseudo-terminal as stdin: the window
// size goes with the request, the terminal is raw during the session (a
// typed CR arrives as CR) and restored after, SIGWINCH sends a resize.
func TestExecTTY(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	defer tty.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 30, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	before, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	rawDuring := make(chan bool, 1)
	f := newFake(t)
	f.handle("GET /instances/{id}/exec", wsHandler(t, func(ctx context.Context, conn *websocket.Conn) {
		start := readStartMsg(t, ctx, conn)
		if start["tty"] != true || start["rows"] != float64(30) || start["cols"] != float64(100) {
			t.Errorf("start %v", start)
		}
		// The terminal is raw once the session runs: type a line.
		var tio *unix.Termios
		for i := 0; i < 200; i++ {
			tio, _ = unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
			if tio.Lflag&unix.ICANON == 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		rawDuring <- tio.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) == 0 && tio.Iflag&unix.ICRNL == 0
		msgs := make(chan []byte, 64) // text messages are prefixed with 't', binary with 'b'
		go func() {
			defer close(msgs)
			for {
				typ, data, err := conn.Read(ctx)
				if err != nil {
					return
				}
				kind := byte('b')
				if typ == websocket.MessageText {
					kind = 't'
				}
				msgs <- append([]byte{kind}, data...)
			}
		}()
		ptmx.Write([]byte("ls\r"))
		var typed strings.Builder
		for typed.String() != "ls\r" {
			m, ok := <-msgs
			if !ok {
				t.Errorf("connection ended; stdin so far %q", typed.String())
				return
			}
			if m[0] == 'b' {
				typed.Write(m[1:])
			}
		}
		// Resize the terminal and signal ourselves until the CLI relays it
		// (its SIGWINCH handler may not be registered at first).
		pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 120})
		resized := false
		for i := 0; i < 100 && !resized; i++ {
			syscall.Kill(os.Getpid(), syscall.SIGWINCH)
			timeout := time.After(50 * time.Millisecond)
		drain:
			for {
				select {
				case m := <-msgs:
					if len(m) > 0 && m[0] == 't' && string(m[1:]) == `{"resize":{"rows":40,"cols":120}}` {
						resized = true
						break drain
					}
				case <-timeout:
					break drain
				}
			}
		}
		if !resized {
			t.Error("no resize to 40x120 relayed")
		}
		out(ctx, conn, 1, "file1\r\nfile2\r\n")
		final(ctx, conn, `{"exitCode":5,"message":"exited with code 5","timed_out":false}`)
	}))
	o, stdout, _ := testOptions(f.srv.URL, nil)
	o.stdin = tty
	res := runWith(t, t.Context(), o, "exec", "-it", "web", "sh")
	if res.code != 5 || stdout.String() != "file1\r\nfile2\r\n" {
		t.Fatal(res)
	}
	if !<-rawDuring {
		t.Error("the terminal was not in raw mode during the session")
	}
	after, _ := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if after.Lflag != before.Lflag || after.Iflag != before.Iflag || after.Oflag != before.Oflag {
		t.Errorf("terminal settings not restored: lflag %x→%x iflag %x→%x", before.Lflag, after.Lflag, before.Iflag, after.Iflag)
	}
}
