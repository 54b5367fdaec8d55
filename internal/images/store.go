package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"hypeman/internal/fsutil"
)

// Status is where an image is in its life.
type Status string

const (
	StatusPending    Status = "pending"    // accepted, waiting for a pull slot
	StatusPulling    Status = "pulling"    // resolving, downloading and flattening layers
	StatusConverting Status = "converting" // building the root disk
	StatusReady      Status = "ready"      // disk built; instances can boot it
	StatusFailed     Status = "failed"     // see Error / ErrorKind; Ensure starts over
)

// ImageConfig is the part of the OCI config a VM needs to run the program.
type ImageConfig struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"` // KEY=VALUE, image order
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// Progress counts compressed layer bytes read so far against the manifest's
// total. It is meaningful while Status is pulling.
type Progress struct {
	BytesDone   int64 `json:"bytes_done"`
	BytesTotal  int64 `json:"bytes_total"`
	LayersDone  int   `json:"layers_done"`
	LayersTotal int   `json:"layers_total"`
}

// Image is a snapshot of one named image.
type Image struct {
	Name   string `json:"name"`             // normalized, e.g. docker.io/library/busybox:latest
	Digest string `json:"digest,omitempty"` // manifest digest (linux/amd64 manifest, not the index)
	// Platform is the image's os/arch[/variant] (known once resolved).
	Platform   string            `json:"platform,omitempty"`
	Tags       map[string]string `json:"tags,omitempty"` // user-defined, see internal/tags
	Status     Status            `json:"status"`
	Error      string            `json:"error,omitempty"`
	ErrorKind  string            `json:"error_kind,omitempty"` // see ErrorKindOf
	Progress   Progress          `json:"progress"`
	Config     ImageConfig       `json:"config"`
	SizeBytes  int64             `json:"size_bytes,omitempty"` // root disk file size
	DiskPath   string            `json:"disk_path,omitempty"`
	DiskFormat DiskFormat        `json:"disk_format,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
	UpdatedAt  time.Time         `json:"updated_at"`
}

// Config configures a Store.
type Config struct {
	// Dir is the store directory, e.g. paths.ImagesDir().
	Dir string
	// Insecure lists registries ("host" or "host:port") that may be used
	// over plain HTTP. Loopback (127.0.0.0/8, ::1, localhost) always may.
	Insecure []string
	// Keychain resolves registry credentials (default authn.DefaultKeychain).
	Keychain authn.Keychain
	// DiskFormat is auto (default), erofs or ext4.
	DiskFormat DiskFormat
	// Platform selects the image from an index (default linux/amd64).
	Platform v1.Platform
	// MaxConcurrentPulls bounds pulls running at once (default 2).
	MaxConcurrentPulls int
	// StagingDir is where layers are flattened before mkfs (default
	// <Dir>/tmp). The staging tree is deleted after each conversion. Putting
	// it on a tmpfs makes conversion several times faster on slow disks
	// (file creation dominates), at the cost of RAM equal to the image's
	// unpacked size while it converts.
	StagingDir string
	// Transport is the base HTTP transport (default: a fresh transport with
	// 30 s dial and 10 s TLS handshake timeouts, dialing through the
	// registry policy). The plain-HTTP guard wraps it. A custom transport
	// does its own dialing: the registry policy then only sees IP literals.
	Transport http.RoundTripper
	// LocalRegistry reports whether a registry host ("host:port") is
	// hypemand's own registry: references through it name pushed images
	// and are never pulled (see local.go). nil: none is.
	LocalRegistry func(host string) bool

	// AllowRegistries lists what pulls may connect to besides public
	// addresses: "host", "host:port", an IP or a CIDR. Loopback, private,
	// link-local and other non-public addresses are refused unless listed.
	AllowRegistries []string
	// DenyPublicRegistries refuses public addresses not in AllowRegistries.
	DenyPublicRegistries bool
	// SelfAddr is the daemon's listen address: its built-in registry may
	// always be pulled from.
	SelfAddr string
	// Resolver resolves registry host names (default net.DefaultResolver).
	Resolver Resolver
	// Limits cap each image (zero: no limit).
	Limits Limits
	// DisableOCICache stops keeping manifests, configs and compressed
	// layers next to the root disks (ocicache.go). Images then take only
	// their disk's space but cannot be pushed to another registry.
	DisableOCICache bool
}

// Store is the image store. Its methods are safe for concurrent use.
type Store struct {
	cfg        Config
	log        *slog.Logger
	disk       diskBuilder
	transport  http.RoundTripper
	ownTr      *http.Transport // closed on Close when we created it
	policy     httpPolicy
	registries *registryPolicy
	cache      *ociCache // nil when Config.DisableOCICache

	ctx    context.Context // canceled by Close; parent of every job
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sem    chan struct{}

	persistMu sync.Mutex // serializes index.json / image.json writes

	mu      sync.Mutex
	closed  bool
	names   map[string]*nameEntry  // normalized name → entry (persisted in index.json)
	digests map[string]*diskRecord // digest → ready disk (image.json)
	jobs    map[string]*job        // name → running pull/import
	flights map[string]*flight     // digest → running download+conversion
	subs    map[*subscriber]struct{}
}

// nameEntry is one name in index.json.
type nameEntry struct {
	Digest string `json:"digest,omitempty"`
	// Local marks an image pushed to hypemand's own registry (see local.go).
	Local     bool              `json:"local,omitempty"`
	Tags      map[string]string `json:"tags,omitempty"`
	Status    Status            `json:"status"`
	Error     string            `json:"error,omitempty"`
	ErrorKind string            `json:"error_kind,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`

	err error // the last failure, with its type, while the process lives
}

