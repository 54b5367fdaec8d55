package untar

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"hypeman/internal/testutil/tier"
	"hypeman/internal/untar/untartest"
)

type entry = untartest.Entry

var (
	mkTar        = untartest.Tar
	lstat        = untartest.Lstat
	assertAbsent = untartest.AssertAbsent
	readFile     = untartest.ReadFile
	testMTime    = untartest.MTime
)

// flattenLayers applies the layers into a fresh dir and returns it.
func flattenLayers(t *testing.T, layers ...[]byte) (string, error) {
	t.Helper()
	needsChown(t)
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := New(dir, Options{Whiteouts: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, l := range layers {
		if err := f.Apply(context.Background(), bytes.NewReader(l)); err != nil {
			return dir, err
		}
	}
	return dir, f.Finish()
}

func mustFlatten(t *testing.T, layers ...[]byte) string {
	t.Helper()
	dir, err := flattenLayers(t, layers...)
	if err != nil {
		t.Fatalf("flatten: %v", err)
	}
	return dir
}

// needsChown marks a test that applies tars: the applier gives every
// file its owner from the tar header, which needs root (package tier skips
// it in the unit tier).
func needsChown(t testing.TB) {
	t.Helper()
	tier.Root(t, "extraction gives files their owners (chown to any uid)")
}

func TestFlattenKeepsMetadata(t *testing.T) {
	dir := mustFlatten(t, mkTar(t,
		entry{Name: "./", Typ: tar.TypeDir, Mode: 0o755},
		entry{Name: "bin/", Typ: tar.TypeDir, Mode: 0o755},
		entry{Name: "bin/su", Data: "suid", Mode: 0o4755, UID: 0, GID: 0},
		entry{Name: "bin/sg", Data: "sgid", Mode: 0o2711, UID: 0, GID: 50},
		entry{Name: "tmp/", Typ: tar.TypeDir, Mode: 0o1777},
		entry{Name: "home/app/", Typ: tar.TypeDir, Mode: 0o750, UID: 1000, GID: 1000},
		entry{Name: "home/app/notes", Data: "hello", Mode: 0o600, UID: 1000, GID: 1001},
		entry{Name: "bin/sh", Typ: tar.TypeSymlink, Link: "busybox", UID: 7, GID: 8},
		entry{Name: "bin/busybox", Data: "BB", Mode: 0o755},
		entry{Name: "bin/ash", Typ: tar.TypeLink, Link: "bin/busybox"},
		entry{Name: "dev/null", Typ: tar.TypeChar, Mode: 0o666, Major: 1, Minor: 3},
		entry{Name: "dev/loop9", Typ: tar.TypeBlock, Mode: 0o660, Major: 7, Minor: 9, GID: 6},
		entry{Name: "run/fifo", Typ: tar.TypeFifo, Mode: 0o620},
		entry{Name: "bin/ping", Data: "ping", Mode: 0o755, Xattrs: map[string]string{"user.hypeman": "cap"}},
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
		entry{Name: "a/", Typ: tar.TypeDir, Mode: 0o755},
		entry{Name: "a/gone", Data: "x"},
		entry{Name: "a/kept", Data: "y"},
		entry{Name: "a/dir/", Typ: tar.TypeDir, Mode: 0o755},
		entry{Name: "a/dir/deep", Data: "z"},
		entry{Name: "link", Typ: tar.TypeSymlink, Link: "a/kept"},
	)
	l2 := mkTar(t,
		entry{Name: "a/.wh.gone", Data: ""},
		entry{Name: "a/.wh.dir", Data: ""},
		entry{Name: ".wh.link", Data: ""},    // removes the symlink, not its target
		entry{Name: "nodir/.wh.x", Data: ""}, // nothing to hide: no error, no dir created
		entry{Name: "a/new", Data: "n"},
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
		entry{Name: "d/", Typ: tar.TypeDir, Mode: 0o755},
		entry{Name: "d/old", Data: "old"},
		entry{Name: "d/sub/", Typ: tar.TypeDir, Mode: 0o755},
		entry{Name: "d/sub/old", Data: "old"},
		entry{Name: "d/sub2/", Typ: tar.TypeDir, Mode: 0o755},
		entry{Name: "d/sub2/old", Data: "old"},
		entry{Name: "other", Data: "o"},
	)
	// The new entries come before and after the marker: the marker hides
	// only lower layers, whatever the order.
	l2 := mkTar(t,
		entry{Name: "d/", Typ: tar.TypeDir, Mode: 0o700},
		entry{Name: "d/+before", Data: "b"},
		entry{Name: "d/.wh..wh..opq", Data: ""},
		entry{Name: "d/sub/new", Data: "n"},
		entry{Name: "d/zafter", Data: "a"},
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
		entry{Name: "f", Data: "file"},
		entry{Name: "d/", Typ: tar.TypeDir, Mode: 0o755},
		entry{Name: "d/x", Data: "x"},
		entry{Name: "s", Typ: tar.TypeSymlink, Link: "d"},
		entry{Name: "keep/", Typ: tar.TypeDir, Mode: 0o755},
		entry{Name: "keep/x", Data: "x"},
	)
	l2 := mkTar(t,
		entry{Name: "f/", Typ: tar.TypeDir, Mode: 0o755}, // file → dir
		entry{Name: "f/in", Data: "in"},
		entry{Name: "d", Data: "now a file"},                // dir → file
		entry{Name: "s/", Typ: tar.TypeDir, Mode: 0o711},    // symlink → real dir (not followed)
		entry{Name: "keep/", Typ: tar.TypeDir, Mode: 0o700}, // dir over dir: contents kept
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
		entry{Name: "usr/lib/", Typ: tar.TypeDir, Mode: 0o755},
		entry{Name: "lib", Typ: tar.TypeSymlink, Link: "usr/lib"},
		entry{Name: "var/run", Typ: tar.TypeSymlink, Link: "/run"}, // absolute
		entry{Name: "run/", Typ: tar.TypeDir, Mode: 0o755},
	)
	l2 := mkTar(t,
		entry{Name: "lib/libz.so", Data: "z"},
		entry{Name: "var/run/pid", Data: "1"},
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
		{"dotdot", []entry{{Name: "../escaped", Data: "x"}}},
		{"nested dotdot", []entry{{Name: "a/../../escaped", Data: "x"}}},
		{"hardlink out", []entry{{Name: "h", Typ: tar.TypeLink, Link: "../../../etc/passwd"}}},
		{"whiteout dotdot", []entry{{Name: "a/.wh..", Data: ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			needsChown(t)
			parent := t.TempDir()
			dir := filepath.Join(parent, "root")
			os.Mkdir(dir, 0o755)
			f, err := New(dir, Options{Whiteouts: true})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			err = f.Apply(context.Background(), bytes.NewReader(mkTar(t, tc.layer...)))
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
	f, err := New(dir, Options{Whiteouts: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	layers := [][]entry{
		{
			{Name: "up", Typ: tar.TypeSymlink, Link: "../outside"},
			{Name: "abs", Typ: tar.TypeSymlink, Link: parent + "/outside"},
			{Name: "root", Typ: tar.TypeSymlink, Link: "/"},
			{Name: "deep/l", Typ: tar.TypeSymlink, Link: "../../../../../../outside"},
			{Name: "loop1", Typ: tar.TypeSymlink, Link: "loop2"},
			{Name: "loop2", Typ: tar.TypeSymlink, Link: "loop1"},
		},
		{
			{Name: "up/victim", Data: "pwned-up"},
			{Name: "abs/victim", Data: "pwned-abs"},
			{Name: "root/../outside/victim", Data: "pwned-root"},
			{Name: "deep/l/victim2", Data: "pwned-deep"},
			{Name: "root/via-root", Data: "r"},
			{Name: "up/.wh.victim", Data: ""},
			{Name: "hl", Typ: tar.TypeLink, Link: "up/victim"},
		},
	}
	for i, l := range layers {
		if err := f.Apply(context.Background(), bytes.NewReader(mkTar(t, l...))); err != nil {
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
	err = f.Apply(context.Background(), bytes.NewReader(mkTar(t, entry{Name: "loop1/x", Data: "x"})))
	if !errors.Is(err, ErrBadEntry) {
		t.Fatalf("loop: err = %v, want ErrBadEntry", err)
	}
}

func TestFlattenHardlinkTargetMissing(t *testing.T) {
	_, err := flattenLayers(t, mkTar(t, entry{Name: "h", Typ: tar.TypeLink, Link: "nope"}))
	if !errors.Is(err, ErrBadEntry) {
		t.Fatalf("err = %v, want ErrBadEntry", err)
	}
}

func TestFlattenTruncatedTar(t *testing.T) {
	b := mkTar(t, entry{Name: "big", Data: string(bytes.Repeat([]byte("x"), 10000))})
	_, err := flattenLayers(t, b[:3000])
	if err == nil {
		t.Fatal("truncated tar applied without error")
	}
	var le *LocalError
	if errors.As(err, &le) {
		t.Fatalf("truncated tar reported as a local error: %v", err)
	}
}

func TestCleanEntryPath(t *testing.T) {
	for in, want := range map[string]string{
		"./": ".", "/": ".", "a/b/": "a/b", "/etc/passwd": "etc/passwd", "./a/../b": "b", "a//b": "a/b", "/../x": "x",
	} {
		got, err := cleanEntryPath(in, false)
		if err != nil || got != want {
			t.Errorf("cleanEntryPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"..", "../x", "a/../../x", ""} {
		if _, err := cleanEntryPath(bad, false); err == nil {
			t.Errorf("cleanEntryPath(%q) accepted", bad)
		}
	}
}
