// Package pushes exports ready images from the image store to other OCI
// registries: POST /pushes creates a job, GET /pushes lists them.
//
// What it owns: the push jobs, their queue and their records. A job goes
// queued → pushing → pushed, or failed with an error. The image is pushed
// exactly as it was pulled (same manifest digest, same compressed layers),
// read from the image store's OCI cache, with go-containerregistry's
// remote.Write; blobs the target already has are not sent again.
//
// Why it is shaped this way:
//   - Pushes are asynchronous (the API answers 202) because an image of
//     hundreds of MB takes minutes to upload; clients poll GET /pushes/{id}.
//   - At most Concurrency pushes upload at once (default 1): uploads compete
//     for the host's uplink and disk with pulls and guests; the others wait
//     in FIFO order and report their queue position.
//   - Every job is a versioned JSON record under Dir, replaced atomically on
//     each status change, so a restart keeps the history. A job that was
//     queued or pushing when the daemon stopped is marked failed ("daemon
//     restarted during push") rather than resumed: its credentials were
//     never written to disk, and a restart should not start uploads nobody
//     is watching.
//   - A push is a request the daemon makes on a client's behalf to a URL the
//     client names, so it goes through the image store's transport: it
//     connects only where the registry policy lets pulls connect
//     (registries_allow), and remote error bodies are reduced to registry
//     error codes and short messages before they reach a job's error.
//   - Credentials (username/password or a bearer token) live in memory for
//     the job only; they are never persisted or logged.
package pushes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"hypeman/internal/fsutil"
	"hypeman/internal/images"
)

// Status is where a push is in its life.
type Status string

const (
	StatusQueued  Status = "queued"  // waiting for a push slot
	StatusPushing Status = "pushing" // uploading blobs and the manifest
	StatusPushed  Status = "pushed"  // the target has the manifest
	StatusFailed  Status = "failed"  // see Error
)

// Errors callers branch on.
var (
	// ErrNotFound: no push with that id.
	ErrNotFound = errors.New("push not found")
	// ErrInvalid: a bad request (the message names the field).
	ErrInvalid = errors.New("invalid push request")
	// ErrClosed: the manager is shutting down.
	ErrClosed = errors.New("push manager closed")
)

// restartedError is the error of jobs found in flight at start.
const restartedError = "daemon restarted during push; push again"

