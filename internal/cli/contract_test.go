package cli

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"hypeman/internal/api"
	"hypeman/internal/auth"
	"hypeman/internal/guest/agent"
	"hypeman/internal/guest/guestproc"
	"hypeman/internal/images"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
)

// The contract tests run the CLI against the real API server (with fake
// managers behind it), so the two sides of the exec and cp WebSocket
// protocols are checked against each other, not only against fakes.

type oneInstance struct{ api.Instances }

func (oneInstance) Get(ctx context.Context, ref string) (*instances.Instance, error) {
	switch ref {
	case "web":
		return &instances.Instance{ID: "i-web", Name: "web", State: state.Running}, nil
	case "off":
		return &instances.Instance{ID: "i-off", Name: "off", State: state.Stopped}, nil
	}
	return nil, fmt.Errorf("%w: %s", instances.ErrNotFound, ref)
}

type noImages struct{ api.Images }

func (noImages) ImportImage(context.Context, string, v1.Image) (*images.Image, error) {
	return nil, fmt.Errorf("no")
}

// agentGuest runs cp through a real guest agent serving a temp directory
// as the guest's root (over an in-memory pipe); exec is a fake (a real one
// would chroot).
type agentGuest struct {
	root string
	c    *agent.Client
}

func newAgentGuest(t *testing.T) *agentGuest {
	t.Helper()
	g := &agentGuest{root: t.TempDir()}
	srv := &agent.Server{Root: g.root, Starter: guestproc.DirectStarter{}}
	guestEnd, hostEnd := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, guestEnd) }()
	c, err := agent.NewClient(t.Context(), hostEnd)
	if err != nil {
		t.Fatal(err)
	}
	g.c = c
	t.Cleanup(func() { c.Close(); cancel(); <-served })
	return g
}

func (g *agentGuest) Exec(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
	in, err := io.ReadAll(stdio.Stdin)
	if err != nil {
		return agent.ExecResult{}, err
	}
	fmt.Fprintf(stdio.Stdout, "%s %v %s", ref, req.Argv, strings.ToUpper(string(in)))
	fmt.Fprintf(stdio.Stderr, "env A=%s", req.Env["A"])
	if req.Timeout > 0 {
		return agent.ExecResult{ExitCode: 137, Message: "timed out after 1s: killed by signal 9 (SIGKILL)", TimedOut: true}, nil
	}
	return agent.ExecResult{ExitCode: 3, Message: "exited with code 3"}, nil
}

func (g *agentGuest) CopyTo(ctx context.Context, ref string, req agent.PutRequest, data io.Reader) (int64, error) {
	return g.c.Put(ctx, req, data)
}

func (g *agentGuest) CopyFrom(ctx context.Context, ref string, req agent.TreeRequest, visit agent.TreeVisitor) error {
	return g.c.ReadTree(ctx, req, visit)
}

// StatPath stats through the agent (following links like stat(2)).
func (g *agentGuest) StatPath(ctx context.Context, ref, p string, followLinks bool) (*api.PathStat, error) {
	fi, err := g.c.Stat(ctx, p)
	if err != nil {
		return nil, err
	}
	if fi.Mode&os.ModeSymlink != 0 && followLinks {
		return g.StatPath(ctx, ref, path.Join(path.Dir(p), fi.LinkTarget), true)
	}
	return &api.PathStat{Exists: fi.Exists, IsDir: fi.IsDir, IsFile: fi.Exists && fi.Mode.IsRegular(), Mode: uint32(fi.Mode.Perm()), Size: fi.Size}, nil
}

func newContractServer(t *testing.T, g *agentGuest) string {
	t.Helper()
	return startContractAPI(t, api.Options{Instances: oneInstance{}, Images: noImages{}, Guest: g, Stat: g})
}

