package pushes

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/goleak"

	"hypeman/internal/fsutil"
	"hypeman/internal/images"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/tier"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// fixture is an image store holding one pulled image.
type fixture struct {
	store *images.Store
	img   v1.Image
	ref   string // the source reference, pulled
}

// newFixture pulls a two-layer test image from an in-process registry into
// a fresh store. allow is the store's registries_allow (default loopback).
func newFixture(t *testing.T, allow []string) *fixture {
	t.Helper()
	tier.Root(t, "image conversion gives files their owners (chown to any uid)")
	src := testimage.RegistryWith(t, nil)
	img := testimage.Busybox(t, testimage.Options{Files: []testimage.File{{Path: "/app/hello", Data: []byte("hi\n"), Mode: 0o644}}})
	ref := testimage.Push(t, src, "src/app:v1", img)
	if allow == nil {
		allow = []string{"127.0.0.0/8"}
	} else {
		allow = append(allow, src)
	}
	st, err := images.New(images.Config{Dir: t.TempDir(), Keychain: authn.NewMultiKeychain(), AllowRegistries: allow,
		DenyPublicRegistries: true}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Pull(ctxT(t), ref); err != nil {
		t.Fatal(err)
	}
	return &fixture{store: st, img: img, ref: ref}
}

func newManager(t *testing.T, src Source, dir string, conc int) *Manager {
	t.Helper()
	m, err := New(Config{Dir: dir, Images: src, Concurrency: conc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestPushToRegistry(t *testing.T) {
	f := newFixture(t, nil)
	dst := testimage.RegistryWith(t, nil)
	dir := t.TempDir()
	m := newManager(t, f.store, dir, 1)
	target := dst + "/mirror/app:exported"
	p, err := m.Create(ctxT(t), Request{Image: f.ref, Target: target})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := f.img.Digest()
	if p.Digest != want.String() || p.Layers != 2 || p.Bytes <= 0 || p.Status == StatusFailed {
		t.Fatalf("created push %+v; want digest %s, 2 layers, bytes > 0", p, want)
	}
	done, err := m.Wait(ctxT(t), p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if done.Status != StatusPushed || done.CompletedAt == nil || done.BytesDone != done.Bytes || done.Error != "" {
		t.Fatalf("push ended %+v; want pushed with every byte counted", done)
	}

	// Read the image back from the target: same manifest, same layers.
	r, _ := name.ParseReference(target)
	desc, err := remote.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != want {
		t.Errorf("target has %s, want %s", desc.Digest, want)
	}
	got, err := desc.Image()
	if err != nil {
		t.Fatal(err)
	}
	testimage.CheckSameImage(t, got, f.img)

	// The record is on disk, versioned.
	var rec record
	if v, err := fsutil.ReadVersionedJSON(filepath.Join(dir, p.ID+".json"), recordVersion, &rec); err != nil || v != recordVersion || rec.Status != StatusPushed {
		t.Errorf("record on disk: version %d, status %q, err %v", v, rec.Status, err)
	}

	// A second push is listed first.
	p2, err := m.Create(ctxT(t), Request{Image: f.ref, Target: dst + "/mirror/app:again"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Wait(ctxT(t), p2.ID); err != nil {
		t.Fatal(err)
	}
	list, _ := m.List(ctxT(t))
	if len(list) != 2 || list[0].ID != p2.ID || list[1].ID != p.ID {
		t.Errorf("List order %v, want newest (%s) first", ids(list), p2.ID)
	}
}

func ids(ps []Push) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.ID)
	}
	return out
}

func TestPushRequestErrors(t *testing.T) {
	f := newFixture(t, nil)
	m := newManager(t, f.store, t.TempDir(), 1)
	if _, err := m.Create(ctxT(t), Request{Image: "nope/missing:v1", Target: "127.0.0.1:1/x:y"}); !errors.Is(err, images.ErrNotFound) {
		t.Errorf("unknown image: %v, want images.ErrNotFound", err)
	}
	for _, target := range []string{"", "UPPER/Case::x", "../../etc/passwd", "host:1/a//b"} {
		_, err := m.Create(ctxT(t), Request{Image: f.ref, Target: target})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "target") {
			t.Errorf("target %q: %v, want ErrInvalid naming target", target, err)
		}
	}
	d, _ := f.img.Digest()
	_, err := m.Create(ctxT(t), Request{Image: f.ref, Target: "127.0.0.1:1/x@sha256:" + strings.Repeat("0", 64)})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), d.String()) {
		t.Errorf("target pinned to another digest: %v, want ErrInvalid naming %s", err, d)
	}
	if _, err := m.Get(ctxT(t), "push-nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get unknown: %v, want ErrNotFound", err)
	}
	if list, _ := m.List(ctxT(t)); len(list) != 0 {
		t.Errorf("refused requests left records: %v", ids(list))
	}
}

