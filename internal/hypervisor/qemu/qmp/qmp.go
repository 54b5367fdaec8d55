// Package qmp is a small client for the QEMU Machine Protocol (QMP).
//
// It owns one QMP connection: the greeting (QEMU version), capability
// negotiation, concurrent command execution (optionally passing a file
// descriptor, for getfd) and asynchronous event delivery.
//
// Why it is written this way: QMP is a single full-duplex JSON stream on which
// replies and asynchronous events are interleaved. Exactly one goroutine reads
// the stream and demultiplexes it: replies are matched to their command by a
// request id we attach to every command, events are fanned out to
// subscribers. That lets any number of callers run Execute at the same time
// without a global lock around the round trip, lets a caller give up through
// its context without desynchronising the stream, and gives Close a single
// goroutine to wait for, so closing never leaks goroutines. We write our own
// client because go-qemu is not reachable from our module proxy and we need
// only a few hundred lines of it.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by Execute once the connection is closed (by Close,
// by QEMU exiting, or by a protocol error). The cause is wrapped alongside.
var ErrClosed = errors.New("qmp: connection closed")

// Error is a QMP error reply ({"error": {"class": ..., "desc": ...}}).
type Error struct {
	Command string `json:"-"`
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Version is the QEMU version announced in the QMP greeting.
type Version struct {
	Major   int    `json:"major"`
	Minor   int    `json:"minor"`
	Micro   int    `json:"micro"`
	Package string `json:"-"`
}

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
}

// Event is an asynchronous QMP event such as STOP, RESUME, SHUTDOWN,
// POWERDOWN, RESET or MIGRATION.
type Event struct {
	Name string
	Data json.RawMessage
	// Time is the QEMU-side timestamp of the event.
	Time time.Time
}

// eventBuffer is the per-subscriber channel capacity. Events are rare (a
// handful per lifecycle transition); a subscriber that falls this far behind
// loses events and a warning is logged.
const eventBuffer = 64

// Options tune a Client. The zero value is usable.
type Options struct {
	// Logger receives protocol anomalies (dropped events, stray replies).
	// Default: slog.Default().
	Logger *slog.Logger
	// HandshakeTimeout bounds the greeting + qmp_capabilities exchange when
	// ctx has no earlier deadline. A second client on QEMU's single-client
	// QMP socket connects but never gets a greeting, so this must be finite.
	// Default 5s.
	HandshakeTimeout time.Duration
}

// Client is one QMP connection. All methods are safe for concurrent use.
type Client struct {
	conn    net.Conn
	log     *slog.Logger
	version Version

	nextID atomic.Uint64

	writeMu sync.Mutex // serialises whole command writes

	mu      sync.Mutex
	pending map[uint64]chan reply
	subs    map[*subscription]struct{}
	closed  bool
	err     error // why the connection ended; set once, before done closes

	done       chan struct{} // closed when the reader has exited
	closeOnce  sync.Once
	readerDone chan struct{}
}

type subscription struct {
	ch   chan Event
	stop func() bool // stops the context.AfterFunc
}

type reply struct {
	ret json.RawMessage
	err *Error
}