// startContractAPI serves the real API server with o's managers and
// returns the target for contractRun ("URL|token"); the token holds the
// instance read and write scopes plus extra.
func startContractAPI(t *testing.T, o api.Options, extra ...auth.Scope) string {
	t.Helper()
	o.Secret = []byte("cli-contract-secret-0123456789abcdef")
	srv, err := api.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { hs.Close(); srv.Close() })
	scopes := append([]auth.Scope{auth.InstanceRead, auth.InstanceWrite}, extra...)
	tok, err := auth.Mint(o.Secret, auth.MintOptions{UserID: "cli", Scopes: scopes, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return hs.URL + "|" + tok
}

func contractRun(t *testing.T, target string, stdin io.Reader, args ...string) result {
	t.Helper()
	url, tok, _ := strings.Cut(target, "|")
	o, _, _ := testOptions(url, map[string]string{"HYPEMAN_API_KEY": tok})
	if stdin != nil {
		o.stdin = stdin
	}
	return runWith(t, t.Context(), o, args...)
}

func TestContractExec(t *testing.T) {
	target := newContractServer(t, newAgentGuest(t))
	res := contractRun(t, target, strings.NewReader("typed input"), "exec", "-i", "-e", "A=1", "web", "cat")
	if res.code != 3 || res.stdout != "i-web [cat] TYPED INPUT" || res.stderr != "env A=1" {
		t.Fatal(res)
	}
	res = contractRun(t, target, nil, "exec", "--timeout", "1s", "web", "sleep", "9")
	if res.code != 124 || !strings.Contains(res.stderr, "timed out after 1s") {
		t.Fatal(res)
	}
	res = contractRun(t, target, nil, "exec", "off", "true")
	if res.code != 1 || !strings.Contains(res.stderr, "Error: cannot exec instance in state Stopped") {
		t.Fatal(res)
	}
	res = contractRun(t, target, nil, "exec", "nope", "true")
	if res.code != 1 || !strings.Contains(res.stderr, "Error: instance not found: nope") {
		t.Fatal(res)
	}
}

// fileMeta is what a copy must keep of a file: content, permission bits,
// modification time (and the link target of a symlink).
type fileMeta struct {
	Mode  fs.FileMode
	Mtime int64
	Data  string
}

// snapshotTree describes every entry under dir, by slash path.
func snapshotTree(t *testing.T, dir string) map[string]fileMeta {
	t.Helper()
	out := map[string]fileMeta{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		m := fileMeta{Mode: fi.Mode() & (fs.ModeType | fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), Mtime: fi.ModTime().Unix()}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			m.Data, _ = os.Readlink(p)
			m.Mtime = 0 // link times are not copied
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			m.Data = string(b)
		}
		out[filepath.ToSlash(rel)] = m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// makeTree writes a tree with odd modes and old mtimes.
func makeTree(t *testing.T, dir string) {
	t.Helper()
	files := map[string]struct {
		data string
		mode fs.FileMode
	}{
		"a.txt":          {"alpha\n", 0o640},
		"run.sh":         {"#!/bin/sh\necho hi\n", 0o755},
		"sub/deep/b.bin": {strings.Repeat("\x00\x01binary", 10000), 0o600},
		"sub/empty":      {"", 0o444},
		"suid":           {"s", 0o4755},
	}
	for name, f := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, f.mode)
	}
	os.Symlink("a.txt", filepath.Join(dir, "link"))
	os.Mkdir(filepath.Join(dir, "emptydir"), 0o700)
	os.Chmod(filepath.Join(dir, "sub"), 0o750)
	old := time.Date(2021, 6, 7, 8, 9, 10, 0, time.UTC)
	for i, p := range []string{"a.txt", "run.sh", "sub/deep/b.bin", "sub/empty", "suid", "emptydir", "sub/deep", "sub", "."} {
		ts := old.Add(time.Duration(i) * time.Hour)
		if err := os.Chtimes(filepath.Join(dir, p), ts, ts); err != nil {
			t.Fatal(err)
		}
	}
}

