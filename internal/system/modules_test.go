package system

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"hypeman/internal/testutil/tier"
)

const fixtureVersion = "6.0.0-test"

func fixtureTree() string {
	return filepath.Join("testdata", "modtree", "lib", "modules", fixtureVersion)
}

func names(mods []Module) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Name)
	}
	return out
}

func TestResolveDefaultModulesOrder(t *testing.T) {
	ix, err := ReadModuleIndex(fixtureTree())
	if err != nil {
		t.Fatal(err)
	}
	mods, err := ix.Resolve(DefaultGuestModules())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"virtio_ring", "virtio", "virtio_mmio", "virtio_balloon", "virtio_blk", "virtio_console",
		"failover", "net_failover", "virtio_net", "libcrc32c", "erofs", "overlay",
		"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
		"button", "evdev",
	}
	if got := names(mods); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("load order:\n got %v\nwant %v", got, want)
	}
	if !ix.IsBuiltin("ext4") || ix.IsBuiltin("virtio") {
		t.Fatalf("builtin detection wrong: ext4=%v virtio=%v", ix.IsBuiltin("ext4"), ix.IsBuiltin("virtio"))
	}
	if mods[10].Path != "kernel/fs/erofs/erofs.ko.zst" {
		t.Fatalf("erofs path = %q", mods[10].Path)
	}
}

// Whatever order the names are asked in, every module comes after all of its
// modules.dep dependencies, and nothing appears twice.
func TestResolveDepsAlwaysFirst(t *testing.T) {
	ix, err := ReadModuleIndex(fixtureTree())
	if err != nil {
		t.Fatal(err)
	}
	asks := [][]string{
		{"virtio", "virtio_net"},
		{"vmw_vsock_virtio_transport", "vsock", "virtio_ring"},
		{"erofs", "libcrc32c", "erofs"},
		{"virtio_net", "virtio_mmio", "virtio_console"},
	}
	for _, ask := range asks {
		mods, err := ix.Resolve(ask)
		if err != nil {
			t.Fatalf("%v: %v", ask, err)
		}
		pos := map[string]int{}
		for i, m := range mods {
			if _, dup := pos[m.Name]; dup {
				t.Fatalf("%v: %s twice in %v", ask, m.Name, names(mods))
			}
			pos[m.Name] = i
		}
		for i, m := range mods {
			for _, d := range ix.deps[m.Name] {
				if j, ok := pos[d]; !ok || j > i {
					t.Fatalf("%v: %s (at %d) loaded before its dependency %s in %v", ask, m.Name, i, d, names(mods))
				}
			}
		}
		for _, a := range ask {
			if _, ok := pos[a]; !ok {
				t.Fatalf("%v: wanted %s missing from %v", ask, a, names(mods))
			}
		}
	}
}

func TestResolveNamesAndErrors(t *testing.T) {
	ix, err := ReadModuleIndex(fixtureTree())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"dash-name", "dash_name", "dash-name.ko"} {
		mods, err := ix.Resolve([]string{n})
		if err != nil || len(mods) != 1 || mods[0].Name != "dash_name" || mods[0].Path != "kernel/drivers/test/dash-name.ko" {
			t.Fatalf("Resolve(%q) = %v, %v", n, mods, err)
		}
	}
	if mods, err := ix.Resolve([]string{"ext4"}); err != nil || len(mods) != 0 {
		t.Fatalf("built-in ext4 should resolve to nothing: %v, %v", mods, err)
	}

	_, err = ix.Resolve([]string{"virtio_blk", "no_such_mod"})
	var ue *UnknownModuleError
	if !errors.As(err, &ue) || ue.Module != "no_such_mod" || ue.KernelVersion != fixtureVersion {
		t.Fatalf("want UnknownModuleError for no_such_mod, got %v", err)
	}
	if _, err := ix.Resolve([]string{"cyc_a"}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("want cycle error, got %v", err)
	}
	if _, err := ReadModuleIndex(t.TempDir()); !errors.Is(err, ErrNoModuleIndex) {
		t.Fatalf("want ErrNoModuleIndex, got %v", err)
	}
}

