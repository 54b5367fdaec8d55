package instances

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/instances/state"
	"hypeman/internal/network"
	"hypeman/internal/paths"
)

// fakeNet hands out bridge-mode leases and records the limits each TAP was
// given.
type fakeNet struct {
	mode network.Mode
	mu   sync.Mutex
	taps map[string][]network.Bandwidth // by instance: every CreateTAP
}

func (n *fakeNet) Allocate(ctx context.Context, id string) (*network.Lease, error) {
	return n.lease(id), nil
}
func (n *fakeNet) lease(id string) *network.Lease {
	l := &network.Lease{InstanceID: id, Mode: n.mode, IP: "10.100.0.2", PrefixLen: 16, Gateway: "10.100.0.1", MAC: "02:00:00:00:00:02"}
	if n.mode == network.ModeBridge {
		l.TAP = "hm0a640002"
	}
	return l
}
func (n *fakeNet) Lease(id string) (*network.Lease, bool)          { return n.lease(id), true }
func (n *fakeNet) Release(ctx context.Context, id string) error    { return nil }
func (n *fakeNet) DeleteTAP(context.Context, *network.Lease) error { return nil }
func (n *fakeNet) Mode() network.Mode                              { return n.mode }
func (n *fakeNet) CreateTAP(ctx context.Context, l *network.Lease, bw network.Bandwidth) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.taps[l.InstanceID] = append(n.taps[l.InstanceID], bw)
	return nil
}
func (n *fakeNet) shaped(id string) []network.Bandwidth {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]network.Bandwidth(nil), n.taps[id]...)
}

func newNetManager(t *testing.T, root string, hv *fakeHV, net Network) *Manager {
	t.Helper()
	bus := events.New(events.Options{})
	m, err := New(context.Background(), Config{Paths: paths.New(root), Hypervisor: hv, Images: fakeImages{}, Events: bus,
		Network: net, GuestStopTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); bus.Close() })
	return m
}

