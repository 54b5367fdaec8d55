package volumes

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"

	"hypeman/internal/testutil/tier"
	"hypeman/internal/untar"
	"hypeman/internal/untar/untartest"
)

type entry = untartest.Entry

func gz(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func tarGz(t testing.TB, entries ...entry) []byte { return gz(t, untartest.Tar(t, entries...)) }

// TestHostileArchives: every hostile archive ends in an *ArchiveError that
// names the entry, writes nothing outside the volume's staging tree, and
// leaves no volume behind.
func TestHostileArchives(t *testing.T) {
	tier.Root(t, "extraction gives files their owners (chown)")
	tier.Tools(t, "mkfs.ext4")
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	os.Mkdir(outside, 0o755)
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("precious"), 0o644)
	s := newStore(t, filepath.Join(base, "volumes"))
	up := "../../../../../../outside" // from <volumes>/<id>/staging, far enough up

	for _, tc := range []struct {
		name    string
		body    []byte
		entry   string // the entry the error must name
		wantErr error  // nil: just an ArchiveError
	}{
		{"traversal", tarGz(t, entry{Name: "../../../escaped", Data: "x"}), "../../../escaped", untar.ErrUnsafePath},
		{"nested traversal", tarGz(t, entry{Name: "a/../../escaped", Data: "x"}), "a/../../escaped", untar.ErrUnsafePath},
		{"harmless-looking dotdot", tarGz(t, entry{Name: "a/../b", Data: "x"}), "a/../b", untar.ErrUnsafePath},
		{"absolute", tarGz(t, entry{Name: victim, Data: "pwned"}), victim, untar.ErrUnsafePath},
		{"symlink then write-through", tarGz(t,
			entry{Name: "l", Typ: tar.TypeSymlink, Link: up},
			entry{Name: "l/victim", Data: "pwned"}), "l/victim", untar.ErrUnsafePath},
		{"absolute symlink then write-through", tarGz(t,
			entry{Name: "l", Typ: tar.TypeSymlink, Link: outside},
			entry{Name: "l/new", Data: "pwned"}), "l/new", untar.ErrUnsafePath},
		{"symlinked dir then nested write", tarGz(t,
			entry{Name: "d/", Typ: tar.TypeDir, Mode: 0o755},
			entry{Name: "d/l", Typ: tar.TypeSymlink, Link: "/"},
			entry{Name: "d/l/etc/x", Data: "pwned"}), "d/l/etc/x", untar.ErrUnsafePath},
		{"hardlink escape", tarGz(t, entry{Name: "h", Typ: tar.TypeLink, Link: up + "/victim"}), "h", untar.ErrUnsafePath},
		{"hardlink through symlink", tarGz(t,
			entry{Name: "l", Typ: tar.TypeSymlink, Link: outside},
			entry{Name: "h", Typ: tar.TypeLink, Link: "l/victim"}), "h", nil},
		{"hardlink absolute", tarGz(t, entry{Name: "h", Typ: tar.TypeLink, Link: victim}), "h", untar.ErrUnsafePath},
		{"char device", tarGz(t, entry{Name: "mem", Typ: tar.TypeChar, Mode: 0o666, Major: 1, Minor: 1}), "mem", untar.ErrRefused},
		{"block device", tarGz(t, entry{Name: "sda", Typ: tar.TypeBlock, Mode: 0o660, Major: 8}), "sda", untar.ErrRefused},
		{"fifo", tarGz(t, entry{Name: "pipe", Typ: tar.TypeFifo}), "pipe", untar.ErrRefused},
		{"not an archive", []byte("hello, this is not gzip"), "", nil},
		{"truncated gzip", tarGz(t, entry{Name: "f", Data: strings.Repeat("x", 10000)})[:40], "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.CreateFromArchive(context.Background(), CreateParams{Name: "hostile", SizeGB: 1}, bytes.NewReader(tc.body))
			var ae *ArchiveError
			if !errors.As(err, &ae) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want an ArchiveError", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.entry != "" && !strings.Contains(err.Error(), `"`+tc.entry+`"`) {
				t.Errorf("error %q does not name the entry %q", err, tc.entry)
			}
			if got := untartest.ReadFile(t, victim); got != "precious" {
				t.Fatalf("file outside the volume was modified: %q", got)
			}
			for _, p := range []string{filepath.Join(base, "escaped"), filepath.Join(outside, "new"),
				filepath.Join(base, "volumes", "escaped"), "/escaped", "/etc/x"} {
				untartest.AssertAbsent(t, p)
			}
			if entries, _ := os.ReadDir(s.dir); len(entries) != 0 {
				t.Errorf("failed create left %d entries in the volumes dir", len(entries))
			}
			if vols, _ := s.List(context.Background(), nil); len(vols) != 0 {
				t.Errorf("failed create left a volume: %+v", vols)
			}
		})
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Errorf("outside dir holds %d entries, want only the victim", len(entries))
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// gzipBomb is a tar.gz holding one file of size zero bytes (size a
// multiple of 1 MiB), ~1 KB compressed per MiB. It is built as gzip members
// (the tar header, then the same 1 MiB of zeros over and over, then the end
// of archive), which gzip readers concatenate, so building it costs one
// compression of 1 MiB.
func gzipBomb(t testing.TB, size int64) []byte {
	t.Helper()
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	if err := tw.WriteHeader(&tar.Header{Name: "zeros", Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	out := bytes.NewBuffer(gz(t, hdr.Bytes()))
	mib := gz(t, make([]byte, 1<<20))
	for i := int64(0); i < size>>20; i++ {
		out.Write(mib)
	}
	out.Write(gz(t, make([]byte, 1024))) // end of archive
	return out.Bytes()
}

// TestGzipBombStopsAtCap: a 1 GiB gzip bomb against a 100 MiB cap stops at
// the cap (the extraction reads only a fraction of the compressed bytes and
// writes no more than the cap) with a TooLargeError naming size_gb.
func TestGzipBombStopsAtCap(t *testing.T) {
	tier.Root(t, "extraction gives files their owners (chown)")
	// The construction is a real bomb: a small one unpacks to its size.
	zr, err := gzip.NewReader(bytes.NewReader(gzipBomb(t, 4<<20)))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	if h, err := tr.Next(); err != nil || h.Size != 4<<20 {
		t.Fatalf("small bomb: %v, %v", h, err)
	}
	if n, err := io.Copy(io.Discard, tr); n != 4<<20 || err != nil {
		t.Fatalf("small bomb unpacked %d bytes: %v", n, err)
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Fatalf("small bomb: no clean end of archive: %v", err)
	}

	t0 := time.Now()
	bomb := gzipBomb(t, 1<<30)
	t.Logf("1 GiB bomb: %d bytes compressed, built in %v", len(bomb), time.Since(t0).Round(time.Millisecond))
	base := t.TempDir()
	staging := filepath.Join(base, "staging")
	os.Mkdir(staging, 0o700)

	cr := &countingReader{r: bytes.NewReader(bomb)}
	const capBytes = 100 << 20
	t1 := time.Now()
	_, err = extract(context.Background(), staging, cr, capBytes, 7)
	took := time.Since(t1)
	var tl *TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), "size_gb=7") {
		t.Fatalf("err = %v, want a TooLargeError naming size_gb", err)
	}
	t.Logf("stopped after %v, %d of %d compressed bytes read", took.Round(time.Millisecond), cr.n, len(bomb))
	if cr.n > int64(len(bomb))/2 {
		t.Errorf("read %d of %d compressed bytes: the cap did not stop the stream early", cr.n, len(bomb))
	}
	var written int64
	filepath.Walk(base, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			written += fi.Size()
		}
		return nil
	})
	if written > capBytes+1 {
		t.Errorf("wrote %d bytes, cap %d", written, capBytes)
	}
	entries, _ := os.ReadDir(base)
	if len(entries) != 1 {
		t.Errorf("extraction wrote outside staging: %v", entries)
	}
}

