package api

// The exec and cp WebSockets, in the framing hypeman's own CLI and SDK speak
// (so they work unmodified against this server), plus a few additive fields
// our CLI uses.
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
// Exec, after the upgrade:
//
//  1. client → server, text: ExecStart {"command":[...], "tty":bool,
//     "env":{}, "cwd":"", "timeout":<s>, "rows":R, "cols":C,
//     "wait_for_agent":<s>} plus our "user" and "separate_stderr". A
//     missing or empty command runs /bin/sh; unknown fields are refused.
//  2. client → server, binary: stdin. Text: {"resize":{"rows":R,"cols":C}}
//     or {"signal":"TERM"}. An empty binary frame is stdin EOF (our
//     extension: hypeman's CLI never ends stdin, it just stops sending).
//  3. server → client, binary: output bytes, stdout and stderr as they
//     come. With separate_stderr each frame starts with a stream byte,
//     1 = stdout, 2 = stderr.
//  4. server → client, text, last: {"exitCode":N, "message":"...",
//     "timed_out":bool} (a timeout kills the command: exitCode 124). When
//     the command could not run, a binary "Error: <msg>\r\n" frame comes
//     first (not with separate_stderr) and the last message is
//     {"exitCode":127, "error":"...", "code":"..."} (the API's error codes). Then a close frame: 1000, 1008
//     when the client broke the protocol, 1011 on a server failure.
//
// A client that goes away kills the command (the exec context is
// cancelled). Stdin is a pipe with no buffer of its own: a client that
// sends more stdin than the command reads is slowed down (the guest
// agent's per-stream window is the only buffer), and control messages
// queued behind that stdin wait with it.
//
// Cp: one WebSocket per file, directory or symlink to the guest, one per
// tree from it. The first text frame is CopyStart {"direction":"to"|"from",
// "guest_path":"/abs", "is_dir", "mode", "follow_links", "uid", "gid"}
// (hypeman's "src_basename" is accepted and unused; "mtime" and
// "link_target" are our additions).
//   - "to": a file's bytes as binary frames, then {"type":"end"} (a
//     directory or symlink sends the end at once); the server answers
//     {"type":"result","success":bool,"bytes_written":N,"error":"...",
//     "code":"..."}. When writing fails the rest of the upload is read and
//     dropped, so the client, which reads only after its end, gets the
//     reason.
//   - "from": per entry a text {"type":"header", ...} (path relative to the
//     source: "." is the source itself), a regular file's bytes as binary
//     frames, then {"type":"end","final":bool}; the last entry's end is
//     final. A failure is {"type":"error","message","path","code"}.
//
// Guest paths are handed to the agent unmodified: it resolves them inside
// the guest's root (chroot semantics, an os.Root for every access), which
// is where confinement can be enforced with the real filesystem in view.

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
	// file chunk). Clients send 32 KiB chunks.
	wsReadLimit = 1 << 20
	// wsStartTimeout bounds the wait for the first message.
	wsStartTimeout = 30 * time.Second
	// wsFinalTimeout bounds writing the last frames to a slow client.
	wsFinalTimeout = 5 * time.Second
	// agentRetryInterval paces exec retries while wait_for_agent runs.
	agentRetryInterval = 250 * time.Millisecond

	streamStdout byte = 1
	streamStderr byte = 2

	maxExecTimeoutSeconds = 7 * 24 * 3600
	maxWaitForAgent       = 3600
	// execExitTimeout is the exit code of a command killed by its timeout
	// (GNU timeout's, as hypeman reports it).
	execExitTimeout = 124
	// execExitFailed is the exit code reported when the command could not
	// be run at all.
	execExitFailed = 127
)

// execStart is the first message of an exec session (ExecStart in the spec).
type execStart struct {
	Command        []string          `json:"command"`
	TTY            bool              `json:"tty"`
	Env            map[string]string `json:"env"`
	Cwd            string            `json:"cwd"`
	Timeout        int64             `json:"timeout"`
	Rows           uint16            `json:"rows"`
	Cols           uint16            `json:"cols"`
	WaitForAgent   int64             `json:"wait_for_agent"`
	User           string            `json:"user"`
	SeparateStderr bool              `json:"separate_stderr"`
}

// execControl is a control message from the exec client.
type execControl struct {
	Resize *struct {
		Rows uint16 `json:"rows"`
		Cols uint16 `json:"cols"`
	} `json:"resize"`
	Signal string `json:"signal"`
}

