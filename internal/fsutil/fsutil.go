// Package fsutil holds the few filesystem primitives every persisting package
// needs: atomic file replacement, versioned JSON records, and the conversion
// between Go file modes and the Unix permission bits that wire formats (tar,
// the cp protocol) carry.
//
// Why: the daemon can be killed at any instant (kill -9 is part of the test
// plan). A reader must see either the old or the new content of a metadata
// file, never a torn one, so every state write goes temp file → fsync →
// rename → fsync(dir). And a data dir outlives the binary that wrote it: every
// persisted JSON format carries a "version", files written before versions
// existed read as version 1, and a version this build does not know is
// refused with an error naming the file (VersionError) instead of being
// misread or silently rewritten in an older format.
package fsutil

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrIsDir is MakeRoom finding a directory where a file or link should go.
var ErrIsDir = errors.New("a directory is in the way")

// MakeRoom removes the entry at name in root unless it is a directory
// (ErrIsDir), so that a file or symlink can be created there without
// writing through a link that was there. Nothing there is fine.
func MakeRoom(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.IsDir():
		return ErrIsDir
	}
	return root.Remove(name)
}

// UnixPerm returns m's permission bits the Unix way: 0o777 plus 0o4000
// setuid, 0o2000 setgid and 0o1000 sticky (Go keeps those three elsewhere).
func UnixPerm(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// FileMode is the inverse of UnixPerm; bits above 0o7777 (a file type a
// tar header may carry) are ignored.
func FileMode(u uint32) fs.FileMode {
	m := fs.FileMode(u & 0o777)
	if u&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if u&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if u&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// VersionError says a persisted file carries a format version this build
// cannot read (written by a newer hypemand, or damaged).
type VersionError struct {
	Path    string
	Version int
	Known   int // the newest version this build reads
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("%s: format version %d is unknown to this hypemand (it reads versions 1 to %d); "+
		"the file was written by a newer hypemand: run that version again, or restore the file from a backup",
		e.Path, e.Version, e.Known)
}

// ReadVersionedJSON reads the JSON record at path into v after checking its
// top-level "version" field: a record without one is version 1 (written
// before formats were versioned); a version outside 1..known returns a
// *VersionError and leaves v untouched. It returns the record's version.
func ReadVersionedJSON(path string, known int, v any) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var head struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	version := 1
	if head.Version != nil {
		version = *head.Version
	}
	if version < 1 || version > known {
		return version, &VersionError{Path: path, Version: version, Known: known}
	}
	if err := json.Unmarshal(b, v); err != nil {
		return version, fmt.Errorf("read %s: %w", path, err)
	}
	return version, nil
}

// WriteFileAtomic replaces path with data atomically and durably.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: rename: %w", path, err)
	}
	ok = true
	return SyncDir(dir)
}

// WriteJSONAtomic marshals v (indented) and writes it with WriteFileAtomic.
func WriteJSONAtomic(path string, v any, perm os.FileMode) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: marshal: %w", path, err)
	}
	return WriteFileAtomic(path, append(b, '\n'), perm)
}

// ReadJSON reads path into v.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

// SyncDir fsyncs a directory so a rename or create inside it is durable.
func SyncDir(dir string) error { return syncPath("sync dir", dir) }

// SyncFile fsyncs a file by name: for data another process wrote (e.g.
// through a shared mapping) that must be on disk before something refers
// to it.
func SyncFile(path string) error { return syncPath("sync", path) }

func syncPath(what, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	return nil
}

// Exchange atomically swaps two existing paths in the same filesystem (files
// or directories; Linux renameat2 RENAME_EXCHANGE) and syncs their parent
// dirs: a crash leaves either both old or both new names, never neither.
func Exchange(a, b string) error {
	if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
		return &os.LinkError{Op: "exchange", Old: a, New: b, Err: err}
	}
	if err := SyncDir(filepath.Dir(a)); err != nil {
		return err
	}
	if filepath.Dir(a) != filepath.Dir(b) {
		return SyncDir(filepath.Dir(b))
	}
	return nil
}
