package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// ErrNotFound matches (errors.Is) a RemoteError for a missing path.
var ErrNotFound = errors.New("not found")

// RemoteError is an error reported by the guest.
type RemoteError struct {
	Op      string
	Code    string // CodeNotFound, CodeBadRequest or empty
	Message string
}

func (e *RemoteError) Error() string { return "guest agent " + e.Op + ": " + e.Message }

// Is makes errors.Is(err, ErrNotFound) work for not-found errors.
func (e *RemoteError) Is(target error) bool {
	return target == ErrNotFound && e.Code == CodeNotFound
}

// Client is the host side of the agent. It is safe for concurrent use; every
// call runs on its own stream. The transport accepts one connection at a
// time (QEMU's socket chardev), so keep one Client per VM and share it.
type Client struct {
	conn io.Closer
	sess *yamux.Session
}

// ErrStaleSession is returned by NewClient when the connection reached a
// guest session left over from an earlier connection (the guest resets it;
// dial again).
var ErrStaleSession = errors.New("guest agent: stale session")

// redialDelay is the pause before redialing after a stale session.
const redialDelay = 100 * time.Millisecond

// Dial connects to the agent through QEMU's unix socket for the agent port
// and performs the session handshake. It waits (bounded by ctx) until the
// guest agent answers, so it doubles as a readiness wait right after boot.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", socketPath)
		if err != nil {
			// The VMM creates (binds) the socket an instant before it
			// listens, and may not have created it yet: retry those two
			// cases until ctx ends.
			if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
				return nil, fmt.Errorf("dial guest agent: %w", err)
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("dial guest agent: %w (%v)", err, ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		c, err := NewClient(ctx, conn)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, ErrStaleSession) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial guest agent: %w", ctx.Err())
		case <-time.After(redialDelay):
		}
	}
}

// NewClient runs the client over an established connection and performs the
// handshake (waiting, bounded by ctx, for the guest to answer). The
// connection is closed when NewClient fails.
func NewClient(ctx context.Context, conn io.ReadWriteCloser) (*Client, error) {
	sess, err := yamux.Client(conn, yamuxConfig())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("guest agent session: %w", err)
	}
	c := &Client{conn: conn, sess: sess}
	_, _, resp, cleanup, err := c.call(ctx, Request{Op: OpHello})
	if err != nil {
		c.Close()
		var re *RemoteError
		if errors.As(err, &re) && re.Code == CodeStaleSession {
			return nil, ErrStaleSession
		}
		return nil, err
	}
	cleanup()
	if resp.Version != ProtocolVersion {
		c.Close()
		return nil, fmt.Errorf("guest agent speaks protocol %d, want %d", resp.Version, ProtocolVersion)
	}
	return c, nil
}

// Close ends the session; running execs in the guest are killed.
func (c *Client) Close() error {
	return c.sess.Close()
}

// Done is closed when the session ends (the VM went away or Close).
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

// call opens a stream, sends req and reads the response line. The returned
// cleanup closes the stream and detaches it from ctx.
func (c *Client) call(ctx context.Context, req Request) (*yamux.Stream, *bufio.Reader, Response, func(), error) {
	st, err := c.sess.OpenStream()
	if err != nil {
		return nil, nil, Response{}, nil, fmt.Errorf("guest agent %s: %w", req.Op, err)
	}
	stop := context.AfterFunc(ctx, func() {
		_ = st.SetDeadline(time.Now())
		_ = st.Close()
	})
	cleanup := func() {
		stop()
		_ = st.Close()
	}
	fail := func(err error) (*yamux.Stream, *bufio.Reader, Response, func(), error) {
		cleanup()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, nil, Response{}, nil, fmt.Errorf("guest agent %s: %w", req.Op, err)
	}
	b, err := json.Marshal(req)
	if err != nil {
		return fail(err)
	}
	if _, err := st.Write(append(b, '\n')); err != nil {
		return fail(err)
	}
	br := bufio.NewReader(st)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fail(err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return fail(fmt.Errorf("bad response: %w", err))
	}
	if resp.Error != "" {
		cleanup()
		return nil, nil, Response{}, nil, &RemoteError{Op: req.Op, Code: resp.Code, Message: resp.Error}
	}
	return st, br, resp, cleanup, nil
}

func ctxErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("guest agent %s: %w", op, ctx.Err())
	}
	return fmt.Errorf("guest agent %s: %w", op, err)
}

// Ping checks that the agent answers.
func (c *Client) Ping(ctx context.Context) error {
	_, _, _, cleanup, err := c.call(ctx, Request{Op: OpPing})
	if err != nil {
		return err
	}
	cleanup()
	return nil
}

// Shutdown asks the guest to stop gracefully: the program gets SIGTERM, then
// SIGKILL after its stop timeout, and the VM powers off. It returns once the
// guest has acknowledged the request.
func (c *Client) Shutdown(ctx context.Context) error {
	_, _, _, cleanup, err := c.call(ctx, Request{Op: OpShutdown})
	if err != nil {
		return err
	}
	cleanup()
	return nil
}

// Stat reports on a path in the guest (lstat semantics). A missing path is
// not an error: Exists is false.
func (c *Client) Stat(ctx context.Context, path string) (FileInfo, error) {
	_, _, resp, cleanup, err := c.call(ctx, Request{Op: OpStat, Path: path})
	if err != nil {
		return FileInfo{}, err
	}
	cleanup()
	if resp.Stat == nil {
		return FileInfo{}, fmt.Errorf("guest agent stat: response without result")
	}
	return *resp.Stat, nil
}

