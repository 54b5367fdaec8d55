package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/daemon"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil/testimage"
)

// sleeper is a busybox image whose program prints the memory it starts
// with and waits (tests drive the guest with exec).
func sleeper(t *testing.T) string {
	host := testimage.Registry(t)
	return testimage.Push(t, host, "test/sleeper", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"grep MemTotal /proc/meminfo; exec sleep 100000"},
	}))
}

// startMemTotal is the MemTotal the program printed at its start, in bytes
// (Running comes with the start marker; the line follows shortly).
func startMemTotal(t *testing.T, d *daemon.Daemon, id string) int64 {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, line := range strings.Split(serialLog(t, d, id), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	t.Fatalf("the program did not print its MemTotal:\n%s", serialLog(t, d, id))
	return 0
}

// meminfo returns MemTotal and MemAvailable of the guest, in bytes.
func meminfo(t *testing.T, d *daemon.Daemon, id string) (total, avail int64) {
	t.Helper()
	for _, line := range strings.Split(guestRun(t, d, id, "cat", "/proc/meminfo"), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			total = kb << 10
		case "MemAvailable:":
			avail = kb << 10
		}
	}
	if total == 0 {
		t.Fatal("no MemTotal in the guest's /proc/meminfo")
	}
	return total, avail
}

// waitMemTotal polls the guest until cond(MemTotal) holds (the balloon
// moves asynchronously, ~1 GiB/s under TCG).
func waitMemTotal(t *testing.T, d *daemon.Daemon, id, what string, cond func(int64) bool) (total, avail int64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		total, avail = meminfo(t, d, id)
		if cond(total) {
			return total, avail
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest MemTotal %d MiB never became %s", total>>20, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// hotplug_size: the VM is built with size + hotplug, the guest sees size
// after boot, grows when the memory target is raised, and the balloon
// survives standby/restore and a fork (their argv replays the device).
func TestHotplugMemoryBalloon(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	ref := sleeper(t)
	ctx := context.Background()
	const size, hotplug = 1 << 30, 3 << 30
	start := time.Now()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "hot", Image: ref, Size: "1GB", HotplugSize: "3GB", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)
	running := time.Since(start)
	// The program starts only once the balloon holds the hotplug memory.
	startMem := startMemTotal(t, d, in.ID)
	if startMem > size {
		t.Fatalf("the program started with MemTotal %d MiB, more than size", startMem>>20)
	}
	// The kernel keeps some of the RAM (memmap, kernel image), so MemTotal
	// is a little under size; never above it.
	total, avail := waitMemTotal(t, d, in.ID, "at most size", func(n int64) bool { return n <= size })
	inflated := time.Since(start)
	if total < size-256<<20 || avail >= size {
		t.Fatalf("after boot: MemTotal %d MiB, MemAvailable %d MiB; want just under %d MiB", total>>20, avail>>20, size>>20)
	}
	st, err := d.Instances.Stats(ctx, in.ID)
	if err != nil || st.AllocatedMemoryBytes != size+hotplug {
		t.Fatalf("stats: %+v %v", st, err)
	}
	t.Logf("1GB+3GB guest: Running after %v, balloon at target by %v; MemTotal %d MiB at program start, then %d MiB, MemAvailable %d MiB; VMM RSS %d MiB, CPU %.1f s",
		running.Round(time.Millisecond), inflated.Round(time.Millisecond), startMem>>20, total>>20, avail>>20, st.RSSBytes>>20, st.CPUSeconds)

	if err := d.Instances.SetMemoryTarget(ctx, in.ID, size+hotplug); err != nil {
		t.Fatal(err)
	}
	grown, _ := waitMemTotal(t, d, in.ID, "above size + 2GB", func(n int64) bool { return n > size+2<<30 })
	t.Logf("after SetMemoryTarget(4GB): MemTotal %d MiB", grown>>20)
	if err := d.Instances.SetMemoryTarget(ctx, in.ID, size+1<<30); err != nil {
		t.Fatal(err)
	}
	waitMemTotal(t, d, in.ID, "at most size + 1GB", func(n int64) bool { return n <= size+1<<30 })

	// Standby keeps the balloon's state: the restored guest has the same
	// memory as before.
	if _, err := d.Instances.Standby(ctx, in.ID, instances.StandbyParams{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("standby of the 1GB+3GB guest: %d MiB on disk", dirBytes(filepath.Join(d.Config.Paths().InstanceDir(in.ID), "standby"))>>20)
	if _, err := d.Instances.Restore(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if total, _ := meminfo(t, d, in.ID); total > size+1<<30 || total < size {
		t.Fatalf("after restore: MemTotal %d MiB, want the target it was saved with (2 GiB)", total>>20)
	}

	// A fork continues the same memory state and its balloon still works.
	f, err := d.Instances.Fork(ctx, in.ID, instances.ForkParams{Name: "hot-fork", FromRunning: true})
	if err != nil {
		t.Fatal(err)
	}
	if f.HotplugSize != "3GB" {
		t.Fatalf("fork view: %+v", f)
	}
	if err := d.Instances.SetMemoryTarget(ctx, f.ID, size); err != nil {
		t.Fatal(err)
	}
	waitMemTotal(t, d, f.ID, "at most size in the fork", func(n int64) bool { return n <= size })
}

// The reference point for the numbers above: the same guest without
// hotplug memory.
func TestBootWithoutHotplugForComparison(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	ref := sleeper(t)
	start := time.Now()
	in, err := d.Instances.Create(context.Background(), instances.CreateParams{Name: "cold", Image: ref, Size: "1GB", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)
	running := time.Since(start)
	total, avail := meminfo(t, d, in.ID)
	if total > 1<<30 || total < 1<<30-256<<20 {
		t.Fatalf("MemTotal %d MiB", total>>20)
	}
	st, err := d.Instances.Stats(context.Background(), in.ID)
	if err != nil || st.AllocatedMemoryBytes != 1<<30 {
		t.Fatalf("stats: %+v %v", st, err)
	}
	t.Logf("1GB guest: Running after %v; MemTotal %d MiB, MemAvailable %d MiB; VMM RSS %d MiB, CPU %.1f s",
		running.Round(time.Millisecond), total>>20, avail>>20, st.RSSBytes>>20, st.CPUSeconds)
	if _, err := d.Instances.Standby(context.Background(), in.ID, instances.StandbyParams{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("standby of the 1GB guest: %d MiB on disk", dirBytes(filepath.Join(d.Config.Paths().InstanceDir(in.ID), "standby"))>>20)
}

// rateOf is bytes per second over d.
func rateOf(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() }

// disk_io_bps: writes to the writable disk go no faster than the limit.
// Only an upper bound is asserted (a loaded host makes it slower, never
// faster).
func TestDiskIOLimit(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	ref := sleeper(t)
	const limit = 2 << 20
	in, err := d.Instances.Create(context.Background(), instances.CreateParams{Name: "slowdisk", Image: ref, Size: "256MB", VCPUs: 1, DiskIOBps: "2MB/s"})
	if err != nil {
		t.Fatal(err)
	}
	if in.DiskIOBps != "2MB/s" {
		t.Fatalf("view: %+v", in)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)
	const n = 6 << 20
	start := time.Now()
	guestRun(t, d, in.ID, "dd", "if=/dev/zero", "of=/ddtest", "bs=64k", "count="+strconv.Itoa(n>>16), "oflag=direct")
	took := time.Since(start)
	got := rateOf(n, took)
	t.Logf("wrote %d MiB with O_DIRECT in %v: %.2f MB/s (limit %.2f MB/s)", n>>20, took.Round(time.Millisecond), got/(1<<20), float64(limit)/(1<<20))
	if got > 1.5*limit {
		t.Fatalf("disk writes at %.2f MB/s, limit %.2f MB/s", got/(1<<20), float64(limit)/(1<<20))
	}
	// The limit is on the VM's command line, so a restore keeps it.
	argv := readArgvT(t, d.Config.Paths().InstanceDir(in.ID))
	if !strings.Contains(argv, "throttling.bps-total=2097152") {
		t.Fatalf("no throttling in the VM's argv: %s", argv)
	}
}

func readArgvT(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "qemu.args.json"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// transferServer serves GET /down?n=N (N zero bytes) and POST /up (counts
// the body, timing first byte to end) inside the test's netns.
type transferServer struct {
	mu       sync.Mutex
	upBytes  int64
	upTook   time.Duration
	upFinish chan struct{}
}

func (s *transferServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/down":
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 64<<10)
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	case "/up":
		one := make([]byte, 1)
		if _, err := io.ReadFull(r.Body, one); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		start := time.Now()
		rest, err := io.Copy(io.Discard, r.Body)
		took := time.Since(start)
		s.mu.Lock()
		s.upBytes, s.upTook = rest+1, took
		s.mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		io.WriteString(w, "ok\n")
	}
}

// network.bandwidth_*: a real guest downloading from and uploading to an
// HTTP server beyond the host (a namespace behind the test's netns: guests
// may not open connections to the host itself) is held to the limits, and
// a restored VM gets its shaped TAP back.
func TestBandwidthLimits(t *testing.T) {
	t.Parallel()
	nettest.RequireRoot(t)
	ns := nettest.NewNS(t)
	outside := nettest.AddOutside(t, ns)
	d := newDaemonWith(t, map[string]string{"network_mode": "bridge", "network_netns": ns})
	ref := sleeper(t)
	ctx := context.Background()
	const limit = 1_000_000 // 8Mbps = 1,000,000 bytes/s
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "shaped", Image: ref, Size: "256MB", VCPUs: 1,
		BandwidthDownload: "8Mbps", BandwidthUpload: "8Mbps"})
	if err != nil {
		t.Fatal(err)
	}
	if in.BandwidthDownload != "8Mbps" || in.BandwidthUpload != "8Mbps" {
		t.Fatalf("view: %+v", in)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)
	lease, ok := d.Network.Lease(in.ID)
	if !ok {
		t.Fatal("no lease")
	}
	ln := nettest.Listen(t, outside, "192.0.2.2:0")
	srv := &transferServer{}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	url := "http://" + ln.Addr().String()

	const n = 3_000_000
	measure := func() (down, up float64) {
		start := time.Now()
		guestRun(t, d, in.ID, "wget", "-q", "-O", "/dev/null", fmt.Sprintf("%s/down?n=%d", url, n))
		down = rateOf(n, time.Since(start))
		// busybox wget sends --post-file as a C string: no NUL bytes.
		guestRun(t, d, in.ID, "sh", "-c", fmt.Sprintf("yes | head -c %d > /tmp/up && wget -q -O /dev/null --post-file=/tmp/up %s/up", n, url))
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if srv.upBytes != n {
			t.Fatalf("server got %d bytes of upload, want %d", srv.upBytes, n)
		}
		return down, rateOf(n, srv.upTook)
	}
	down, up := measure()
	t.Logf("download %.2f MB/s, upload %.2f MB/s (limit %.2f MB/s each way)", down/1e6, up/1e6, limit/1e6)
	if down > 1.5*limit || up > 1.5*limit {
		t.Fatalf("over the limit: download %.0f B/s, upload %.0f B/s, limit %d B/s", down, up, limit)
	}

	// Standby drops the TAP; restore recreates it with the limits.
	if _, err := d.Instances.Standby(ctx, in.ID, instances.StandbyParams{}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Instances.Restore(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	qd := nettest.Run(t, ns, "tc", "qdisc", "show", "dev", lease.TAP)
	ifb := nettest.Run(t, ns, "tc", "qdisc", "show", "dev", "hb"+strings.TrimPrefix(lease.TAP, "hm"))
	if !strings.Contains(qd, "tbf") || !strings.Contains(qd, "rate 8Mbit") || !strings.Contains(qd, "ingress") || !strings.Contains(ifb, "rate 8Mbit") {
		t.Fatalf("after restore, TAP qdiscs:\n%s\nifb:\n%s", qd, ifb)
	}
	down, up = measure()
	t.Logf("after restore: download %.2f MB/s, upload %.2f MB/s", down/1e6, up/1e6)
	if down > 1.5*limit || up > 1.5*limit {
		t.Fatalf("over the limit after restore: download %.0f B/s, upload %.0f B/s", down, up)
	}
}
