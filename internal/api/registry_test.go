package api

import (
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"hypeman/internal/auth"
	"hypeman/internal/images"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/tier"
)

// TestPushToBuiltInRegistry pushes an image with an ordinary OCI client and
// Basic auth through the whole server, then watches it become a ready image
// through the images API (real image store, real mkfs.erofs).
func TestPushToBuiltInRegistry(t *testing.T) {
	tier.Root(t, "image conversion gives files their owners (chown to any uid)")
	dir := t.TempDir()
	store, err := images.New(images.Config{Dir: filepath.Join(dir, "images")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	e := newTestEnv(t, func(o *Options) {
		o.Images = store
		o.RegistryDir = filepath.Join(dir, "registry")
	})
	img := testimage.Busybox(t, testimage.Options{Cmd: []string{"sleep", "1"}})
	host := strings.TrimPrefix(e.srv.URL, "http://")
	ref, err := name.ParseReference(host+"/apps/sleeper:v2", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	// Without credentials the push is refused.
	if err := remote.Write(ref, img); err == nil {
		t.Fatal("anonymous push accepted")
	}
	// A token without image:write cannot push.
	ro := &authn.Basic{Username: "ci", Password: mint(t, auth.ImageRead)}
	if err := remote.Write(ref, img, remote.WithAuth(ro)); err == nil {
		t.Fatal("push with a read-only token accepted")
	}
	start := time.Now()
	rw := &authn.Basic{Username: "ci", Password: mint(t, auth.ImageWrite)}
	if err := remote.Write(ref, img, remote.WithAuth(rw)); err != nil {
		t.Fatal(err)
	}
	pushed := time.Since(start)
	want, _ := img.Digest()
	path := "/images/" + url.PathEscape("apps/sleeper:v2")
	tok := mint(t, auth.ImageRead)
	var got map[string]any
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp := e.do("GET", path, tok, "")
		if resp.StatusCode == 200 {
			jsonBody(t, resp, &got)
			if got["status"] == "ready" || got["status"] == "failed" {
				break
			}
		} else {
			resp.Body.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("image not ready in time: %v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("push %v, ready after %v", pushed, time.Since(start))
	if got["status"] != "ready" || got["digest"] != want.String() || got["name"] != "apps/sleeper:v2" {
		t.Fatalf("image %v, want ready %s", got, want)
	}
	if cmd, _ := got["cmd"].([]any); len(cmd) != 2 || cmd[0] != "sleep" {
		t.Fatalf("cmd %v", got["cmd"])
	}
	// And it can be pulled back with a read token (Bearer).
	back, err := remote.Image(ref, remote.WithAuth(&authn.Bearer{Token: tok}))
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := back.Digest(); d != want {
		t.Fatalf("pulled %s, want %s", d, want)
	}
}
