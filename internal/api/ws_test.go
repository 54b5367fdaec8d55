package api

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"hypeman/internal/auth"
	"hypeman/internal/guest/agent"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
)

// dialWS opens a WebSocket on the test server.
func dialWS(t *testing.T, e *testEnv, path, token string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.srv.URL, "http")+path, &websocket.DialOptions{HTTPHeader: h})
	if conn != nil {
		conn.SetReadLimit(wsReadLimit)
		t.Cleanup(func() { conn.CloseNow() })
	}
	return conn, resp, err
}

func mustDial(t *testing.T, e *testEnv, path string) *websocket.Conn {
	t.Helper()
	conn, resp, err := dialWS(t, e, path, mint(t, auth.InstanceWrite))
	if err != nil {
		var body []byte
		if resp != nil {
			body, _ = io.ReadAll(resp.Body)
		}
		t.Fatalf("dial %s: %v %s", path, err, body)
	}
	return conn
}

func send(t *testing.T, conn *websocket.Conn, typ websocket.MessageType, data string) {
	t.Helper()
	if err := conn.Write(t.Context(), typ, []byte(data)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// session is everything the server sent until it closed.
type session struct {
	stdout, stderr bytes.Buffer
	raw            bytes.Buffer // unprefixed binary frames (cp)
	final          map[string]any
	finals         int
	close          websocket.StatusCode
	other          []string
}

func readSession(t *testing.T, conn *websocket.Conn, prefixed bool) *session {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s := &session{}
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			s.close = websocket.CloseStatus(err)
			if s.close == -1 {
				t.Fatalf("read: %v", err)
			}
			return s
		}
		switch {
		case typ == websocket.MessageText:
			s.finals++
			if err := json.Unmarshal(data, &s.final); err != nil {
				t.Fatalf("text frame %q: %v", data, err)
			}
		case !prefixed:
			s.raw.Write(data)
		case len(data) > 0 && data[0] == streamStdout:
			s.stdout.Write(data[1:])
		case len(data) > 0 && data[0] == streamStderr:
			s.stderr.Write(data[1:])
		default:
			s.other = append(s.other, string(data))
		}
	}
}

func newGuestEnv(t *testing.T, g *fakeGuest) *testEnv {
	t.Helper()
	e := newTestEnv(t, func(o *Options) {
		if g != nil {
			o.Guest = g
		}
	})
	addInstance(e, "web", state.Running)
	addInstance(e, "off", state.Stopped)
	return e
}

func TestExecRoundTrip(t *testing.T) {
	e := newGuestEnv(t, &fakeGuest{exec: echoExec})
	conn := mustDial(t, e, "/instances/web/exec")
	send(t, conn, websocket.MessageText, `{"command":["cat","-"]}`)
	send(t, conn, websocket.MessageBinary, "hello ")
	send(t, conn, websocket.MessageBinary, "world")
	send(t, conn, websocket.MessageBinary, "") // stdin EOF: the fake's ReadAll returns
	s := readSession(t, conn, true)
	if got := s.stdout.String(); got != "idweb:cat -:hello world" {
		t.Errorf("stdout %q (the exec runs on the resolved instance ID)", got)
	}
	if got := s.stderr.String(); got != "to stderr" {
		t.Errorf("stderr %q", got)
	}
	want := map[string]any{"exit_code": float64(3), "message": "exited with code 3", "timed_out": false}
	if s.finals != 1 || !equalJSON(s.final, want) || s.close != websocket.StatusNormalClosure || len(s.other) != 0 {
		t.Fatalf("final %v (%d), close %v, other %q", s.final, s.finals, s.close, s.other)
	}
}

