package volumes

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"hypeman/internal/fsutil"
	"hypeman/internal/ids"
	"hypeman/internal/tags"
)

// DefaultMaxSizeGB is the largest volume a store accepts unless configured.
const DefaultMaxSizeGB = 1024

const (
	recordVersion = 1
	recordFile    = "volume.json"
	dataFile      = "data.ext4"
	dataTmp       = "data.ext4.tmp"
	stagingDir    = "staging"
	maxIDLen      = 128
)

// Attachment is one instance's use of a volume.
type Attachment struct {
	InstanceID string `json:"instance_id"`
	MountPath  string `json:"mount_path"`
	// ReadOnly is true also for overlay mounts (the volume itself is never
	// written).
	ReadOnly bool `json:"readonly"`
	Overlay  bool `json:"overlay,omitempty"`
}

// writable reports whether the attachment may write the volume.
func (a Attachment) writable() bool { return !a.ReadOnly && !a.Overlay }

// Volume is a volume as callers see it (a copy: changing it changes nothing).
type Volume struct {
	ID          string
	Name        string
	SizeGB      int
	Tags        map[string]string
	CreatedAt   time.Time
	Attachments []Attachment
	// Path is the volume's disk image (absolute): a raw ext4 file of SizeGB
	// GiB (sparse).
	Path string
}

