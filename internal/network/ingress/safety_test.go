package ingress_test

// Loopback only: listeners bind 127.0.0.0/8 addresses.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"hypeman/internal/network/ingress"
	"hypeman/internal/testutil"
	"hypeman/internal/testutil/tier"
)

func rule(port int) ingress.Rule {
	return ingress.Rule{Match: ingress.Match{Port: port}, Target: ingress.Target{Instance: "app", Port: 8080}}
}

// randomLoopback is an address in 127.0.0.0/8 other than 127.0.0.1, so a
// test may bind a privileged port without meeting other tests' listeners.
func randomLoopback() string {
	b := make([]byte, 3)
	rand.Read(b)
	return fmt.Sprintf("127.%d.%d.%d", b[0], b[1], 2+b[2]%250)
}

// The default listen address is loopback: an ingress created without an
// address does not take the port on any other address.
func TestDefaultListenAddressIsLoopback(t *testing.T) {
	m, err := ingress.New(context.Background(), ingress.Config{StateDir: t.TempDir()}, &fakeResolver{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	p := testutil.FreePort(t)
	if _, err := m.Create(context.Background(), ingress.CreateRequest{Name: "web", Rules: []ingress.Rule{rule(p)}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatalf("ingress not on 127.0.0.1: %v", err)
	}
	c.Close()
	// Linux refuses a bind to a specific address while a listener holds
	// the port on the wildcard address: this bind succeeds only when the
	// ingress bound loopback alone.
	other := fmt.Sprintf("%s:%d", randomLoopback(), p)
	l, err := net.Listen("tcp", other)
	if err != nil {
		t.Fatalf("port %d is taken beyond 127.0.0.1 (ingress listened on all addresses?): %v", p, err)
	}
	l.Close()
	if ingress.DefaultListenAddress != "127.0.0.1" {
		t.Fatalf("DefaultListenAddress %q", ingress.DefaultListenAddress)
	}
}

func TestPrivilegedPortsRefusedUnlessAllowed(t *testing.T) {
	ctx := context.Background()
	newM := func(t *testing.T, allowed []int) *ingress.Manager {
		m, err := ingress.New(ctx, ingress.Config{StateDir: t.TempDir(), ListenAddress: randomLoopback(), AllowedPrivilegedPorts: allowed}, &fakeResolver{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	refused := func(t *testing.T, m *ingress.Manager, req ingress.CreateRequest, field string) {
		t.Helper()
		_, err := m.Create(ctx, req)
		if !errors.Is(err, ingress.ErrInvalid) || !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), ingress.PrivilegedPortsSetting) {
			t.Fatalf("want ErrInvalid naming %s and the setting, got %v", field, err)
		}
		if list, _ := m.List(ctx); len(list) != 0 || len(m.Ports()) != 0 {
			t.Fatalf("a refused create left %d ingresses, ports %v", len(list), m.Ports())
		}
	}

	t.Run("default allows 80 and 443 only", func(t *testing.T) {
		tier.Root(t, "binds ports 80 and 443")
		m := newM(t, nil)
		for _, p := range []int{1, 22, 53, 1023} {
			refused(t, m, ingress.CreateRequest{Name: "x", Rules: []ingress.Rule{rule(testutil.FreePort(t)), rule(p)}}, "rules[1].match.port")
		}
		// A rule without a port gets 80, which the default allows.
		ing, err := m.Create(ctx, ingress.CreateRequest{Name: "web", Rules: []ingress.Rule{rule(0), rule(443), rule(testutil.FreePort(t))}})
		if err != nil {
			t.Fatal(err)
		}
		if ing.Rules[0].Match.Port != 80 || !slices.Contains(m.Ports(), 443) {
			t.Fatalf("rules %+v ports %v", ing.Rules, m.Ports())
		}
	})
	t.Run("an operator allows a port", func(t *testing.T) {
		tier.Root(t, "binds port 22")
		m := newM(t, []int{22})
		if _, err := m.Create(ctx, ingress.CreateRequest{Name: "ssh", Rules: []ingress.Rule{rule(22)}}); err != nil {
			t.Fatal(err)
		}
		refused(t, newM(t, []int{22}), ingress.CreateRequest{Name: "web", Rules: []ingress.Rule{rule(80)}}, "rules[0].match.port")
	})
	t.Run("empty list allows none, not even the default port", func(t *testing.T) {
		refused(t, newM(t, []int{}), ingress.CreateRequest{Name: "web", Rules: []ingress.Rule{rule(0)}}, "rules[0].match.port")
	})
	t.Run("a bad setting is refused at start", func(t *testing.T) {
		for _, bad := range [][]int{{0}, {1024}, {80, 8080}} {
			if _, err := ingress.New(ctx, ingress.Config{StateDir: t.TempDir(), AllowedPrivilegedPorts: bad}, &fakeResolver{}, nil); err == nil {
				t.Errorf("%v accepted", bad)
			}
		}
	})
	t.Run("restored rules keep working", func(t *testing.T) {
		tier.Root(t, "binds port 22")
		dir := t.TempDir()
		m1, err := ingress.New(ctx, ingress.Config{StateDir: dir, ListenAddress: randomLoopback(), AllowedPrivilegedPorts: []int{22}}, &fakeResolver{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m1.Create(ctx, ingress.CreateRequest{Name: "ssh", Rules: []ingress.Rule{rule(22)}}); err != nil {
			t.Fatal(err)
		}
		m1.Close()
		m2, err := ingress.New(ctx, ingress.Config{StateDir: dir, ListenAddress: randomLoopback()}, &fakeResolver{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m2.Close()
		if got := m2.Ports(); !slices.Equal(got, []int{22}) {
			t.Fatalf("ports after restart with a stricter setting: %v", got)
		}
	})
}

// fakePublisher records what the manager publishes.
type fakePublisher struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakePublisher) PublishPorts(_ context.Context, listen string, ports []int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("%s %v", listen, ports))
	return nil
}

func (f *fakePublisher) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return ""
	}
	return f.calls[len(f.calls)-1]
}

func TestPublisherFollowsListeners(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pub := &fakePublisher{}
	m, err := ingress.New(ctx, ingress.Config{StateDir: dir, Publisher: pub}, &fakeResolver{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := pub.last(); got != "127.0.0.1 []" {
		t.Fatalf("at start: %q", got)
	}
	p1, p2 := testutil.FreePort(t), testutil.FreePort(t)
	if _, err := m.Create(ctx, ingress.CreateRequest{Name: "a", Rules: []ingress.Rule{rule(p1)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, ingress.CreateRequest{Name: "b", Rules: []ingress.Rule{rule(p2)}}); err != nil {
		t.Fatal(err)
	}
	if got, want := pub.last(), fmt.Sprintf("127.0.0.1 %v", sorted(p1, p2)); got != want {
		t.Fatalf("after creates: %q, want %q", got, want)
	}
	if err := m.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got, want := pub.last(), fmt.Sprintf("127.0.0.1 [%d]", p2); got != want {
		t.Fatalf("after delete: %q, want %q", got, want)
	}
	m.Close()
	if got := pub.last(); got != "127.0.0.1 []" {
		t.Fatalf("after close: %q", got)
	}
	// A restart publishes the restored listeners.
	pub2 := &fakePublisher{}
	m2, err := ingress.New(ctx, ingress.Config{StateDir: dir, Publisher: pub2}, &fakeResolver{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if got, want := pub2.last(), fmt.Sprintf("127.0.0.1 [%d]", p2); got != want {
		t.Fatalf("after restart: %q, want %q", got, want)
	}
}

func sorted(a ...int) []int {
	slices.Sort(a)
	return a
}
