package qemu

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"hypeman/internal/hypervisor"
)

func templateArgv() []string {
	return []string{"/usr/bin/qemu-system-x86_64", "-machine", "microvm,accel=tcg,memory-backend=hm-ram", "-m", "256M",
		"-object", memoryBackendObject(256, "/srv/t/mem", true), "-kernel", "/k"}
}

func TestMemoryArgvRewrites(t *testing.T) {
	tmpl := templateArgv()
	orig := slices.Clone(tmpl)
	if p, ok := sharedMemoryFile(tmpl); !ok || p != "/srv/t/mem" {
		t.Fatalf("sharedMemoryFile = %q %v", p, ok)
	}

	clone, err := argvWithPrivateMemory(tmpl, "/srv/t,x/mem")
	if err != nil {
		t.Fatal(err)
	}
	if clone[6] != "memory-backend-file,id=hm-ram,size=256M,mem-path=/srv/t,,x/mem,share=off" || len(clone) != len(tmpl) {
		t.Fatalf("clone argv %q", clone)
	}
	if _, ok := sharedMemoryFile(clone); ok {
		t.Fatal("a private mapping counted as shared")
	}

	for _, a := range [][]string{tmpl, clone} {
		anon := argvWithAnonMemory(a)
		if anon[6] != "memory-backend-ram,id=hm-ram,size=256M" || strings.Contains(strings.Join(anon, " "), "mem-path") {
			t.Fatalf("anon argv %q", anon)
		}
		if _, err := argvWithPrivateMemory(anon, "/f"); err == nil {
			t.Fatal("a memory file mapped into anonymous RAM")
		}
	}
	if !slices.Equal(tmpl, orig) {
		t.Fatal("rewrites modified their input")
	}
	plain := []string{"qemu", "-m", "256M"}
	if got := argvWithAnonMemory(plain); !slices.Equal(got, plain) {
		t.Fatalf("argv without a backend changed: %q", got)
	}
	if _, err := argvWithPrivateMemory(plain, "/f"); err == nil {
		t.Fatal("memory file accepted for a VM with plain RAM")
	}
}

func TestRestoreArgvMemoryFile(t *testing.T) {
	argv, err := restoreArgv("/q", templateArgv(), hypervisor.RestoreConfig{Dir: "/srv/c1", MemoryFile: "/srv/c1/mem"})
	if err != nil {
		t.Fatal(err)
	}
	if j := strings.Join(argv, " "); !strings.Contains(j, "mem-path=mem,share=off") || argv[0] != "/q" {
		t.Fatalf("argv %s", j)
	}
	if _, err := restoreArgv("/q", []string{"q", "-m", "256M"}, hypervisor.RestoreConfig{Dir: "/d", MemoryFile: "/m"}); err == nil {
		t.Fatal("memory file override accepted without file-backed RAM")
	}
}

func TestSampleOffsets(t *testing.T) {
	if got := sampleOffsets(100 << 10); !slices.Equal(got, []int64{0, 64 << 10}) {
		t.Fatalf("small file: %v", got)
	}
	size := int64(256 << 20)
	offs := sampleOffsets(size)
	if len(offs) != memSamples || offs[0] != 0 || offs[len(offs)-1] != size-memSampleBytes {
		t.Fatalf("offsets %v", offs)
	}
	for i, o := range offs {
		if o%4096 != 0 || (i > 0 && o <= offs[i-1]) || o+memSampleBytes > size {
			t.Fatalf("offset %d = %d", i, o)
		}
	}
}

