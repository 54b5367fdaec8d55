package fsutil

import (
	"errors"
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