// failedPush creates a push of f's image to target and waits for it.
func failedPush(t *testing.T, m *Manager, f *fixture, req Request) *Push {
	t.Helper()
	req.Image = f.ref
	p, err := m.Create(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	p, err = m.Wait(ctxT(t), p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != StatusFailed || p.CompletedAt == nil {
		t.Fatalf("push to %s: %+v, want failed", req.Target, p)
	}
	return p
}

func TestPushFailures(t *testing.T) {
	f := newFixture(t, nil)
	m := newManager(t, f.store, t.TempDir(), 2)

	t.Run("unreachable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		p := failedPush(t, m, f, Request{Target: addr + "/x/y:z"})
		t.Logf("error: %s", p.Error)
		if !strings.Contains(p.Error, images.ErrRegistryUnreachable.Error()) {
			t.Errorf("error %q does not say the registry is unreachable", p.Error)
		}
	})

	t.Run("bad credentials", func(t *testing.T) {
		dst := testimage.RegistryWith(t, func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "right" {
					w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
					w.WriteHeader(http.StatusUnauthorized)
					io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad password"}]}`)
					return
				}
				next.ServeHTTP(w, r)
			})
		})
		p := failedPush(t, m, f, Request{Target: dst + "/x/y:z", Auth: &authn.Basic{Username: "alice", Password: "wrong"}})
		t.Logf("error: %s", p.Error)
		if !strings.Contains(p.Error, images.ErrUnauthorized.Error()) {
			t.Errorf("error %q does not say access was denied", p.Error)
		}
		if strings.Contains(p.Error, "wrong") {
			t.Errorf("error %q repeats the password", p.Error)
		}
		// The right credentials work against the same registry.
		ok, err := m.Create(ctxT(t), Request{Image: f.ref, Target: dst + "/x/y:z", Auth: &authn.Basic{Username: "alice", Password: "right"}})
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ = m.Wait(ctxT(t), ok.ID); ok.Status != StatusPushed {
			t.Errorf("push with the right credentials: %+v", ok)
		}
	})

	t.Run("remote body stripped", func(t *testing.T) {
		const secret = "internal-secret-body-7f3a"
		dst := testimage.RegistryWith(t, func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost {
					next.ServeHTTP(w, r)
					return
				}
				// Starting an upload answers a page that is no registry
				// error (a 4xx: no retries).
				w.WriteHeader(http.StatusBadRequest)
				io.WriteString(w, "<html>"+secret+"</html>")
			})
		})
		p := failedPush(t, m, f, Request{Target: dst + "/x/y:z"})
		t.Logf("error: %s", p.Error)
		if strings.Contains(p.Error, secret) {
			t.Errorf("error %q quotes the remote body", p.Error)
		}
	})
}

func TestPushReachPolicy(t *testing.T) {
	// The store may reach only the source registry's port on loopback.
	f := newFixture(t, []string{})
	dst := testimage.RegistryWith(t, nil)
	m := newManager(t, f.store, t.TempDir(), 1)
	p := failedPush(t, m, f, Request{Target: dst + "/x/y:z"})
	t.Logf("error: %s", p.Error)
	if !strings.Contains(p.Error, images.ErrRegistryNotAllowed.Error()) || !strings.Contains(p.Error, "registries_allow") {
		t.Errorf("push to a loopback registry outside registries_allow: %q; want registry address not allowed", p.Error)
	}
}