type indexFile struct {
	Version int                   `json:"version"`
	Names   map[string]*nameEntry `json:"names"`
}

// Persisted format versions (a file without "version" is version 1; a
// newer one is refused with fsutil.VersionError).
const (
	indexVersion      = 1 // index.json
	diskRecordVersion = 1 // image.json
)

// diskRecord is image.json in a digest directory; its presence marks the
// disk complete.
type diskRecord struct {
	Version          int         `json:"version"`
	Digest           string      `json:"digest"`
	Names            []string    `json:"names"`
	Config           ImageConfig `json:"config"`
	SizeBytes        int64       `json:"size_bytes"`
	DiskFormat       DiskFormat  `json:"disk_format"`
	DiskFormatReason string      `json:"disk_format_reason"`
	DiskFile         string      `json:"disk_file"`
	// Platform is os/arch[/variant] from the image config ("" in records
	// written before it was recorded: the store's platform).
	Platform  string       `json:"platform,omitempty"`
	CreatedAt time.Time    `json:"created_at"`
	Stats     ConvertStats `json:"stats"`
}

// ConvertStats records what a conversion cost.
type ConvertStats struct {
	Layers          int   `json:"layers"`
	CompressedBytes int64 `json:"compressed_bytes"`
	Entries         int   `json:"entries"`       // tar entries applied
	ContentBytes    int64 `json:"content_bytes"` // regular file bytes written
	FetchMillis     int64 `json:"fetch_flatten_ms"`
	MkfsMillis      int64 `json:"mkfs_ms"`
}

// job is one running pull (ref set) or import (img set) for a name.
type job struct {
	name   string
	ref    name.Reference
	img    v1.Image
	auth   authn.Authenticator // this pull's own credentials (nil: the keychain)
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	flight *flight // guarded by Store.mu
	status Status  // guarded by Store.mu
}

// flight is the download+conversion of one digest, shared by every job
// whose name resolved to it.
type flight struct {
	digest      string
	status      Status // guarded by Store.mu
	done        chan struct{}
	err         error
	bytesDone   atomic.Int64
	bytesTotal  atomic.Int64
	layersDone  atomic.Int64
	layersTotal atomic.Int64
	lastPub     atomic.Int64 // unix nanos of the last progress publish
}

type subscriber struct {
	name string // "" = every image
	ch   chan Image
}

