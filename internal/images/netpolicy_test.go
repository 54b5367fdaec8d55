package images

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"hypeman/internal/testutil/testimage"
)

func TestRegistryPolicyDecisions(t *testing.T) {
	p, err := newRegistryPolicy([]string{"10.1.0.0/16", "192.168.5.5", "[fd00::1]:5000", "reg.lan:5000", "127.0.0.1:9000"},
		false, "0.0.0.0:8080", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ip   string
		port uint16
		want bool
	}{
		{"93.184.216.34", 443, true},   // public
		{"2606:4700::1111", 443, true}, // public v6
		{"127.0.0.1", 5000, false},
		{"127.0.0.1", 9000, true}, // listed ip:port
		{"127.0.0.1", 8080, true}, // the daemon's own listener
		{"::1", 8080, true},
		{"::ffff:127.0.0.1", 5000, false}, // v4-mapped loopback
		{"10.0.0.1", 443, false},
		{"10.1.2.3", 443, true}, // listed CIDR
		{"192.168.5.5", 1, true},
		{"192.168.5.6", 443, false},
		{"169.254.169.254", 80, false}, // cloud metadata
		{"100.64.1.1", 443, false},     // CGNAT
		{"0.0.0.0", 443, false},
		{"fd00::1", 5000, true},
		{"fd00::1", 5001, false},
		{"fe80::1", 443, false},
		{"64:ff9b::a00:1", 443, false}, // NAT64 of 10.0.0.1
		{"224.0.0.1", 443, false},
		{"198.18.0.1", 443, false},
	} {
		if got, why := p.allowIP(netip.MustParseAddr(c.ip), c.port); got != c.want {
			t.Errorf("allowIP(%s:%d) = %v (%s), want %v", c.ip, c.port, got, why, c.want)
		}
	}
	if !p.listedName("REG.lan", "5000") || p.listedName("reg.lan", "5001") {
		t.Error("name entries: host:port must match exactly, case-insensitively")
	}
	strict, _ := newRegistryPolicy(nil, true, "", nil, nil)
	if ok, why := strict.allowIP(netip.MustParseAddr("93.184.216.34"), 443); ok || !strings.Contains(why, "registries_allow_public") {
		t.Errorf("public address with public denied: %v %s", ok, why)
	}
	for _, bad := range []string{"..", "a b", "reg.lan:99999", "-x.example"} {
		if _, err := newRegistryPolicy([]string{bad}, false, "", nil, nil); err == nil {
			t.Errorf("allow entry %q accepted", bad)
		}
	}
	px, _ := newRegistryPolicy(nil, false, "", nil, func(k string) string {
		return map[string]string{"HTTPS_PROXY": "http://10.9.9.9:3128"}[k]
	})
	if !px.listedName("10.9.9.9", "3128") {
		t.Error("a configured proxy must be dialable")
	}
}

// fixedResolver answers every lookup with the same addresses and counts.
type fixedResolver struct {
	addrs []netip.Addr
	calls atomic.Int64
}

func (r *fixedResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.calls.Add(1)
	return r.addrs, nil
}

// TestPullRefusesNonPublicRegistries: by default a pull never connects to
// a loopback or private registry, whether named by address or by a name
// that resolves there; listing it lets the pull through.
func TestPullRefusesNonPublicRegistries(t *testing.T) {
	needsChown(t)
	var hits atomic.Int64
	host := startRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1); h.ServeHTTP(w, r) })
	})
	testimage.Push(t, host, "probe:v1", testimage.Busybox(t, testimage.Options{Cmd: []string{"true"}}))
	pushed := hits.Load()
	_, port, _ := net.SplitHostPort(host)

	// A name under .test never resolves through DNS: only the store's
	// resolver can map it, so a pull that works proves the dialer used the
	// address it checked.
	res := &fixedResolver{addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	named := "registry.hypeman.test:" + port
	s := newTestStore(t, Config{AllowRegistries: []string{}, Resolver: res, Insecure: []string{named}})
	for _, ref := range []string{host + "/probe:v1", "localhost:" + port + "/probe:v1", named + "/probe:v1"} {
		_, err := s.Pull(ctxT(t), ref)
		if !errors.Is(err, ErrRegistryNotAllowed) || ErrorKindOf(err) != "registry_not_allowed" {
			t.Fatalf("pull %s: %v, want ErrRegistryNotAllowed", ref, err)
		}
		if !strings.Contains(err.Error(), "127.0.0.1") || !strings.Contains(err.Error(), "registries_allow") {
			t.Errorf("error does not say which address and how to allow it: %v", err)
		}
	}
	if n := hits.Load() - pushed; n != 0 {
		t.Fatalf("the refused pulls reached the registry %d times", n)
	}
	if res.calls.Load() == 0 {
		t.Fatal("the name was not resolved through the store's resolver")
	}

	allowed := newTestStore(t, Config{AllowRegistries: []string{"127.0.0.1"}, Resolver: res, Insecure: []string{named}})
	img, err := allowed.Pull(ctxT(t), named+"/probe:v1")
	if err != nil || img.Status != StatusReady {
		t.Fatalf("pull from an allowed registry by name: %+v %v", img, err)
	}
}

// TestRedirectsAreCheckedToo: an allowed registry cannot send the pull to
// an address that is not allowed (blob redirects go to other hosts).
func TestRedirectsAreCheckedToo(t *testing.T) {
	var elsewhere atomic.Int64
	other := startRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1); h.ServeHTTP(w, r) })
	})
	host := startRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				http.Redirect(w, r, "http://"+other+r.URL.Path, http.StatusTemporaryRedirect)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	img := testimage.Busybox(t, testimage.Options{Cmd: []string{"true"}})
	testimage.Push(t, host, "probe:v1", img)
	testimage.Push(t, other, "probe:v1", img)
	before := elsewhere.Load()
	s := newTestStore(t, Config{AllowRegistries: []string{host}})
	_, err := s.Pull(ctxT(t), host+"/probe:v1")
	if !errors.Is(err, ErrRegistryNotAllowed) {
		t.Fatalf("pull redirected to %s: %v, want ErrRegistryNotAllowed", other, err)
	}
	if n := elsewhere.Load() - before; n != 0 {
		t.Fatalf("the redirect target was reached %d times", n)
	}
}

// TestPullErrorsDoNotEchoBodies: what a registry (or anything posing as
// one) answers in an error body never reaches the image's error, except
// registry error codes and short messages.
func TestPullErrorsDoNotEchoBodies(t *testing.T) {
	host := startRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.Contains(r.URL.Path, "/plain/"):
				w.Header().Set("Content-Type", "text/plain")
				w.WriteHeader(http.StatusTeapot)
				w.Write([]byte("SECRET-INTERNAL-PAGE root:x:0:0"))
			case strings.Contains(r.URL.Path, "/structured/"):
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				w.Write([]byte(`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no such manifest","detail":"SECRET-DETAIL"}]}`))
			default:
				h.ServeHTTP(w, r)
			}
		})
	})
	s := newTestStore(t, Config{})
	_, err := s.Pull(ctxT(t), host+"/plain/app:v1")
	if err == nil || strings.Contains(err.Error(), "SECRET") || !strings.Contains(err.Error(), "418") {
		t.Fatalf("plain error body: %v", err)
	}
	_, err = s.Pull(ctxT(t), host+"/structured/app:v1")
	if err == nil || strings.Contains(err.Error(), "SECRET") || !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") ||
		!strings.Contains(err.Error(), "no such manifest") || !errors.Is(err, ErrNotFoundUpstream) {
		t.Fatalf("structured error body: %v", err)
	}
	t.Logf("errors: %v", err)
}
