package api

// The exec and cp WebSockets.
//
// The generated strict server cannot express a protocol upgrade, so these
// two routes are plain chi handlers registered next to the generated
// router. They still sit behind the authorize middleware and the route
// table, and openapi.yaml documents them (GET, 101) with the protocol below.
// Everything that can be refused before the upgrade (bad reference, no
// such instance, wrong state, missing scope, not a WebSocket request) is
// answered as ordinary HTTP with the {code, message} body, so clients see
// the same errors as on every other route.
//
// Exec protocol, after the upgrade:
//
//  1. client → server, text: ExecStart JSON
//     {"command":[...], "tty":bool, "env":{}, "cwd":"", "user":"",
//     "timeout_seconds":N, "rows":R, "cols":C} (only command is required;
//     unknown fields are refused like in every request body).
//  2. client → server, binary: stdin bytes; an empty binary frame is stdin
//     EOF (a client without input sends one at once). Text: control JSON,
//     {"resize":{"rows":R,"cols":C}} or {"signal":"TERM"}.
//  3. server → client, binary: [stream][data] with stream 1 = stdout and
//     2 = stderr (always 1 with a TTY). One framing for both modes keeps
//     clients simple.
//  4. server → client, text, last: {"exit_code":N,"message":"...",
//     "timed_out":bool} when the command ran, or {"error":"...","code":"..."}
//     (the API's error codes) when it could not; then a close frame: 1000,
//     1008 when the client broke the protocol, 1011 on a server failure.
//
// A client that goes away kills the command (the exec context is
// cancelled). Stdin is a pipe with no buffer of its own: a client that
// sends more stdin than the command reads is slowed down (the guest
// agent's per-stream window is the only buffer), and control messages
// queued behind that stdin wait with it.
//
// Cp protocol: the client's first text frame is {"direction":"to"|"from",
// "path":"..."}. "to": binary frames carry a tar stream extracted under
// path in the guest, an empty binary frame ends it. "from": the server
// sends the tar stream of path as binary frames. The server ends with
// {"ok":true} or {"error":"...","code":"..."} and a close frame. Paths and
// tar entry names are passed to the guest agent unmodified: confinement
// under the destination is the agent's job (it sees the real filesystem,
// with its symlinks), not something to approximate here.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"

	"hypeman/internal/guest/agent"
	"hypeman/internal/instances"
)

const (
	// wsReadLimit bounds one client message (the start message, a stdin or
	// tar chunk). The CLI sends 32 KiB chunks.
	wsReadLimit = 1 << 20
	// wsStartTimeout bounds the wait for the first message.
	wsStartTimeout = 30 * time.Second
	// wsFinalTimeout bounds writing the last frame to a slow client.
	wsFinalTimeout = 5 * time.Second

	streamStdout byte = 1
	streamStderr byte = 2

	maxExecTimeoutSeconds = 7 * 24 * 3600
)

// execStart is the first message of an exec session (ExecStart in the spec).
type execStart struct {
	Command        []string          `json:"command"`
	TTY            bool              `json:"tty"`
	Env            map[string]string `json:"env"`
	Cwd            string            `json:"cwd"`
	User           string            `json:"user"`
	TimeoutSeconds int64             `json:"timeout_seconds"`
	Rows           uint16            `json:"rows"`
	Cols           uint16            `json:"cols"`
}

// execControl is a control message from the exec client.
type execControl struct {
	Resize *struct {
		Rows uint16 `json:"rows"`
		Cols uint16 `json:"cols"`
	} `json:"resize"`
	Signal string `json:"signal"`
}

// execExit is the last message of an exec that ran.
type execExit struct {
	ExitCode int    `json:"exit_code"`
	Message  string `json:"message"`
	TimedOut bool   `json:"timed_out"`
}

// copyStart is the first message of a cp session (CopyStart in the spec).
type copyStart struct {
	Direction string `json:"direction"`
	Path      string `json:"path"`
}

