// Package testimage builds small OCI images in Go and serves them from an
// in-process registry, for tests anywhere in the repo.
//
// Why: our hosts have no Docker engine and no access to public registries, so
// every integration test needs an image it can make itself. Debian's
// busybox-static gives one static binary that provides a shell and ~270
// tools; with a few /etc files that is a usable root filesystem. Images are
// built with go-containerregistry (empty.Image + mutate), deterministically
// (fixed mtimes, sorted entries), so the same options give the same digest.
package testimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/gzip"

	"hypeman/internal/fsutil"
	"hypeman/internal/testutil/tier"
)

// BusyboxPath is where Debian's busybox-static installs the binary.
const BusyboxPath = "/usr/bin/busybox"

// DefaultPath is the PATH every test image gets.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// modTime is the mtime of every entry the kit writes.
func modTime() time.Time { return time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC) }

// File is an extra file for an image.
type File struct {
	Path string      // absolute path in the image, e.g. "/app/run.sh"
	Data []byte      // content
	Mode os.FileMode // permission bits; 0 means 0644
	UID  int
	GID  int
}

// Options customize Busybox.
type Options struct {
	Files      []File   // added in a second layer (parents created 0755)
	Env        []string // KEY=VALUE, after DefaultPath
	Entrypoint []string
	Cmd        []string // default ["sh"] when Entrypoint and Cmd are both empty
	WorkingDir string
	User       string
}

// Busybox returns a linux/amd64 image: layer 1 holds /bin/busybox (from the
// host's busybox-static) with a symlink per applet, /etc/passwd and
// /etc/group (root, nobody, app 1000:1000), /tmp (1777), /root, /home/app and
// the usual mount points; layer 2 (only if opts.Files is set) holds the extra
// files. The config carries opts' env, entrypoint, cmd, workdir and user.
func Busybox(t testing.TB, opts Options) v1.Image {
	t.Helper()
	base := busyboxLayer(t)
	layers := []v1.Layer{base}
	if len(opts.Files) > 0 {
		layers = append(layers, filesLayer(t, opts.Files))
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatalf("testimage: append layers: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatalf("testimage: config: %v", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: modTime()}
	cf.Config.Env = append([]string{DefaultPath}, opts.Env...)
	cf.Config.Entrypoint = opts.Entrypoint
	cf.Config.Cmd = opts.Cmd
	if len(opts.Entrypoint) == 0 && len(opts.Cmd) == 0 {
		cf.Config.Cmd = []string{"sh"}
	}
	cf.Config.WorkingDir = opts.WorkingDir
	cf.Config.User = opts.User
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatalf("testimage: set config: %v", err)
	}
	return img
}

// Applets lists the applets of the host's busybox (busybox --list).
func Applets(t testing.TB) []string {
	t.Helper()
	requireBusybox(t)
	out, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		t.Fatalf("testimage: %s --list: %v", BusyboxPath, err)
	}
	var applets []string
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			applets = append(applets, a)
		}
	}
	sort.Strings(applets)
	return applets
}

func requireBusybox(t testing.TB) {
	t.Helper()
	tier.File(t, BusyboxPath, "testimage: install Debian's busybox-static (apt-get install busybox-static)")
}

func busyboxLayer(t testing.TB) v1.Layer {
	t.Helper()
	requireBusybox(t)
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		t.Fatalf("testimage: read %s: %v", BusyboxPath, err)
	}
	w := newTarWriter(t)
	for _, d := range []struct {
		p    string
		mode int64
		uid  int
	}{
		{"bin", 0o755, 0}, {"dev", 0o755, 0}, {"etc", 0o755, 0}, {"home", 0o755, 0},
		{"home/app", 0o755, 1000}, {"proc", 0o555, 0}, {"root", 0o700, 0}, {"run", 0o755, 0},
		{"sbin", 0o755, 0}, {"sys", 0o555, 0}, {"tmp", 0o1777, 0}, {"usr", 0o755, 0},
		{"usr/bin", 0o755, 0}, {"usr/sbin", 0o755, 0}, {"var", 0o755, 0}, {"var/tmp", 0o1777, 0},
	} {
		w.dir(d.p, d.mode, d.uid, d.uid)
	}
	w.file("bin/busybox", bin, 0o755, 0, 0)
	for _, a := range Applets(t) {
		w.symlink("bin/"+a, "busybox")
	}
	w.file("etc/passwd", []byte(
		"root:x:0:0:root:/root:/bin/sh\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"+
			"app:x:1000:1000:app:/home/app:/bin/sh\n"), 0o644, 0, 0)
	w.file("etc/group", []byte("root:x:0:\nnogroup:x:65534:\napp:x:1000:\n"), 0o644, 0, 0)
	w.file("etc/hostname", []byte("hypeman\n"), 0o644, 0, 0)
	return w.layer()
}

