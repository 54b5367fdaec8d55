package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"hypeman/internal/autostandby"
	"hypeman/internal/daemon"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil/testimage"
)

// An httpd instance with idle_timeout 5s stays Running while a client in
// this test's netns keeps a request in flight (a connection open past the
// timeout), and goes to Standby by itself after the connection closes.
// Short requests in between restart the countdown.
func TestAutoStandbyIdleHTTP(t *testing.T) {
	t.Parallel()
	nettest.RequireRoot(t)
	const idle = 5 * time.Second
	d, in, ip := httpdInstance(t, "asweb", &autostandby.Policy{Enabled: true, IdleTimeout: idle.String()})
	if d.AutoStandby == nil {
		t.Fatal("no auto-standby controller with bridge networking")
	}
	ctx := context.Background()
	addr := net.JoinHostPort(ip, "8080")
	get := func() string {
		t.Helper()
		c, err := d.Network.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(c)
		return string(b)
	}
	status := func() autostandby.Status {
		t.Helper()
		st, err := d.AutoStandby.InstanceStatus(ctx, in.ID)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	waitFor(t, "observed", 30*time.Second, func() bool { return status().Status == autostandby.StatusIdleCountdown })
	before := time.Now()
	if body := get(); !strings.Contains(body, "hello") {
		t.Fatalf("page: %q", body)
	}
	// A short request between two polls is activity: the countdown restarts.
	waitFor(t, "the short request seen", 30*time.Second, func() bool {
		st := status()
		return st.LastInboundActivityAt != nil && st.IdleSince != nil && !st.IdleSince.Before(before)
	})

	// A slow request: the headers never finish, so httpd keeps the
	// connection open (its header timeout is 60s).
	slow, err := d.Network.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "GET / HTTP/1.0\r\nX-Slow: 1\r\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the open connection seen", 30*time.Second, func() bool {
		st := status()
		return st.Status == autostandby.StatusActive && st.ActiveInboundConnections == 1
	})
	opened := time.Now()
	// Hold it open for idle_timeout plus margin: the instance must stay up.
	for time.Since(opened) < 2*idle {
		if g := mustGet(t, d, in.ID); g.State != state.Running {
			t.Fatalf("instance went %s while a request was in flight", g.State)
		}
		if st := status(); st.ActiveInboundConnections != 1 {
			t.Fatalf("status while the request is in flight: %+v", st)
		}
		time.Sleep(250 * time.Millisecond)
	}
	slow.Close()
	closed := time.Now()
	waitFor(t, "countdown after the last connection closed", 30*time.Second, func() bool {
		st := status()
		return st.Status == autostandby.StatusIdleCountdown && st.IdleSince != nil && st.ActiveInboundConnections == 0
	})
	waitFor(t, "Standby after idle_timeout", 90*time.Second, func() bool { return mustGet(t, d, in.ID).State == state.Standby })
	if el := time.Since(closed); el < idle {
		t.Fatalf("standby %s after the last connection closed, before idle_timeout %s", el, idle)
	}
	t.Logf("standby %s after the last connection closed (idle_timeout %s)", time.Since(closed).Round(100*time.Millisecond), idle)
	if st := status(); st.Status != autostandby.StatusIneligible || st.Reason != autostandby.ReasonInstanceNotRunning {
		t.Fatalf("status on standby: %+v", st)
	}
	// Restored, it serves again and the countdown starts over.
	if _, err := d.Instances.Restore(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if body := get(); !strings.Contains(body, "hello") {
		t.Fatalf("page after restore: %q", body)
	}
	waitFor(t, "Standby again", 90*time.Second, func() bool { return mustGet(t, d, in.ID).State == state.Standby })
}

// The race of hypeman's PR #318, on a real VM: a client connects while the
// auto-standby re-check has the VM paused. The host's conntrack table shows
// the connection to the paused guest (so the controller's check refuses the
// standby), the VM is resumed, and the request is served, not cut.
func TestAutoStandbyConnectionWhilePausedIsServed(t *testing.T) {
	t.Parallel()
	nettest.RequireRoot(t)
	// No policy: only this test's StandbyIfIdle acts on the instance.
	d, in, ip := httpdInstance(t, "asrace", nil)
	ctx := context.Background()
	guest := netip.MustParseAddr(ip)
	obs := autostandby.ConntrackObserver{InNS: d.Network.InNetNS}
	type reply struct {
		body string
		err  error
	}
	got := make(chan reply, 1)
	err := d.Instances.StandbyIfIdle(ctx, in.ID, func(ctx context.Context) error {
		if st := mustGet(t, d, in.ID).State; st != state.Paused {
			return fmt.Errorf("check ran in state %s, want Paused", st)
		}
		go func() {
			c, err := d.Network.DialContext(ctx, "tcp", net.JoinHostPort(ip, "8080"))
			if err != nil {
				got <- reply{err: err}
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
				got <- reply{err: err}
				return
			}
			b, err := io.ReadAll(c)
			got <- reply{string(b), err}
		}()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			conns, err := obs.Connections(ctx, map[netip.Addr]bool{guest: true})
			if err != nil {
				return err
			}
			for _, c := range conns {
				if c.Active && c.DstPort == 8080 {
					return autostandby.ErrBusy
				}
			}
		}
		return errors.New("the connection to the paused guest never showed in conntrack")
	})
	if !errors.Is(err, autostandby.ErrBusy) {
		t.Fatalf("StandbyIfIdle: %v, want ErrBusy (connection seen while paused)", err)
	}
	if st := mustGet(t, d, in.ID).State; st != state.Running {
		t.Fatalf("after the refused standby: %s, want Running", st)
	}
	select {
	case r := <-got:
		if r.err != nil || !strings.Contains(r.body, "hello") {
			t.Fatalf("the request made while paused: %q, %v", r.body, r.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the request made while paused got no answer")
	}
}

// httpdInstance starts a daemon with bridge networking in a netns of the
// test and a Running busybox httpd instance (port 8080, "hello") with
// policy; it returns the daemon, the instance and its guest address once
// httpd answers (Running is the program's start, not its listen), so a
// refused connection later can only be the test's or the controller's doing.
func httpdInstance(t *testing.T, name string, policy *autostandby.Policy) (*daemon.Daemon, *instances.Instance, string) {
	t.Helper()
	ns := nettest.NewNS(t)
	d := newDaemonWith(t, map[string]string{"network_mode": "bridge", "network_netns": ns})
	ref := testimage.Push(t, testimage.Registry(t), "test/"+name, testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: name, Image: ref, Size: "256MB", VCPUs: 1, AutoStandby: policy})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Instances.Delete(context.Background(), in.ID) })
	waitFor(t, "Running", 90*time.Second, func() bool { return mustGet(t, d, in.ID).State == state.Running })
	ip, err := d.Instances.GuestIP(ctx, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "httpd serving", 60*time.Second, func() bool {
		c, err := d.Network.DialContext(ctx, "tcp", net.JoinHostPort(ip, "8080"))
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			return false
		}
		b, _ := io.ReadAll(c)
		return strings.Contains(string(b), "hello")
	})
	return d, in, ip
}
