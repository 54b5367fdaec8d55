package images

import (
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hypeman/internal/testutil/testimage"
)

// vmHWM is the process's peak resident set size in bytes.
func vmHWM(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// dirBytes is the disk space (allocated blocks) of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// TestGzipBombStopsAtCap: a ~0.25 MB layer that unpacks to 256 MiB of zeros
// stops at the unpacked cap, with an error naming it, having written no
// more than the cap to disk and without a jump in memory.
func TestGzipBombStopsAtCap(t *testing.T) {
	needsChown(t)
	const limit = 32 << 20
	bomb := testimage.GzipBomb(t, 256<<20)
	if n, _ := bomb.Size(); n > 1<<20 {
		t.Fatalf("bomb layer is %d bytes compressed", n)
	}
	host := startRegistry(t, nil)
	ref := testimage.Push(t, host, "bomb:v1", testimage.WithLayers(t, []string{"/bin/true"}, bomb))

	staging := t.TempDir()
	s := newTestStore(t, Config{StagingDir: staging, Limits: Limits{MaxUnpackedBytes: limit}})
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // sample the staging dir while the pull runs
		defer wg.Done()
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				if n := dirBytes(staging); n > peak.Load() {
					peak.Store(n)
				}
			}
		}
	}()
	hwm := vmHWM(t)
	start := time.Now()
	img, err := s.Pull(ctxT(t), ref)
	close(stop)
	wg.Wait()
	grew := vmHWM(t) - hwm
	t.Logf("bomb stopped after %v: peak staging %d MiB, peak RSS grew %d MiB; %v",
		time.Since(start).Round(time.Millisecond), peak.Load()>>20, grew>>20, err)
	if !errors.Is(err, ErrImageTooLarge) || ErrorKindOf(err) != "too_large" || img == nil || img.Status != StatusFailed {
		t.Fatalf("pull of a gzip bomb: %+v %v, want failed with ErrImageTooLarge", img, err)
	}
	var le *LimitError
	if !errors.As(err, &le) || le.Limit != limit || !strings.Contains(img.Error, "image_max_unpacked_size") || !strings.Contains(img.Error, "32MB") {
		t.Fatalf("the error does not name the cap and its setting: %q", img.Error)
	}
	if p := peak.Load(); p > limit+(1<<20) {
		t.Fatalf("staging held %d bytes, past the %d cap", p, limit)
	}
	if grew > 128<<20 {
		t.Fatalf("peak RSS grew by %d MiB", grew>>20)
	}
	if n := dirBytes(staging); n != 0 {
		t.Fatalf("the failed pull left %d bytes in staging", n)
	}
}

// TestManifestCapsRefuseBeforeBlobs: too many layers, a config blob over
// its cap or a manifest over its cap fail the pull before any blob is
// fetched.
func TestManifestCapsRefuseBeforeBlobs(t *testing.T) {
	needsChown(t)
	var blobs atomic.Int64
	host := startRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				blobs.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
	many := testimage.Push(t, host, "many:v1", testimage.ManyLayers(t, 40))
	bigCfg := testimage.Push(t, host, "bigcfg:v1", testimage.BigConfig(t, 2<<20))
	for _, c := range []struct {
		ref     string
		limits  Limits
		setting string
	}{
		{many, Limits{MaxLayers: 32}, "image_max_layers"},
		{bigCfg, Limits{MaxConfigBytes: 1 << 20}, "image_max_config_size"},
		{many, Limits{MaxManifestBytes: 4 << 10}, "image_max_manifest_size"},
	} {
		before := blobs.Load()
		s := newTestStore(t, Config{Limits: c.limits})
		img, err := s.Pull(ctxT(t), c.ref)
		if !errors.Is(err, ErrImageTooLarge) || img == nil || !strings.Contains(img.Error, c.setting) {
			t.Errorf("%s with %+v: %v, want a failure naming %s", c.ref, c.limits, err, c.setting)
			continue
		}
		t.Logf("%s", img.Error)
		if n := blobs.Load() - before; n != 0 {
			t.Errorf("%s: %d blobs fetched before the cap refused it", c.ref, n)
		}
	}
	// Under the caps the same images convert.
	s := newTestStore(t, Config{Limits: Limits{MaxLayers: 40, MaxConfigBytes: 4 << 20, MaxManifestBytes: 64 << 10, MaxUnpackedBytes: 1 << 20}})
	for _, ref := range []string{many, bigCfg} {
		if img, err := s.Pull(ctxT(t), ref); err != nil || img.Status != StatusReady {
			t.Errorf("%s under the caps: %v", ref, err)
		}
	}
}

// TestImportedImagesAreCapped: a pushed image goes through the same caps.
func TestImportedImagesAreCapped(t *testing.T) {
	s := newTestStore(t, Config{Limits: Limits{MaxLayers: 8}})
	if _, err := s.ImportImage(ctxT(t), "pushed:v1", testimage.ManyLayers(t, 9)); err != nil {
		t.Fatal(err)
	}
	img, err := s.Wait(ctxT(t), "pushed:v1")
	if !errors.Is(err, ErrImageTooLarge) || img.Status != StatusFailed || !strings.Contains(img.Error, "image_max_layers") {
		t.Fatalf("import of 9 layers with a cap of 8: %+v %v", img, err)
	}
}
