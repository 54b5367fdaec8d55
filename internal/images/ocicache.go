package images

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"hypeman/internal/fsutil"
)

// The OCI cache keeps, next to each root disk, what the image was made of:
// its manifest, its config and its compressed layer blobs, content-addressed
// under <Dir>/oci-cache/blobs/sha256/<hex>. The root disk is a flattened
// filesystem and cannot be turned back into the same layers, so without
// these bytes an image could not be pushed anywhere as it was pulled (same
// digest, same layers).
//
// Layers are written while they stream during the pull: the compressed
// bytes already being hashed are also written to a temporary file, which is
// renamed into place only after the layer's digest checked out. Manifest and
// config are hashed and written atomically when the disk is complete; the
// manifest goes last, so an image is cached exactly when its manifest blob
// and every blob it names exist. A failed write to the cache (disk full)
// never fails the pull: the image just cannot be pushed.
//
// Blobs are shared between images (same layer, same bytes, one file). An
// image's manifest digest is a root; blobs no root names are deleted when a
// root goes (the image's disk is deleted), except blobs pinned by a
// conversion in flight or by a running push.

// ErrNotCached is the kind of a push of an image whose layers the store did
// not keep (pulled before the OCI cache existed, or with it disabled).
var ErrNotCached = errors.New("image layers not cached")

// ErrNotReady: the image exists but is not ready (still pulling, or failed).
var ErrNotReady = errors.New("image not ready")

type ociCache struct {
	dir string
	log *slog.Logger

	mu    sync.Mutex
	roots map[string]bool // manifest digests of complete cached images
	pins  map[string]int  // blob digest → users (conversions, pushes)
	bytes atomic.Int64    // sum of blob file sizes
}

func newOCICache(dir string, log *slog.Logger) (*ociCache, error) {
	c := &ociCache{dir: dir, log: log, roots: map[string]bool{}, pins: map[string]int{}}
	if err := os.RemoveAll(c.tmpDir()); err != nil {
		return nil, fmt.Errorf("oci cache: %w", err)
	}
	for _, d := range []string{c.blobDir(), c.tmpDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("oci cache: %w", err)
		}
	}
	ents, err := os.ReadDir(c.blobDir())
	if err != nil {
		return nil, fmt.Errorf("oci cache: %w", err)
	}
	for _, e := range ents {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			c.bytes.Add(info.Size())
		}
	}
	return c, nil
}

func (c *ociCache) blobDir() string { return filepath.Join(c.dir, "blobs", "sha256") }
func (c *ociCache) tmpDir() string  { return filepath.Join(c.dir, "tmp") }

// blobPath is where blob h lives ("" for a digest that is not sha256 or
// not well formed: such blobs are never cached).
func (c *ociCache) blobPath(h v1.Hash) string {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return ""
	}
	if _, err := hex.DecodeString(h.Hex); err != nil {
		return ""
	}
	return filepath.Join(c.blobDir(), h.Hex)
}

func (c *ociCache) has(h v1.Hash) bool {
	p := c.blobPath(h)
	if p == "" {
		return false
	}
	_, err := os.Stat(p)
	return err == nil
}

// Size is the bytes the cache's blobs take.
func (c *ociCache) Size() int64 { return c.bytes.Load() }

// pin keeps blobs from garbage collection until the returned func runs.
func (c *ociCache) pin(hs []v1.Hash) (unpin func()) {
	if c == nil {
		return func() {}
	}
	c.mu.Lock()
	for _, h := range hs {
		c.pins[h.String()]++
	}
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			for _, h := range hs {
				k := h.String()
				if c.pins[k]--; c.pins[k] <= 0 {
					delete(c.pins, k)
				}
			}
			c.mu.Unlock()
		})
	}
}

// blobWriter receives a layer's compressed bytes as they stream (a tee
// target); commit keeps them once the caller verified the digest.
type blobWriter struct {
	c    *ociCache
	want v1.Hash
	f    *os.File
	err  error // first write error: the blob is then dropped
}

