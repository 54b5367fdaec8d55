package main_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"hypeman/internal/cli"
	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/upstreamcli"
)

// clients runs both CLIs against one daemon.
type clients struct {
	t   *testing.T
	s   *e2e.Server
	up  *upstreamcli.CLI
	our *upstreamcli.CLI // our binary, run the same way
}

// ours runs our CLI in-process (as a user would run it, minus the process).
func (c *clients) ours(ctx context.Context, stdin []byte, args ...string) upstreamcli.Result {
	var out, errb bytes.Buffer
	env := map[string]string{"HYPEMAN_BASE_URL": c.s.BaseURL, "HYPEMAN_API_KEY": c.s.Token}
	start := time.Now()
	code := cli.Run(ctx, args, bytes.NewReader(stdin), &out, &errb, func(k string) string { return env[k] })
	return upstreamcli.Result{Code: code, Stdout: out.String(), Stderr: errb.String(), Elapsed: time.Since(start)}
}

func (c *clients) upstream(stdin []byte, args ...string) upstreamcli.Result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 3*time.Minute)
	defer cancel()
	return c.up.Run(c.t, ctx, "", stdin, args...)
}

// TestStreamsWithBothCLIs drives logs, exec and cp through hypemand and a
// real VM with hypeman's own CLI (unmodified, built from shared/compat) and
// with ours: same protocols, same results.
func TestStreamsWithBothCLIs(t *testing.T) {
	t.Parallel()
	s := e2e.Start(t)
	c := &clients{t: t, s: s, up: upstreamcli.New(t, s.BaseURL, s.Token)}
	c.our = &upstreamcli.CLI{Bin: e2e.CLIBinary(t), BaseURL: s.BaseURL, Token: s.Token, Home: t.TempDir()}
	pushImage(t, s, "apps/streams:v1", testimage.Options{Entrypoint: []string{"/bin/sh", "-c"},
		Cmd: []string{`i=0; while true; do i=$((i+1)); echo "line $i"; sleep 1; done`}})
	if r := c.ours(t.Context(), nil, "run", "--name", "box", "--memory", "256MB", "--cpus", "1", "apps/streams:v1"); r.Code != 0 {
		t.Fatalf("run: %v\n%s", r, s.Logs())
	}

	t.Run("logs", func(t *testing.T) { testLogs(t, c) })
	t.Run("exec", func(t *testing.T) { testExec(t, c) })
	t.Run("cp", func(t *testing.T) { testCp(t, c) })
	t.Run("measure", func(t *testing.T) { measureStreams(t, c) })
}

var logLine = regexp.MustCompile(`^line (\d+)$`)

// lineNumbers parses a log output made only of "line N" lines.
func lineNumbers(t *testing.T, out string) []int {
	t.Helper()
	var ns []int
	if out == "" {
		return nil
	}
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		m := logLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("log line %q is not the program's output verbatim (output %q)", l, out)
		}
		n, _ := strconv.Atoi(m[1])
		ns = append(ns, n)
	}
	return ns
}

