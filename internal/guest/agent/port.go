package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
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
// ends the session; the port is then reopened after a short pause, so a
// restarted host daemon simply reconnects and gets a fresh session.
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
	ready := false
	for {
		f, err := open(dev)
		if err != nil {
			log.Error("open agent port", "err", err)
		} else {
			if !ready && pc.Ready != nil {
				pc.Ready()
			}
			ready = true
			// While no host is connected every session ends at once; only
			// sessions that carried something are worth a log line.
			t0 := time.Now()
			n, err := s.serve(ctx, f)
			if (err != nil && ctx.Err() == nil) || n > 0 {
				log.Info("agent session ended", "streams", n, "err", err, "after", time.Since(t0))
			}
			f.Close()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pc.Retry):
		}
	}
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