func filesLayer(t testing.TB, files []File) v1.Layer {
	t.Helper()
	w := newTarWriter(t)
	dirs := map[string]bool{}
	sorted := append([]File(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	for _, f := range sorted {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if p == "" {
			t.Fatalf("testimage: bad file path %q", f.Path)
		}
		var parents []string
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if !dirs[d] {
				dirs[d] = true
				w.dir(d, 0o755, 0, 0)
			}
		}
		mode := f.Mode.Perm() | f.Mode&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)
		if mode == 0 {
			mode = 0o644
		}
		w.file(p, f.Data, int64(fsutil.UnixPerm(mode)), f.UID, f.GID)
	}
	return w.layer()
}

// tarWriter builds an uncompressed layer tar in memory.
type tarWriter struct {
	t   testing.TB
	buf bytes.Buffer
	tw  *tar.Writer
}

func newTarWriter(t testing.TB) *tarWriter {
	w := &tarWriter{t: t}
	w.tw = tar.NewWriter(&w.buf)
	return w
}

func (w *tarWriter) write(h *tar.Header, data []byte) {
	w.t.Helper()
	h.ModTime = modTime()
	h.Format = tar.FormatPAX
	if err := w.tw.WriteHeader(h); err != nil {
		w.t.Fatalf("testimage: tar header %s: %v", h.Name, err)
	}
	if len(data) > 0 {
		if _, err := w.tw.Write(data); err != nil {
			w.t.Fatalf("testimage: tar data %s: %v", h.Name, err)
		}
	}
}

func (w *tarWriter) dir(p string, mode int64, uid, gid int) {
	w.write(&tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: mode, Uid: uid, Gid: gid}, nil)
}

func (w *tarWriter) file(p string, data []byte, mode int64, uid, gid int) {
	w.write(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Uid: uid, Gid: gid, Size: int64(len(data))}, data)
}

func (w *tarWriter) symlink(p, target string) {
	w.write(&tar.Header{Typeflag: tar.TypeSymlink, Name: p, Linkname: target, Mode: 0o777}, nil)
}

// layer gzips the tar once (fast level) and wraps the compressed bytes, so
// pushing does not compress again.
func (w *tarWriter) layer() v1.Layer {
	w.t.Helper()
	if err := w.tw.Close(); err != nil {
		w.t.Fatalf("testimage: close tar: %v", err)
	}
	return LayerFromTar(w.t, w.buf.Bytes())
}

// LayerFromTar gzips an uncompressed tar and returns it as a layer.
func LayerFromTar(t testing.TB, tarBytes []byte) v1.Layer {
	t.Helper()
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if err != nil {
		t.Fatalf("testimage: gzip: %v", err)
	}
	if _, err := zw.Write(tarBytes); err != nil {
		t.Fatalf("testimage: gzip: %v", err)
	}
	if err := zw.Close(); err != nil {
		t.Fatalf("testimage: gzip: %v", err)
	}
	compressed := gz.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(compressed)), nil
	})
	if err != nil {
		t.Fatalf("testimage: layer: %v", err)
	}
	return l
}

