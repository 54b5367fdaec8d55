package volumes

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"

	"hypeman/internal/childproc"
	"hypeman/internal/fsutil"
	"hypeman/internal/tags"
	"hypeman/internal/untar"
)

// Create makes an empty volume: a sparse ext4 disk of p.SizeGB GiB.
func (s *Store) Create(ctx context.Context, p CreateParams) (*Volume, error) {
	return s.create(ctx, p, nil)
}

// CreateFromArchive makes a volume holding the tar.gz (or plain tar) read
// from body. p.SizeGB is the disk size and a hard cap on what the archive
// unpacks to, enforced while it streams. body is read only as far as needed:
// up to the end of the tar, or the first refused entry, or the cap.
func (s *Store) CreateFromArchive(ctx context.Context, p CreateParams, body io.Reader) (*Volume, error) {
	if body == nil {
		return nil, &ArchiveError{Err: errors.New("no body: send the tar.gz as the request body")}
	}
	return s.create(ctx, p, body)
}

func (s *Store) create(ctx context.Context, p CreateParams, body io.Reader) (_ *Volume, err error) {
	if err := s.validate(&p); err != nil {
		return nil, err
	}
	release, err := s.reserve(p)
	if err != nil {
		return nil, err
	}
	defer release()

	dir := filepath.Join(s.dir, p.ID)
	// 0700: the staging tree may hold setuid files owned by anyone.
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create volume %s: %w", p.ID, err)
	}
	defer func() {
		if err != nil {
			if rmErr := os.RemoveAll(dir); rmErr != nil {
				s.log.Warn("removing failed volume", "id", p.ID, "err", rmErr)
			}
		}
	}()
	t0 := time.Now()
	tmp := filepath.Join(dir, dataTmp)
	size := int64(p.SizeGB) << 30
	source := "empty"
	var st untar.Stats
	if body == nil {
		err = mkfs(ctx, tmp, size, "")
	} else {
		source = "archive"
		st, err = s.fromArchive(ctx, dir, tmp, p.SizeGB, size, body)
	}
	if err != nil {
		return nil, err
	}
	if err := fsutil.SyncFile(tmp); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, filepath.Join(dir, dataFile)); err != nil {
		return nil, fmt.Errorf("create volume %s: %w", p.ID, err)
	}
	r := &record{Version: recordVersion, ID: p.ID, Name: p.Name, SizeGB: p.SizeGB, Tags: tags.Clone(p.Tags),
		CreatedAt: time.Now().UTC(), Source: source}
	if err := s.commit(r); err != nil {
		return nil, fmt.Errorf("create volume %s: %w", p.ID, err)
	}
	s.log.Info("volume created", "id", r.ID, "name", r.Name, "size_gb", r.SizeGB, "source", source,
		"entries", st.Entries, "content_bytes", st.Bytes, "took", time.Since(t0).Round(time.Millisecond))
	return s.view(r), nil
}

// fromArchive extracts body into a staging tree inside dir and builds the
// disk at out from it. The staging tree is removed whatever happens.
func (s *Store) fromArchive(ctx context.Context, dir, out string, sizeGB int, size int64, body io.Reader) (untar.Stats, error) {
	staging := filepath.Join(dir, stagingDir)
	if err := os.Mkdir(staging, 0o700); err != nil {
		return untar.Stats{}, fmt.Errorf("create staging dir: %w", err)
	}
	defer func() {
		if err := os.RemoveAll(staging); err != nil {
			s.log.Warn("removing volume staging dir", "path", staging, "err", err)
		}
	}()
	st, err := extract(ctx, staging, body, size, sizeGB)
	if err != nil {
		return st, err
	}
	return st, mkfsArchive(ctx, out, size, staging, sizeGB)
}

