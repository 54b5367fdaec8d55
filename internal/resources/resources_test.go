package resources

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func fixedProbe() Probe {
	return Probe{
		NumCPU:    func() int { return 8 },
		MemTotal:  func() (int64, error) { return 24 << 30, nil },
		FSSize:    func(string) (int64, error) { return 100 << 30, nil },
		UplinkBps: func() (int64, error) { return 0, errors.New("virtual nic") },
	}
}

func TestDetectHost(t *testing.T) {
	h, err := DetectHost(Settings{DataDir: "/x"}, fixedProbe())
	if err != nil {
		t.Fatal(err)
	}
	want := Host{CPU: {8, SourceDetected}, Memory: {24 << 30, SourceDetected}, Disk: {100 << 30, SourceDetected},
		Network: {DefaultNetworkBps, SourceDefault}, DiskIO: {DefaultDiskIOBps, SourceDefault}}
	for k, c := range want {
		if h[k] != c {
			t.Errorf("%s: %+v, want %+v", k, h[k], c)
		}
	}
	h, err = DetectHost(Settings{MemoryReserve: 2 << 30, CPULimit: 2, DiskLimit: 5 << 30, NetworkLimit: 1000, DiskIOLimit: 2000}, fixedProbe())
	if err != nil {
		t.Fatal(err)
	}
	if h[Memory] != (Capacity{22 << 30, SourceDetected}) || h[CPU] != (Capacity{2, SourceConfigured}) || h[Disk].Value != 5<<30 ||
		h[Network] != (Capacity{1000, SourceConfigured}) || h[DiskIO] != (Capacity{2000, SourceConfigured}) {
		t.Errorf("configured: %+v", h)
	}
	p := fixedProbe()
	p.UplinkBps = func() (int64, error) { return 125_000_000, nil }
	if h, _ := DetectHost(Settings{MemoryLimit: 1 << 30, MemoryReserve: 1 << 40}, p); h[Network] != (Capacity{125_000_000, SourceDetected}) || h[Memory].Value != 1<<30 {
		t.Errorf("uplink / memory_limit beats reserve: %+v", h)
	}
	if _, err := DetectHost(Settings{MemoryReserve: 30 << 30}, fixedProbe()); err == nil || !strings.Contains(err.Error(), "memory_reserve") {
		t.Errorf("reserve above MemTotal: %v", err)
	}
	// The real host answers something sane.
	if h, err := DetectHost(Settings{DataDir: t.TempDir() + "/not/yet"}, HostProbe()); err != nil || h[CPU].Value < 1 || h[Memory].Value <= 0 || h[Disk].Value <= 0 {
		t.Errorf("real host: %+v %v", h, err)
	}
}

