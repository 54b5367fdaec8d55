package images

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"hypeman/internal/testutil/testimage"
)

// cacheFiles lists the blob files of s's OCI cache by digest.
func cacheFiles(t *testing.T, s *Store) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	ents, err := os.ReadDir(filepath.Join(s.cfg.Dir, "oci-cache", "blobs", "sha256"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		out["sha256:"+e.Name()] = info.Size()
	}
	return out
}

// blobsOfImage lists img's manifest, config and layer digests.
func blobsOfImage(t *testing.T, img v1.Image) []string {
	t.Helper()
	d, _ := img.Digest()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{d.String(), m.Config.Digest.String()}
	for _, l := range m.Layers {
		out = append(out, l.Digest.String())
	}
	return out
}

func TestOCICacheKeepsPulledImage(t *testing.T) {
	needsChown(t)
	host := startRegistry(t, nil)
	img := testimage.Busybox(t, testimage.Options{Files: []testimage.File{{Path: "/app/x", Data: []byte("x"), Mode: 0o644}}})
	ref := testimage.Push(t, host, "cache/keep:v1", img)
	s := newTestStore(t, Config{})
	if _, err := s.Pull(ctxT(t), ref); err != nil {
		t.Fatal(err)
	}
	files := cacheFiles(t, s)
	var sum int64
	for _, d := range blobsOfImage(t, img) {
		if _, ok := files[d]; !ok {
			t.Errorf("blob %s not in the cache (have %v)", d, files)
		}
	}
	for _, n := range files {
		sum += n
	}
	if len(files) != 4 || s.OCICacheBytes() != sum {
		t.Errorf("cache holds %d blobs, OCICacheBytes = %d, files sum to %d; want 4 blobs (manifest, config, 2 layers) and equal sizes",
			len(files), s.OCICacheBytes(), sum)
	}

	src, err := s.PushSource(ctxT(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Release()
	want, _ := img.Digest()
	got, _ := src.Image.Digest()
	if got != want || src.Digest != want.String() || src.Layers != 2 {
		t.Fatalf("push source digest %s (%s), %d layers; want %s, 2 layers", got, src.Digest, src.Layers, want)
	}
	wantLayers, _ := img.Layers()
	gotLayers, _ := src.Image.Layers()
	for i, l := range gotLayers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
		wd, _ := wantLayers[i].Digest()
		if "sha256:"+hex.EncodeToString(h.Sum(nil)) != wd.String() {
			t.Errorf("layer %d bytes hash to %x, want %s", i, h.Sum(nil), wd)
		}
	}
}

func TestOCICacheGCOnDelete(t *testing.T) {
	needsChown(t)
	host := startRegistry(t, nil)
	base := testimage.Busybox(t, testimage.Options{})
	more := testimage.Busybox(t, testimage.Options{Files: []testimage.File{{Path: "/app/y", Data: []byte("y"), Mode: 0o644}}})
	refA := testimage.Push(t, host, "cache/a:v1", base)
	refB := testimage.Push(t, host, "cache/b:v1", more)
	s := newTestStore(t, Config{})
	for _, r := range []string{refA, refB} {
		if _, err := s.Pull(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	a, b := blobsOfImage(t, base), blobsOfImage(t, more)
	shared := a[2] // busybox layer, in both
	if b[2] != shared {
		t.Fatalf("test images do not share their base layer: %s vs %s", a[2], b[2])
	}
	if n := len(cacheFiles(t, s)); n != 6 { // 2 manifests, 2 configs, 2 distinct layers
		t.Fatalf("cache holds %d blobs, want 6", n)
	}

	// A push of B in flight pins its blobs across B's deletion.
	src, err := s.PushSource(ctxT(t), refB)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctxT(t), refA); err != nil {
		t.Fatal(err)
	}
	files := cacheFiles(t, s)
	for _, d := range a[:2] {
		if _, ok := files[d]; ok {
			t.Errorf("blob %s of deleted image A still cached", d)
		}
	}
	if _, ok := files[shared]; !ok {
		t.Errorf("shared layer %s was deleted with A while B uses it", shared)
	}
	if err := s.Delete(ctxT(t), refB); err != nil {
		t.Fatal(err)
	}
	if n := len(cacheFiles(t, s)); n != 4 {
		t.Errorf("after deleting B during its push the cache holds %d blobs, want B's 4 (pinned)", n)
	}
	layers, _ := src.Image.Layers()
	rc, err := layers[1].Compressed()
	if err != nil {
		t.Fatalf("pinned layer unreadable after delete: %v", err)
	}
	rc.Close()
	src.Release()
	// The next collection (any delete) drops what was pinned.
	s.cache.gc()
	if files := cacheFiles(t, s); len(files) != 0 || s.OCICacheBytes() != 0 {
		t.Errorf("cache after every image is gone: %v, %d bytes; want empty", files, s.OCICacheBytes())
	}
}

func TestPushSourceWithoutCache(t *testing.T) {
	needsChown(t)
	host := startRegistry(t, nil)
	img := testimage.Busybox(t, testimage.Options{})
	ref := testimage.Push(t, host, "cache/old:v1", img)
	dir := t.TempDir()
	s := newTestStore(t, Config{Dir: dir})
	if _, err := s.Pull(ctxT(t), ref); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// An image pulled before the cache existed: its disk, no blobs.
	if err := os.RemoveAll(filepath.Join(dir, "oci-cache")); err != nil {
		t.Fatal(err)
	}
	s = newTestStore(t, Config{Dir: dir})
	_, err := s.PushSource(ctxT(t), ref)
	if !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "pull it again") {
		t.Fatalf("PushSource of an uncached image: %v; want ErrNotCached saying to pull it again", err)
	}
	if _, err := s.PushSource(ctxT(t), "nope/missing:v1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("PushSource of an unknown image: %v, want ErrNotFound", err)
	}

	off := newTestStore(t, Config{DisableOCICache: true})
	if _, err := off.Pull(ctxT(t), ref); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(off.cfg.Dir, "oci-cache")); !os.IsNotExist(err) {
		t.Errorf("disabled cache: oci-cache dir exists (%v)", err)
	}
	if _, err := off.PushSource(ctxT(t), ref); !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "image_oci_cache") {
		t.Errorf("PushSource with the cache off: %v; want ErrNotCached naming image_oci_cache", err)
	}
	if off.OCICacheBytes() != 0 {
		t.Errorf("OCICacheBytes with the cache off = %d", off.OCICacheBytes())
	}
}

