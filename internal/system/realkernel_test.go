package system

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hypeman/internal/paths"
	"hypeman/internal/testutil/tier"
)

// realKernelDir is where scripts/setup.sh installs the guest kernel.
func realKernelDir() string {
	if d := os.Getenv("HYPEMAN_KERNEL_DIR"); d != "" {
		return d
	}
	root := os.Getenv("HYPEMAN_DATA_DIR")
	if root == "" {
		root = "/var/lib/hypeman"
	}
	return paths.New(root).KernelDir()
}

// TestRealKernelInitrd loads the kernel installed by scripts/setup.sh and
// builds an initrd with the real guest modules from it.
func TestRealKernelInitrd(t *testing.T) {
	dir := realKernelDir()
	k, err := LoadKernel(dir)
	if err != nil {
		tier.Missing(t, "no guest kernel in %s: run scripts/setup.sh (or make setup) first: %v", dir, err)
	}
	if k.VmlinuzPath == "" || k.ModulesDir == "" || k.ConfigPath == "" {
		t.Fatalf("incomplete kernel install %+v: re-run scripts/setup.sh", k)
	}
	// The bzImage header must name the same release as the module tree.
	fromImage, err := KernelFromPaths(k.VmlinuzPath, "")
	if err != nil || fromImage.Version != k.Version {
		t.Fatalf("bzImage version %+v, %v; module tree says %s", fromImage, err, k.Version)
	}
	if fromELF, err := KernelFromPaths(k.VmlinuxPath, ""); err != nil || fromELF.Version != k.Version {
		t.Fatalf("vmlinux banner version %+v, %v; module tree says %s", fromELF, err, k.Version)
	}
	cfg, err := os.ReadFile(k.ConfigPath)
	if err != nil || !bytes.Contains(cfg, []byte("\nCONFIG_PVH=y\n")) {
		t.Fatalf("kernel config lacks CONFIG_PVH=y (needed for the PVH vmlinux boot): %v", err)
	}

	ix, err := ReadModuleIndex(k.ModuleTree())
	if err != nil {
		t.Fatal(err)
	}
	mods, err := ix.Resolve(DefaultGuestModules())
	if err != nil {
		t.Fatal(err)
	}
	got := names(mods)
	t.Logf("kernel %s, load order: %s", k.Version, strings.Join(got, " "))
	pos := map[string]int{}
	for i, n := range got {
		pos[n] = i
	}
	for _, want := range DefaultGuestModules() {
		if _, ok := pos[want]; !ok && !ix.IsBuiltin(want) {
			t.Fatalf("%s neither loaded nor built in", want)
		}
	}
	if pos["virtio_ring"] > pos["virtio"] || pos["virtio"] > pos["virtio_mmio"] {
		t.Fatalf("virtio_ring, virtio, virtio_mmio out of order: %v", got)
	}

	init := filepath.Join(t.TempDir(), "init")
	writeFile(t, init, []byte("\x7fELF stand-in init"))
	cache := t.TempDir()
	start := time.Now()
	out, err := BuildInitrd(context.Background(), InitrdSpec{InitBinary: init, Kernel: k}, cache)
	if err != nil {
		t.Fatal(err)
	}
	built := time.Since(start)
	start = time.Now()
	if again, err := BuildInitrd(context.Background(), InitrdSpec{InitBinary: init, Kernel: k}, cache); err != nil || again != out {
		t.Fatalf("cache hit: %s, %v", again, err)
	}
	st, _ := os.Stat(out)
	t.Logf("initrd %d bytes (%d modules): build %v, cache hit %v", st.Size(), len(mods), built, time.Since(start))

	files := readInitrd(t, out)
	lines := strings.Fields(string(files[ModulesListPath].Data))
	if len(lines) != len(mods) {
		t.Fatalf("modules.list has %d entries, want %d", len(lines), len(mods))
	}
	for i, l := range lines {
		e := files[l]
		if !bytes.HasPrefix(e.Data, elfMagic) {
			t.Fatalf("%s missing or not ELF in the initrd", l)
		}
		orig, err := ix.ReadModule(context.Background(), mods[i])
		if err != nil || !bytes.Equal(stripModuleSignature(orig), e.Data) || len(orig) == len(e.Data) {
			t.Fatalf("%s is not the kernel's module file minus its signature (%v)", l, err)
		}
	}
}
