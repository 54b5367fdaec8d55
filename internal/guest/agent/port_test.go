package agent

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hypeman/internal/guest/guestproc"
)

// virtioPort models the guest end of a virtio-serial port with QEMU's unix
// socket behind it, as the guest kernel (virtio_console) and QEMU behave:
//   - one host connection at a time; while none is connected, a read with
//     nothing buffered returns EOF at once;
//   - host bytes are forwarded to the guest only while the guest has the
//     port open (QEMU holds them in the socket otherwise);
//   - closing the port discards what the guest has not read.
type virtioPort struct {
	mu       sync.Mutex
	cond     *sync.Cond
	isOpen   bool
	opens    int
	hostUp   bool
	host     net.Conn // the relay's end towards the connected host
	in       []byte   // delivered to the guest, unread
	deadline time.Time
	eofs     int // reads that returned EOF
	// afterEOF, when set, runs once (unlocked) after a read returned EOF,
	// before the reader sees it.
	afterEOF func()
}

func newVirtioPort() *virtioPort {
	p := &virtioPort{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// open is PortConfig.open.
func (p *virtioPort) open(string) (io.ReadWriteCloser, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.isOpen {
		return nil, os.ErrExist // the kernel allows one opener (EBUSY)
	}
	p.isOpen = true
	p.opens++
	p.deadline = time.Time{}
	p.cond.Broadcast()
	return p, nil
}

// connect is a host connecting to QEMU's socket.
func (p *virtioPort) connect(t *testing.T) net.Conn {
	hostEnd, relay := net.Pipe()
	p.mu.Lock()
	p.hostUp, p.host = true, relay
	p.mu.Unlock()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := relay.Read(buf)
			p.mu.Lock()
			if err != nil {
				if p.host == relay {
					p.hostUp, p.host = false, nil
				}
				p.cond.Broadcast()
				p.mu.Unlock()
				return
			}
			for !p.isOpen {
				p.cond.Wait()
			}
			p.in = append(p.in, buf[:n]...)
			p.cond.Broadcast()
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { hostEnd.Close() })
	return hostEnd
}

// buffered reports how many host bytes wait for the guest.
func (p *virtioPort) buffered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.in)
}

func (p *virtioPort) Read(b []byte) (int, error) {
	p.mu.Lock()
	for {
		switch {
		case !p.isOpen:
			p.mu.Unlock()
			return 0, os.ErrClosed
		case !p.deadline.IsZero() && !time.Now().Before(p.deadline):
			p.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		case len(p.in) > 0:
			n := copy(b, p.in)
			p.in = p.in[n:]
			p.mu.Unlock()
			return n, nil
		case !p.hostUp:
			hook := p.afterEOF
			p.afterEOF = nil
			p.eofs++
			p.mu.Unlock()
			if hook != nil {
				hook()
			}
			return 0, io.EOF
		}
		p.cond.Wait()
	}
}

func (p *virtioPort) Write(b []byte) (int, error) {
	p.mu.Lock()
	h, open := p.host, p.isOpen
	p.mu.Unlock()
	if !open {
		return 0, os.ErrClosed
	}
	if h == nil {
		return len(b), nil // nobody listening: QEMU drops it
	}
	return h.Write(b)
}

func (p *virtioPort) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.isOpen = false
	p.in = nil // virtio_console discards unread input on release
	p.cond.Broadcast()
	return nil
}

func (p *virtioPort) SetDeadline(t time.Time) error {
	p.mu.Lock()
	p.deadline = t
	p.cond.Broadcast()
	p.mu.Unlock()
	if !t.IsZero() {
		time.AfterFunc(time.Until(t), func() {
			p.mu.Lock()
			p.cond.Broadcast()
			p.mu.Unlock()
		})
	}
	return nil
}

func servePortOn(t *testing.T, port *virtioPort) {
	t.Helper()
	dir := t.TempDir()
	sys := filepath.Join(dir, "vport0p1")
	require.NoError(t, os.MkdirAll(sys, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(sys, "name"), []byte("hypeman.agent"), 0o644))
	srv := &Server{Root: makeRoot(t), Starter: guestproc.DirectStarter{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- srv.ServePort(ctx, PortConfig{Name: "hypeman.agent", SysDir: dir, DevDir: dir, Retry: time.Millisecond, open: port.open})
	}()
	t.Cleanup(func() {
		cancel()
		assert.ErrorIs(t, <-done, context.Canceled)
	})
}

// TestServePortKeepsHostBytesAcrossSessions reproduces the lost hello: a
// host connects and sends its hello just after the idle session read EOF
// and before that session ended. Closing the port there (as the agent did)
// discards the hello and the host waits until its deadline; the port must
// stay open so the next session answers it.
func TestServePortKeepsHostBytesAcrossSessions(t *testing.T) {
	port := newVirtioPort()
	type dialed struct {
		c   *Client
		err error
	}
	res := make(chan dialed, 1)
	port.mu.Lock()
	port.afterEOF = func() {
		conn := port.connect(t)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := NewClient(ctx, conn)
			res <- dialed{c, err}
		}()
		// The hello reaches the guest before the ending session is gone.
		for port.buffered() == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	port.mu.Unlock()
	servePortOn(t, port)

	d := <-res
	require.NoError(t, d.err, "the hello sent while the idle session ended was lost")
	defer d.c.Close()
	require.NoError(t, d.c.Ping(ctxT(t)))
	port.mu.Lock()
	assert.Equal(t, 1, port.opens, "the port was reopened")
	port.mu.Unlock()
}

// TestServePortHostsComeAndGo: hosts connect one after another to a port
// the agent keeps open; each gets a fresh session (a new hello succeeds,
// not "stale"), and the sessions in between, with no host, end at once.
func TestServePortHostsComeAndGo(t *testing.T) {
	port := newVirtioPort()
	servePortOn(t, port)
	for range 3 {
		c, err := NewClient(ctxT(t), port.connect(t))
		require.NoError(t, err)
		require.NoError(t, c.Ping(ctxT(t)))
		port.mu.Lock()
		eofs := port.eofs
		port.mu.Unlock()
		c.Close()
		// The guest reads the disconnect (EOF) before the next host.
		waitFor(t, func() bool {
			port.mu.Lock()
			defer port.mu.Unlock()
			return port.eofs > eofs
		}, "the guest to read EOF")
	}
	port.mu.Lock()
	assert.Equal(t, 1, port.opens)
	port.mu.Unlock()
}

// TestHelloTimeoutSaysGuestWasSilent: a hello nobody answers fails with the
// caller's deadline and says the guest sent nothing on the connection, so
// a lost hello is told apart from a confused session.
func TestHelloTimeoutSaysGuestWasSilent(t *testing.T) {
	hostEnd, guestEnd := net.Pipe()
	defer guestEnd.Close()
	go func() { _, _ = io.Copy(io.Discard, guestEnd) }() // reads, never answers
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := NewClient(ctx, hostEnd)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "(0 bytes from the guest on this connection)")
}