// execExit is the last message of an exec (ExecExit in the spec).
type execExit struct {
	ExitCode int    `json:"exitCode"`
	Message  string `json:"message,omitempty"`
	TimedOut bool   `json:"timed_out"`
	Error    string `json:"error,omitempty"`
	Code     string `json:"code,omitempty"`
}

// copyStart is the first message of a cp session (CopyStart in the spec).
type copyStart struct {
	Direction   string `json:"direction"`
	GuestPath   string `json:"guest_path"`
	IsDir       bool   `json:"is_dir"`
	Mode        uint32 `json:"mode"`
	FollowLinks bool   `json:"follow_links"`
	UID         uint32 `json:"uid"`
	GID         uint32 `json:"gid"`
	SrcBasename string `json:"src_basename"`
	Mtime       int64  `json:"mtime"`
	LinkTarget  string `json:"link_target"`
}

// copyHeader, copyEnd, copyResult and copyError are the server's cp
// messages (CopyFileHeader, CopyEnd, CopyResult, CopyError in the spec).
type copyHeader struct {
	Type       string `json:"type"` // header
	Path       string `json:"path"`
	Mode       uint32 `json:"mode"`
	IsDir      bool   `json:"is_dir"`
	IsSymlink  bool   `json:"is_symlink"`
	LinkTarget string `json:"link_target,omitempty"`
	Size       int64  `json:"size"`
	Mtime      int64  `json:"mtime"`
	UID        uint32 `json:"uid"`
	GID        uint32 `json:"gid"`
}

type copyEnd struct {
	Type  string `json:"type"` // end
	Final bool   `json:"final"`
}

type copyResult struct {
	Type         string `json:"type"` // result
	Success      bool   `json:"success"`
	BytesWritten int64  `json:"bytes_written"`
	Error        string `json:"error,omitempty"`
	Code         string `json:"code,omitempty"`
}

type copyError struct {
	Type    string `json:"type"` // error
	Message string `json:"message"`
	Path    string `json:"path,omitempty"`
	Code    string `json:"code"`
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

// failure classifies the error that ends a session: its code and message
// for the last message and the close status. gone is true when the client
// went away (nobody to tell).
func (s *server) failure(r *http.Request, err error) (code, msg string, status websocket.StatusCode, gone bool) {
	if errors.Is(err, errClientGone) {
		s.log.Debug("websocket client went away", "path", r.URL.Path, "err", err)
		return "", "", 0, true
	}
	var pe *protocolError
	if errors.As(err, &pe) {
		s.log.Debug("websocket session refused", "path", r.URL.Path, "err", err)
		return CodeInvalidRequest, pe.msg, websocket.StatusPolicyViolation, false
	}
	st, code, msg := s.classify(err)
	if st >= 500 {
		s.log.Error("websocket session failed", "path", r.URL.Path, "err", err)
		return code, msg, websocket.StatusInternalError, false
	}
	s.log.Debug("websocket session refused", "path", r.URL.Path, "err", err)
	return code, msg, websocket.StatusNormalClosure, false
}

// closeWith sends the last messages ([]byte as binary, anything else as
// JSON text) and the close frame, within wsFinalTimeout.
func closeWith(ctx context.Context, conn *websocket.Conn, status websocket.StatusCode, msgs ...any) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wsFinalTimeout)
	defer cancel()
	for _, m := range msgs {
		if writeMsg(wctx, conn, m) != nil {
			return
		}
	}
	_ = conn.Close(status, "")
}

// writeMsg sends b ([]byte) as a binary message or v as a JSON text one;
// a failure is errClientGone.
func writeMsg(ctx context.Context, conn *websocket.Conn, v any) error {
	typ, b := websocket.MessageBinary, []byte(nil)
	if raw, ok := v.([]byte); ok {
		b = raw
	} else {
		var err error
		if b, err = json.Marshal(v); err != nil {
			return err
		}
		typ = websocket.MessageText
	}
	if err := conn.Write(ctx, typ, b); err != nil {
		return fmt.Errorf("%w: %v", errClientGone, err)
	}
	return nil
}

// wsWriter sends each Write as one binary message, prefixed by a stream
// byte when prefix is non-zero.
type wsWriter struct {
	ctx    context.Context
	conn   *websocket.Conn
	prefix byte
}

