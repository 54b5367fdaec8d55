package k8sbin

import (
	"os"
	"path/filepath"
	"testing"
)

// fakePins writes pin modules shaped like the real ones whose binaries are
// tiny programs, so Ensure's build/cache logic runs in seconds.
func fakePins(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(rel, content string) {
		t.Helper()
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const prog = "package main\n\nfunc main() {}\n"
	write("etcd/go.mod", "module example.test/etcd\n\ngo 1.26.0\n")
	write("etcd/main.go", prog)
	write("kube/go.mod", "module example.test/kube\n\ngo 1.26.0\n\ntool (\n"+
		"\texample.test/kube/kube-apiserver\n\texample.test/kube/kube-scheduler\n\texample.test/kube/kubectl\n)\n")
	for _, b := range []string{KubeAPIServer, KubeScheduler, Kubectl} {
		write("kube/"+b+"/main.go", prog)
	}
	return dir
}

// TestEnsureBuildsOnceAndRebuildsOnPinChange checks the cache contract: the
// first Ensure builds every binary into <root>/<key>/bin, a second one reuses
// that set without building, an incomplete set is rebuilt, and changing a pin yields a new key and a new set
// while leaving no temporary build directory behind.
func TestEnsureBuildsOnceAndRebuildsOnPinChange(t *testing.T) {
	ctx := t.Context()
	pins, root := fakePins(t), t.TempDir()
	opts := Options{PinsDir: pins, CacheRoot: root, Log: t.Output()}

	first, err := Ensure(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if first.Dir != filepath.Join(root, first.Key, "bin") {
		t.Errorf("Dir = %s, want %s", first.Dir, filepath.Join(root, first.Key, "bin"))
	}
	for _, b := range []string{Etcd, KubeAPIServer, KubeScheduler, Kubectl} {
		if fi, err := os.Stat(first.Path(b)); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("%s: not an executable (%v)", b, err)
		}
	}

	second, err := Ensure(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if second.Key != first.Key || !second.Manifest.BuiltAt.Equal(first.Manifest.BuiltAt) {
		t.Errorf("second Ensure = key %s built %s, want the cached key %s built %s",
			second.Key, second.Manifest.BuiltAt, first.Key, first.Manifest.BuiltAt)
	}

	// A set missing a binary, and a killed build's leftovers, are rebuilt/cleared.
	if err := os.Remove(first.Path(Kubectl)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, ".build-"+first.Key+"-killed"), 0o755); err != nil {
		t.Fatal(err)
	}
	repaired, err := Ensure(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if repaired.Key != first.Key || repaired.Manifest.BuiltAt.Equal(first.Manifest.BuiltAt) {
		t.Errorf("Ensure after losing kubectl = key %s built %s, want key %s rebuilt", repaired.Key, repaired.Manifest.BuiltAt, first.Key)
	}

	if err := os.WriteFile(filepath.Join(pins, "etcd", "main.go"), []byte("package main\n\nfunc main() { println() }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	third, err := Ensure(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if third.Key == first.Key {
		t.Errorf("key %s did not change with the pins", third.Key)
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := map[string]bool{first.Key: true, third.Key: true, ".lock": true}
	if len(names) != len(want) {
		t.Errorf("cache root holds %v, want the two keys and .lock", names)
	}
	for _, n := range names {
		if !want[n] {
			t.Errorf("cache root holds unexpected %s", n)
		}
	}
}

// TestKeyFollowsContentNotPath checks that identical pins in different places
// share a key (so every worktree reuses one build).
func TestKeyFollowsContentNotPath(t *testing.T) {
	a, b := fakePins(t), fakePins(t)
	ka, err := Key(a, "go1.26.8")
	if err != nil {
		t.Fatal(err)
	}
	kb, err := Key(b, "go1.26.8")
	if err != nil {
		t.Fatal(err)
	}
	if ka != kb {
		t.Errorf("Key differs for identical pins: %s vs %s", ka, kb)
	}
	if kc, _ := Key(a, "go1.27.0"); kc == ka {
		t.Errorf("Key ignores the Go version: %s", kc)
	}
}