func TestSettingsValidate(t *testing.T) {
	if err := (Settings{Ratios: Ratios{Memory: 0.5, CPU: 8}}).Validate(); err != nil {
		t.Errorf("valid: %v", err)
	}
	err := (Settings{Ratios: Ratios{Memory: -1, Disk: 2000}, DiskLimit: -1}).Validate()
	for _, want := range []string{"oversub_memory", "oversub_disk", "disk_limit"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}

func TestParseMemInfo(t *testing.T) {
	b := []byte("MemTotal:       24683584 kB\nMemFree:        21874428 kB\nMemAvailable:   24082404 kB\n")
	if n, err := parseMemInfo(b, "MemAvailable"); err != nil || n != 24082404*1024 {
		t.Errorf("MemAvailable %d %v", n, err)
	}
	if _, err := parseMemInfo(b, "SwapTotal"); err == nil {
		t.Error("missing field")
	}
}

func testLedger(t *testing.T, ratios Ratios) *Ledger {
	t.Helper()
	l, err := NewLedger(Config{Settings: Settings{Ratios: ratios},
		Host: Host{CPU: {4, SourceDetected}, Memory: {8 << 30, SourceConfigured}, Disk: {100 << 30, SourceDetected},
			Network: {1000, SourceDefault}, DiskIO: {1000, SourceDefault}}})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func run(id string, cpu int, mem int64) Demand {
	return Demand{InstanceID: id, InstanceName: "n-" + id, Running: true, CPU: cpu, MemoryBytes: mem, DiskBytes: 10 << 30}
}

func TestAdmitMath(t *testing.T) {
	ctx := context.Background()
	l := testLedger(t, nil) // defaults: cpu 4.0 → 16 vCPUs
	if l.Limit(CPU) != 16 || l.Limit(Memory) != 8<<30 || l.Limit(Network) != 2000 {
		t.Fatalf("limits %d %d %d", l.Limit(CPU), l.Limit(Memory), l.Limit(Network))
	}
	if err := l.Admit(ctx, run("a", 8, 5<<30)); err != nil {
		t.Fatal(err)
	}
	err := l.Admit(ctx, run("b", 2, 4<<30))
	var ie *InsufficientError
	if !errors.As(err, &ie) || ie.Resource != Memory || ie.Asked != 4<<30 || ie.Free != 3<<30 || ie.Limit != 8<<30 {
		t.Fatalf("memory refusal: %v", err)
	}
	want := "insufficient memory: asked 4.0 GiB, 3.0 GiB free of 8.0 GiB (capacity 8.0 GiB, oversubscription 1.0; set oversub_memory to allow more)"
	if err.Error() != want {
		t.Errorf("message\n%s\nwant\n%s", err, want)
	}
	// Re-admitting the same instance replaces its hold (no double count).
	if err := l.Admit(ctx, run("a", 8, 7<<30)); err != nil {
		t.Fatalf("grow own hold: %v", err)
	}
	if err := l.Admit(ctx, run("b", 9, 1<<30)); !errors.As(err, &ie) || ie.Resource != CPU || ie.Free != 8 || !strings.Contains(err.Error(), "oversub_cpu") {
		t.Fatalf("cpu refusal: %v", err)
	}
	if err := l.Admit(ctx, run("b", 8, 1<<30)); err != nil {
		t.Fatal(err)
	}
	// Stopped: disk only. Released running resources make room.
	l.Release("a", ReleaseRunning)
	if d, _ := l.Held("a"); d.Amount(Memory) != 0 || d.Amount(CPU) != 0 || d.Amount(Disk) != 10<<30 {
		t.Fatalf("after release running: %+v", d)
	}
	if err := l.Admit(ctx, run("c", 8, 7<<30)); err != nil {
		t.Fatal(err)
	}
	// Disk: three 10 GiB overlays fit in 100 GiB, a 71 GiB one does not.
	err = l.Admit(ctx, Demand{InstanceID: "d", DiskBytes: 71 << 30})
	if !errors.As(err, &ie) || ie.Resource != Disk || ie.Free != 70<<30 {
		t.Fatalf("disk refusal: %v", err)
	}
	// Network counts the larger direction.
	err = l.Admit(ctx, Demand{InstanceID: "n", Running: true, NetworkDownloadBps: 2001, NetworkUploadBps: 10})
	if !errors.As(err, &ie) || ie.Resource != Network || !strings.Contains(err.Error(), "Mbps") {
		t.Fatalf("network refusal: %v", err)
	}
	l.Release("a", ReleaseAll)
	l.Release("nobody", ReleaseAll)
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Allocations) != 2 || st.Allocations[0].InstanceID != "b" || st.Resources[CPU].Allocated != 16 || st.Resources[CPU].Available != 0 ||
		st.Resources[Memory].Allocated != 8<<30 || st.Resources[Disk].Allocated != 20<<30 || st.Resources[Memory].Source != SourceConfigured {
		t.Fatalf("status %+v", st)
	}
	// A ratio raises the limit.
	l2 := testLedger(t, Ratios{Memory: 1.5})
	if l2.Limit(Memory) != 12<<30 {
		t.Errorf("memory limit with 1.5: %d", l2.Limit(Memory))
	}
	// Hold (daemon start) never refuses; Status reports no negative room.
	l2.Hold(run("x", 100, 100<<30))
	if st, _ := l2.Status(ctx); st.Resources[Memory].Available != 0 || st.Resources[Memory].Allocated != 100<<30 {
		t.Errorf("over-held status %+v", st.Resources[Memory])
	}
}

// Many goroutines racing for 4 slots: exactly 4 win.
func TestAdmitConcurrent(t *testing.T) {
	l := testLedger(t, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if l.Admit(context.Background(), run(string(rune('A'+i)), 1, 2<<30)) == nil {
				mu.Lock()
				won++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if won != 4 {
		t.Fatalf("%d admitted, want 4", won)
	}
}

func TestDiskScannerAllocatedBlocks(t *testing.T) {
	root := t.TempDir()
	dirs := DiskDirs{Images: filepath.Join(root, "images"), Instances: filepath.Join(root, "instances"), StandbyDirName: "standby",
		Volumes: filepath.Join(root, "volumes"), Snapshots: filepath.Join(root, "snapshots"), OCICache: []string{filepath.Join(root, "registry")}}
	write := func(path string, n int) {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, make([]byte, n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "images", "d", "rootfs.erofs"), 1<<20)
	write(filepath.Join(root, "instances", "i1", "standby", "state"), 2<<20)
	write(filepath.Join(root, "instances", "i1", "config.raw"), 64<<10)
	write(filepath.Join(root, "snapshots", "s1", "state"), 1<<20)
	write(filepath.Join(root, "registry", "blobs", "x"), 512<<10)
	// A sparse 10 GiB overlay with 1 MiB written counts ~1 MiB.
	ov := filepath.Join(root, "instances", "i1", "overlay.ext4")
	f, err := os.Create(ov)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(10 << 30)
	f.WriteAt(make([]byte, 1<<20), 5<<30)
	f.Close()
	now := time.Unix(0, 0)
	s := NewDiskScanner(dirs, 10*time.Second, func() time.Time { return now })
	b, err := s.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	near := func(got, want int64) bool { return got >= want && got <= want+256<<10 }
	if !near(b.ImagesBytes, 1<<20) || !near(b.SnapshotsBytes, 3<<20) || !near(b.OCICacheBytes, 512<<10) ||
		!near(b.OverlaysBytes, 1<<20+64<<10) || b.VolumesBytes != 0 {
		t.Fatalf("breakdown %+v", b)
	}
	// Cached within the TTL, rescanned after it.
	write(filepath.Join(root, "volumes", "v", "disk.ext4"), 1<<20)
	if b2, _ := s.Usage(context.Background()); b2.VolumesBytes != 0 {
		t.Error("rescanned within the TTL")
	}
	now = now.Add(11 * time.Second)
	if b2, _ := s.Usage(context.Background()); !near(b2.VolumesBytes, 1<<20) {
		t.Errorf("not rescanned after the TTL: %+v", b2)
	}
	// The ledger counts the scanned data (not the instances' overlays) in disk.
	l, err := NewLedger(Config{Host: Host{CPU: {1, ""}, Memory: {1, ""}, Disk: {100 << 30, ""}, Network: {1, ""}, DiskIO: {1, ""}}, Disk: s})
	if err != nil {
		t.Fatal(err)
	}
	st, err := l.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Resources[Disk].Allocated != st.Disk.outsideInstances() || st.Disk.SnapshotsBytes == 0 {
		t.Errorf("disk status %+v %+v", st.Resources[Disk], st.Disk)
	}
}