func testLogs(t *testing.T, c *clients) {
	// Enough lines for a tail of 5.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r := c.upstream(nil, "logs", "--tail", "5", "box")
		if r.Code != 0 {
			t.Fatalf("upstream logs --tail 5: %v", r)
		}
		if ns := lineNumbers(t, r.Stdout); len(ns) == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than 5 log lines after 2 minutes: %q", r.Stdout)
		}
		time.Sleep(200 * time.Millisecond)
	}
	r := c.ours(t.Context(), nil, "logs", "--tail", "5", "box")
	if ns := lineNumbers(t, r.Stdout); r.Code != 0 || len(ns) != 5 {
		t.Fatalf("our logs --tail 5: %v", r)
	}

	// Follow with hypeman's CLI: new lines keep coming for longer than the
	// server's 15 s keepalive interval, so the stream outlives a keepalive
	// (a keepalive that ended an event would stop the SDK with a JSON
	// error).
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	sc, stop := c.up.Follow(t, ctx, "logs", "-f", "--tail", "1", "box")
	start := time.Now()
	first, last := -1, -1
	for sc.Scan() {
		n := lineNumbers(t, sc.Text())[0]
		if first < 0 {
			first = n
		}
		last = n
		if time.Since(start) > 17*time.Second && last > first {
			break
		}
	}
	stderr := stop()
	if first < 0 || last <= first || time.Since(start) < 17*time.Second {
		t.Fatalf("upstream logs -f: lines %d..%d in %s, stderr %q", first, last, time.Since(start), stderr)
	}

	// Follow with ours: a new line arrives.
	pr, pw := io.Pipe()
	fctx, fcancel := context.WithTimeout(t.Context(), time.Minute)
	defer fcancel()
	done := make(chan upstreamcli.Result, 1)
	go func() {
		env := map[string]string{"HYPEMAN_BASE_URL": c.s.BaseURL, "HYPEMAN_API_KEY": c.s.Token}
		var errb bytes.Buffer
		code := cli.Run(fctx, []string{"logs", "-f", "--tail", "1", "box"}, bytes.NewReader(nil), pw, &errb, func(k string) string { return env[k] })
		pw.Close()
		done <- upstreamcli.Result{Code: code, Stderr: errb.String()}
	}()
	sc = bufio.NewScanner(pr)
	first, last = -1, -1
	for sc.Scan() {
		last = lineNumbers(t, sc.Text())[0]
		if first < 0 {
			first = last
		} else if last > first {
			break
		}
	}
	fcancel()
	go io.Copy(io.Discard, pr)
	if r := <-done; r.Code != 0 || last <= first {
		t.Fatalf("our logs -f: lines %d..%d, %v", first, last, r)
	}
}

func testExec(t *testing.T, c *clients) {
	// Clean stdout: the bytes the command wrote, nothing else.
	if r := c.upstream(nil, "exec", "-T", "box", "--", "echo", "hello from exec"); r.Code != 0 || r.Stdout != "hello from exec\n" {
		t.Fatalf("upstream exec echo: %v", r)
	}
	// Exit codes propagate; stdout and stderr both reach the terminal.
	r := c.upstream(nil, "exec", "-T", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
	if r.Code != 7 || !strings.Contains(r.Stdout, "out\n") || !strings.Contains(r.Stdout, "err\n") {
		t.Fatalf("upstream exec exit 7: %v", r)
	}
	// --timeout kills the command: 124.
	r = c.upstream(nil, "exec", "-T", "--timeout", "2", "box", "--", "sleep", "30")
	if r.Code != 124 || r.Elapsed > 25*time.Second {
		t.Fatalf("upstream exec --timeout 2 sleep 30: %v", r)
	}
	// Stdin reaches the command.
	if r = c.upstream([]byte("hi\n"), "exec", "-T", "box", "--", "head", "-c", "3"); r.Code != 0 || r.Stdout != "hi\n" {
		t.Fatalf("upstream exec with stdin: %v", r)
	}

	ctx := t.Context()
	if r = c.ours(ctx, nil, "exec", "box", "--", "echo", "hello from exec"); r.Code != 0 || r.Stdout != "hello from exec\n" {
		t.Fatalf("our exec echo: %v", r)
	}
	if r = c.ours(ctx, nil, "exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 7"); r.Code != 7 || r.Stdout != "out\n" || r.Stderr != "err\n" {
		t.Fatalf("our exec exit 7: %v", r)
	}
	if r = c.ours(ctx, nil, "exec", "--timeout", "2s", "box", "--", "sleep", "30"); r.Code != 124 || r.Elapsed > 25*time.Second || !strings.Contains(r.Stderr, "timed out") {
		t.Fatalf("our exec --timeout: %v", r)
	}
	// Ours ends stdin, so a command reading to EOF finishes.
	if r = c.ours(ctx, []byte("hi\nthere\n"), "exec", "-i", "box", "--", "wc", "-l"); r.Code != 0 || strings.TrimSpace(r.Stdout) != "2" {
		t.Fatalf("our exec with stdin: %v", r)
	}
}

// entry is what a copy must keep of a file.
type entry struct {
	Mode  fs.FileMode
	Mtime int64
	Data  string
}

// tree describes every entry under dir; withMtime false leaves times out
// (hypeman's CLI does not send them).
func tree(t *testing.T, dir string, withMtime bool) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		e := entry{Mode: fi.Mode() & (fs.ModeDir | fs.ModePerm)}
		if withMtime {
			e.Mtime = fi.ModTime().Unix()
		}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.Data = string(b)
		}
		out[filepath.ToSlash(rel)] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, what string, got, want map[string]entry) {
	t.Helper()
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s: %s missing", what, k)
		} else if g != w {
			t.Errorf("%s: %s is %v %d (%d bytes), want %v %d (%d bytes)", what, k, g.Mode, g.Mtime, len(g.Data), w.Mode, w.Mtime, len(w.Data))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected %s", what, k)
		}
	}
}

