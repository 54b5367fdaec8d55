package images

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hypeman/internal/testutil/tier"
)

var testMTime = time.Date(2023, 5, 6, 7, 8, 9, 0, time.UTC)

// entry describes one tar entry for tests.
type entry struct {
	name     string
	typ      byte
	data     string
	mode     int64
	uid, gid int
	link     string
	major    int64
	minor    int64
	xattrs   map[string]string
}

func mkTar(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Linkname: e.link, ModTime: testMTime, Devmajor: e.major, Devminor: e.minor, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// flattenLayers applies the layers into a fresh dir and returns it.
func flattenLayers(t *testing.T, layers ...[]byte) (string, error) {
	t.Helper()
	needsChown(t)
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := newFlattener(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, l := range layers {
		if err := f.applyLayer(context.Background(), bytes.NewReader(l)); err != nil {
			return dir, err
		}
	}
	return dir, f.finish()
}

func mustFlatten(t *testing.T, layers ...[]byte) string {
	t.Helper()
	dir, err := flattenLayers(t, layers...)
	if err != nil {
		t.Fatalf("flatten: %v", err)
	}
	return dir
}

// needsChown marks a test that converts layers: the flattener gives every
// file its owner from the tar header, which needs root (package tier skips
// it in the unit tier).
func needsChown(t testing.TB) {
	t.Helper()
	tier.Root(t, "image conversion gives files their owners (chown to any uid)")
}

func lstat(t *testing.T, p string) (fs.FileInfo, *syscall.Stat_t) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return fi, fi.Sys().(*syscall.Stat_t)
}

func assertAbsent(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s should not exist (err=%v)", p, err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return string(b)
}

func TestFlattenKeepsMetadata(t *testing.T) {
	dir := mustFlatten(t, mkTar(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o755},
		entry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "bin/su", data: "suid", mode: 0o4755, uid: 0, gid: 0},
		entry{name: "bin/sg", data: "sgid", mode: 0o2711, uid: 0, gid: 50},
		entry{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
		entry{name: "home/app/", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
		entry{name: "home/app/notes", data: "hello", mode: 0o600, uid: 1000, gid: 1001},
		entry{name: "bin/sh", typ: tar.TypeSymlink, link: "busybox", uid: 7, gid: 8},
		entry{name: "bin/busybox", data: "BB", mode: 0o755},
		entry{name: "bin/ash", typ: tar.TypeLink, link: "bin/busybox"},
		entry{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		entry{name: "dev/loop9", typ: tar.TypeBlock, mode: 0o660, major: 7, minor: 9, gid: 6},
		entry{name: "run/fifo", typ: tar.TypeFifo, mode: 0o620},
		entry{name: "bin/ping", data: "ping", mode: 0o755, xattrs: map[string]string{"user.hypeman": "cap"}},
	))

	check := func(p string, wantMode os.FileMode, uid, gid uint32) *syscall.Stat_t {
		t.Helper()
		fi, st := lstat(t, filepath.Join(dir, p))
		if fi.Mode() != wantMode {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), wantMode)
		}
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
		}
		return st
	}
	check("bin/su", os.ModeSetuid|0o755, 0, 0)
	check("bin/sg", os.ModeSetgid|0o711, 0, 50)
	check("tmp", os.ModeDir|os.ModeSticky|0o777, 0, 0)
	check("home/app", os.ModeDir|0o750, 1000, 1000)
	check("home/app/notes", 0o600, 1000, 1001)
	check(".", os.ModeDir|0o755, 0, 0)
	check("dev/null", os.ModeDevice|os.ModeCharDevice|0o666, 0, 0)
	st := check("dev/loop9", os.ModeDevice|0o660, 0, 6)
	if unix.Major(st.Rdev) != 7 || unix.Minor(st.Rdev) != 9 {
		t.Errorf("dev/loop9: rdev %d:%d, want 7:9", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	check("run/fifo", os.ModeNamedPipe|0o620, 0, 0)

	// Symlink kept verbatim, with its own owner and mtime.
	fi, lst := lstat(t, filepath.Join(dir, "bin/sh"))
	if fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("bin/sh is not a symlink: %v", fi.Mode())
	}
	if target, _ := os.Readlink(filepath.Join(dir, "bin/sh")); target != "busybox" {
		t.Errorf("bin/sh -> %q, want busybox", target)
	}
	if lst.Uid != 7 || lst.Gid != 8 {
		t.Errorf("bin/sh owner %d:%d, want 7:8", lst.Uid, lst.Gid)
	}
	if !fi.ModTime().Equal(testMTime) {
		t.Errorf("bin/sh mtime %v, want %v", fi.ModTime(), testMTime)
	}

	// Hardlink shares the inode.
	_, a := lstat(t, filepath.Join(dir, "bin/ash"))
	_, b := lstat(t, filepath.Join(dir, "bin/busybox"))
	if a.Ino != b.Ino || b.Nlink != 2 {
		t.Errorf("bin/ash inode %d nlink %d; bin/busybox inode %d: want one inode with 2 links", a.Ino, b.Nlink, b.Ino)
	}

	// Mtimes, including directories written into after their entry.
	for _, p := range []string{"bin", "bin/busybox", "home/app", "home/app/notes", "dev/null", "."} {
		fi, _ := lstat(t, filepath.Join(dir, p))
		if !fi.ModTime().Equal(testMTime) {
			t.Errorf("%s: mtime %v, want %v", p, fi.ModTime(), testMTime)
		}
	}

	// Xattr.
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(filepath.Join(dir, "bin/ping"), "user.hypeman", buf)
	if err != nil || string(buf[:n]) != "cap" {
		t.Errorf("xattr user.hypeman = %q, %v; want cap", buf[:max(n, 0)], err)
	}
	// Implicit parents get 0755 root:root.
	check("dev", os.ModeDir|0o755, 0, 0)
}

