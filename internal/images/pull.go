package images

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"hypeman/internal/fsutil"
	"hypeman/internal/untar"
)

// progressInterval throttles progress snapshots to subscribers.
const progressInterval = 200 * time.Millisecond

func (s *Store) run(j *job) {
	defer s.wg.Done()
	start := time.Now()
	digest, err := s.pull(j)
	s.finish(j, digest, err)
	if err != nil {
		s.log.Warn("image pull failed", "name", j.name, "err", err, "elapsed", time.Since(start).Round(time.Millisecond))
	} else {
		s.log.Info("image ready", "name", j.name, "digest", digest, "elapsed", time.Since(start).Round(time.Millisecond))
	}
}

// pull runs one job to completion and returns the digest it resolved.
func (s *Store) pull(j *job) (string, error) {
	registry := ""
	if j.ref != nil {
		registry = j.ref.Context().RegistryStr()
	}
	fail := func(ph phase, err error) error {
		var pe *PullError
		if errors.As(err, &pe) {
			return err
		}
		return &PullError{Ref: j.name, Registry: registry, Kind: classify(err, ph), Err: err}
	}

	select {
	case s.sem <- struct{}{}:
	case <-j.ctx.Done():
		return "", fail(phaseManifest, j.ctx.Err())
	}
	defer func() { <-s.sem }()
	s.setJobStatus(j, StatusPulling)

	img := j.img
	if img == nil {
		var err error
		if img, err = s.resolve(j); err != nil {
			return "", fail(phaseManifest, err)
		}
	}
	dig, err := img.Digest()
	if err != nil {
		return "", fail(phaseManifest, err)
	}
	// Before any blob is fetched: the layer count, the config's declared
	// size (go-containerregistry then reads no more than that) and the
	// manifest itself.
	if err := s.cfg.Limits.checkManifest(img); err != nil {
		return "", fail(phaseManifest, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", fail(phaseManifest, fmt.Errorf("image config: %w", err))
	}
	want := s.cfg.Platform
	if (cf.OS != "" && cf.OS != want.OS) || (cf.Architecture != "" && cf.Architecture != want.Architecture) {
		return "", &PullError{Ref: j.name, Registry: registry, Kind: ErrNoMatchingPlatform,
			Err: fmt.Errorf("image is %s/%s, want %s/%s", cf.OS, cf.Architecture, want.OS, want.Architecture)}
	}
	d := dig.String()
	s.mu.Lock()
	if e := s.names[j.name]; e != nil {
		e.Digest, e.UpdatedAt = d, time.Now().UTC()
	}
	s.mu.Unlock()
	s.persist("")

	for {
		err := s.convertOnce(j, img, d, cf)
		// The owner of a shared conversion was canceled (its name deleted)
		// while we are still wanted: take over.
		if err != nil && errors.Is(err, context.Canceled) && j.ctx.Err() == nil {
			continue
		}
		if err != nil {
			return d, fail(phaseConvert, err)
		}
		return d, nil
	}
}

// resolve fetches the manifest (or index) for j.ref and returns the image
// for the configured platform, checking a pinned digest.
func (s *Store) resolve(j *job) (v1.Image, error) {
	auth := remote.WithAuthFromKeychain(s.cfg.Keychain)
	if j.auth != nil {
		auth = remote.WithAuth(j.auth)
	}
	opts := []remote.Option{
		remote.WithContext(j.ctx),
		auth,
		remote.WithPlatform(s.cfg.Platform),
		remote.WithTransport(s.transport),
		remote.WithUserAgent("hypeman"),
	}
	desc, err := remote.Get(j.ref, opts...)
	if err != nil {
		return nil, err
	}
	if dref, ok := j.ref.(name.Digest); ok && desc.Digest.String() != dref.DigestStr() {
		return nil, &PullError{Ref: j.name, Registry: j.ref.Context().RegistryStr(), Kind: ErrDigestMismatch,
			Err: fmt.Errorf("registry returned %s for pinned %s", desc.Digest, dref.DigestStr())}
	}
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, err
		}
		var seen []string
		for _, m := range im.Manifests {
			if m.Platform == nil {
				continue
			}
			seen = append(seen, m.Platform.String())
			if platformMatches(*m.Platform, s.cfg.Platform) && (m.MediaType.IsImage() || m.MediaType == "") {
				return idx.Image(m.Digest)
			}
		}
		return nil, &PullError{Ref: j.name, Registry: j.ref.Context().RegistryStr(), Kind: ErrNoMatchingPlatform,
			Err: fmt.Errorf("index has no %s image (has: %s)", s.cfg.Platform.String(), strings.Join(seen, ", "))}
	case desc.MediaType.IsSchema1():
		return nil, &PullError{Ref: j.name, Registry: j.ref.Context().RegistryStr(), Kind: ErrRegistry,
			Err: fmt.Errorf("docker schema 1 manifests are not supported")}
	default:
		return desc.Image()
	}
}

