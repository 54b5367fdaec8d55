package rotlog

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// writer stands for QEMU: it appends to the live file through a descriptor
// it keeps, and reopen swaps the descriptor under the same lock its writes
// take (QEMU's big lock), so a write lands wholly in one file.
type writer struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func newWriter(t *testing.T, path string) *writer {
	t.Helper()
	w := &writer{path: path}
	if err := w.reopen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.f.Close() })
	return w
}

func (w *writer) reopen() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if w.f != nil {
		w.f.Close()
	}
	w.f = f
	return nil
}

func (w *writer) write(b []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.f.Write(b); err != nil {
		panic(err)
	}
}

// numbered writes lines "line <i> <padding>" for i in [from, to) in chunks
// cut at random places (lines straddle writes and therefore files).
func numbered(w *writer, from, to int, rng *rand.Rand) {
	var b strings.Builder
	for i := from; i < to; i++ {
		fmt.Fprintf(&b, "line %d %s\n", i, strings.Repeat("x", rng.IntN(200)))
	}
	s := b.String()
	for len(s) > 0 {
		n := min(len(s), 1+rng.IntN(700))
		w.write([]byte(s[:n]))
		s = s[n:]
	}
}

func lineNumber(t *testing.T, l string) int {
	t.Helper()
	f := strings.Fields(l)
	if len(f) < 2 || f[0] != "line" {
		t.Fatalf("not a numbered line: %q", l)
	}
	n, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatalf("not a numbered line: %q", l)
	}
	return n
}

// A follower reading while the log is written and rotated sees every line
// exactly once, in order, including lines cut in two by a rotation; tail
// and offsets work across the rotated files.
func TestRotateWhileWritingAndFollowing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	w := newWriter(t, path)
	rng := rand.New(rand.NewPCG(1, 2))
	const total = 20000

	follower := NewReader(path, 0)
	defer follower.Close()
	var got []string
	collect := func(l []byte) { got = append(got, string(l)) }
	rotations := 0
	for i := 0; i < total; i += 500 {
		numbered(w, i, i+500, rng)
		if err := follower.Poll(collect); err != nil {
			t.Fatal(err)
		}
		rotated, err := Rotate(path, 16<<10, 1000, w.reopen)
		if err != nil {
			t.Fatal(err)
		}
		if rotated {
			rotations++
		}
	}
	if err := follower.Poll(collect); err != nil {
		t.Fatal(err)
	}
	if rotations < 30 {
		t.Fatalf("only %d rotations", rotations)
	}
	if len(got) != total {
		t.Fatalf("follower got %d lines, want %d", len(got), total)
	}
	for i, l := range got {
		if lineNumber(t, l) != i {
			t.Fatalf("line %d is %q", i, l)
		}
	}
	end, err := End(path)
	if err != nil || end != follower.Offset() {
		t.Fatalf("End %d (%v), follower at %d", end, err, follower.Offset())
	}
	var size int64
	segs, _ := Segments(path)
	for _, s := range segs {
		size += s.Size
	}
	if size != end {
		t.Fatalf("segments hold %d bytes, end is %d", size, end)
	}

	tail, tend, partial, err := Tail(path, 300)
	if err != nil || partial || tend != end || len(tail) != 300 {
		t.Fatalf("tail: %d lines, end %d/%d, partial %v, %v", len(tail), tend, end, partial, err)
	}
	for i, l := range tail {
		if lineNumber(t, l) != total-300+i {
			t.Fatalf("tail line %d is %q", i, l)
		}
	}
	// Offsets are stable: a reader from the middle of an old rotated file
	// reads on from there.
	mid := segs[3].Start + segs[3].Size/2
	r := NewReader(path, mid)
	defer r.Close()
	var rest []string
	r.Poll(func(l []byte) { rest = append(rest, string(l)) })
	if n := lineNumber(t, rest[1]); n+len(rest)-1 != total {
		t.Fatalf("from offset %d: %d lines starting at %d", mid, len(rest), n)
	}
}

// Only keep rotated files remain; tail of everything starts at the oldest
// kept byte and is contiguous; a reader whose bytes were removed skips to
// the oldest kept byte and counts what it missed.
func TestRetentionAndSkippedReader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	w := newWriter(t, path)
	rng := rand.New(rand.NewPCG(3, 4))
	slow := NewReader(path, 0)
	defer slow.Close()
	for i := 0; i < 5000; i += 100 {
		numbered(w, i, i+100, rng)
		if _, err := Rotate(path, 8<<10, 3, w.reopen); err != nil {
			t.Fatal(err)
		}
	}
	segs, _ := Segments(path)
	if len(segs) != 4 || !segs[3].Live {
		t.Fatalf("segments: %+v", segs)
	}
	all, _, _, err := Tail(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	prev := -1
	for _, l := range all[1:] { // the first may be the end of a line whose start was removed
		n := lineNumber(t, l)
		if prev >= 0 && n != prev+1 {
			t.Fatalf("gap: %d after %d", n, prev)
		}
		prev = n
	}
	if prev != 4999 {
		t.Fatalf("last line %d", prev)
	}
	var first string
	slow.Poll(func(l []byte) {
		if first == "" {
			first = string(l)
		}
	})
	if slow.Skipped != segs[0].Start || slow.Offset() != segs[3].End() {
		t.Fatalf("skipped %d (want %d), offset %d (want %d)", slow.Skipped, segs[0].Start, slow.Offset(), segs[3].End())
	}
}