// newBlobWriter returns a writer for blob want, or nil when the blob is
// already cached or cannot be (not sha256).
func (c *ociCache) newBlobWriter(want v1.Hash) *blobWriter {
	if c == nil || c.blobPath(want) == "" || c.has(want) {
		return nil
	}
	f, err := os.CreateTemp(c.tmpDir(), "blob-*")
	if err != nil {
		c.log.Warn("oci cache: cannot create blob file; the image will not be pushable", "err", err)
		return nil
	}
	return &blobWriter{c: c, want: want, f: f}
}

func (w *blobWriter) Write(p []byte) {
	if w == nil || w.err != nil {
		return
	}
	if _, err := w.f.Write(p); err != nil {
		w.err = err
	}
}

// abort drops the partial blob.
func (w *blobWriter) abort() {
	if w == nil {
		return
	}
	w.f.Close()
	os.Remove(w.f.Name())
}

// commit moves the blob into place. The caller has checked that the bytes
// written hash to w.want (the same bytes went through its hasher).
func (w *blobWriter) commit() {
	if w == nil {
		return
	}
	tmp := w.f.Name()
	err := w.err
	if err == nil {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	var size int64
	if err == nil {
		var info os.FileInfo
		if info, err = os.Stat(tmp); err == nil {
			size = info.Size()
			if w.c.has(w.want) { // another pull kept the same layer meanwhile
				os.Remove(tmp)
				return
			}
			err = os.Rename(tmp, w.c.blobPath(w.want))
		}
	}
	if err != nil {
		os.Remove(tmp)
		w.c.log.Warn("oci cache: cannot keep layer; the image will not be pushable", "digest", w.want, "err", err)
		return
	}
	w.c.bytes.Add(size)
}

// putBlob writes small blobs (manifest, config) after checking their digest.
func (c *ociCache) putBlob(want v1.Hash, data []byte) error {
	p := c.blobPath(want)
	if p == "" {
		return fmt.Errorf("oci cache: %s is not a sha256 digest", want)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != want.Hex {
		return fmt.Errorf("oci cache: blob hashes to sha256:%s, want %s", got, want)
	}
	if c.has(want) {
		return nil
	}
	if err := fsutil.WriteFileAtomic(p, data, 0o644); err != nil {
		return fmt.Errorf("oci cache: %w", err)
	}
	c.bytes.Add(int64(len(data)))
	return nil
}

// commitImage records img (already converted, its layers streamed through
// blob writers) as a root: config first, manifest last.
func (c *ociCache) commitImage(img v1.Image) error {
	if c == nil {
		return nil
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	for _, l := range m.Layers {
		if !c.has(l.Digest) {
			return fmt.Errorf("oci cache: layer %s was not kept", l.Digest)
		}
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if err := c.putBlob(m.Config.Digest, cfg); err != nil {
		return err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	if err := c.putBlob(d, raw); err != nil {
		return err
	}
	c.mu.Lock()
	c.roots[d.String()] = true
	c.mu.Unlock()
	return nil
}

// adopt marks manifest digests found complete on disk as roots (at open).
func (c *ociCache) adopt(digests []string) {
	for _, d := range digests {
		h, err := v1.NewHash(d)
		if err != nil {
			continue
		}
		if _, err := c.manifest(h); err == nil {
			c.mu.Lock()
			c.roots[d] = true
			c.mu.Unlock()
		}
	}
}

// manifest reads and parses a cached manifest and checks that every blob it
// names is present.
func (c *ociCache) manifest(d v1.Hash) (*v1.Manifest, error) {
	p := c.blobPath(d)
	if p == "" {
		return nil, fmt.Errorf("%w: %s is not a sha256 digest", ErrNotCached, d)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("%w: no manifest for %s", ErrNotCached, d)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: manifest %s: %v", ErrNotCached, d, err)
	}
	for _, h := range append([]v1.Hash{m.Config.Digest}, layerDigests(m)...) {
		if !c.has(h) {
			return nil, fmt.Errorf("%w: blob %s of %s is missing", ErrNotCached, h, d)
		}
	}
	return m, nil
}

func layerDigests(m *v1.Manifest) []v1.Hash {
	out := make([]v1.Hash, 0, len(m.Layers))
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

// drop removes root d and deletes every blob no remaining root names and
// nothing pins.
func (c *ociCache) drop(d string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.roots, d)
	c.gcLocked()
}

// gc deletes unreferenced blobs (at open, after adopt).
func (c *ociCache) gc() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gcLocked()
}

func (c *ociCache) gcLocked() {
	keep := map[string]bool{}
	for k := range c.pins {
		keep[k] = true
	}
	for r := range c.roots {
		keep[r] = true
		h, _ := v1.NewHash(r)
		raw, err := os.ReadFile(c.blobPath(h))
		if err != nil {
			continue
		}
		m, err := v1.ParseManifest(bytes.NewReader(raw))
		if err != nil {
			continue
		}
		keep[m.Config.Digest.String()] = true
		for _, h := range layerDigests(m) {
			keep[h.String()] = true
		}
	}
	ents, err := os.ReadDir(c.blobDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		if keep["sha256:"+e.Name()] {
			continue
		}
		p := filepath.Join(c.blobDir(), e.Name())
		info, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("oci cache: removing unreferenced blob", "path", p, "err", err)
			continue
		}
		if info.Mode().IsRegular() {
			c.bytes.Add(-info.Size())
		}
	}
}

// image returns the cached image d (pin its blobs first).
func (c *ociCache) image(d v1.Hash) (v1.Image, *v1.Manifest, error) {
	m, err := c.manifest(d)
	if err != nil {
		return nil, nil, err
	}
	raw, err := os.ReadFile(c.blobPath(d))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNotCached, err)
	}
	cfg, err := os.ReadFile(c.blobPath(m.Config.Digest))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNotCached, err)
	}
	mt := m.MediaType
	if mt == "" {
		mt = types.OCIManifestSchema1
	}
	img, err := partial.CompressedToImage(&cachedImage{c: c, raw: raw, m: m, mt: mt, cfg: cfg})
	if err != nil {
		return nil, nil, err
	}
	return img, m, nil
}