// imagePlatform is os/arch[/variant] from an image config ("" when the
// config does not say).
func imagePlatform(cf *v1.ConfigFile) string {
	if cf.OS == "" || cf.Architecture == "" {
		return ""
	}
	p := cf.OS + "/" + cf.Architecture
	if cf.Variant != "" {
		p += "/" + cf.Variant
	}
	return p
}

func platformMatches(have, want v1.Platform) bool {
	if have.OS != want.OS || have.Architecture != want.Architecture {
		return false
	}
	return want.Variant == "" || have.Variant == want.Variant
}

// convertOnce makes sure digest d has a disk: reuse it, join the running
// conversion of it, or run the conversion.
func (s *Store) convertOnce(j *job, img v1.Image, d string, cf *v1.ConfigFile) error {
	s.mu.Lock()
	if s.digests[d] != nil {
		s.mu.Unlock()
		return nil // dedupe: already on disk
	}
	fl := s.flights[d]
	owner := fl == nil
	if owner {
		fl = &flight{digest: d, status: StatusPulling, done: make(chan struct{})}
		s.flights[d] = fl
	}
	j.flight = fl
	s.publishLocked(j.name)
	s.mu.Unlock()

	if !owner {
		select {
		case <-fl.done:
			return fl.err
		case <-j.ctx.Done():
			return j.ctx.Err()
		}
	}

	rec, err := s.convert(j, fl, img, d, cf)
	s.mu.Lock()
	if err == nil {
		s.digests[d] = rec
	}
	fl.err = err
	delete(s.flights, d)
	s.mu.Unlock()
	close(fl.done)
	return err
}

// convert downloads and flattens every layer into a staging directory, then
// builds the disk and writes image.json.
func (s *Store) convert(j *job, fl *flight, img v1.Image, d string, cf *v1.ConfigFile) (*diskRecord, error) {
	ctx := j.ctx
	layers, err := img.Layers()
	if err != nil {
		return nil, &PullError{Ref: j.name, Kind: classify(err, phaseManifest), Err: fmt.Errorf("layers: %w", err)}
	}
	var total int64
	for _, l := range layers {
		sz, err := l.Size()
		if err != nil {
			return nil, &PullError{Ref: j.name, Kind: classify(err, phaseManifest), Err: fmt.Errorf("layer size: %w", err)}
		}
		total += sz
	}
	fl.bytesTotal.Store(total)
	fl.layersTotal.Store(int64(len(layers)))
	// Keep the blobs this image shares with cached ones until it is a
	// cache root itself (or failed).
	defer s.cache.pin(s.blobsOf(img, d))()
	s.publishFlight(fl, true)

	staging, err := os.MkdirTemp(s.stagingDir(), s.stagePrefix())
	if err != nil {
		return nil, &localError{Op: "mkdir staging", Path: s.stagingDir(), Err: err}
	}
	defer func() {
		if err := os.RemoveAll(staging); err != nil {
			s.log.Warn("removing staging dir", "path", staging, "err", err)
		}
	}()
	// The image root is a subdirectory: it becomes 0755 (and may hold
	// setuid binaries), while its 0700 parent keeps other host users out.
	rootfs := filepath.Join(staging, "rootfs")
	if err := os.Mkdir(rootfs, 0o700); err != nil {
		return nil, &localError{Op: "mkdir", Path: rootfs, Err: err}
	}
	// The unpacked cap counts twice, each on its own: the decompressed tar
	// streams (a bomb of skipped or tiny entries) and the file bytes
	// written (sparse entries expand beyond their stream).
	maxUnpacked := s.cfg.Limits.MaxUnpackedBytes
	stream := newBudget(maxUnpacked, "unpacked content", "image_max_unpacked_size")
	fz, err := untar.New(rootfs, untar.Options{
		Whiteouts: true, Log: s.log,
		Files: newBudget(maxUnpacked, "unpacked file content", "image_max_unpacked_size"),
	})
	if err != nil {
		return nil, err
	}
	defer fz.Close()

	t0 := time.Now()
	for i, l := range layers {
		ld, _ := l.Digest()
		if err := s.applyLayer(ctx, fz, l, fl, stream); err != nil {
			return nil, &PullError{Ref: j.name, Registry: registryOf(j), Layer: ld.String(),
				Kind: classify(err, phaseLayer), Err: fmt.Errorf("layer %d/%d: %w", i+1, len(layers), err)}
		}
		fl.layersDone.Add(1)
		s.publishFlight(fl, true)
	}
	if err := fz.Finish(); err != nil {
		return nil, err
	}
	fetchDur := time.Since(t0)

	s.mu.Lock()
	fl.status = StatusConverting
	for n, jj := range s.jobs {
		if jj.flight == fl {
			if e := s.names[n]; e != nil {
				e.Status, e.UpdatedAt = StatusConverting, time.Now().UTC()
			}
			s.publishLocked(n)
		}
	}
	s.mu.Unlock()
	s.persist("")

	dir := s.digestDir(d)
	if err := os.RemoveAll(dir); err != nil {
		return nil, &localError{Op: "clean", Path: dir, Err: err}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, &localError{Op: "mkdir", Path: dir, Err: err}
	}
	t1 := time.Now()
	hexPart := d[strings.IndexByte(d, ':')+1:]
	size, err := s.disk.build(ctx, rootfs, filepath.Join(dir, s.disk.fileName()), uuidFromDigest(hexPart))
	if err != nil {
		os.RemoveAll(dir)
		return nil, &PullError{Ref: j.name, Kind: classify(err, phaseConvert), Err: err}
	}
	mkfsDur := time.Since(t1)

	rec := &diskRecord{
		Version: diskRecordVersion,
		Digest:  d,
		Names:   []string{j.name},
		Config: ImageConfig{
			Entrypoint: cf.Config.Entrypoint, Cmd: cf.Config.Cmd, Env: cf.Config.Env,
			WorkingDir: cf.Config.WorkingDir, User: cf.Config.User,
		},
		Platform:         imagePlatform(cf),
		SizeBytes:        size,
		DiskFormat:       s.disk.format,
		DiskFormatReason: s.disk.reason,
		DiskFile:         s.disk.fileName(),
		CreatedAt:        time.Now().UTC(),
		Stats: ConvertStats{
			Layers: len(layers), CompressedBytes: total,
			Entries: fz.Stats().Entries, ContentBytes: fz.Stats().Bytes,
			FetchMillis: fetchDur.Milliseconds(), MkfsMillis: mkfsDur.Milliseconds(),
		},
	}
	// image.json last: its presence marks the disk complete.
	if err := writeDiskRecordFile(filepath.Join(dir, "image.json"), rec); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := s.cache.commitImage(img); err != nil {
		s.log.Warn("oci cache: image kept without its layers; it cannot be pushed", "name", j.name, "digest", d, "err", err)
	}
	s.log.Info("image converted", "name", j.name, "digest", d, "format", rec.DiskFormat,
		"size_bytes", size, "entries", rec.Stats.Entries, "fetch_flatten", fetchDur.Round(time.Millisecond),
		"mkfs", mkfsDur.Round(time.Millisecond))
	return rec, nil
}