// record is volume.json.
type record struct {
	Version     int               `json:"version"`
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	SizeGB      int               `json:"size_gb"`
	Tags        map[string]string `json:"tags,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	Attachments []Attachment      `json:"attachments,omitempty"`
	// Source is "empty" or "archive".
	Source string `json:"source"`
}

// Config configures a Store.
type Config struct {
	// Dir holds one directory per volume (paths.VolumesDir()).
	Dir string
	// MaxSizeGB bounds size_gb (default DefaultMaxSizeGB).
	MaxSizeGB int
	Log       *slog.Logger
}

// CreateParams describe a new volume.
type CreateParams struct {
	// ID is optional (generated when empty): 1-128 letters, digits, '_',
	// '-' and '.', not starting with '.'.
	ID     string
	Name   string
	SizeGB int
	Tags   map[string]string
}

// Store is the volume store. It is safe for concurrent use.
type Store struct {
	dir   string
	maxGB int
	log   *slog.Logger

	mu   sync.Mutex
	vols map[string]*record // by ID
	// taken holds the IDs and names of creates in flight.
	taken map[string]bool
}

// New opens (creating if needed) the store in cfg.Dir, removing what
// interrupted creates and deletes left behind.
func New(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("volumes: Dir is required")
	}
	if cfg.MaxSizeGB <= 0 {
		cfg.MaxSizeGB = DefaultMaxSizeGB
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("volumes: %w", err)
	}
	s := &Store{dir: cfg.Dir, maxGB: cfg.MaxSizeGB, log: cfg.Log, vols: map[string]*record{}, taken: map[string]bool{}}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) load() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("volumes: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(s.dir, e.Name())
		if !e.IsDir() {
			continue
		}
		var rec record
		_, err := fsutil.ReadVersionedJSON(filepath.Join(p, recordFile), recordVersion, &rec)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// A create that never finished or a delete that did not.
			s.log.Info("removing unfinished volume directory", "path", p)
			if err := os.RemoveAll(p); err != nil {
				return fmt.Errorf("volumes: remove leftover %s: %w", p, err)
			}
			continue
		case err != nil:
			return fmt.Errorf("volumes: %w", err)
		}
		if rec.ID != e.Name() {
			return fmt.Errorf("volumes: %s holds volume %q: the directory name must be the volume ID", p, rec.ID)
		}
		// Leftovers of an interrupted atomic write inside a complete volume.
		leftovers, _ := filepath.Glob(filepath.Join(p, "."+recordFile+".tmp-*"))
		leftovers = append(leftovers, filepath.Join(p, dataTmp), filepath.Join(p, stagingDir))
		for _, l := range leftovers {
			if err := os.RemoveAll(l); err != nil {
				return fmt.Errorf("volumes: remove leftover %s: %w", l, err)
			}
		}
		if _, err := os.Stat(filepath.Join(p, dataFile)); err != nil {
			s.log.Warn("volume has no disk image", "id", rec.ID, "name", rec.Name, "err", err)
		}
		s.vols[rec.ID] = &rec
	}
	return nil
}

func (s *Store) view(r *record) *Volume {
	return &Volume{
		ID: r.ID, Name: r.Name, SizeGB: r.SizeGB, Tags: tags.Clone(r.Tags), CreatedAt: r.CreatedAt,
		Attachments: slices.Clone(r.Attachments), Path: s.diskPath(r),
	}
}

// diskPath is r's disk image.
func (s *Store) diskPath(r *record) string { return filepath.Join(s.dir, r.ID, dataFile) }

// resolveLocked finds a volume by ID, then by exact name.
func (s *Store) resolveLocked(ref string) (*record, error) {
	if r, ok := s.vols[ref]; ok {
		return r, nil
	}
	for _, r := range s.vols {
		if r.Name == ref {
			return r, nil
		}
	}
	return nil, fmt.Errorf("%w: %q (give a volume ID or name; `hypeman volume list` shows them)", ErrNotFound, ref)
}

// Get returns one volume by ID or exact name.
func (s *Store) Get(ctx context.Context, ref string) (*Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.resolveLocked(ref)
	if err != nil {
		return nil, err
	}
	return s.view(r), nil
}

// List returns the volumes carrying every tag of filter (all for an empty
// filter), oldest first.
func (s *Store) List(ctx context.Context, filter map[string]string) ([]*Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Volume, 0, len(s.vols))
	for _, r := range s.vols {
		if tags.Match(r.Tags, filter) {
			out = append(out, s.view(r))
		}
	}
	slices.SortFunc(out, func(a, b *Volume) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Delete removes a volume and its disk. A volume with attachments is
// refused with an *InUseError naming the instances.
func (s *Store) Delete(ctx context.Context, ref string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.resolveLocked(ref)
	if err != nil {
		return err
	}
	if len(r.Attachments) > 0 {
		return &InUseError{Volume: r.ID, Op: "delete", Instances: instancesOf(r.Attachments)}
	}
	dir := filepath.Join(s.dir, r.ID)
	// The record goes first: a crash after it leaves a directory New removes.
	if err := os.Remove(filepath.Join(dir, recordFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete volume %s: %w", r.ID, err)
	}
	delete(s.vols, r.ID)
	if err := fsutil.SyncDir(dir); err != nil {
		s.log.Warn("sync volume dir", "id", r.ID, "err", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("delete volume %s: %w", r.ID, err)
	}
	s.log.Info("volume deleted", "id", r.ID, "name", r.Name)
	return nil
}

func instancesOf(as []Attachment) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.InstanceID)
	}
	return out
}

// persistLocked writes r's record atomically.
func (s *Store) persistLocked(r *record) error {
	return fsutil.WriteJSONAtomic(filepath.Join(s.dir, r.ID, recordFile), r, 0o644)
}

// Attach records a for volume ref atomically: a writable attachment needs
// the volume to have no other attachment; a read-only (or overlay) one needs
// no writable attachment. The same instance twice is ErrInUse. It returns the
// volume as it is after the attach, persisted.
func (s *Store) Attach(ctx context.Context, ref string, a Attachment) (*Volume, error) {
	if a.InstanceID == "" {
		return nil, &InvalidError{Field: "instance_id", Reason: "is required"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.resolveLocked(ref)
	if err != nil {
		return nil, err
	}
	for _, have := range r.Attachments {
		if have.InstanceID == a.InstanceID {
			return nil, fmt.Errorf("%w: volume %s is already attached to instance %s (at %s)", ErrInUse, r.ID, a.InstanceID, have.MountPath)
		}
	}
	var holders []string
	for _, have := range r.Attachments {
		if a.writable() || have.writable() {
			holders = append(holders, have.InstanceID)
		}
	}
	if len(holders) > 0 {
		op := "attach read-only"
		if a.writable() {
			op = "attach read-write"
		}
		e := &InUseError{Volume: r.ID, Op: op, Instances: holders}
		if a.writable() {
			return nil, fmt.Errorf("%w (a writable volume is attached to one instance at a time; attach it readonly to share it)", e)
		}
		return nil, fmt.Errorf("%w (it is attached writable there; a volume is shared only when every attachment is readonly)", e)
	}
	if !a.writable() && len(r.Attachments) == 0 {
		// The first reader after a writer: see replayJournal.
		// Not fatal: a disk e2fsck cannot read (not ext4) fails the
		// guest's mount with a message naming the volume.
		if err := replayJournal(ctx, s.diskPath(r)); err != nil {
			s.log.Warn("volume attached read-only without a journal replay", "id", r.ID, "name", r.Name, "err", err)
		}
	}
	prev := r.Attachments
	r.Attachments = append(slices.Clone(prev), a)
	if err := s.persistLocked(r); err != nil {
		r.Attachments = prev
		return nil, fmt.Errorf("attach volume %s: %w", r.ID, err)
	}
	return s.view(r), nil
}

// Detach removes instanceID's attachment of volume ref (no-op if it has
// none; ErrNotFound if the volume does not exist).
func (s *Store) Detach(ctx context.Context, ref, instanceID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.resolveLocked(ref)
	if err != nil {
		return err
	}
	return s.setAttachmentsLocked(r, slices.DeleteFunc(slices.Clone(r.Attachments), func(a Attachment) bool {
		return a.InstanceID == instanceID
	}))
}

// DetachInstance removes every attachment of instanceID.
func (s *Store) DetachInstance(ctx context.Context, instanceID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, r := range s.vols {
		keep := slices.DeleteFunc(slices.Clone(r.Attachments), func(a Attachment) bool {
			return a.InstanceID == instanceID
		})
		errs = append(errs, s.setAttachmentsLocked(r, keep))
	}
	return errors.Join(errs...)
}

// setAttachmentsLocked replaces r's attachments and persists them when they
// changed.
func (s *Store) setAttachmentsLocked(r *record, as []Attachment) error {
	if slices.Equal(r.Attachments, as) {
		return nil
	}
	if len(as) == 0 {
		as = nil
	}
	prev := r.Attachments
	r.Attachments = as
	if err := s.persistLocked(r); err != nil {
		r.Attachments = prev
		return fmt.Errorf("update attachments of volume %s: %w", r.ID, err)
	}
	return nil
}

// Reconcile, called once at daemon start after the instances are loaded,
// makes the attachment table match live (the instances' own metadata, by
// volume ID): it drops attachments whose instance no longer claims the
// volume (a crash between the two writes) and adds the ones the store lost.
// live naming a volume that does not exist is logged and skipped.
func (s *Store) Reconcile(ctx context.Context, live map[string][]Attachment) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, r := range s.vols {
		want := slices.Clone(live[r.ID])
		slices.SortFunc(want, func(a, b Attachment) int { return strings.Compare(a.InstanceID, b.InstanceID) })
		have := slices.Clone(r.Attachments)
		slices.SortFunc(have, func(a, b Attachment) int { return strings.Compare(a.InstanceID, b.InstanceID) })
		if slices.Equal(have, want) {
			continue
		}
		s.log.Info("reconciled volume attachments with the instances", "id", r.ID, "name", r.Name,
			"had", instancesOf(have), "now", instancesOf(want))
		errs = append(errs, s.setAttachmentsLocked(r, want))
	}
	for id, as := range live {
		if _, ok := s.vols[id]; !ok {
			s.log.Warn("instances mount a volume that does not exist", "volume", id, "instances", instancesOf(as))
		}
	}
	return errors.Join(errs...)
}

// validate checks p and fills in a generated ID.
func (s *Store) validate(p *CreateParams) error {
	if why := ids.NameProblem(p.Name); why != "" {
		return &InvalidError{Field: "name", Reason: why}
	}
	if p.ID == "" {
		p.ID = ids.New()
	} else if why := idProblem(p.ID); why != "" {
		return &InvalidError{Field: "id", Reason: why}
	}
	if p.SizeGB < 1 || p.SizeGB > s.maxGB {
		return &InvalidError{Field: "size_gb", Reason: fmt.Sprintf(
			"%d is out of range: give 1 to %d (GiB; the server's volume_max_size_gb)", p.SizeGB, s.maxGB)}
	}
	if err := tags.Validate("tags", p.Tags); err != nil {
		var fe *tags.FieldError
		if errors.As(err, &fe) {
			return &InvalidError{Field: fe.Field, Reason: fe.Reason}
		}
		return err
	}
	return nil
}

// idProblem is why a client-chosen ID cannot be used ("" when it can). It
// becomes a directory name, so it is kept to a safe character set.
func idProblem(id string) string {
	if len(id) > maxIDLen {
		return fmt.Sprintf("must be at most %d characters", maxIDLen)
	}
	if id[0] == '.' {
		return "must not start with '.'"
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "may only contain letters, digits, '-', '_' and '.'"
		}
	}
	return ""
}

// reserve claims p's ID and name for a create in flight. IDs and names share
// one namespace (Get takes either), so neither may equal any other volume's
// ID or name.
func (s *Store) reserve(p CreateParams) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, key := range []struct{ field, v string }{{"name", p.Name}, {"id", p.ID}} {
		if s.taken[key.v] {
			return nil, fmt.Errorf("%w: %s %q is being created right now", ErrExists, key.field, key.v)
		}
		if r, err := s.resolveLocked(key.v); err == nil {
			return nil, fmt.Errorf("%w: %s %q is taken by volume %s (%s); pick another %s or delete that volume",
				ErrExists, key.field, key.v, r.ID, r.Name, key.field)
		}
	}
	s.taken[p.ID], s.taken[p.Name] = true, true
	return func() {
		s.mu.Lock()
		delete(s.taken, p.ID)
		delete(s.taken, p.Name)
		s.mu.Unlock()
	}, nil
}

// commit records a finished volume: volume.json last, then the index.
func (s *Store) commit(r *record) error {
	if err := fsutil.WriteJSONAtomic(filepath.Join(s.dir, r.ID, recordFile), r, 0o644); err != nil {
		return err
	}
	s.mu.Lock()
	s.vols[r.ID] = r
	s.mu.Unlock()
	return nil
}