func (w wsWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil // an empty frame would mean something else
	}
	msg := p
	if w.prefix != 0 {
		msg = make([]byte, 1+len(p))
		msg[0] = w.prefix
		copy(msg[1:], p)
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
	err := readStart(ctx, conn, &start)
	var req agent.ExecRequest
	if err == nil {
		req, err = start.request()
	}
	if err != nil {
		s.execFailed(ctx, conn, r, start.SeparateStderr, err)
		return
	}

	stdinR, stdinW := io.Pipe()
	resize := make(chan agent.WindowSize, 4)
	signals := make(chan syscall.Signal, 4)
	// Stopping releases the input loop: it may be blocked on the
	// connection or handing a resize or signal to an exec that no longer
	// listens.
	stop := watchInput(conn, cancel, func() error { return execInput(ctx, conn, stdinW, resize, signals) })
	defer stop()

	stdio := agent.ExecIO{
		Stdin:  stdinR,
		Stdout: wsWriter{ctx: ctx, conn: conn},
		Stderr: wsWriter{ctx: ctx, conn: conn},
		Resize: resize, Signals: signals,
	}
	if start.SeparateStderr {
		stdio.Stdout = wsWriter{ctx: ctx, conn: conn, prefix: streamStdout}
		stdio.Stderr = wsWriter{ctx: ctx, conn: conn, prefix: streamStderr}
	}
	res, err := execWaitingForAgent(ctx, g, id, req, stdio, time.Duration(start.WaitForAgent)*time.Second)
	_ = stdinR.CloseWithError(io.ErrClosedPipe) // unblocks the agent's stdin copy and our input loop
	if cause := context.Cause(ctx); cause != nil {
		err = cause // the client went away or broke the protocol
	}
	if err != nil {
		s.execFailed(ctx, conn, r, start.SeparateStderr, err)
	} else {
		exit := execExit{ExitCode: res.ExitCode, Message: res.Message, TimedOut: res.TimedOut}
		if res.TimedOut {
			exit.ExitCode = execExitTimeout
		}
		closeWith(ctx, conn, websocket.StatusNormalClosure, exit)
	}
}

// watchInput runs a session's input loop in its own goroutine; what the
// loop returns (why the client's side ended: errClientGone, a protocol
// error) cancels the session's context. stop ends the session and waits
// for the loop.
func watchInput(conn *websocket.Conn, cancel context.CancelCauseFunc, loop func() error) (stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		cancel(loop())
	}()
	return func() {
		cancel(nil)
		conn.CloseNow()
		<-done
	}
}

// execWaitingForAgent runs the exec, retrying for up to wait while the
// guest agent is unavailable (a VM that has just booted). The manager
// reports that before touching stdio, so a retry starts clean.
func execWaitingForAgent(ctx context.Context, g Guest, id string, req agent.ExecRequest, stdio agent.ExecIO, wait time.Duration) (agent.ExecResult, error) {
	deadline := time.Now().Add(wait)
	for {
		res, err := g.Exec(ctx, id, req, stdio)
		if err == nil || !errors.Is(err, instances.ErrAgentUnavailable) || time.Now().Add(agentRetryInterval).After(deadline) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return res, err
		case <-time.After(agentRetryInterval):
		}
	}
}

// execFailed ends an exec that could not run the way hypeman's server
// does (an "Error: ..." output frame, exit code 127), with our error and
// code fields added to the last message. A separate_stderr client reads
// those fields, so it does not get the frame (it would print the error
// twice).
func (s *server) execFailed(ctx context.Context, conn *websocket.Conn, r *http.Request, separate bool, err error) {
	code, msg, status, gone := s.failure(r, err)
	if gone {
		return
	}
	exit := execExit{ExitCode: execExitFailed, Error: msg, Code: code}
	if separate {
		closeWith(ctx, conn, status, exit)
		return
	}
	closeWith(ctx, conn, status, []byte("Error: "+msg+"\r\n"), exit)
}