func TestFlattenWhiteouts(t *testing.T) {
	l1 := mkTar(t,
		entry{name: "a/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "a/gone", data: "x"},
		entry{name: "a/kept", data: "y"},
		entry{name: "a/dir/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "a/dir/deep", data: "z"},
		entry{name: "link", typ: tar.TypeSymlink, link: "a/kept"},
	)
	l2 := mkTar(t,
		entry{name: "a/.wh.gone", data: ""},
		entry{name: "a/.wh.dir", data: ""},
		entry{name: ".wh.link", data: ""},    // removes the symlink, not its target
		entry{name: "nodir/.wh.x", data: ""}, // nothing to hide: no error, no dir created
		entry{name: "a/new", data: "n"},
	)
	dir := mustFlatten(t, l1, l2)
	assertAbsent(t, filepath.Join(dir, "a/gone"))
	assertAbsent(t, filepath.Join(dir, "a/dir"))
	assertAbsent(t, filepath.Join(dir, "link"))
	assertAbsent(t, filepath.Join(dir, "nodir"))
	assertAbsent(t, filepath.Join(dir, "a/.wh.gone"))
	if got := readFile(t, filepath.Join(dir, "a/kept")); got != "y" {
		t.Errorf("a/kept = %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "a/new")); got != "n" {
		t.Errorf("a/new = %q", got)
	}
}

func TestFlattenOpaqueDir(t *testing.T) {
	l1 := mkTar(t,
		entry{name: "d/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "d/old", data: "old"},
		entry{name: "d/sub/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "d/sub/old", data: "old"},
		entry{name: "d/sub2/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "d/sub2/old", data: "old"},
		entry{name: "other", data: "o"},
	)
	// The new entries come before and after the marker: the marker hides
	// only lower layers, whatever the order.
	l2 := mkTar(t,
		entry{name: "d/", typ: tar.TypeDir, mode: 0o700},
		entry{name: "d/+before", data: "b"},
		entry{name: "d/.wh..wh..opq", data: ""},
		entry{name: "d/sub/new", data: "n"},
		entry{name: "d/zafter", data: "a"},
	)
	dir := mustFlatten(t, l1, l2)
	assertAbsent(t, filepath.Join(dir, "d/old"))
	assertAbsent(t, filepath.Join(dir, "d/sub/old"))
	assertAbsent(t, filepath.Join(dir, "d/sub2"))
	assertAbsent(t, filepath.Join(dir, "d/.wh..wh..opq"))
	for p, want := range map[string]string{"d/+before": "b", "d/sub/new": "n", "d/zafter": "a", "other": "o"} {
		if got := readFile(t, filepath.Join(dir, p)); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	if fi, _ := lstat(t, filepath.Join(dir, "d")); fi.Mode().Perm() != 0o700 {
		t.Errorf("d mode %v, want 0700", fi.Mode())
	}
}

func TestFlattenReplacesTypes(t *testing.T) {
	l1 := mkTar(t,
		entry{name: "f", data: "file"},
		entry{name: "d/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "d/x", data: "x"},
		entry{name: "s", typ: tar.TypeSymlink, link: "d"},
		entry{name: "keep/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "keep/x", data: "x"},
	)
	l2 := mkTar(t,
		entry{name: "f/", typ: tar.TypeDir, mode: 0o755}, // file → dir
		entry{name: "f/in", data: "in"},
		entry{name: "d", data: "now a file"},                // dir → file
		entry{name: "s/", typ: tar.TypeDir, mode: 0o711},    // symlink → real dir (not followed)
		entry{name: "keep/", typ: tar.TypeDir, mode: 0o700}, // dir over dir: contents kept
	)
	dir := mustFlatten(t, l1, l2)
	if got := readFile(t, filepath.Join(dir, "f/in")); got != "in" {
		t.Errorf("f/in = %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "d")); got != "now a file" {
		t.Errorf("d = %q", got)
	}
	if fi, _ := lstat(t, filepath.Join(dir, "s")); !fi.IsDir() || fi.Mode().Perm() != 0o711 {
		t.Errorf("s: mode %v, want a 0711 directory", fi.Mode())
	}
	if got := readFile(t, filepath.Join(dir, "keep/x")); got != "x" {
		t.Errorf("keep/x = %q", got)
	}
}

func TestFlattenFollowsSymlinkedParentsInsideRoot(t *testing.T) {
	// usrmerge style: lib -> usr/lib; a later layer writes lib/x without a
	// lib/ entry: the file lands in usr/lib.
	l1 := mkTar(t,
		entry{name: "usr/lib/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
		entry{name: "var/run", typ: tar.TypeSymlink, link: "/run"}, // absolute
		entry{name: "run/", typ: tar.TypeDir, mode: 0o755},
	)
	l2 := mkTar(t,
		entry{name: "lib/libz.so", data: "z"},
		entry{name: "var/run/pid", data: "1"},
	)
	dir := mustFlatten(t, l1, l2)
	if got := readFile(t, filepath.Join(dir, "usr/lib/libz.so")); got != "z" {
		t.Errorf("usr/lib/libz.so = %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "run/pid")); got != "1" {
		t.Errorf("run/pid = %q", got)
	}
	if fi, _ := lstat(t, filepath.Join(dir, "lib")); fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("lib should still be a symlink")
	}
}

func TestFlattenRejectsTraversal(t *testing.T) {
	for _, tc := range []struct {
		name  string
		layer []entry
	}{
		{"dotdot", []entry{{name: "../escaped", data: "x"}}},
		{"nested dotdot", []entry{{name: "a/../../escaped", data: "x"}}},
		{"hardlink out", []entry{{name: "h", typ: tar.TypeLink, link: "../../../etc/passwd"}}},
		{"whiteout dotdot", []entry{{name: "a/.wh..", data: ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			needsChown(t)
			parent := t.TempDir()
			dir := filepath.Join(parent, "root")
			os.Mkdir(dir, 0o755)
			f, err := newFlattener(dir, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			err = f.applyLayer(context.Background(), bytes.NewReader(mkTar(t, tc.layer...)))
			if !errors.Is(err, ErrUnsafePath) {
				t.Fatalf("err = %v, want ErrUnsafePath", err)
			}
			assertAbsent(t, filepath.Join(parent, "escaped"))
		})
	}
}

func TestFlattenSymlinkEscapesStayInside(t *testing.T) {
	needsChown(t)
	parent := t.TempDir()
	outside := filepath.Join(parent, "outside")
	os.Mkdir(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "victim"), []byte("precious"), 0o644)

	dir := filepath.Join(parent, "root")
	os.Mkdir(dir, 0o755)
	f, err := newFlattener(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	layers := [][]entry{
		{
			{name: "up", typ: tar.TypeSymlink, link: "../outside"},
			{name: "abs", typ: tar.TypeSymlink, link: parent + "/outside"},
			{name: "root", typ: tar.TypeSymlink, link: "/"},
			{name: "deep/l", typ: tar.TypeSymlink, link: "../../../../../../outside"},
			{name: "loop1", typ: tar.TypeSymlink, link: "loop2"},
			{name: "loop2", typ: tar.TypeSymlink, link: "loop1"},
		},
		{
			{name: "up/victim", data: "pwned-up"},
			{name: "abs/victim", data: "pwned-abs"},
			{name: "root/../outside/victim", data: "pwned-root"},
			{name: "deep/l/victim2", data: "pwned-deep"},
			{name: "root/via-root", data: "r"},
			{name: "up/.wh.victim", data: ""},
			{name: "hl", typ: tar.TypeLink, link: "up/victim"},
		},
	}
	for i, l := range layers {
		if err := f.applyLayer(context.Background(), bytes.NewReader(mkTar(t, l...))); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
	}
	if got := readFile(t, filepath.Join(outside, "victim")); got != "precious" {
		t.Fatalf("file outside the root was modified: %q", got)
	}
	assertAbsent(t, filepath.Join(outside, "victim2"))
	// Everything landed inside, with the root as "/".
	if got := readFile(t, filepath.Join(dir, "outside/victim2")); got != "pwned-deep" {
		t.Errorf("root/outside/victim2 = %q", got)
	}
	if got := readFile(t, filepath.Join(dir, parent, "outside/victim")); got != "pwned-abs" {
		t.Errorf("abs target should resolve under the root: %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "via-root")); got != "r" {
		t.Errorf("via-root = %q", got)
	}
	assertAbsent(t, "/via-root")
	// up/victim was whited out in the same layer that wrote it: kept (a
	// whiteout only hides lower layers), and the hardlink points at it.
	if got := readFile(t, filepath.Join(dir, "hl")); got != "pwned-root" {
		t.Errorf("hl = %q", got)
	}

	// A symlink loop is an error, not a hang.
	err = f.applyLayer(context.Background(), bytes.NewReader(mkTar(t, entry{name: "loop1/x", data: "x"})))
	if !errors.Is(err, ErrCorruptLayer) {
		t.Fatalf("loop: err = %v, want ErrCorruptLayer", err)
	}
}

func TestFlattenHardlinkTargetMissing(t *testing.T) {
	_, err := flattenLayers(t, mkTar(t, entry{name: "h", typ: tar.TypeLink, link: "nope"}))
	if !errors.Is(err, ErrCorruptLayer) {
		t.Fatalf("err = %v, want ErrCorruptLayer", err)
	}
}

func TestFlattenTruncatedTar(t *testing.T) {
	b := mkTar(t, entry{name: "big", data: string(bytes.Repeat([]byte("x"), 10000))})
	_, err := flattenLayers(t, b[:3000])
	if err == nil {
		t.Fatal("truncated tar applied without error")
	}
	var le *localError
	if errors.As(err, &le) {
		t.Fatalf("truncated tar reported as a local error: %v", err)
	}
}

func TestCleanEntryPath(t *testing.T) {
	for in, want := range map[string]string{
		"./": ".", "/": ".", "a/b/": "a/b", "/etc/passwd": "etc/passwd", "./a/../b": "b", "a//b": "a/b", "/../x": "x",
	} {
		got, err := cleanEntryPath(in)
		if err != nil || got != want {
			t.Errorf("cleanEntryPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"..", "../x", "a/../../x", ""} {
		if _, err := cleanEntryPath(bad); err == nil {
			t.Errorf("cleanEntryPath(%q) accepted", bad)
		}
	}
}
