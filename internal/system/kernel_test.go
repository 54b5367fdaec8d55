package system

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func fakeVmlinux(version string) []byte {
	b := append([]byte{0x7f, 'E', 'L', 'F'}, make([]byte, 3<<20)...) // banner past the first read chunk
	b = append(b, []byte("Linux version "+version+" (builder@example) #1 SMP "+strings.Repeat(" ", 80))...)
	return b
}

// fakeBzImage has just enough of the x86 boot header for version detection.
func fakeBzImage(version string) []byte {
	b := make([]byte, 0x1000)
	copy(b[0x202:], "HdrS")
	off := 0x300
	b[0x20e], b[0x20f] = byte(off), byte(off>>8)
	copy(b[off+0x200:], version+" (builder@example) #1 SMP\x00")
	return b
}

// installFakeKernel lays out a kernel dir like scripts/setup.sh does.
func installFakeKernel(t *testing.T) (kdir string) {
	t.Helper()
	kdir = t.TempDir()
	vdir := filepath.Join(kdir, fixtureVersion)
	writeFile(t, filepath.Join(vdir, "vmlinux"), fakeVmlinux(fixtureVersion))
	writeFile(t, filepath.Join(vdir, "vmlinuz"), fakeBzImage(fixtureVersion))
	writeFile(t, filepath.Join(vdir, "config"), []byte("CONFIG_PVH=y\n"))
	base := makeModuleTree(t)
	if err := os.Rename(base, filepath.Join(vdir, "modules")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(fixtureVersion, filepath.Join(kdir, "current")); err != nil {
		t.Fatal(err)
	}
	return kdir
}

func TestLoadKernel(t *testing.T) {
	kdir := installFakeKernel(t)
	vdir := filepath.Join(kdir, fixtureVersion)
	for _, dir := range []string{kdir, vdir, filepath.Join(kdir, "current")} {
		k, err := LoadKernel(dir)
		if err != nil {
			t.Fatalf("LoadKernel(%s): %v", dir, err)
		}
		if k.Version != fixtureVersion || k.VmlinuxPath != filepath.Join(vdir, "vmlinux") ||
			k.VmlinuzPath != filepath.Join(vdir, "vmlinuz") || k.ConfigPath != filepath.Join(vdir, "config") ||
			k.ModulesDir != filepath.Join(vdir, "modules") || k.BootImage() != k.VmlinuxPath {
			t.Fatalf("LoadKernel(%s) = %+v", dir, k)
		}
		if k.ModuleTree() != filepath.Join(vdir, "modules", "lib", "modules", fixtureVersion) {
			t.Fatalf("ModuleTree = %s", k.ModuleTree())
		}
	}
}

func TestLoadKernelMissing(t *testing.T) {
	empty := t.TempDir()
	for _, dir := range []string{empty, filepath.Join(empty, "nope")} {
		_, err := LoadKernel(dir)
		if !errors.Is(err, ErrKernelNotFound) {
			t.Fatalf("LoadKernel(%s): want ErrKernelNotFound, got %v", dir, err)
		}
		if !strings.Contains(err.Error(), "make setup") || !strings.Contains(err.Error(), "config") {
			t.Fatalf("error does not tell the user what to do: %v", err)
		}
	}
	// Dangling current symlink (half-removed install).
	if err := os.Symlink("gone", filepath.Join(empty, "current")); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKernel(empty); !errors.Is(err, ErrKernelNotFound) {
		t.Fatalf("dangling current: want ErrKernelNotFound, got %v", err)
	}
	// A vmlinux that is not an ELF is a different error.
	bad := t.TempDir()
	writeFile(t, filepath.Join(bad, "vmlinux"), []byte("MZ not an elf"))
	if _, err := LoadKernel(bad); err == nil || errors.Is(err, ErrKernelNotFound) {
		t.Fatalf("non-ELF vmlinux: want a magic error, got %v", err)
	}
}

func TestKernelFromPaths(t *testing.T) {
	kdir := installFakeKernel(t)
	vdir := filepath.Join(kdir, fixtureVersion)
	mods := filepath.Join(vdir, "modules")

	k, err := KernelFromPaths(filepath.Join(vdir, "vmlinux"), mods)
	if err != nil || k.Version != fixtureVersion || k.VmlinuxPath == "" || k.VmlinuzPath != "" || k.ModulesDir != mods {
		t.Fatalf("ELF + base modules dir: %+v, %v", k, err)
	}
	// A lib/modules/<version> dir given directly (like /lib/modules/$(uname -r)).
	k, err = KernelFromPaths(filepath.Join(vdir, "vmlinuz"), filepath.Join(mods, "lib", "modules", fixtureVersion))
	if err != nil || k.Version != fixtureVersion || k.VmlinuzPath == "" || k.BootImage() != k.VmlinuzPath || k.ModulesDir != mods {
		t.Fatalf("bzImage + version dir: %+v, %v", k, err)
	}
	// No modules: version from the image.
	for _, img := range []string{"vmlinux", "vmlinuz"} {
		k, err = KernelFromPaths(filepath.Join(vdir, img), "")
		if err != nil || k.Version != fixtureVersion || k.ModuleTree() != "" {
			t.Fatalf("%s without modules: %+v, %v", img, k, err)
		}
	}
	if _, err := KernelFromPaths(filepath.Join(vdir, "missing"), mods); !errors.Is(err, ErrKernelNotFound) {
		t.Fatalf("missing image: want ErrKernelNotFound, got %v", err)
	}
	if _, err := KernelFromPaths(filepath.Join(vdir, "config"), mods); err == nil {
		t.Fatal("a text file accepted as kernel image")
	}
	if _, err := KernelFromPaths(filepath.Join(vdir, "vmlinux"), t.TempDir()); !errors.Is(err, ErrKernelNotFound) {
		t.Fatalf("empty modules dir: want ErrKernelNotFound, got %v", err)
	}
}