func TestQueueAndRestart(t *testing.T) {
	f := newFixture(t, nil)
	release := make(chan struct{})
	entered := make(chan struct{}, 10)
	dst := testimage.RegistryWith(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v2/" {
				select {
				case entered <- struct{}{}:
				default:
				}
				<-release
			}
			next.ServeHTTP(w, r)
		})
	})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	dir := t.TempDir()
	m := newManager(t, f.store, dir, 1)
	var ps []*Push
	for i := range 3 {
		p, err := m.Create(ctxT(t), Request{Image: f.ref, Target: dst + "/q/app:" + string(rune('a'+i))})
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	select {
	case <-entered:
	case <-ctxT(t).Done():
		t.Fatal("first push never reached the registry")
	}
	first, _ := m.Get(ctxT(t), ps[0].ID)
	second, _ := m.Get(ctxT(t), ps[1].ID)
	third, _ := m.Get(ctxT(t), ps[2].ID)
	if first.Status != StatusPushing || second.Status != StatusQueued || second.QueuePosition != 1 || third.QueuePosition != 2 {
		t.Fatalf("with one slot: %s/%d, %s/%d, %s/%d; want pushing, queued 1, queued 2",
			first.Status, first.QueuePosition, second.Status, second.QueuePosition, third.Status, third.QueuePosition)
	}

	// Simulate a daemon that died here: copy the records as they are on
	// disk now into a fresh directory and open a new manager on it.
	dir2 := t.TempDir()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir2, e.Name()), b, 0o600)
	}
	// A record from a newer hypemand is skipped, not fatal.
	os.WriteFile(filepath.Join(dir2, "push-future.json"), []byte(`{"version": 99, "id": "push-future"}`), 0o600)
	close(release)
	m2 := newManager(t, f.store, dir2, 1)
	list, _ := m2.List(ctxT(t))
	if len(list) != 3 {
		t.Fatalf("after restart %d pushes, want 3", len(list))
	}
	for _, p := range list {
		if p.Status != StatusFailed || p.Error != restartedError || p.CompletedAt == nil {
			t.Errorf("in-flight push %s after restart: %s %q; want failed %q", p.ID, p.Status, p.Error, restartedError)
		}
		var rec record
		fsutil.ReadVersionedJSON(filepath.Join(dir2, p.ID+".json"), recordVersion, &rec)
		if rec.Status != StatusFailed {
			t.Errorf("record of %s on disk: %s, want failed persisted", p.ID, rec.Status)
		}
	}
	// The original manager finishes its queue once the registry answers.
	for _, p := range ps {
		done, err := m.Wait(ctxT(t), p.ID)
		if err != nil || done.Status != StatusPushed {
			t.Errorf("push %s: %+v %v, want pushed", p.ID, done, err)
		}
	}
}

// BenchmarkPush100MB exports a ~100 MB image (half incompressible) from the
// store's OCI cache to an empty in-process registry on loopback.
func BenchmarkPush100MB(b *testing.B) {
	tier.Root(b, "image conversion gives files their owners (chown to any uid)")
	src := testimage.Registry(b)
	img := testimage.Large(b, 100<<20)
	ref := testimage.Push(b, src, "bench/large:latest", img)
	st, err := images.New(images.Config{Dir: b.TempDir(), Keychain: authn.NewMultiKeychain(),
		AllowRegistries: []string{"127.0.0.0/8"}}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Pull(ctxT(b), ref); err != nil {
		b.Fatal(err)
	}
	m, err := New(Config{Dir: b.TempDir(), Images: st})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	var bytes int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dst := testimage.Registry(b) // empty: every blob is sent
		b.StartTimer()
		p, err := m.Create(ctxT(b), Request{Image: ref, Target: dst + "/bench/out:v1"})
		if err != nil {
			b.Fatal(err)
		}
		if p, err = m.Wait(ctxT(b), p.ID); err != nil || p.Status != StatusPushed {
			b.Fatalf("push: %+v %v", p, err)
		}
		bytes = p.Bytes
	}
	b.ReportMetric(float64(bytes)/1e6, "pushed-MB")
}