func TestOCICacheSurvivesRestart(t *testing.T) {
	needsChown(t)
	host := startRegistry(t, nil)
	img := testimage.Busybox(t, testimage.Options{})
	ref := testimage.Push(t, host, "cache/restart:v1", img)
	dir := t.TempDir()
	s := newTestStore(t, Config{Dir: dir})
	if _, err := s.Pull(ctxT(t), ref); err != nil {
		t.Fatal(err)
	}
	before := s.OCICacheBytes()
	s.Close()
	// A stray blob (crash between a layer and its image's disk) is
	// collected at open; the image's own blobs are kept.
	stray := filepath.Join(dir, "oci-cache", "blobs", "sha256", strings.Repeat("ab", 32))
	if err := os.WriteFile(stray, []byte("stray"), 0o644); err != nil {
		t.Fatal(err)
	}
	s = newTestStore(t, Config{Dir: dir})
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Errorf("stray blob kept at open (%v)", err)
	}
	if s.OCICacheBytes() != before {
		t.Errorf("OCICacheBytes after restart = %d, want %d", s.OCICacheBytes(), before)
	}
	src, err := s.PushSource(ctxT(t), ref)
	if err != nil {
		t.Fatalf("PushSource after restart: %v", err)
	}
	src.Release()
}

func TestPushTransportInsecureTarget(t *testing.T) {
	rt := &recordingTransport{}
	s := newTestStore(t, Config{Transport: rt, AllowRegistries: []string{"10.0.0.0/8"}})
	get := func(tr http.RoundTripper, u string) error {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		resp, err := tr.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	// Without the push's insecure flag, plain HTTP to a private registry
	// is refused as for pulls.
	if err := get(s.PushTransport(""), "http://10.1.2.3:5000/v2/"); !errors.Is(err, ErrInsecureRefused) {
		t.Errorf("plain HTTP without insecure: %v, want ErrInsecureRefused", err)
	}
	// With it, that registry (only) may be spoken to over HTTP.
	tr := s.PushTransport("10.1.2.3:5000")
	if err := get(tr, "http://10.1.2.3:5000/v2/"); errors.Is(err, ErrInsecureRefused) {
		t.Errorf("plain HTTP to the insecure target refused: %v", err)
	}
	if err := get(tr, "http://10.9.9.9:5000/v2/"); !errors.Is(err, ErrInsecureRefused) {
		t.Errorf("plain HTTP to another registry: %v, want ErrInsecureRefused", err)
	}
	// The reach policy still holds: a loopback target is not allowed here.
	if err := get(tr, "https://127.0.0.1:5000/v2/"); !errors.Is(err, ErrRegistryNotAllowed) {
		t.Errorf("loopback target outside registries_allow: %v, want ErrRegistryNotAllowed", err)
	}
	// The store's own pulls are unaffected.
	if err := get(s.transport, "http://10.1.2.3:5000/v2/"); !errors.Is(err, ErrInsecureRefused) {
		t.Errorf("pull transport after an insecure push: %v, want ErrInsecureRefused", err)
	}
}
