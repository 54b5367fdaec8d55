package system

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"

	"hypeman/internal/childproc"
)

// DefaultGuestModules returns the modules the hypeman guest needs: the
// virtio-mmio transport (microvm), the memory balloon that holds hotplug
// memory back, block disks, the serial agent channel, networking, the erofs
// image disk under an overlay, ext4 writable disks, and vsock for hosts that
// have vhost-vsock. Built-ins (ext4 on the cloud kernel) are skipped by the
// resolver; dependencies are added by it. The balloon comes right after the
// transport so it inflates while the rest of the guest boots.
func DefaultGuestModules() []string {
	return []string{
		"virtio_mmio", "virtio_balloon", "virtio_blk", "virtio_console", "virtio_net",
		"erofs", "overlay", "ext4",
		"vsock", "vmw_vsock_virtio_transport",
		// ACPI power button → evdev: lets a VMM power-down request reach
		// the guest init as a graceful stop when the agent is unreachable.
		"button", "evdev",
	}
}

// Module is one loadable kernel module file.
type Module struct {
	// Name is the module name, '-' normalized to '_' (e.g. virtio_ring).
	Name string
	// Path is relative to the module tree, as in modules.dep
	// (e.g. kernel/drivers/virtio/virtio_ring.ko, maybe with .xz/.zst/.gz).
	Path string
}

// InitrdPath is where the module lives inside the initrd: decompressed, at
// /lib/modules/<version>/<Path without compression suffix>.
func (m Module) InitrdPath(version string) string {
	return "/" + filepath.Join("lib", "modules", version, stripCompression(m.Path))
}

// UnknownModuleError means a wanted module is neither in modules.dep nor built in.
type UnknownModuleError struct {
	Module        string
	KernelVersion string
}

func (e *UnknownModuleError) Error() string {
	return fmt.Sprintf("kernel %s has no module %q (not in modules.dep, not built in)", e.KernelVersion, e.Module)
}

// ModuleIndex is a parsed modules.dep + modules.builtin of one module tree.
type ModuleIndex struct {
	tree    string
	version string
	paths   map[string]string   // name -> path
	deps    map[string][]string // name -> dependency names, as listed in modules.dep
	builtin map[string]bool
}

