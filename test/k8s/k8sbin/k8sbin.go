// Package k8sbin owns the pinned Kubernetes control-plane binaries the k8s
// tests run: etcd, kube-apiserver, kube-scheduler and kubectl.
//
// Why: distribution packages are too old (Debian's etcd 3.4 cannot serve
// Kubernetes ≥ 1.31, its kubectl 1.20 is outside version skew) and the
// binaries take minutes each to build on a small host. So they are built from
// source pinned in the nested modules under test/k8s/pins (kube: k8s.io/kubernetes
// with its staging modules replaced by the published k8s.io/<name> releases;
// etcd: go.etcd.io/etcd/server/v3) once, and cached outside the clone in
// <cache root>/<key>/bin. The key hashes the pin modules (go.mod, go.sum, Go
// sources) and the Go toolchain, so a changed pin builds a new directory and an
// unchanged one is reused by every clone and worktree on the host. A build
// goes into a temporary directory that is renamed into place only when every
// binary is there, and builders serialise on a lock file, so a reader never
// sees a half-built set.
package k8sbin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// DefaultCacheRoot is where binaries are cached when Options.CacheRoot and
// $HYPEMAN_K8S_CACHE are empty.
const DefaultCacheRoot = "/var/cache/hypeman/k8s"

// Names of the binaries in a Set's directory.
const (
	Etcd          = "etcd"
	KubeAPIServer = "kube-apiserver"
	KubeScheduler = "kube-scheduler"
	Kubectl       = "kubectl"
)

// pin is one nested module under pins/ and the binaries `go build` makes of it.
type pin struct {
	dir      string   // under the pins directory
	module   string   // the pinned module, recorded in the manifest
	packages []string // arguments to go build
	bins     []string // what the build leaves in the output directory
}

var pins = []pin{
	{dir: "etcd", module: "go.etcd.io/etcd/server/v3", packages: []string{"."}, bins: []string{Etcd}},
	// "tool" is every tool directive of pins/kube/go.mod.
	{dir: "kube", module: "k8s.io/kubernetes", packages: []string{"tool"}, bins: []string{KubeAPIServer, KubeScheduler, Kubectl}},
}

// Options says where the pins are and where the cache is. Zero values pick the
// defaults.
type Options struct {
	// PinsDir holds the pin modules; default: the pins directory next to this
	// package's source (found through the compiled-in file path).
	PinsDir string
	// CacheRoot holds one directory per key; default $HYPEMAN_K8S_CACHE, then
	// DefaultCacheRoot.
	CacheRoot string
	// Go is the go command; default "go" on PATH.
	Go string
	// Log receives build progress; default io.Discard.
	Log io.Writer
}

// Set is a complete, cached set of binaries.
type Set struct {
	Dir      string   // the directory holding the binaries
	Key      string   // the cache key (its parent directory's name)
	Manifest Manifest // how the set was built
}

// Path is the absolute path of the named binary.
func (s Set) Path(name string) string { return filepath.Join(s.Dir, name) }

// Manifest is written next to the binaries as manifest.json.
type Manifest struct {
	Version   int               `json:"version"`
	Key       string            `json:"key"`
	GoVersion string            `json:"go_version"`
	Modules   map[string]string `json:"modules"`       // pin dir → "module version"
	BuildSecs map[string]int    `json:"build_seconds"` // pin dir → wall time of its go build
	BuiltAt   time.Time         `json:"built_at"`
}

const manifestVersion = 1

func (o Options) withDefaults() (Options, error) {
	if o.PinsDir == "" {
		_, file, _, ok := runtime.Caller(0)
		if !ok {
			return o, errors.New("k8sbin: cannot locate the pins directory; set Options.PinsDir")
		}
		o.PinsDir = filepath.Join(filepath.Dir(file), "..", "pins")
	}
	if o.CacheRoot == "" {
		o.CacheRoot = os.Getenv("HYPEMAN_K8S_CACHE")
	}
	if o.CacheRoot == "" {
		o.CacheRoot = DefaultCacheRoot
	}
	if o.Go == "" {
		o.Go = "go"
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return o, nil
}

// Ensure returns the cached set for the current pins, building it first when
// it is missing. A build takes many minutes on a small host; callers that
// cannot wait that long run cmd/k8sbins beforehand.
func Ensure(ctx context.Context, opts Options) (Set, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return Set{}, err
	}
	goVersion, err := output(ctx, o.Go, "", "env", "GOVERSION")
	if err != nil {
		return Set{}, fmt.Errorf("k8sbin: go env GOVERSION: %w", err)
	}
	key, err := Key(o.PinsDir, goVersion)
	if err != nil {
		return Set{}, err
	}
	final := filepath.Join(o.CacheRoot, key)
	if set, err := load(final, key); err == nil {
		return set, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Set{}, err
	}
	if err := os.MkdirAll(o.CacheRoot, 0o755); err != nil {
		return Set{}, fmt.Errorf("k8sbin: cache root: %w", err)
	}
	unlock, err := lock(ctx, filepath.Join(o.CacheRoot, ".lock"))
	if err != nil {
		return Set{}, err
	}
	defer unlock()
	// Another builder may have finished while this one waited for the lock.
	if set, err := load(final, key); err == nil {
		return set, nil
	}
	// Holding the lock, nothing else builds: clear an incomplete set and the
	// temporary directories of builds that were killed.
	stale, _ := filepath.Glob(filepath.Join(o.CacheRoot, ".build-*"))
	for _, dir := range append(stale, final) {
		if err := os.RemoveAll(dir); err != nil {
			return Set{}, fmt.Errorf("k8sbin: %w", err)
		}
	}
	if err := build(ctx, o, key, goVersion, final); err != nil {
		return Set{}, err
	}
	return load(final, key)
}

