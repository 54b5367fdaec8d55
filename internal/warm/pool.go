// Package warm owns the pool of pre-booted templates behind warm create.
//
// What: for a Key (image digest + VM hardware, the Shape, and the host's
// kernel, initrd, kernel command line, VMM build and guest contract
// version, the Env) the pool keeps at most one template: a guest booted
// in template mode to "ready to run a program" (modules loaded, image and
// a fresh overlay mounted, agent serving), paused and saved, with the
// disks it had open. A create whose key matches is served by restoring that
// state into the new instance's dir (package instances does that, through
// the same restore machinery as fork) instead of booting a kernel.
//
// Why a package of its own: the pool's policy (keys, which templates to
// keep, when to build, when a template is stale) has nothing to do with an
// instance's lifecycle; instances only asks "is there a template for this
// key" and "build one for it", and implements the build (Builder), because
// booting a VM is its business.
//
// Rules:
//   - A template is served only for an equal Key. The Env is recomputed on
//     every lookup (hashes cached by file identity), so a changed kernel,
//     initrd or VMM never gets a stale template; templates of another Env
//     are deleted as soon as a lookup sees the change, and at start.
//   - Builds run in the background, one at a time, requested after a cold
//     create of a shape without a template (Request). A failed build is not
//     retried for that key until the next Request after failedRetry.
//   - Capped in count and bytes: the least recently used templates are
//     evicted (never one being copied by a create).
//   - After a daemon restart the templates on disk that still match the
//     Env are served; stale ones are deleted and rebuilt only with
//     Config.RebuildOnStart.
package warm

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"hypeman/internal/fsutil"
)

// Config configures a Pool.
type Config struct {
	// Dir holds one directory per template (paths.TemplatesDir).
	Dir string
	// MaxTemplates and MaxBytes cap the pool (LRU eviction). 0 = default.
	MaxTemplates int
	MaxBytes     int64
	// RebuildOnStart rebuilds, at start, the templates deleted because
	// their Env no longer matches.
	RebuildOnStart bool
}

// Defaults of Config.
const (
	DefaultMaxTemplates = 4
	DefaultMaxBytes     = 4 << 30
)

// Builder builds a template: it boots a guest in template mode for key
// from image into dir (empty, exists), waits until it is ready, saves its
// state into filepath.Join(dir, SnapshotDirName) and ends the VM. It
// returns the files of dir a clone must have in its own dir (copies) to be
// restored.
type Builder interface {
	BuildTemplate(ctx context.Context, key Key, image, dir string) (files []string, err error)
}

// Metrics counts pool events: "hit", "miss", "build", "build_failed",
// "evict", "invalidate".
type Metrics interface {
	WarmEvent(event string)
}

// SnapshotDirName is the saved state's dir inside a template dir.
const SnapshotDirName = "snapshot"

// recordName is the template record inside a template dir; its presence
// marks a complete template.
const recordName = "template.json"

// recordVersion is the format version of template.json.
const recordVersion = 1

// BuildingSuffix marks the dir of a template being built (renamed into
// place when complete). A daemon killed mid-build leaves one behind; New
// deletes it (its VM, if still alive, must be ended first by the builder's
// owner).
const BuildingSuffix = ".building"

// failedRetry is how long a key whose build failed is not built again.
const failedRetry = 10 * time.Minute

// Template is one saved template.
type Template struct {
	Version   int       `json:"version"`
	Key       Key       `json:"key"`
	Image     string    `json:"image"`
	Files     []string  `json:"files"`
	Bytes     int64     `json:"bytes"`
	CreatedAt time.Time `json:"created_at"`

	dir      string
	lastUsed time.Time
	users    int  // creates copying it right now
	doomed   bool // removed from the pool; deleted when users reaches 0
}

// Dir is the template's directory.
func (t *Template) Dir() string { return t.dir }

// SnapshotDir is its saved state.
func (t *Template) SnapshotDir() string { return filepath.Join(t.dir, SnapshotDirName) }

// Status is the pool as /capabilities shows it.
type Status struct {
	Templates int   `json:"templates"`
	Bytes     int64 `json:"bytes"`
	Building  bool  `json:"building"`
	Queued    int   `json:"queued"`
}

type buildReq struct {
	key   Key
	image string
}