// ReadModuleIndex parses <tree>/modules.dep and <tree>/modules.builtin, where
// tree is a lib/modules/<version> dir (Kernel.ModuleTree).
func ReadModuleIndex(tree string) (*ModuleIndex, error) {
	ix := &ModuleIndex{
		tree:    tree,
		version: filepath.Base(tree),
		paths:   map[string]string{},
		deps:    map[string][]string{},
		builtin: map[string]bool{},
	}
	dep, err := os.ReadFile(filepath.Join(tree, "modules.dep"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s (run: depmod -b <dir containing lib/modules> %s)", ErrNoModuleIndex, tree, ix.version)
		}
		return nil, err
	}
	depPaths := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(dep))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for ln := 1; sc.Scan(); ln++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		path, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("%s/modules.dep:%d: no ':' in %q", tree, ln, line)
		}
		path = relModPath(tree, path)
		name := ModuleName(path)
		ix.paths[name] = path
		for _, d := range strings.Fields(rest) {
			depPaths[name] = append(depPaths[name], relModPath(tree, d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s/modules.dep: %w", tree, err)
	}
	for name, ps := range depPaths {
		for _, p := range ps {
			ix.deps[name] = append(ix.deps[name], ModuleName(p))
		}
	}
	if b, err := os.ReadFile(filepath.Join(tree, "modules.builtin")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				ix.builtin[ModuleName(line)] = true
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return ix, nil
}

// Version is the kernel release the index belongs to.
func (ix *ModuleIndex) Version() string { return ix.version }

// IsBuiltin reports whether name is compiled into the kernel.
func (ix *ModuleIndex) IsBuiltin(name string) bool { return ix.builtin[normalizeName(name)] }

// Resolve returns the modules to load for the wanted names, dependencies
// first, each once; built-in modules are skipped. The order of independent
// modules follows the wanted list. Dependencies of one module are visited
// from the end of its modules.dep list, as modprobe does (virtio_ring before
// virtio). An unknown name is an *UnknownModuleError.
func (ix *ModuleIndex) Resolve(names []string) ([]Module, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var out []Module
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("kernel %s: module dependency cycle: %s -> %s", ix.version, strings.Join(chain, " -> "), name)
		}
		path, ok := ix.paths[name]
		if !ok {
			if ix.builtin[name] {
				state[name] = done
				return nil
			}
			return &UnknownModuleError{Module: name, KernelVersion: ix.version}
		}
		state[name] = visiting
		deps := ix.deps[name]
		for i := len(deps) - 1; i >= 0; i-- {
			if err := visit(deps[i], append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = done
		out = append(out, Module{Name: name, Path: path})
		return nil
	}
	for _, n := range names {
		if err := visit(normalizeName(n), nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ReadModule returns the module's ELF bytes, decompressing .ko.xz (with the
// xz tool), .ko.zst and .ko.gz.
func (ix *ModuleIndex) ReadModule(ctx context.Context, m Module) ([]byte, error) {
	raw, err := os.ReadFile(filepath.Join(ix.tree, m.Path))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", m.Name, err)
	}
	return decodeModule(ctx, m.Path, raw)
}

// decodeModule turns a module file's bytes (name tells the compression) into
// the plain ELF object finit_module takes.
func decodeModule(ctx context.Context, name string, raw []byte) ([]byte, error) {
	var data []byte
	var err error
	switch {
	case strings.HasSuffix(name, ".ko"):
		data = raw
	case strings.HasSuffix(name, ".ko.zst"):
		var d *zstd.Decoder
		if d, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1)); err == nil {
			data, err = d.DecodeAll(raw, nil)
			d.Close()
		}
	case strings.HasSuffix(name, ".ko.gz"):
		var z *gzip.Reader
		if z, err = gzip.NewReader(bytes.NewReader(raw)); err == nil {
			data, err = io.ReadAll(z)
		}
	case strings.HasSuffix(name, ".ko.xz"):
		data, err = decompressXZ(ctx, raw)
	default:
		return nil, fmt.Errorf("module %s: unknown file type", name)
	}
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}
	if !bytes.HasPrefix(data, elfMagic) {
		return nil, fmt.Errorf("module %s: not an ELF object", name)
	}
	return data, nil
}

// decompressXZ shells out to xz (Debian xz-utils, installed by setup): the Go
// module set has no xz decoder, and Debian 12 modules are not compressed.
func decompressXZ(ctx context.Context, raw []byte) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := childproc.CommandContext(ctx, "xz", "-dc")
	cmd.Stdin = bytes.NewReader(raw)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("xz -dc: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// ModuleName is the module name of a module file path: base name without
// .ko[.xz|.zst|.gz], '-' normalized to '_'.
func ModuleName(path string) string {
	return normalizeName(strings.TrimSuffix(stripCompression(filepath.Base(path)), ".ko"))
}

func normalizeName(n string) string {
	return strings.ReplaceAll(strings.TrimSuffix(n, ".ko"), "-", "_")
}

func stripCompression(p string) string {
	for _, s := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(p, ".ko"+s) {
			return strings.TrimSuffix(p, s)
		}
	}
	return p
}

// relModPath makes a modules.dep path relative to the tree (old depmod
// versions wrote absolute paths).
func relModPath(tree, p string) string {
	if filepath.IsAbs(p) {
		if r, err := filepath.Rel(tree, p); err == nil && !strings.HasPrefix(r, "..") {
			return r
		}
		if i := strings.Index(p, "/lib/modules/"); i >= 0 {
			rest := p[i+len("/lib/modules/"):]
			if _, after, ok := strings.Cut(rest, "/"); ok {
				return after
			}
		}
	}
	return p
}
