package cli

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
)

// TestPushExportAgainstRealDaemon: an image pushed into hypemand's own
// registry is exported by the daemon (POST /pushes through `hypeman push
// --to`) to a second in-process registry on loopback; the target then has
// the same manifest digest and layers. Failures (unknown image, nothing
// listening, wrong password) end as they should, and the history survives a
// daemon restart. No VM boots.
func TestPushExportAgainstRealDaemon(t *testing.T) {
	s := e2e.Start(t)
	env := map[string]string{"HYPEMAN_BASE_URL": s.BaseURL, "HYPEMAN_API_KEY": s.Token}
	cli := func(stdin string, args ...string) result {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := Run(t.Context(), args, strings.NewReader(stdin), &stdout, &stderr, func(k string) string { return env[k] })
		return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	}

	img := testimage.Busybox(t, testimage.Options{Files: []testimage.File{{Path: "/app/hello", Data: []byte("hi\n"), Mode: 0o644}}})
	s.PushImage("apps/web:v1", img)
	want, _ := img.Digest()

	// A registry that wants alice:right.
	host := testimage.RegistryWith(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "right" {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	target := host + "/exported/web:v1"

	r := cli("right\n", "push", "--to", target, "--username", "alice", "--password-stdin", "apps/web:v1")
	if r.code != 0 || r.stdout != target+"@"+want.String()+"\n" {
		t.Fatalf("push --to: %v\ndaemon log:\n%s", r, s.Logs())
	}
	ref, _ := name.ParseReference(target)
	desc, err := remote.Get(ref, remote.WithAuth(&authn.Basic{Username: "alice", Password: "right"}))
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != want {
		t.Fatalf("target has %s, want %s", desc.Digest, want)
	}
	got, err := desc.Image()
	if err != nil {
		t.Fatal(err)
	}
	testimage.CheckSameImage(t, got, img)

	// Failures.
	if r := cli("", "push", "--to", target, "apps/nope:v1"); r.code == 0 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("push of an unknown image: %v", r)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	if r := cli("", "push", "--to", closed+"/x/y:z", "apps/web:v1"); r.code == 0 || !strings.Contains(r.stderr, "registry unreachable") {
		t.Errorf("push to a closed port: %v", r)
	}
	if r := cli("wrong\n", "push", "--to", target, "-u", "alice", "--password-stdin", "apps/web:v1"); r.code == 0 ||
		!strings.Contains(r.stderr, "registry denied access") || strings.Contains(r.stderr+r.stdout, "wrong") {
		t.Errorf("push with a wrong password: %v", r)
	}
	detached := cli("", "push", "--to", target+"-anon", "--detach", "apps/web:v1")
	if detached.code != 0 || !strings.HasPrefix(detached.stdout, "push-") {
		t.Fatalf("push --detach: %v", detached)
	}

	// History: newest first, and it survives a restart.
	list := func() []map[string]any {
		t.Helper()
		r := cli("", "pushes", "--format", "json")
		var out []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || r.code != 0 {
			t.Fatalf("pushes: %v (%v)", r, err)
		}
		return out
	}
	before := list()
	if len(before) != 4 || before[0]["id"] != strings.TrimSpace(detached.stdout) || before[len(before)-1]["status"] != "pushed" {
		t.Fatalf("pushes before restart: %v", before)
	}
	if r := cli("", "pushes"); r.code != 0 || !strings.Contains(r.stdout, "failed") || !strings.Contains(r.stdout, "pushed") {
		t.Errorf("pushes table: %v", r)
	} else {
		t.Logf("pushes:\n%s", r.stdout)
	}
	s.Kill()
	s.Restart()
	after := list()
	if len(after) != len(before) {
		t.Fatalf("pushes after restart: %d, want %d", len(after), len(before))
	}
	first := after[len(after)-1]["id"].(string)
	if r := cli("", "pushes", first); r.code != 0 || !strings.Contains(r.stdout, "pushed") || !strings.Contains(r.stdout, want.String()) {
		t.Errorf("pushes %s after restart: %v", first, r)
	}
}
