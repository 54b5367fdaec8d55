package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"hypeman/internal/auth"
	"hypeman/internal/images"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/tier"
)

var secret = []byte("registry-test-secret-0123456789abcdef")

func token(t *testing.T, scopes ...auth.Scope) string {
	t.Helper()
	var sc []auth.Scope
	if scopes != nil {
		sc = scopes
	}
	tok, err := auth.Mint(secret, auth.MintOptions{UserID: "t", Scopes: sc, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// fakeImporter records imports.
type fakeImporter struct{ got chan string }

func (f *fakeImporter) ImportImage(ctx context.Context, n string, img v1.Image) (*images.Image, error) {
	if _, err := img.Digest(); err != nil {
		return nil, err
	}
	// Read every layer fully so the in-process transport is exercised.
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return nil, err
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			return nil, err
		}
		rc.Close()
	}
	f.got <- n
	return &images.Image{Name: n, Status: images.StatusPending}, nil
}

func newTestRegistry(t *testing.T, dir string, imp Importer) (*Registry, *httptest.Server) {
	t.Helper()
	v, err := auth.NewVerifier(secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{Dir: dir, Verifier: v, Importer: imp})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return r, srv
}

func ref(t *testing.T, srv *httptest.Server, repo string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPushPullRestartAndImport(t *testing.T) {
	dir := t.TempDir()
	imp := &fakeImporter{got: make(chan string, 4)}
	_, srv := newTestRegistry(t, dir, imp)
	img, err := random.Image(300_000, 3)
	if err != nil {
		t.Fatal(err)
	}
	basic := remote.WithAuth(&authn.Basic{Username: "whoever", Password: token(t, auth.ImageWrite, auth.ImageRead)})
	r := ref(t, srv, "team/app:v1")
	if err := remote.Write(r, img, basic); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-imp.got:
		if n != "team/app:v1" {
			t.Fatalf("imported as %q", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("push did not trigger an import")
	}
	// Uploads left no temp files; blobs are on disk under their digest.
	if ents, _ := os.ReadDir(filepath.Join(dir, "uploads")); len(ents) != 0 {
		t.Fatalf("upload temp files left: %d", len(ents))
	}
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", d.Hex)); err != nil {
		t.Fatalf("layer blob not on disk: %v", err)
	}

	// A new registry over the same dir (daemon restart) still serves it.
	_, srv2 := newTestRegistry(t, dir, nil)
	bearer := remote.WithAuth(&authn.Bearer{Token: token(t, auth.ImageRead)})
	got, err := remote.Image(ref(t, srv2, "team/app:v1"), bearer)
	if err != nil {
		t.Fatalf("pull after restart: %v", err)
	}
	want, _ := img.Digest()
	if gd, _ := got.Digest(); gd != want {
		t.Fatalf("digest after restart %s, want %s", gd, want)
	}
	gl, _ := got.Layers()
	rc, err := gl[2].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	io.Copy(h, rc)
	rc.Close()
	ld, _ := gl[2].Digest()
	if hex.EncodeToString(h.Sum(nil)) != ld.Hex {
		t.Fatal("layer bytes differ after restart")
	}
}

func TestAuth(t *testing.T) {
	_, srv := newTestRegistry(t, t.TempDir(), nil)
	do := func(method, path, authz string) (*http.Response, map[string]any) {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		return resp, body
	}
	resp, body := do("GET", "/v2/", "")
	if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") || body["errors"] == nil {
		t.Fatalf("no creds: %d %v %v", resp.StatusCode, resp.Header, body)
	}
	if resp, _ := do("GET", "/v2/", "Bearer garbage"); resp.StatusCode != 401 {
		t.Fatalf("bad token: %d", resp.StatusCode)
	}
	if resp, _ := do("GET", "/v2/", "Bearer "+token(t, auth.InstanceRead)); resp.StatusCode != 200 {
		t.Fatalf("ping with any valid token: %d", resp.StatusCode)
	}
	readOnly := "Bearer " + token(t, auth.ImageRead)
	if resp, body := do("POST", "/v2/a/blobs/uploads/", readOnly); resp.StatusCode != 403 || !strings.Contains(body["errors"].([]any)[0].(map[string]any)["message"].(string), "image:write") {
		t.Fatalf("push with read-only token: %d %v", resp.StatusCode, body)
	}
	if resp, _ := do("GET", "/v2/a/manifests/latest", "Bearer "+token(t, auth.ImageWrite)); resp.StatusCode != 403 {
		t.Fatalf("pull with write-only token: %d", resp.StatusCode)
	}
	if resp, _ := do("DELETE", "/v2/a/manifests/latest", "Bearer "+token(t, auth.ImageRead, auth.ImageWrite)); resp.StatusCode != 403 {
		t.Fatalf("delete without image:delete: %d", resp.StatusCode)
	}
	if resp, _ := do("GET", "/v2/a/manifests/latest", readOnly); resp.StatusCode != 404 {
		t.Fatalf("unknown manifest: %d", resp.StatusCode)
	}
	if resp, _ := do("GET", "/v2/UPPER/manifests/latest", readOnly); resp.StatusCode != 400 {
		t.Fatalf("invalid repo name: %d", resp.StatusCode)
	}
}

func TestUploadProtocolErrors(t *testing.T) {
	_, srv := newTestRegistry(t, t.TempDir(), nil)
	tok := "Bearer " + token(t)
	do := func(method, path string, body string, hdr map[string]string) *http.Response {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", tok)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	resp := do("POST", "/v2/x/blobs/uploads/", "", nil)
	if resp.StatusCode != 202 {
		t.Fatalf("start: %d", resp.StatusCode)
	}
	loc := resp.Header.Get("Location")
	if r := do("PATCH", loc, "hello ", map[string]string{"Content-Range": "0-5"}); r.StatusCode != 202 || r.Header.Get("Range") != "0-5" {
		t.Fatalf("chunk 1: %d %q", r.StatusCode, r.Header.Get("Range"))
	}
	if r := do("PATCH", loc, "x", map[string]string{"Content-Range": "3-3"}); r.StatusCode != 416 {
		t.Fatalf("out-of-order chunk: %d", r.StatusCode)
	}
	if r := do("PATCH", loc, "world", map[string]string{"Content-Range": "6-10"}); r.StatusCode != 202 {
		t.Fatalf("chunk 2: %d", r.StatusCode)
	}
	if r := do("PUT", loc+"?digest=sha256:"+strings.Repeat("0", 64), "", nil); r.StatusCode != 400 {
		t.Fatalf("wrong digest: %d", r.StatusCode)
	}
	// The session is gone after a digest mismatch.
	if r := do("GET", loc, "", nil); r.StatusCode != 404 {
		t.Fatalf("session after mismatch: %d", r.StatusCode)
	}
	// Monolithic upload with the right digest, then HEAD it.
	sum := sha256.Sum256([]byte("hello world"))
	dg := "sha256:" + hex.EncodeToString(sum[:])
	if r := do("POST", "/v2/x/blobs/uploads/?digest="+dg, "hello world", nil); r.StatusCode != 201 {
		t.Fatalf("monolithic: %d", r.StatusCode)
	}
	if r := do("HEAD", "/v2/x/blobs/"+dg, "", nil); r.StatusCode != 200 || r.Header.Get("Content-Length") != "11" {
		t.Fatalf("head blob: %d %q", r.StatusCode, r.Header.Get("Content-Length"))
	}
	// Mount from another repo finds the existing blob.
	if r := do("POST", "/v2/y/blobs/uploads/?mount="+dg+"&from=x", "", nil); r.StatusCode != 201 {
		t.Fatalf("mount: %d", r.StatusCode)
	}
	if r := do("PATCH", "/v2/x/blobs/uploads/../../etc", "", nil); r.StatusCode == 202 {
		t.Fatal("bogus upload id accepted")
	}
	if r := do("PUT", "/v2/x/manifests/latest", `{"schemaVersion":2}`, map[string]string{"Content-Type": "text/plain"}); r.StatusCode != 400 {
		t.Fatalf("manifest with bad media type: %d", r.StatusCode)
	}
}

// TestPushBecomesReadyImage pushes a real busybox image and checks the real
// image store converts it (mkfs.erofs).
func TestPushBecomesReadyImage(t *testing.T) {
	tier.Root(t, "image conversion gives files their owners (chown to any uid)")
	dir := t.TempDir()
	store, err := images.New(images.Config{Dir: filepath.Join(dir, "images")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	_, srv := newTestRegistry(t, filepath.Join(dir, "registry"), store)
	img := testimage.Busybox(t, testimage.Options{Cmd: []string{"echo", "hi"}, Env: []string{"A=1"}})
	basic := remote.WithAuth(&authn.Basic{Username: "x", Password: token(t, auth.ImageWrite)})
	if err := remote.Write(ref(t, srv, "demo/busybox:1"), img, basic); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got, err := store.Wait(ctx, "demo/busybox:1")
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	want, _ := img.Digest()
	if got.Status != images.StatusReady || got.Digest != want.String() || got.SizeBytes == 0 {
		t.Fatalf("image %+v, want ready with digest %s", got, want)
	}
	if len(got.Config.Cmd) != 2 || got.Config.Cmd[1] != "hi" {
		t.Fatalf("config not carried: %+v", got.Config)
	}
	if _, err := os.Stat(got.DiskPath); err != nil {
		t.Fatalf("disk: %v", err)
	}
}
