package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/goleak"

	"hypeman/internal/fsutil"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/tier"
)

func TestMain(m *testing.M) {
	if os.Getenv(daemonEnv) == "1" {
		runConvertingDaemon()
	}
	goleak.VerifyTestMain(m)
}

// startRegistry serves an in-memory registry on 127.0.0.1, optionally
// wrapped by mw (to count, delay or corrupt responses).
func startRegistry(t testing.TB, mw func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if mw != nil {
		h = mw(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// requestCounter counts GETs of manifests and blobs.
type requestCounter struct {
	manifests atomic.Int64
	blobs     atomic.Int64
}

func (c *requestCounter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			switch {
			case strings.Contains(r.URL.Path, "/manifests/"):
				c.manifests.Add(1)
			case strings.Contains(r.URL.Path, "/blobs/"):
				c.blobs.Add(1)
			}
		}
		next.ServeHTTP(w, r)
	})
}

func newTestStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.Keychain == nil {
		cfg.Keychain = authn.NewMultiKeychain() // anonymous; never read ~/.docker
	}
	if cfg.AllowRegistries == nil {
		cfg.AllowRegistries = []string{"127.0.0.0/8"} // the tests' in-process registries
	}
	s, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPullBusyboxEndToEnd(t *testing.T) {
	needsChown(t)
	host := startRegistry(t, nil)
	img := testimage.Busybox(t, testimage.Options{
		Env:        []string{"GREETING=hello"},
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"echo $GREETING"},
		WorkingDir: "/home/app",
		User:       "app",
		Files:      []testimage.File{{Path: "/app/run.sh", Data: []byte("#!/bin/sh\necho hi\n"), Mode: 0o755, UID: 1000, GID: 1000}},
	})
	ref := testimage.Push(t, host, "tests/busybox:v1", img)
	wantDigest, _ := img.Digest()

	s := newTestStore(t, Config{})
	sub, unsub, err := s.Subscribe(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer unsub()
	var seen []Status
	var lastProgress Progress
	var subDone sync.WaitGroup
	subDone.Add(1)
	go func() {
		defer subDone.Done()
		for im := range sub {
			if len(seen) == 0 || seen[len(seen)-1] != im.Status {
				seen = append(seen, im.Status)
			}
			if im.Progress.BytesTotal > 0 {
				lastProgress = im.Progress
			}
			if im.Status == StatusReady || im.Status == StatusFailed {
				return
			}
		}
	}()

	got, err := s.Pull(ctxT(t), ref)
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	subDone.Wait()
	if got.Status != StatusReady || got.Digest != wantDigest.String() {
		t.Fatalf("got status %s digest %s, want ready %s", got.Status, got.Digest, wantDigest)
	}
	if got.Name != ref {
		t.Errorf("name %q, want %q", got.Name, ref)
	}
	if seen[0] != StatusPending && seen[0] != StatusPulling {
		t.Errorf("first status seen %v", seen)
	}
	if seen[len(seen)-1] != StatusReady || !containsStatus(seen, StatusConverting) {
		t.Errorf("status sequence %v: want ... converting ... ready", seen)
	}
	if lastProgress.BytesTotal == 0 || lastProgress.BytesDone != lastProgress.BytesTotal || lastProgress.LayersTotal != 2 {
		t.Errorf("progress %+v: want done == total > 0 over 2 layers", lastProgress)
	}
	wantCfg := ImageConfig{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo $GREETING"},
		Env: []string{testimage.DefaultPath, "GREETING=hello"}, WorkingDir: "/home/app", User: "app",
	}
	if fmt.Sprint(got.Config) != fmt.Sprint(wantCfg) {
		t.Errorf("config %+v, want %+v", got.Config, wantCfg)
	}
	fi, err := os.Stat(got.DiskPath)
	if err != nil || fi.Size() != got.SizeBytes || fi.Size() == 0 {
		t.Fatalf("disk %s: %v (size %d, record %d)", got.DiskPath, err, fi.Size(), got.SizeBytes)
	}
	wantDir := filepath.Join(s.cfg.Dir, "disks", "sha256-"+wantDigest.Hex)
	if filepath.Dir(got.DiskPath) != wantDir || filepath.Base(got.DiskPath) != "rootfs."+string(got.DiskFormat) {
		t.Errorf("disk path %s, want %s/rootfs.%s", got.DiskPath, wantDir, got.DiskFormat)
	}

	// image.json and index.json on disk.
	var rec diskRecord
	if err := fsutil.ReadJSON(filepath.Join(wantDir, "image.json"), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Digest != wantDigest.String() || len(rec.Names) != 1 || rec.Names[0] != ref || rec.DiskFormat != got.DiskFormat ||
		rec.DiskFormatReason == "" || rec.Config.User != "app" || rec.SizeBytes != got.SizeBytes || rec.CreatedAt.IsZero() {
		t.Errorf("image.json = %+v", rec)
	}
	var idx indexFile
	if err := fsutil.ReadJSON(filepath.Join(s.cfg.Dir, "index.json"), &idx); err != nil {
		t.Fatal(err)
	}
	if e := idx.Names[ref]; e == nil || e.Digest != wantDigest.String() || e.Status != StatusReady {
		t.Errorf("index.json entry for %s = %+v", ref, e)
	}
	// Nothing left in the staging area.
	if ents, _ := os.ReadDir(filepath.Join(s.cfg.Dir, "tmp")); len(ents) != 0 {
		t.Errorf("tmp not cleaned: %v", ents)
	}

	// The disk holds the flattened image with its metadata.
	root := mountDisk(t, got.DiskPath, string(got.DiskFormat))
	fi, st := lstat(t, filepath.Join(root, "app/run.sh"))
	if fi.Mode() != 0o755 || st.Uid != 1000 || st.Gid != 1000 {
		t.Errorf("app/run.sh mode %v owner %d:%d", fi.Mode(), st.Uid, st.Gid)
	}
	if target, _ := os.Readlink(filepath.Join(root, "bin/sh")); target != "busybox" {
		t.Errorf("bin/sh -> %q", target)
	}
	if fi, _ := lstat(t, filepath.Join(root, "tmp")); fi.Mode() != os.ModeDir|os.ModeSticky|0o777 {
		t.Errorf("tmp mode %v", fi.Mode())
	}
	if !strings.Contains(readFile(t, filepath.Join(root, "etc/passwd")), "app:x:1000:1000") {
		t.Errorf("etc/passwd lacks the app user")
	}
}

func containsStatus(ss []Status, want Status) bool {
	for _, s := range ss {
		if s == want {
			return true
		}
	}
	return false
}

// mountDisk loop-mounts a root disk read-only (the way the guest sees it)
// and unmounts it when the test ends.
func mountDisk(t *testing.T, disk, fstype string) string {
	t.Helper()
	tier.Root(t, "it loop-mounts the root disk")
	mnt := t.TempDir()
	out, err := exec.Command("mount", "-t", fstype, "-o", "loop,ro", disk, mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("mount -t %s -o loop,ro %s (needs root, loop devices and %s support in the host kernel): %v: %s", fstype, disk, fstype, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// TestDiskFormatsKeepMetadata builds both disk formats from one staged tree
// and checks, through a read-only mount, what flatten produced survived.
func TestDiskFormatsKeepMetadata(t *testing.T) {
	needsChown(t)
	for _, format := range []DiskFormat{DiskErofs, DiskExt4} {
		t.Run(string(format), func(t *testing.T) {
			tier.Tools(t, "mkfs."+string(format))
			b, err := chooseDisk(format, exec.LookPath)
			if err != nil {
				t.Fatal(err)
			}
			staging := mustFlatten(t, mkTarMeta(t))
			out := filepath.Join(t.TempDir(), b.fileName())
			size, err := b.build(context.Background(), staging, out, uuidFromDigest("0123456789abcdef0123456789abcdef"))
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			if fi, err := os.Stat(out); err != nil || fi.Size() != size {
				t.Fatalf("disk %s: %v", out, err)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".tmp")); err == nil {
				t.Errorf("temporary disk file left behind")
			}
			root := mountDisk(t, out, string(format))
			fi, st := lstat(t, filepath.Join(root, "bin/su"))
			if fi.Mode() != os.ModeSetuid|0o755 || st.Uid != 1000 || st.Gid != 1001 || !fi.ModTime().Equal(testMTime) {
				t.Errorf("bin/su: %v %d:%d %v", fi.Mode(), st.Uid, st.Gid, fi.ModTime())
			}
			_, a := lstat(t, filepath.Join(root, "bin/hl"))
			if a.Ino != st.Ino || st.Nlink != 2 {
				t.Errorf("hardlink lost: inodes %d/%d nlink %d", a.Ino, st.Ino, st.Nlink)
			}
			if fi, _ := lstat(t, filepath.Join(root, "dev/null")); fi.Mode() != os.ModeDevice|os.ModeCharDevice|0o666 {
				t.Errorf("dev/null mode %v", fi.Mode())
			}
			if fi, _ := lstat(t, filepath.Join(root, "run/fifo")); fi.Mode()&os.ModeNamedPipe == 0 {
				t.Errorf("run/fifo mode %v", fi.Mode())
			}
			if fi, st := lstat(t, root); fi.Mode().Perm() != 0o755 || st.Uid != 0 || st.Gid != 0 {
				t.Errorf("root dir %v %d:%d", fi.Mode(), st.Uid, st.Gid)
			}
			if target, _ := os.Readlink(filepath.Join(root, "bin/sh")); target != "su" {
				t.Errorf("bin/sh -> %q", target)
			}
		})
	}
}

func mkTarMeta(t *testing.T) []byte {
	return mkTar(t,
		entry{Name: "bin/su", Data: "suid", Mode: 0o4755, UID: 1000, GID: 1001},
		entry{Name: "bin/hl", Typ: '1', Link: "bin/su"},
		entry{Name: "bin/sh", Typ: '2', Link: "su"},
		entry{Name: "dev/null", Typ: '3', Mode: 0o666, Major: 1, Minor: 3},
		entry{Name: "run/fifo", Typ: '6', Mode: 0o644},
	)
}

func TestDedupeSecondNameReusesDisk(t *testing.T) {
	needsChown(t)
	var cnt requestCounter
	host := startRegistry(t, cnt.wrap)
	img := testimage.Busybox(t, testimage.Options{})
	ref1 := testimage.Push(t, host, "a/one:latest", img)
	ref2 := testimage.Push(t, host, "b/two:v2", img)
	s := newTestStore(t, Config{})

	i1, err := s.Pull(ctxT(t), ref1)
	if err != nil {
		t.Fatal(err)
	}
	blobsAfterFirst := cnt.blobs.Load()
	fi1, _ := os.Stat(i1.DiskPath)

	i2, err := s.Pull(ctxT(t), ref2)
	if err != nil {
		t.Fatal(err)
	}
	if i1.DiskPath != i2.DiskPath || i1.Digest != i2.Digest {
		t.Fatalf("second name got its own disk: %s vs %s", i1.DiskPath, i2.DiskPath)
	}
	// The config blob may be fetched to read the platform; no layer is.
	if extra := cnt.blobs.Load() - blobsAfterFirst; extra > 1 {
		t.Errorf("second pull fetched %d blobs, want at most the config", extra)
	}
	fi2, _ := os.Stat(i2.DiskPath)
	if !fi1.ModTime().Equal(fi2.ModTime()) || !os.SameFile(fi1, fi2) {
		t.Errorf("disk was rebuilt")
	}
	var rec diskRecord
	if err := fsutil.ReadJSON(filepath.Join(filepath.Dir(i1.DiskPath), "image.json"), &rec); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rec.Names) != fmt.Sprint([]string{ref1, ref2}) {
		t.Errorf("image.json names %v", rec.Names)
	}
	list, _ := s.List(ctxT(t))
	if len(list) != 2 {
		t.Errorf("List = %d images, want 2", len(list))
	}
	// Ensure on a ready name does not touch the registry.
	m := cnt.manifests.Load()
	if im, err := s.Ensure(ctxT(t), ref1, EnsureOptions{}); err != nil || im.Status != StatusReady {
		t.Fatalf("Ensure ready: %v %v", im, err)
	}
	if cnt.manifests.Load() != m {
		t.Errorf("Ensure of a ready image fetched a manifest")
	}
}

func TestDigestPinning(t *testing.T) {
	needsChown(t)
	imgA := testimage.Busybox(t, testimage.Options{Env: []string{"WHICH=a"}})
	imgB := testimage.Busybox(t, testimage.Options{Env: []string{"WHICH=b"}})
	dA, _ := imgA.Digest()
	dB, _ := imgB.Digest()

	// A registry that answers requests for B's digest with A's manifest.
	var rawA []byte
	host := startRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/manifests/"+dB.String()) && rawA != nil {
				mt, _ := imgA.MediaType()
				w.Header().Set("Content-Type", string(mt))
				w.Header().Set("Docker-Content-Digest", dB.String())
				w.Write(rawA)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	testimage.Push(t, host, "pin/a:latest", imgA)
	rawA, _ = imgA.RawManifest()
	s := newTestStore(t, Config{})

	good := host + "/pin/a@" + dA.String()
	im, err := s.Pull(ctxT(t), good)
	if err != nil || im.Digest != dA.String() || im.Name != good {
		t.Fatalf("pinned pull: %+v %v", im, err)
	}

	bad := host + "/pin/a@" + dB.String()
	_, err = s.Pull(ctxT(t), bad)
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v, want ErrDigestMismatch", err)
	}
	got, _ := s.Get(ctxT(t), bad)
	if got.Status != StatusFailed || got.ErrorKind != "digest_mismatch" || !strings.Contains(got.Error, dB.String()) {
		t.Errorf("record after mismatch: %+v", got)
	}

	// A pinned digest already in the store needs no registry at all.
	s2 := newTestStore(t, Config{Dir: s.cfg.Dir})
	s.Close()
	other := "127.0.0.1:1/elsewhere@" + dA.String()
	im, err = s2.Ensure(ctxT(t), other, EnsureOptions{})
	if err != nil || im.Status != StatusReady || im.Digest != dA.String() {
		t.Fatalf("offline pinned Ensure: %+v %v", im, err)
	}
}

func TestUnknownImage(t *testing.T) {
	needsChown(t)
	host := startRegistry(t, nil)
	s := newTestStore(t, Config{})
	ref := host + "/no/such:thing"
	im, err := s.Ensure(ctxT(t), ref, EnsureOptions{})
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if im.Status != StatusPending && im.Status != StatusPulling {
		t.Errorf("Ensure returned status %s", im.Status)
	}
	im, err = s.Wait(ctxT(t), ref)
	if !errors.Is(err, ErrNotFoundUpstream) {
		t.Fatalf("err = %v, want ErrNotFoundUpstream", err)
	}
	var pe *PullError
	if !errors.As(err, &pe) || pe.Ref != ref || pe.Registry != host {
		t.Errorf("PullError = %+v", pe)
	}
	if im.Status != StatusFailed || im.ErrorKind != "not_found_upstream" || im.Error == "" {
		t.Errorf("record %+v", im)
	}
	// Store lookups of names never pulled are ErrNotFound.
	if _, err := s.Get(ctxT(t), host+"/never:pulled"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get unknown: %v", err)
	}
	if _, err := s.Get(ctxT(t), "sha256:"+strings.Repeat("a", 64)); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get unknown digest: %v", err)
	}
	if err := s.Delete(ctxT(t), host+"/never:pulled"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete unknown: %v", err)
	}

	// A failed name is retried by the next Ensure and can succeed.
	testimage.Push(t, host, "no/such:thing", testimage.Busybox(t, testimage.Options{}))
	im, err = s.Pull(ctxT(t), ref)
	if err != nil || im.Status != StatusReady || im.Error != "" {
		t.Fatalf("retry after failure: %+v %v", im, err)
	}
}

func TestRegistryUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close() // nothing listens there now

	s := newTestStore(t, Config{})
	start := time.Now()
	_, err = s.Pull(ctxT(t), host+"/x/y:z")
	if !errors.Is(err, ErrRegistryUnreachable) {
		t.Fatalf("err = %v, want ErrRegistryUnreachable", err)
	}
	if !strings.Contains(err.Error(), host) || !strings.Contains(err.Error(), "registry unreachable") {
		t.Errorf("message does not name the registry: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v to report a refused connection", d)
	}
}

// recordingTransport fails every request and remembers the URLs it saw.
type recordingTransport struct {
	mu   sync.Mutex
	urls []string
}

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.urls = append(r.urls, req.URL.String())
	r.mu.Unlock()
	return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
}

func TestPlainHTTPOnlyForInsecureOrLoopback(t *testing.T) {
	rt := &recordingTransport{}
	s := newTestStore(t, Config{Transport: rt, Insecure: []string{"registry.internal:5000"}, AllowRegistries: []string{"10.0.0.0/8"}})

	// RFC 1918 address: go-containerregistry alone would fall back to HTTP.
	_, err := s.Pull(ctxT(t), "10.1.2.3:5000/app:latest")
	if !errors.Is(err, ErrRegistryUnreachable) {
		t.Fatalf("err = %v", err)
	}
	if !errors.Is(err, ErrInsecureRefused) {
		t.Errorf("plain HTTP refusal not reported: %v", err)
	}
	// Configured insecure registry: HTTP is attempted.
	_, err = s.Pull(ctxT(t), "registry.internal:5000/app:latest")
	if !errors.Is(err, ErrRegistryUnreachable) || errors.Is(err, ErrInsecureRefused) {
		t.Fatalf("insecure registry: err = %v", err)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var sawInsecureHTTP bool
	for _, u := range rt.urls {
		if strings.HasPrefix(u, "http://10.1.2.3") {
			t.Errorf("plain HTTP request reached the network: %s", u)
		}
		if strings.HasPrefix(u, "http://registry.internal:5000/") {
			sawInsecureHTTP = true
		}
	}
	if !sawInsecureHTTP {
		t.Errorf("no plain-HTTP attempt to the configured insecure registry; saw %v", rt.urls)
	}
}

func TestHTTPPolicy(t *testing.T) {
	p := newHTTPPolicy([]string{"reg.lan:5000", "http://plain.example/", "docker.io"})
	for host, want := range map[string]bool{
		"127.0.0.1:5000": true, "127.9.9.9": true, "[::1]:5000": true, "localhost:80": true, "localhost": true,
		"reg.lan:5000": true, "reg.lan:5001": false, "plain.example:443": true, "plain.example": true,
		"10.0.0.1:5000": false, "192.168.1.1": false, "ghcr.io": false, "index.docker.io": true,
	} {
		if got := p.allowed(host); got != want {
			t.Errorf("allowed(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestCorruptLayer(t *testing.T) {
	needsChown(t)
	for _, tc := range []struct {
		name    string
		corrupt func([]byte) []byte
		msg     string
	}{
		{"flipped byte", func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b }, "digest mismatch"},
		{"truncated", func(b []byte) []byte { return b[:len(b)-100] }, "size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := testimage.Busybox(t, testimage.Options{})
			layers, _ := img.Layers()
			ld, _ := layers[0].Digest()
			host := startRegistry(t, func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+ld.String()) {
						rc, _ := layers[0].Compressed()
						b, _ := io.ReadAll(rc)
						rc.Close()
						b = tc.corrupt(b)
						w.Header().Set("Content-Length", fmt.Sprint(len(b)))
						w.Write(b)
						return
					}
					next.ServeHTTP(w, r)
				})
			})
			ref := testimage.Push(t, host, "bad/layer:latest", img)
			s := newTestStore(t, Config{})
			_, err := s.Pull(ctxT(t), ref)
			if !errors.Is(err, ErrCorruptLayer) {
				t.Fatalf("err = %v, want ErrCorruptLayer", err)
			}
			var pe *PullError
			if !errors.As(err, &pe) || pe.Layer != ld.String() || !strings.Contains(err.Error(), ld.String()) {
				t.Errorf("error does not name layer %s: %v", ld, err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q", err, tc.msg)
			}
			if ents, _ := os.ReadDir(filepath.Join(s.cfg.Dir, "tmp")); len(ents) != 0 {
				t.Errorf("staging not cleaned after failure: %v", ents)
			}
			if ents, _ := os.ReadDir(filepath.Join(s.cfg.Dir, "disks")); len(ents) != 0 {
				t.Errorf("disk dir left after failure: %v", ents)
			}
			// The tee to the OCI cache kept nothing of the bad layer.
			for _, d := range []string{"oci-cache/blobs/sha256", "oci-cache/tmp"} {
				if ents, _ := os.ReadDir(filepath.Join(s.cfg.Dir, d)); len(ents) != 0 {
					t.Errorf("%s not empty after a corrupt layer: %v", d, ents)
				}
			}
		})
	}
}

