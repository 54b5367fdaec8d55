package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"hypeman/internal/testutil/testimage"
)

// pushEnv is a fake hypemand whose /v2/ is an in-process registry
// (testimage.Registry) behind Basic auth, and whose images API reports the
// pushed tag as converting, then ready.
type pushEnv struct {
	f       *fakeServer
	regHost string // the registry itself, for checking what arrived
	gets    atomic.Int32
}

func newPushEnv(t *testing.T, imageName string) *pushEnv {
	t.Helper()
	e := &pushEnv{f: newFake(t), regHost: testimage.Registry(t)}
	e.f.registry = httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: e.regHost})
	e.f.handle("GET /images/{name}", func(w http.ResponseWriter, r *http.Request) {
		// Like hypemand, accept the name as pushed or normalized.
		if n := r.PathValue("name"); n != imageName && n != "docker.io/library/"+imageName {
			writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"image not found: `+r.PathValue("name")+`"}`)
			return
		}
		full := "docker.io/library/" + imageName
		switch e.gets.Add(1) {
		case 1: // the import has not registered yet
			writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"image not found"}`)
		case 2:
			writeJSON(w, http.StatusOK, `{"name":"`+full+`","status":"converting","created_at":"2025-03-01T11:00:00Z"}`)
		default:
			writeJSON(w, http.StatusOK, `{"name":"`+full+`","status":"ready","digest":"sha256:abc","created_at":"2025-03-01T11:00:00Z"}`)
		}
	})
	return e
}

// pulled reads repo:tag back from the registry.
func (e *pushEnv) pulled(t *testing.T, ref string) v1.Image {
	t.Helper()
	r, err := name.ParseReference(e.regHost+"/"+ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatalf("image not in the registry after push: %v", err)
	}
	return img
}

func testImage(t *testing.T, cmd string) v1.Image {
	return testimage.Busybox(t, testimage.Options{Cmd: []string{"echo", cmd}})
}

func configDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestPushDockerArchive(t *testing.T) {
	e := newPushEnv(t, "myapp:v1")
	img := testImage(t, "docker")
	dir := t.TempDir()
	tarPath := filepath.Join(dir, "myapp.tar")
	tag, _ := name.NewTag("myapp:dev")
	f, err := os.Create(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.Write(tag, img, f); err != nil {
		t.Fatal(err)
	}
	f.Close()

	res := e.f.run("push", tarPath, "myapp:v1")
	if res.code != 0 || res.stdout != "docker.io/library/myapp:v1\n" {
		t.Fatal(res)
	}
	for _, want := range []string{"myapp:v1: pushing", "myapp:v1: pushed (", "docker.io/library/myapp:v1: converting", "docker.io/library/myapp:v1: ready"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, res.stderr)
		}
	}
	got := e.pulled(t, "myapp:v1")
	if configDigest(t, got) != configDigest(t, img) {
		t.Fatal("pushed image has a different config than the archive")
	}
	wantLayers, _ := img.Layers()
	gotLayers, _ := got.Layers()
	if len(gotLayers) != len(wantLayers) {
		t.Fatalf("%d layers pushed, want %d", len(gotLayers), len(wantLayers))
	}
	// The registry saw the API key as the Basic password (the proxy only
	// forwards authenticated requests), and the import was looked up by tag.
	if len(e.f.requests("PUT", "/v2/myapp/manifests/v1")) != 1 {
		t.Error("manifest was not PUT by tag")
	}
	if e.gets.Load() < 3 {
		t.Errorf("conversion followed with %d GETs", e.gets.Load())
	}
}