// New opens (or creates) the store in cfg.Dir. Records left in pending,
// pulling or converting by a previous process are marked failed
// (ErrInterrupted); leftovers of unfinished conversions are removed.
func New(cfg Config, logger *slog.Logger) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("images: Config.Dir is required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Keychain == nil {
		cfg.Keychain = authn.DefaultKeychain
	}
	if cfg.Platform.OS == "" {
		cfg.Platform = v1.Platform{OS: "linux", Architecture: "amd64"}
	}
	if cfg.MaxConcurrentPulls <= 0 {
		cfg.MaxConcurrentPulls = 2
	}
	disk, err := chooseDisk(cfg.DiskFormat, exec.LookPath)
	if err != nil {
		return nil, err
	}
	s := &Store{
		cfg:     cfg,
		log:     logger,
		disk:    disk,
		policy:  newHTTPPolicy(cfg.Insecure),
		sem:     make(chan struct{}, cfg.MaxConcurrentPulls),
		names:   map[string]*nameEntry{},
		digests: map[string]*diskRecord{},
		jobs:    map[string]*job{},
		flights: map[string]*flight{},
		subs:    map[*subscriber]struct{}{},
	}
	s.registries, err = newRegistryPolicy(cfg.AllowRegistries, cfg.DenyPublicRegistries, cfg.SelfAddr, cfg.Resolver, os.Getenv)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	base := cfg.Transport
	if base == nil {
		dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		s.ownTr = &http.Transport{
			Proxy: http.ProxyFromEnvironment,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return s.registries.DialContext(ctx, dialer, network, addr)
			},
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          20,
			MaxIdleConnsPerHost:   10,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}
		base = s.ownTr
	}
	s.transport = guardTransport{base: base, policy: s.policy, registries: s.registries, ownDialer: cfg.Transport == nil,
		maxManifest: cfg.Limits.MaxManifestBytes}
	for _, d := range []string{cfg.Dir, s.disksDir(), s.tmpDir(), s.stagingDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("images: %w", err)
		}
	}
	if !cfg.DisableOCICache {
		if s.cache, err = newOCICache(filepath.Join(cfg.Dir, "oci-cache"), logger); err != nil {
			return nil, fmt.Errorf("images: %w", err)
		}
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	if s.cache != nil {
		s.cache.adopt(slices.Collect(maps.Keys(s.digests)))
		s.cache.gc()
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.log.Info("image store open", "dir", cfg.Dir, "disk_format", disk.format, "reason", disk.reason,
		"images", len(s.names), "disks", len(s.digests))
	return s, nil
}

func (s *Store) indexPath() string { return filepath.Join(s.cfg.Dir, "index.json") }
func (s *Store) disksDir() string  { return filepath.Join(s.cfg.Dir, "disks") }
func (s *Store) tmpDir() string    { return filepath.Join(s.cfg.Dir, "tmp") }

func (s *Store) stagingDir() string {
	if s.cfg.StagingDir != "" {
		return s.cfg.StagingDir
	}
	return s.tmpDir()
}

// digestDir is <Dir>/disks/<algo>-<hex>.
func (s *Store) digestDir(digest string) string {
	return filepath.Join(s.disksDir(), strings.Replace(digest, ":", "-", 1))
}

// stagePrefix names this store's staging dirs (unique per store Dir, so
// two stores can share a StagingDir).
func (s *Store) stagePrefix() string {
	sum := sha256.Sum256([]byte(s.cfg.Dir))
	return "stage-" + hex.EncodeToString(sum[:4]) + "-"
}

// DiskFormat reports the format new disks are built in and why.
func (s *Store) DiskFormat() (DiskFormat, string) { return s.disk.format, s.disk.reason }

// load reads index.json and the digest directories, repairing what a crash
// may have left behind.
func (s *Store) load() error {
	// Staging dirs and half-deleted disks of a previous process.
	if ents, err := os.ReadDir(s.tmpDir()); err == nil {
		for _, e := range ents {
			os.RemoveAll(filepath.Join(s.tmpDir(), e.Name()))
		}
	}
	if s.stagingDir() != s.tmpDir() {
		// A shared staging dir may hold other stores' work: only ours.
		if ents, err := os.ReadDir(s.stagingDir()); err == nil {
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), s.stagePrefix()) {
					os.RemoveAll(filepath.Join(s.stagingDir(), e.Name()))
				}
			}
		}
	}
	ents, err := os.ReadDir(s.disksDir())
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	// Disks whose image.json has a format this build does not know: kept
	// (a newer hypemand wrote them), their names are reported failed.
	unreadable := map[string]error{}
	for _, e := range ents {
		dir := filepath.Join(s.disksDir(), e.Name())
		var rec diskRecord
		_, err := fsutil.ReadVersionedJSON(filepath.Join(dir, "image.json"), diskRecordVersion, &rec)
		var ve *fsutil.VersionError
		if errors.As(err, &ve) {
			s.log.Error("image disk record has an unknown format; keeping it unused", "dir", dir, "err", err)
			unreadable[strings.Replace(e.Name(), "-", ":", 1)] = err
			continue
		}
		if err == nil && rec.Digest != "" && s.digestDir(rec.Digest) == dir {
			if _, serr := os.Stat(filepath.Join(dir, rec.DiskFile)); serr == nil {
				s.digests[rec.Digest] = &rec
				continue
			}
		}
		s.log.Warn("removing incomplete image disk dir", "dir", dir, "err", err)
		os.RemoveAll(dir)
	}

	var idx indexFile
	_, err = fsutil.ReadVersionedJSON(s.indexPath(), indexVersion, &idx)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("images: %w", err)
	}
	changed := false
	now := time.Now().UTC()
	for n, e := range idx.Names {
		if e == nil {
			continue
		}
		switch e.Status {
		case StatusPending, StatusPulling, StatusConverting:
			e.Status, e.Error, e.ErrorKind = StatusFailed, "interrupted: the daemon stopped during the pull; pull again to retry", ErrorKindOf(ErrInterrupted)
			e.UpdatedAt, changed = now, true
		case StatusReady:
			if uerr := unreadable[e.Digest]; uerr != nil {
				// Failed for this process only; index.json keeps
				// "ready" unless something else rewrites it.
				e.Status, e.Error = StatusFailed, "root disk unusable: "+uerr.Error()
			} else if s.digests[e.Digest] == nil {
				e.Status, e.Error, e.ErrorKind = StatusFailed, "root disk missing from the store; pull again", ErrorKindOf(ErrInterrupted)
				e.UpdatedAt, changed = now, true
			}
		}
		s.names[n] = e
	}
	// Disks no name points at (a crash during Delete) are garbage.
	for d := range s.digests {
		if len(s.namesForLocked(d)) == 0 {
			s.log.Warn("removing unreferenced image disk", "digest", d)
			os.RemoveAll(s.digestDir(d))
			delete(s.digests, d)
		}
	}
	if changed {
		return s.saveIndex()
	}
	return nil
}