func TestConcurrentEnsureSingleFlight(t *testing.T) {
	needsChown(t)
	var cnt requestCounter
	release := make(chan struct{})
	img := testimage.Busybox(t, testimage.Options{})
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	var pushed atomic.Bool
	host := startRegistry(t, func(next http.Handler) http.Handler {
		counted := cnt.wrap(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if pushed.Load() && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+ld.String()) {
				<-release // hold the pull in flight until every Ensure has run
			}
			counted.ServeHTTP(w, r)
		})
	})
	ref := testimage.Push(t, host, "single/flight:latest", img)
	pushed.Store(true)
	cnt.blobs.Store(0)
	cnt.manifests.Store(0)

	s := newTestStore(t, Config{})
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			im, err := s.Ensure(ctxT(t), ref, EnsureOptions{})
			if err == nil && im.Status == StatusReady {
				err = errors.New("ready before the layer was served")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(release)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Wait(ctxT(t), ref); err != nil {
		t.Fatal(err)
	}
	if m := cnt.manifests.Load(); m != 1 {
		t.Errorf("%d manifest GETs, want 1", m)
	}
	if b := cnt.blobs.Load(); b != 2 { // config + one layer
		t.Errorf("%d blob GETs, want 2", b)
	}
}

func TestIndexResolvesPlatform(t *testing.T) {
	needsChown(t)
	host := startRegistry(t, nil)
	amd := testimage.Busybox(t, testimage.Options{Env: []string{"ARCH=amd64"}})
	arm := withArch(t, testimage.Busybox(t, testimage.Options{Env: []string{"ARCH=arm64"}}), "arm64")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	pushIndex(t, host+"/multi/arch:latest", idx)
	armOnly := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	pushIndex(t, host+"/arm/only:latest", armOnly)
	testimage.Push(t, host, "arm/single:latest", arm)

	s := newTestStore(t, Config{})
	im, err := s.Pull(ctxT(t), host+"/multi/arch:latest")
	if err != nil {
		t.Fatal(err)
	}
	amdDigest, _ := amd.Digest()
	if im.Digest != amdDigest.String() || !containsString(im.Config.Env, "ARCH=amd64") {
		t.Errorf("resolved %s env %v, want the amd64 image %s", im.Digest, im.Config.Env, amdDigest)
	}
	// Pinning the index digest works too and lands on the same disk.
	idxDigest, _ := idx.Digest()
	im2, err := s.Pull(ctxT(t), host+"/multi/arch@"+idxDigest.String())
	if err != nil || im2.DiskPath != im.DiskPath {
		t.Errorf("pinned index: %+v %v", im2, err)
	}
	for _, ref := range []string{host + "/arm/only:latest", host + "/arm/single:latest"} {
		if _, err := s.Pull(ctxT(t), ref); !errors.Is(err, ErrNoMatchingPlatform) {
			t.Errorf("%s: err = %v, want ErrNoMatchingPlatform", ref, err)
		}
	}
}

