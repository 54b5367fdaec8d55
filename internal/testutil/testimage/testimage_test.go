package testimage

import (
	"archive/tar"
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestBusyboxContents(t *testing.T) {
	img := Busybox(t, Options{
		Files:      []File{{Path: "/srv/app/run.sh", Data: []byte("echo hi\n"), Mode: 0o755, UID: 1000, GID: 1000}},
		Env:        []string{"A=1"},
		Entrypoint: []string{"/srv/app/run.sh"},
		WorkingDir: "/srv",
		User:       "app",
	})
	layers, err := img.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	hdrs := map[string]*tar.Header{}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs[strings.TrimSuffix(h.Name, "/")] = h
	}
	check := func(p string, typ byte, mode int64) *tar.Header {
		t.Helper()
		h := hdrs[p]
		if h == nil {
			t.Fatalf("%s missing", p)
		}
		if h.Typeflag != typ || h.Mode != mode {
			t.Errorf("%s: type %c mode %o, want %c %o", p, h.Typeflag, h.Mode, typ, mode)
		}
		return h
	}
	if h := check("bin/busybox", tar.TypeReg, 0o755); h.Size < 500_000 {
		t.Errorf("bin/busybox is only %d bytes", h.Size)
	}
	for _, a := range []string{"sh", "echo", "cat", "ls", "sleep", "env", "id", "httpd", "mkdir", "date"} {
		if h := check("bin/"+a, tar.TypeSymlink, 0o777); h.Linkname != "busybox" {
			t.Errorf("bin/%s -> %q", a, h.Linkname)
		}
	}
	check("tmp", tar.TypeDir, 0o1777)
	check("etc/passwd", tar.TypeReg, 0o644)
	if h := check("srv/app/run.sh", tar.TypeReg, 0o755); h.Uid != 1000 || h.Gid != 1000 {
		t.Errorf("run.sh owner %d:%d", h.Uid, h.Gid)
	}
	check("srv/app", tar.TypeDir, 0o755)

	cf, _ := img.ConfigFile()
	if cf.OS != "linux" || cf.Architecture != "amd64" || cf.Config.User != "app" || cf.Config.WorkingDir != "/srv" ||
		len(cf.Config.Env) != 2 || cf.Config.Env[0] != DefaultPath || cf.Config.Entrypoint[0] != "/srv/app/run.sh" || cf.Config.Cmd != nil {
		t.Errorf("config %+v", cf.Config)
	}
	if len(cf.RootFS.DiffIDs) != 2 {
		t.Errorf("diff ids %v", cf.RootFS.DiffIDs)
	}

	// Same options, same digest (tests can rely on dedupe).
	d1, _ := Busybox(t, Options{}).Digest()
	d2, _ := Busybox(t, Options{}).Digest()
	if d1 != d2 {
		t.Errorf("Busybox is not deterministic: %s vs %s", d1, d2)
	}
	plain := Busybox(t, Options{})
	if cf, _ := plain.ConfigFile(); len(cf.Config.Cmd) != 1 || cf.Config.Cmd[0] != "sh" {
		t.Errorf("default cmd %v", cf.Config.Cmd)
	}
}

func TestRegistryPushRoundTrip(t *testing.T) {
	host := Registry(t)
	if !strings.HasPrefix(host, "127.0.0.1:") {
		t.Errorf("registry host %q not on loopback", host)
	}
	img := Busybox(t, Options{})
	ref := Push(t, host, "kit/busybox", img)
	if ref != host+"/kit/busybox:latest" {
		t.Errorf("ref %q", ref)
	}
	if ref2 := Push(t, host, "kit/busybox:v1", img); ref2 != host+"/kit/busybox:v1" {
		t.Errorf("ref %q", ref2)
	}
	r, _ := name.ParseReference(ref, name.Insecure)
	got, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Errorf("pulled %s, pushed %s", d, want)
	}
}

func TestLarge(t *testing.T) {
	const size = 4 << 20
	img := Large(t, size)
	layers, _ := img.Layers()
	if len(layers) != 5 {
		t.Fatalf("%d layers, want busybox + 4", len(layers))
	}
	var content int64
	var files int
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(h.Name, "data/") && h.Typeflag == tar.TypeReg {
			content += h.Size
			files++
		}
	}
	if content < size*95/100 || content > size*105/100 {
		t.Errorf("content %d bytes, want ~%d", content, size)
	}
	if files < 100 {
		t.Errorf("only %d files", files)
	}
	var compressed int64
	for _, l := range layers[1:] {
		n, _ := l.Size()
		compressed += n
	}
	// Half random, half text: clearly compressible, clearly not entirely.
	if compressed < size/3 || compressed > size*9/10 {
		t.Errorf("compressed %d of %d bytes: mix is off", compressed, size)
	}
	d1, _ := img.Digest()
	d2, _ := Large(t, size).Digest()
	if d1 != d2 {
		t.Errorf("Large is not deterministic")
	}
	var _ v1.Image = img
}