// A stream of empty gzip members decompresses to nothing: the compressed
// cap stops it too.
func TestEndlessCompressedStreamStopsAtCap(t *testing.T) {
	tier.Root(t, "extraction gives files their owners (chown)")
	r := &repeatReader{b: gz(t, nil)}
	_, err := extract(context.Background(), t.TempDir(), io.LimitReader(r, 64<<20), 1<<20, 1)
	var tl *TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(tl.What, "compressed") {
		t.Fatalf("err = %v, want the compressed cap", err)
	}
}

type repeatReader struct {
	b   []byte
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}

// TestFromArchiveKeepsMetadata checks, inside the built ext4 image (debugfs,
// no mount), that modes, owners, mtimes, symlinks and hardlinks survived.
func TestFromArchiveKeepsMetadata(t *testing.T) {
	tier.Root(t, "extraction gives files their owners (chown)")
	tier.Tools(t, "mkfs.ext4", "debugfs")
	s := newStore(t, "")
	body := tarGz(t,
		entry{Name: "app/", Typ: tar.TypeDir, Mode: 0o750, UID: 1000, GID: 1000},
		entry{Name: "app/run.sh", Data: "#!/bin/sh\necho hi\n", Mode: 0o755, UID: 1000, GID: 1001},
		entry{Name: "app/secret", Data: "s3cret", Mode: 0o600, UID: 1000, GID: 1000},
		entry{Name: "app/suid", Data: "x", Mode: 0o4755},
		entry{Name: "app/link", Typ: tar.TypeSymlink, Link: "run.sh"},
		entry{Name: "app/hard", Typ: tar.TypeLink, Link: "app/run.sh"},
		entry{Name: "shared/", Typ: tar.TypeDir, Mode: 0o1777},
		entry{Name: "no/parent/entry", Data: "deep"},
	)
	v, err := s.CreateFromArchive(context.Background(), CreateParams{Name: "seeded", SizeGB: 1}, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(v.Path); err != nil || fi.Size() != 1<<30 {
		t.Fatalf("disk: %v", err)
	}
	mt := untartest.MTime.Unix()
	for _, c := range []struct {
		path     string
		typ      string
		mode     uint32
		uid, gid int
	}{
		{"/", "directory", 0o755, 0, 0},
		{"/app", "directory", 0o750, 1000, 1000},
		{"/app/run.sh", "regular", 0o755, 1000, 1001},
		{"/app/secret", "regular", 0o600, 1000, 1000},
		{"/app/suid", "regular", 0o4755, 0, 0},
		{"/shared", "directory", 0o1777, 0, 0},
		{"/no/parent/entry", "regular", 0o644, 0, 0},
	} {
		in := debugfsStat(t, v.Path, c.path)
		if in.typ != c.typ || in.mode != c.mode || in.uid != c.uid || in.gid != c.gid {
			t.Errorf("%s = %s %#o %d:%d, want %s %#o %d:%d", c.path, in.typ, in.mode, in.uid, in.gid, c.typ, c.mode, c.uid, c.gid)
		}
		if c.path != "/" && c.path != "/no/parent/entry" && in.mtime != mt {
			t.Errorf("%s mtime = %d, want %d", c.path, in.mtime, mt)
		}
	}
	if in := debugfsStat(t, v.Path, "/app/link"); in.typ != "symlink" || in.linkTarget != "run.sh" {
		t.Errorf("/app/link = %+v, want a symlink to run.sh", in)
	}
	if in := debugfsStat(t, v.Path, "/app/hard"); in.links != 2 {
		t.Errorf("/app/hard links = %d, want 2 (a hardlink of run.sh)", in.links)
	}
	out, err := exec.Command("debugfs", "-R", "cat /app/run.sh", v.Path).Output()
	if err != nil || string(out) != "#!/bin/sh\necho hi\n" {
		t.Errorf("run.sh content = %q, %v", out, err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(v.Path), stagingDir)); !os.IsNotExist(err) {
		t.Errorf("staging dir left behind: %v", err)
	}
}

// A plain (uncompressed) tar works too; content over size_gb is refused.
func TestFromArchivePlainTarAndCap(t *testing.T) {
	tier.Root(t, "extraction gives files their owners (chown)")
	tier.Tools(t, "mkfs.ext4", "debugfs")
	s := newStore(t, "")
	v, err := s.CreateFromArchive(context.Background(), CreateParams{Name: "plain", SizeGB: 1},
		bytes.NewReader(untartest.Tar(t, entry{Name: "hello", Data: "world"})))
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("debugfs", "-R", "cat /hello", v.Path).Output(); string(out) != "world" {
		t.Errorf("hello = %q", out)
	}
}
