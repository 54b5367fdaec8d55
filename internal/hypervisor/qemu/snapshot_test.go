package qemu

// Unit tests for snapshot metadata, validation, state streaming and argv
// rewriting. No QEMU runs here.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
)

const (
	testVersion = "7.2.22"
	testPackage = "Debian 1:7.2+dfsg-7+deb12u18+b3"
)

// fakeSnapshot writes a complete, consistent snapshot (state = stream
// bytes, stored as the given compression) plus a kernel, initrd and instance
// file, and returns its dir, the run dir and the metadata.
type fakeSnap struct {
	snapDir, runDir string
	kernel, initrd  string
	stream          []byte
	meta            *SnapshotMeta
	digests         *digestCache
}

var (
	none  = hypervisor.Compression{}
	zstd1 = hypervisor.Compression{Algorithm: hypervisor.CompressionZstd, Level: 1}
)

func newFakeSnapshot(t *testing.T, c hypervisor.Compression) *fakeSnap {
	t.Helper()
	base := t.TempDir()
	f := &fakeSnap{snapDir: filepath.Join(base, "snap"), runDir: filepath.Join(base, "run"), digests: &digestCache{}}
	mkdir(t, f.snapDir)
	mkdir(t, f.runDir)
	f.kernel = filepath.Join(base, "vmlinux")
	f.initrd = filepath.Join(base, "initrd.cpio")
	os.WriteFile(f.kernel, []byte("kernel image bytes"), 0o644)
	os.WriteFile(f.initrd, []byte("initrd bytes"), 0o644)
	os.WriteFile(filepath.Join(f.runDir, "overlay.raw"), make([]byte, 4096), 0o644)

	f.stream = fakeStream()
	sw, err := createState(f.snapDir, c)
	if err != nil {
		t.Fatal(err)
	}
	sw.Write(f.stream)
	sm, err := sw.finish()
	if err != nil {
		t.Fatal(err)
	}

	kd := f.digestOf(t, f.kernel)
	id := f.digestOf(t, f.initrd)
	f.meta = &SnapshotMeta{
		Kind: snapshotKind, Format: SnapshotFormat,
		QEMUVersion: testVersion, QEMUPackage: testPackage,
		Accel: hypervisor.AccelTCG,
		Argv: []string{"/usr/bin/qemu-system-x86_64", "-name", "guest=src", "-m", "256M",
			"-kernel", f.kernel, "-initrd", f.initrd,
			"-drive", "if=none,id=disk0,file=./overlay.raw,format=raw", "-device", "virtio-blk-device,drive=disk0",
			"-netdev", "tap,id=net0,ifname=tap-src,script=no,downscript=no", "-device", "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01"},
		MemoryMiB:     256,
		Kernel:        kd,
		Initrd:        id,
		InstanceFiles: []InstanceFile{{Name: "overlay.raw", Size: 4096}},
		State:         sm,
		CreatedAt:     time.Now().UTC(),
	}
	f.writeMeta(t)
	return f
}

func (f *fakeSnap) digestOf(t *testing.T, p string) *FileDigest {
	size, sum, err := f.digests.digest(p)
	if err != nil {
		t.Fatal(err)
	}
	return &FileDigest{Path: p, Size: size, SHA256: sum}
}

