package schedules

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"hypeman/internal/fsutil"
)

// recordVersion is the schedule file format this build writes and reads.
const recordVersion = 1

// store keeps one <instance id>.json per schedule in dir.
type store struct{ dir string }

func (s store) path(id string) string { return filepath.Join(s.dir, id+".json") }

func (s store) put(sc *Schedule) error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("schedules: %w", err)
	}
	sc.Version = recordVersion
	return fsutil.WriteJSONAtomic(s.path(sc.InstanceID), sc, 0o644)
}

func (s store) remove(id string) error {
	err := os.Remove(s.path(id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("schedules: %w", err)
	}
	return fsutil.SyncDir(s.dir)
}

// loadAll reads every schedule; unreadable ones are returned as errors
// by file (the rest still load).
func (s store) loadAll() (map[string]*Schedule, []error) {
	out := map[string]*Schedule{}
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return out, []error{fmt.Errorf("schedules: %w", err)}
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		var sc Schedule
		if _, err := fsutil.ReadVersionedJSON(filepath.Join(s.dir, name), recordVersion, &sc); err != nil {
			errs = append(errs, err)
			continue
		}
		if sc.InstanceID != strings.TrimSuffix(name, ".json") {
			errs = append(errs, fmt.Errorf("schedules: %s names instance %q", name, sc.InstanceID))
			continue
		}
		out[sc.InstanceID] = &sc
	}
	return out, errs
}
