package registry

import (
	"bytes"
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

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"hypeman/internal/auth"
)

func newCappedRegistry(t *testing.T, lim Limits) (string, *httptest.Server) {
	t.Helper()
	v, err := auth.NewVerifier(secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r, err := New(Options{Dir: dir, Verifier: v, Limits: lim})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return dir, srv
}

// regErrorOf decodes an OCI error body and returns its first code and
// message.
func regErrorOf(t *testing.T, resp *http.Response) (string, string) {
	t.Helper()
	defer resp.Body.Close()
	var body struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || len(body.Errors) == 0 {
		t.Fatalf("not an OCI error body (%d): %v", resp.StatusCode, err)
	}
	return body.Errors[0].Code, body.Errors[0].Message
}

// TestBlobUploadCap: a monolithic upload, a chunk and a chunked
// (length-less) body past registry_max_blob_size are refused with 413 in
// the registry error shape, nothing past the cap is kept, and an upload
// under the cap still works.
func TestBlobUploadCap(t *testing.T) {
	const limit = 64 << 10
	dir, srv := newCappedRegistry(t, Limits{MaxBlobBytes: limit})
	tok := token(t, auth.ImageWrite)
	do := func(method, path string, body io.Reader, length int64) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, body)
		req.ContentLength = length
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	big := bytes.Repeat([]byte("z"), limit+1)
	sum := sha256.Sum256(big)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	tooLarge := func(what string, resp *http.Response) {
		t.Helper()
		code, msg := regErrorOf(t, resp)
		if resp.StatusCode != 413 || code != "SIZE_INVALID" || !strings.Contains(msg, "registry_max_blob_size") {
			t.Errorf("%s: %d %s %q, want 413 SIZE_INVALID naming registry_max_blob_size", what, resp.StatusCode, code, msg)
		}
	}
	// Declared too large: refused before reading.
	tooLarge("monolithic", do("POST", "/v2/a/blobs/uploads/?digest="+digest, bytes.NewReader(big), int64(len(big))))
	// No declared length: stopped while streaming.
	tooLarge("chunked monolithic", do("POST", "/v2/a/blobs/uploads/?digest="+digest, io.MultiReader(bytes.NewReader(big)), -1))

	resp := do("POST", "/v2/a/blobs/uploads/", nil, 0)
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || loc == "" {
		t.Fatalf("start upload: %d", resp.StatusCode)
	}
	half := big[:limit/2]
	resp = do("PATCH", loc, bytes.NewReader(half), int64(len(half)))
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("first chunk: %d", resp.StatusCode)
	}
	rest := big[limit/2:]
	tooLarge("second chunk", do("PATCH", loc, io.MultiReader(bytes.NewReader(rest)), -1))
	id := loc[strings.LastIndex(loc, "/")+1:]
	if st, err := os.Stat(filepath.Join(dir, "uploads", id)); err != nil || st.Size() != int64(len(half)) {
		t.Fatalf("session after the refused chunk: %v %v, want %d bytes kept", st, err, len(half))
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if len(ents) != 0 {
		t.Fatalf("%d blobs stored past the cap", len(ents))
	}
	// At the cap exactly: accepted.
	ok := big[:limit]
	sum = sha256.Sum256(ok)
	resp = do("POST", "/v2/a/blobs/uploads/?digest=sha256:"+hex.EncodeToString(sum[:]), bytes.NewReader(ok), int64(len(ok)))
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("upload at the cap: %d", resp.StatusCode)
	}
}

// TestPushSizeCap: a manifest whose blobs add up past registry_max_push_size
// is refused at PUT (413, registry error shape); a smaller one is accepted.
func TestPushSizeCap(t *testing.T) {
	_, srv := newCappedRegistry(t, Limits{MaxPushBytes: 200 << 10})
	creds := remote.WithAuth(&authn.Basic{Username: "u", Password: token(t, auth.ImageWrite, auth.ImageRead)})
	big, err := random.Image(100<<10, 3) // ~300 KB of layers
	if err != nil {
		t.Fatal(err)
	}
	err = remote.Write(ref(t, srv, "big:v1"), big, creds)
	if err == nil || !strings.Contains(err.Error(), "registry_max_push_size") || !strings.Contains(err.Error(), "SIZE_INVALID") {
		t.Fatalf("push past the cap: %v", err)
	}
	small, _ := random.Image(10<<10, 2)
	if err := remote.Write(ref(t, srv, "small:v1"), small, creds); err != nil {
		t.Fatalf("push under the cap: %v", err)
	}
}
