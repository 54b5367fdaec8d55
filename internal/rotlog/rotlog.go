// Package rotlog owns size-rotated log files that another process writes
// (QEMU writes each guest's serial console into one) and the daemon reads:
// rotation without losing or repeating a byte, and reading by a stable
// offset across rotated files, with long lines split.
//
// Layout: the live file is <path>; rotated files are <path>.<start>, where
// <start> (20 digits, so names sort) is the logical offset of the file's
// first byte: the number of bytes the log held before it. The live file
// starts where the newest rotated file ends, so a logical offset (what
// instances persist, e.g. where the current boot's output begins) names the
// same byte before and after any number of rotations, and a log that was
// never rotated reads exactly as before (logical offset = file offset).
//
// Why rename + reopen, and not copytruncate or a daemon-side pipe (measured
// and considered on these hosts):
//   - The writer must outlive the daemon (a VM keeps running, and keeps
//     printing its exit status, while hypemand is restarted), so the file
//     stays the writer's own; a pipe or socket to the daemon would lose
//     output, exit markers included, whenever the daemon is down.
//   - copytruncate loses what the writer appends between the copy and the
//     truncate (~330 KB/s from a chatty guest).
//   - QEMU can swap a chardev's backend at run time (QMP chardev-change):
//     Rotate renames the live file and asks the writer to open a new one
//     (reopen). QEMU writes the serial port and runs chardev-change under
//     its big lock, so every byte lands in exactly one of the two files;
//     once the new live file exists the old one never grows again, which is
//     how readers know a rotated file is complete.
//   - A daemon killed between the rename and the reopen leaves no live file
//     while the writer still appends to the newest rotated one; Rotate
//     finishes such a rotation (reopen) the next time it is called.
//   - Rotation needs the daemon: while it is down the live file grows past
//     the cap until the next daemon rotates it.
//
// Lines: a line longer than MaxLine bytes is passed on in MaxLine pieces (a
// program printing megabytes without a newline must not make reading fail or
// grow memory without bound).
package rotlog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// MaxLine is the longest line passed on whole; longer lines are split.
const MaxLine = 64 << 10

// startDigits is the width of the start offset in rotated file names.
const startDigits = 20

// Segment is one file of a log.
type Segment struct {
	Path  string
	Start int64 // logical offset of the first byte
	Size  int64
	Live  bool // the file the writer appends to
	info  os.FileInfo
}

// End is the logical offset after the segment's last byte.
func (s Segment) End() int64 { return s.Start + s.Size }

// Segments lists the log's files, oldest first, the live file (if it
// exists) last. The listing is consistent: a rotation racing with it is
// detected (the live file changed under it) and the listing redone.
func Segments(path string) ([]Segment, error) {
	for attempt := 0; ; attempt++ {
		before, berr := os.Stat(path)
		segs, err := rotated(path)
		if err != nil {
			return nil, err
		}
		after, aerr := os.Stat(path)
		if aerr != nil && !errors.Is(aerr, fs.ErrNotExist) {
			return nil, fmt.Errorf("log %s: %w", path, aerr)
		}
		stable := (berr == nil && aerr == nil && os.SameFile(before, after)) ||
			(errors.Is(berr, fs.ErrNotExist) && errors.Is(aerr, fs.ErrNotExist))
		if !stable && attempt < 10 {
			continue
		}
		if aerr == nil {
			var liveStart int64
			if n := len(segs); n > 0 {
				liveStart = segs[n-1].End()
			}
			segs = append(segs, Segment{Path: path, Start: liveStart, Size: after.Size(), Live: true, info: after})
		}
		return segs, nil
	}
}

// rotated lists the rotated files, oldest first.
func rotated(path string) ([]Segment, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list log %s: %w", path, err)
	}
	var segs []Segment
	for _, e := range ents {
		suffix, ok := strings.CutPrefix(e.Name(), base+".")
		if !ok || len(suffix) != startDigits {
			continue
		}
		start, err := strconv.ParseInt(suffix, 10, 64)
		if err != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue // removed meanwhile, or not ours
		}
		segs = append(segs, Segment{Path: filepath.Join(dir, e.Name()), Start: start, Size: fi.Size(), info: fi})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].Start < segs[j].Start })
	return segs, nil
}

// errGone: the file a Segment described is no longer there.
var errGone = errors.New("log file rotated away")

// openSegment opens the file s describes. A live file rotated since the
// listing is found under its rotated name.
func openSegment(path string, s Segment) (*os.File, error) {
	try := func(p string) (*os.File, error) {
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errGone
		}
		if err != nil {
			return nil, fmt.Errorf("read log: %w", err)
		}
		if fi, err := f.Stat(); err != nil || !os.SameFile(fi, s.info) {
			f.Close()
			return nil, errGone
		}
		return f, nil
	}
	f, err := try(s.Path)
	if errors.Is(err, errGone) && s.Live {
		f, err = try(RotatedName(path, s.Start))
	}
	return f, err
}

