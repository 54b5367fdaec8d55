package fsutil

import (
	"os"
	"path/filepath"
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