// Key hashes everything a build depends on: each pin module's go.mod, go.sum
// and Go sources, and the Go toolchain version.
func Key(pinsDir, goVersion string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "go %s %s/%s\n", goVersion, runtime.GOOS, runtime.GOARCH)
	for _, p := range pins {
		dir := filepath.Join(pinsDir, p.dir)
		entries, err := os.ReadDir(dir)
		if err != nil {
			return "", fmt.Errorf("k8sbin: pins: %w", err)
		}
		var names []string
		for _, e := range entries {
			n := e.Name()
			if e.Type().IsRegular() && (n == "go.mod" || n == "go.sum" || strings.HasSuffix(n, ".go")) {
				names = append(names, n)
			}
		}
		slices.Sort(names)
		for _, n := range names {
			b, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil {
				return "", fmt.Errorf("k8sbin: pins: %w", err)
			}
			fmt.Fprintf(h, "%s/%s %d\n", p.dir, n, len(b))
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// load returns the set in dir, or an error wrapping fs.ErrNotExist when it is
// not (completely) there.
func load(dir, key string) (Set, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return Set{}, fmt.Errorf("k8sbin: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Set{}, fmt.Errorf("k8sbin: %s: %w", dir, err)
	}
	if m.Version != manifestVersion {
		return Set{}, fmt.Errorf("k8sbin: %s: manifest version %d, want %d: remove the directory to rebuild", dir, m.Version, manifestVersion)
	}
	set := Set{Dir: filepath.Join(dir, "bin"), Key: key, Manifest: m}
	for _, p := range pins {
		for _, b := range p.bins {
			if _, err := os.Stat(set.Path(b)); err != nil {
				return Set{}, fmt.Errorf("k8sbin: incomplete set %s: %w", dir, err)
			}
		}
	}
	return set, nil
}

// build builds every pin into a temporary directory beside final and renames
// it into place.
func build(ctx context.Context, o Options, key, goVersion, final string) error {
	tmp, err := os.MkdirTemp(o.CacheRoot, ".build-"+key+"-")
	if err != nil {
		return fmt.Errorf("k8sbin: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	bin := filepath.Join(tmp, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		return fmt.Errorf("k8sbin: %w", err)
	}
	m := Manifest{Version: manifestVersion, Key: key, GoVersion: goVersion,
		Modules: map[string]string{}, BuildSecs: map[string]int{}}
	for _, p := range pins {
		dir := filepath.Join(o.PinsDir, p.dir)
		mods, err := output(ctx, o.Go, dir, "list", "-m", "-f", "{{.Path}} {{.Version}}", "all")
		if err != nil {
			return fmt.Errorf("k8sbin: go list -m in %s: %w", dir, err)
		}
		mod := requirement(mods, p.module)
		m.Modules[p.dir] = mod
		fmt.Fprintf(o.Log, "k8sbin: building %s (%s) into %s\n", strings.Join(p.bins, ", "), m.Modules[p.dir], bin)
		start := time.Now()
		args := append([]string{"build", "-o", bin + string(filepath.Separator)}, p.packages...)
		cmd := exec.CommandContext(ctx, o.Go, args...)
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = o.Log, o.Log
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("k8sbin: go build in %s: %w", dir, err)
		}
		m.BuildSecs[p.dir] = int(time.Since(start).Seconds())
		fmt.Fprintf(o.Log, "k8sbin: built %s in %s\n", p.dir, time.Since(start).Round(time.Second))
	}
	m.BuiltAt = time.Now().UTC()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("k8sbin: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "manifest.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("k8sbin: %w", err)
	}
	if err := syncDir(bin); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp makes it 0700
		return fmt.Errorf("k8sbin: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("k8sbin: %w", err)
	}
	return syncDir(o.CacheRoot)
}

// requirement is the "path version" line of module in go list -m all output,
// or "" when the build does not use it.
func requirement(list, module string) string {
	for _, line := range strings.Split(list, "\n") {
		if strings.HasPrefix(line, module+" ") {
			return line
		}
	}
	return ""
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("k8sbin: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("k8sbin: fsync %s: %w", dir, err)
	}
	return nil
}

// lock takes an exclusive flock on path, polling so ctx can cancel the wait.
func lock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("k8sbin: lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("k8sbin: lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("k8sbin: waiting for another build (%s): %w", path, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

func output(ctx context.Context, name, dir string, args ...string) (string, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}
