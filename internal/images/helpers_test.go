package images

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"hypeman/internal/testutil/tier"
	"hypeman/internal/untar"
	"hypeman/internal/untar/untartest"
)

type entry = untartest.Entry

var (
	mkTar     = untartest.Tar
	lstat     = untartest.Lstat
	readFile  = untartest.ReadFile
	testMTime = untartest.MTime
)

// needsChown marks a test that converts layers: the applier gives every
// file its owner from the tar header, which needs root (package tier skips
// it in the unit tier).
func needsChown(t testing.TB) {
	t.Helper()
	tier.Root(t, "image conversion gives files their owners (chown to any uid)")
}

// mustFlatten applies the layers as a pull does into a fresh dir.
func mustFlatten(t *testing.T, layers ...[]byte) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := untar.New(dir, untar.Options{Whiteouts: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, l := range layers {
		if err := f.Apply(context.Background(), bytes.NewReader(l)); err != nil {
			t.Fatalf("flatten: %v", err)
		}
	}
	if err := f.Finish(); err != nil {
		t.Fatalf("flatten: %v", err)
	}
	return dir
}
