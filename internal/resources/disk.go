package resources

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DiskBreakdown is what the data dir holds, in allocated bytes (st_blocks ×
// 512: sparse overlays and volumes count what they really take).
type DiskBreakdown struct {
	// ImagesBytes: the image store's root disks.
	ImagesBytes int64
	// OCICacheBytes: blobs kept as OCI content (the built-in registry and
	// the pushes dir), the closest thing this server has to upstream's
	// OCI layer cache.
	OCICacheBytes int64
	// OverlaysBytes: the instances' dirs except their saved memory states
	// (writable overlays, config disks, logs).
	OverlaysBytes int64
	VolumesBytes  int64
	// SnapshotsBytes: snapshots plus instances' standby memory states.
	// Upstream's schema has no field for them; the API adds
	// snapshots_bytes.
	SnapshotsBytes int64
}

// outsideInstances is the part of the breakdown no instance hold covers
// (instances hold their provisioned overlay size instead of what the
// overlay has filled so far).
func (b DiskBreakdown) outsideInstances() int64 {
	return b.ImagesBytes + b.OCICacheBytes + b.VolumesBytes + b.SnapshotsBytes
}

// DiskDirs are the directories the scanner measures.
type DiskDirs struct {
	Images    string
	OCICache  []string
	Instances string
	// StandbyDirName is the name of the memory state dir inside an
	// instance dir (counted as a snapshot); names starting with it too
	// (a delayed compression's output).
	StandbyDirName string
	Volumes        string
	Snapshots      string
}

// DiskScanner measures the data dir, caching the result for TTL so that
// admissions do not walk the tree each time.
type DiskScanner struct {
	dirs DiskDirs
	ttl  time.Duration
	now  func() time.Time

	mu   sync.Mutex
	last DiskBreakdown
	at   time.Time
	err  error
}

// NewDiskScanner makes a scanner; now nil = time.Now.
func NewDiskScanner(dirs DiskDirs, ttl time.Duration, now func() time.Time) *DiskScanner {
	if now == nil {
		now = time.Now
	}
	return &DiskScanner{dirs: dirs, ttl: ttl, now: now}
}

// Usage returns the last scan if it is younger than the TTL, else scans.
func (s *DiskScanner) Usage(ctx context.Context) (DiskBreakdown, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.at.IsZero() && s.now().Sub(s.at) < s.ttl {
		return s.last, s.err
	}
	return s.scanLocked(ctx)
}

// Refresh scans now.
func (s *DiskScanner) Refresh(ctx context.Context) (DiskBreakdown, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.scanLocked(ctx)
}

func (s *DiskScanner) scanLocked(ctx context.Context) (DiskBreakdown, error) {
	var b DiskBreakdown
	var errs []error
	add := func(dst *int64, dir string, skip func(rel string) bool) {
		n, err := allocatedBytes(ctx, dir, skip)
		*dst += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(&b.ImagesBytes, s.dirs.Images, nil)
	for _, d := range s.dirs.OCICache {
		add(&b.OCICacheBytes, d, nil)
	}
	add(&b.VolumesBytes, s.dirs.Volumes, nil)
	add(&b.SnapshotsBytes, s.dirs.Snapshots, nil)
	if s.dirs.Instances != "" {
		isState := func(rel string) bool {
			parts := strings.Split(rel, string(filepath.Separator))
			return s.dirs.StandbyDirName != "" && len(parts) >= 2 && strings.HasPrefix(parts[1], s.dirs.StandbyDirName)
		}
		add(&b.OverlaysBytes, s.dirs.Instances, isState)
		add(&b.SnapshotsBytes, s.dirs.Instances, func(rel string) bool { return !isState(rel) })
	}
	s.last, s.at, s.err = b, s.now(), errors.Join(errs...)
	return b, s.err
}

// allocatedBytes sums st_blocks × 512 of the regular files under dir
// (missing dir = 0), skipping files whose path relative to dir skip
// accepts. Files vanishing during the walk are ignored.
func allocatedBytes(ctx context.Context, dir string, skip func(rel string) bool) (int64, error) {
	if dir == "" {
		return 0, nil
	}
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if skip != nil {
			if rel, rerr := filepath.Rel(dir, path); rerr == nil && skip(rel) {
				return nil
			}
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return n, err
}