func TestModuleNames(t *testing.T) {
	cases := map[string]string{
		"kernel/a/virtio-ring.ko":       "virtio_ring",
		"kernel/a/erofs.ko.zst":         "erofs",
		"kernel/a/x.ko.xz":              "x",
		"/lib/modules/v/kernel/y.ko":    "y",
		"kernel/a/overlay.ko.gz":        "overlay",
		"kernel/crypto/crc32c-intel.ko": "crc32c_intel",
	}
	for in, want := range cases {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
	m := Module{Name: "erofs", Path: "kernel/fs/erofs/erofs.ko.zst"}
	if got := m.InitrdPath("6.1"); got != "/lib/modules/6.1/kernel/fs/erofs/erofs.ko" {
		t.Fatalf("InitrdPath = %q", got)
	}
	if got := relModPath("/x/lib/modules/v", "/lib/modules/v/kernel/a.ko"); got != "kernel/a.ko" {
		t.Fatalf("relModPath = %q", got)
	}
}

func TestDecodeCompressedModules(t *testing.T) {
	ctx := context.Background()
	elf := append([]byte{0x7f, 'E', 'L', 'F'}, bytes.Repeat([]byte("module body "), 100)...)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(elf)
	zw.Close()
	enc, _ := zstd.NewWriter(nil)
	zst := enc.EncodeAll(elf, nil)
	enc.Close()
	xzData := xzCompress(t, elf)
	for name, raw := range map[string][]byte{"a.ko": elf, "a.ko.gz": gz.Bytes(), "a.ko.zst": zst, "a.ko.xz": xzData} {
		got, err := decodeModule(ctx, name, raw)
		if err != nil || !bytes.Equal(got, elf) {
			t.Fatalf("%s: decode mismatch (err %v)", name, err)
		}
	}
	if _, err := decodeModule(ctx, "a.ko", []byte("not elf")); err == nil {
		t.Fatal("non-ELF module accepted")
	}
	if _, err := decodeModule(ctx, "a.ko.zst", []byte("garbage")); err == nil {
		t.Fatal("corrupt zstd accepted")
	}
	if _, err := decodeModule(ctx, "a.ko.bz2", elf); err == nil {
		t.Fatal("unknown compression accepted")
	}
}

func xzCompress(t *testing.T, data []byte) []byte {
	t.Helper()
	tier.Tools(t, "xz")
	cmd := exec.Command("xz", "-c")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz: %v", err)
	}
	return out
}

// makeModuleTree copies the fixture index into a temp base dir and creates
// the module files (fake ELF objects, compressed per their suffix). It
// returns the base dir (containing lib/modules/<version>).
func makeModuleTree(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	tree := filepath.Join(base, "lib", "modules", fixtureVersion)
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"modules.dep", "modules.builtin"} {
		b, err := os.ReadFile(filepath.Join(fixtureTree(), f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tree, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ix, err := ReadModuleIndex(tree)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil)
	defer enc.Close()
	for name, p := range ix.paths {
		elf := fakeModule(name)
		if name == "virtio_blk" {
			elf = fakeSign(elf)
		}
		var raw []byte
		switch {
		case strings.HasSuffix(p, ".zst"):
			raw = enc.EncodeAll(elf, nil)
		case strings.HasSuffix(p, ".gz"):
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			zw.Write(elf)
			zw.Close()
			raw = b.Bytes()
		case strings.HasSuffix(p, ".xz"):
			raw = xzCompress(t, elf)
		default:
			raw = elf
		}
		full := filepath.Join(tree, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return base
}

func fakeModule(name string) []byte {
	return append([]byte{0x7f, 'E', 'L', 'F'}, []byte("fake module "+name)...)
}

// fakeSign appends a signature trailer the way the kernel's sign-file does.
func fakeSign(elf []byte) []byte {
	sig := bytes.Repeat([]byte{0xAB}, 37)
	info := []byte{0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, byte(len(sig))} // struct module_signature
	out := append(append(append([]byte{}, elf...), sig...), info...)
	return append(out, moduleSigMarker...)
}

func TestStripModuleSignature(t *testing.T) {
	elf := fakeModule("m")
	if got := stripModuleSignature(fakeSign(elf)); !bytes.Equal(got, elf) {
		t.Fatalf("stripped = %q", got)
	}
	if got := stripModuleSignature(elf); !bytes.Equal(got, elf) {
		t.Fatal("unsigned module changed")
	}
	bogus := append(append([]byte{}, elf[:6]...), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}...)
	bogus = append(bogus, moduleSigMarker...)
	if got := stripModuleSignature(bogus); !bytes.Equal(got, bogus) {
		t.Fatal("trailer with impossible length was cut")
	}
}