// Close cancels running pulls, waits for them and closes subscriptions.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	for sub := range s.subs {
		close(sub.ch)
		delete(s.subs, sub)
	}
	s.mu.Unlock()
	if s.ownTr != nil {
		s.ownTr.CloseIdleConnections()
	}
	return nil
}

// Ensure makes sure the image named ref is, or is becoming, ready, and
// returns its current record at once. A running pull of the same name is
// joined; a ready image is returned as is (no registry round trip); a failed
// one is pulled again. A pinned reference whose digest is already on disk
// becomes ready immediately without touching the network.
func (s *Store) Ensure(ctx context.Context, ref string, opts EnsureOptions) (*Image, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	setTags := func(e *nameEntry) {
		if opts.Tags != nil {
			e.Tags = maps.Clone(opts.Tags)
		}
	}
	if n, local, err := s.resolveLocked(ref); err != nil || local {
		defer s.mu.Unlock()
		switch e := s.names[n]; {
		case err != nil:
			return nil, err
		case e == nil:
			return nil, fmt.Errorf("%w: %s was never pushed to this server's registry (push it to /v2/ first)", ErrNotFound, n)
		default:
			setTags(e)
			return s.snapshotLocked(n), nil
		}
	}
	s.mu.Unlock()
	p, err := parseRef(ref, s.policy.allowed)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	if j := s.jobs[p.name]; j != nil {
		if opts.Auth != nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("%w: a pull of %s is already running; retry with your credentials when it ends", ErrPullInFlight, p.name)
		}
		setTags(s.names[p.name])
		img := s.snapshotLocked(p.name)
		s.mu.Unlock()
		s.persist("")
		return img, nil
	}
	if e := s.names[p.name]; e != nil && e.Status == StatusReady && s.digests[e.Digest] != nil {
		setTags(e)
		img := s.snapshotLocked(p.name)
		s.mu.Unlock()
		if opts.Tags != nil {
			s.persist("")
		}
		return img, nil
	}
	if d, ok := p.ref.(name.Digest); ok && s.digests[d.DigestStr()] != nil {
		now := time.Now().UTC()
		e := s.names[p.name]
		if e == nil {
			e = &nameEntry{CreatedAt: now}
			s.names[p.name] = e
		}
		e.Digest, e.Status, e.Error, e.ErrorKind, e.err, e.UpdatedAt = d.DigestStr(), StatusReady, "", "", nil, now
		setTags(e)
		img := s.snapshotLocked(p.name)
		s.publishLocked(p.name)
		s.mu.Unlock()
		s.persist(d.DigestStr())
		return img, nil
	}
	img := s.startLocked(p.name, p.ref, nil, opts)
	s.mu.Unlock()
	s.persist("")
	return img, nil
}