// Pool is the template pool.
type Pool struct {
	cfg     Config
	env     func(ctx context.Context) (Env, error)
	builder Builder
	metrics Metrics
	log     *slog.Logger
	now     func() time.Time

	mu        sync.Mutex
	templates map[string]*Template // by Key.ID
	lastEnv   *Env
	queue     []buildReq
	queued    map[string]bool // key IDs queued or building
	building  bool
	failed    map[string]time.Time
	wake      chan struct{}

	cancel context.CancelFunc
	done   chan struct{}
}

// New loads the templates in cfg.Dir (deleting incomplete ones and those
// whose Env differs from the current one) and starts the build worker.
// env computes the current Env (EnvProbe.Env).
func New(ctx context.Context, cfg Config, env func(ctx context.Context) (Env, error), b Builder, m Metrics, log *slog.Logger) (*Pool, error) {
	if cfg.MaxTemplates <= 0 {
		cfg.MaxTemplates = DefaultMaxTemplates
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{
		cfg: cfg, env: env, builder: b, metrics: m, log: log, now: time.Now,
		templates: map[string]*Template{}, queued: map[string]bool{}, failed: map[string]time.Time{},
		wake: make(chan struct{}, 1), done: make(chan struct{}),
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("warm: %w", err)
	}
	cur, err := env(ctx)
	if err != nil {
		return nil, err
	}
	p.lastEnv = &cur
	if err := p.load(cur); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel = cancel
	go p.worker(wctx)
	return p, nil
}

// Close stops the worker (a build in progress is cancelled; its dir is
// removed) and waits for it.
func (p *Pool) Close() {
	p.cancel()
	<-p.done
}

func (p *Pool) event(e string) {
	if p.metrics != nil {
		p.metrics.WarmEvent(e)
	}
}

// load reads the template dirs (New only).
func (p *Pool) load(cur Env) error {
	ents, err := os.ReadDir(p.cfg.Dir)
	if err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	for _, de := range ents {
		dir := filepath.Join(p.cfg.Dir, de.Name())
		var t Template
		_, err := fsutil.ReadVersionedJSON(filepath.Join(dir, recordName), recordVersion, &t)
		switch {
		case err != nil:
			p.log.Info("warm: removing an incomplete or unreadable template", "dir", dir, "err", err)
		case t.Key.ID() != de.Name():
			p.log.Info("warm: removing a template whose record does not match its dir", "dir", dir)
		case t.Key.Env != cur:
			p.log.Info("warm: removing a stale template (kernel, initrd, VMM or guest format changed)", "dir", dir)
			p.event("invalidate")
			if p.cfg.RebuildOnStart {
				k := t.Key
				k.Env = cur
				p.enqueueLocked(buildReq{key: k, image: t.Image})
			}
		default:
			t.dir, t.lastUsed = dir, t.CreatedAt
			p.templates[de.Name()] = &t
			continue
		}
		os.RemoveAll(dir)
	}
	return nil
}

// Lookup returns the template for shape under the current Env, or nil (a
// miss). A returned template must be released with Release once its files
// are copied (it is not evicted before).
func (p *Pool) Lookup(ctx context.Context, shape Shape) (*Template, error) {
	cur, err := p.env(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.invalidateLocked(cur)
	t := p.templates[Key{Shape: shape, Env: cur}.ID()]
	if t == nil {
		p.event("miss")
		return nil, nil
	}
	p.event("hit")
	t.users++
	t.lastUsed = p.now()
	return t, nil
}

// Release ends a Lookup's use of t.
func (p *Pool) Release(t *Template) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t.users--
	if t.users == 0 && t.doomed {
		os.RemoveAll(t.dir)
	}
}

// Discard drops a template a create found unusable (its restore failed):
// it is deleted and built again on the next Request.
func (p *Pool) Discard(t *Template, why error) {
	p.log.Warn("warm: discarding a template", "dir", t.dir, "err", why)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.templates[t.Key.ID()] == t {
		p.removeLocked(t)
	}
}

// invalidateLocked removes the templates of another Env once the Env
// changed.
func (p *Pool) invalidateLocked(cur Env) {
	if p.lastEnv != nil && *p.lastEnv == cur {
		return
	}
	p.lastEnv = &cur
	for _, t := range p.templates {
		if t.Key.Env != cur {
			p.log.Info("warm: template invalidated (kernel, initrd, VMM or guest format changed)", "dir", t.dir)
			p.event("invalidate")
			p.removeLocked(t)
		}
	}
}

func (p *Pool) removeLocked(t *Template) {
	delete(p.templates, t.Key.ID())
	t.doomed = true
	if t.users == 0 {
		os.RemoveAll(t.dir)
	}
}

// Request asks for a template for shape built from image (a name or
// reference the builder resolves to shape.ImageDigest), in the
// background. It does nothing when one exists, is queued or building, or
// failed recently.
func (p *Pool) Request(ctx context.Context, shape Shape, image string) {
	cur, err := p.env(ctx)
	if err != nil {
		p.log.Warn("warm: cannot request a template", "err", err)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.invalidateLocked(cur)
	p.enqueueLocked(buildReq{key: Key{Shape: shape, Env: cur}, image: image})
}

func (p *Pool) enqueueLocked(r buildReq) {
	id := r.key.ID()
	if p.templates[id] != nil || p.queued[id] {
		return
	}
	if t, ok := p.failed[id]; ok && p.now().Sub(t) < failedRetry {
		return
	}
	p.queued[id] = true
	p.queue = append(p.queue, r)
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Status reports the pool.
func (p *Pool) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Status{Templates: len(p.templates), Building: p.building, Queued: len(p.queue)}
	for _, t := range p.templates {
		s.Bytes += t.Bytes
	}
	return s
}

// WaitIdle waits until no build is queued or running (tests, benchmarks).
func (p *Pool) WaitIdle(ctx context.Context) error {
	for {
		p.mu.Lock()
		idle := !p.building && len(p.queue) == 0
		p.mu.Unlock()
		if idle {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *Pool) worker(ctx context.Context) {
	defer close(p.done)
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
				continue
			}
		}
		r := p.queue[0]
		p.queue = p.queue[1:]
		p.building = true
		p.mu.Unlock()

		t, err := p.build(ctx, r)

		p.mu.Lock()
		p.building = false
		delete(p.queued, r.key.ID())
		switch {
		case err != nil:
			p.failed[r.key.ID()] = p.now()
		case p.lastEnv == nil || *p.lastEnv != r.key.Env:
			// The Env changed while it was built: stale on arrival.
			os.RemoveAll(t.dir)
		default:
			p.templates[r.key.ID()] = t
			p.evictLocked()
		}
		p.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
	}
}

// build runs one build into a temporary dir and renames it into place.
func (p *Pool) build(ctx context.Context, r buildReq) (*Template, error) {
	id := r.key.ID()
	final := filepath.Join(p.cfg.Dir, id)
	tmp := final + BuildingSuffix
	os.RemoveAll(tmp)
	os.RemoveAll(final)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	t0 := p.now()
	files, err := p.builder.BuildTemplate(ctx, r.key, r.image, tmp)
	if err == nil {
		t := &Template{Version: recordVersion, Key: r.key, Image: r.image, Files: files, CreatedAt: p.now().UTC()}
		t.Bytes = diskUsage(tmp)
		if err = fsutil.WriteJSONAtomic(filepath.Join(tmp, recordName), t, 0o644); err == nil {
			err = os.Rename(tmp, final)
		}
		if err == nil {
			t.dir, t.lastUsed = final, p.now()
			p.event("build")
			p.log.Info("warm: template built", "dir", final, "image", r.image, "digest", r.key.ImageDigest,
				"bytes", t.Bytes, "took", p.now().Sub(t0))
			return t, nil
		}
	}
	os.RemoveAll(tmp)
	p.event("build_failed")
	p.log.Warn("warm: template build failed", "image", r.image, "err", err)
	return nil, err
}

// evictLocked removes least recently used templates until the pool fits
// its caps (templates in use are skipped).
func (p *Pool) evictLocked() {
	for {
		var total int64
		for _, t := range p.templates {
			total += t.Bytes
		}
		if len(p.templates) <= p.cfg.MaxTemplates && total <= p.cfg.MaxBytes {
			return
		}
		var cands []*Template
		for _, t := range p.templates {
			if t.users == 0 {
				cands = append(cands, t)
			}
		}
		if len(cands) == 0 {
			return
		}
		lru := slices.MinFunc(cands, func(a, b *Template) int { return a.lastUsed.Compare(b.lastUsed) })
		p.log.Info("warm: evicting the least recently used template", "dir", lru.dir, "bytes", lru.Bytes)
		p.event("evict")
		p.removeLocked(lru)
	}
}

// diskUsage is the allocated size of the files under dir (sparse files
// count what they hold).
func diskUsage(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}