// makeCpTree writes a small tree with distinct modes and old times.
func makeCpTree(t *testing.T, dir string) {
	t.Helper()
	big := make([]byte, 1<<20)
	rand.Read(big)
	for _, f := range []struct {
		name, data string
		mode       fs.FileMode
	}{
		{"a.txt", "alpha\n", 0o640},
		{"run.sh", "#!/bin/sh\necho ran\n", 0o755},
		{"big.bin", string(big), 0o600},
		{"sub/deep/b.txt", "deep\n", 0o644},
	} {
		p := filepath.Join(dir, f.name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, f.mode)
	}
	os.Mkdir(filepath.Join(dir, "empty"), 0o700)
	os.Chmod(filepath.Join(dir, "sub"), 0o750)
	old := time.Date(2021, 6, 7, 8, 9, 10, 0, time.UTC)
	for i, p := range []string{"a.txt", "run.sh", "big.bin", "sub/deep/b.txt", "empty", "sub/deep", "sub", "."} {
		ts := old.Add(time.Duration(i) * time.Minute)
		os.Chtimes(filepath.Join(dir, p), ts, ts)
	}
}

func testCp(t *testing.T, c *clients) {
	ctx := t.Context()
	local := t.TempDir()
	src := filepath.Join(local, "tree")
	os.Mkdir(src, 0o755)
	makeCpTree(t, src)
	want, wantNoTime := tree(t, src, true), tree(t, src, false)
	guestIs := func(test, p string) {
		t.Helper()
		if r := c.ours(ctx, nil, "exec", "box", "--", "test", test, p); r.Code != 0 {
			t.Errorf("in the guest, test %s %s failed: %v", test, p, r)
		}
	}
	up := func(args ...string) {
		t.Helper()
		if r := c.upstream(nil, args...); r.Code != 0 {
			t.Fatalf("upstream %v: %v", args, r)
		}
	}
	our := func(args ...string) {
		t.Helper()
		if r := c.ours(ctx, nil, args...); r.Code != 0 {
			t.Fatalf("ours %v: %v", args, r)
		}
	}

	// hypeman's CLI, both ways: a tree to a new name, then into an
	// existing directory; back as a new name and into a directory. Its
	// uploads carry no mtime, so times are compared only for ours.
	up("cp", src, "box:/tmp/u1")
	guestIs("-f", "/tmp/u1/sub/deep/b.txt")
	up("cp", src, "box:/tmp/u1")
	guestIs("-f", "/tmp/u1/tree/big.bin")
	up("cp", "box:/tmp/u1", filepath.Join(local, "u1back"))
	got := tree(t, filepath.Join(local, "u1back"), false)
	delete(got, "tree") // the second upload, inside
	for k := range got {
		if strings.HasPrefix(k, "tree/") {
			delete(got, k)
		}
	}
	sameTree(t, "upstream round trip", got, wantNoTime)
	into := filepath.Join(local, "into")
	os.Mkdir(into, 0o755)
	up("cp", "box:/tmp/u1/tree", into)
	sameTree(t, "upstream into a directory", tree(t, filepath.Join(into, "tree"), false), wantNoTime)
	// A single file lands at the destination (docker cp), or inside an
	// existing directory.
	up("cp", "box:/tmp/u1/a.txt", filepath.Join(local, "x.txt"))
	up("cp", "box:/tmp/u1/run.sh", into)
	if b, _ := os.ReadFile(filepath.Join(local, "x.txt")); string(b) != "alpha\n" {
		t.Errorf("upstream cp of a file: %q", b)
	}
	if fi, err := os.Stat(filepath.Join(into, "run.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("upstream cp of a file into a directory: %v %v", fi, err)
	}
	up("cp", filepath.Join(src, "big.bin"), "box:/tmp/single.bin")
	guestIs("-f", "/tmp/single.bin")

	// Ours: the same, with times kept; and across clients.
	our("cp", src, "box:/tmp/o1")
	our("cp", "box:/tmp/o1", filepath.Join(local, "o1back"))
	sameTree(t, "our round trip", tree(t, filepath.Join(local, "o1back"), true), want)
	our("cp", "box:/tmp/u1/sub/deep/b.txt", filepath.Join(local, "b.txt"))
	if b, _ := os.ReadFile(filepath.Join(local, "b.txt")); string(b) != "deep\n" {
		t.Errorf("our cp of a file uploaded by hypeman's CLI: %q", b)
	}
	up("cp", "box:/tmp/o1", filepath.Join(local, "o1up"))
	sameTree(t, "ours up, hypeman's down", tree(t, filepath.Join(local, "o1up"), false), wantNoTime)
}

// measureStreams logs the numbers the report quotes: exec round trip p50
// through each CLI (a process each: the upstream one also lists instances
// to resolve the name), and cp of 20 MB in and out.
func measureStreams(t *testing.T, c *clients) {
	ctx := t.Context()
	p50 := func(cl *upstreamcli.CLI, args ...string) time.Duration {
		var ds []time.Duration
		for range 9 {
			r := cl.Run(t, ctx, "", nil, args...)
			if r.Code != 0 {
				t.Fatalf("%v: %v", args, r)
			}
			ds = append(ds, r.Elapsed)
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	t.Logf("exec true round trip p50: upstream CLI %s, ours %s",
		p50(c.up, "exec", "-T", "box", "--", "true").Round(time.Millisecond),
		p50(c.our, "exec", "box", "--", "true").Round(time.Millisecond))

	dir := t.TempDir()
	big := make([]byte, 20<<20)
	rand.Read(big)
	src := filepath.Join(dir, "big20")
	os.WriteFile(src, big, 0o644)
	mbps := func(d time.Duration) string { return fmt.Sprintf("%.1f MB/s", 20/d.Seconds()) }
	for _, cl := range []struct {
		name string
		c    *upstreamcli.CLI
	}{{"upstream CLI", c.up}, {"ours", c.our}} {
		in := cl.c.Run(t, ctx, "", nil, "cp", src, "box:/tmp/big20-"+cl.name[:2])
		back := filepath.Join(dir, "back-"+cl.name[:2])
		out := cl.c.Run(t, ctx, "", nil, "cp", "box:/tmp/big20-"+cl.name[:2], back)
		got, _ := os.ReadFile(back)
		if in.Code != 0 || out.Code != 0 || !bytes.Equal(got, big) {
			t.Fatalf("%s cp 20 MB: %v\n%v (%d bytes back)", cl.name, in, out, len(got))
		}
		t.Logf("cp 20 MB with %s: in %s (%s), out %s (%s)", cl.name, in.Elapsed.Round(time.Millisecond), mbps(in.Elapsed),
			out.Elapsed.Round(time.Millisecond), mbps(out.Elapsed))
	}
}