func equalJSON(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func TestExecStartFieldsAndTimeout(t *testing.T) {
	got := make(chan agent.ExecRequest, 1)
	e := newGuestEnv(t, &fakeGuest{exec: func(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
		got <- req
		return agent.ExecResult{ExitCode: 137, Message: "timed out after 5s: killed", TimedOut: true}, nil
	}})
	conn := mustDial(t, e, "/instances/web/exec")
	send(t, conn, websocket.MessageText, `{"command":["sleep","99"],"env":{"A":"1"},"cwd":"/tmp","user":"nobody","timeout_seconds":5}`)
	s := readSession(t, conn, true)
	req := <-got
	if req.Timeout != 5*time.Second || req.Cwd != "/tmp" || req.User != "nobody" || req.Env["A"] != "1" || req.TTY {
		t.Fatalf("request %+v", req)
	}
	if s.final["timed_out"] != true || s.final["exit_code"] != float64(137) || s.close != websocket.StatusNormalClosure {
		t.Fatalf("final %v close %v", s.final, s.close)
	}
}

func TestExecTTYResizeAndSignal(t *testing.T) {
	e := newGuestEnv(t, &fakeGuest{exec: ttyExec})
	conn := mustDial(t, e, "/instances/web/exec")
	send(t, conn, websocket.MessageText, `{"command":["sh"],"tty":true,"rows":24,"cols":80}`)
	send(t, conn, websocket.MessageText, `{"resize":{"rows":50,"cols":132}}`)
	send(t, conn, websocket.MessageText, `{"signal":"SIGHUP"}`)
	send(t, conn, websocket.MessageText, `{"signal":"term"}`)
	s := readSession(t, conn, true)
	want := "tty=true 24x80\r\nresize 50x132\r\nsignal 1\r\nsignal 15\r\n"
	if s.stdout.String() != want || s.stderr.Len() != 0 {
		t.Fatalf("stdout %q stderr %q", s.stdout.String(), s.stderr.String())
	}
	if s.final["exit_code"] != float64(143) || s.close != websocket.StatusNormalClosure {
		t.Fatalf("final %v close %v", s.final, s.close)
	}
}

func TestExecRefusedBeforeUpgrade(t *testing.T) {
	e := newGuestEnv(t, &fakeGuest{exec: echoExec})
	check := func(name, path, token string, status int, code, inMsg string) {
		t.Helper()
		conn, resp, err := dialWS(t, e, path, token)
		if err == nil || conn != nil || resp == nil {
			t.Fatalf("%s: upgraded (err %v)", name, err)
		}
		c, msg := errBody(t, resp)
		if resp.StatusCode != status || c != code || !strings.Contains(msg, inMsg) {
			t.Errorf("%s: %d %s %q, want %d %s containing %q", name, resp.StatusCode, c, msg, status, code, inMsg)
		}
	}
	for _, ep := range []string{"exec", "cp"} {
		check(ep+" stopped", "/instances/off/"+ep, mint(t), 409, "invalid_state", "cannot exec instance in state Stopped")
		check(ep+" unknown", "/instances/nope/"+ep, mint(t), 404, "not_found", "nope")
		check(ep+" no token", "/instances/web/"+ep, "", 401, "unauthorized", "")
		check(ep+" read only", "/instances/web/"+ep, mint(t, auth.InstanceRead), 403, "forbidden", "instance:write")
		check(ep+" long ref", "/instances/"+strings.Repeat("a", 129)+"/"+ep, mint(t), 400, "invalid_request", "id")
	}
	// A plain GET (no upgrade) is told what to do, in the error format.
	resp := e.do("GET", "/instances/web/exec", mint(t), "")
	if code, msg := errBody(t, resp); resp.StatusCode != 400 || code != "invalid_request" || !strings.Contains(msg, "WebSocket") {
		t.Fatalf("plain GET: %d %s %q", resp.StatusCode, code, msg)
	}
	// Cross-origin upgrades are refused.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	h := http.Header{"Authorization": {"Bearer " + mint(t)}, "Origin": {"https://evil.example"}}
	_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.srv.URL, "http")+"/instances/web/exec", &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		t.Fatal("cross-origin upgrade accepted")
	}
	if code, _ := errBody(t, resp); resp.StatusCode != 403 || code != "forbidden" {
		t.Fatalf("cross-origin: %d %s", resp.StatusCode, code)
	}
	// Without a guest: 501.
	e2 := newGuestEnv(t, nil)
	_, resp, _ = dialWS(t, e2, "/instances/web/exec", mint(t))
	if code, _ := errBody(t, resp); resp.StatusCode != 501 || code != "not_implemented" {
		t.Fatalf("no guest: %d %s", resp.StatusCode, code)
	}
}