// End returns the logical offset after the log's last byte (0 for a log
// that does not exist).
func End(path string) (int64, error) {
	segs, err := Segments(path)
	if err != nil || len(segs) == 0 {
		return 0, err
	}
	return segs[len(segs)-1].End(), nil
}

// RotatedName is the name a live file starting at logical offset start gets
// when it is rotated.
func RotatedName(path string, start int64) string {
	return fmt.Sprintf("%s.%0*d", path, startDigits, start)
}

// Rotate rotates the log when its live file holds maxBytes or more: it
// renames the live file, calls reopen (the writer must create a new live
// file), and removes the oldest rotated files beyond keep (at least one is
// kept: it carries the live file's start offset). With no live file but
// rotated ones (a rotation interrupted before reopen) it calls reopen. It
// reports whether it did anything.
func Rotate(path string, maxBytes int64, keep int, reopen func() error) (bool, error) {
	keep = max(keep, 1)
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		segs, lerr := Segments(path)
		if lerr != nil || len(segs) == 0 {
			return false, lerr
		}
		return true, reopen()
	}
	if err != nil {
		return false, fmt.Errorf("rotate %s: %w", path, err)
	}
	if fi.Size() < maxBytes {
		return false, nil
	}
	segs, err := Segments(path)
	if err != nil {
		return false, err
	}
	live := segs[len(segs)-1]
	if err := os.Rename(path, RotatedName(path, live.Start)); err != nil {
		return false, fmt.Errorf("rotate %s: %w", path, err)
	}
	rerr := reopen()
	// segs[:len-1] plus the file just rotated are the rotated files.
	if drop := len(segs) - keep; drop > 0 {
		for _, s := range segs[:drop] {
			os.Remove(s.Path)
		}
	}
	if rerr != nil {
		return true, fmt.Errorf("rotate %s: writer did not reopen: %w", path, rerr)
	}
	return true, nil
}

// splitter cuts a byte stream into lines: at each newline (not included),
// and every MaxLine bytes of a line longer than that.
type splitter struct{ buf []byte }

func (s *splitter) write(p []byte, emit func([]byte)) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if room := MaxLine - len(s.buf); len(chunk) > room {
			s.buf = append(s.buf, chunk[:room]...)
			emit(s.buf)
			s.buf = s.buf[:0]
			p = p[room:]
			continue
		}
		s.buf = append(s.buf, chunk...)
		if i < 0 {
			return
		}
		emit(s.buf)
		s.buf = s.buf[:0]
		p = p[i+1:]
	}
}

// Reader reads a log forward from a logical offset, across rotated files
// and into the files rotation creates after it started.
type Reader struct {
	path   string
	off    int64 // logical offset of the next byte to read
	f      *os.File
	fStart int64
	split  splitter
	buf    []byte
	// Skipped counts bytes that were removed (oldest rotated files
	// deleted) before this reader got to them.
	Skipped int64
}

// NewReader reads path from logical offset off.
func NewReader(path string, off int64) *Reader {
	return &Reader{path: path, off: off}
}

// Offset is the logical offset after the last line passed on (an
// unfinished line is not counted).
func (r *Reader) Offset() int64 { return r.off - int64(len(r.split.buf)) }

// Pending reports whether an unfinished line is buffered.
func (r *Reader) Pending() bool { return len(r.split.buf) > 0 }

// Poll passes every line completed since the last call to fn (the slice is
// only valid during the call). It follows the log into newer files.
func (r *Reader) Poll(fn func(line []byte)) error {
	for {
		if r.f == nil {
			ok, err := r.open()
			if !ok || err != nil {
				return err
			}
		}
		if err := r.drain(fn); err != nil {
			return err
		}
		done, err := r.complete()
		if err != nil || !done {
			return err
		}
		// Nothing is written to a complete file any more; what was
		// appended between the last read and the check is read now.
		if err := r.drain(fn); err != nil {
			return err
		}
		r.f.Close()
		r.f = nil
	}
}

// Flush passes an unfinished last line on (the writer is gone).
func (r *Reader) Flush(fn func(line []byte)) {
	if len(r.split.buf) > 0 {
		fn(r.split.buf)
		r.split.buf = r.split.buf[:0]
	}
}

// Close releases the open file.
func (r *Reader) Close() {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}

// open opens the segment holding r.off (false: no file yet).
func (r *Reader) open() (bool, error) {
	segs, err := Segments(r.path)
	if err != nil || len(segs) == 0 {
		return false, err
	}
	seg := segs[0]
	if r.off < seg.Start {
		// Rotated away before we read it.
		r.Skipped += seg.Start - r.off
		r.off = seg.Start
		r.split.buf = r.split.buf[:0]
	}
	for _, s := range segs {
		if s.Start <= r.off {
			seg = s
		}
	}
	f, err := openSegment(r.path, seg)
	if err != nil {
		if errors.Is(err, errGone) {
			return false, nil // pruned meanwhile: next poll
		}
		return false, err
	}
	if _, err := f.Seek(r.off-seg.Start, io.SeekStart); err != nil {
		f.Close()
		return false, fmt.Errorf("read log: %w", err)
	}
	r.f, r.fStart = f, seg.Start
	return true, nil
}