// wire is every message QEMU can send.
type wire struct {
	QMP *struct {
		Version struct {
			QEMU    Version `json:"qemu"`
			Package string  `json:"package"`
		} `json:"version"`
	} `json:"QMP"`
	ID        *uint64         `json:"id"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

type command struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        uint64 `json:"id"`
}

// Dial connects to the QMP unix socket at path (paths longer than the
// sockaddr limit are handled, see DialUnix) and performs the handshake.
func Dial(ctx context.Context, path string, opts Options) (*Client, error) {
	conn, err := DialUnix(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("qmp dial: %w", err)
	}
	c, err := NewClient(ctx, conn, opts)
	if err != nil {
		return nil, err // NewClient closed conn
	}
	return c, nil
}

// NewClient performs the QMP handshake on conn (read the greeting, negotiate
// capabilities) and starts the reader. On error conn is closed.
func NewClient(ctx context.Context, conn net.Conn, opts Options) (*Client, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 5 * time.Second
	}
	hctx, cancel := context.WithTimeout(ctx, opts.HandshakeTimeout)
	defer cancel()

	c := &Client{
		conn:       conn,
		log:        opts.Logger,
		pending:    make(map[uint64]chan reply),
		subs:       make(map[*subscription]struct{}),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	br := bufio.NewReader(conn)
	dec := json.NewDecoder(br)

	// The greeting is read synchronously: nothing else can arrive first.
	stop := context.AfterFunc(hctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	var greet wire
	err := dec.Decode(&greet)
	if !stop() {
		// The deadline was (or is being) forced; the read result is moot.
		conn.Close()
		return nil, fmt.Errorf("qmp handshake: no greeting (is another client connected?): %w", context.Cause(hctx))
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp handshake: read greeting: %w", err)
	}
	if greet.QMP == nil {
		conn.Close()
		return nil, errors.New("qmp handshake: first message is not a QMP greeting")
	}
	c.version = greet.QMP.Version.QEMU
	c.version.Package = greet.QMP.Version.Package

	go c.readLoop(dec)

	if err := c.Execute(hctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp handshake: %w", err)
	}
	return c, nil
}

// Version is the QEMU version from the greeting.
func (c *Client) Version() Version { return c.version }

// Done is closed when the connection has ended for any reason.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err reports why the connection ended (nil while it is up).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// ClosedByPeer reports whether the connection ended because QEMU closed it
// (as it does when it exits) rather than through Close.
func (c *Client) ClosedByPeer() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		return false
	}
	return errors.Is(c.err, io.EOF) || errors.Is(c.err, io.ErrUnexpectedEOF) ||
		errors.Is(c.err, unix.ECONNRESET) || errors.Is(c.err, unix.EPIPE)
}

// Close ends the connection and waits for the reader goroutine to exit.
// Pending Execute calls fail with ErrClosed; event channels are closed.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.shutdown(ErrClosed)
		c.conn.Close()
	})
	<-c.readerDone
	return nil
}

// shutdown records the cause, fails every pending command and closes every
// subscription. Idempotent; the first cause wins.
func (c *Client) shutdown(cause error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.err = cause
	pending := c.pending
	c.pending = nil
	for s := range c.subs {
		s.stop()
		close(s.ch)
	}
	c.subs = nil
	c.mu.Unlock()
	for _, ch := range pending {
		close(ch) // a closed reply channel means "connection gone"
	}
	close(c.done)
}

func (c *Client) readLoop(dec *json.Decoder) {
	defer close(c.readerDone)
	for {
		var m wire
		if err := dec.Decode(&m); err != nil {
			cause := ErrClosed
			if !errors.Is(err, net.ErrClosed) {
				cause = fmt.Errorf("%w: %w", ErrClosed, err)
			}
			c.shutdown(cause)
			c.conn.Close()
			return
		}
		switch {
		case m.Event != "":
			ev := Event{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			c.dispatch(ev)
		case m.ID != nil:
			c.mu.Lock()
			ch, ok := c.pending[*m.ID]
			delete(c.pending, *m.ID)
			c.mu.Unlock()
			if ok {
				ch <- reply{ret: m.Return, err: m.Error} // buffered(1)
			}
			// !ok: the caller gave up (context); drop the reply.
		case m.Error != nil:
			// QEMU could not parse a command well enough to find its id.
			c.log.Warn("qmp: error reply without id", "class", m.Error.Class, "desc", m.Error.Desc)
		default:
			c.log.Warn("qmp: unexpected message without id or event")
		}
	}
}

func (c *Client) dispatch(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.subs {
		select {
		case s.ch <- ev:
		default:
			c.log.Warn("qmp: event subscriber is full, dropping event", "event", ev.Name)
		}
	}
}

// Events subscribes to asynchronous events. The channel receives every event
// that arrives after the call and is closed when ctx is done or the
// connection ends. Events are delivered in arrival order.
func (c *Client) Events(ctx context.Context) <-chan Event {
	s := &subscription{ch: make(chan Event, eventBuffer)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		close(s.ch)
		return s.ch
	}
	s.stop = context.AfterFunc(ctx, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.subs[s]; ok {
			delete(c.subs, s)
			close(s.ch)
		}
	})
	c.subs[s] = struct{}{}
	return s.ch
}

// Execute runs one QMP command. args (may be nil) is marshalled as the
// "arguments" object; the "return" value is unmarshalled into result unless
// result is nil. A QMP error reply is returned as *Error. If ctx ends first,
// Execute returns the context error; QEMU may still run the command.
func (c *Client) Execute(ctx context.Context, cmd string, args any, result any) error {
	return c.execute(ctx, cmd, args, result, nil)
}

// ErrNoFDPassing is returned by ExecuteFD when the connection is not a unix
// socket (file descriptors travel only over AF_UNIX).
var ErrNoFDPassing = errors.New("qmp: connection cannot pass file descriptors")

// ExecuteFD is Execute with f's file descriptor attached to the command
// (SCM_RIGHTS), for commands that take a descriptor from the client, such as
// getfd. QEMU receives a duplicate; f stays open and owned by the caller.
func (c *Client) ExecuteFD(ctx context.Context, cmd string, args any, f *os.File, result any) error {
	if _, ok := c.conn.(*net.UnixConn); !ok {
		return fmt.Errorf("qmp %s: %w", cmd, ErrNoFDPassing)
	}
	return c.execute(ctx, cmd, args, result, f)
}

func (c *Client) execute(ctx context.Context, cmd string, args any, result any, fd *os.File) error {
	id := c.nextID.Add(1)
	b, err := json.Marshal(command{Execute: cmd, Arguments: args, ID: id})
	if err != nil {
		return fmt.Errorf("qmp %s: marshal arguments: %w", cmd, err)
	}
	b = append(b, '\n')

	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	c.pending[id] = ch
	c.mu.Unlock()

	if err := c.write(ctx, b, fd); err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}

	select {
	case r, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp %s: %w", cmd, c.Err())
		}
		if r.err != nil {
			e := *r.err
			e.Command = cmd
			return &e
		}
		if result != nil {
			if len(r.ret) == 0 {
				return fmt.Errorf("qmp %s: reply has no return value", cmd)
			}
			if err := json.Unmarshal(r.ret, result); err != nil {
				return fmt.Errorf("qmp %s: decode return: %w", cmd, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

func (c *Client) forget(id uint64) {
	c.mu.Lock()
	if c.pending != nil {
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

// write sends one complete command, with fd's descriptor attached to its
// first byte when fd is not nil. A write that fails or is interrupted part-way
// leaves the stream unusable, so the connection is then closed.
func (c *Client) write(ctx context.Context, b []byte, fd *os.File) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = c.conn.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	var err error
	if fd != nil {
		err = c.writeWithFD(b, fd)
	} else {
		_, err = c.conn.Write(b)
	}
	if !stop() {
		<-fired // the forced deadline is in place now
		if err == nil {
			// Written in full just before the cancellation: the stream is
			// intact, only the deadline must not leak to the next writer.
			if derr := c.conn.SetWriteDeadline(time.Time{}); derr == nil {
				return nil
			}
		}
		c.fail(fmt.Errorf("%w: write interrupted: %w", ErrClosed, ctx.Err()))
		return ctx.Err()
	}
	if err != nil {
		c.fail(fmt.Errorf("%w: write: %w", ErrClosed, err))
		return err
	}
	return nil
}

// writeWithFD writes b with fd attached as SCM_RIGHTS ancillary data. The
// descriptor is read inside SyscallConn().Control so it cannot be closed
// (and its number reused) while it is being sent, and without f.Fd(), which
// would switch a pipe to blocking mode behind Go's poller.
func (c *Client) writeWithFD(b []byte, fd *os.File) error {
	uc := c.conn.(*net.UnixConn) // checked by ExecuteFD
	rc, err := fd.SyscallConn()
	if err != nil {
		return fmt.Errorf("fd to pass: %w", err)
	}
	var n int
	var werr error
	cerr := rc.Control(func(raw uintptr) {
		n, _, werr = uc.WriteMsgUnix(b, unix.UnixRights(int(raw)), nil)
	})
	if cerr != nil {
		return fmt.Errorf("fd to pass: %w", cerr)
	}
	if werr != nil {
		return werr
	}
	if n < len(b) { // the descriptor went with the first part
		_, werr = uc.Write(b[n:])
	}
	return werr
}

// fail ends the connection from the writer side; the reader then exits.
func (c *Client) fail(cause error) {
	c.shutdown(cause)
	c.conn.Close()
}
