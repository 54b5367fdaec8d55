package system

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func readInitrd(t *testing.T, path string) map[string]cpioEntry {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := readCPIO(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]cpioEntry{}
	seen := map[string]bool{}
	for _, e := range ents {
		if d := filepath.Dir(e.Name); d != "." && !seen[d] {
			t.Fatalf("%s comes before its parent dir %s", e.Name, d)
		}
		seen[e.Name] = true
		out["/"+e.Name] = e
	}
	return out
}

func fakeInit(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "init")
	writeFile(t, p, []byte("\x7fELF fake init "+content))
	return p
}

func TestBuildInitrdContents(t *testing.T) {
	k, err := LoadKernel(installFakeKernel(t))
	if err != nil {
		t.Fatal(err)
	}
	initPath := fakeInit(t, "v1")
	cache := t.TempDir()
	out, err := BuildInitrd(context.Background(), InitrdSpec{InitBinary: initPath, Kernel: k}, cache)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(out) != cache || !strings.HasSuffix(out, ".cpio") || len(filepath.Base(out)) != 64+5 {
		t.Fatalf("unexpected cache path %s", out)
	}
	files := readInitrd(t, out)

	initB, _ := os.ReadFile(initPath)
	if e := files["/init"]; e.Mode != modeReg|0o755 || !bytes.Equal(e.Data, initB) {
		t.Fatalf("/init: mode %o, %d bytes", e.Mode, len(e.Data))
	}
	if e := files["/dev/console"]; e.Mode != modeChr|0o600 || e.RdevMajor != 5 || e.RdevMinor != 1 {
		t.Fatalf("/dev/console = %+v", e)
	}
	for _, d := range []string{"/proc", "/sys", "/tmp", "/etc/hypeman", "/lib/modules/" + fixtureVersion + "/kernel/fs/erofs"} {
		if files[d].Mode&modeType != modeDir {
			t.Fatalf("%s is not a dir in the initrd", d)
		}
	}
	list := files[ModulesListPath]
	lines := strings.Split(strings.TrimSuffix(string(list.Data), "\n"), "\n")
	wantMods, _ := InitrdSpec{Kernel: k}.ResolveModules()
	if len(lines) != len(wantMods) || len(lines) != 17 {
		t.Fatalf("modules.list has %d lines, want %d:\n%s", len(lines), len(wantMods), list.Data)
	}
	for i, m := range wantMods {
		if lines[i] != m.InitrdPath(fixtureVersion) {
			t.Fatalf("modules.list line %d = %q, want %q", i, lines[i], m.InitrdPath(fixtureVersion))
		}
		e, ok := files[lines[i]]
		if !ok {
			t.Fatalf("%s listed but not in the initrd", lines[i])
		}
		if !bytes.Equal(e.Data, fakeModule(m.Name)) { // decompressed
			t.Fatalf("%s: content %q is not the decompressed module", lines[i], e.Data)
		}
	}
	if !bytes.Contains(readFileT(t, filepath.Join(k.ModuleTree(), "kernel/drivers/block/virtio_blk.ko")), []byte(moduleSigMarker)) {
		t.Fatal("fixture virtio_blk.ko should be signed")
	}
	if lines[0] != "/lib/modules/"+fixtureVersion+"/kernel/drivers/virtio/virtio_ring.ko" ||
		!strings.HasSuffix(lines[10], "/kernel/fs/erofs/erofs.ko") || !strings.HasSuffix(lines[9], "/libcrc32c.ko") {
		t.Fatalf("unexpected list order/paths:\n%s", list.Data)
	}
}