// request validates the start message into the agent's request.
func (st execStart) request() (agent.ExecRequest, error) {
	if len(st.Command) == 0 {
		st.Command = []string{"/bin/sh"}
	}
	switch {
	case st.Command[0] == "":
		return agent.ExecRequest{}, protocolErrorf("invalid start message: command[0] is empty (leave command out to run /bin/sh)")
	case len(st.Command) > 1024:
		return agent.ExecRequest{}, protocolErrorf("invalid start message: command has more than 1024 words")
	case st.Timeout < 0 || st.Timeout > maxExecTimeoutSeconds:
		return agent.ExecRequest{}, protocolErrorf("invalid start message: timeout must be between 0 and %d seconds", maxExecTimeoutSeconds)
	case st.WaitForAgent < 0 || st.WaitForAgent > maxWaitForAgent:
		return agent.ExecRequest{}, protocolErrorf("invalid start message: wait_for_agent must be between 0 and %d seconds", maxWaitForAgent)
	case len(st.Cwd) > 4096 || strings.ContainsRune(st.Cwd, 0):
		return agent.ExecRequest{}, protocolErrorf("invalid start message: cwd must be at most 4096 bytes without NUL")
	case len(st.User) > 256 || strings.ContainsRune(st.User, 0):
		return agent.ExecRequest{}, protocolErrorf("invalid start message: user must be at most 256 bytes without NUL")
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
			return agent.ExecRequest{}, protocolErrorf("invalid start message: bad env entry %q (names are non-empty without = or NUL, values at most 64 KiB without NUL)", k)
		}
	}
	return agent.ExecRequest{
		Argv: st.Command, Env: st.Env, Cwd: st.Cwd, User: st.User, TTY: st.TTY,
		Rows: st.Rows, Cols: st.Cols, Timeout: time.Duration(st.Timeout) * time.Second,
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
	err := readStart(ctx, conn, &start)
	if err == nil {
		err = start.validate()
	}
	if err != nil {
		if start.Direction == "to" {
			s.copyToFailed(ctx, conn, r, err)
		} else {
			s.copyFromFailed(ctx, conn, r, start.GuestPath, err)
		}
		return
	}
	if start.Direction == "to" {
		s.copyTo(ctx, cancel, conn, r, g, id, start)
	} else {
		s.copyFrom(ctx, cancel, conn, r, g, id, start)
	}
}

func (st copyStart) validate() error {
	switch {
	case st.Direction != "to" && st.Direction != "from":
		return protocolErrorf(`invalid start message: direction must be "to" or "from"`)
	case st.GuestPath == "" || st.GuestPath[0] != '/' || len(st.GuestPath) > 4096 || strings.ContainsRune(st.GuestPath, 0):
		return protocolErrorf("invalid start message: guest_path must be an absolute path of at most 4096 bytes without NUL")
	case len(st.SrcBasename) > 4096:
		return protocolErrorf("invalid start message: src_basename is longer than 4096 bytes")
	case st.Direction == "from":
		return nil // the "to" fields are ignored
	case st.LinkTarget != "" && (st.IsDir || len(st.LinkTarget) > 4096 || strings.ContainsRune(st.LinkTarget, 0)):
		return protocolErrorf("invalid start message: link_target must be at most 4096 bytes without NUL, and not with is_dir")
	}
	return nil
}

// putRequest is the agent request for a "to" copy. Mode bits above 0o7777
// (a file type some tar writers leave in) are dropped.
func (st copyStart) putRequest() agent.PutRequest {
	req := agent.PutRequest{
		Path: st.GuestPath, Kind: agent.PutFile, Mode: st.Mode & 0o7777,
		UID: st.UID, GID: st.GID, Mtime: st.Mtime,
	}
	switch {
	case st.IsDir:
		req.Kind = agent.PutDir
	case st.LinkTarget != "":
		req.Kind, req.LinkTarget = agent.PutSymlink, st.LinkTarget
	}
	return req
}

func (s *server) copyTo(ctx context.Context, cancel context.CancelCauseFunc, conn *websocket.Conn, r *http.Request, g Guest, id string, start copyStart) {
	req := start.putRequest()
	var pr *io.PipeReader
	var pw *io.PipeWriter
	if req.Kind == agent.PutFile {
		pr, pw = io.Pipe()
	}
	ended := make(chan struct{}) // closed at the client's end message
	stop := watchInput(conn, cancel, func() error { return copyInput(ctx, conn, pw, ended) })
	defer stop()

	var (
		n   int64
		err error
	)
	if pr != nil {
		n, err = g.CopyTo(ctx, id, req, pr)
		_ = pr.CloseWithError(io.ErrClosedPipe) // the input loop drops the rest
	} else {
		// A directory or symlink is made once the client has ended.
		select {
		case <-ended:
			n, err = g.CopyTo(ctx, id, req, nil)
		case <-ctx.Done():
		}
	}
	// The client reads the result only after its end message: wait for it
	// (or for the connection to fail) so that it gets the reason.
	select {
	case <-ended:
	case <-ctx.Done():
	}
	if cause := context.Cause(ctx); cause != nil {
		err = cause
	}
	if err != nil {
		s.copyToFailed(ctx, conn, r, err)
		return
	}
	closeWith(ctx, conn, websocket.StatusNormalClosure, copyResult{Type: "result", Success: true, BytesWritten: n})
}