// The knobs reach the VM config and the TAP, show in the instance view and
// stats in display form, survive a daemon restart (and are re-applied to a
// re-adopted VM's TAP).
func TestKnobsReachVMAndTAP(t *testing.T) {
	hv := newFakeHV()
	nw := &fakeNet{mode: network.ModeBridge, taps: map[string][]network.Bandwidth{}}
	root := t.TempDir()
	m := newNetManager(t, root, hv, nw)
	ctx := context.Background()
	in, err := m.Create(ctx, CreateParams{Name: "knobs", Image: "img", Size: "1GB", HotplugSize: "3GB",
		DiskIOBps: "100MB/s", BandwidthDownload: "1Gbps", BandwidthUpload: "125MB/s"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := hv.vm(m.dir(in.ID)).cfg
	if cfg.MemoryMiB != 4096 || cfg.BalloonMiB != 3072 || cfg.DiskIOBps != 100<<20 {
		t.Fatalf("vm config: memory %d MiB, balloon %d MiB, disk %d B/s", cfg.MemoryMiB, cfg.BalloonMiB, cfg.DiskIOBps)
	}
	want := network.Bandwidth{Download: 125_000_000, Upload: 125 << 20}
	if got := nw.shaped(in.ID); len(got) != 1 || got[0] != want {
		t.Fatalf("TAP limits %+v, want [%+v]", got, want)
	}
	if in.Size != "1GB" || in.HotplugSize != "3GB" || in.DiskIOBps != "100MB/s" || in.BandwidthDownload != "1Gbps" || in.BandwidthUpload != "125MB/s" {
		t.Fatalf("view: %+v", in)
	}
	st, err := m.Stats(ctx, in.ID)
	if err != nil || st.AllocatedMemoryBytes != 4<<30 || st.MemoryBytes != 1<<30 {
		t.Fatalf("stats %+v, %v", st, err)
	}

	// A restarted daemon re-adopts the VM: same view, limits re-applied.
	m.Close()
	m2 := newNetManager(t, root, hv, nw)
	again, err := m2.Get(ctx, in.ID)
	if err != nil || again.HotplugSize != "3GB" || again.BandwidthUpload != "125MB/s" || again.DiskIOBps != "100MB/s" {
		t.Fatalf("after restart: %+v, %v", again, err)
	}
	if got := nw.shaped(in.ID); len(got) != 2 || got[1] != want {
		t.Fatalf("re-adopt did not re-apply the limits: %+v", got)
	}

	// A fork (here of the Stopped instance: a fresh boot) has the same knobs.
	if _, err := m2.Stop(ctx, in.ID, StopParams{}); err != nil {
		t.Fatal(err)
	}
	f, err := m2.Fork(ctx, in.ID, ForkParams{Name: "knobs-fork", TargetState: state.Running})
	if err != nil {
		t.Fatal(err)
	}
	fc := hv.vm(m2.dir(f.ID)).cfg
	if fc.MemoryMiB != 4096 || fc.BalloonMiB != 3072 || fc.DiskIOBps != 100<<20 || f.BandwidthDownload != "1Gbps" {
		t.Fatalf("fork: cfg %+v view %+v", fc, f)
	}
	if got := nw.shaped(f.ID); len(got) != 1 || got[0] != want {
		t.Fatalf("fork TAP limits %+v", got)
	}

	// Nothing set: no balloon, no limits, empty display strings.
	plain, err := m2.Create(ctx, CreateParams{Name: "plain", Image: "img", Size: "512MB", HotplugSize: "0", DiskIOBps: "0"})
	if err != nil {
		t.Fatal(err)
	}
	pc := hv.vm(m2.dir(plain.ID)).cfg
	if pc.MemoryMiB != 512 || pc.BalloonMiB != 0 || pc.DiskIOBps != 0 || plain.HotplugSize != "" || plain.DiskIOBps != "" {
		t.Fatalf("plain: cfg %+v view %+v", pc, plain)
	}
	if got := nw.shaped(plain.ID); len(got) != 1 || !got[0].IsZero() {
		t.Fatalf("plain TAP limits %+v", got)
	}
}

func TestKnobsBadInput(t *testing.T) {
	hv := newFakeHV()
	bridge := newNetManager(t, t.TempDir(), hv, &fakeNet{mode: network.ModeBridge, taps: map[string][]network.Bandwidth{}})
	user := newNetManager(t, t.TempDir(), hv, &fakeNet{mode: network.ModeUser, taps: map[string][]network.Bandwidth{}})
	none, _ := newTestManager(t, t.TempDir(), hv)
	off := false
	cases := []struct {
		m      *Manager
		p      CreateParams
		field  string
		reason string
	}{
		{bridge, CreateParams{HotplugSize: "lots"}, "hotplug_size", "not a size"},
		{bridge, CreateParams{HotplugSize: "1.5MB"}, "hotplug_size", "whole number of MB"},
		{bridge, CreateParams{HotplugSize: "300GB"}, "hotplug_size", "maximum"},
		{bridge, CreateParams{DiskIOBps: "fast"}, "disk_io_bps", "500Mbps"},
		{bridge, CreateParams{DiskIOBps: "100MBps"}, "disk_io_bps", "ambiguous"},
		{bridge, CreateParams{DiskIOBps: "10kbps"}, "disk_io_bps", "out of range"},
		{bridge, CreateParams{DiskIOBps: "1TB/s"}, "disk_io_bps", "out of range"},
		{bridge, CreateParams{BandwidthDownload: "1G"}, "network.bandwidth_download", "1Gbps"},
		{bridge, CreateParams{BandwidthUpload: "-5Mbps"}, "network.bandwidth_upload", "not a rate"},
		{user, CreateParams{BandwidthDownload: "1Gbps"}, "network.bandwidth_download", "bridge networking"},
		{none, CreateParams{BandwidthUpload: "1Gbps"}, "network.bandwidth_upload", "without networking"},
		{bridge, CreateParams{BandwidthUpload: "1Gbps", NetworkEnabled: &off}, "network.bandwidth_upload", "network.enabled=false"},
	}
	for _, c := range cases {
		c.p.Name, c.p.Image = "bad", "img"
		_, err := c.m.Create(context.Background(), c.p)
		var ia *InvalidArgumentError
		if !errors.As(err, &ia) || ia.Field != c.field || !strings.Contains(ia.Reason, c.reason) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: got %v, want %s: …%s…", c.p, err, c.field, c.reason)
		}
	}
	// Zero limits are fine everywhere, even without networking.
	if _, err := user.Create(context.Background(), CreateParams{Name: "ok", Image: "img", BandwidthDownload: "0"}); err != nil {
		t.Fatal(err)
	}
}

func TestSetMemoryTarget(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in, err := m.Create(ctx, CreateParams{Name: "grow", Image: "img", Size: "1GB", HotplugSize: "3GB"})
	if err != nil {
		t.Fatal(err)
	}
	vm := hv.vm(m.dir(in.ID))
	if got, _ := vm.MemoryActual(ctx); got != 1<<30 {
		t.Fatalf("boot target %d, want size", got)
	}
	if err := m.SetMemoryTarget(ctx, "grow", 4<<30); err != nil {
		t.Fatal(err)
	}
	if got, _ := vm.MemoryActual(ctx); got != 4<<30 {
		t.Fatalf("target %d after growing to size+hotplug", got)
	}
	for _, bad := range []int64{1<<30 - 1, 4<<30 + 1, 0} {
		var ia *InvalidArgumentError
		if err := m.SetMemoryTarget(ctx, "grow", bad); !errors.As(err, &ia) || ia.Field != "memory_target" {
			t.Errorf("target %d: %v", bad, err)
		}
	}
	plain, err := m.Create(ctx, CreateParams{Name: "plain", Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	var ia *InvalidArgumentError
	if err := m.SetMemoryTarget(ctx, plain.ID, 1<<30); !errors.As(err, &ia) || !strings.Contains(ia.Reason, "no hotplug memory") {
		t.Errorf("no hotplug: %v", err)
	}
	vm.exit(0, "done")
	waitFor(t, m, in.ID, state.Stopped)
	var te *TransitionError
	if err := m.SetMemoryTarget(ctx, in.ID, 2<<30); !errors.As(err, &te) {
		t.Errorf("stopped: %v", err)
	}
}