// streamResult ends a cp session ({"ok":true}) or any failed session.
type streamResult struct {
	OK    bool   `json:"ok,omitempty"`
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`
}

// protocolError is a client breaking the WebSocket protocol: it ends the
// session with invalid_request and close code 1008.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return e.msg }

func protocolErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// errClientGone: the client's side of the connection failed or closed.
var errClientGone = errors.New("client went away")

// wsPrecheck refuses, as plain HTTP, everything that can be refused before
// the upgrade, and returns the guest and the resolved instance ID.
func (s *server) wsPrecheck(w http.ResponseWriter, r *http.Request) (Guest, string, bool) {
	ref := chi.URLParam(r, "id")
	if ref == "" || len(ref) > 128 {
		s.writeError(w, r, newError(http.StatusBadRequest, CodeInvalidRequest, "invalid path parameter \"id\": want 1 to 128 characters"))
		return nil, "", false
	}
	if s.opts.Guest == nil {
		s.writeError(w, r, newError(http.StatusNotImplemented, CodeNotImplemented, "exec and cp need the guest agent, which this server does not provide"))
		return nil, "", false
	}
	in, err := s.opts.Instances.Get(r.Context(), ref)
	if err != nil {
		s.writeError(w, r, err)
		return nil, "", false
	}
	if allowed := instances.Allowed(in.State); !slices.Contains(allowed, instances.ActionExec) {
		s.writeError(w, r, &instances.TransitionError{Action: instances.ActionExec, State: in.State, Allowed: allowed})
		return nil, "", false
	}
	if !isWebSocketRequest(r) {
		s.writeError(w, r, newError(http.StatusBadRequest, CodeInvalidRequest,
			"this endpoint speaks WebSocket: send a GET with Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key"))
		return nil, "", false
	}
	// Browsers send Origin; refuse cross-origin upgrades (a page must not
	// drive a shell with the user's cookies or credentials). Non-browser
	// clients send none.
	if o := r.Header.Get("Origin"); o != "" {
		if u, err := url.Parse(o); err != nil || !strings.EqualFold(u.Host, r.Host) {
			s.writeError(w, r, newError(http.StatusForbidden, CodeForbidden, "cross-origin WebSocket requests are refused"))
			return nil, "", false
		}
	}
	return s.opts.Guest, in.ID, true
}

func isWebSocketRequest(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") &&
		headerHasToken(r.Header, "Upgrade", "websocket") &&
		r.Header.Get("Sec-WebSocket-Version") == "13" &&
		r.Header.Get("Sec-WebSocket-Key") != ""
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// accept upgrades the connection. On failure the library has answered.
func (s *server) accept(w http.ResponseWriter, r *http.Request) (*websocket.Conn, bool) {
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		s.log.Debug("websocket upgrade failed", "path", r.URL.Path, "err", err)
		return nil, false
	}
	conn.SetReadLimit(wsReadLimit)
	return conn, true
}

// readStart reads the first message into v: one JSON text frame, unknown
// fields refused.
func readStart(ctx context.Context, conn *websocket.Conn, v any) error {
	ctx, cancel := context.WithTimeout(ctx, wsStartTimeout)
	defer cancel()
	typ, data, err := conn.Read(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return protocolErrorf("no start message within %s", wsStartTimeout)
		}
		return fmt.Errorf("%w: %v", errClientGone, err)
	}
	if typ != websocket.MessageText {
		return protocolErrorf("the first message must be a JSON text frame")
	}
	return decodeStrict(data, v, "start message")
}

func decodeStrict(data []byte, v any, what string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return protocolErrorf("invalid %s: %v", what, err)
	}
	if dec.More() {
		return protocolErrorf("invalid %s: trailing data after the JSON object", what)
	}
	return nil
}

// finish ends a session with a final text frame and a close frame. An
// err that is errClientGone ends it silently: nobody is listening.
func (s *server) finish(ctx context.Context, conn *websocket.Conn, r *http.Request, final any, err error) {
	if errors.Is(err, errClientGone) {
		s.log.Debug("websocket client went away", "path", r.URL.Path, "err", err)
		return
	}
	code := websocket.StatusNormalClosure
	if err != nil {
		var pe *protocolError
		res := streamResult{}
		if errors.As(err, &pe) {
			res.Error, res.Code = pe.msg, CodeInvalidRequest
			code = websocket.StatusPolicyViolation
		} else {
			status, c, msg := s.classify(err)
			res.Error, res.Code = msg, c
			if status >= 500 {
				code = websocket.StatusInternalError
			}
		}
		if code == websocket.StatusInternalError {
			s.log.Error("websocket session failed", "path", r.URL.Path, "err", err)
		} else {
			s.log.Debug("websocket session refused", "path", r.URL.Path, "err", err)
		}
		final = res
	}
	b, merr := json.Marshal(final)
	if merr != nil {
		b = []byte(`{"error":"internal error","code":"internal"}`)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wsFinalTimeout)
	defer cancel()
	if werr := conn.Write(wctx, websocket.MessageText, b); werr != nil {
		return
	}
	_ = conn.Close(code, "")
}

// wsWriter sends each Write as one binary message, prefixed by a stream
// byte when prefix is non-zero.
type wsWriter struct {
	ctx    context.Context
	conn   *websocket.Conn
	prefix byte
}

func (w wsWriter) Write(p []byte) (int, error) {
	msg := p
	if w.prefix != 0 {
		msg = make([]byte, 1+len(p))
		msg[0] = w.prefix
		copy(msg[1:], p)
	}
	if len(msg) == 0 {
		return 0, nil // an empty frame would mean something else
	}
	if err := w.conn.Write(w.ctx, websocket.MessageBinary, msg); err != nil {
		return 0, fmt.Errorf("%w: %v", errClientGone, err)
	}
	return len(p), nil
}

// --- exec ---

func (s *server) serveExec(w http.ResponseWriter, r *http.Request) {
	g, id, ok := s.wsPrecheck(w, r)
	if !ok {
		return
	}
	conn, ok := s.accept(w, r)
	if !ok {
		return
	}
	defer conn.CloseNow()
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)

	var start execStart
	if err := readStart(ctx, conn, &start); err != nil {
		s.finish(ctx, conn, r, nil, err)
		return
	}
	req, err := start.request()
	if err != nil {
		s.finish(ctx, conn, r, nil, err)
		return
	}

	stdinR, stdinW := io.Pipe()
	resize := make(chan agent.WindowSize, 4)
	signals := make(chan syscall.Signal, 4)
	inputDone := make(chan struct{})
	go func() {
		defer close(inputDone)
		cancel(execInput(ctx, conn, stdinW, resize, signals))
	}()

	res, err := g.Exec(ctx, id, req, agent.ExecIO{
		Stdin:  stdinR,
		Stdout: wsWriter{ctx: ctx, conn: conn, prefix: streamStdout},
		Stderr: wsWriter{ctx: ctx, conn: conn, prefix: streamStderr},
		Resize: resize, Signals: signals,
	})
	_ = stdinR.CloseWithError(io.ErrClosedPipe) // unblocks the agent's stdin copy and our input loop
	if cause := context.Cause(ctx); cause != nil {
		err = cause // the client went away or broke the protocol
	}
	if err != nil {
		s.finish(ctx, conn, r, nil, err)
	} else {
		s.finish(ctx, conn, r, execExit{ExitCode: res.ExitCode, Message: res.Message, TimedOut: res.TimedOut}, nil)
	}
	// Release the input loop: it may be blocked on the closed connection
	// or handing a resize or signal to an exec that no longer listens.
	cancel(nil)
	conn.CloseNow()
	<-inputDone
}

// request validates the start message into the agent's request.
func (st execStart) request() (agent.ExecRequest, error) {
	switch {
	case len(st.Command) == 0 || st.Command[0] == "":
		return agent.ExecRequest{}, protocolErrorf("invalid start message: command is required")
	case len(st.Command) > 1024:
		return agent.ExecRequest{}, protocolErrorf("invalid start message: command has more than 1024 words")
	case st.TimeoutSeconds < 0 || st.TimeoutSeconds > maxExecTimeoutSeconds:
		return agent.ExecRequest{}, protocolErrorf("invalid start message: timeout_seconds must be between 0 and %d", maxExecTimeoutSeconds)
	case len(st.Cwd) > 4096 || strings.ContainsRune(st.Cwd, 0):
		return agent.ExecRequest{}, protocolErrorf("invalid start message: bad cwd")
	case len(st.User) > 256 || strings.ContainsRune(st.User, 0):
		return agent.ExecRequest{}, protocolErrorf("invalid start message: bad user")
	case len(st.Env) > 1024:
		return agent.ExecRequest{}, protocolErrorf("invalid start message: more than 1024 env entries")
	}
	for _, a := range st.Command {
		if len(a) > 65536 || strings.ContainsRune(a, 0) {
			return agent.ExecRequest{}, protocolErrorf("invalid start message: a command word is longer than 64 KiB or contains a NUL byte")
		}
	}
	for k, v := range st.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || len(v) > 65536 || strings.ContainsRune(v, 0) {
			return agent.ExecRequest{}, protocolErrorf("invalid start message: bad env entry %q", k)
		}
	}
	return agent.ExecRequest{
		Argv: st.Command, Env: st.Env, Cwd: st.Cwd, User: st.User, TTY: st.TTY,
		Rows: st.Rows, Cols: st.Cols, Timeout: time.Duration(st.TimeoutSeconds) * time.Second,
	}, nil
}

// execInput reads client messages until the connection ends and returns
// why: errClientGone, a protocol error, or nil when ctx ended first.
func execInput(ctx context.Context, conn *websocket.Conn, stdin *io.PipeWriter, resize chan<- agent.WindowSize, signals chan<- syscall.Signal) error {
	stdinOpen := true
	fail := func(err error) error {
		_ = stdin.CloseWithError(err)
		return err
	}
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fail(fmt.Errorf("%w: %v", errClientGone, err))
		}
		if typ == websocket.MessageBinary {
			switch {
			case len(data) == 0 && stdinOpen:
				stdinOpen = false
				_ = stdin.Close()
			case len(data) == 0:
			case !stdinOpen:
				return fail(protocolErrorf("stdin data after the end of stdin"))
			default:
				// An error means the command no longer takes input (it
				// ended, or the pipe was closed): drop the data.
				_, _ = stdin.Write(data)
			}
			continue
		}
		var c execControl
		if err := decodeStrict(data, &c, "control message"); err != nil {
			return fail(err)
		}
		if c.Resize == nil && c.Signal == "" {
			return fail(protocolErrorf("invalid control message: want resize or signal"))
		}
		if c.Resize != nil {
			select {
			case resize <- agent.WindowSize{Rows: c.Resize.Rows, Cols: c.Resize.Cols}:
			case <-ctx.Done():
				return nil
			}
		}
		if c.Signal != "" {
			sig, ok := parseSignal(c.Signal)
			if !ok {
				return fail(protocolErrorf("invalid control message: unknown signal %q (want HUP, INT, QUIT, KILL, USR1, USR2, TERM, ALRM, CONT, STOP, TSTP or WINCH)", c.Signal))
			}
			select {
			case signals <- sig:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// parseSignal maps "TERM" or "SIGTERM" (any case) to the signal.
func parseSignal(name string) (syscall.Signal, bool) {
	switch strings.TrimPrefix(strings.ToUpper(name), "SIG") {
	case "HUP":
		return syscall.SIGHUP, true
	case "INT":
		return syscall.SIGINT, true
	case "QUIT":
		return syscall.SIGQUIT, true
	case "KILL":
		return syscall.SIGKILL, true
	case "USR1":
		return syscall.SIGUSR1, true
	case "USR2":
		return syscall.SIGUSR2, true
	case "TERM":
		return syscall.SIGTERM, true
	case "ALRM":
		return syscall.SIGALRM, true
	case "CONT":
		return syscall.SIGCONT, true
	case "STOP":
		return syscall.SIGSTOP, true
	case "TSTP":
		return syscall.SIGTSTP, true
	case "WINCH":
		return syscall.SIGWINCH, true
	}
	return 0, false
}

// --- cp ---

func (s *server) serveCopy(w http.ResponseWriter, r *http.Request) {
	g, id, ok := s.wsPrecheck(w, r)
	if !ok {
		return
	}
	conn, ok := s.accept(w, r)
	if !ok {
		return
	}
	defer conn.CloseNow()
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)

	var start copyStart
	if err := readStart(ctx, conn, &start); err != nil {
		s.finish(ctx, conn, r, nil, err)
		return
	}
	switch {
	case start.Direction != "to" && start.Direction != "from":
		s.finish(ctx, conn, r, nil, protocolErrorf(`invalid start message: direction must be "to" or "from"`))
		return
	case start.Path == "" || len(start.Path) > 4096 || strings.ContainsRune(start.Path, 0):
		s.finish(ctx, conn, r, nil, protocolErrorf("invalid start message: path must be 1 to 4096 bytes without NUL"))
		return
	}

	inputDone := make(chan struct{})
	var err error
	if start.Direction == "to" {
		pr, pw := io.Pipe()
		go func() {
			defer close(inputDone)
			cancel(copyInput(ctx, conn, pw))
		}()
		err = g.CopyTo(ctx, id, start.Path, pr)
		_ = pr.CloseWithError(io.ErrClosedPipe)
	} else {
		go func() {
			defer close(inputDone)
			cancel(copyInput(ctx, conn, nil))
		}()
		err = g.CopyFrom(ctx, id, start.Path, wsWriter{ctx: ctx, conn: conn})
	}
	if cause := context.Cause(ctx); cause != nil {
		err = cause
	}
	if err != nil {
		s.finish(ctx, conn, r, nil, err)
	} else {
		s.finish(ctx, conn, r, streamResult{OK: true}, nil)
	}
	cancel(nil)
	conn.CloseNow()
	<-inputDone
}

// copyInput feeds the client's tar stream into pw ("to"), or, with a nil
// pw ("from"), only watches for the client going away: a "from" client
// sends nothing.
func copyInput(ctx context.Context, conn *websocket.Conn, pw *io.PipeWriter) error {
	open := pw != nil
	fail := func(err error) error {
		if pw != nil {
			_ = pw.CloseWithError(err)
		}
		return err
	}
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fail(fmt.Errorf("%w: %v", errClientGone, err))
		}
		switch {
		case pw == nil:
			return fail(protocolErrorf(`a "from" copy takes no messages after the start message`))
		case typ != websocket.MessageBinary:
			return fail(protocolErrorf("only binary frames may follow the start message of a copy"))
		case !open:
			return fail(protocolErrorf("data after the end of the tar stream"))
		case len(data) == 0:
			open = false
			_ = pw.Close()
		default:
			// An error means the extraction already ended (it failed, and
			// says why): drop the rest.
			_, _ = pw.Write(data)
		}
	}
}