// blobsOf lists the digests of img's manifest, config and layers.
func (s *Store) blobsOf(img v1.Image, d string) []v1.Hash {
	var out []v1.Hash
	if h, err := v1.NewHash(d); err == nil {
		out = append(out, h)
	}
	if m, err := img.Manifest(); err == nil {
		out = append(out, m.Config.Digest)
		out = append(out, layerDigests(m)...)
	}
	return out
}

func writeDiskRecordFile(path string, rec *diskRecord) error {
	if err := fsutil.WriteJSONAtomic(path, rec, 0o644); err != nil {
		return &localError{Op: "write", Path: path, Err: err}
	}
	return nil
}

func registryOf(j *job) string {
	if j.ref == nil {
		return ""
	}
	return j.ref.Context().RegistryStr()
}

// applyLayer streams one layer: count and hash the compressed bytes,
// decompress (gzip, zstd or none, by magic number), apply the tar, then
// check the digest over everything read.
func (s *Store) applyLayer(ctx context.Context, fz *untar.Applier, l v1.Layer, fl *flight, unpacked *untar.Budget) error {
	want, err := l.Digest()
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	var h hash.Hash
	var tee *blobWriter
	if want.Algorithm == "sha256" {
		h = sha256.New()
		// The compressed bytes also go to the OCI cache; they are kept
		// only if the digest over all of them checks out.
		tee = s.cache.newBlobWriter(want)
	}
	kept := false
	defer func() {
		if !kept {
			tee.abort()
		}
	}()
	cr := &countingReader{r: rc, h: h, tee: tee, onRead: func(n int) {
		fl.bytesDone.Add(int64(n))
		s.publishFlight(fl, false)
	}}
	br := bufio.NewReaderSize(cr, 256<<10)

	var tarStream io.Reader
	var closeDec func()
	magic, _ := br.Peek(4)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		gz, err := gzip.NewReader(br)
		if err != nil {
			return s.streamError(br, cr, want, fmt.Errorf("gzip: %w", err))
		}
		tarStream, closeDec = gz, func() { gz.Close() }
	case len(magic) == 4 && bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return s.streamError(br, cr, want, fmt.Errorf("zstd: %w", err))
		}
		tarStream, closeDec = zr, zr.Close
	default:
		tarStream, closeDec = br, func() {}
	}
	defer closeDec()
	tarStream = unpacked.Reader(tarStream)

	if err := fz.Apply(ctx, tarStream); err != nil {
		var le *untar.LocalError
		if errors.As(err, &le) || errors.Is(err, ErrUnsafePath) || errors.Is(err, ErrImageTooLarge) || ctx.Err() != nil {
			return err
		}
		return s.streamError(br, cr, want, err)
	}
	// Read what the tar reader left (end-of-archive padding, the gzip
	// trailer with its CRC, bytes after it) so the digest covers the blob.
	if _, err := io.Copy(io.Discard, tarStream); err != nil {
		if errors.Is(err, ErrImageTooLarge) {
			return err
		}
		return s.streamError(br, cr, want, fmt.Errorf("after tar end: %w", err))
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return s.streamError(br, cr, want, err)
	}
	if err := checkDigest(cr, want); err != nil {
		return err
	}
	kept = true
	tee.commit()
	return nil
}