// Push is a snapshot of one push job.
type Push struct {
	ID     string `json:"id"`
	Image  string `json:"image"`  // the image's recorded name
	Digest string `json:"digest"` // manifest digest pushed
	Target string `json:"target"` // the reference pushed to, as given
	// Insecure: plain HTTP was allowed to the target.
	Insecure bool   `json:"insecure,omitempty"`
	Status   Status `json:"status"`
	// QueuePosition is 1 for the next queued push to start (0 when not
	// queued). Not persisted.
	QueuePosition int    `json:"-"`
	Error         string `json:"error,omitempty"`
	// Layers and Bytes are the image's layer count and the bytes to send
	// (compressed layers, config and manifest); BytesDone counts what has
	// been sent or found present at the target.
	Layers      int        `json:"layers"`
	Bytes       int64      `json:"bytes"`
	BytesDone   int64      `json:"bytes_done"`
	CreatedAt   time.Time  `json:"created_at"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	CompletedAt *time.Time `json:"completed_at,omitempty"`
}

// record is the persisted form of a job.
type record struct {
	Version int `json:"version"`
	Push
}

const recordVersion = 1

// Request is one push to start.
type Request struct {
	Image  string // image name (any form the store accepts) or bare digest
	Target string // full reference of the destination
	// Insecure allows plain HTTP to the target registry.
	Insecure bool
	// Auth is the target's credentials (nil: anonymous).
	Auth authn.Authenticator
}

// Source is what the manager needs from the image store (*images.Store).
type Source interface {
	PushSource(ctx context.Context, ref string) (*images.PushSource, error)
	PushTransport(insecureHost string) http.RoundTripper
}

// Config configures a Manager.
type Config struct {
	// Dir holds one <id>.json per push (paths.PushesDir()).
	Dir string
	// Images is the image store. Required.
	Images Source
	// Concurrency bounds pushes running at once (default 1).
	Concurrency int
	// MaxRecords bounds the finished pushes kept (oldest dropped first;
	// default 1000).
	MaxRecords int
	Logger     *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Manager runs push jobs. Its methods are safe for concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	cond   *sync.Cond
	closed bool
	jobs   map[string]*job
	queue  []*job // queued, FIFO
}

type job struct {
	p    Push
	req  Request
	src  *images.PushSource
	done chan struct{}
}

// New opens the push records in cfg.Dir (marking in-flight ones failed) and
// starts the workers.
func New(cfg Config) (*Manager, error) {
	if cfg.Dir == "" || cfg.Images == nil {
		return nil, errors.New("pushes: Config.Dir and Config.Images are required")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.MaxRecords <= 0 {
		cfg.MaxRecords = 1000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("pushes: %w", err)
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, jobs: map[string]*job{}}
	m.cond = sync.NewCond(&m.mu)
	if err := m.load(); err != nil {
		return nil, err
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	for range cfg.Concurrency {
		m.wg.Add(1)
		go m.worker()
	}
	return m, nil
}

func (m *Manager) path(id string) string { return filepath.Join(m.cfg.Dir, id+".json") }

func (m *Manager) load() error {
	ents, err := os.ReadDir(m.cfg.Dir)
	if err != nil {
		return fmt.Errorf("pushes: %w", err)
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		var rec record
		if _, err := fsutil.ReadVersionedJSON(m.path(id), recordVersion, &rec); err != nil {
			// A newer or damaged record is left alone, not fatal.
			m.log.Warn("skipping unreadable push record", "file", e.Name(), "err", err)
			continue
		}
		if rec.ID != id {
			m.log.Warn("skipping push record whose id does not match its file", "file", e.Name())
			continue
		}
		j := &job{p: rec.Push, done: make(chan struct{})}
		close(j.done)
		if j.p.Status == StatusQueued || j.p.Status == StatusPushing {
			now := m.cfg.Now().UTC()
			j.p.Status, j.p.Error, j.p.CompletedAt = StatusFailed, restartedError, &now
			if err := m.save(&j.p); err != nil {
				return err
			}
		}
		m.jobs[id] = j
	}
	return nil
}

func (m *Manager) save(p *Push) error {
	if err := fsutil.WriteJSONAtomic(m.path(p.ID), record{Version: recordVersion, Push: *p}, 0o600); err != nil {
		return fmt.Errorf("pushes: %w", err)
	}
	return nil
}

// persist saves a job's current state; failures are logged (the in-memory
// state stays authoritative).
func (m *Manager) persist(j *job) {
	m.mu.Lock()
	p := j.p
	m.mu.Unlock()
	if err := m.save(&p); err != nil {
		m.log.Error("saving push record", "id", p.ID, "err", err)
	}
}

// Create validates req, resolves the image and queues the push. Errors:
// ErrInvalid (bad target), the image store's images.ErrNotFound,
// images.ErrNotReady and images.ErrNotCached.
func (m *Manager) Create(ctx context.Context, req Request) (*Push, error) {
	target := strings.TrimSpace(req.Target)
	ref, err := images.ParseTarget(target, req.Insecure)
	if err != nil {
		return nil, fmt.Errorf("%w: target: %v; give a full reference such as registry.example.com/team/app:1", ErrInvalid, err)
	}
	if strings.TrimSpace(req.Image) == "" {
		return nil, fmt.Errorf("%w: image is required", ErrInvalid)
	}
	src, err := m.cfg.Images.PushSource(ctx, req.Image)
	if err != nil {
		return nil, err
	}
	if d, ok := ref.(name.Digest); ok && d.DigestStr() != src.Digest {
		src.Release()
		return nil, fmt.Errorf("%w: target: %s pins digest %s but the image is %s; push by tag or pin %s",
			ErrInvalid, target, d.DigestStr(), src.Digest, src.Digest)
	}
	req.Target = target
	now := m.cfg.Now().UTC()
	j := &job{req: req, src: src, done: make(chan struct{}), p: Push{
		ID: newID(), Image: src.Name, Digest: src.Digest, Target: target, Insecure: req.Insecure,
		Status: StatusQueued, Layers: src.Layers, Bytes: src.Bytes, CreatedAt: now,
	}}
	if err := m.save(&j.p); err != nil {
		src.Release()
		return nil, err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		src.Release()
		os.Remove(m.path(j.p.ID))
		return nil, ErrClosed
	}
	m.jobs[j.p.ID] = j
	m.queue = append(m.queue, j)
	out := m.snapshotLocked(j)
	m.cond.Signal()
	m.mu.Unlock()
	m.log.Info("push queued", "id", out.ID, "image", out.Image, "digest", out.Digest, "target", out.Target)
	m.prune()
	return out, nil
}

// Get returns one push.
func (m *Manager) Get(ctx context.Context, id string) (*Push, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[id]
	if j == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return m.snapshotLocked(j), nil
}

// List returns every push, newest first.
func (m *Manager) List(ctx context.Context) ([]Push, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Push, 0, len(m.jobs))
	for _, j := range m.jobs {
		out = append(out, *m.snapshotLocked(j))
	}
	sort.Slice(out, func(a, b int) bool {
		if !out[a].CreatedAt.Equal(out[b].CreatedAt) {
			return out[a].CreatedAt.After(out[b].CreatedAt)
		}
		return out[a].ID > out[b].ID
	})
	return out, nil
}

// Wait blocks until push id has finished (or ctx ends) and returns it.
func (m *Manager) Wait(ctx context.Context, id string) (*Push, error) {
	m.mu.Lock()
	j := m.jobs[id]
	m.mu.Unlock()
	if j == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	select {
	case <-j.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return m.Get(ctx, id)
}

func (m *Manager) snapshotLocked(j *job) *Push {
	p := j.p
	if p.Status == StatusQueued {
		for i, q := range m.queue {
			if q == j {
				p.QueuePosition = i + 1
			}
		}
	}
	return &p
}

// prune drops the oldest finished records beyond MaxRecords.
func (m *Manager) prune() {
	m.mu.Lock()
	var finished []*job
	for _, j := range m.jobs {
		if j.p.Status == StatusPushed || j.p.Status == StatusFailed {
			finished = append(finished, j)
		}
	}
	excess := len(finished) - m.cfg.MaxRecords
	if excess <= 0 {
		m.mu.Unlock()
		return
	}
	sort.Slice(finished, func(a, b int) bool { return finished[a].p.CreatedAt.Before(finished[b].p.CreatedAt) })
	var ids []string
	for _, j := range finished[:excess] {
		delete(m.jobs, j.p.ID)
		ids = append(ids, j.p.ID)
	}
	m.mu.Unlock()
	for _, id := range ids {
		if err := os.Remove(m.path(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			m.log.Warn("removing old push record", "id", id, "err", err)
		}
	}
}

func (m *Manager) worker() {
	defer m.wg.Done()
	for {
		m.mu.Lock()
		for len(m.queue) == 0 && !m.closed {
			m.cond.Wait()
		}
		if m.closed {
			m.mu.Unlock()
			return
		}
		j := m.queue[0]
		m.queue = m.queue[1:]
		now := m.cfg.Now().UTC()
		j.p.Status, j.p.StartedAt = StatusPushing, &now
		m.mu.Unlock()
		m.persist(j)
		m.run(j)
	}
}

// run pushes one job and records the outcome.
func (m *Manager) run(j *job) {
	defer j.src.Release()
	t0 := time.Now()
	err := m.push(j)
	m.mu.Lock()
	now := m.cfg.Now().UTC()
	j.p.CompletedAt = &now
	if err != nil {
		j.p.Status, j.p.Error = StatusFailed, describe(err)
	} else {
		j.p.Status, j.p.BytesDone = StatusPushed, j.p.Bytes
	}
	p := j.p
	j.req.Auth = nil // drop the credentials with the job
	m.mu.Unlock()
	m.persist(j)
	close(j.done)
	if err != nil {
		m.log.Warn("push failed", "id", p.ID, "image", p.Image, "target", p.Target, "err", p.Error)
	} else {
		m.log.Info("push done", "id", p.ID, "image", p.Image, "digest", p.Digest, "target", p.Target,
			"bytes", p.Bytes, "elapsed", time.Since(t0).Round(time.Millisecond))
	}
}

func (m *Manager) push(j *job) error {
	ref, err := images.ParseTarget(j.p.Target, j.p.Insecure)
	if err != nil {
		return err
	}
	insecureHost := ""
	if j.p.Insecure {
		insecureHost = ref.Context().RegistryStr()
	}
	auth := j.req.Auth
	if auth == nil {
		auth = authn.Anonymous
	}
	progress := make(chan v1.Update, 16)
	stop, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		for {
			select {
			case u, ok := <-progress:
				if !ok {
					return
				}
				m.mu.Lock()
				if u.Complete > j.p.BytesDone {
					j.p.BytesDone = u.Complete
				}
				m.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	defer func() { close(stop); <-exited }()
	return remote.Write(ref, j.src.Image,
		remote.WithContext(m.ctx),
		remote.WithAuth(auth),
		remote.WithTransport(m.cfg.Images.PushTransport(insecureHost)),
		remote.WithUserAgent("hypeman"),
		remote.WithProgress(progress),
	)
}

// describe turns a push failure into the job's error: its kind (the same
// words as pull errors) and the cause, whose registry bodies the transport
// already reduced to error codes and short messages.
func describe(err error) string {
	if errors.Is(err, context.Canceled) {
		return "canceled: the daemon stopped during the push; push again"
	}
	kind := images.RegistryErrorKind(err)
	return fmt.Sprintf("%v: %v", kind, err)
}

// Close cancels running pushes (they end failed), marks queued ones failed
// and waits for the workers.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	queued := m.queue
	m.queue = nil
	now := m.cfg.Now().UTC()
	for _, j := range queued {
		j.p.Status, j.p.Error, j.p.CompletedAt = StatusFailed, "canceled: the daemon stopped before the push started; push again", &now
		j.req.Auth = nil
	}
	m.cond.Broadcast()
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	for _, j := range queued {
		j.src.Release()
		m.persist(j)
		close(j.done)
	}
	return nil
}

func newID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return "push-" + hex.EncodeToString(b[:])
}