func (f *fakeSnap) writeMeta(t *testing.T) {
	t.Helper()
	b, _ := json.MarshalIndent(f.meta, "", "  ")
	if err := os.WriteFile(filepath.Join(f.snapDir, SnapshotMetaName), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeSnap) env() snapshotEnv {
	return snapshotEnv{qemuVersion: testVersion, qemuPackage: testPackage, accel: hypervisor.AccelTCG, digest: f.digests.digest}
}

func (f *fakeSnap) check(t *testing.T) error {
	t.Helper()
	m, err := ReadSnapshotMeta(f.snapDir)
	if err != nil {
		return err
	}
	return checkSnapshot(m, f.snapDir, f.runDir, f.env())
}

func TestReadSnapshotMeta(t *testing.T) {
	f := newFakeSnapshot(t, none)
	m, err := ReadSnapshotMeta(f.snapDir)
	if err != nil {
		t.Fatalf("valid snapshot: %v", err)
	}
	info := m.Info(f.snapDir)
	if info.MemoryMiB != 256 || info.Compression.Enabled() || info.StateBytes != int64(len(f.stream)) ||
		len(info.InstanceFiles) != 1 || info.InstanceFiles[0] != "overlay.raw" {
		t.Fatalf("info = %+v", info)
	}

	cases := []struct {
		name string
		edit func(m *SnapshotMeta)
		raw  string
		want error
	}{
		{name: "garbage json", raw: "{not json", want: hypervisor.ErrSnapshotCorrupt},
		{name: "other kind", edit: func(m *SnapshotMeta) { m.Kind = "something-else" }, want: hypervisor.ErrSnapshotIncompatible},
		{name: "newer format", edit: func(m *SnapshotMeta) { m.Format = SnapshotFormat + 1 }, want: hypervisor.ErrSnapshotIncompatible},
		{name: "bad checksum", edit: func(m *SnapshotMeta) { m.State.Checksum = "sha1:abc" }, want: hypervisor.ErrSnapshotCorrupt},
		{name: "unknown state file", edit: func(m *SnapshotMeta) { m.State.File = "../memory" }, want: hypervisor.ErrSnapshotCorrupt},
		{name: "zst without compression", edit: func(m *SnapshotMeta) { m.State.File = StateFileNameZstd }, want: hypervisor.ErrSnapshotCorrupt},
		{name: "lz4 file named zst", edit: func(m *SnapshotMeta) { m.State.File, m.State.Compression = StateFileNameZstd, "lz4" }, want: hypervisor.ErrSnapshotCorrupt},
		{name: "unknown algorithm", edit: func(m *SnapshotMeta) { m.State.Compression = "brotli" }, want: hypervisor.ErrSnapshotCorrupt},
		{name: "level without compression", edit: func(m *SnapshotMeta) { m.State.Level = 3 }, want: hypervisor.ErrSnapshotCorrupt},
		{name: "lz4 level out of range", edit: func(m *SnapshotMeta) { m.State.File, m.State.Compression, m.State.Level = StateFileNameLZ4, "lz4", 12 }, want: hypervisor.ErrSnapshotCorrupt},
		{name: "no argv", edit: func(m *SnapshotMeta) { m.Argv = nil }, want: hypervisor.ErrSnapshotCorrupt},
		{name: "no kernel", edit: func(m *SnapshotMeta) { m.Kernel = nil }, want: hypervisor.ErrSnapshotCorrupt},
		{name: "escaping instance file", edit: func(m *SnapshotMeta) { m.InstanceFiles[0].Name = "../other/disk.raw" }, want: hypervisor.ErrSnapshotCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFakeSnapshot(t, none)
			if c.raw != "" {
				os.WriteFile(filepath.Join(f.snapDir, SnapshotMetaName), []byte(c.raw), 0o644)
			} else {
				c.edit(f.meta)
				f.writeMeta(t)
			}
			if _, err := ReadSnapshotMeta(f.snapDir); !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
	if _, err := ReadSnapshotMeta(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, hypervisor.ErrSnapshotCorrupt) {
		t.Fatalf("missing snapshot: %v", err)
	}
}

func TestCheckSnapshot(t *testing.T) {
	if err := newFakeSnapshot(t, none).check(t); err != nil {
		t.Fatalf("valid snapshot: %v", err)
	}
	cases := []struct {
		name    string
		setup   func(t *testing.T, f *fakeSnap, env *snapshotEnv)
		want    error
		wantMsg string
	}{
		{name: "qemu version", want: hypervisor.ErrSnapshotIncompatible, wantMsg: "7.2.21",
			setup: func(t *testing.T, f *fakeSnap, env *snapshotEnv) { f.meta.QEMUVersion = "7.2.21"; f.writeMeta(t) }},
		{name: "qemu package", want: hypervisor.ErrSnapshotIncompatible, wantMsg: "deb12u17",
			setup: func(t *testing.T, f *fakeSnap, env *snapshotEnv) {
				f.meta.QEMUPackage = "Debian 1:7.2+dfsg-7+deb12u17"
				f.writeMeta(t)
			}},
		{name: "installed qemu upgraded", want: hypervisor.ErrSnapshotIncompatible, wantMsg: "8.0.0",
			setup: func(t *testing.T, f *fakeSnap, env *snapshotEnv) { env.qemuVersion = "8.0.0" }},
		{name: "kvm snapshot on tcg", want: hypervisor.ErrSnapshotIncompatible, wantMsg: "kvm",
			setup: func(t *testing.T, f *fakeSnap, env *snapshotEnv) { f.meta.Accel = hypervisor.AccelKVM; f.writeMeta(t) }},
		{name: "kernel replaced, same size", want: hypervisor.ErrSnapshotIncompatible, wantMsg: "vmlinux changed",
			setup: func(t *testing.T, f *fakeSnap, env *snapshotEnv) {
				os.WriteFile(f.kernel, []byte("KERNEL IMAGE BYTES"), 0o644)
				future := time.Now().Add(time.Hour)
				os.Chtimes(f.kernel, future, future)
			}},
		{name: "initrd missing", want: hypervisor.ErrSnapshotIncompatible, wantMsg: "initrd.cpio",
			setup: func(t *testing.T, f *fakeSnap, env *snapshotEnv) { os.Remove(f.initrd) }},
		{name: "state missing", want: hypervisor.ErrSnapshotCorrupt, wantMsg: "no such file",
			setup: func(t *testing.T, f *fakeSnap, env *snapshotEnv) { os.Remove(filepath.Join(f.snapDir, StateFileName)) }},
		{name: "state truncated", want: hypervisor.ErrSnapshotCorrupt, wantMsg: "bytes",
			setup: func(t *testing.T, f *fakeSnap, env *snapshotEnv) {
				os.Truncate(filepath.Join(f.snapDir, StateFileName), 100)
			}},
		{name: "instance file missing", want: fs.ErrNotExist, wantMsg: "overlay.raw",
			setup: func(t *testing.T, f *fakeSnap, env *snapshotEnv) { os.Remove(filepath.Join(f.runDir, "overlay.raw")) }},
		{name: "instance file resized", want: hypervisor.ErrSnapshotIncompatible, wantMsg: "overlay.raw",
			setup: func(t *testing.T, f *fakeSnap, env *snapshotEnv) {
				os.Truncate(filepath.Join(f.runDir, "overlay.raw"), 8192)
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFakeSnapshot(t, none)
			env := f.env()
			c.setup(t, f, &env)
			m, err := ReadSnapshotMeta(f.snapDir)
			if err != nil {
				t.Fatal(err)
			}
			err = checkSnapshot(m, f.snapDir, f.runDir, env)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.wantMsg) {
				t.Fatalf("err = %v, want %v mentioning %q", err, c.want, c.wantMsg)
			}
		})
	}

	// A relative boot file path is looked up in the run dir.
	f := newFakeSnapshot(t, none)
	copyFile(t, f.kernel, filepath.Join(f.runDir, "vmlinux"))
	f.meta.Kernel.Path = "vmlinux"
	f.writeMeta(t)
	if err := f.check(t); err != nil {
		t.Fatalf("relative kernel path: %v", err)
	}
}

// feed runs feedState into a pipe and returns what came out and its error.
// readLimit < 0 reads everything; otherwise the reader stops (closes its
// end) after that many bytes, as a failing QEMU does.
func feed(t *testing.T, f *fakeSnap, readLimit int) ([]byte, error) {
	t.Helper()
	state, err := os.Open(filepath.Join(f.snapDir, f.meta.State.File))
	if err != nil {
		t.Fatal(err)
	}
	defer state.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte)
	go func() {
		var src io.Reader = r
		if readLimit >= 0 {
			src = io.LimitReader(r, int64(readLimit))
		}
		b, _ := io.ReadAll(src)
		r.Close()
		got <- b
	}()
	err = feedState(w, state, f.meta.State)
	return <-got, err
}

func TestFeedState(t *testing.T) {
	for _, c := range allCompressions {
		f := newFakeSnapshot(t, c)
		out, err := feed(t, f, -1)
		if err != nil || !bytes.Equal(out, f.stream) {
			t.Fatalf("%s: good state: %v (%d of %d bytes)", c, err, len(out), len(f.stream))
		}
		if c.Enabled() && f.meta.State.Size >= f.meta.State.StreamSize/2 {
			t.Fatalf("%s: %d stream bytes stored in %d", c, f.meta.State.StreamSize, f.meta.State.Size)
		}

		// QEMU stops reading (it failed for its own reasons): not corrupt.
		if _, err := feed(t, f, 1000); err == nil || errors.Is(err, hypervisor.ErrSnapshotCorrupt) {
			t.Fatalf("%s: reader gone: %v", c, err)
		}

		flipByte(t, filepath.Join(f.snapDir, f.meta.State.File))
		if _, err := feed(t, f, -1); !errors.Is(err, hypervisor.ErrSnapshotCorrupt) {
			t.Fatalf("%s: flipped byte: %v", c, err)
		}
		// ... also when QEMU gave up early on the damaged stream.
		if _, err := feed(t, f, 1000); !errors.Is(err, hypervisor.ErrSnapshotCorrupt) {
			t.Fatalf("%s: flipped byte, reader gone: %v", c, err)
		}
	}

	// Checksum right but the recorded stream size wrong.
	f := newFakeSnapshot(t, zstd1)
	f.meta.State.StreamSize++
	if _, err := feed(t, f, -1); !errors.Is(err, hypervisor.ErrSnapshotCorrupt) || !strings.Contains(err.Error(), "stream bytes") {
		t.Fatalf("stream size mismatch: %v", err)
	}
}

func TestRestoreArgv(t *testing.T) {
	f := newFakeSnapshot(t, none)
	saved := f.meta.Argv
	join := func(a []string) string { return strings.Join(a, " ") }

	argv, err := restoreArgv("/opt/qemu", saved, hypervisor.RestoreConfig{})
	if err != nil || argv[0] != "/opt/qemu" || join(argv[1:]) != join(saved[1:]) {
		t.Fatalf("no overrides: %v %v", argv, err)
	}
	if saved[0] != "/usr/bin/qemu-system-x86_64" {
		t.Fatal("saved argv modified")
	}

	argv, err = restoreArgv("/q", saved, hypervisor.RestoreConfig{ID: "fork,1", Net: &hypervisor.NetConfig{TAP: "tap-fork"}})
	if err != nil {
		t.Fatal(err)
	}
	s := join(argv)
	for _, want := range []string{"-name guest=fork,,1", "-netdev tap,id=net0,ifname=tap-fork,script=no,downscript=no",
		"-device virtio-net-device,netdev=net0,mac=02:00:00:00:00:01"} {
		if !strings.Contains(s, want) {
			t.Errorf("argv lacks %q: %s", want, s)
		}
	}
	if strings.Contains(s, "tap-src") || len(argv) != len(saved) {
		t.Errorf("old backend kept or argv grew: %s", s)
	}

	argv, err = restoreArgv("/q", saved, hypervisor.RestoreConfig{Net: &hypervisor.NetConfig{User: true, MAC: "02:00:00:00:00:01",
		HostForwards: []string{"tcp::8080-:80"}}})
	if err != nil || !strings.Contains(join(argv), "-netdev user,id=net0,hostfwd=tcp::8080-:80") {
		t.Fatalf("user net override: %v %v", argv, err)
	}

	noName := append([]string{saved[0]}, saved[3:]...)
	argv, err = restoreArgv("/q", noName, hypervisor.RestoreConfig{ID: "x"})
	if err != nil || argv[1] != "-name" || argv[2] != "guest=x" {
		t.Fatalf("inserted name: %v %v", argv, err)
	}

	for name, cfg := range map[string]hypervisor.RestoreConfig{
		"other MAC":     {Net: &hypervisor.NetConfig{TAP: "t", MAC: "02:00:00:00:00:02"}},
		"tap and user":  {Net: &hypervisor.NetConfig{TAP: "t", User: true}},
		"fwd with tap":  {Net: &hypervisor.NetConfig{TAP: "t", HostForwards: []string{"tcp::1-:1"}}},
		"neither":       {Net: &hypervisor.NetConfig{}},
		"malformed MAC": {Net: &hypervisor.NetConfig{TAP: "t", MAC: "nope"}},
	} {
		if _, err := restoreArgv("/q", saved, cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	noNIC := saved[:len(saved)-4]
	if _, err := restoreArgv("/q", noNIC, hypervisor.RestoreConfig{Net: &hypervisor.NetConfig{User: true}}); err == nil ||
		!strings.Contains(err.Error(), "no network device") {
		t.Fatalf("net override without NIC: %v", err)
	}
}

func TestArgvHelpers(t *testing.T) {
	dir := "/srv/vm/abc"
	args, err := BuildArgs(LaunchSpec{Accel: hypervisor.AccelTCG, VM: hypervisor.VMConfig{
		Dir: dir, KernelPath: "/k/vmlinux", MemoryMiB: 1024, VCPUs: 1,
		Disks: []hypervisor.Disk{
			{Path: "/images/root.erofs", ReadOnly: true},
			{Path: dir + "/overlay.raw"},
			{Path: dir + "/sub/config,1.raw", ReadOnly: true},
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"qemu"}, args...)
	if got := instanceFilesOf(argv); strings.Join(got, "|") != "overlay.raw|sub/config,1.raw" {
		t.Fatalf("instance files = %q", got)
	}
	for in, want := range map[string]int{"256M": 256, "1G": 1024, "512": 512, "size=2G,slots=2": 2048} {
		if got, err := memoryMiBOf([]string{"q", "-m", in}); err != nil || got != want {
			t.Errorf("-m %s: %d %v", in, got, err)
		}
	}
	if _, err := memoryMiBOf([]string{"q"}); err == nil {
		t.Error("no -m accepted")
	}
}

func TestParseVersionOutput(t *testing.T) {
	v, pkg, err := parseVersionOutput("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n")
	if err != nil || v != "7.2.22" || pkg != "Debian 1:7.2+dfsg-7+deb12u18+b3" {
		t.Fatalf("%q %q %v", v, pkg, err)
	}
	v, pkg, err = parseVersionOutput("QEMU emulator version 9.1.0\n")
	if err != nil || v != "9.1.0" || pkg != "" {
		t.Fatalf("no package: %q %q %v", v, pkg, err)
	}
	if _, _, err := parseVersionOutput("qemu-img version 7.2.0"); err == nil {
		t.Fatal("wrong tool accepted")
	}
}

func TestInstalledVersionRunsOnce(t *testing.T) {
	dir := t.TempDir()
	count := filepath.Join(dir, "count")
	bin := filepath.Join(dir, "qemu-system-x86_64")
	script := "#!/bin/sh\necho x >> " + count + "\necho 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)'\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d := &Driver{binary: bin}
	for range 3 {
		v, pkg, err := d.installedVersion(t.Context())
		if err != nil || v != testVersion || pkg != testPackage {
			t.Fatalf("%q %q %v", v, pkg, err)
		}
	}
	if b, _ := os.ReadFile(count); string(b) != "x\n" {
		t.Fatalf("--version ran %d times", strings.Count(string(b), "x"))
	}
}

func TestDigestCache(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(p, []byte("aaaa"), 0o644)
	st, _ := os.Stat(p)
	var c digestCache
	_, sum1, err := c.digest(p)
	if err != nil || len(sum1) != 64 {
		t.Fatal(sum1, err)
	}
	// Same size and mtime: the cached sum is returned without rereading.
	os.WriteFile(p, []byte("bbbb"), 0o644)
	os.Chtimes(p, st.ModTime(), st.ModTime())
	if _, sum, _ := c.digest(p); sum != sum1 {
		t.Fatal("cache not used for an unchanged size+mtime")
	}
	// A new mtime forces a rehash.
	later := st.ModTime().Add(time.Second)
	os.Chtimes(p, later, later)
	if _, sum, _ := c.digest(p); sum == sum1 {
		t.Fatal("changed file not rehashed")
	}
	if _, _, err := c.digest(filepath.Dir(p)); err == nil {
		t.Fatal("directory hashed")
	}
}

func TestRemoveSnapshotTemps(t *testing.T) {
	base := t.TempDir()
	snap := filepath.Join(base, "s[1]")
	for _, n := range []string{"s[1].tmp-a", "s[1].tmp-b", "s1.tmp-c", "s[1]", "s[1]x.tmp-d"} {
		mkdir(t, filepath.Join(base, n))
	}
	removeSnapshotTemps(snap)
	ents, _ := os.ReadDir(base)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if strings.Join(left, ",") != "s1.tmp-c,s[1],s[1]x.tmp-d" {
		t.Fatalf("left: %v", left)
	}
}

// allCompressions are the settings the tests store states with: none, the
// ends of both level ranges and one middle level.
var allCompressions = []hypervisor.Compression{
	none, zstd1,
	{Algorithm: hypervisor.CompressionZstd, Level: 7},
	{Algorithm: hypervisor.CompressionZstd, Level: 19},
	{Algorithm: hypervisor.CompressionLZ4, Level: 0},
	{Algorithm: hypervisor.CompressionLZ4, Level: 9},
}

// fakeStream is ~5 MiB that compresses like guest memory: long zero runs,
// repeated text and incompressible stretches, over two lz4 blocks.
func fakeStream() []byte {
	var b bytes.Buffer
	x := uint64(0x9e3779b97f4a7c15)
	for b.Len() < 5<<20 {
		b.Write(make([]byte, 64<<10))
		b.Write(bytes.Repeat([]byte("QEVM migration stream "), 3000))
		for range 4 << 10 { // 32 KiB of xorshift noise
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			b.Write([]byte{byte(x), byte(x >> 8), byte(x >> 16), byte(x >> 24), byte(x >> 32), byte(x >> 40), byte(x >> 48), byte(x >> 56)})
		}
	}
	return b.Bytes()
}

func TestLegacyZstdSnapshotWithoutLevel(t *testing.T) {
	// What the driver wrote before levels existed: zstd, no "level" key.
	f := newFakeSnapshot(t, zstd1)
	b, _ := os.ReadFile(filepath.Join(f.snapDir, SnapshotMetaName))
	var raw map[string]any
	json.Unmarshal(b, &raw)
	delete(raw["state"].(map[string]any), "level")
	b, _ = json.Marshal(raw)
	os.WriteFile(filepath.Join(f.snapDir, SnapshotMetaName), b, 0o644)
	if strings.Contains(string(b), `"level"`) {
		t.Fatal("level still in snapshot.json")
	}

	m, err := ReadSnapshotMeta(f.snapDir)
	if err != nil {
		t.Fatalf("legacy snapshot: %v", err)
	}
	if info := m.Info(f.snapDir); info.Compression != zstd1 {
		t.Fatalf("legacy zstd snapshot reports %s, want zstd:1", info.Compression)
	}
	f.meta = m
	if out, err := feed(t, f, -1); err != nil || !bytes.Equal(out, f.stream) {
		t.Fatalf("legacy snapshot feed: %v", err)
	}
}

func TestConvertState(t *testing.T) {
	ctx := t.Context()
	f := newFakeSnapshot(t, none)
	base := filepath.Dir(f.snapDir)
	srcSums := dirSums(t, f.snapDir)
	logf := func(string, ...any) {}

	// A chain through every setting, ending uncompressed again: each step
	// reads the previous one.
	src := f.snapDir
	for i, c := range append(allCompressions[1:], none) {
		dst := filepath.Join(base, fmt.Sprintf("conv-%d", i))
		info, err := convertState(ctx, src, dst, c, logf)
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		m, err := ReadSnapshotMeta(dst)
		if err != nil {
			t.Fatalf("%s: converted snapshot unreadable: %v", c, err)
		}
		if info.Compression != c || m.State.File != stateFileName(c.Algorithm) || info.StreamBytes != int64(len(f.stream)) ||
			(c.Enabled() && info.StateBytes >= info.StreamBytes) || strings.Join(m.Argv, " ") != strings.Join(f.meta.Argv, " ") {
			t.Fatalf("%s: info %+v, state %+v", c, info, m.State)
		}
		if got := dirSums(t, dst); len(got) != 2 {
			t.Fatalf("%s: converted dir holds %v", c, got)
		}
		g := *f
		g.snapDir, g.meta = dst, m
		if out, err := feed(t, &g, -1); err != nil || !bytes.Equal(out, f.stream) {
			t.Fatalf("%s: converted state does not feed the original stream: %v", c, err)
		}
		src = dst
	}
	if got := dirSums(t, f.snapDir); fmt.Sprint(got) != fmt.Sprint(srcSums) {
		t.Fatal("source snapshot changed by conversion")
	}

	// Same setting: a verified byte copy.
	lz := filepath.Join(base, "conv-4") // lz4:9 from the chain
	same := filepath.Join(base, "same")
	if _, err := convertState(ctx, lz, same, allCompressions[5], logf); err != nil {
		t.Fatal(err)
	}
	a, b := dirSums(t, lz), dirSums(t, same)
	if a[StateFileNameLZ4] != b[StateFileNameLZ4] {
		t.Fatal("same-setting conversion changed the state bytes")
	}

	// Refusals leave nothing at dst.
	noDst := func(name string, dst string) {
		t.Helper()
		if m, _ := filepath.Glob(dst + "*"); len(m) != 0 {
			t.Fatalf("%s: left %v", name, m)
		}
	}
	if _, err := convertState(ctx, f.snapDir, same, zstd1, logf); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("existing dst: %v", err)
	}
	bad := hypervisor.Compression{Algorithm: "lz4", Level: 10}
	var ce *hypervisor.CompressionError
	if _, err := convertState(ctx, f.snapDir, filepath.Join(base, "bad"), bad, logf); !errors.As(err, &ce) || ce.Field != "compression.level" {
		t.Fatalf("bad level: %v", err)
	}
	noDst("bad level", filepath.Join(base, "bad"))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := convertState(cctx, f.snapDir, filepath.Join(base, "cancelled"), zstd1, logf); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	noDst("cancelled", filepath.Join(base, "cancelled"))
	for _, c := range []hypervisor.Compression{none, zstd1, allCompressions[4]} {
		damaged := filepath.Join(base, "damaged-"+c.Algorithm)
		copyDir(t, lz, damaged)
		flipByte(t, filepath.Join(damaged, StateFileNameLZ4))
		out := filepath.Join(base, "from-damaged-"+c.Algorithm)
		if _, err := convertState(ctx, damaged, out, c, logf); !errors.Is(err, hypervisor.ErrSnapshotCorrupt) {
			t.Fatalf("damaged source to %s: %v", c, err)
		}
		noDst("damaged", out)
	}
}