// extract unpacks a tar.gz (or plain tar) stream into staging under the
// strict policy. capBytes bounds, each on its own, the compressed bytes read
// (plus 1/64 and 1 MiB of slack for gzip framing), the decompressed tar
// stream and the file bytes written.
func extract(ctx context.Context, staging string, body io.Reader, capBytes int64, sizeGB int) (untar.Stats, error) {
	tooLarge := func(what string) func() error {
		return func() error { return &TooLargeError{SizeGB: sizeGB, What: what} }
	}
	compressed := &untar.Budget{Limit: capBytes + capBytes/64 + 1<<20, Err: tooLarge("compressed archive")}
	stream := &untar.Budget{Limit: capBytes, Err: tooLarge("unpacked archive")}
	files := &untar.Budget{Limit: capBytes, Err: tooLarge("archive files")}

	br := bufio.NewReaderSize(compressed.Reader(body), 256<<10)
	var tarStream io.Reader
	magic, _ := br.Peek(512)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		gz, err := gzip.NewReader(br)
		if err != nil {
			return untar.Stats{}, archiveErr(fmt.Errorf("gzip: %w", err))
		}
		defer gz.Close()
		tarStream = gz
	case len(magic) >= 262 && string(magic[257:262]) == "ustar":
		tarStream = br // an uncompressed tar works too
	default:
		return untar.Stats{}, &ArchiveError{Err: errors.New("the body is neither gzip nor tar: send a .tar.gz (Content-Type: application/gzip)")}
	}
	a, err := untar.New(staging, untar.Options{Strict: true, Files: files})
	if err != nil {
		return untar.Stats{}, err
	}
	defer a.Close()
	if err := a.Apply(ctx, stream.Reader(tarStream)); err != nil {
		return a.Stats(), archiveErr(err)
	}
	if err := a.Finish(); err != nil {
		return a.Stats(), err
	}
	return a.Stats(), nil
}

// archiveErr keeps our own failures (cap, local filesystem, cancellation)
// and calls everything else the archive's fault.
func archiveErr(err error) error {
	var tl *TooLargeError
	var le *untar.LocalError
	switch {
	case errors.As(err, &tl), errors.As(err, &le), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return &ArchiveError{Err: err}
}

// mkfs formats out (created at size bytes, sparse) as ext4, filled from
// dir when dir is not empty. Lazy init keeps it fast at any size; the
// journal stays (guests write to volumes and may be killed).
func mkfs(ctx context.Context, out string, size int64, dir string) error {
	f, err := os.OpenFile(out, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create volume disk: %w", err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return fmt.Errorf("size volume disk: %w", err)
	}
	args := []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-L", "hm-volume",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0"}
	if dir != "" {
		args = append(args, "-d", dir)
	}
	outb, err := childproc.CommandContext(ctx, "mkfs.ext4", append(args, out)...).CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		msg := strings.TrimSpace(string(outb))
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		if strings.Contains(msg, "No space left on device") {
			err = syscall.ENOSPC // mkfs says so only in its output: keep the errno for callers
		}
		return &mkfsError{err: err, out: msg}
	}
	return nil
}

type mkfsError struct {
	err error
	out string
}

func (e *mkfsError) Error() string {
	if errors.Is(e.err, syscall.ENOSPC) {
		return fmt.Sprintf("format volume disk: the host is out of disk space: %s", e.out)
	}
	return fmt.Sprintf("format volume disk: mkfs.ext4: %v: %s", e.err, e.out)
}
func (e *mkfsError) Unwrap() error { return e.err }

// mkfsArchive builds the disk from the staging tree; content that fits the
// byte cap but not the filesystem (metadata, inodes) is too large too.
func mkfsArchive(ctx context.Context, out string, size int64, staging string, sizeGB int) error {
	err := mkfs(ctx, out, size, staging)
	var me *mkfsError
	if errors.As(err, &me) && !errors.Is(err, syscall.ENOSPC) &&
		(strings.Contains(me.out, "Could not allocate") || strings.Contains(me.out, "No free space") ||
			strings.Contains(me.out, "inode")) {
		return &TooLargeError{SizeGB: sizeGB, What: "archive content (files plus filesystem metadata)"}
	}
	return err
}
