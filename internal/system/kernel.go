// Package system owns the guest's boot artifacts: the kernel (image + module
// tree) and the initrd that carries the guest init and the kernel modules it
// must load.
//
// Why it is shaped this way:
//   - The kernel is a Debian cloud kernel fetched by scripts/setup.sh into
//     <data>/system/kernel/<version>/ with a `current` symlink, so a kernel
//     upgrade is one atomic symlink switch and running VMs keep their files.
//     A non-Debian host points the config at its own image + modules instead
//     (KernelFromPaths); both paths produce the same Kernel value.
//   - Debian builds virtio, erofs, overlay and vsock as modules, so the guest
//     cannot mount its disks without them. The initrd carries exactly the
//     modules the guest needs, resolved from modules.dep in dependency order
//     and decompressed, plus a plain list file, so the guest init needs no
//     modprobe, no depmod database and no decompressor: it reads the list and
//     calls finit_module on each path in order.
//   - The initrd is written by our own tiny cpio "newc" writer (no tool, no
//     dependency), deterministically, and cached under its content hash: the
//     same inputs always give the same bytes and the same path, a changed init
//     binary or module gives a new file, and a file a VM was started with is
//     never overwritten (standby/restore re-reads it).
package system

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ErrKernelNotFound means no usable guest kernel was found where configured.
var ErrKernelNotFound = errors.New("guest kernel not found")

// ErrNoModuleIndex means a module tree has no modules.dep (depmod never ran).
var ErrNoModuleIndex = errors.New("kernel module tree has no modules.dep")

// kernelHint tells the user how to get a kernel; part of every ErrKernelNotFound.
const kernelHint = "run `make setup` (scripts/setup.sh) to fetch the Debian cloud kernel, " +
	"or set the kernel image path and modules dir in the config"

// Kernel is a guest kernel: a bootable image plus its module tree.
type Kernel struct {
	// Version is the kernel release (uname -r), e.g. 6.1.0-56-cloud-amd64.
	Version string
	// VmlinuxPath is the uncompressed ELF kernel QEMU boots via PVH.
	// Empty when only a bzImage was configured.
	VmlinuxPath string
	// VmlinuzPath is the compressed bzImage. May be empty.
	VmlinuzPath string
	// ModulesDir contains lib/modules/<Version>/. Empty for a kernel
	// configured without modules (everything built in).
	ModulesDir string
	// ConfigPath is the kernel build config, when known.
	ConfigPath string
}

// BootImage is the image to hand to the VMM: the PVH ELF when present (much
// faster under TCG: no in-guest decompression), else the bzImage.
func (k *Kernel) BootImage() string {
	if k.VmlinuxPath != "" {
		return k.VmlinuxPath
	}
	return k.VmlinuzPath
}

// ModuleTree is lib/modules/<Version> under ModulesDir, or "" without modules.
func (k *Kernel) ModuleTree() string {
	if k.ModulesDir == "" {
		return ""
	}
	return filepath.Join(k.ModulesDir, "lib", "modules", k.Version)
}

// LoadKernel reads a kernel installed by scripts/setup.sh. dir is either the
// kernel dir holding a `current` symlink (the normal case) or one version dir
// (holding vmlinux, vmlinuz, config, modules/lib/modules/<version>/).
func LoadKernel(dir string) (*Kernel, error) {
	vdir := dir
	if _, err := os.Lstat(filepath.Join(dir, "current")); err == nil {
		vdir = filepath.Join(dir, "current")
	}
	resolved, err := filepath.EvalSymlinks(vdir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v; %s", ErrKernelNotFound, vdir, err, kernelHint)
	}
	vmlinux := filepath.Join(resolved, "vmlinux")
	if _, err := os.Stat(vmlinux); err != nil {
		return nil, fmt.Errorf("%w: no vmlinux in %s; %s", ErrKernelNotFound, vdir, kernelHint)
	}
	if err := checkMagic(vmlinux, 0, elfMagic); err != nil {
		return nil, err
	}
	k := &Kernel{VmlinuxPath: vmlinux}
	if p := filepath.Join(resolved, "vmlinuz"); fileExists(p) {
		k.VmlinuzPath = p
	}
	if p := filepath.Join(resolved, "config"); fileExists(p) {
		k.ConfigPath = p
	}
	mods := filepath.Join(resolved, "modules")
	if ver, err := singleVersion(filepath.Join(mods, "lib", "modules")); err == nil {
		k.ModulesDir, k.Version = mods, ver
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("kernel %s: %w", resolved, err)
	} else {
		k.Version = filepath.Base(resolved)
	}
	return k, nil
}