// cachedImage serves an image from the cache's files
// (partial.CompressedImageCore).
type cachedImage struct {
	c   *ociCache
	raw []byte
	m   *v1.Manifest
	mt  types.MediaType
	cfg []byte
}

func (i *cachedImage) RawManifest() ([]byte, error)        { return i.raw, nil }
func (i *cachedImage) MediaType() (types.MediaType, error) { return i.mt, nil }
func (i *cachedImage) RawConfigFile() ([]byte, error)      { return i.cfg, nil }

func (i *cachedImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if h == i.m.Config.Digest {
		return &cachedBlob{c: i.c, desc: i.m.Config}, nil
	}
	for _, l := range i.m.Layers {
		if l.Digest == h {
			return &cachedBlob{c: i.c, desc: l}, nil
		}
	}
	return nil, fmt.Errorf("%w: %s is not part of this image", ErrNotCached, h)
}

type cachedBlob struct {
	c    *ociCache
	desc v1.Descriptor
}

func (b *cachedBlob) Digest() (v1.Hash, error)            { return b.desc.Digest, nil }
func (b *cachedBlob) Size() (int64, error)                { return b.desc.Size, nil }
func (b *cachedBlob) MediaType() (types.MediaType, error) { return b.desc.MediaType, nil }
func (b *cachedBlob) Compressed() (io.ReadCloser, error) {
	f, err := os.Open(b.c.blobPath(b.desc.Digest))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotCached, err)
	}
	return f, nil
}
