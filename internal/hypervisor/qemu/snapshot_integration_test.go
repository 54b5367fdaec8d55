package qemu

// Integration tests for SaveState / Restore with the counter guest (see
// testguest_test.go): three small VMs boot in total, everything else is
// restored from their snapshots.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
)

func mkdir(t testing.TB, p string) string {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// dirSums returns name -> xxh64 of every file in dir.
func dirSums(t testing.TB, dir string) map[string]uint64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, e := range ents {
		sum, _, err := xxhashOf(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = sum
	}
	return out
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	mkdir(t, dst)
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		copyFile(t, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()))
	}
}

// flipByte inverts one byte in the middle of a file.
func flipByte(t testing.TB, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	off := st.Size() / 2
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// assertContinued checks the counter lines of a serial log: one boot (a
// single 0), consecutive values, and uptime never going backwards.
func assertContinued(t *testing.T, dir string) []counterLine {
	t.Helper()
	lines := counterLines(t, dir)
	for i := 1; i < len(lines); i++ {
		if lines[i].N != lines[i-1].N+1 {
			t.Fatalf("%s: counter went %d -> %d (restarted or lost state)", dir, lines[i-1].N, lines[i].N)
		}
		if lines[i].Uptime < lines[i-1].Uptime {
			t.Fatalf("%s: uptime went back %.2f -> %.2f (guest rebooted?)", dir, lines[i-1].Uptime, lines[i].Uptime)
		}
	}
	return lines
}

// dropStateLevel rewrites snapshot.json without state.level, as the driver
// wrote it before levels were recorded.
func dropStateLevel(t testing.TB, snap string) {
	t.Helper()
	p := filepath.Join(snap, SnapshotMetaName)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	st := raw["state"].(map[string]any)
	if _, ok := st["level"]; !ok {
		t.Fatalf("%s has no state.level to drop", p)
	}
	delete(st, "level")
	b, _ = json.Marshal(raw)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSaveRestoreContinuesCounter(t *testing.T) {
	d := newTestDriver(t)
	base := t.TempDir()
	dir := mkdir(t, filepath.Join(base, "vm"))
	killOnCleanup(t, dir)
	initrd := counterInitrd(t, base)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	hv, err := d.Launch(ctx, counterVMConfig(t, dir, initrd, 256, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { hv.Kill(); hv.Close() }()
	waitCounter(t, dir, 5, 90*time.Second)

	// A temp dir left by a save interrupted by a crash: the next save to
	// the same path removes it.
	stale := mkdir(t, filepath.Join(base, "snap-0.tmp-crashed"))
	os.WriteFile(filepath.Join(stale, StateFileName), []byte("partial"), 0o644)

	// One round per storage setting; the zstd:1 round's snapshot.json is
	// rewritten as the driver wrote it before levels existed, and the last
	// round restores a state converted after the save.
	rounds := []struct {
		c       hypervisor.Compression
		legacy  bool                    // drop state.level from snapshot.json
		convert *hypervisor.Compression // restore a ConvertState copy
	}{
		{c: none}, {c: zstd1, legacy: true}, {c: hypervisor.Compression{Algorithm: "zstd", Level: 19}},
		{c: hypervisor.Compression{Algorithm: "lz4", Level: 0}}, {c: hypervisor.Compression{Algorithm: "lz4", Level: 9}},
		{c: none, convert: &hypervisor.Compression{Algorithm: "zstd", Level: 3}},
	}
	var snaps []string
	for round, rc := range rounds {
		snap := filepath.Join(base, fmt.Sprintf("snap-%d", round))
		start := time.Now()
		info, err := hv.SaveState(ctx, snap, hypervisor.SaveOptions{Compression: rc.c})
		if err != nil {
			t.Fatalf("round %d (%s): save: %v", round, rc.c, err)
		}
		saveTime := time.Since(start)
		snaps = append(snaps, snap)
		if st, err := hv.Status(ctx); err != nil || st != hypervisor.RunStatePaused {
			t.Fatalf("status after save = %q, %v", st, err)
		}
		frozen, _ := lastCounter(t, dir)
		compressed := rc.c.Enabled()
		if info.Dir != snap || info.Compression != rc.c || info.MemoryMiB != 256 || info.StateBytes <= 0 ||
			(compressed && info.StateBytes >= info.StreamBytes) || (!compressed && info.StateBytes != info.StreamBytes) {
			t.Fatalf("info = %+v", info)
		}
		wantFile := stateFileName(rc.c.Algorithm)
		if got := dirSums(t, snap); len(got) != 2 || got[wantFile] == 0 || got[SnapshotMetaName] == 0 {
			t.Fatalf("snapshot dir holds %v", got)
		}
		if m, _ := filepath.Glob(filepath.Join(base, "*.tmp-*")); len(m) != 0 {
			t.Fatalf("temp dirs left: %v", m)
		}
		meta, err := ReadSnapshotMeta(snap)
		if err != nil {
			t.Fatal(err)
		}
		rec, _ := ReadLaunchRecord(dir)
		if strings.Join(meta.Argv, " ") != strings.Join(rec.Argv, " ") || meta.Kernel == nil || meta.Initrd == nil ||
			meta.Kernel.Path != testKernel(t) || len(meta.Kernel.SHA256) != 64 || meta.QEMUVersion == "" {
			t.Fatalf("snapshot.json = %+v", meta)
		}
		t.Logf("round %d (%s): save %v, stream %d B, file %d B", round, rc.c, saveTime, info.StreamBytes, info.StateBytes)
		if rc.legacy {
			dropStateLevel(t, snap)
		}
		if rc.convert != nil {
			conv := snap + "-converted"
			t0 := time.Now()
			ci, err := d.ConvertState(ctx, snap, conv, *rc.convert)
			if err != nil {
				t.Fatalf("round %d: convert: %v", round, err)
			}
			t.Logf("round %d: converted to %s in %v: file %d B", round, rc.convert, time.Since(t0), ci.StateBytes)
			if ci.Compression != *rc.convert || ci.StreamBytes != info.StreamBytes || ci.StateBytes >= info.StateBytes {
				t.Fatalf("converted info = %+v", ci)
			}
			snap = conv
			snaps = append(snaps, snap)
		}

		if err := hv.Kill(); err != nil {
			t.Fatal(err)
		}
		hv.Close()

		start = time.Now()
		rv, err := d.Restore(ctx, hypervisor.RestoreConfig{Dir: dir, SnapshotDir: snap})
		if err != nil {
			t.Fatalf("round %d (%s): restore: %v", round, rc.c, err)
		}
		hv = rv
		restoreTime := time.Since(start)
		if st, err := hv.Status(ctx); err != nil || st != hypervisor.RunStatePaused {
			t.Fatalf("status after restore = %q, %v", st, err)
		}
		// Paused means paused: no output until Resume.
		time.Sleep(300 * time.Millisecond)
		if l, _ := lastCounter(t, dir); l.N != frozen.N {
			t.Fatalf("counter moved while restored VM was paused: %d -> %d", frozen.N, l.N)
		}
		if err := hv.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: restore→resumed %v", round, time.Since(start))
		_ = restoreTime
		l := waitCounter(t, dir, frozen.N+5, 30*time.Second)
		assertContinued(t, dir)
		if l.Uptime < frozen.Uptime {
			t.Fatalf("uptime reset: %.2f before save, %.2f after restore", frozen.Uptime, l.Uptime)
		}
		rec, _ = ReadLaunchRecord(dir)
		if rec.RestoredFrom != snap || strings.Contains(strings.Join(rec.Argv, " "), "-incoming") {
			t.Fatalf("launch record after restore: %+v", rec)
		}
	}

	// A snapshot of a running VM: save, then continue the same process.
	snapRun := filepath.Join(base, "snap-running")
	if _, err := hv.SaveState(ctx, snapRun, hypervisor.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	frozen, _ := lastCounter(t, dir)
	if err := hv.Resume(ctx); err != nil {
		t.Fatalf("resume after save: %v", err)
	}
	waitCounter(t, dir, frozen.N+3, 30*time.Second)
	if _, err := hv.SaveState(ctx, snapRun, hypervisor.SaveOptions{}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("save over an existing snapshot: %v", err)
	}

	// Damaged state files are refused as corrupt, whatever QEMU made of
	// them, and no QEMU is left behind.
	sums := map[string]map[string]uint64{}
	for _, s := range snaps {
		sums[s] = dirSums(t, s)
	}
	for i, s := range snaps {
		bad := filepath.Join(base, fmt.Sprintf("bad-%d", i))
		copyDir(t, s, bad)
		meta, _ := ReadSnapshotMeta(bad)
		flipByte(t, filepath.Join(bad, meta.State.File))
		runDir := mkdir(t, filepath.Join(base, fmt.Sprintf("bad-run-%d", i)))
		killOnCleanup(t, runDir)
		_, err := d.Restore(ctx, hypervisor.RestoreConfig{Dir: runDir, SnapshotDir: bad})
		if !errors.Is(err, hypervisor.ErrSnapshotCorrupt) {
			t.Fatalf("restore of a flipped byte (%s): %v", meta.State.File, err)
		}
		t.Logf("corrupt %s: %v", meta.State.File, err)
		if _, err := os.Stat(filepath.Join(runDir, PidFileName)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("qemu left running after a corrupt restore: %v", err)
		}
	}
	// Restore only reads: the snapshots are byte-for-byte unchanged.
	for _, s := range snaps {
		if got := dirSums(t, s); fmt.Sprint(got) != fmt.Sprint(sums[s]) {
			t.Fatalf("snapshot %s changed: %v -> %v", s, sums[s], got)
		}
	}
}

func TestForkIntoTwoDirs(t *testing.T) {
	d := newTestDriver(t)
	base := t.TempDir()
	src := mkdir(t, filepath.Join(base, "src"))
	killOnCleanup(t, src)
	initrd := counterInitrd(t, base, "virtio_mmio", "virtio_net")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	const mac = "02:00:00:00:00:0a"
	cfg := counterVMConfig(t, src, initrd, 256, "")
	disk := filepath.Join(src, "data.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Disks = []hypervisor.Disk{{Path: disk, Serial: "hm-overlay"}}
	cfg.Net = &hypervisor.NetConfig{User: true, MAC: mac}
	hv, err := d.Launch(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { hv.Kill(); hv.Close() }()
	if l := waitCounter(t, src, 5, 90*time.Second); l.MAC != mac {
		t.Fatalf("guest MAC %q, want %q", l.MAC, mac)
	}
	snap := filepath.Join(base, "snap")
	info, err := hv.SaveState(ctx, snap, hypervisor.SaveOptions{Compression: hypervisor.Compression{Algorithm: "lz4", Level: 3}})
	if err != nil {
		t.Fatal(err)
	}
	if len(info.InstanceFiles) != 1 || info.InstanceFiles[0] != "data.raw" {
		t.Fatalf("instance files = %v", info.InstanceFiles)
	}
	frozen, _ := lastCounter(t, src)
	hv.Kill()

	// A fork dir without its copy of the disk is refused before QEMU runs.
	empty := mkdir(t, filepath.Join(base, "empty"))
	if _, err := d.Restore(ctx, hypervisor.RestoreConfig{Dir: empty, SnapshotDir: snap}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("restore without instance files: %v", err)
	}
	// The MAC is device state: a different one is refused.
	_, err = d.Restore(ctx, hypervisor.RestoreConfig{Dir: empty, SnapshotDir: snap,
		Net: &hypervisor.NetConfig{User: true, MAC: "02:00:00:00:00:0b"}})
	if err == nil || !strings.Contains(err.Error(), "MAC") {
		t.Fatalf("restore with another MAC: %v", err)
	}

	forks := []string{filepath.Join(base, "fork1"), filepath.Join(base, "fork2")}
	var cfgs []hypervisor.RestoreConfig
	for i, f := range forks {
		mkdir(t, f)
		killOnCleanup(t, f)
		copyFile(t, disk, filepath.Join(f, "data.raw"))
		cfgs = append(cfgs, hypervisor.RestoreConfig{ID: fmt.Sprintf("fork%d", i+1), Dir: f, SnapshotDir: snap,
			Net: &hypervisor.NetConfig{User: true, HostForwards: []string{"tcp:127.0.0.1:0-:80"}}})
	}
	vms := restoreAll(ctx, t, d, cfgs)
	if vms[0].Pid() == vms[1].Pid() {
		t.Fatal("forks share a process")
	}
	for _, f := range forks {
		l := waitCounter(t, f, frozen.N+5, 60*time.Second)
		lines := assertContinued(t, f)
		if first := lines[0].N; first < frozen.N || first > frozen.N+2 {
			t.Fatalf("%s: first counter after fork %d, source stopped at %d", f, first, frozen.N)
		}
		if l.MAC != mac {
			t.Fatalf("%s: guest MAC %q, want %q", f, l.MAC, mac)
		}
		rec, _ := ReadLaunchRecord(f)
		if !strings.Contains(strings.Join(rec.Argv, " "), "hostfwd=tcp:127.0.0.1:0-:80") {
			t.Fatalf("%s: network override not applied: %v", f, rec.Argv)
		}
	}

	// What QEMU itself does when the command line's MAC differs from the
	// saved one (the driver refuses this, see above): it restores without
	// complaint and the guest keeps the saved MAC.
	edited := filepath.Join(base, "snap-mac")
	copyDir(t, snap, edited)
	meta, _ := ReadSnapshotMeta(edited)
	for i, a := range meta.Argv {
		meta.Argv[i] = strings.ReplaceAll(a, "mac="+mac, "mac=02:00:00:00:00:0c")
	}
	b, _ := json.Marshal(meta)
	os.WriteFile(filepath.Join(edited, SnapshotMetaName), b, 0o644)
	f3 := mkdir(t, filepath.Join(base, "fork3"))
	killOnCleanup(t, f3)
	copyFile(t, disk, filepath.Join(f3, "data.raw"))
	v3, err := d.Restore(ctx, hypervisor.RestoreConfig{Dir: f3, SnapshotDir: edited})
	if err != nil {
		t.Fatalf("restore with edited MAC: %v", err)
	}
	defer func() { v3.Kill(); v3.Close() }()
	if err := v3.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	l := waitCounter(t, f3, frozen.N+3, 60*time.Second)
	t.Logf("argv mac=02:00:00:00:00:0c, saved %s: guest reports %s", mac, l.MAC)
	c, _ := v3.(*VM).QMP(ctx)
	var rx []struct {
		Name    string `json:"name"`
		MainMAC string `json:"main-mac"`
	}
	if err := c.Execute(ctx, "query-rx-filter", nil, &rx); err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU's rx filter after restore: %+v", rx)
}

func TestSaveKilledMidStreamLeavesNoSnapshot(t *testing.T) {
	d := newTestDriver(t)
	base := t.TempDir()
	dir := mkdir(t, filepath.Join(base, "vm"))
	killOnCleanup(t, dir)
	initrd := counterInitrd(t, base)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	hv, err := d.Launch(ctx, counterVMConfig(t, dir, initrd, 256, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { hv.Kill(); hv.Close() }()
	waitCounter(t, dir, 2, 90*time.Second)

	// An interrupted save (its context ends mid-stream, as when the daemon
	// gives up) leaves no snapshot and a paused VM that can be saved again
	// or resumed.
	snap := filepath.Join(base, "snap")
	sctx, scancel := context.WithCancel(ctx)
	hv.(*VM).saveHook = func(n int64) {
		if n >= 8<<20 {
			scancel()
		}
	}
	if _, err := hv.SaveState(sctx, snap, hypervisor.SaveOptions{Compression: zstd1}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled save: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(base, "snap*")); len(m) != 0 {
		t.Fatalf("leftovers after a cancelled save: %v", m)
	}
	if st, err := hv.Status(ctx); err != nil || st != hypervisor.RunStatePaused {
		t.Fatalf("status after cancelled save = %q, %v", st, err)
	}
	hv.(*VM).saveHook = nil
	if _, err := hv.SaveState(ctx, snap, hypervisor.SaveOptions{}); err != nil {
		t.Fatalf("save after a cancelled save: %v", err)
	}
	os.RemoveAll(snap)
	if err := hv.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	l, _ := lastCounter(t, dir)
	waitCounter(t, dir, l.N+2, 30*time.Second)

	var once sync.Once
	var killedAt int64
	hv.(*VM).saveHook = func(n int64) {
		if n < 8<<20 {
			return
		}
		once.Do(func() {
			killedAt = n
			syscall.Kill(hv.Pid(), syscall.SIGKILL)
		})
	}
	_, err = hv.SaveState(ctx, snap, hypervisor.SaveOptions{})
	if !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Fatalf("save with QEMU killed mid-stream: %v", err)
	}
	t.Logf("killed after %d bytes: %v", killedAt, err)
	if _, err := os.Stat(snap); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("snapshot dir exists after a failed save: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(base, "snap*")); len(m) != 0 {
		t.Fatalf("leftovers: %v", m)
	}
	if _, err := d.Restore(ctx, hypervisor.RestoreConfig{Dir: dir, SnapshotDir: snap}); !errors.Is(err, hypervisor.ErrSnapshotCorrupt) {
		t.Fatalf("restore of the missing snapshot: %v", err)
	}
}
