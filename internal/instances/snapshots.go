package instances

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"hypeman/internal/fsutil"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
	"hypeman/internal/tags"
)

// SnapshotKind says what a snapshot holds.
type SnapshotKind string

const (
	// SnapshotStandby holds memory + device state and disks: restoring or
	// forking it continues the program where it was.
	SnapshotStandby SnapshotKind = "Standby"
	// SnapshotStopped holds the writable disk only: restoring or forking
	// it boots afresh on that disk.
	SnapshotStopped SnapshotKind = "Stopped"
)

// Snapshot is a point-in-time copy of an instance, kept independently of
// it (the source may be deleted).
type Snapshot struct {
	ID                 string            `json:"id"`
	Name               string            `json:"name"`
	Kind               SnapshotKind      `json:"kind"`
	SourceInstanceID   string            `json:"source_instance_id"`
	SourceInstanceName string            `json:"source_instance_name"`
	Image              string            `json:"image"`
	ImageDigest        string            `json:"image_digest"`
	Tags               map[string]string `json:"tags,omitempty"`
	CreatedAt          time.Time         `json:"created_at"`
	SizeBytes          int64             `json:"size_bytes"`
	MemoryBytes        int64             `json:"memory_bytes"`
	// Hypervisor the source ran on ("" in old records: qemu).
	Hypervisor string `json:"hypervisor,omitempty"`
	// Compression is how the memory state is stored (zero: uncompressed
	// or no memory state); CompressionState is "none" or "compressed"
	// (snapshots compress while saving, never later).
	Compression      hypervisor.Compression `json:"compression"`
	CompressionState CompressionState       `json:"compression_state"`
	CompressionError string                 `json:"compression_error,omitempty"`
	// CompressedBytes is the stored memory state when compressed (else 0);
	// UncompressedBytes the memory state's size (0: no memory state, or
	// not recorded by the version that took the snapshot).
	CompressedBytes   int64 `json:"compressed_bytes,omitempty"`
	UncompressedBytes int64 `json:"uncompressed_bytes,omitempty"`
}

// SnapshotParams is a create-snapshot request.
type SnapshotParams struct {
	Kind SnapshotKind // "" = Standby for a live or standby instance, Stopped otherwise
	Name string       // "" = generated from the instance name and time
	Tags map[string]string
	// Compression nil = the instance's policy, else the server default.
	Compression *hypervisor.Compression
}

// ErrSnapshotNotFound is returned for unknown snapshot references.
var ErrSnapshotNotFound = errors.New("snapshot not found")

// snapshotRecord is snapshot.json: the public view plus the source
// instance's metadata (what a fork or restore recreates).
type snapshotRecord struct {
	// Version is the snapshot.json format (snapshotVersion; a file
	// without one is version 1).
	Version int `json:"version"`
	Snapshot
	Source Metadata `json:"source"`
	// LegacyCompressed is what snapshot.json held before compression
	// settings existed (zstd at level 1); migrated on read.
	LegacyCompressed bool `json:"compressed,omitempty"`
}

// migrate fills the compression fields of a record written before they
// existed.
func (r *snapshotRecord) migrate() {
	if r.CompressionState != "" {
		return
	}
	r.CompressionState = CompressionStateNone
	if r.LegacyCompressed {
		r.Compression = hypervisor.Compression{Algorithm: hypervisor.CompressionZstd, Level: hypervisor.ZstdDefaultLevel}
		r.CompressionState = CompressionStateCompressed
	}
	r.LegacyCompressed = false
}

// setState records the memory state a snapshot holds.
func (r *snapshotRecord) setState(info *hypervisor.SnapshotInfo) {
	sc := savedCompression(info)
	r.Compression, r.CompressionState = sc.Compression, sc.State
	r.CompressedBytes, r.UncompressedBytes = sc.CompressedBytes, sc.UncompressedBytes
}

// standbyCompression is how the snapshot's state is stored, for an
// instance restored or forked into Standby from it.
func (r *snapshotRecord) standbyCompression() StandbyCompression {
	return StandbyCompression{Compression: r.Compression, State: r.CompressionState,
		CompressedBytes: r.CompressedBytes, UncompressedBytes: r.UncompressedBytes}
}

