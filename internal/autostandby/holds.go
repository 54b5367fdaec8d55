package autostandby

import (
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"hypeman/internal/fsutil"
)

// holdsVersion is the version of the holds file's format.
const holdsVersion = 1

// holdsFile is the persisted form: {"version":1,"holds":{"<id>":"<until>"}}.
type holdsFile struct {
	Version int                  `json:"version"`
	Holds   map[string]time.Time `json:"holds"`
}

// holdStore keeps holds in memory and, with a path, on disk (written
// atomically on every change) so a daemon restart keeps them.
type holdStore struct {
	path string
	mu   sync.Mutex
	m    map[string]time.Time
}

func loadHolds(path string) (*holdStore, error) {
	s := &holdStore{path: path, m: map[string]time.Time{}}
	if path == "" {
		return s, nil
	}
	var f holdsFile
	if _, err := fsutil.ReadVersionedJSON(path, holdsVersion, &f); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return s, nil
		}
		return nil, fmt.Errorf("auto-standby holds: %w", err)
	}
	for id, t := range f.Holds {
		s.m[id] = t
	}
	return s, nil
}

func (s *holdStore) get(id string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.m[id]
	return t, ok
}

// extend sets id's hold to until unless a later one exists; it returns the
// hold in effect.
func (s *holdStore) extend(id string, until time.Time) (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.m[id]; ok && !cur.Before(until) {
		return cur, nil
	}
	prev, had := s.m[id]
	s.m[id] = until
	if err := s.saveLocked(); err != nil {
		if had {
			s.m[id] = prev
		} else {
			delete(s.m, id)
		}
		return time.Time{}, err
	}
	return until, nil
}

func (s *holdStore) remove(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[id]; !ok {
		return nil
	}
	delete(s.m, id)
	return s.saveLocked()
}

func (s *holdStore) saveLocked() error {
	if s.path == "" {
		return nil
	}
	f := holdsFile{Version: holdsVersion, Holds: s.m}
	if err := fsutil.WriteJSONAtomic(s.path, f, 0o600); err != nil {
		return fmt.Errorf("auto-standby holds: %w", err)
	}
	return nil
}