func readFileT(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Signatures stay when asked, and when the kernel forces signed modules or
// its config is unknown.
func TestBuildInitrdKeepsSignatures(t *testing.T) {
	ctx := context.Background()
	k, err := LoadKernel(installFakeKernel(t))
	if err != nil {
		t.Fatal(err)
	}
	blk := "/lib/modules/" + fixtureVersion + "/kernel/drivers/block/virtio_blk.ko"
	signed := fakeSign(fakeModule("virtio_blk"))
	initPath := fakeInit(t, "x")
	cache := t.TempDir()
	check := func(what string, spec InitrdSpec, wantSigned bool) string {
		t.Helper()
		p, err := BuildInitrd(ctx, spec, cache)
		if err != nil {
			t.Fatal(err)
		}
		got := readInitrd(t, p)[blk].Data
		if wantSigned != bytes.Equal(got, signed) || (!wantSigned && !bytes.Equal(got, fakeModule("virtio_blk"))) {
			t.Fatalf("%s: virtio_blk.ko = %q (want signed=%v)", what, got, wantSigned)
		}
		return p
	}
	stripped := check("default", InitrdSpec{InitBinary: initPath, Kernel: k}, false)
	kept := check("KeepSignatures", InitrdSpec{InitBinary: initPath, Kernel: k, KeepSignatures: true}, true)
	if stripped == kept {
		t.Fatal("stripped and signed initrds share a cache key")
	}
	noCfg := *k
	noCfg.ConfigPath = ""
	check("unknown config", InitrdSpec{InitBinary: initPath, Kernel: &noCfg}, true)
	writeFile(t, k.ConfigPath, []byte("CONFIG_PVH=y\nCONFIG_MODULE_SIG_FORCE=y\n"))
	check("SIG_FORCE", InitrdSpec{InitBinary: initPath, Kernel: k}, true)
}

func TestBuildInitrdDeterministicAndCached(t *testing.T) {
	ctx := context.Background()
	kdir := installFakeKernel(t)
	k, err := LoadKernel(kdir)
	if err != nil {
		t.Fatal(err)
	}
	initPath := fakeInit(t, "v1")
	spec := InitrdSpec{InitBinary: initPath, Kernel: k}

	cacheA, cacheB := t.TempDir(), t.TempDir()
	a, err := BuildInitrd(ctx, spec, cacheA)
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildInitrd(ctx, spec, cacheB)
	if err != nil {
		t.Fatal(err)
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if filepath.Base(a) != filepath.Base(b) || !bytes.Equal(ab, bb) {
		t.Fatal("same inputs gave different initrds")
	}

	// Cache hit: same path, file not rewritten.
	st1, _ := os.Stat(a)
	a2, err := BuildInitrd(ctx, spec, cacheA)
	if err != nil || a2 != a {
		t.Fatalf("cache hit returned %s, %v (want %s)", a2, err, a)
	}
	st2, _ := os.Stat(a2)
	if !os.SameFile(st1, st2) {
		t.Fatal("cache hit rewrote the file")
	}

	// Changed init binary: new entry, old one left alone.
	writeFile(t, initPath, []byte("\x7fELF fake init v2"))
	c, err := BuildInitrd(ctx, spec, cacheA)
	if err != nil || c == a {
		t.Fatalf("changed init gave %s, %v (old %s)", c, err, a)
	}
	if got := readInitrd(t, c)["/init"].Data; string(got) != "\x7fELF fake init v2" {
		t.Fatalf("rebuilt initrd has old init %q", got)
	}
	if _, err := os.Stat(a); err != nil {
		t.Fatalf("old initrd removed: %v", err)
	}

	// Changed module content (compressed one): new entry.
	modPath := filepath.Join(k.ModuleTree(), "kernel/fs/overlayfs/overlay.ko.gz")
	var gz bytes.Buffer
	{
		raw, _ := os.ReadFile(modPath)
		gz.Write(raw)
		gz.Write(raw) // a second gzip member: same module, different file bytes
	}
	writeFile(t, modPath, gz.Bytes())
	d, err := BuildInitrd(ctx, spec, cacheA)
	if err != nil || d == c {
		t.Fatalf("changed module gave %s, %v (old %s)", d, err, c)
	}

	// Changed module list: new entry with only what was asked.
	spec.Modules = []string{"virtio_blk"}
	e, err := BuildInitrd(ctx, spec, cacheA)
	if err != nil || e == d {
		t.Fatalf("changed list gave %s, %v", e, err)
	}
	list := string(readInitrd(t, e)[ModulesListPath].Data)
	if strings.Count(list, "\n") != 3 || !strings.HasSuffix(list, "virtio_blk.ko\n") {
		t.Fatalf("list for virtio_blk:\n%s", list)
	}
	ents, _ := os.ReadDir(cacheA)
	if len(ents) != 4 {
		t.Fatalf("cache has %d entries, want 4 (temp files left?)", len(ents))
	}
}

func TestBuildInitrdErrors(t *testing.T) {
	ctx := context.Background()
	k, err := LoadKernel(installFakeKernel(t))
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	_, err = BuildInitrd(ctx, InitrdSpec{InitBinary: fakeInit(t, "x"), Kernel: k, Modules: []string{"virtio", "bogus"}}, cache)
	var ue *UnknownModuleError
	if !errors.As(err, &ue) || ue.Module != "bogus" {
		t.Fatalf("want UnknownModuleError, got %v", err)
	}
	if _, err := BuildInitrd(ctx, InitrdSpec{InitBinary: filepath.Join(cache, "missing"), Kernel: k}, cache); err == nil {
		t.Fatal("missing init binary accepted")
	}
	if _, err := BuildInitrd(ctx, InitrdSpec{InitBinary: fakeInit(t, "x")}, cache); err == nil {
		t.Fatal("nil kernel accepted")
	}
	// A kernel without modules: an initrd with just the init, unless modules are asked for.
	noMods := &Kernel{Version: "x", VmlinuxPath: k.VmlinuxPath}
	p, err := BuildInitrd(ctx, InitrdSpec{InitBinary: fakeInit(t, "x"), Kernel: noMods}, cache)
	if err != nil {
		t.Fatal(err)
	}
	if l := readInitrd(t, p)[ModulesListPath]; len(l.Data) != 0 || l.Mode != modeReg|0o644 {
		t.Fatalf("module-less initrd list = %q", l.Data)
	}
	if _, err := BuildInitrd(ctx, InitrdSpec{InitBinary: fakeInit(t, "x"), Kernel: noMods, Modules: []string{"virtio"}}, cache); err == nil {
		t.Fatal("modules wanted from a module-less kernel: no error")
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 1 {
		t.Fatalf("failed builds left %d files in the cache", len(ents))
	}
}

func TestPruneInitrds(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for i, name := range []string{"a", "b", "c", "d"} {
		p := filepath.Join(dir, name+".cpio")
		writeFile(t, p, []byte(name))
		mt := time.Unix(1700000000+int64(i)*10, 0) // a oldest, d newest
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	writeFile(t, filepath.Join(dir, "other.txt"), []byte("keep"))
	removed, err := PruneInitrds(dir, []string{paths[0]}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(removed, ",") != paths[2]+","+paths[1] {
		t.Fatalf("removed %v", removed)
	}
	for _, p := range []string{paths[0], paths[3], filepath.Join(dir, "other.txt")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s pruned: %v", p, err)
		}
	}
	if r, err := PruneInitrds(filepath.Join(dir, "none"), nil, 0); err != nil || r != nil {
		t.Fatalf("missing dir: %v %v", r, err)
	}
}
