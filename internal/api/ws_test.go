package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
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
	raw            bytes.Buffer // binary frames, concatenated
	binary         [][]byte     // binary frames, one by one
	stdout, stderr bytes.Buffer // binary frames split by their stream byte (separate_stderr)
	texts          []map[string]any
	order          []string // "b" or the text message's type/keys, in arrival order
	final          map[string]any
	close          websocket.StatusCode
}

func readSession(t *testing.T, conn *websocket.Conn) *session {
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
		if typ == websocket.MessageText {
			var m map[string]any
			if err := json.Unmarshal(data, &m); err != nil {
				t.Fatalf("text frame %q: %v", data, err)
			}
			s.texts = append(s.texts, m)
			s.final = m
			label, _ := m["type"].(string)
			if label == "" {
				label = "text"
			}
			s.order = append(s.order, label)
			continue
		}
		s.raw.Write(data)
		s.binary = append(s.binary, data)
		s.order = append(s.order, "b")
		if len(data) > 0 && data[0] == streamStdout {
			s.stdout.Write(data[1:])
		} else if len(data) > 0 && data[0] == streamStderr {
			s.stderr.Write(data[1:])
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
	s := readSession(t, conn)
	// Output is raw bytes, stdout and stderr in the order written, as
	// hypeman's CLI expects (it writes every binary frame to stdout).
	if got := s.raw.String(); got != "idweb:cat -:hello worldto stderr" {
		t.Errorf("output %q (the exec runs on the resolved instance ID)", got)
	}
	want := map[string]any{"exitCode": float64(3), "message": "exited with code 3", "timed_out": false}
	if len(s.texts) != 1 || !equalJSON(s.final, want) || s.close != websocket.StatusNormalClosure {
		t.Fatalf("final %v (%d texts), close %v", s.final, len(s.texts), s.close)
	}
}

// TestExecUpstreamClientFraming drives the session with exactly the bytes
// hypeman's CLI sends and reads the end the way it does.
func TestExecUpstreamClientFraming(t *testing.T) {
	got := make(chan agent.ExecRequest, 1)
	e := newGuestEnv(t, &fakeGuest{exec: func(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
		got <- req
		fmt.Fprint(stdio.Stdout, "partial output\n")
		return agent.ExecResult{ExitCode: 137, Message: "timed out after 5s: killed by signal 9 (SIGKILL)", TimedOut: true}, nil
	}})
	conn := mustDial(t, e, "/instances/web/exec")
	send(t, conn, websocket.MessageText, `{"command":["sleep","99"],"tty":false,"env":{"A":"1"},"cwd":"/tmp","timeout":5,"rows":24,"cols":80}`)
	s := readSession(t, conn)
	req := <-got
	if req.Timeout != 5*time.Second || req.Cwd != "/tmp" || req.Env["A"] != "1" || req.TTY || req.Rows != 24 || req.Cols != 80 ||
		!reflect.DeepEqual(req.Argv, []string{"sleep", "99"}) {
		t.Fatalf("request %+v", req)
	}
	if s.raw.String() != "partial output\n" {
		t.Fatalf("output %q", s.raw.String())
	}
	// The CLI finds the last message with bytes.Contains(msg, "exitCode")
	// and decodes {"exitCode": int}; a timeout is 124.
	last, _ := json.Marshal(s.final)
	var exit struct {
		ExitCode int `json:"exitCode"`
	}
	if !bytes.Contains(last, []byte("exitCode")) || json.Unmarshal(last, &exit) != nil || exit.ExitCode != 124 ||
		s.final["timed_out"] != true || s.close != websocket.StatusNormalClosure {
		t.Fatalf("final %s close %v", last, s.close)
	}
}

func TestExecSeparateStderrAndUser(t *testing.T) {
	got := make(chan agent.ExecRequest, 1)
	e := newGuestEnv(t, &fakeGuest{exec: func(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
		got <- req
		return echoExec(ctx, ref, req, stdio)
	}})
	conn := mustDial(t, e, "/instances/web/exec")
	send(t, conn, websocket.MessageText, `{"command":["id"],"user":"nobody","separate_stderr":true}`)
	send(t, conn, websocket.MessageBinary, "in")
	send(t, conn, websocket.MessageBinary, "")
	s := readSession(t, conn)
	if req := <-got; req.User != "nobody" {
		t.Fatalf("request %+v", req)
	}
	if s.stdout.String() != "idweb:id:in" || s.stderr.String() != "to stderr" || s.final["exitCode"] != float64(3) {
		t.Fatalf("stdout %q stderr %q final %v", s.stdout.String(), s.stderr.String(), s.final)
	}
}

func TestExecDefaultCommand(t *testing.T) {
	got := make(chan agent.ExecRequest, 2)
	e := newGuestEnv(t, &fakeGuest{exec: func(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
		got <- req
		return agent.ExecResult{}, nil
	}})
	for _, start := range []string{`{"tty":true}`, `{"command":[]}`} {
		conn := mustDial(t, e, "/instances/web/exec")
		send(t, conn, websocket.MessageText, start)
		s := readSession(t, conn)
		if req := <-got; !reflect.DeepEqual(req.Argv, []string{"/bin/sh"}) || s.final["exitCode"] != float64(0) {
			t.Fatalf("%s: argv %q, final %v", start, req.Argv, s.final)
		}
	}
}

func TestExecWaitForAgent(t *testing.T) {
	var calls atomic.Int32
	e := newGuestEnv(t, &fakeGuest{exec: func(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
		if calls.Add(1) <= 2 {
			return agent.ExecResult{}, fmt.Errorf("%w: dial: connection refused", instances.ErrAgentUnavailable)
		}
		fmt.Fprint(stdio.Stdout, "up")
		return agent.ExecResult{}, nil
	}})
	conn := mustDial(t, e, "/instances/web/exec")
	send(t, conn, websocket.MessageText, `{"command":["true"],"wait_for_agent":30}`)
	s := readSession(t, conn)
	if calls.Load() != 3 || s.raw.String() != "up" || s.final["exitCode"] != float64(0) {
		t.Fatalf("calls %d output %q final %v", calls.Load(), s.raw.String(), s.final)
	}
	// Without it the first refusal ends the session.
	calls.Store(0)
	conn = mustDial(t, e, "/instances/web/exec")
	send(t, conn, websocket.MessageText, `{"command":["true"]}`)
	s = readSession(t, conn)
	if calls.Load() != 1 || s.final["code"] != "agent_unavailable" || s.final["exitCode"] != float64(127) {
		t.Fatalf("calls %d final %v", calls.Load(), s.final)
	}
}

func equalJSON(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func TestExecTTYResizeAndSignal(t *testing.T) {
	e := newGuestEnv(t, &fakeGuest{exec: ttyExec})
	conn := mustDial(t, e, "/instances/web/exec")
	send(t, conn, websocket.MessageText, `{"command":["sh"],"tty":true,"rows":24,"cols":80}`)
	send(t, conn, websocket.MessageText, `{"resize":{"rows":50,"cols":132}}`)
	send(t, conn, websocket.MessageText, `{"signal":"SIGHUP"}`)
	send(t, conn, websocket.MessageText, `{"signal":"term"}`)
	s := readSession(t, conn)
	want := "tty=true 24x80\r\nresize 50x132\r\nsignal 1\r\nsignal 15\r\n"
	if s.raw.String() != want {
		t.Fatalf("output %q", s.raw.String())
	}
	if s.final["exitCode"] != float64(143) || s.close != websocket.StatusNormalClosure {
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

func sendAll(t *testing.T, conn *websocket.Conn, msgs []string) {
	t.Helper()
	for _, m := range msgs { // "t:" text, "b:" binary
		typ := websocket.MessageText
		if m[0] == 'b' {
			typ = websocket.MessageBinary
		}
		send(t, conn, typ, m[2:])
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
		{"old timeout name", []string{`t:{"command":["sh"],"timeout_seconds":5}`}, "unknown field", false},
		{"empty argv0", []string{`t:{"command":[""]}`}, "command[0] is empty", false},
		{"negative timeout", []string{`t:{"command":["sh"],"timeout":-1}`}, "timeout must be", false},
		{"huge wait_for_agent", []string{`t:{"command":["sh"],"wait_for_agent":99999}`}, "wait_for_agent", false},
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
			sendAll(t, conn, c.msgs)
			s := readSession(t, conn)
			// As hypeman reports a failed exec: an "Error:" output frame,
			// then exit code 127; our error and code ride along.
			msg, _ := s.final["error"].(string)
			if s.final["code"] != "invalid_request" || !strings.Contains(msg, c.inMsg) || s.final["exitCode"] != float64(127) ||
				s.raw.String() != "Error: "+msg+"\r\n" || s.close != websocket.StatusPolicyViolation {
				t.Fatalf("output %q final %v close %v", s.raw.String(), s.final, s.close)
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
		err       error
		code      string
		close     websocket.StatusCode
		separate  bool
		wantBytes string
	}{
		{instances.ErrAgentUnavailable, "agent_unavailable", websocket.StatusNormalClosure, false, "Error: guest agent unavailable\r\n"},
		{&instances.TransitionError{Action: instances.ActionExec, State: state.Stopped}, "invalid_state", websocket.StatusNormalClosure, false, ""},
		{errors.New("disk on fire"), "internal", websocket.StatusInternalError, true, ""},
	} {
		fail = c.err
		conn := mustDial(t, e, "/instances/web/exec")
		send(t, conn, websocket.MessageText, fmt.Sprintf(`{"command":["true"],"separate_stderr":%v}`, c.separate))
		s := readSession(t, conn)
		order := []string{"b", "text"}
		if c.separate {
			order = order[1:] // the client reads the error field instead
		}
		if s.final["code"] != c.code || s.final["error"] != c.err.Error() || s.final["exitCode"] != float64(127) || s.close != c.close ||
			(c.wantBytes != "" && s.raw.String() != c.wantBytes) || !reflect.DeepEqual(s.order, order) {
			t.Errorf("%v: output %q final %v close %v order %v", c.err, s.raw.String(), s.final, s.close, s.order)
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
	s := readSession(t, conn)
	if s.final["exitCode"] != float64(0) {
		t.Fatalf("final %v", s.final)
	}
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("the exec handler did not return")
	}
}

// --- cp ---

type putCall struct {
	ref  string
	req  agent.PutRequest
	data []byte
}

func recordingPut(calls chan<- putCall) func(ctx context.Context, ref string, req agent.PutRequest, data io.Reader) (int64, error) {
	return func(ctx context.Context, ref string, req agent.PutRequest, data io.Reader) (int64, error) {
		var b []byte
		var err error
		if data != nil {
			b, err = io.ReadAll(data)
		}
		calls <- putCall{ref, req, b}
		return int64(len(b)), err
	}
}

// TestCopyToFile sends what hypeman's SDK sends for a file: the start
// message, raw chunks, {"type":"end"}; the guest path goes to the agent
// unmodified (it confines it to the guest's root).
func TestCopyToFile(t *testing.T) {
	calls := make(chan putCall, 1)
	e := newGuestEnv(t, &fakeGuest{copyTo: recordingPut(calls)})
	payload := bytes.Repeat([]byte("0123456789"), 10000)
	conn := mustDial(t, e, "/instances/web/cp")
	send(t, conn, websocket.MessageText, `{"direction":"to","guest_path":"/tmp/../../etc/f","mode":420,"uid":5,"gid":6,"src_basename":"f"}`)
	for i := 0; i < len(payload); i += 32 << 10 {
		send(t, conn, websocket.MessageBinary, string(payload[i:min(i+32<<10, len(payload))]))
	}
	send(t, conn, websocket.MessageText, `{"type":"end"}`)
	s := readSession(t, conn)
	c := <-calls
	want := agent.PutRequest{Path: "/tmp/../../etc/f", Kind: agent.PutFile, Mode: 0o644, UID: 5, GID: 6}
	if c.ref != "idweb" || c.req != want || !bytes.Equal(c.data, payload) {
		t.Fatalf("agent got ref %q req %+v and %d bytes", c.ref, c.req, len(c.data))
	}
	res := map[string]any{"type": "result", "success": true, "bytes_written": float64(len(payload))}
	if len(s.texts) != 1 || !equalJSON(s.final, res) || s.close != websocket.StatusNormalClosure {
		t.Fatalf("final %v close %v", s.texts, s.close)
	}
}

func TestCopyToDirAndSymlink(t *testing.T) {
	calls := make(chan putCall, 1)
	e := newGuestEnv(t, &fakeGuest{copyTo: recordingPut(calls)})
	for _, c := range []struct {
		start string
		want  agent.PutRequest
	}{
		{`{"direction":"to","guest_path":"/d","is_dir":true,"mode":16877,"uid":0,"gid":0}`, // 0o40755: type bits dropped
			agent.PutRequest{Path: "/d", Kind: agent.PutDir, Mode: 0o755}},
		{`{"direction":"to","guest_path":"/d/l","link_target":"../x","mtime":1600000000}`,
			agent.PutRequest{Path: "/d/l", Kind: agent.PutSymlink, LinkTarget: "../x", Mtime: 1600000000}},
	} {
		conn := mustDial(t, e, "/instances/web/cp")
		send(t, conn, websocket.MessageText, c.start)
		send(t, conn, websocket.MessageText, `{"type":"end"}`)
		s := readSession(t, conn)
		got := <-calls
		if got.req != c.want || got.data != nil || s.final["success"] != true || s.close != websocket.StatusNormalClosure {
			t.Fatalf("%s: agent got %+v, final %v", c.start, got.req, s.final)
		}
	}
}

// TestCopyToFailureAfterEnd: when the guest fails mid-upload the rest is
// read and dropped, and the reason comes as the result the client reads
// after its end message.
func TestCopyToFailureAfterEnd(t *testing.T) {
	e := newGuestEnv(t, &fakeGuest{copyTo: func(ctx context.Context, ref string, req agent.PutRequest, data io.Reader) (int64, error) {
		buf := make([]byte, 10)
		io.ReadFull(data, buf)
		return 10, &agent.RemoteError{Op: agent.OpPut, Code: agent.CodeConflict, Message: "/etc: cannot write a file over a directory"}
	}})
	conn := mustDial(t, e, "/instances/web/cp")
	send(t, conn, websocket.MessageText, `{"direction":"to","guest_path":"/etc"}`)
	for i := 0; i < 50; i++ {
		send(t, conn, websocket.MessageBinary, string(bytes.Repeat([]byte("a"), 32<<10)))
	}
	send(t, conn, websocket.MessageText, `{"type":"end"}`)
	s := readSession(t, conn)
	if len(s.texts) != 1 || s.final["type"] != "result" || s.final["success"] != false || s.final["code"] != "conflict" ||
		!strings.Contains(s.final["error"].(string), "over a directory") || s.close != websocket.StatusNormalClosure {
		t.Fatalf("final %v close %v", s.texts, s.close)
	}
}

// fakeTree plays a read_tree: entries with their data.
func fakeTree(entries []agent.TreeEntry, data map[string]string, then error) func(context.Context, string, agent.TreeRequest, agent.TreeVisitor) error {
	return func(ctx context.Context, ref string, req agent.TreeRequest, visit agent.TreeVisitor) error {
		for _, e := range entries {
			if err := visit(e, strings.NewReader(data[e.Path])); err != nil {
				return err
			}
		}
		return then
	}
}

func TestCopyFrom(t *testing.T) {
	big := strings.Repeat("0123456789", 20000)
	var got agent.TreeRequest
	tree := fakeTree([]agent.TreeEntry{
		{Path: ".", IsDir: true, Mode: 0o750, Mtime: 1600000000, UID: 1000, GID: 1000},
		{Path: "a.txt", Mode: 0o644, Size: int64(len(big)), Mtime: 1600000001},
		{Path: "link", IsSymlink: true, LinkTarget: "a.txt", Mode: 0o777},
		{Path: "sub", IsDir: true, Mode: 0o755},
		{Path: "sub/empty", Mode: 0o600},
	}, map[string]string{"a.txt": big}, nil)
	e := newGuestEnv(t, &fakeGuest{copyFrom: func(ctx context.Context, ref string, req agent.TreeRequest, visit agent.TreeVisitor) error {
		got = req
		if req.Path == "/missing" {
			return &agent.RemoteError{Op: agent.OpReadTree, Code: agent.CodeNotFound, Message: "/missing: no such file or directory"}
		}
		return tree(ctx, ref, req, visit)
	}})
	conn := mustDial(t, e, "/instances/web/cp")
	// The CLI's stdout mode sends uid and gid (zero) too.
	send(t, conn, websocket.MessageText, `{"direction":"from","guest_path":"/srv/pkg","follow_links":true,"uid":0,"gid":0}`)
	s := readSession(t, conn)
	if got.Path != "/srv/pkg" || !got.FollowLinks {
		t.Fatalf("agent request %+v", got)
	}
	var order []string
	for _, o := range s.order {
		if o != "b" || len(order) == 0 || order[len(order)-1] != "b" {
			order = append(order, o)
		}
	}
	// header, [data], end per entry; only the last end is final.
	want := []string{"header", "end", "header", "b", "end", "header", "end", "header", "end", "header", "end"}
	if !reflect.DeepEqual(order, want) || s.raw.String() != big || s.close != websocket.StatusNormalClosure {
		t.Fatalf("order %v (%d bytes) close %v", order, s.raw.Len(), s.close)
	}
	finals := 0
	for i, m := range s.texts {
		if m["final"] == true {
			finals++
			if i != len(s.texts)-1 {
				t.Fatalf("final marker before the end: %v", s.texts)
			}
		}
	}
	h := map[string]any{"type": "header", "path": ".", "mode": float64(0o750), "is_dir": true, "is_symlink": false,
		"size": float64(0), "mtime": float64(1600000000), "uid": float64(1000), "gid": float64(1000)}
	if finals != 1 || !equalJSON(s.texts[0], h) || s.texts[4]["link_target"] != "a.txt" || s.texts[4]["is_symlink"] != true ||
		s.texts[2]["size"] != float64(len(big)) {
		t.Fatalf("messages %v", s.texts)
	}

	// A missing source: an error message (hypeman's shape plus our code).
	conn = mustDial(t, e, "/instances/web/cp")
	send(t, conn, websocket.MessageText, `{"direction":"from","guest_path":"/missing"}`)
	s = readSession(t, conn)
	if len(s.texts) != 1 || s.final["type"] != "error" || s.final["code"] != "not_found" || s.final["path"] != "/missing" ||
		!strings.Contains(s.final["message"].(string), "no such file") || s.raw.Len() != 0 || s.close != websocket.StatusNormalClosure {
		t.Fatalf("missing: %v close %v", s.texts, s.close)
	}

	// A failure after some entries: no final marker, an error instead.
	tree = fakeTree([]agent.TreeEntry{{Path: ".", IsDir: true}}, nil, &agent.RemoteError{Op: agent.OpReadTree, Message: "/srv/pkg: input/output error"})
	conn = mustDial(t, e, "/instances/web/cp")
	send(t, conn, websocket.MessageText, `{"direction":"from","guest_path":"/srv/pkg"}`)
	s = readSession(t, conn)
	if !reflect.DeepEqual(s.order, []string{"header", "error"}) || s.final["code"] != "internal" || s.close != websocket.StatusInternalError {
		t.Fatalf("late failure: %v close %v", s.texts, s.close)
	}
}

func TestCopyProtocolErrors(t *testing.T) {
	e := newGuestEnv(t, &fakeGuest{
		copyTo: func(ctx context.Context, ref string, req agent.PutRequest, data io.Reader) (int64, error) {
			if data != nil {
				if _, err := io.Copy(io.Discard, data); err != nil {
					return 0, err
				}
			}
			// Still writing when the client breaks the protocol after
			// its end message.
			<-ctx.Done()
			return 0, ctx.Err()
		},
		copyFrom: func(ctx context.Context, ref string, req agent.TreeRequest, visit agent.TreeVisitor) error {
			<-ctx.Done() // waits for the client's protocol error
			return ctx.Err()
		},
	})
	for _, c := range []struct {
		name   string
		msgs   []string
		inMsg  string
		result bool // a "to" session ends with a result, others with an error
	}{
		{"bad direction", []string{`t:{"direction":"sideways","guest_path":"/x"}`}, "direction", false},
		{"no guest_path", []string{`t:{"direction":"to"}`}, "guest_path", true},
		{"relative guest_path", []string{`t:{"direction":"from","guest_path":"x"}`}, "absolute", false},
		{"old path field", []string{`t:{"direction":"to","path":"/x"}`}, "unknown field", true},
		{"unknown field", []string{`t:{"direction":"to","guest_path":"/x","owner":"me"}`}, "unknown field", true},
		{"link with is_dir", []string{`t:{"direction":"to","guest_path":"/x","is_dir":true,"link_target":"y"}`}, "link_target", true},
		{"bad message during upload", []string{`t:{"direction":"to","guest_path":"/x"}`, `t:{"type":"fin"}`}, "want {\"type\":\"end\"}", true},
		{"data after end", []string{`t:{"direction":"to","guest_path":"/x"}`, `t:{"type":"end"}`, "b:x"}, "nothing may follow", true},
		{"data for a directory", []string{`t:{"direction":"to","guest_path":"/x","is_dir":true}`, "b:x"}, "takes no data", true},
		{"message during download", []string{`t:{"direction":"from","guest_path":"/x"}`, "b:x"}, "takes no messages", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn := mustDial(t, e, "/instances/web/cp")
			sendAll(t, conn, c.msgs)
			s := readSession(t, conn)
			msg, _ := s.final["message"].(string)
			typ := "error"
			if c.result {
				msg, _ = s.final["error"].(string)
				typ = "result"
			}
			if len(s.texts) != 1 || s.final["type"] != typ || s.final["code"] != "invalid_request" || !strings.Contains(msg, c.inMsg) ||
				s.close != websocket.StatusPolicyViolation {
				t.Fatalf("texts %v close %v", s.texts, s.close)
			}
		})
	}
}