func TestMemFingerprint(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, size int64, at ...int64) string {
		p := filepath.Join(dir, name)
		b := make([]byte, size)
		for _, o := range at {
			b[o] = 0x5a
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const size = 16 << 20
	fp := func(p string) string {
		n, f, err := memFingerprint(p)
		if err != nil || (n != size && n != size+4096) {
			t.Fatal(n, err)
		}
		return f
	}
	a := fp(write("a", size, 0, size-1))
	if b := fp(write("b", size, 0, size-1)); a != b {
		t.Fatal("same content, different fingerprints")
	}
	mid := sampleOffsets(size)[memSamples/2]
	for name, f := range map[string]string{
		"sampled byte": write("c", size, 0, size-1, mid),
		"first byte":   write("d", size, size-1),
		"longer":       write("e", size+4096, 0, size-1),
	} {
		if fp(f) == a {
			t.Errorf("%s: fingerprint unchanged", name)
		}
	}
	if !strings.HasPrefix(a, "xxh64-sampled:") || len(a) != len("xxh64-sampled:")+16 {
		t.Fatalf("fingerprint %q", a)
	}
}

func TestCheckMemoryFile(t *testing.T) {
	dir := t.TempDir()
	mem := filepath.Join(dir, "mem")
	os.WriteFile(mem, []byte(strings.Repeat("ram!", 4096)), 0o644)
	size, fp, err := memFingerprint(mem)
	if err != nil {
		t.Fatal(err)
	}
	want := &MemoryFileMeta{Path: "/old/mem", Size: size, Fingerprint: fp}
	other := filepath.Join(dir, "other")
	os.WriteFile(other, []byte(strings.Repeat("RAM!", 4096)), 0o644)

	if err := checkMemoryFile(want, mem); err != nil {
		t.Fatalf("right file: %v", err)
	}
	if err := checkMemoryFile(nil, ""); err != nil {
		t.Fatalf("full-RAM snapshot without a file: %v", err)
	}
	for name, c := range map[string]struct {
		want *MemoryFileMeta
		path string
		is   error
	}{
		"file for a full snapshot": {nil, mem, hypervisor.ErrSnapshotIncompatible},
		"no file":                  {want, "", hypervisor.ErrSnapshotIncompatible},
		"other content":            {want, other, hypervisor.ErrSnapshotCorrupt},
		"missing":                  {want, filepath.Join(dir, "gone"), hypervisor.ErrSnapshotCorrupt},
		"other size":               {&MemoryFileMeta{Path: "/old/mem", Size: size * 2, Fingerprint: fp}, mem, hypervisor.ErrSnapshotCorrupt},
	} {
		if err := checkMemoryFile(c.want, c.path); !errors.Is(err, c.is) {
			t.Errorf("%s: %v, want %v", name, err, c.is)
		}
	}
	if err := checkMemoryFile(want, "mem"); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("relative path: %v", err)
	}
}

func TestCreateMemoryFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mem")
	if err := createMemoryFile(p, 256<<20); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Size() != 256<<20 {
		t.Fatalf("stat %v %v", st, err)
	}
	if blocks := st.Sys().(*syscall.Stat_t).Blocks; blocks != 0 {
		t.Fatalf("memory file not sparse: %d blocks", blocks)
	}
	if err := createMemoryFile(p, 16<<20); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("existing file: %v", err)
	}
	if st, _ := os.Stat(p); st.Size() != 256<<20 {
		t.Fatal("existing file truncated")
	}
}

// withMemoryFile turns a fake snapshot into one saved without RAM.
func withMemoryFile(m *SnapshotMeta) {
	m.Argv = append(m.Argv, "-object", memoryBackendObject(256, "/srv/t/mem", true))
	m.MemoryFile = &MemoryFileMeta{Path: "/srv/t/mem", Size: 256 << 20, Fingerprint: "xxh64-sampled:0123456789abcdef"}
}

func TestSnapshotMetaMemoryFile(t *testing.T) {
	f := newFakeSnapshot(t, none)
	withMemoryFile(f.meta)
	f.writeMeta(t)
	m, err := ReadSnapshotMeta(f.snapDir)
	if err != nil {
		t.Fatal(err)
	}
	if info := m.Info(f.snapDir); info.MemoryFile != "/srv/t/mem" {
		t.Fatalf("info = %+v", info)
	}
	// Converting the (tiny) state keeps the record.
	conv := filepath.Join(t.TempDir(), "conv")
	if _, err := convertState(t.Context(), f.snapDir, conv, zstd1, func(string, ...any) {}); err != nil {
		t.Fatal(err)
	}
	if cm, err := ReadSnapshotMeta(conv); err != nil || cm.MemoryFile == nil || *cm.MemoryFile != *m.MemoryFile {
		t.Fatalf("converted: %+v %v", cm, err)
	}

	for name, edit := range map[string]func(m *SnapshotMeta){
		"format 1":                    func(m *SnapshotMeta) { m.Format = 1 },
		"relative path":               func(m *SnapshotMeta) { m.MemoryFile.Path = "mem" },
		"size":                        func(m *SnapshotMeta) { m.MemoryFile.Size = 128 << 20 },
		"fingerprint":                 func(m *SnapshotMeta) { m.MemoryFile.Fingerprint = "sha1:x" },
		"no shared file argv":         func(m *SnapshotMeta) { m.Argv = argvWithAnonMemory(m.Argv) },
		"shared file argv, no record": func(m *SnapshotMeta) { m.MemoryFile = nil },
	} {
		f := newFakeSnapshot(t, none)
		withMemoryFile(f.meta)
		edit(f.meta)
		f.writeMeta(t)
		if _, err := ReadSnapshotMeta(f.snapDir); !errors.Is(err, hypervisor.ErrSnapshotCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Snapshots written before format 2 (no memory file) still read.
func TestSnapshotFormat1StillReads(t *testing.T) {
	f := newFakeSnapshot(t, none)
	f.meta.Format = 1
	f.writeMeta(t)
	if err := f.check(t); err != nil {
		t.Fatalf("format 1: %v", err)
	}
	f.meta.Format = 0
	f.writeMeta(t)
	if _, err := ReadSnapshotMeta(f.snapDir); !errors.Is(err, hypervisor.ErrSnapshotIncompatible) {
		t.Fatalf("format 0: %v", err)
	}
}
