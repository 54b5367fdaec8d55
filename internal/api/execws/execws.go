// Package execws is the client side of hypemand's instance WebSockets
// (GET /instances/{id}/exec and /cp): opening them with the API's auth, and
// the whole exec protocol — a client.ExecStart text message, binary frames
// carrying a stream byte (with separate_stderr), an empty binary frame for
// end of input, {"resize":{rows,cols}} text messages, and a final
// client.ExecExit text message. The generated client does not cover
// WebSockets; the hypeman CLI (`hypeman exec`, `hypeman cp`) and
// hypeman-kubelet (`kubectl exec`) both speak them, so the framing lives
// once, here, and terminal handling stays with each caller.
package execws

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/coder/websocket"

	"hypeman/internal/api/client"
)

// ReadLimit bounds one server message (output chunks are at most 32 KiB).
const ReadLimit = 4 << 20

// Output stream bytes of the exec protocol (first byte of each binary
// message from the server when separate_stderr is set).
const (
	StreamStdout byte = 1
	StreamStderr byte = 2
)

// Dialer opens the WebSockets of one hypemand.
type Dialer struct {
	// BaseURL is the API's base URL (http or https, optional path prefix).
	BaseURL string
	// Token is sent as a Bearer token when not empty.
	Token string
	// UserAgent is sent when not empty.
	UserAgent string
	// HTTPClient makes the upgrade request (nil: http.DefaultClient).
	HTTPClient *http.Client
}

// RefusedError is an ordinary HTTP answer to the upgrade request: the API
// refused it (unknown instance, wrong state, auth) with its {code, message}
// body.
type RefusedError struct {
	Status int
	Body   []byte
}

func (e *RefusedError) Error() string {
	var b struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(e.Body, &b) == nil && b.Message != "" {
		return fmt.Sprintf("%s (%d %s)", b.Message, e.Status, b.Code)
	}
	return fmt.Sprintf("server answered %d %s", e.Status, http.StatusText(e.Status))
}

// Open opens the instance's WebSocket endpoint ("exec" or "cp"). A refusal
// before the upgrade is a *RefusedError; other errors are transport
// failures.
func (d Dialer) Open(ctx context.Context, instance, endpoint string) (*websocket.Conn, error) {
	u, err := url.Parse(d.BaseURL)
	if err != nil {
		return nil, fmt.Errorf("invalid base URL %q: %w", d.BaseURL, err)
	}
	u.Path = strings.TrimRight(u.Path, "/") + "/instances/" + url.PathEscape(instance) + "/" + endpoint
	u.RawPath = ""
	h := http.Header{}
	if d.UserAgent != "" {
		h.Set("User-Agent", d.UserAgent)
	}
	if d.Token != "" {
		h.Set("Authorization", "Bearer "+d.Token)
	}
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{
		HTTPClient: d.HTTPClient, HTTPHeader: h, CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
			return nil, &RefusedError{Status: resp.StatusCode, Body: body}
		}
		return nil, err
	}
	conn.SetReadLimit(ReadLimit)
	return conn, nil
}

// Dial opens the exec WebSocket of instance.
func (d Dialer) Dial(ctx context.Context, instance string) (*websocket.Conn, error) {
	return d.Open(ctx, instance, "exec")
}

// Size is a terminal size.
type Size struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// IO are the local ends of an exec session.
type IO struct {
	// Stdin is sent to the command; nil sends end of input at once.
	Stdin io.Reader
	// Stdout and Stderr receive the output (nil discards it). With a
	// terminal, all output arrives on Stdout.
	Stdout, Stderr io.Writer
	// Resize carries terminal size changes (nil: none).
	Resize <-chan Size
}

// Run runs an exec session on conn (from Dial): it sends start (with
// separate_stderr set), pumps stdin and resizes, copies output, and returns
// the final message. The caller interprets it (ExecExit.Error/Code: the
// command could not be run). conn is closed normally after the final
// message; the caller still owns it (CloseNow after Run is harmless).
//
// A goroutine reading a blocking Stdin (a terminal) may outlive Run; its
// next write fails and it returns.
func Run(ctx context.Context, conn *websocket.Conn, start client.ExecStart, rw IO) (client.ExecExit, error) {
	start.SeparateStderr = ptr(true)
	if err := SendJSON(ctx, conn, start); err != nil {
		return client.ExecExit{}, EndedEarly(ctx, err)
	}
	done := make(chan struct{})
	defer close(done)
	if rw.Stdin != nil {
		go pumpStdin(ctx, conn, rw.Stdin)
	} else if err := conn.Write(ctx, websocket.MessageBinary, nil); err != nil {
		return client.ExecExit{}, EndedEarly(ctx, err)
	}
	if rw.Resize != nil {
		go followResize(ctx, conn, rw.Resize, done)
	}
	stdout, stderr := orDiscard(rw.Stdout), orDiscard(rw.Stderr)
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return client.ExecExit{}, EndedEarly(ctx, err)
		}
		if typ == websocket.MessageBinary {
			if len(data) == 0 {
				continue
			}
			switch data[0] {
			case StreamStdout:
				_, err = stdout.Write(data[1:])
			case StreamStderr:
				_, err = stderr.Write(data[1:])
			}
			if err != nil {
				return client.ExecExit{}, fmt.Errorf("write output: %w", err)
			}
			continue
		}
		var exit client.ExecExit
		if err := json.Unmarshal(data, &exit); err != nil || !bytes.Contains(data, []byte(`"exitCode"`)) {
			return client.ExecExit{}, fmt.Errorf("server sent an invalid message: %q", truncate(string(data), 200))
		}
		_ = conn.Close(websocket.StatusNormalClosure, "")
		return exit, nil
	}
}

// pumpStdin sends r as binary messages and then the empty message that
// means end of input.
func pumpStdin(ctx context.Context, conn *websocket.Conn, r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if conn.Write(ctx, websocket.MessageBinary, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				_ = conn.Write(ctx, websocket.MessageBinary, nil)
			}
			return
		}
	}
}

// followResize sends a resize message for each size until done.
func followResize(ctx context.Context, conn *websocket.Conn, sizes <-chan Size, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case s, ok := <-sizes:
			if !ok {
				return
			}
			if SendJSON(ctx, conn, map[string]Size{"resize": s}) != nil {
				return
			}
		}
	}
}

// EndedEarly describes a connection that closed before the final message.
func EndedEarly(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return fmt.Errorf("the server closed the connection before the end (status %d %s)", ce.Code, ce.Reason)
	}
	return fmt.Errorf("connection to the server lost: %w", err)
}

// SendJSON writes v as one text message.
func SendJSON(ctx context.Context, conn *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return conn.Write(ctx, websocket.MessageText, b)
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func ptr[T any](v T) *T { return &v }