// KernelFromPaths describes a kernel configured by explicit paths (a host that
// is not Debian, or a custom kernel). imagePath is an uncompressed ELF vmlinux
// (preferred) or a bzImage. modulesDir is either a dir containing
// lib/modules/<version>/ or such a version dir itself (e.g. /lib/modules/$(uname -r));
// it may be "" for a kernel with everything built in, in which case the
// version is read from the image.
func KernelFromPaths(imagePath, modulesDir string) (*Kernel, error) {
	if _, err := os.Stat(imagePath); err != nil {
		return nil, fmt.Errorf("%w: kernel image %s: %v; %s", ErrKernelNotFound, imagePath, err, kernelHint)
	}
	k := &Kernel{}
	switch {
	case checkMagic(imagePath, 0, elfMagic) == nil:
		k.VmlinuxPath = imagePath
	case checkMagic(imagePath, 0x202, []byte("HdrS")) == nil:
		k.VmlinuzPath = imagePath
	default:
		return nil, fmt.Errorf("kernel image %s: neither an ELF vmlinux nor a bzImage", imagePath)
	}
	if modulesDir != "" {
		if fileExists(filepath.Join(modulesDir, "modules.dep")) || dirExists(filepath.Join(modulesDir, "kernel")) {
			// A version dir itself: <base>/lib/modules/<version>.
			k.Version = filepath.Base(modulesDir)
			base := filepath.Dir(filepath.Dir(filepath.Dir(modulesDir)))
			if filepath.Join(base, "lib", "modules", k.Version) != filepath.Clean(modulesDir) {
				return nil, fmt.Errorf("modules dir %s: expected a path ending in lib/modules/<version>", modulesDir)
			}
			k.ModulesDir = base
		} else {
			ver, err := singleVersion(filepath.Join(modulesDir, "lib", "modules"))
			if err != nil {
				return nil, fmt.Errorf("%w: modules dir %s: %v; %s", ErrKernelNotFound, modulesDir, err, kernelHint)
			}
			k.ModulesDir, k.Version = modulesDir, ver
		}
		return k, nil
	}
	ver, err := imageVersion(imagePath)
	if err != nil {
		return nil, err
	}
	k.Version = ver
	return k, nil
}

var elfMagic = []byte{0x7f, 'E', 'L', 'F'}

func checkMagic(path string, off int64, magic []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, len(magic))
	if _, err := f.ReadAt(buf, off); err != nil || !bytes.Equal(buf, magic) {
		return fmt.Errorf("%s: bad magic %x at %#x (want %x)", path, buf, off, magic)
	}
	return nil
}

// singleVersion returns the only version dir under a lib/modules dir.
func singleVersion(libModules string) (string, error) {
	ents, err := os.ReadDir(libModules)
	if err != nil {
		return "", err
	}
	var vers []string
	for _, e := range ents {
		if e.IsDir() {
			vers = append(vers, e.Name())
		}
	}
	if len(vers) != 1 {
		return "", fmt.Errorf("%s: want exactly one kernel version dir, found %d %v", libModules, len(vers), vers)
	}
	return vers[0], nil
}

// imageVersion reads the kernel release from a bzImage header (the
// kernel_version string pointed to at 0x20e) or, for an ELF, from the
// "Linux version <release> " banner.
func imageVersion(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if checkMagic(path, 0x202, []byte("HdrS")) == nil {
		var p [2]byte
		if _, err := f.ReadAt(p[:], 0x20e); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		off := int64(p[0]) | int64(p[1])<<8
		s := make([]byte, 256)
		n, _ := f.ReadAt(s, off+0x200)
		if ver, _, ok := strings.Cut(string(s[:n]), " "); ok && ver != "" {
			return ver, nil
		}
		return "", fmt.Errorf("%s: bzImage has no kernel_version string", path)
	}
	const banner = "Linux version "
	buf := make([]byte, 1<<20)
	var carry []byte
	for {
		n, err := f.Read(buf)
		chunk := append(carry, buf[:n]...)
		if i := bytes.Index(chunk, []byte(banner)); i >= 0 && len(chunk)-i > len(banner)+64 {
			rest := chunk[i+len(banner):]
			if j := bytes.IndexByte(rest, ' '); j > 0 {
				return string(rest[:j]), nil
			}
		}
		if len(chunk) > 512 {
			carry = append([]byte(nil), chunk[len(chunk)-512:]...)
		} else {
			carry = chunk
		}
		if err == io.EOF {
			return "", fmt.Errorf("%s: no %q banner; give a modules dir so the version is known", path, banner)
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
	}
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
