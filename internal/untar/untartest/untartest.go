// Package untartest builds tar archives for tests and inspects what an
// extraction left on disk. Shared by the tests of untar, images and volumes,
// which all feed hand-made (often hostile) archives to the same applier.
package untartest

import (
	"archive/tar"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"syscall"
	"testing"
	"time"
)

// MTime is the modification time every Entry carries.
var MTime = time.Date(2023, 5, 6, 7, 8, 9, 0, time.UTC)

// Entry describes one tar entry. Zero Typ is a regular file, zero Mode 0644.
type Entry struct {
	Name     string
	Typ      byte
	Data     string
	Mode     int64
	UID, GID int
	Link     string
	Major    int64
	Minor    int64
	Xattrs   map[string]string
}

// Tar returns an uncompressed PAX tar of the entries.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Typ, Mode: e.Mode, Uid: e.UID, Gid: e.GID,
			Linkname: e.Link, ModTime: MTime, Devmajor: e.Major, Devminor: e.Minor, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Data))
		}
		if len(e.Xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.Xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.Data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Lstat stats p without following it and fails the test if it is missing.
func Lstat(t testing.TB, p string) (fs.FileInfo, *syscall.Stat_t) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return fi, fi.Sys().(*syscall.Stat_t)
}

// AssertAbsent fails the test if anything exists at p.
func AssertAbsent(t testing.TB, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s should not exist (err=%v)", p, err)
	}
}

// ReadFile returns p's content and fails the test if it cannot be read.
func ReadFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return string(b)
}
