package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// NetNS runs functions, dials and listens inside one network namespace. A
// NetNS opened with an empty name stands for the caller's own namespace and
// runs everything directly.
type NetNS struct {
	path   string
	handle netns.NsHandle // open for the runner's lifetime; -1 when path == ""
}

// NetNSPath resolves a Config.NetNS value: a bare name means /run/netns/NAME
// (where `ip netns add` puts it).
func NetNSPath(name string) string {
	if name == "" || strings.Contains(name, "/") {
		return name
	}
	return filepath.Join("/run/netns", name)
}

// OpenNetNS opens a namespace by name (see NetNSPath) or path and keeps a
// handle on it until Close, so it stays usable even if its name is removed.
func OpenNetNS(name string) (*NetNS, error) {
	if name == "" {
		return &NetNS{handle: netns.None()}, nil
	}
	path := NetNSPath(name)
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("%w: network namespace %s: %w", ErrInvalidConfig, path, err)
	}
	return &NetNS{path: path, handle: h}, nil
}

// Path is the namespace file, "" for the caller's namespace.
func (r *NetNS) Path() string { return r.path }

// Close releases the handle.
func (r *NetNS) Close() error {
	if r.path == "" || !r.handle.IsOpen() {
		return nil
	}
	err := r.handle.Close()
	r.handle = netns.None()
	return err
}

// Do runs fn on an OS thread inside the namespace. It uses a goroutine of
// its own, locked to its thread for the whole switch, so no other goroutine
// ever runs in the namespace. If switching back fails the thread stays
// locked and dies with the goroutine instead of going back to the pool.
func (r *NetNS) Do(fn func() error) error {
	if r.path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(r.handle); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", r.path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace %s: %w", r.path, err))
			return // thread stays locked: it is discarded when this goroutine ends
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialContext connects from inside the namespace. addr must hold an IP literal: a
// name lookup would run on other threads, in the daemon's namespace.
func (r *NetNS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if r.path == "" {
		return d.DialContext(ctx, network, addr)
	}
	var c net.Conn
	err := r.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen opens a listener inside the namespace (the socket keeps its
// namespace; Accept may run anywhere).
func (r *NetNS) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	if r.path == "" {
		return lc.Listen(ctx, network, addr)
	}
	var l net.Listener
	err := r.Do(func() error {
		var err error
		l, err = lc.Listen(ctx, network, addr)
		return err
	})
	return l, err
}