func withArch(t *testing.T, img v1.Image, arch string) v1.Image {
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.Architecture = arch
	out, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func pushIndex(t *testing.T, ref string, idx v1.ImageIndex) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
}

func containsString(ss []string, want string) bool {
	for _, s := range ss {
		if s == want {
			return true
		}
	}
	return false
}

func TestRestartKeepsReadyAndFailsInterrupted(t *testing.T) {
	needsChown(t)
	host := startRegistry(t, nil)
	ref := testimage.Push(t, host, "persist/me:latest", testimage.Busybox(t, testimage.Options{}))
	dir := t.TempDir()
	s := newTestStore(t, Config{Dir: dir})
	ready, err := s.Pull(ctxT(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	// Simulate a daemon that died mid-pull: an entry in "pulling", a
	// staging dir and a half-built disk dir without image.json.
	var idx indexFile
	if err := fsutil.ReadJSON(filepath.Join(dir, "index.json"), &idx); err != nil {
		t.Fatal(err)
	}
	crashed := host + "/persist/crashed:latest"
	idx.Names[crashed] = &nameEntry{Status: StatusPulling, CreatedAt: time.Now()}
	if err := fsutil.WriteJSONAtomic(filepath.Join(dir, "index.json"), idx, 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "tmp", "stage-123", "etc"), 0o755)
	half := filepath.Join(dir, "disks", "sha256-"+strings.Repeat("b", 64))
	os.MkdirAll(half, 0o755)
	os.WriteFile(filepath.Join(half, "rootfs.erofs"), []byte("partial"), 0o644)

	s2 := newTestStore(t, Config{Dir: dir})
	got, err := s2.Get(ctxT(t), ref)
	if err != nil || got.Status != StatusReady || got.DiskPath != ready.DiskPath || got.Config.Cmd[0] != "sh" {
		t.Fatalf("after restart: %+v %v", got, err)
	}
	c, err := s2.Get(ctxT(t), crashed)
	if err != nil || c.Status != StatusFailed || c.ErrorKind != "interrupted" || !strings.Contains(c.Error, "interrupted") {
		t.Fatalf("interrupted record: %+v %v", c, err)
	}
	if _, err := s2.Wait(ctxT(t), crashed); !errors.Is(err, ErrInterrupted) {
		t.Errorf("Wait on interrupted: %v", err)
	}
	if _, err := os.Stat(half); !os.IsNotExist(err) {
		t.Errorf("half-built disk dir kept")
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("tmp not cleaned: %v", ents)
	}
	var idx2 indexFile
	fsutil.ReadJSON(filepath.Join(dir, "index.json"), &idx2)
	if idx2.Names[crashed].Status != StatusFailed {
		t.Errorf("interrupted status not persisted: %+v", idx2.Names[crashed])
	}
	// By digest too.
	if byDigest, err := s2.Get(ctxT(t), ready.Digest); err != nil || byDigest.DiskPath != ready.DiskPath || byDigest.Name != ref {
		t.Errorf("Get by digest: %+v %v", byDigest, err)
	}
}

func TestDelete(t *testing.T) {
	needsChown(t)
	host := startRegistry(t, nil)
	img := testimage.Busybox(t, testimage.Options{})
	r1 := testimage.Push(t, host, "del/one:latest", img)
	r2 := testimage.Push(t, host, "del/two:latest", img)
	r3 := testimage.Push(t, host, "del/three:latest", testimage.Busybox(t, testimage.Options{Env: []string{"X=3"}}))
	s := newTestStore(t, Config{})
	i1, err := s.Pull(ctxT(t), r1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctxT(t), r2); err != nil {
		t.Fatal(err)
	}
	i3, err := s.Pull(ctxT(t), r3)
	if err != nil {
		t.Fatal(err)
	}

	if err := s.Delete(ctxT(t), r1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(i1.DiskPath); err != nil {
		t.Fatalf("disk removed while %s still uses it", r2)
	}
	if _, err := s.Get(ctxT(t), r1); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted name still found: %v", err)
	}
	var rec diskRecord
	fsutil.ReadJSON(filepath.Join(filepath.Dir(i1.DiskPath), "image.json"), &rec)
	if fmt.Sprint(rec.Names) != fmt.Sprint([]string{r2}) {
		t.Errorf("image.json names after delete: %v", rec.Names)
	}
	if err := s.Delete(ctxT(t), r2); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(i1.DiskPath)); !os.IsNotExist(err) {
		t.Errorf("disk dir kept after its last name was deleted")
	}
	// By digest.
	if err := s.Delete(ctxT(t), i3.Digest); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctxT(t), r3); !errors.Is(err, ErrNotFound) {
		t.Errorf("name kept after deleting its digest: %v", err)
	}
	if list, _ := s.List(ctxT(t)); len(list) != 0 {
		t.Errorf("List after deletes: %v", list)
	}
	if ents, _ := os.ReadDir(filepath.Join(s.cfg.Dir, "disks")); len(ents) != 0 {
		t.Errorf("disks left: %v", ents)
	}
}