// EnsureOptions go with one Ensure.
type EnsureOptions struct {
	// Tags replace the image's user-defined tags (nil keeps them).
	Tags map[string]string
	// Auth is this pull's own registry credentials: used for it only, kept
	// in memory, never persisted or logged (nil: the store's keychain). A
	// pull of the same name already running with other credentials is
	// refused (ErrPullInFlight) rather than joined.
	Auth authn.Authenticator
}

// ImportImage converts an image that arrived by other means (the built-in
// registry's push) under name, through the same path as a pull. Like Ensure
// it returns at once; use Wait for the result. A running pull or import of
// the same name is canceled first: the newest push wins.
func (s *Store) ImportImage(ctx context.Context, nameStr string, img v1.Image) (*Image, error) {
	n, err := localName(nameStr)
	if err != nil {
		return nil, err
	}
	p := parsedRef{name: n}
	if img == nil {
		return nil, fmt.Errorf("%w: nil image", ErrInvalidReference)
	}
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, ErrClosed
		}
		j := s.jobs[p.name]
		if j == nil {
			out := s.startLocked(p.name, nil, img, EnsureOptions{})
			s.mu.Unlock()
			s.persist("")
			return out, nil
		}
		s.mu.Unlock()
		j.cancel()
		select {
		case <-j.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// startLocked registers a pending entry and a job for name and starts it.
func (s *Store) startLocked(n string, ref name.Reference, img v1.Image, opts EnsureOptions) *Image {
	now := time.Now().UTC()
	e := s.names[n]
	if e == nil {
		e = &nameEntry{CreatedAt: now}
		s.names[n] = e
	}
	e.Digest, e.Status, e.Error, e.ErrorKind, e.err, e.UpdatedAt = "", StatusPending, "", "", nil, now
	e.Local = img != nil // imported from our own registry, never pulled
	if opts.Tags != nil {
		e.Tags = maps.Clone(opts.Tags)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	j := &job{name: n, ref: ref, img: img, auth: opts.Auth, ctx: ctx, cancel: cancel, done: make(chan struct{}), status: StatusPending}
	s.jobs[n] = j
	s.wg.Add(1)
	go s.run(j)
	out := s.snapshotLocked(n)
	s.publishLocked(n)
	return out
}

// Wait blocks until the named image is ready or failed (or ctx ends) and
// returns its record. A failed pull returns the record and its error (a
// *PullError). Canceling ctx stops the waiting, not the pull.
func (s *Store) Wait(ctx context.Context, ref string) (*Image, error) {
	n, err := s.lookupName(ref)
	if err != nil {
		return nil, err
	}
	for {
		s.mu.Lock()
		j := s.jobs[n]
		e := s.names[n]
		if j == nil {
			if e == nil {
				s.mu.Unlock()
				return nil, fmt.Errorf("%w: %s", ErrNotFound, n)
			}
			img := s.snapshotLocked(n)
			var ferr error
			if e.Status == StatusFailed {
				ferr = e.err
				if ferr == nil {
					ferr = &PullError{Ref: n, Kind: errorKindSentinel(e.ErrorKind), Err: errors.New(e.Error)}
				}
			}
			s.mu.Unlock()
			return img, ferr
		}
		s.mu.Unlock()
		select {
		case <-j.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Pull is Ensure followed by Wait.
func (s *Store) Pull(ctx context.Context, ref string) (*Image, error) {
	img, err := s.Ensure(ctx, ref, EnsureOptions{})
	if err != nil {
		return nil, err
	}
	if img.Status == StatusReady {
		return img, nil
	}
	return s.Wait(ctx, ref)
}

// Get returns the record for a name (any form NormalizeName accepts) or a
// bare digest ("sha256:…", answered from the disk records).
func (s *Store) Get(ctx context.Context, nameOrDigest string) (*Image, error) {
	if isDigest(strings.TrimSpace(nameOrDigest)) {
		d := strings.TrimSpace(nameOrDigest)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.digests[d] == nil {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, d)
		}
		return s.digestSnapshotLocked(d), nil
	}
	n, err := s.lookupName(nameOrDigest)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.names[n] == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, n)
	}
	return s.snapshotLocked(n), nil
}

// List returns every named image, sorted by name.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.names))
	for n := range s.names {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]Image, 0, len(names))
	for _, n := range names {
		out = append(out, *s.snapshotLocked(n))
	}
	return out, nil
}