func TestExecProtocolErrors(t *testing.T) {
	called := make(chan struct{}, 8)
	e := newGuestEnv(t, &fakeGuest{exec: func(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
		called <- struct{}{}
		if _, err := io.Copy(io.Discard, stdio.Stdin); err != nil {
			return agent.ExecResult{}, err
		}
		// The command outlives its stdin, so a frame sent after the
		// stdin end is read (and refused) before the exec finishes;
		// without this the fake exited first and the server reported a
		// clean exit.
		<-ctx.Done()
		return agent.ExecResult{}, ctx.Err()
	}})
	for _, c := range []struct {
		name  string
		msgs  []string // "t:" text, "b:" binary
		inMsg string
		ran   bool
	}{
		{"binary start", []string{"b:{}"}, "first message must be a JSON text frame", false},
		{"not json", []string{"t:sh"}, "invalid start message", false},
		{"unknown field", []string{`t:{"command":["sh"],"stdin":true}`}, "unknown field", false},
		{"no command", []string{`t:{"command":[]}`}, "command is required", false},
		{"empty argv0", []string{`t:{"command":[""]}`}, "command is required", false},
		{"negative timeout", []string{`t:{"command":["sh"],"timeout_seconds":-1}`}, "timeout_seconds", false},
		{"rows too big", []string{`t:{"command":["sh"],"rows":70000}`}, "invalid start message", false},
		{"bad env", []string{`t:{"command":["sh"],"env":{"A=B":"1"}}`}, "env", false},
		{"nul in argv", []string{`t:{"command":["a\u0000b"]}`}, "NUL", false},
		{"bad signal", []string{`t:{"command":["sh"]}`, `t:{"signal":"BOOM"}`}, "unknown signal", true},
		{"bad control", []string{`t:{"command":["sh"]}`, `t:{"resize":{"rows":1,"cols":1},"x":1}`}, "unknown field", true},
		{"empty control", []string{`t:{"command":["sh"]}`, `t:{}`}, "want resize or signal", true},
		{"stdin after eof", []string{`t:{"command":["sh"]}`, "b:", "b:more"}, "after the end of stdin", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn := mustDial(t, e, "/instances/web/exec")
			for _, m := range c.msgs {
				typ := websocket.MessageText
				if m[0] == 'b' {
					typ = websocket.MessageBinary
				}
				send(t, conn, typ, m[2:])
			}
			s := readSession(t, conn, true)
			msg, _ := s.final["error"].(string)
			if s.final["code"] != "invalid_request" || !strings.Contains(msg, c.inMsg) || s.close != websocket.StatusPolicyViolation {
				t.Fatalf("final %v close %v", s.final, s.close)
			}
			select {
			case <-called:
				if !c.ran {
					t.Fatal("the exec ran")
				}
			default:
				if c.ran {
					t.Fatal("the exec did not run")
				}
			}
		})
	}
}

func TestExecErrorsAfterUpgrade(t *testing.T) {
	var fail error
	e := newGuestEnv(t, &fakeGuest{exec: func(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
		return agent.ExecResult{}, fail
	}})
	for _, c := range []struct {
		err   error
		code  string
		close websocket.StatusCode
	}{
		{instances.ErrAgentUnavailable, "agent_unavailable", websocket.StatusNormalClosure},
		{&instances.TransitionError{Action: instances.ActionExec, State: state.Stopped}, "invalid_state", websocket.StatusNormalClosure},
		{errors.New("disk on fire"), "internal", websocket.StatusInternalError},
	} {
		fail = c.err
		conn := mustDial(t, e, "/instances/web/exec")
		send(t, conn, websocket.MessageText, `{"command":["true"]}`)
		s := readSession(t, conn, true)
		if s.final["code"] != c.code || s.final["error"] != c.err.Error() || s.close != c.close {
			t.Errorf("%v: final %v close %v", c.err, s.final, s.close)
		}
	}
}