// A rotation interrupted after the rename (daemon killed before the writer
// reopened): the log stays readable, offsets hold, and the next Rotate
// finishes it.
func TestInterruptedRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	w := newWriter(t, path)
	numbered(w, 0, 100, rand.New(rand.NewPCG(5, 6)))
	segs, _ := Segments(path)
	if err := os.Rename(path, RotatedName(path, segs[0].Start)); err != nil {
		t.Fatal(err)
	}
	numbered(w, 100, 200, rand.New(rand.NewPCG(7, 8))) // still into the renamed file
	r := NewReader(path, 0)
	defer r.Close()
	var got []string
	r.Poll(func(l []byte) { got = append(got, string(l)) })
	if len(got) != 200 {
		t.Fatalf("read %d lines before the rotation finished", len(got))
	}
	reopened := false
	rotated, err := Rotate(path, 1<<30, 2, func() error { reopened = true; return w.reopen() })
	if err != nil || !rotated || !reopened {
		t.Fatalf("finishing rotation: %v %v %v", rotated, reopened, err)
	}
	numbered(w, 200, 300, rand.New(rand.NewPCG(9, 10)))
	r.Poll(func(l []byte) { got = append(got, string(l)) })
	if len(got) != 300 || lineNumber(t, got[299]) != 299 {
		t.Fatalf("after the rotation: %d lines", len(got))
	}
}

// Lines longer than MaxLine come out in MaxLine pieces: a 4 MB line
// without a newline neither fails a tail nor a follower.
func TestLongLinesAreSplit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	w := newWriter(t, path)
	w.write([]byte("before\n"))
	w.write([]byte(strings.Repeat("y", 4<<20)))
	lines, end, partial, err := Tail(path, 10)
	size := int64(len("before\n") + 4<<20)
	if err != nil || !partial || len(lines) != 10 || end != size-int64(len(lines[9])) {
		t.Fatalf("tail of a 4 MB unfinished line: %d lines, end %d, partial %v, %v", len(lines), end, partial, err)
	}
	for _, l := range lines[:9] {
		if len(l) != MaxLine {
			t.Fatalf("piece of %d bytes", len(l))
		}
	}
	w.write([]byte("\nafter\n"))
	all, _, partial, err := Tail(path, -1)
	if err != nil || partial || len(all) != 1+64+1 || all[0] != "before" || all[65] != "after" {
		t.Fatalf("whole log: %d lines, partial %v, %v", len(all), partial, err)
	}
	r := NewReader(path, 0)
	defer r.Close()
	var got []string
	r.Poll(func(l []byte) { got = append(got, string(l)) })
	if len(got) != 66 || got[65] != "after" {
		t.Fatalf("follower: %d lines", len(got))
	}
	// A line of exactly MaxLine is one line, not a piece and an empty one.
	w.write([]byte(strings.Repeat("z", MaxLine)))
	r.Poll(func(l []byte) { got = append(got, string(l)) })
	w.write([]byte("\nend\n"))
	r.Poll(func(l []byte) { got = append(got, string(l)) })
	if len(got) != 68 || len(got[66]) != MaxLine || got[67] != "end" {
		t.Fatalf("exact MaxLine line: %d lines", len(got))
	}
}

// Tail counts lines the way readers split them, with and without a final
// newline, for n = 0 too.
func TestTailEdges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.log")
	if lines, end, _, err := Tail(path, 5); err != nil || lines != nil || end != 0 {
		t.Fatalf("missing log: %v %d %v", lines, end, err)
	}
	os.WriteFile(path, []byte("a\nb\nc\n"), 0o644)
	for n, want := range map[int]string{0: "", 1: "c", 2: "b c", 3: "a b c", 9: "a b c", -1: "a b c"} {
		lines, end, partial, err := Tail(path, n)
		if err != nil || strings.Join(lines, " ") != want || end != 6 || partial {
			t.Errorf("tail %d = %q end %d partial %v %v, want %q", n, lines, end, partial, err, want)
		}
	}
	os.WriteFile(path, []byte("a\nb\nc"), 0o644)
	for n, want := range map[int]string{0: "", 1: "c", 2: "b c", 3: "a b c"} {
		lines, end, partial, err := Tail(path, n)
		if err != nil || strings.Join(lines, " ") != want || end != 4 || (n > 0) != partial {
			t.Errorf("unfinished: tail %d = %q end %d partial %v %v, want %q", n, lines, end, partial, err, want)
		}
	}
}

// The same with the writer, the rotation and the follower running at once.
func TestConcurrentWriteRotateFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	w := newWriter(t, path)
	const total = 30000
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		rng := rand.New(rand.NewPCG(11, 12))
		for i := 0; i < total; i += 100 {
			numbered(w, i, i+100, rng)
		}
	}()
	rotating := make(chan struct{})
	rotations := 0
	go func() {
		defer close(rotating)
		for {
			select {
			case <-writing:
				return
			default:
			}
			if ok, err := Rotate(path, 32<<10, 1<<20, w.reopen); err != nil {
				panic(err)
			} else if ok {
				rotations++
			}
		}
	}()
	r := NewReader(path, 0)
	defer r.Close()
	var got []string
	for done := false; !done; {
		select {
		case <-rotating:
			done = true
		default:
		}
		if err := r.Poll(func(l []byte) { got = append(got, string(l)) }); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != total {
		t.Fatalf("follower got %d lines, want %d (%d rotations)", len(got), total, rotations)
	}
	for i, l := range got {
		if lineNumber(t, l) != i {
			t.Fatalf("line %d is %q", i, l)
		}
	}
	t.Logf("%d lines through %d rotations", total, rotations)
}