// ExecIO connects an exec's standard streams.
type ExecIO struct {
	// Stdin is copied to the command; nil means empty stdin. Exec does not
	// wait for Stdin: if Read blocks after the command ended, the copying
	// goroutine stays blocked until Read returns.
	Stdin io.Reader
	// Stdout and Stderr receive the output (nil discards). With a TTY
	// everything arrives on Stdout.
	Stdout io.Writer
	Stderr io.Writer
	// Resize delivers window size changes (TTY only).
	Resize <-chan WindowSize
	// Signals delivers signals for the command's process group.
	Signals <-chan syscall.Signal
}

// Exec runs a command in the guest and streams its I/O. It returns when the
// command has ended and its output was delivered. A command that does not
// exist or cannot be executed yields exit code 127/126 (not an error).
// Cancelling ctx kills the command in the guest.
func (c *Client) Exec(ctx context.Context, req ExecRequest, stdio ExecIO) (ExecResult, error) {
	st, br, _, cleanup, err := c.call(ctx, Request{Op: OpExec, Exec: &req})
	if err != nil {
		return ExecResult{}, err
	}
	defer cleanup()
	fw := &frameWriter{w: st}
	finished := make(chan struct{})
	defer close(finished)

	go func() {
		if stdio.Stdin != nil {
			buf := make([]byte, maxFrame)
			_, _ = io.CopyBuffer(dataWriter{fw: fw, typ: frameStdin}, stdio.Stdin, buf)
		}
		_ = fw.frame(frameStdinClose, nil)
	}()
	if stdio.Resize != nil || stdio.Signals != nil {
		go func() {
			for {
				select {
				case <-finished:
					return
				case ws, ok := <-stdio.Resize:
					if !ok {
						stdio.Resize = nil
						continue
					}
					var p [4]byte
					binary.BigEndian.PutUint16(p[0:2], ws.Rows)
					binary.BigEndian.PutUint16(p[2:4], ws.Cols)
					_ = fw.frame(frameResize, p[:])
				case sig, ok := <-stdio.Signals:
					if !ok {
						stdio.Signals = nil
						continue
					}
					_ = fw.frame(frameSignal, []byte{byte(sig)})
				}
			}
		}()
	}

	for {
		typ, payload, err := readFrame(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // no exit frame
			}
			return ExecResult{}, ctxErr(ctx, OpExec, err)
		}
		var w io.Writer
		switch typ {
		case frameStdout:
			w = stdio.Stdout
		case frameStderr:
			w = stdio.Stderr
		case frameExit:
			var res ExecResult
			if err := json.Unmarshal(payload, &res); err != nil {
				return ExecResult{}, ctxErr(ctx, OpExec, fmt.Errorf("bad exit frame: %w", err))
			}
			if ctx.Err() != nil {
				// The guest killed the command because ctx ended; its
				// exit frame can win the race with the stream closing.
				// Like every other path, a cancelled Exec reports ctx.
				return ExecResult{}, ctxErr(ctx, OpExec, nil)
			}
			return res, nil
		default:
			return ExecResult{}, ctxErr(ctx, OpExec, fmt.Errorf("unexpected frame type %d", typ))
		}
		if w != nil {
			if _, err := w.Write(payload); err != nil {
				return ExecResult{}, fmt.Errorf("guest agent exec: write output: %w", err)
			}
		}
	}
}

// CopyTo extracts the tar stream r under dstDir in the guest (created if
// missing). Entries cannot escape dstDir; entry owners, modes and times are
// applied as given.
func (c *Client) CopyTo(ctx context.Context, dstDir string, r io.Reader) error {
	st, br, _, cleanup, err := c.call(ctx, Request{Op: OpCopyTo, Path: dstDir})
	if err != nil {
		return err
	}
	defer cleanup()
	fw := &frameWriter{w: st}
	sent := make(chan error, 1)
	go func() {
		buf := make([]byte, maxFrame)
		_, err := io.CopyBuffer(dataWriter{fw: fw, typ: frameData}, r, buf)
		end := Response{}
		if err != nil {
			end.Error = err.Error()
		}
		if ferr := fw.json(frameEnd, end); err == nil {
			err = ferr
		}
		sent <- err
	}()
	// The guest answers with an end frame, early if extraction failed.
	typ, payload, err := readFrame(br)
	if err != nil {
		return ctxErr(ctx, OpCopyTo, err)
	}
	if typ != frameEnd {
		return ctxErr(ctx, OpCopyTo, fmt.Errorf("unexpected frame type %d", typ))
	}
	var resp Response
	if err := json.Unmarshal(payload, &resp); err != nil {
		return ctxErr(ctx, OpCopyTo, err)
	}
	if resp.Error != "" {
		_ = st.Close() // unblocks the sender
		return &RemoteError{Op: OpCopyTo, Code: resp.Code, Message: resp.Error}
	}
	if err := <-sent; err != nil {
		return ctxErr(ctx, OpCopyTo, err)
	}
	return nil
}

// CopyFrom writes a tar stream of path in the guest to w. The top entry is
// the path's base name; symlinks are archived, not followed.
func (c *Client) CopyFrom(ctx context.Context, path string, w io.Writer) error {
	_, br, _, cleanup, err := c.call(ctx, Request{Op: OpCopyFrom, Path: path})
	if err != nil {
		return err
	}
	defer cleanup()
	data := &frameDataReader{r: br}
	if _, err := io.Copy(w, data); err != nil {
		if data.err != nil && !errors.Is(data.err, io.EOF) {
			return ctxErr(ctx, OpCopyFrom, err)
		}
		return fmt.Errorf("guest agent copy_from: write: %w", err)
	}
	if data.end != nil && data.end.Error != "" {
		return &RemoteError{Op: OpCopyFrom, Code: data.end.Code, Message: data.end.Error}
	}
	return nil
}