func TestExecClientGoneKillsCommand(t *testing.T) {
	started, ended := make(chan struct{}), make(chan error, 1)
	e := newGuestEnv(t, &fakeGuest{exec: func(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
		close(started)
		<-ctx.Done()
		ended <- ctx.Err()
		return agent.ExecResult{}, ctx.Err()
	}})
	conn := mustDial(t, e, "/instances/web/exec")
	send(t, conn, websocket.MessageText, `{"command":["sleep","1000"]}`)
	<-started
	conn.CloseNow()
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("exec ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the command was not cancelled when the client went away")
	}
}

func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range []string{"../evil", "/abs/x", "ok/file"} {
		body, ok := files[name]
		if !ok {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	return buf.Bytes()
}

func TestCopyToPassesNamesThrough(t *testing.T) {
	type call struct {
		ref, dst string
		data     []byte
	}
	calls := make(chan call, 1)
	e := newGuestEnv(t, &fakeGuest{copyTo: func(ctx context.Context, ref, dst string, r io.Reader) error {
		b, err := io.ReadAll(r)
		calls <- call{ref, dst, b}
		return err
	}})
	archive := tarOf(t, map[string]string{"../evil": "x", "/abs/x": "y", "ok/file": strings.Repeat("z", 100000)})
	conn := mustDial(t, e, "/instances/web/cp")
	send(t, conn, websocket.MessageText, `{"direction":"to","path":"/tmp/../../etc"}`)
	for i := 0; i < len(archive); i += 32 << 10 {
		send(t, conn, websocket.MessageBinary, string(archive[i:min(i+32<<10, len(archive))]))
	}
	send(t, conn, websocket.MessageBinary, "")
	s := readSession(t, conn, false)
	c := <-calls
	if c.ref != "idweb" || c.dst != "/tmp/../../etc" || !bytes.Equal(c.data, archive) {
		t.Fatalf("agent got ref %q dst %q and %d bytes (want %d, unmodified)", c.ref, c.dst, len(c.data), len(archive))
	}
	if s.final["ok"] != true || s.finals != 1 || s.close != websocket.StatusNormalClosure {
		t.Fatalf("final %v close %v", s.final, s.close)
	}
}

func TestCopyToErrorStopsUpload(t *testing.T) {
	e := newGuestEnv(t, &fakeGuest{copyTo: func(ctx context.Context, ref, dst string, r io.Reader) error {
		buf := make([]byte, 10)
		io.ReadFull(r, buf)
		return &agent.RemoteError{Op: agent.OpCopyTo, Code: agent.CodeBadRequest, Message: "not a tar stream"}
	}})
	conn := mustDial(t, e, "/instances/web/cp")
	send(t, conn, websocket.MessageText, `{"direction":"to","path":"/tmp"}`)
	go func() { // keep sending: the server must not block on an abandoned upload
		for i := 0; i < 100; i++ {
			if conn.Write(context.Background(), websocket.MessageBinary, bytes.Repeat([]byte("a"), 32<<10)) != nil {
				return
			}
		}
	}()
	s := readSession(t, conn, false)
	if s.final["code"] != "invalid_request" || !strings.Contains(s.final["error"].(string), "not a tar stream") {
		t.Fatalf("final %v close %v", s.final, s.close)
	}
}

func TestCopyFrom(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789"), 20000)
	e := newGuestEnv(t, &fakeGuest{copyFrom: func(ctx context.Context, ref, path string, w io.Writer) error {
		switch path {
		case "/missing":
			return &agent.RemoteError{Op: agent.OpCopyFrom, Code: agent.CodeNotFound, Message: "stat /missing: no such file"}
		case "/../etc/passwd":
			for i := 0; i < len(payload); i += 32 << 10 {
				if _, err := w.Write(payload[i:min(i+32<<10, len(payload))]); err != nil {
					return err
				}
			}
			return nil
		}
		return errors.New("unexpected path " + path)
	}})
	conn := mustDial(t, e, "/instances/web/cp")
	send(t, conn, websocket.MessageText, `{"direction":"from","path":"/../etc/passwd"}`)
	s := readSession(t, conn, false)
	if !bytes.Equal(s.raw.Bytes(), payload) || s.final["ok"] != true || s.close != websocket.StatusNormalClosure {
		t.Fatalf("got %d bytes, final %v close %v", s.raw.Len(), s.final, s.close)
	}
	conn = mustDial(t, e, "/instances/web/cp")
	send(t, conn, websocket.MessageText, `{"direction":"from","path":"/missing"}`)
	s = readSession(t, conn, false)
	if s.final["code"] != "not_found" || s.raw.Len() != 0 || s.close != websocket.StatusNormalClosure {
		t.Fatalf("missing: final %v close %v", s.final, s.close)
	}
}

func TestCopyProtocolErrors(t *testing.T) {
	e := newGuestEnv(t, &fakeGuest{
		copyTo: func(ctx context.Context, ref, dst string, r io.Reader) error {
			if _, err := io.Copy(io.Discard, r); err != nil {
				return err
			}
			// Still extracting when the client breaks the protocol after
			// the end frame: without this the fake finished first and the
			// server answered ok before reading the offending frame.
			<-ctx.Done()
			return ctx.Err()
		},
		copyFrom: func(ctx context.Context, ref, path string, w io.Writer) error {
			<-ctx.Done() // waits for the client's protocol error
			return ctx.Err()
		},
	})
	for _, c := range []struct {
		name  string
		msgs  []string
		inMsg string
	}{
		{"bad direction", []string{`t:{"direction":"sideways","path":"/x"}`}, "direction"},
		{"no path", []string{`t:{"direction":"to"}`}, "path"},
		{"unknown field", []string{`t:{"direction":"to","path":"/x","mode":1}`}, "unknown field"},
		{"text during upload", []string{`t:{"direction":"to","path":"/x"}`, "t:{}"}, "only binary frames"},
		{"data after end", []string{`t:{"direction":"to","path":"/x"}`, "b:", "b:x"}, "after the end"},
		{"message during download", []string{`t:{"direction":"from","path":"/x"}`, "b:x"}, "takes no messages"},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn := mustDial(t, e, "/instances/web/cp")
			for _, m := range c.msgs {
				typ := websocket.MessageText
				if m[0] == 'b' {
					typ = websocket.MessageBinary
				}
				send(t, conn, typ, m[2:])
			}
			s := readSession(t, conn, false)
			msg, _ := s.final["error"].(string)
			if s.final["code"] != "invalid_request" || !strings.Contains(msg, c.inMsg) || s.close != websocket.StatusPolicyViolation {
				t.Fatalf("final %v close %v", s.final, s.close)
			}
		})
	}
}

// TestExecHandlerEnds: the handler returns after the exec even when the
// client keeps sending control messages nobody reads any more.
func TestExecHandlerEnds(t *testing.T) {
	sent := make(chan struct{})
	e := newGuestEnv(t, &fakeGuest{exec: func(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
		<-sent // never reads stdio.Resize: the input loop fills the channel and blocks
		time.Sleep(100 * time.Millisecond)
		return agent.ExecResult{ExitCode: 0, Message: "exited with code 0"}, nil
	}})
	returned := make(chan struct{}, 1)
	inner := e.srv.Config.Handler
	e.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner.ServeHTTP(w, r)
		returned <- struct{}{}
	})
	conn := mustDial(t, e, "/instances/web/exec")
	send(t, conn, websocket.MessageText, `{"command":["true"],"tty":true}`)
	for i := 0; i < 20; i++ {
		if conn.Write(t.Context(), websocket.MessageText, []byte(`{"resize":{"rows":1,"cols":1}}`)) != nil {
			break
		}
	}
	close(sent)
	s := readSession(t, conn, true)
	if s.final["exit_code"] != float64(0) {
		t.Fatalf("final %v", s.final)
	}
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("the exec handler did not return")
	}
}
