package fsutil

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFileAtomicReplacesAndLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.json")
	if err := WriteJSONAtomic(p, map[string]int{"a": 1}, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSONAtomic(p, map[string]int{"a": 2}, 0o600); err != nil {
		t.Fatal(err)
	}
	var got map[string]int
	if err := ReadJSON(p, &got); err != nil || got["a"] != 2 {
		t.Fatalf("got %v err %v", got, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("leftover files: %v", ents)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("perm %v", st.Mode().Perm())
	}
}

func TestUnixPermRoundTrip(t *testing.T) {
	for _, c := range []struct {
		m fs.FileMode
		u uint32
	}{
		{0o644, 0o644},
		{fs.ModeSetuid | 0o755, 0o4755},
		{fs.ModeSetgid | fs.ModeSticky | 0o770, 0o3770},
		{fs.ModeDir | fs.ModeSticky | 0o777, 0o1777}, // the type is not part of it
	} {
		if got := UnixPerm(c.m); got != c.u {
			t.Errorf("UnixPerm(%v) = %o, want %o", c.m, got, c.u)
		}
		if got := FileMode(c.u); got != c.m&^fs.ModeType {
			t.Errorf("FileMode(%o) = %v, want %v", c.u, got, c.m&^fs.ModeType)
		}
	}
	if got := FileMode(0o100644); got != 0o644 {
		t.Errorf("FileMode keeps the tar file type bits: %v", got)
	}
}

func TestMakeRoom(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o644)
	os.Symlink("/etc/passwd", filepath.Join(dir, "link"))
	os.Mkdir(filepath.Join(dir, "dir"), 0o755)
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, name := range []string{"file", "link", "missing"} {
		if err := MakeRoom(root, name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := os.Lstat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s still there: %v", name, err)
		}
	}
	if _, err := os.Stat("/etc/passwd"); err != nil {
		t.Fatalf("the link's target was removed: %v", err)
	}
	if err := MakeRoom(root, "dir"); !errors.Is(err, ErrIsDir) {
		t.Fatalf("dir: %v", err)
	}
}

func TestExchangeSwapsDirs(t *testing.T) {
	base := t.TempDir()
	a, b := filepath.Join(base, "a"), filepath.Join(base, "b")
	os.Mkdir(a, 0o755)
	os.Mkdir(b, 0o755)
	os.WriteFile(filepath.Join(a, "f"), []byte("was a"), 0o644)
	os.WriteFile(filepath.Join(b, "f"), []byte("was b"), 0o644)
	if err := Exchange(a, b); err != nil {
		t.Fatal(err)
	}
	ga, _ := os.ReadFile(filepath.Join(a, "f"))
	gb, _ := os.ReadFile(filepath.Join(b, "f"))
	if string(ga) != "was b" || string(gb) != "was a" {
		t.Fatalf("after exchange a=%q b=%q", ga, gb)
	}
	if err := Exchange(a, filepath.Join(base, "missing")); err == nil {
		t.Fatal("exchange with a missing path succeeded")
	}
}

// Records without a version read as version 1; a version this build does
// not know is refused naming the file and the version, and the target is
// left untouched.
func TestReadVersionedJSON(t *testing.T) {
	dir := t.TempDir()
	type rec struct {
		Version int    `json:"version"`
		Name    string `json:"name"`
	}
	cases := []struct {
		body    string
		version int
		refuse  bool
	}{
		{`{"name":"old"}`, 1, false},
		{`{"version":1,"name":"v1"}`, 1, false},
		{`{"version":2,"name":"v2"}`, 2, false},
		{`{"version":3,"name":"future","name2":{"x":1}}`, 3, true},
		{`{"version":0,"name":"zero"}`, 0, true},
		{`{"version":7,"name":5}`, 7, true}, // refused before the shape matters
	}
	for i, c := range cases {
		p := filepath.Join(dir, "r.json")
		if err := os.WriteFile(p, []byte(c.body), 0o600); err != nil {
			t.Fatal(err)
		}
		r := rec{Name: "untouched"}
		v, err := ReadVersionedJSON(p, 2, &r)
		if v != c.version {
			t.Errorf("case %d: version %d, want %d", i, v, c.version)
		}
		var ve *VersionError
		if c.refuse {
			if !errors.As(err, &ve) || ve.Path != p || ve.Version != c.version || ve.Known != 2 || r.Name != "untouched" {
				t.Errorf("case %d: want VersionError for %s, got %v (rec %+v)", i, p, err, r)
			}
			if err != nil && !strings.Contains(err.Error(), p) {
				t.Errorf("case %d: error does not name the file: %v", i, err)
			}
			continue
		}
		if err != nil || r.Name == "untouched" {
			t.Errorf("case %d: %v %+v", i, err, r)
		}
	}
	if _, err := ReadVersionedJSON(filepath.Join(dir, "missing.json"), 1, &struct{}{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