// streamError reports a failed layer stream. When the rest of the blob can
// still be read and its digest is wrong, that is the real cause and is
// reported instead of the decoding error it produced.
func (s *Store) streamError(br *bufio.Reader, cr *countingReader, want v1.Hash, err error) error {
	if _, rerr := io.Copy(io.Discard, br); rerr != nil && classify(rerr, phaseLayer) != ErrCorruptLayer {
		return err // the stream broke (network, cancel): the digest says nothing
	}
	// Everything the registry sent has been hashed (go-containerregistry's
	// own verification error arrives with the last bytes).
	if derr := checkDigest(cr, want); derr != nil {
		return derr
	}
	return err
}

func checkDigest(cr *countingReader, want v1.Hash) error {
	if cr.h == nil {
		return nil
	}
	got := hex.EncodeToString(cr.h.Sum(nil))
	if got != want.Hex {
		return fmt.Errorf("digest mismatch: got sha256:%s after %d bytes, want %s", got, cr.n, want)
	}
	return nil
}

type countingReader struct {
	r      io.Reader
	h      hash.Hash
	tee    *blobWriter // nil: not cached
	n      int64
	onRead func(int)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.n += int64(n)
		if c.h != nil {
			c.h.Write(p[:n])
		}
		c.tee.Write(p[:n])
		c.onRead(n)
	}
	return n, err
}

// publishFlight sends progress for every name riding on fl, throttled
// unless force is set.
func (s *Store) publishFlight(fl *flight, force bool) {
	now := time.Now().UnixNano()
	last := fl.lastPub.Load()
	if !force && now-last < int64(progressInterval) {
		return
	}
	if !fl.lastPub.CompareAndSwap(last, now) && !force {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.subs) == 0 {
		return
	}
	for n, j := range s.jobs {
		if j.flight == fl {
			s.publishLocked(n)
		}
	}
}

func (s *Store) setJobStatus(j *job, st Status) {
	s.mu.Lock()
	j.status = st
	if e := s.names[j.name]; e != nil {
		e.Status, e.UpdatedAt = st, time.Now().UTC()
	}
	s.publishLocked(j.name)
	s.mu.Unlock()
	s.persist("")
}

// finish records the outcome of a job and releases its waiters.
func (s *Store) finish(j *job, digest string, err error) {
	s.mu.Lock()
	now := time.Now().UTC()
	e := s.names[j.name]
	if e != nil {
		if err == nil {
			e.Digest, e.Status, e.Error, e.ErrorKind, e.err = digest, StatusReady, "", "", nil
		} else {
			e.Status, e.Error, e.ErrorKind, e.err = StatusFailed, err.Error(), ErrorKindOf(err), err
		}
		e.UpdatedAt = now
	}
	delete(s.jobs, j.name)
	j.err = err
	var trash string
	if e == nil && err == nil && s.digests[digest] != nil && len(s.namesForLocked(digest)) == 0 && s.flights[digest] == nil {
		// The name was deleted while its conversion finished: nothing
		// points at the new disk.
		trash = filepath.Join(s.tmpDir(), fmt.Sprintf("deleted-%s-%d", strings.Replace(digest, ":", "-", 1), now.UnixNano()))
		if os.Rename(s.digestDir(digest), trash) == nil {
			delete(s.digests, digest)
		} else {
			trash = ""
		}
	}
	s.publishLocked(j.name)
	s.mu.Unlock()
	if trash != "" {
		os.RemoveAll(trash)
		s.cache.drop(digest)
	}
	if err == nil {
		s.persist(digest)
	} else {
		s.persist("")
	}
	j.cancel()
	close(j.done)
}