func (r *Reader) drain(fn func([]byte)) error {
	if r.buf == nil {
		r.buf = make([]byte, 64<<10)
	}
	for {
		n, err := r.f.Read(r.buf)
		r.off += int64(n)
		r.split.write(r.buf[:n], fn)
		if err == io.EOF || (err == nil && n == 0) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read log: %w", err)
		}
	}
}

// complete reports whether the open file will not grow any more: a newer
// file of the log exists.
func (r *Reader) complete() (bool, error) {
	fi, err := r.f.Stat()
	if err != nil {
		return false, fmt.Errorf("read log: %w", err)
	}
	if li, err := os.Stat(r.path); err == nil {
		return !os.SameFile(fi, li), nil
	}
	segs, err := Segments(r.path)
	if err != nil {
		return false, err
	}
	return len(segs) > 0 && segs[len(segs)-1].Start > r.fStart, nil
}

// Tail returns the last n lines of the log (n < 0: all), split as Reader
// splits them, and the logical offset after the last complete line. When the
// log ends in an unfinished line, it is the last line returned and partial
// is set (a follower starting at end reads it again, complete).
func Tail(path string, n int) (lines []string, end int64, partial bool, err error) {
	segs, err := Segments(path)
	if err != nil || len(segs) == 0 {
		return nil, 0, false, err
	}
	last := segs[len(segs)-1].End()
	start := segs[0].Start
	if n >= 0 {
		start, err = tailStart(path, segs, n)
		if err != nil {
			return nil, 0, false, err
		}
	}
	var sp splitter
	keep := func(l []byte) {
		lines = append(lines, string(l))
		if n >= 0 && len(lines) > 2*n+16 {
			lines = append(lines[:0], lines[len(lines)-n:]...)
		}
	}
	buf := make([]byte, 64<<10)
	for _, s := range segs {
		if s.End() <= start {
			continue
		}
		f, err := openSegment(path, s)
		if errors.Is(err, errGone) {
			continue // pruned meanwhile: its lines are gone
		}
		if err != nil {
			return nil, 0, false, err
		}
		from := max(start-s.Start, 0)
		_, err = io.CopyBuffer(writerFunc(func(p []byte) { sp.write(p, keep) }), io.NewSectionReader(f, from, s.Size-from), buf)
		f.Close()
		if err != nil {
			return nil, 0, false, fmt.Errorf("read log: %w", err)
		}
	}
	end = last - int64(len(sp.buf))
	if len(sp.buf) > 0 && n != 0 {
		partial = true
		lines = append(lines, string(sp.buf))
	}
	if n >= 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, end, partial, nil
}

// tailSlack is how much further back than the last n lines could reach
// tailStart looks for the start of a long line, so that its pieces are cut
// where a reader from its start cuts them.
const tailSlack = 16 << 20

// tailStart finds where the last n lines begin (an unfinished last line
// counts as one; with n = 0, where the unfinished line begins). It reads
// back at most (n+1)·(MaxLine+1) + tailSlack bytes: a line longer than that
// is cut into pieces from where the reading starts.
func tailStart(path string, segs []Segment, n int) (int64, error) {
	end := segs[len(segs)-1].End()
	limit := max(end-int64(n+1)*(MaxLine+1)-tailSlack, segs[0].Start)
	count, target := 0, max(n, 1)
	atEnd := true // the next byte seen is the log's last one
	buf := make([]byte, 64<<10)
	for i := len(segs) - 1; i >= 0; i-- {
		s := segs[i]
		f, err := openSegment(path, s)
		if errors.Is(err, errGone) {
			return s.End(), nil // pruned meanwhile: start after it
		}
		if err != nil {
			return 0, err
		}
		pos := s.Size
		for pos > 0 && s.Start+pos > limit {
			step := min(int64(len(buf)), pos, s.Start+pos-limit)
			pos -= step
			if _, err := f.ReadAt(buf[:step], pos); err != nil && err != io.EOF {
				f.Close()
				return 0, fmt.Errorf("read log: %w", err)
			}
			for j := step - 1; j >= 0; j-- {
				last := atEnd
				atEnd = false
				if buf[j] != '\n' {
					continue
				}
				if last { // the newline ending the last line
					if n == 0 {
						f.Close()
						return end, nil
					}
					continue
				}
				if count++; count == target {
					f.Close()
					return s.Start + pos + j + 1, nil
				}
			}
		}
		f.Close()
	}
	return limit, nil
}

type writerFunc func([]byte)

func (w writerFunc) Write(p []byte) (int, error) { w(p); return len(p), nil }
