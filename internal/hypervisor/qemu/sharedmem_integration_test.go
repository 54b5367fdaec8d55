package qemu

// Integration test for templates with a memory file (memfile.go): one
// counter guest boots with its RAM in a file, is saved without it, and two
// clones map the file privately at once.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
	"hypeman/internal/procfs"
)

// fileMapping sums the smaps entries of pid that map path: their
// permissions (of the first) and Private_Dirty bytes (pages the process
// wrote: copy-on-write copies for a private mapping).
func fileMapping(t testing.TB, pid int, path string) (perms string, privateDirty int64) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) >= 5 && strings.Contains(fl[0], "-") && !strings.HasSuffix(fl[0], ":") {
			in = len(fl) >= 6 && fl[5] == path
			if in && perms == "" {
				perms = fl[1]
			}
			continue
		}
		if in && len(fl) == 3 && fl[0] == "Private_Dirty:" {
			kb, _ := strconv.ParseInt(fl[1], 10, 64)
			privateDirty += kb << 10
		}
	}
	if perms == "" {
		t.Fatalf("pid %d does not map %s", pid, path)
	}
	return perms, privateDirty
}

func fileSum(t testing.TB, path string) uint64 {
	t.Helper()
	sum, _, err := xxhashOf(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// A template saved with ExcludeMemory stores only device state; two clones
// restored from it at once continue the guest's counter (its memory came
// from the file), each writing its own copy-on-write pages while the file
// stays byte-for-byte unchanged; restores with a missing, wrong-size or
// foreign file are refused before QEMU starts; the template cannot resume;
// and a clone's own standby holds its full RAM, so it restores after the
// template's file is deleted.
func TestSharedMemoryClones(t *testing.T) {
	d := newTestDriver(t)
	base := t.TempDir()
	initrd := counterInitrd(t, base)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	tdir := mkdir(t, filepath.Join(base, "template"))
	killOnCleanup(t, tdir)
	memFile := filepath.Join(base, "template.mem")
	cfg := counterVMConfig(t, tdir, initrd, 256, "")
	cfg.MemoryFile = memFile

	// An existing file is never reused (clones may map it): refused
	// before QEMU starts, and left alone.
	os.WriteFile(memFile, []byte("old"), 0o644)
	if _, err := d.Launch(ctx, cfg); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("launch over an existing memory file: %v", err)
	}
	if b, _ := os.ReadFile(memFile); string(b) != "old" {
		t.Fatalf("existing memory file changed: %q", b)
	}
	os.Remove(memFile)

	tv, err := d.Launch(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { tv.Kill(); tv.Close() }()
	waitCounter(t, tdir, 5, 2*time.Minute)
	if perms, _ := fileMapping(t, tv.Pid(), memFile); perms != "rw-s" {
		t.Fatalf("template maps its memory file %s, want rw-s (shared)", perms)
	}
	if st, err := os.Stat(memFile); err != nil || st.Size() != 256<<20 {
		t.Fatalf("memory file: %v %v", st, err)
	}

	snap := filepath.Join(base, "snap")
	t0 := time.Now()
	info, err := tv.SaveState(ctx, snap, hypervisor.SaveOptions{ExcludeMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("template save (exclude memory): %v, state %d bytes", time.Since(t0), info.StateBytes)
	if info.MemoryFile != memFile || info.StateBytes <= 0 || info.StateBytes > 1<<20 || info.MemoryMiB != 256 {
		t.Fatalf("info = %+v", info)
	}
	meta, err := ReadSnapshotMeta(snap)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Format != SnapshotFormat || meta.MemoryFile == nil || meta.MemoryFile.Size != 256<<20 || meta.MemoryFile.Path != memFile {
		t.Fatalf("snapshot.json: format %d, memory file %+v", meta.Format, meta.MemoryFile)
	}
	frozen, _ := lastCounter(t, tdir)
	if err := tv.Resume(ctx); !errors.Is(err, ErrMemoryExported) {
		t.Fatalf("resume of the template after its memory was exported: %v", err)
	}
	tv.Kill()
	sum0 := fileSum(t, memFile)

	// Refused restores start no QEMU.
	bad := mkdir(t, filepath.Join(base, "bad"))
	zeros := filepath.Join(base, "zeros.mem")
	if err := os.WriteFile(zeros, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(zeros, 256<<20)
	short := filepath.Join(base, "short.mem")
	os.WriteFile(short, make([]byte, 4096), 0o644)
	for _, c := range []struct {
		name, file string
		want       error
	}{
		{"no memory file", "", hypervisor.ErrSnapshotIncompatible},
		{"foreign file", zeros, hypervisor.ErrSnapshotCorrupt},
		{"wrong size", short, hypervisor.ErrSnapshotCorrupt},
		{"missing file", filepath.Join(base, "nope.mem"), hypervisor.ErrSnapshotCorrupt},
	} {
		_, err := d.Restore(ctx, hypervisor.RestoreConfig{Dir: bad, SnapshotDir: snap, MemoryFile: c.file})
		if !errors.Is(err, c.want) {
			t.Fatalf("%s: %v, want %v", c.name, err, c.want)
		}
		t.Logf("%s: %v", c.name, err)
		if _, err := os.Stat(filepath.Join(bad, PidFileName)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s: qemu started: %v", c.name, err)
		}
	}

	// Two clones at once.
	clones := []string{filepath.Join(base, "clone1"), filepath.Join(base, "clone2")}
	var cfgs []hypervisor.RestoreConfig
	for _, dir := range clones {
		mkdir(t, dir)
		killOnCleanup(t, dir)
		cfgs = append(cfgs, hypervisor.RestoreConfig{ID: filepath.Base(dir), Dir: dir, SnapshotDir: snap, MemoryFile: memFile})
	}
	vms := restoreAll(ctx, t, d, cfgs)
	for i, dir := range clones {
		waitCounter(t, dir, frozen.N+10, time.Minute)
		lines := assertContinued(t, dir)
		if first := lines[0].N; first < frozen.N || first > frozen.N+2 {
			t.Fatalf("%s: first counter %d, template stopped at %d", dir, first, frozen.N)
		}
		perms, dirty := fileMapping(t, vms[i].Pid(), memFile)
		mu, err := procfs.ReadMemUsage(vms[i].Pid())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: maps %s, %d KiB copied on write; rss %d MiB pss %d MiB (anon %d, file %d)", filepath.Base(dir), perms,
			dirty>>10, mu.RSS>>20, mu.PSS>>20, mu.PSSAnon>>20, mu.PSSFile>>20)
		if perms != "rw-p" || dirty == 0 {
			t.Fatalf("%s: memory file mapped %s with %d bytes private dirty, want rw-p with copy-on-write pages", dir, perms, dirty)
		}
	}
	if got := fileSum(t, memFile); got != sum0 {
		t.Fatal("the memory file changed while clones ran")
	}

	// A clone's standby holds its whole RAM: it restores without the
	// template's file, which the other clone keeps mapped after deletion.
	standby := filepath.Join(base, "clone1-standby")
	sinfo, err := vms[0].SaveState(ctx, standby, hypervisor.SaveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sinfo.MemoryFile != "" || sinfo.StateBytes < 8<<20 {
		t.Fatalf("clone standby info = %+v", sinfo)
	}
	smeta, _ := ReadSnapshotMeta(standby)
	if argv := strings.Join(smeta.Argv, " "); strings.Contains(argv, memFile) || !strings.Contains(argv, "memory-backend-ram,id="+memBackendID) {
		t.Fatalf("clone standby argv: %s", argv)
	}
	if _, err := vms[0].SaveState(ctx, filepath.Join(base, "clone-excl"), hypervisor.SaveOptions{ExcludeMemory: true}); err == nil {
		t.Fatal("a clone saved without its RAM (its memory is a private mapping)")
	}
	c1Frozen, _ := lastCounter(t, clones[0])
	vms[0].Kill()
	if got := fileSum(t, memFile); got != sum0 {
		t.Fatal("the memory file changed")
	}
	if err := os.Remove(memFile); err != nil {
		t.Fatal(err)
	}
	l, _ := lastCounter(t, clones[1])
	waitCounter(t, clones[1], l.N+5, time.Minute)

	// Restored as a format-1 snapshot (what drivers wrote before memory
	// files): a full-RAM snapshot reads the same either way.
	smeta.Format = 1
	b, _ := json.Marshal(smeta)
	if err := os.WriteFile(filepath.Join(standby, SnapshotMetaName), b, 0o644); err != nil {
		t.Fatal(err)
	}
	rv, err := d.Restore(ctx, hypervisor.RestoreConfig{Dir: clones[0], SnapshotDir: standby})
	if err != nil {
		t.Fatalf("restore of a clone's standby without the template's file: %v", err)
	}
	defer func() { rv.Kill(); rv.Close() }()
	if err := rv.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, clones[0], c1Frozen.N+5, time.Minute)
	assertContinued(t, clones[0])
	if _, err := d.Restore(ctx, hypervisor.RestoreConfig{Dir: bad, SnapshotDir: snap, MemoryFile: memFile}); !errors.Is(err, hypervisor.ErrSnapshotCorrupt) {
		t.Fatalf("restore of the template after its file was deleted: %v", err)
	}
}

// restoreAll restores and resumes every cfg at once and returns the VMs,
// killed and closed when the test ends.
func restoreAll(ctx context.Context, t testing.TB, d *Driver, cfgs []hypervisor.RestoreConfig) []hypervisor.VM {
	t.Helper()
	vms := make([]hypervisor.VM, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			v, err := d.Restore(ctx, cfg)
			if err == nil {
				err = v.Resume(ctx)
			}
			t.Logf("%s: restore→running %v", filepath.Base(cfg.Dir), time.Since(start))
			vms[i], errs[i] = v, err
		}()
	}
	wg.Wait()
	for _, v := range vms {
		if v != nil {
			t.Cleanup(func() { v.Kill(); v.Close() })
		}
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("restore into %s: %v", cfgs[i].Dir, err)
		}
	}
	return vms
}
