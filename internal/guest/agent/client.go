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
	"sync/atomic"
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
	cc := &countingConn{ReadWriteCloser: conn}
	sess, err := yamux.Client(cc, yamuxConfig())
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
		// Whether the guest sent anything tells a silent guest (its agent
		// not reading the port, the hello lost on the way) from a
		// confused session.
		return nil, fmt.Errorf("%w (%d bytes from the guest on this connection)", err, cc.n.Load())
	}
	cleanup()
	if resp.Version != ProtocolVersion {
		c.Close()
		return nil, fmt.Errorf("guest agent speaks protocol %d, want %d", resp.Version, ProtocolVersion)
	}
	return c, nil
}

// countingConn counts the bytes read from the guest.
type countingConn struct {
	io.ReadWriteCloser
	n atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.ReadWriteCloser.Read(b)
	c.n.Add(int64(n))
	return n, err
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

// Put creates one file, directory or symlink in the guest (see
// PutRequest). For a file, r's bytes are its content (nil = empty) and the
// number of bytes the guest stored is returned. Put does not wait for r
// after the guest answered: a Read blocked then keeps the sending goroutine
// until it returns.
func (c *Client) Put(ctx context.Context, req PutRequest, r io.Reader) (int64, error) {
	st, br, _, cleanup, err := c.call(ctx, Request{Op: OpPut, Put: &req})
	if err != nil {
		return 0, err
	}
	defer cleanup()
	if req.Kind != PutFile {
		return 0, nil // done with the response line
	}
	if r == nil {
		r = eofReader{}
	}
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
	// The guest answers with an end frame, early if writing failed.
	resp, err := readEnd(br)
	if err != nil {
		return 0, ctxErr(ctx, OpPut, err)
	}
	if resp.Error != "" {
		_ = st.Close() // unblocks the sender
		return resp.Written, &RemoteError{Op: OpPut, Code: resp.Code, Message: resp.Error}
	}
	if err := <-sent; err != nil {
		return resp.Written, ctxErr(ctx, OpPut, err)
	}
	return resp.Written, nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// readEnd reads the frame that must be an end frame.
func readEnd(r io.Reader) (Response, error) {
	typ, payload, err := readFrame(r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Response{}, err
	}
	if typ != frameEnd {
		return Response{}, fmt.Errorf("unexpected frame type %d", typ)
	}
	var resp Response
	if err := json.Unmarshal(payload, &resp); err != nil {
		return Response{}, fmt.Errorf("bad end frame: %w", err)
	}
	return resp, nil
}

// TreeVisitor receives each entry of a ReadTree in walk order. data yields a
// regular file's bytes (exactly e.Size of them); what the visitor does not
// read is skipped. An error from the visitor ends the ReadTree with it.
type TreeVisitor func(e TreeEntry, data io.Reader) error

// ReadTree streams a file or a directory tree of the guest to visit (see
// TreeRequest). A missing path is a RemoteError matching ErrNotFound before
// any entry; an error found later ends the walk after the entries sent.
func (c *Client) ReadTree(ctx context.Context, req TreeRequest, visit TreeVisitor) error {
	_, br, _, cleanup, err := c.call(ctx, Request{Op: OpReadTree, Tree: &req})
	if err != nil {
		return err
	}
	defer cleanup()
	for {
		typ, payload, err := readFrame(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return ctxErr(ctx, OpReadTree, err)
		}
		switch typ {
		case frameHeader:
			var e TreeEntry
			if err := json.Unmarshal(payload, &e); err != nil {
				return ctxErr(ctx, OpReadTree, fmt.Errorf("bad header frame: %w", err))
			}
			if e.Size < 0 || (!e.Regular() && e.Size != 0) {
				return ctxErr(ctx, OpReadTree, fmt.Errorf("bad header frame: size %d", e.Size))
			}
			data := &entryData{r: br, left: e.Size}
			if !e.Regular() {
				data.left = 0
			}
			if err := visit(e, data); err != nil {
				if data.err != nil {
					return data.failure(ctx) // the visitor failed because the data did
				}
				return err
			}
			if _, err := io.Copy(io.Discard, data); err != nil {
				return data.failure(ctx)
			}
		case frameEnd:
			var resp Response
			if err := json.Unmarshal(payload, &resp); err != nil {
				return ctxErr(ctx, OpReadTree, fmt.Errorf("bad end frame: %w", err))
			}
			if resp.Error != "" {
				return &RemoteError{Op: OpReadTree, Code: resp.Code, Message: resp.Error}
			}
			return nil
		default:
			return ctxErr(ctx, OpReadTree, fmt.Errorf("unexpected frame type %d", typ))
		}
	}
}

// entryData reads one entry's data frames.
type entryData struct {
	r    io.Reader
	left int64
	buf  []byte
	err  error     // sticky
	end  *Response // an end frame that cut the entry short
}

// errShortEntry: the data of an entry ended before its announced size.
var errShortEntry = errors.New("guest agent read_tree: entry data ended early")

func (d *entryData) Read(p []byte) (int, error) {
	for len(d.buf) == 0 {
		if d.err != nil {
			return 0, d.err
		}
		if d.left == 0 {
			return 0, io.EOF
		}
		typ, payload, err := readFrame(d.r)
		switch {
		case err != nil:
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			d.err = err
		case typ == frameData && int64(len(payload)) <= d.left:
			d.buf = payload
			d.left -= int64(len(payload))
		case typ == frameEnd:
			// The guest failed while reading the file: its end frame
			// says why.
			var resp Response
			if json.Unmarshal(payload, &resp) == nil && resp.Error != "" {
				d.end = &resp
			}
			d.err = errShortEntry
		default:
			d.err = fmt.Errorf("unexpected frame type %d (%d bytes) in entry data", typ, len(payload))
		}
	}
	n := copy(p, d.buf)
	d.buf = d.buf[n:]
	return n, nil
}

// failure is the error to report after a read of d failed.
func (d *entryData) failure(ctx context.Context) error {
	if d.end != nil {
		return &RemoteError{Op: OpReadTree, Code: d.end.Code, Message: d.end.Error}
	}
	return ctxErr(ctx, OpReadTree, d.err)
}