// snapshotVersion is the newest snapshot.json format this build reads.
// Version 2 added volumes (in Source); a snapshot without volumes is still
// written as version 1 (see metadataVersionFor).
const snapshotVersion = 2

const (
	snapshotFile     = "snapshot.json"
	snapshotStateDir = "state"
)

// CreateSnapshot copies an instance into a new snapshot. A Standby snapshot
// of a Running instance pauses it for the save (~0.1–0.5 s) and resumes it.
func (m *Manager) CreateSnapshot(ctx context.Context, ref string, p SnapshotParams) (_ *Snapshot, err error) {
	defer m.observe("snapshot", time.Now(), &err)
	if p.Name != "" {
		if err := ValidateName(p.Name); err != nil {
			return nil, err
		}
		recs, err := m.snapshotRecords()
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if r.Name == p.Name {
				return nil, fmt.Errorf("%w: snapshot %s", ErrNameInUse, p.Name)
			}
		}
	}
	if err := validateTags("tags", p.Tags); err != nil {
		return nil, err
	}
	if err := compressionArg("", p.Compression); err != nil {
		return nil, err
	}
	switch p.Kind {
	case "", SnapshotStandby, SnapshotStopped:
	default:
		return nil, &InvalidArgumentError{Field: "kind", Reason: "must be Standby or Stopped"}
	}
	e, err := m.resolve(ref)
	if err != nil {
		return nil, err
	}
	e.op.Lock()
	defer e.op.Unlock()
	st := m.currentState(ctx, e)
	kind := p.Kind
	if kind == "" {
		kind = SnapshotStopped
		if st == state.Running || st == state.Paused || st == state.Standby {
			kind = SnapshotStandby
		}
	}
	e.mu.Lock()
	meta, lv := e.meta, e.live
	e.mu.Unlock()
	switch {
	case kind == SnapshotStopped && st != state.Stopped:
		return nil, &TransitionError{Action: "snapshot (kind Stopped)", State: st, Allowed: Allowed(st)}
	case kind == SnapshotStandby && st != state.Running && st != state.Paused && st != state.Standby:
		return nil, &TransitionError{Action: "snapshot (kind Standby)", State: st, Allowed: Allowed(st)}
	}

	if err := refuseWritableVolumes(meta, "snapshot"); err != nil {
		return nil, err
	}
	sid := newID()
	name := p.Name
	if name == "" {
		name = fmt.Sprintf("%s-%s", meta.Name, time.Now().UTC().Format("20060102-150405"))
		if len(name) > maxNameLen {
			name = name[len(name)-maxNameLen:]
		}
	}
	root := m.cfg.Paths.SnapshotsDir()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	tmp := filepath.Join(root, ".tmp-"+sid)
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp) // no-op after the rename
	dir := m.dir(meta.ID)
	rec := snapshotRecord{Version: metadataVersionFor(&meta), Snapshot: Snapshot{
		ID: sid, Name: name, Kind: kind, SourceInstanceID: meta.ID, SourceInstanceName: meta.Name,
		Image: meta.Image, ImageDigest: meta.ImageDigest, Tags: maps.Clone(p.Tags), Hypervisor: meta.Hypervisor,
		CreatedAt: time.Now().UTC(), MemoryBytes: meta.MemoryBytes,
		CompressionState: CompressionStateNone,
	}, Source: meta}
	comp := m.compressionFor(p.Compression, meta.SnapshotPolicy)

	copyDisks := func() error {
		for _, f := range deriveDisks(dir, "", meta).Files {
			if err := copySparse(ctx, filepath.Join(dir, f), filepath.Join(tmp, f)); err != nil {
				return fmt.Errorf("snapshot: copy %s: %w", f, err)
			}
		}
		return nil
	}
	switch {
	case kind == SnapshotStopped:
		if err := copyDisks(); err != nil {
			return nil, err
		}
	case st == state.Standby:
		// Copied (a byte copy when already stored as comp says) with its
		// checksum verified; a delayed compression running meanwhile only
		// reads the same state.
		info, err := m.cfg.Hypervisor.ConvertState(ctx, filepath.Join(dir, standbyDir), filepath.Join(tmp, snapshotStateDir), comp)
		if err != nil {
			return nil, fmt.Errorf("snapshot: copy state: %w", err)
		}
		rec.setState(info)
		if err := copyDisks(); err != nil {
			return nil, err
		}
	default: // live VM: pause, save, copy disks while paused, resume
		if lv == nil {
			return nil, &TransitionError{Action: "snapshot", State: st, Allowed: Allowed(st)}
		}
		if st == state.Running {
			if err := lv.vm.Pause(ctx); err != nil {
				return nil, fmt.Errorf("snapshot: pause: %w", err)
			}
			m.publish(meta.ID, state.Running, state.Paused, "snapshot: paused")
			defer func() {
				if rerr := lv.vm.Resume(context.WithoutCancel(ctx)); rerr != nil {
					m.log.Error("snapshot: resume", "id", meta.ID, "err", rerr)
					return
				}
				m.publish(meta.ID, state.Paused, state.Running, "snapshot: resumed")
			}()
		}
		info, err := lv.vm.SaveState(ctx, filepath.Join(tmp, snapshotStateDir), hypervisor.SaveOptions{Compression: comp})
		if err != nil {
			return nil, fmt.Errorf("snapshot: save state: %w", err)
		}
		rec.setState(info)
		if err := copyDisks(); err != nil {
			return nil, err
		}
	}
	rec.SizeBytes = diskUsage(tmp)
	if err := fsutil.WriteJSONAtomic(filepath.Join(tmp, snapshotFile), &rec, 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, m.cfg.Paths.SnapshotDir(sid)); err != nil {
		return nil, fmt.Errorf("snapshot: commit: %w", err)
	}
	if err := fsutil.SyncDir(root); err != nil {
		return nil, err
	}
	m.logf(meta.ID, "snapshot %s (%s, %s, memory %s) taken", name, sid, kind, rec.Compression)
	out := rec.Snapshot
	return &out, nil
}