func (s *server) copyToFailed(ctx context.Context, conn *websocket.Conn, r *http.Request, err error) {
	code, msg, status, gone := s.failure(r, err)
	if !gone {
		closeWith(ctx, conn, status, copyResult{Type: "result", Error: msg, Code: code})
	}
}

func (s *server) copyFrom(ctx context.Context, cancel context.CancelCauseFunc, conn *websocket.Conn, r *http.Request, g Guest, id string, start copyStart) {
	stop := watchInput(conn, cancel, func() error { return copyInput(ctx, conn, nil, nil) })
	defer stop()

	pending := false // an entry was sent and its end marker is owed
	buf := make([]byte, 32<<10)
	err := g.CopyFrom(ctx, id, agent.TreeRequest{Path: start.GuestPath, FollowLinks: start.FollowLinks},
		func(e agent.TreeEntry, data io.Reader) error {
			if pending {
				if err := writeMsg(ctx, conn, copyEnd{Type: "end"}); err != nil {
					return err
				}
			}
			h := copyHeader{Type: "header", Path: e.Path, Mode: e.Mode, IsDir: e.IsDir, IsSymlink: e.IsSymlink,
				LinkTarget: e.LinkTarget, Size: e.Size, Mtime: e.Mtime, UID: e.UID, GID: e.GID}
			if err := writeMsg(ctx, conn, h); err != nil {
				return err
			}
			pending = true
			if !e.Regular() {
				return nil
			}
			_, err := io.CopyBuffer(wsWriter{ctx: ctx, conn: conn}, data, buf)
			return err
		})
	if cause := context.Cause(ctx); cause != nil {
		err = cause
	}
	if err == nil && !pending {
		err = errors.New("the guest sent no entry") // cannot happen: the source is one
	}
	if err != nil {
		s.copyFromFailed(ctx, conn, r, start.GuestPath, err)
		return
	}
	closeWith(ctx, conn, websocket.StatusNormalClosure, copyEnd{Type: "end", Final: true})
}

func (s *server) copyFromFailed(ctx context.Context, conn *websocket.Conn, r *http.Request, guestPath string, err error) {
	code, msg, status, gone := s.failure(r, err)
	if !gone {
		closeWith(ctx, conn, status, copyError{Type: "error", Message: msg, Path: guestPath, Code: code})
	}
}

// copyInput reads the client's messages after the start message. For a
// file upload (pw set) binary frames are its bytes, written to pw until
// the copy stops taking them (then dropped); {"type":"end"} closes pw and
// ended. Without pw a binary frame is a protocol error, and with a nil
// ended (a download) so is any message. It returns why the connection
// ended: errClientGone, a protocol error, or nil when ctx ended first.
func copyInput(ctx context.Context, conn *websocket.Conn, pw *io.PipeWriter, ended chan<- struct{}) error {
	fail := func(err error) error {
		if pw != nil {
			_ = pw.CloseWithError(err)
		}
		return err
	}
	done := false
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fail(fmt.Errorf("%w: %v", errClientGone, err))
		}
		switch {
		case ended == nil:
			return fail(protocolErrorf(`a "from" copy takes no messages after the start message`))
		case done:
			return fail(protocolErrorf(`nothing may follow {"type":"end"}`))
		case typ == websocket.MessageBinary && pw == nil:
			return fail(protocolErrorf("a directory or symlink copy takes no data: send {\"type\":\"end\"}"))
		case typ == websocket.MessageBinary:
			_, _ = pw.Write(data) // an error: the copy ended (and says why)
			continue
		}
		var m struct {
			Type string `json:"type"`
		}
		if err := decodeStrict(data, &m, "message"); err != nil {
			return fail(err)
		}
		if m.Type != "end" {
			return fail(protocolErrorf(`invalid message: want {"type":"end"}, got type %q`, m.Type))
		}
		done = true
		if pw != nil {
			_ = pw.Close()
		}
		close(ended)
	}
}