// Large returns a Busybox image plus ~sizeBytes of file content spread over
// four layers of files between 1 KiB and 64 KiB (≈5,000 files per 100 MB),
// half random (incompressible) and half repetitive text (compressible), for
// conversion benchmarks. Deterministic: same size, same digest.
func Large(t testing.TB, sizeBytes int64) v1.Image {
	t.Helper()
	base := Busybox(t, Options{})
	rng := rand.New(rand.NewChaCha8([32]byte{'h', 'y', 'p', 'e', 'm', 'a', 'n'}))
	const nLayers = 4
	perLayer := sizeBytes / nLayers
	var layers []v1.Layer
	fileNo := 0
	for li := 0; li < nLayers; li++ {
		w := newTarWriter(t)
		w.dir("data", 0o755, 0, 0)
		var written int64
		dirNo := -1
		for written < perLayer {
			if fileNo%100 == 0 {
				dirNo = fileNo / 100
				w.dir(fmt.Sprintf("data/d%04d", dirNo), 0o755, 0, 0)
			}
			size := int64(1024 + rng.IntN(63*1024))
			if written+size > perLayer {
				size = max(perLayer-written, 1)
			}
			data := make([]byte, size)
			if fileNo%2 == 0 {
				fillRandom(rng, data)
			} else {
				fillText(rng, data)
			}
			w.file(fmt.Sprintf("data/d%04d/f%06d", dirNo, fileNo), data, 0o644, 0, 0)
			written += size
			fileNo++
		}
		layers = append(layers, w.layer())
	}
	img, err := mutate.AppendLayers(base, layers...)
	if err != nil {
		t.Fatalf("testimage: append layers: %v", err)
	}
	return img
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := rng.Uint64()
		for k := 0; k < 8; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
}

func fillText(rng *rand.Rand, b []byte) {
	words := []string{"hypeman ", "virtual ", "machine ", "image ", "layer ", "erofs ", "ext4 ", "qemu ", "guest ", "kernel\n"}
	for i := 0; i < len(b); {
		i += copy(b[i:], words[rng.IntN(len(words))])
	}
}

// Registry starts an in-memory OCI registry (go-containerregistry's
// pkg/registry) on 127.0.0.1 and returns its host:port. It is closed when the
// test ends.
func Registry(t testing.TB) string {
	t.Helper()
	return RegistryWith(t, nil)
}

// RegistryWith is Registry with the handler wrapped by mw (to count, delay,
// refuse or corrupt requests); nil mw serves it as is.
func RegistryWith(t testing.TB, mw func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if mw != nil {
		h = mw(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// CheckSameImage fails t unless got has want's manifest digest and the
// same layers (by digest), each of whose blobs can be read in full.
func CheckSameImage(t testing.TB, got, want v1.Image) {
	t.Helper()
	gd, err := got.Digest()
	if err != nil {
		t.Fatalf("testimage: digest: %v", err)
	}
	if wd, _ := want.Digest(); gd != wd {
		t.Errorf("image digest %s, want %s", gd, wd)
	}
	gl, err := got.Layers()
	if err != nil {
		t.Fatalf("testimage: layers: %v", err)
	}
	wl, _ := want.Layers()
	if len(gl) != len(wl) {
		t.Fatalf("image has %d layers, want %d", len(gl), len(wl))
	}
	for i := range gl {
		a, _ := gl[i].Digest()
		b, _ := wl[i].Digest()
		if a != b {
			t.Errorf("layer %d: %s, want %s", i, a, b)
		}
		rc, err := gl[i].Compressed()
		if err != nil {
			t.Fatalf("layer %d blob: %v", i, err)
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Errorf("layer %d blob read: %v", i, err)
		}
	}
}

// Push writes img to host/repo (":latest" added when repo has no tag or
// digest) over plain HTTP and returns the full reference.
func Push(t testing.TB, host, repo string, img v1.Image) string {
	t.Helper()
	ref := host + "/" + repo
	last := repo[strings.LastIndex(repo, "/")+1:]
	if !strings.ContainsAny(last, ":@") {
		ref += ":latest"
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("testimage: parse %q: %v", ref, err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("testimage: push %s: %v", ref, err)
	}
	return ref
}