// diskUsage sums the allocated bytes under dir (sparse files count what
// they really use).
func diskUsage(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += allocatedBytes(fi)
		}
		return nil
	})
	return n
}

func (m *Manager) readSnapshot(sid string) (*snapshotRecord, error) {
	var rec snapshotRecord
	if _, err := fsutil.ReadVersionedJSON(filepath.Join(m.cfg.Paths.SnapshotDir(sid), snapshotFile), snapshotVersion, &rec); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrSnapshotNotFound, sid)
		}
		return nil, err
	}
	rec.migrate()
	return &rec, nil
}

func (m *Manager) snapshotRecords() ([]*snapshotRecord, error) {
	ents, err := os.ReadDir(m.cfg.Paths.SnapshotsDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*snapshotRecord
	for _, de := range ents {
		if !de.IsDir() || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		rec, err := m.readSnapshot(de.Name())
		if err != nil {
			m.log.Warn("skipping unreadable snapshot", "id", de.Name(), "err", err)
			continue
		}
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// ListSnapshots returns all snapshots, oldest first.
func (m *Manager) ListSnapshots(ctx context.Context, f SnapshotFilter) ([]*Snapshot, error) {
	recs, err := m.snapshotRecords()
	if err != nil {
		return nil, err
	}
	out := make([]*Snapshot, 0, len(recs))
	for _, r := range recs {
		if f.Matches(&r.Snapshot) {
			s := r.Snapshot
			out = append(out, &s)
		}
	}
	return out, nil
}

// SnapshotFilter narrows ListSnapshots; zero fields match everything and
// the fields combine (AND).
type SnapshotFilter struct {
	SourceInstanceID string
	Kind             SnapshotKind
	Name             string
	Tags             map[string]string
}

func (f SnapshotFilter) Matches(s *Snapshot) bool {
	return (f.SourceInstanceID == "" || s.SourceInstanceID == f.SourceInstanceID) &&
		(f.Kind == "" || s.Kind == f.Kind) &&
		(f.Name == "" || s.Name == f.Name) &&
		tags.Match(s.Tags, f.Tags)
}

// resolveSnapshot finds a snapshot by id, exact name or unique id prefix.
func (m *Manager) resolveSnapshot(ref string) (*snapshotRecord, error) {
	if ref == "" || strings.ContainsAny(ref, "/\\") || strings.HasPrefix(ref, ".") {
		return nil, fmt.Errorf("%w: %q", ErrSnapshotNotFound, ref)
	}
	rec, err := m.readSnapshot(ref)
	var ve *fsutil.VersionError
	switch {
	case err == nil:
		return rec, nil
	case errors.As(err, &ve):
		return nil, err // say why this snapshot cannot be used
	}
	recs, err := m.snapshotRecords()
	if err != nil {
		return nil, err
	}
	return matchRef(ref, recs, func(r *snapshotRecord) (string, string) { return r.ID, r.Name }, "snapshots", ErrSnapshotNotFound)
}

// GetSnapshot returns one snapshot.
func (m *Manager) GetSnapshot(ctx context.Context, ref string) (*Snapshot, error) {
	rec, err := m.resolveSnapshot(ref)
	if err != nil {
		return nil, err
	}
	s := rec.Snapshot
	return &s, nil
}

// DeleteSnapshot removes a snapshot (rename first: a crash mid-removal never
// leaves a half snapshot that still lists).
func (m *Manager) DeleteSnapshot(ctx context.Context, ref string) error {
	rec, err := m.resolveSnapshot(ref)
	if err != nil {
		return err
	}
	trash := filepath.Join(m.cfg.Paths.SnapshotsDir(), ".deleted-"+rec.ID)
	if err := os.Rename(m.cfg.Paths.SnapshotDir(rec.ID), trash); err != nil {
		return fmt.Errorf("delete snapshot: %w", err)
	}
	return os.RemoveAll(trash)
}

// RestoreSnapshotParams choose the state a snapshot restore ends in.
type RestoreSnapshotParams struct {
	// TargetState "" = by kind: Running for a Standby snapshot (the program
	// continues where the snapshot was taken), Stopped for a Stopped one.
	// A Standby snapshot may also end Standby (memory state kept, not
	// resumed) or Stopped (its disk only); a Stopped one Running (booted
	// afresh) but not Standby.
	TargetState state.State
}

// RestoreSnapshot rolls an instance back to one of its own snapshots. The
// instance must be Stopped or Standby.
func (m *Manager) RestoreSnapshot(ctx context.Context, instanceRef, snapshotRef string, p RestoreSnapshotParams) (_ *Instance, err error) {
	defer m.observe("snapshot_restore", time.Now(), &err)
	rec, err := m.resolveSnapshot(snapshotRef)
	if err != nil {
		return nil, err
	}
	target, err := snapshotTarget(rec, p.TargetState, "restore")
	if err != nil {
		return nil, err
	}
	withMemory := rec.Kind == SnapshotStandby && target != state.Stopped
	e, err := m.resolve(instanceRef)
	if err != nil {
		return nil, err
	}
	e.op.Lock()
	defer e.op.Unlock()
	st := m.currentState(ctx, e)
	if st != state.Stopped && st != state.Standby {
		return nil, &TransitionError{Action: ActionRestore + " snapshot", State: st, Allowed: Allowed(st)}
	}
	e.mu.Lock()
	id := e.meta.ID
	e.mu.Unlock()
	if rec.SourceInstanceID != id {
		return nil, &InvalidArgumentError{Field: "snapshot", Reason: fmt.Sprintf("snapshot %s was taken from instance %s, not %s; fork it instead", rec.ID, rec.SourceInstanceID, id)}
	}
	e.mu.Lock()
	oldVols := e.meta.Volumes
	e.mu.Unlock()
	// The instance mounts what the snapshot's source mounted.
	vols, err := m.switchVolumes(ctx, id, oldVols, rec.Source.Volumes, "snapshot "+rec.Name)
	if err != nil {
		return nil, fmt.Errorf("restore snapshot: %w", err)
	}
	dir, sdir := m.dir(id), m.cfg.Paths.SnapshotDir(rec.ID)
	newFiles := deriveDisks(sdir, "", rec.Source).Files
	for _, f := range deriveDisks(dir, "", Metadata{Volumes: oldVols}).Files {
		if !slices.Contains(newFiles, f) {
			os.Remove(filepath.Join(dir, f)) // an overlay disk of a volume the snapshot does not mount
		}
	}
	// Replace the disks through temp files + rename, so a crash leaves
	// either the old or the new disk, never a half copy.
	for _, f := range newFiles {
		tmp := filepath.Join(dir, "."+f+".restore")
		os.Remove(tmp)
		if err := copySparse(ctx, filepath.Join(sdir, f), tmp); err != nil {
			return nil, fmt.Errorf("restore snapshot: %w", err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("restore snapshot: %w", err)
		}
	}
	m.cancelCompression(e)
	if err := os.RemoveAll(filepath.Join(dir, standbyDir)); err != nil {
		return nil, err
	}
	if withMemory {
		if err := copyTree(ctx, filepath.Join(sdir, snapshotStateDir), filepath.Join(dir, standbyDir)); err != nil {
			return nil, fmt.Errorf("restore snapshot: copy state: %w", err)
		}
	}
	e.mu.Lock()
	e.meta.Volumes = vols
	e.meta.HasSnapshot = withMemory
	e.meta.StandbyCompression = StandbyCompression{}
	if e.meta.HasSnapshot {
		e.meta.StandbyCompression = rec.standbyCompression()
	}
	e.meta.RestartStatus = e.meta.RestartStatus.Cleared() // a restored instance starts with clean status
	err = m.persist(e)
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	m.logf(id, "restored snapshot %s (%s), target %s", rec.Name, rec.ID, target)
	now := state.Stopped
	if withMemory {
		now = state.Standby
	}
	m.publish(id, st, now, "snapshot restored")
	switch {
	case target == state.Running && withMemory:
		if err := m.restoreLocked(ctx, e, true, true); err != nil {
			return nil, err
		}
	case target == state.Running:
		if err := m.startLocked(ctx, e, StartParams{}); err != nil {
			return nil, err
		}
	}
	return m.view(ctx, e)
}

// ForkSnapshot creates a new instance from a snapshot. TargetState ""
// means Running for a Standby snapshot and Stopped for a Stopped one.
func (m *Manager) ForkSnapshot(ctx context.Context, snapshotRef string, p ForkParams) (_ *Instance, err error) {
	defer m.observe("snapshot_fork", time.Now(), &err)
	if err := ValidateName(p.Name); err != nil {
		return nil, err
	}
	rec, err := m.resolveSnapshot(snapshotRef)
	if err != nil {
		return nil, err
	}
	target, err := snapshotTarget(rec, p.TargetState, "fork")
	if err != nil {
		return nil, err
	}
	if err := m.reserveName(p.Name); err != nil {
		return nil, err
	}
	defer m.releaseName(p.Name)
	sdir := m.cfg.Paths.SnapshotDir(rec.ID)
	fs := forkSource{meta: rec.Source, diskDir: sdir}
	if rec.Kind == SnapshotStandby {
		fs.stateDir = filepath.Join(sdir, snapshotStateDir)
		fs.state = rec.standbyCompression()
	}
	return m.forkFrom(ctx, fs, p.Name, target)
}

// snapshotTarget is the state a restore or fork (verb) of rec ends in:
// requested, or by the snapshot's kind (Standby → Running, Stopped →
// Stopped). Only a Standby snapshot has the memory to end in Standby.
func snapshotTarget(rec *snapshotRecord, requested state.State, verb string) (state.State, error) {
	switch requested {
	case "":
		if rec.Kind == SnapshotStandby {
			return state.Running, nil
		}
		return state.Stopped, nil
	case state.Running, state.Stopped:
		return requested, nil
	case state.Standby:
		if rec.Kind != SnapshotStandby {
			return "", &InvalidArgumentError{Field: "target_state", Reason: "a Stopped snapshot has no memory state to " + verb + " into Standby"}
		}
		return requested, nil
	}
	return "", &InvalidArgumentError{Field: "target_state", Reason: "must be Running, Standby or Stopped"}
}
