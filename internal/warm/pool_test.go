package warm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeBuilder writes a template of size bytes and records its builds.
type fakeBuilder struct {
	mu     sync.Mutex
	builds []Key
	size   int
	fail   error
}

func (b *fakeBuilder) BuildTemplate(_ context.Context, key Key, _ string, dir string) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.builds = append(b.builds, key)
	if b.fail != nil {
		return nil, b.fail
	}
	if err := os.MkdirAll(filepath.Join(dir, SnapshotDirName), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "overlay.ext4"), make([]byte, b.size), 0o644); err != nil {
		return nil, err
	}
	return []string{"overlay.ext4"}, nil
}

func (b *fakeBuilder) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.builds)
}

type countMetrics struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *countMetrics) WarmEvent(e string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[e]++
}

func (c *countMetrics) get(e string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[e]
}

// envVar is a mutable Env source.
type envVar struct {
	mu  sync.Mutex
	env Env
}

func (v *envVar) get(context.Context) (Env, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.env, nil
}

func (v *envVar) set(e Env) {
	v.mu.Lock()
	v.env = e
	v.mu.Unlock()
}

func newTestPool(t *testing.T, cfg Config, env *envVar, b Builder, m Metrics) *Pool {
	t.Helper()
	p, err := New(context.Background(), cfg, env.get, b, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func idle(t *testing.T, p *Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
}

func shape(digest string) Shape {
	return Shape{ImageDigest: digest, MemoryMiB: 256, VCPUs: 1, OverlayBytes: 1 << 30, NIC: true}
}

func TestKeyIDCoversEveryField(t *testing.T) {
	base := Key{Shape: shape("sha256:a"), Env: Env{KernelHash: "k", InitrdHash: "i", Cmdline: "c", VMMBuild: "q", GuestFormat: 1}}
	variants := []func(*Key){
		func(k *Key) { k.ImageDigest = "sha256:b" },
		func(k *Key) { k.MemoryMiB++ },
		func(k *Key) { k.BalloonMiB++ },
		func(k *Key) { k.VCPUs++ },
		func(k *Key) { k.OverlayBytes++ },
		func(k *Key) { k.DiskIOBps++ },
		func(k *Key) { k.NIC = false },
		func(k *Key) { k.KernelHash = "k2" },
		func(k *Key) { k.InitrdHash = "i2" },
		func(k *Key) { k.Cmdline = "c2" },
		func(k *Key) { k.VMMBuild = "q2" },
		func(k *Key) { k.GuestFormat++ },
	}
	seen := map[string]int{base.ID(): -1}
	for i, v := range variants {
		k := base
		v(&k)
		if j, dup := seen[k.ID()]; dup {
			t.Fatalf("variant %d has the same ID as %d", i, j)
		}
		seen[k.ID()] = i
	}
	if base.ID() != (Key{Shape: shape("sha256:a"), Env: base.Env}).ID() || len(base.ID()) != 24 {
		t.Fatalf("ID not stable: %s", base.ID())
	}
}

// The initrd's content hash follows the file, also when it is rewritten
// in place with the same size.
func TestEnvProbeRehashesChangedFiles(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	os.WriteFile(initrd, []byte("initrd-1"), 0o644)
	p := &EnvProbe{KernelPath: kernel, InitrdPath: initrd, GuestFormat: 3,
		VMMBuild: func(context.Context) (string, error) { return "qemu 7.2", nil }}
	e1, err := p.Env(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if e1.VMMBuild != "qemu 7.2" || e1.GuestFormat != 3 || e1.KernelHash == "" {
		t.Fatalf("env %+v", e1)
	}
	if e, _ := p.Env(context.Background()); e != e1 {
		t.Fatalf("unchanged files, different env: %+v", e)
	}
	if err := os.WriteFile(initrd, []byte("initrd-2"), 0o644); err != nil { // same size
		t.Fatal(err)
	}
	e2, err := p.Env(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if e2.InitrdHash == e1.InitrdHash || e2.KernelHash != e1.KernelHash {
		t.Fatalf("after rewriting the initrd: %+v, before %+v", e2, e1)
	}
}

func TestPoolBuildLookupAndMetrics(t *testing.T) {
	env := &envVar{env: Env{KernelHash: "k", InitrdHash: "i1"}}
	b := &fakeBuilder{size: 10}
	m := &countMetrics{}
	p := newTestPool(t, Config{Dir: t.TempDir()}, env, b, m)
	ctx := context.Background()
	if tpl, err := p.Lookup(ctx, shape("a")); err != nil || tpl != nil {
		t.Fatalf("empty pool: %v %v", tpl, err)
	}
	p.Request(ctx, shape("a"), "img-a")
	p.Request(ctx, shape("a"), "img-a") // deduplicated
	idle(t, p)
	p.Request(ctx, shape("a"), "img-a") // exists: no build
	idle(t, p)
	if b.count() != 1 {
		t.Fatalf("builds: %d", b.count())
	}
	tpl, err := p.Lookup(ctx, shape("a"))
	if err != nil || tpl == nil {
		t.Fatalf("lookup after build: %v %v", tpl, err)
	}
	if _, err := os.Stat(filepath.Join(tpl.Dir(), "overlay.ext4")); err != nil {
		t.Fatal(err)
	}
	p.Release(tpl)
	if tpl, _ := p.Lookup(ctx, shape("b")); tpl != nil {
		t.Fatal("another shape got a template")
	}
	if m.get("hit") != 1 || m.get("miss") != 2 || m.get("build") != 1 {
		t.Fatalf("metrics %v", m.n)
	}
}

// A changed Env (here: the initrd's hash) never serves the old template,
// deletes it, and the next request builds for the new Env.
func TestPoolInvalidatesOnEnvChange(t *testing.T) {
	env := &envVar{env: Env{KernelHash: "k", InitrdHash: "i1"}}
	b := &fakeBuilder{size: 10}
	m := &countMetrics{}
	dir := t.TempDir()
	p := newTestPool(t, Config{Dir: dir}, env, b, m)
	ctx := context.Background()
	p.Request(ctx, shape("a"), "img")
	idle(t, p)
	old, _ := p.Lookup(ctx, shape("a"))
	if old == nil {
		t.Fatal("no template")
	}
	p.Release(old)
	env.set(Env{KernelHash: "k", InitrdHash: "i2"})
	if tpl, _ := p.Lookup(ctx, shape("a")); tpl != nil {
		t.Fatal("a stale template was served after the initrd changed")
	}
	if _, err := os.Stat(old.Dir()); !os.IsNotExist(err) {
		t.Fatalf("stale template dir still there: %v", err)
	}
	if m.get("invalidate") != 1 {
		t.Fatalf("metrics %v", m.n)
	}
	p.Request(ctx, shape("a"), "img")
	idle(t, p)
	tpl, _ := p.Lookup(ctx, shape("a"))
	if tpl == nil || tpl.Key.InitrdHash != "i2" {
		t.Fatalf("rebuilt template %+v", tpl)
	}
	p.Release(tpl)
}

// LRU: the pool keeps MaxTemplates; the least recently used goes first,
// never one in use.
func TestPoolLRUEviction(t *testing.T) {
	env := &envVar{env: Env{KernelHash: "k"}}
	b := &fakeBuilder{size: 10}
	p := newTestPool(t, Config{Dir: t.TempDir(), MaxTemplates: 2}, env, b, nil)
	clock := time.Unix(1000, 0)
	p.mu.Lock()
	p.now = func() time.Time { clock = clock.Add(time.Second); return clock }
	p.mu.Unlock()
	ctx := context.Background()
	for _, d := range []string{"a", "b"} {
		p.Request(ctx, shape(d), d)
		idle(t, p)
	}
	// Use a, then add c: b is the least recently used.
	ta, _ := p.Lookup(ctx, shape("a"))
	p.Release(ta)
	p.Request(ctx, shape("c"), "c")
	idle(t, p)
	has := func(d string) bool {
		tpl, _ := p.Lookup(ctx, shape(d))
		if tpl != nil {
			p.Release(tpl)
		}
		return tpl != nil
	}
	if !has("a") || has("b") || !has("c") {
		t.Fatalf("after eviction: a %v b %v c %v", has("a"), has("b"), has("c"))
	}
	// In use: a (held) is kept even though it is now the oldest.
	held, _ := p.Lookup(ctx, shape("a"))
	// c was used last by has(); make a the oldest by using c again.
	tc, _ := p.Lookup(ctx, shape("c"))
	p.Release(tc)
	p.Request(ctx, shape("d"), "d")
	idle(t, p)
	if _, err := os.Stat(held.Dir()); err != nil {
		t.Fatalf("a template in use was deleted: %v", err)
	}
	p.Release(held)
	if st := p.Status(); st.Templates != 2 {
		t.Fatalf("templates: %d", st.Templates)
	}
}

func TestPoolByteCap(t *testing.T) {
	env := &envVar{env: Env{KernelHash: "k"}}
	b := &fakeBuilder{size: 64 << 10}
	p := newTestPool(t, Config{Dir: t.TempDir(), MaxBytes: 100 << 10}, env, b, nil)
	ctx := context.Background()
	for _, d := range []string{"a", "b"} {
		p.Request(ctx, shape(d), d)
		idle(t, p)
	}
	if st := p.Status(); st.Templates != 1 || st.Bytes > 100<<10 {
		t.Fatalf("status %+v", st)
	}
}

// A failed build is not retried at once; its dir is removed.
func TestPoolFailedBuild(t *testing.T) {
	env := &envVar{env: Env{KernelHash: "k"}}
	b := &fakeBuilder{fail: errors.New("boom")}
	m := &countMetrics{}
	dir := t.TempDir()
	p := newTestPool(t, Config{Dir: dir}, env, b, m)
	ctx := context.Background()
	p.Request(ctx, shape("a"), "a")
	idle(t, p)
	p.Request(ctx, shape("a"), "a")
	idle(t, p)
	if b.count() != 1 || m.get("build_failed") != 1 {
		t.Fatalf("builds %d, metrics %v", b.count(), m.n)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
}

// At start: matching templates are served, stale and incomplete ones are
// deleted, and stale ones are rebuilt only with RebuildOnStart.
func TestPoolLoadAtStart(t *testing.T) {
	ctx := context.Background()
	for _, rebuild := range []bool{false, true} {
		dir := t.TempDir()
		env := &envVar{env: Env{KernelHash: "k1"}}
		start := func() (*Pool, *fakeBuilder) {
			b := &fakeBuilder{size: 10}
			p, err := New(ctx, Config{Dir: dir, RebuildOnStart: rebuild}, env.get, b, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			idle(t, p)
			return p, b
		}
		p, _ := start()
		p.Request(ctx, shape("a"), "a")
		idle(t, p)
		p.Close()
		os.MkdirAll(filepath.Join(dir, "half-built.building"), 0o755)

		// Same Env: served without a build; the half-built dir is gone.
		p, b := start()
		tpl, _ := p.Lookup(ctx, shape("a"))
		if tpl == nil || b.count() != 0 {
			t.Fatalf("a matching template was not kept across the restart (builds %d)", b.count())
		}
		p.Release(tpl)
		p.Close()
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Fatalf("dir entries %d, want 1", len(ents))
		}

		// Changed Env (kernel): deleted; rebuilt only when asked.
		env.set(Env{KernelHash: "k2"})
		p, b = start()
		tpl, _ = p.Lookup(ctx, shape("a"))
		if rebuild != (tpl != nil) || b.count() != map[bool]int{false: 0, true: 1}[rebuild] {
			t.Fatalf("rebuild_on_start=%v: stale shape served %v, builds %d", rebuild, tpl != nil, b.count())
		}
		if tpl != nil {
			if tpl.Key.KernelHash != "k2" {
				t.Fatalf("rebuilt for %+v", tpl.Key.Env)
			}
			p.Release(tpl)
		}
		p.Close()
		if ents, _ := os.ReadDir(dir); len(ents) != map[bool]int{false: 0, true: 1}[rebuild] {
			t.Fatalf("dir entries %d", len(ents))
		}
	}
}