func TestDeleteCancelsRunningPull(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	host := startRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				select {
				case <-block:
				case <-r.Context().Done():
				}
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	ref := testimage.Push(t, host, "slow/pull:latest", testimage.Busybox(t, testimage.Options{}))
	s := newTestStore(t, Config{})
	if _, err := s.Ensure(ctxT(t), ref, EnsureOptions{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Delete(ctxT(t), ref) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Delete did not cancel the running pull")
	}
	if _, err := s.Get(ctxT(t), ref); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after delete: %v", err)
	}
}

func TestImportImage(t *testing.T) {
	needsChown(t)
	local := func(host string) bool { return host == "localhost:8080" || host == "127.0.0.1:8080" }
	s := newTestStore(t, Config{LocalRegistry: local})
	img := testimage.Busybox(t, testimage.Options{Cmd: []string{"echo", "pushed"}})
	im, err := s.ImportImage(ctxT(t), "pushed/app:v1", img)
	if err != nil {
		t.Fatal(err)
	}
	// Recorded under the pushed path, never under docker.io.
	if im.Name != "pushed/app:v1" {
		t.Errorf("name %q", im.Name)
	}
	im, err = s.Wait(ctxT(t), "pushed/app:v1")
	if err != nil || im.Status != StatusReady || fmt.Sprint(im.Config.Cmd) != "[echo pushed]" {
		t.Fatalf("import: %+v %v", im, err)
	}
	d, _ := img.Digest()
	if im.Digest != d.String() {
		t.Errorf("digest %s, want %s", im.Digest, d)
	}
	// Found by the bare path and through the registry's own addresses,
	// without any pull.
	for _, ref := range []string{"pushed/app:v1", "localhost:8080/pushed/app:v1", "127.0.0.1:8080/pushed/app:v1", " pushed/app:v1 "} {
		got, err := s.Get(ctxT(t), ref)
		if err != nil || got.Name != "pushed/app:v1" {
			t.Errorf("Get(%q) = %v, %v", ref, got, err)
		}
		got, err = s.Ensure(ctxT(t), ref, EnsureOptions{})
		if err != nil || got.Status != StatusReady || got.Name != "pushed/app:v1" {
			t.Errorf("Ensure(%q) = %+v, %v", ref, got, err)
		}
	}
	// A one-component path stays as pushed (no library/).
	if im, err := s.ImportImage(ctxT(t), "demo:v1", img); err != nil || im.Name != "demo:v1" {
		t.Fatalf("import demo:v1: %+v %v", im, err)
	}
	// Through our own address, a name nobody pushed is not found, and no
	// failed record is left behind (it is never pulled).
	if _, err := s.Ensure(ctxT(t), "127.0.0.1:8080/never/pushed:1", EnsureOptions{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Ensure of an unpushed local name: %v", err)
	}
	list, _ := s.List(ctxT(t))
	for _, im := range list {
		if strings.Contains(im.Name, "never") || strings.HasPrefix(im.Name, "docker.io/") {
			t.Errorf("unexpected record %s (%s)", im.Name, im.Status)
		}
	}
	// A bare path nobody pushed keeps Docker's meaning.
	if n, err := s.CanonicalName("busybox"); err != nil || n != "docker.io/library/busybox:latest" {
		t.Errorf("CanonicalName(busybox) = %q, %v", n, err)
	}
	// The record survives a reopen as local.
	s.Close()
	s2 := newTestStore(t, Config{Dir: s.cfg.Dir, LocalRegistry: local})
	if got, err := s2.Get(ctxT(t), "127.0.0.1:8080/pushed/app:v1"); err != nil || got.Status != StatusReady {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
}

func TestReferences(t *testing.T) {
	for in, want := range map[string]string{
		"busybox":                            "docker.io/library/busybox:latest",
		"busybox:1.36":                       "docker.io/library/busybox:1.36",
		"docker.io/library/busybox":          "docker.io/library/busybox:latest",
		"index.docker.io/user/app:v2":        "docker.io/user/app:v2",
		"user/app":                           "docker.io/user/app:latest",
		"ghcr.io/org/app:1":                  "ghcr.io/org/app:1",
		"localhost:5000/app":                 "localhost:5000/app:latest",
		"127.0.0.1:5000/a/b@sha256:" + hex64: "127.0.0.1:5000/a/b@sha256:" + hex64,
		"busybox@sha256:" + hex64:            "docker.io/library/busybox@sha256:" + hex64,
		"  busybox  ":                        "docker.io/library/busybox:latest",
		"[::1]:5000/a__b/c-d.e:1":            "[::1]:5000/a__b/c-d.e:1",
		"reg-1.example.com/x":                "reg-1.example.com/x:latest",
	} {
		got, err := NormalizeName(in)
		if err != nil || got != want {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	s := newTestStore(t, Config{})
	for _, bad := range []string{"", "UPPER/case", "a b", "sha256:" + hex64, "busybox@sha256:short", "http://x/y",
		// Accepted by go-containerregistry's parser, refused here: no
		// registry "..", no empty or dot path components, valid ports.
		"../../etc/passwd", "/", "a//b", "/a", "a/", "./a", "a/./b", "a/../b", "..", "a..b/c", "-a/b", "a_/b",
		"reg.example.com:0/x", "reg.example.com:70000/x", "[zz]:5000/x"} {
		if _, err := s.Ensure(ctxT(t), bad, EnsureOptions{}); !errors.Is(err, ErrInvalidReference) {
			t.Errorf("Ensure(%q) err = %v, want ErrInvalidReference", bad, err)
		}
	}
}

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestChooseDisk(t *testing.T) {
	none := func(string) (string, error) { return "", exec.ErrNotFound }
	onlyExt4 := func(n string) (string, error) {
		if n == "mkfs.ext4" {
			return "/sbin/mkfs.ext4", nil
		}
		return "", exec.ErrNotFound
	}
	if b, err := chooseDisk(DiskAuto, onlyExt4); err != nil || b.format != DiskExt4 || !strings.Contains(b.reason, "mkfs.erofs not installed") {
		t.Errorf("auto without erofs: %+v %v", b, err)
	}
	if _, err := chooseDisk(DiskErofs, onlyExt4); err == nil || !strings.Contains(err.Error(), "erofs-utils") {
		t.Errorf("erofs without mkfs.erofs: %v", err)
	}
	if _, err := chooseDisk(DiskAuto, none); err == nil {
		t.Errorf("auto with no tools accepted")
	}
	if _, err := chooseDisk("zfs", onlyExt4); err == nil {
		t.Errorf("unknown format accepted")
	}
	if b, err := chooseDisk("", exec.LookPath); err != nil || b.format != DiskErofs {
		t.Errorf("default on this host: %+v %v (erofs-utils is part of the setup)", b, err)
	}
}

// rewriteJSON loads a JSON object file, lets edit change it, writes it back.
func rewriteJSON(t *testing.T, path string, edit func(map[string]any)) {
	t.Helper()
	var m map[string]any
	if err := fsutil.ReadJSON(path, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if err := fsutil.WriteJSONAtomic(path, m, 0o644); err != nil {
		t.Fatal(err)
	}
}

// index.json and image.json carry a format version: files from before
// versions (no field) load as version 1; an unknown image.json version keeps
// the disk but reports its names failed with the file and version; an
// unknown index.json version refuses to open the store, naming the file.
func TestPersistedFormatVersions(t *testing.T) {
	needsChown(t)
	s := newTestStore(t, Config{})
	dir := s.cfg.Dir
	img := testimage.Busybox(t, testimage.Options{Cmd: []string{"true"}})
	name := "versions/app:v1"
	if _, err := s.ImportImage(ctxT(t), name, img); err != nil {
		t.Fatal(err)
	}
	ready, err := s.Wait(ctxT(t), name)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	index := filepath.Join(dir, "index.json")
	record := filepath.Join(filepath.Dir(ready.DiskPath), "image.json")
	for _, p := range []string{index, record} {
		var v struct{ Version int }
		if err := fsutil.ReadJSON(p, &v); err != nil || v.Version != 1 {
			t.Fatalf("%s: version %d (%v), want 1 written", p, v.Version, err)
		}
	}

	// Written before versions existed: no field at all.
	for _, p := range []string{index, record} {
		rewriteJSON(t, p, func(m map[string]any) { delete(m, "version") })
	}
	s2 := newTestStore(t, Config{Dir: dir})
	if got, err := s2.Get(ctxT(t), name); err != nil || got.Status != StatusReady {
		t.Fatalf("unversioned files: %+v %v", got, err)
	}
	s2.Close()

	// A disk record from the future: kept on disk, its name failed.
	rewriteJSON(t, record, func(m map[string]any) { m["version"] = 42 })
	s3 := newTestStore(t, Config{Dir: dir})
	got, err := s3.Get(ctxT(t), name)
	if err != nil || got.Status != StatusFailed || !strings.Contains(got.Error, record) || !strings.Contains(got.Error, "version 42") {
		t.Fatalf("future image.json: %+v %v", got, err)
	}
	if _, err := os.Stat(ready.DiskPath); err != nil {
		t.Fatalf("disk of an unknown record removed: %v", err)
	}
	s3.Close()
	rewriteJSON(t, record, func(m map[string]any) { m["version"] = 1 })

	// An index from the future: the store does not open.
	rewriteJSON(t, index, func(m map[string]any) { m["version"] = 9 })
	_, err = New(Config{Dir: dir}, slog.New(slog.DiscardHandler))
	var ve *fsutil.VersionError
	if !errors.As(err, &ve) || ve.Path != index || ve.Version != 9 {
		t.Fatalf("future index.json: %v", err)
	}
}