// TestContractCp: our CLI through the real API server and a real guest
// agent; trees go in and come back byte-identical with modes and mtimes,
// landing where docker cp puts them.
func TestContractCp(t *testing.T) {
	g := newAgentGuest(t)
	target := newContractServer(t, g)
	src := filepath.Join(t.TempDir(), "tree")
	os.Mkdir(src, 0o755)
	makeTree(t, src)
	want := snapshotTree(t, src)
	run := func(args ...string) {
		t.Helper()
		if res := contractRun(t, target, nil, args...); res.code != 0 {
			t.Fatalf("%v:\n%v", args, res)
		}
	}
	same := func(what, dir string, want map[string]fileMeta) {
		t.Helper()
		got := snapshotTree(t, dir)
		if !reflect.DeepEqual(got, want) {
			for k, w := range want {
				if got[k] != w {
					t.Errorf("%s: %s = %+v, want %+v", what, k, got[k], w)
				}
			}
			for k := range got {
				if _, ok := want[k]; !ok {
					t.Errorf("%s: extra %s", what, k)
				}
			}
		}
	}

	// A directory to a new name, into an existing directory, its contents.
	os.MkdirAll(filepath.Join(g.root, "srv"), 0o755)
	run("cp", src, "web:/srv/copy")
	same("to a new name", filepath.Join(g.root, "srv/copy"), want)
	run("cp", src, "web:/srv")
	same("into a directory", filepath.Join(g.root, "srv/tree"), want)
	os.MkdirAll(filepath.Join(g.root, "flat"), 0o711)
	run("cp", src+"/.", "web:/flat")
	flat := maps.Clone(want)
	flat["."] = snapshotTree(t, filepath.Join(g.root, "flat"))["."] // the existing directory keeps its own mode
	same("contents", filepath.Join(g.root, "flat"), flat)
	if fi, _ := os.Stat(filepath.Join(g.root, "flat")); fi.Mode().Perm() != 0o711 {
		t.Errorf("contents copy changed the destination's mode to %v", fi.Mode())
	}

	// And back: as a new name, into an existing directory, as contents.
	back := t.TempDir()
	run("cp", "web:/srv/copy", filepath.Join(back, "new"))
	same("from, new name", filepath.Join(back, "new"), want)
	run("cp", "web:/srv/tree", back)
	same("from, into a directory", filepath.Join(back, "tree"), want)
	os.Mkdir(filepath.Join(back, "flat"), 0o700)
	run("cp", "web:/srv/tree/.", filepath.Join(back, "flat"))
	flat["."] = snapshotTree(t, filepath.Join(back, "flat"))["."]
	same("from, contents", filepath.Join(back, "flat"), flat)

	// Single files: into a directory, as a new name, over a file.
	run("cp", filepath.Join(src, "run.sh"), "web:/srv/")
	run("cp", filepath.Join(src, "a.txt"), "web:/srv/renamed.txt")
	run("cp", filepath.Join(src, "sub/deep/b.bin"), "web:/srv/renamed.txt")
	if got := snapshotTree(t, filepath.Join(g.root, "srv")); got["run.sh"] != want["run.sh"] || got["renamed.txt"] != want["sub/deep/b.bin"] {
		t.Errorf("single files: %+v", got)
	}
	run("cp", "web:/srv/run.sh", filepath.Join(back, "x.sh"))
	run("cp", "web:/srv/run.sh", back)
	if got := snapshotTree(t, back); got["x.sh"] != want["run.sh"] || got["run.sh"] != want["run.sh"] {
		t.Errorf("single files back: %+v %+v", got["x.sh"], got["run.sh"])
	}

	// tar on stdin and stdout.
	res := contractRun(t, target, nil, "cp", "web:/srv/copy", "-")
	if res.code != 0 {
		t.Fatal(res)
	}
	got := readTar(t, []byte(res.stdout))
	if len(got) != len(want) || got[0].Name != "copy/" {
		t.Fatalf("tar out: %v", names(got))
	}
	if res := contractRun(t, target, strings.NewReader(res.stdout), "cp", "-", "web:/fromtar"); res.code != 0 {
		t.Fatal(res)
	}
	same("tar round trip", filepath.Join(g.root, "fromtar/copy"), want)

	// Errors from the guest.
	res = contractRun(t, target, nil, "cp", "web:/srv/missing", back)
	if res.code != 1 || !strings.Contains(res.stderr, "Error: guest agent read_tree: /srv/missing: ") || !strings.Contains(res.stderr, "no such file or directory") {
		t.Fatal(res)
	}
	res = contractRun(t, target, nil, "cp", filepath.Join(src, "a.txt"), "web:/srv/copy/sub/deep/b.bin/x")
	if res.code != 1 || !strings.Contains(res.stderr, "/srv/copy/sub/deep/b.bin/x: a file is in the way of its parent directories") {
		t.Fatal(res)
	}
	res = contractRun(t, target, nil, "cp", filepath.Join(src, "a.txt"), "web:/srv/copy/emptydir/")
	if res.code != 0 {
		t.Fatal(res)
	}
}
