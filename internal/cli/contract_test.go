package cli

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"hypeman/internal/api"
	"hypeman/internal/auth"
	"hypeman/internal/guest/agent"
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

type recordingGuest struct {
	mu     sync.Mutex
	dst    string
	upload []byte
	serve  []byte // tar for CopyFrom
}

func (g *recordingGuest) Exec(ctx context.Context, ref string, req agent.ExecRequest, stdio agent.ExecIO) (agent.ExecResult, error) {
	in, err := io.ReadAll(stdio.Stdin)
	if err != nil {
		return agent.ExecResult{}, err
	}
	fmt.Fprintf(stdio.Stdout, "%s %v %s", ref, req.Argv, strings.ToUpper(string(in)))
	fmt.Fprintf(stdio.Stderr, "env A=%s", req.Env["A"])
	return agent.ExecResult{ExitCode: 3, Message: "exited with code 3"}, nil
}

func (g *recordingGuest) CopyTo(ctx context.Context, ref, dst string, r io.Reader) error {
	b, err := io.ReadAll(r)
	g.mu.Lock()
	g.dst, g.upload = dst, b
	g.mu.Unlock()
	return err
}

func (g *recordingGuest) CopyFrom(ctx context.Context, ref, p string, w io.Writer) error {
	if p != "/srv/data" {
		return &agent.RemoteError{Op: agent.OpCopyFrom, Code: agent.CodeNotFound, Message: "lstat " + p + ": no such file or directory"}
	}
	_, err := w.Write(g.serve)
	return err
}

func newContractServer(t *testing.T, g *recordingGuest) string {
	t.Helper()
	secret := []byte("cli-contract-secret-0123456789abcdef")
	srv, err := api.NewServer(api.Options{Instances: oneInstance{}, Images: noImages{}, Guest: g, Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { hs.Close(); srv.Close() })
	tok, err := auth.Mint(secret, auth.MintOptions{UserID: "cli", Scopes: []auth.Scope{auth.InstanceRead, auth.InstanceWrite}, TTL: time.Hour})
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
	target := newContractServer(t, &recordingGuest{})
	res := contractRun(t, target, strings.NewReader("typed input"), "exec", "-i", "-e", "A=1", "web", "cat")
	if res.code != 3 || res.stdout != "i-web [cat] TYPED INPUT" || res.stderr != "env A=1" {
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

func TestContractCp(t *testing.T) {
	var served bytes.Buffer
	tw := tar.NewWriter(&served)
	tw.WriteHeader(&tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "data/x.txt", Typeflag: tar.TypeReg, Mode: 0o600, Size: 5})
	tw.Write([]byte("guest"))
	tw.Close()
	g := &recordingGuest{serve: served.Bytes()}
	target := newContractServer(t, g)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "local.txt"), []byte("host"), 0o644)

	// No stat on this server (501): "dir/" means into the directory.
	res := contractRun(t, target, nil, "cp", filepath.Join(dir, "local.txt"), "web:/tmp/in/")
	if res.code != 0 {
		t.Fatal(res)
	}
	got := readTar(t, g.upload)
	if g.dst != "/tmp/in/" || len(got) != 1 || got[0].String() != `local.txt="host"` {
		t.Fatalf("upload to %q: %v", g.dst, got)
	}
	res = contractRun(t, target, nil, "cp", "web:/srv/data", dir)
	if b, _ := os.ReadFile(filepath.Join(dir, "data", "x.txt")); res.code != 0 || string(b) != "guest" {
		t.Fatalf("download: %q\n%v", b, res)
	}
	res = contractRun(t, target, nil, "cp", "web:/srv/missing", dir)
	if res.code != 1 || !strings.Contains(res.stderr, "Error: guest agent copy_from: lstat /srv/missing: no such file or directory") {
		t.Fatal(res)
	}
}
