package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// ErrPortNotFound is returned when no virtio-serial port has the name.
var ErrPortNotFound = errors.New("agent port not found")

// FindPort returns the device path of the virtio-serial port called name,
// looking at <sysDir>/<vportNpM>/name (sysDir is normally
// /sys/class/virtio-ports) and mapping it to <devDir>/<vportNpM>.
func FindPort(sysDir, devDir, name string) (string, error) {
	ents, err := os.ReadDir(sysDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("find agent port: %w", err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysDir, e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join(devDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("%w: %q under %s", ErrPortNotFound, name, sysDir)
}

// PortConfig says where the agent's port is and how to serve it.
type PortConfig struct {
	Name   string // port name, guestconfig.AgentPortName
	SysDir string // default /sys/class/virtio-ports
	DevDir string // default /dev
	// FindTimeout bounds the wait for the port to appear (the device
	// probes asynchronously after virtio_console loads). Default 10 s.
	FindTimeout time.Duration
	// Retry is the pause before reopening the port after a session ended.
	// Default 200 ms.
	Retry time.Duration
	// Ready is called once, when the port is first open and served.
	Ready func()

	open func(path string) (io.ReadWriteCloser, error) // tests replace the device
}

// ServePort serves the agent on a virtio-serial port until ctx is done.
// While the host side is not connected the port reads EOF at once, which
// ends the session; a new session starts on the same port after a short
// pause, so a restarted host daemon simply reconnects and gets a fresh
// session.
//
// After a session that ended because the host went away (EOF) the port
// stays open for the next one. Closing it there would lose host bytes:
// QEMU forwards a host's bytes as soon as it connects if the guest has the
// port open, and the guest kernel (virtio_console) discards unread input on
// close. A host that connects just after the ending session read EOF (its
// hello racing the teardown) had its hello thrown away, waited for an
// answer until its deadline, and its redial could land in the next such
// teardown again. At EOF the port holds nothing of the previous host, so
// whatever arrives belongs to the next one. A session that ended otherwise
// (stale-session reset, protocol error) may leave that host's bytes
// unread: the port is closed to discard them and reopened, which is also
// what a port without deadlines (nothing else can interrupt its reads)
// gets after every session.
func (s *Server) ServePort(ctx context.Context, pc PortConfig) error {
	if pc.SysDir == "" {
		pc.SysDir = "/sys/class/virtio-ports"
	}
	if pc.DevDir == "" {
		pc.DevDir = "/dev"
	}
	if pc.FindTimeout == 0 {
		pc.FindTimeout = 10 * time.Second
	}
	if pc.Retry == 0 {
		pc.Retry = 200 * time.Millisecond
	}
	dev, err := waitForPort(ctx, pc)
	if err != nil {
		return err
	}
	log := s.logger().With("port", dev)
	open := pc.open
	if open == nil {
		open = func(p string) (io.ReadWriteCloser, error) { return os.OpenFile(p, os.O_RDWR, 0) }
	}
	var f io.ReadWriteCloser
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	ready := false
	for {
		if f == nil {
			if f, err = open(dev); err != nil {
				log.Error("open agent port", "err", err)
				f = nil
			}
		}
		if f != nil {
			if !ready && pc.Ready != nil {
				pc.Ready()
			}
			ready = true
			conn, keep := sessionOn(f)
			// While no host is connected every session ends at once; only
			// sessions that carried something are worth a log line.
			t0 := time.Now()
			n, hostGone, err := s.serve(ctx, conn)
			if (err != nil && ctx.Err() == nil) || n > 0 {
				log.Info("agent session ended", "streams", n, "host_gone", hostGone, "err", err, "after", time.Since(t0))
			}
			if !keep || !hostGone {
				if keep {
					f.Close()
				}
				f = nil // closed by the session or just now
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pc.Retry):
		}
	}
}

// deadlinePort is an open port whose blocked reads and writes a deadline
// interrupts (an *os.File of a pollable device, a net.Conn in tests).
type deadlinePort interface {
	io.ReadWriteCloser
	SetDeadline(t time.Time) error
}

// sessionOn returns the connection one session runs on and whether the
// port can stay open after it (see ServePort). A port without deadlines is
// handed over as is: the session's end closes it.
func sessionOn(f io.ReadWriteCloser) (io.ReadWriteCloser, bool) {
	dp, ok := f.(deadlinePort)
	if !ok || dp.SetDeadline(time.Time{}) != nil {
		return f, false
	}
	return &portSession{port: dp}, true
}

// portSession is one session's use of a port that stays open: Close ends
// the session's blocked reads and writes (a deadline in the past) and
// refuses further ones, but leaves the port open for the next session.
type portSession struct {
	port   deadlinePort
	closed atomic.Bool
}

func (p *portSession) Read(b []byte) (int, error) {
	if p.closed.Load() {
		return 0, os.ErrClosed
	}
	return p.port.Read(b)
}

func (p *portSession) Write(b []byte) (int, error) {
	if p.closed.Load() {
		return 0, os.ErrClosed
	}
	return p.port.Write(b)
}

func (p *portSession) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	return p.port.SetDeadline(time.Unix(1, 0))
}

func waitForPort(ctx context.Context, pc PortConfig) (string, error) {
	deadline := time.Now().Add(pc.FindTimeout)
	for {
		dev, err := FindPort(pc.SysDir, pc.DevDir, pc.Name)
		if err == nil {
			if _, serr := os.Stat(dev); serr == nil {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("%w: %s has no device node", ErrPortNotFound, dev)
			}
			return "", err
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