// Delete removes a name, or with a bare digest every name pointing at it. A
// running pull of a removed name is canceled. The disk is deleted when no
// name points at it any more. Instances still using the disk are the
// caller's concern.
func (s *Store) Delete(ctx context.Context, nameOrDigest string) error {
	var victims []string
	digestArg := ""
	if d := strings.TrimSpace(nameOrDigest); isDigest(d) {
		digestArg = d
		s.mu.Lock()
		victims = s.namesForLocked(d)
		known := s.digests[d] != nil || len(victims) > 0
		s.mu.Unlock()
		if !known {
			return fmt.Errorf("%w: %s", ErrNotFound, d)
		}
	} else {
		n, err := s.lookupName(nameOrDigest)
		if err != nil {
			return err
		}
		victims = []string{n}
	}

	var trash, dropped []string
	touched := map[string]bool{}
	for {
		// Cancel and wait out running jobs first.
		s.mu.Lock()
		var running []*job
		for _, n := range victims {
			if j := s.jobs[n]; j != nil {
				running = append(running, j)
			}
		}
		if len(running) == 0 {
			break
		}
		s.mu.Unlock()
		for _, j := range running {
			j.cancel()
			select {
			case <-j.done:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	// s.mu is held here.
	found := digestArg != ""
	for _, n := range victims {
		e := s.names[n]
		if e == nil {
			continue
		}
		found = true
		delete(s.names, n)
		if e.Digest != "" {
			touched[e.Digest] = true
		}
	}
	if digestArg != "" {
		touched[digestArg] = true
	}
	if !found {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotFound, victims[0])
	}
	var keep []string
	for d := range touched {
		if s.digests[d] == nil {
			continue
		}
		if len(s.namesForLocked(d)) > 0 || s.flights[d] != nil {
			keep = append(keep, d)
			continue
		}
		// Move the disk dir aside under the lock (cheap), delete it after.
		t := filepath.Join(s.tmpDir(), "deleted-"+strings.Replace(d, ":", "-", 1)+fmt.Sprintf("-%d", time.Now().UnixNano()))
		if err := os.Rename(s.digestDir(d), t); err != nil {
			s.log.Warn("cannot move deleted image disk aside", "digest", d, "err", err)
			keep = append(keep, d)
			continue
		}
		delete(s.digests, d)
		trash = append(trash, t)
		dropped = append(dropped, d)
	}
	for _, n := range victims {
		s.publishLocked(n)
	}
	s.mu.Unlock()

	err := s.saveIndex()
	for _, d := range keep {
		if e := s.saveDiskRecord(d); e != nil && err == nil {
			err = e
		}
	}
	for _, t := range trash {
		if e := os.RemoveAll(t); e != nil {
			s.log.Warn("removing deleted image disk", "path", t, "err", e)
		}
	}
	for _, d := range dropped {
		s.cache.drop(d)
	}
	return err
}

// Subscribe returns a channel of snapshots of the named image ("" for all
// images) sent on every status change and, while pulling, on progress
// (at most ~5 per second). Slow readers only miss intermediate snapshots:
// the latest one always wins. The current state is sent first. Call the
// returned function to unsubscribe; Close also closes the channel.
func (s *Store) Subscribe(ref string) (<-chan Image, func(), error) {
	n := ""
	if strings.TrimSpace(ref) != "" {
		var err error
		if n, err = s.lookupName(ref); err != nil {
			return nil, nil, err
		}
	}
	sub := &subscriber{name: n, ch: make(chan Image, 1)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, ErrClosed
	}
	s.subs[sub] = struct{}{}
	if n != "" && s.names[n] != nil {
		sub.send(*s.snapshotLocked(n))
	}
	s.mu.Unlock()
	var once sync.Once
	return sub.ch, func() {
		once.Do(func() {
			s.mu.Lock()
			if _, ok := s.subs[sub]; ok {
				delete(s.subs, sub)
				close(sub.ch)
			}
			s.mu.Unlock()
		})
	}, nil
}

// send delivers img without blocking, replacing an unread older snapshot.
// Callers hold Store.mu, so sends to one subscriber are serialized.
func (sub *subscriber) send(img Image) {
	select {
	case sub.ch <- img:
		return
	default:
	}
	select {
	case <-sub.ch:
	default:
	}
	select {
	case sub.ch <- img:
	default:
	}
}

// publishLocked sends the current snapshot of name to its subscribers. A
// deleted name is sent once with an empty Status.
func (s *Store) publishLocked(n string) {
	if len(s.subs) == 0 {
		return
	}
	var img Image
	if s.names[n] != nil {
		img = *s.snapshotLocked(n)
	} else {
		img = Image{Name: n, UpdatedAt: time.Now().UTC()}
	}
	for sub := range s.subs {
		if sub.name == "" || sub.name == n {
			sub.send(img)
		}
	}
}

// lookupName normalizes a name for lookups (no network, no policy).
func (s *Store) lookupName(ref string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, _, err := s.resolveLocked(ref)
	return n, err
}

// CanonicalName is the name ref is (or would be) recorded under.
func (s *Store) CanonicalName(ref string) (string, error) { return s.lookupName(ref) }

func (s *Store) namesForLocked(digest string) []string {
	var out []string
	for n, e := range s.names {
		if e.Digest == digest {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// snapshotLocked builds the Image for a name present in s.names.
func (s *Store) snapshotLocked(n string) *Image {
	e := s.names[n]
	img := &Image{
		Name: n, Digest: e.Digest, Status: e.Status, Error: e.Error, ErrorKind: e.ErrorKind,
		Tags: maps.Clone(e.Tags), CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt,
	}
	if j := s.jobs[n]; j != nil {
		img.Status = j.status
		if fl := j.flight; fl != nil {
			img.Status = fl.status
			img.Progress = Progress{
				BytesDone: fl.bytesDone.Load(), BytesTotal: fl.bytesTotal.Load(),
				LayersDone: int(fl.layersDone.Load()), LayersTotal: int(fl.layersTotal.Load()),
			}
		}
	}
	if rec := s.digests[e.Digest]; rec != nil && img.Status == StatusReady {
		s.fillFromDisk(img, rec)
	}
	return img
}

func (s *Store) digestSnapshotLocked(d string) *Image {
	rec := s.digests[d]
	img := &Image{Name: d, Digest: d, Status: StatusReady, CreatedAt: rec.CreatedAt, UpdatedAt: rec.CreatedAt}
	if ns := s.namesForLocked(d); len(ns) > 0 {
		img.Name = ns[0]
	}
	s.fillFromDisk(img, rec)
	return img
}

func (s *Store) fillFromDisk(img *Image, rec *diskRecord) {
	img.Config = ImageConfig{
		Entrypoint: slices.Clone(rec.Config.Entrypoint), Cmd: slices.Clone(rec.Config.Cmd),
		Env: slices.Clone(rec.Config.Env), WorkingDir: rec.Config.WorkingDir, User: rec.Config.User,
	}
	img.SizeBytes = rec.SizeBytes
	img.DiskFormat = rec.DiskFormat
	img.Platform = rec.Platform
	if img.Platform == "" {
		img.Platform = s.cfg.Platform.String()
	}
	img.DiskPath = filepath.Join(s.digestDir(rec.Digest), rec.DiskFile)
	img.Progress = Progress{BytesDone: rec.Stats.CompressedBytes, BytesTotal: rec.Stats.CompressedBytes,
		LayersDone: rec.Stats.Layers, LayersTotal: rec.Stats.Layers}
}

// persist saves index.json and, if digest is set, that digest's image.json.
// Failures are logged: the in-memory state stays authoritative until the
// next successful write.
func (s *Store) persist(digest string) {
	if err := s.saveIndex(); err != nil {
		s.log.Error("saving image index", "err", err)
	}
	if digest != "" {
		if err := s.saveDiskRecord(digest); err != nil {
			s.log.Error("saving image record", "digest", digest, "err", err)
		}
	}
}

func (s *Store) saveIndex() error {
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	s.mu.Lock()
	idx := indexFile{Version: indexVersion, Names: make(map[string]*nameEntry, len(s.names))}
	for n, e := range s.names {
		c := *e
		idx.Names[n] = &c
	}
	s.mu.Unlock()
	return fsutil.WriteJSONAtomic(s.indexPath(), idx, 0o644)
}

func (s *Store) saveDiskRecord(digest string) error {
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	s.mu.Lock()
	rec := s.digests[digest]
	if rec == nil {
		s.mu.Unlock()
		return nil
	}
	c := *rec
	c.Version = diskRecordVersion
	c.Names = s.namesForLocked(digest)
	rec.Names = c.Names
	s.mu.Unlock()
	return fsutil.WriteJSONAtomic(filepath.Join(s.digestDir(digest), "image.json"), c, 0o644)
}

// ErrorKindOf returns a stable code for an error's kind, for the API and
// for index.json: "not_found", "invalid_reference", "registry_not_allowed", "registry_unreachable",
// "not_found_upstream", "unauthorized", "registry_error", "digest_mismatch",
// "no_matching_platform", "corrupt_layer", "convert_failed", "interrupted", "too_large",
// "canceled", or "" when none applies.
func ErrorKindOf(err error) string {
	for _, k := range errorKinds() {
		if errors.Is(err, k.err) {
			return k.code
		}
	}
	return ""
}

type errorKind struct {
	code string
	err  error
}

func errorKinds() []errorKind {
	return []errorKind{
		{"not_found", ErrNotFound},
		{"invalid_reference", ErrInvalidReference},
		{"registry_not_allowed", ErrRegistryNotAllowed},
		{"registry_unreachable", ErrRegistryUnreachable},
		{"not_found_upstream", ErrNotFoundUpstream},
		{"unauthorized", ErrUnauthorized},
		{"digest_mismatch", ErrDigestMismatch},
		{"no_matching_platform", ErrNoMatchingPlatform},
		{"corrupt_layer", ErrCorruptLayer},
		{"convert_failed", ErrConvert},
		{"interrupted", ErrInterrupted},
		{"too_large", ErrImageTooLarge},
		{"registry_error", ErrRegistry},
		{"canceled", context.Canceled},
		{"canceled", context.DeadlineExceeded},
	}
}

func errorKindSentinel(code string) error {
	for _, k := range errorKinds() {
		if k.code == code {
			return k.err
		}
	}
	return ErrRegistry
}
