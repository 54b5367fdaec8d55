package qemu

// The state file codecs: how a migration stream is stored (raw, zstd, lz4)
// and read back, with the XXH64 of the stored bytes computed on the way in
// both directions.
//
// Level mapping (the API's ranges are zstd 1-19 and lz4 0-9):
//   - zstd: klauspost/compress has four encoder speeds; levels map with
//     zstd.EncoderLevelFromZstd: 1-2 fastest, 3-5 default, 6-9 better,
//     10-19 best. snapshot.json records the level asked for.
//   - lz4: 0 is lz4's fast mode; 1-9 use pierrec/lz4's high-compression
//     (HC) mode: 1-3 its Level1, 4-6 Level2, 7-9 Level3. Its deeper HC
//     levels only search longer: on a 207 MB state (1 GiB guest, 128 MiB
//     random data; one run each on a loaded 2-core host) Level1 took 3.8 s,
//     Level3 13 s, Level5 42 s and Level9 98 s, for the same size within
//     0.1% (fast mode: 0.5 s, 2% larger).
//     A VM stays paused while its state compresses, so the range is mapped
//     onto the levels that are worth their time.
// Neither codec's own content checksum is written: the state file's XXH64
// in snapshot.json already covers every stored byte.

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"hypeman/internal/hypervisor"
)

// stateFileName is the state file name for an algorithm.
func stateFileName(algorithm string) string {
	switch algorithm {
	case hypervisor.CompressionZstd:
		return StateFileNameZstd
	case hypervisor.CompressionLZ4:
		return StateFileNameLZ4
	}
	return StateFileName
}

// lz4Levels maps API levels 0-9 to pierrec/lz4 levels (see above).
var lz4Levels = [...]lz4.CompressionLevel{lz4.Fast, lz4.Level1, lz4.Level1, lz4.Level1, lz4.Level2,
	lz4.Level2, lz4.Level2, lz4.Level3, lz4.Level3, lz4.Level3}

// newEncoder returns a writer compressing into w as c says (nil for none).
func newEncoder(w io.Writer, c hypervisor.Compression) (io.WriteCloser, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	switch c.Algorithm {
	case hypervisor.CompressionZstd:
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(c.Level)), zstd.WithEncoderCRC(false))
	case hypervisor.CompressionLZ4:
		lw := lz4.NewWriter(w)
		if err := lw.Apply(lz4.CompressionLevelOption(lz4Levels[c.Level]), lz4.ChecksumOption(false),
			lz4.ConcurrencyOption(runtime.GOMAXPROCS(0))); err != nil {
			return nil, err
		}
		return lw, nil
	}
	return nil, nil
}

// stateWriter writes one state file: bytes written to it are the
// uncompressed stream; the file holds them encoded.
type stateWriter struct {
	f      *os.File
	sum    *xxhash.Digest
	stored *countWriter // file bytes, hashed
	enc    io.WriteCloser
	stream int64
	sm     StateMeta
}

// createState creates the state file for c in dir (it must not exist).
func createState(dir string, c hypervisor.Compression) (*stateWriter, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	sm := StateMeta{File: stateFileName(c.Algorithm), Compression: c.Algorithm}
	if c.Enabled() {
		sm.Level = c.Level
	}
	f, err := os.OpenFile(filepath.Join(dir, sm.File), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	w := &stateWriter{f: f, sum: xxhash.New(), sm: sm}
	w.stored = &countWriter{w: io.MultiWriter(f, w.sum)}
	if w.enc, err = newEncoder(w.stored, c); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

func (w *stateWriter) Write(p []byte) (int, error) {
	var n int
	var err error
	if w.enc != nil {
		n, err = w.enc.Write(p)
	} else {
		n, err = w.stored.Write(p)
	}
	w.stream += int64(n)
	return n, err
}

// finish flushes the encoder, syncs and closes the file and returns its
// description.
func (w *stateWriter) finish() (StateMeta, error) {
	if w.enc != nil {
		if err := w.enc.Close(); err != nil {
			w.f.Close()
			return w.sm, err
		}
	}
	if err := w.f.Sync(); err != nil {
		w.f.Close()
		return w.sm, err
	}
	if err := w.f.Close(); err != nil {
		return w.sm, err
	}
	sm := w.sm
	sm.Size, sm.StreamSize, sm.Checksum = w.stored.n, w.stream, formatChecksum(w.sum.Sum64())
	return sm, nil
}

// abort releases the file after a failure (the caller removes the dir).
func (w *stateWriter) abort() {
	if w.enc != nil {
		w.enc.Close()
	}
	w.f.Close()
}

// stateReader reads the stream back out of a state file, hashing every
// stored byte.
type stateReader struct {
	tee  io.Reader
	sum  *xxhash.Digest
	src  io.Reader
	stop func() // ends the decoder's goroutines
	sm   StateMeta
}

func openState(file io.Reader, sm StateMeta) (*stateReader, error) {
	r := &stateReader{sum: xxhash.New(), sm: sm, stop: func() {}}
	r.tee = io.TeeReader(file, r.sum)
	r.src = r.tee
	switch sm.Compression {
	case hypervisor.CompressionZstd:
		// One decoder goroutine ahead of the copy is enough on a 2-core
		// host; more only competes with QEMU for the CPUs.
		dec, err := zstd.NewReader(r.tee, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			return nil, err
		}
		r.src, r.stop = dec, dec.Close
	case hypervisor.CompressionLZ4:
		r.src = lz4.NewReader(r.tee)
	case hypervisor.CompressionNone:
	default:
		return nil, fmt.Errorf("%w: unknown state compression %q", hypervisor.ErrSnapshotCorrupt, sm.Compression)
	}
	return r, nil
}

func (r *stateReader) Read(p []byte) (int, error) { return r.src.Read(p) }

// verify stops decoding, hashes the rest of the file and compares the
// checksum with snapshot.json (ErrSnapshotCorrupt on a mismatch). It always
// reads the whole file, so a damaged file is reported as such even when
// the consumer stopped early.
func (r *stateReader) verify() error {
	r.stop() // nothing reads tee after this
	want, err := parseChecksum(r.sm.Checksum)
	if err != nil {
		return fmt.Errorf("%w: %w", hypervisor.ErrSnapshotCorrupt, err)
	}
	if _, err := io.Copy(io.Discard, r.tee); err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	if got := r.sum.Sum64(); got != want {
		return fmt.Errorf("%w: state file %s checksum %s, snapshot.json says %s", hypervisor.ErrSnapshotCorrupt,
			r.sm.File, formatChecksum(got), r.sm.Checksum)
	}
	return nil
}

// compression is the Compression a state file is stored with. zstd files
// written before levels were recorded used the fastest setting = level 1.
func (sm StateMeta) compression() hypervisor.Compression {
	c := hypervisor.Compression{Algorithm: sm.Compression, Level: sm.Level}
	if c.Algorithm == hypervisor.CompressionZstd && c.Level == 0 {
		c.Level = hypervisor.ZstdDefaultLevel
	}
	return c
}