// writeOCILayoutTar writes imgs (annotated with their ref names) as an OCI
// layout, tars it (gzipped when gz), and returns the path.
func writeOCILayoutTar(t *testing.T, gz bool, imgs map[string]v1.Image) string {
	t.Helper()
	dir := t.TempDir()
	lp, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for ref, img := range imgs {
		if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{ociRefName: ref})); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	var w io.Writer = &buf
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		w = zw
	}
	tw := tar.NewWriter(w)
	root := string(lp)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, _ := d.Info()
		h, _ := tar.FileInfoHeader(info, "")
		h.Name = "./" + filepath.ToSlash(rel)
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tw.Close()
	if zw != nil {
		zw.Close()
	}
	out := filepath.Join(dir, "image.tar")
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPushOCILayoutPicksTaggedImage(t *testing.T) {
	e := newPushEnv(t, "svc:v2")
	v1img, v2img := testImage(t, "one"), testImage(t, "two")
	archive := writeOCILayoutTar(t, true, map[string]v1.Image{"v1": v1img, "v2": v2img})
	res := e.f.run("push", archive, "svc:v2")
	if res.code != 0 {
		t.Fatal(res)
	}
	want, _ := v2img.Digest()
	if got, _ := e.pulled(t, "svc:v2").Digest(); got != want {
		t.Fatalf("pushed %s, want the v2 image %s", got, want)
	}
	// Without a matching tag, two images are ambiguous.
	res = e.f.run("push", archive, "svc:v3")
	if res.code != 1 || !strings.Contains(res.stderr, `holds 2 images and none is tagged "v3"`) {
		t.Fatal(res)
	}
}

func TestPushOCILayoutDirectory(t *testing.T) {
	e := newPushEnv(t, "dirimg:latest")
	img := testImage(t, "dir")
	lp, err := layout.Write(filepath.Join(t.TempDir(), "oci"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	res := e.f.run("push", string(lp), "dirimg") // tag defaults to latest
	if res.code != 0 || res.stdout != "docker.io/library/dirimg:latest\n" {
		t.Fatal(res)
	}
	want, _ := img.Digest()
	if got, _ := e.pulled(t, "dirimg:latest").Digest(); got != want {
		t.Fatalf("pushed %s, want %s", got, want)
	}
}

func TestPushErrors(t *testing.T) {
	e := newPushEnv(t, "x:latest")
	dir := t.TempDir()
	notTar := filepath.Join(dir, "notes.txt")
	os.WriteFile(notTar, []byte("hello, this is not a tarball at all, just some text........................................................................................................................................................................................................................................................................................................................................................................................................................................................................................................"), 0o644)
	emptyTar := filepath.Join(dir, "other.tar")
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "README", Mode: 0o644, Size: 2, Typeflag: tar.TypeReg})
	tw.Write([]byte("hi"))
	tw.Close()
	os.WriteFile(emptyTar, b.Bytes(), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"push", filepath.Join(dir, "missing.tar"), "x"}, "no such file or directory"},
		{[]string{"push", notTar, "x"}, "is not a tar archive"},
		{[]string{"push", emptyTar, "x"}, "neither a docker-archive (docker save) nor an OCI layout tarball"},
		{[]string{"push", emptyTar, "x@sha256:0000000000000000000000000000000000000000000000000000000000000000"}, "not a digest"},
		{[]string{"push", emptyTar, "UPPER"}, `invalid image name "UPPER"`},
	} {
		res := e.f.run(tc.args...)
		if res.code != 1 || !strings.Contains(res.stderr, tc.want) {
			t.Errorf("%v:\n%v", tc.args, res)
		}
	}
	// A wrong key is refused by the registry with a hint.
	img := testImage(t, "auth")
	tarPath := filepath.Join(dir, "img.tar")
	if err := tarball.WriteToFile(tarPath, name.MustParseReference("x:latest"), img); err != nil {
		t.Fatal(err)
	}
	o, _, _ := testOptions(e.f.srv.URL, map[string]string{"HYPEMAN_API_KEY": "wrong"})
	res := runWith(t, t.Context(), o, "push", tarPath, "x")
	if res.code != 1 || !strings.Contains(res.stderr, "set HYPEMAN_API_KEY to a token with image:write") {
		t.Fatal(res)
	}
}
