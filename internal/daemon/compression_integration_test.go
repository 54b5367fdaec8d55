package daemon_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hypeman/internal/daemon"
	"hypeman/internal/hypervisor"
	"hypeman/internal/hypervisor/qemu"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/testutil/testimage"
)

// compressionCases: uncompressed and both ends of both level ranges.
var compressionCases = []hypervisor.Compression{
	{},
	{Algorithm: "zstd", Level: 1}, {Algorithm: "zstd", Level: 19},
	{Algorithm: "lz4", Level: 0}, {Algorithm: "lz4", Level: 9},
}

// stateFileOf names the state file of an instance's standby snapshot as
// the driver recorded it.
func stateFileOf(t *testing.T, d *daemon.Daemon, id string) string {
	t.Helper()
	m, err := qemu.ReadSnapshotMeta(filepath.Join(d.Config.Paths().InstanceDir(id), "standby"))
	if err != nil {
		t.Fatal(err)
	}
	return m.State.File
}

// restoreContinues restores a Standby instance and checks that its counter
// continues from where it stood at the standby.
func restoreContinues(t *testing.T, d *daemon.Daemon, id, what string) {
	t.Helper()
	at, _ := lastCount(t, d, id)
	offset := len(serialLog(t, d, id))
	if _, err := d.Instances.Restore(context.Background(), id); err != nil {
		t.Fatalf("%s: restore: %v", what, err)
	}
	waitCountAbove(t, d, id, at+2)
	if c := countsAfter(t, d, id, offset); c[0] != at+1 {
		t.Fatalf("%s: counter at %d before standby, continued with %v", what, at, c)
	}
}

func TestCompressedStandbyAndSnapshotForks(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	ref := testimage.Push(t, testimage.Registry(t), "test/counter", testimage.Busybox(t, counterImage(t)))
	ctx := context.Background()
	policy := hypervisor.Compression{Algorithm: "lz4", Level: 3}
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "comp", Image: ref, Size: "256MB", VCPUs: 1,
		SnapshotPolicy: &instances.SnapshotPolicy{Compression: &policy}})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)
	waitCountAbove(t, d, in.ID, 3)

	// Standby + restore with every setting; the request overrides the
	// instance's policy.
	for _, c := range compressionCases {
		t0 := time.Now()
		sb, err := d.Instances.Standby(ctx, in.ID, instances.StandbyParams{Compression: &c})
		if err != nil {
			t.Fatalf("standby %s: %v", c, err)
		}
		sc := sb.StandbyCompression
		if sb.State != state.Standby || sc == nil || sc.Compression != c || sc.UncompressedBytes == 0 ||
			(c.Enabled() != (sc.State == instances.CompressionStateCompressed)) ||
			(c.Enabled() && (sc.CompressedBytes == 0 || sc.CompressedBytes >= sc.UncompressedBytes)) {
			t.Fatalf("standby %s: %s %+v", c, sb.State, sc)
		}
		if f, want := stateFileOf(t, d, in.ID), map[string]string{"": "memory", "zstd": "memory.zst", "lz4": "memory.lz4"}[c.Algorithm]; f != want {
			t.Fatalf("standby %s stored %s, want %s", c, f, want)
		}
		t.Logf("standby %s: %v, %d → %d bytes", c, time.Since(t0).Round(time.Millisecond), sc.UncompressedBytes, sc.CompressedBytes)
		restoreContinues(t, d, in.ID, "standby "+c.String())
	}

	// No request: the policy applies. A delay makes the standby save
	// uncompressed and compress afterwards; the restore uses the result.
	delay := 50 * time.Millisecond
	sb, err := d.Instances.Standby(ctx, in.ID, instances.StandbyParams{CompressionDelay: &delay})
	if err != nil {
		t.Fatal(err)
	}
	// (The job may already have finished on a fast host.)
	if sc := sb.StandbyCompression; sc == nil || sc.Compression != policy ||
		(sc.State != instances.CompressionStateCompressing && sc.State != instances.CompressionStateCompressed) {
		t.Fatalf("delayed standby: %+v", sc)
	}
	var sc *instances.StandbyCompression
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		got := mustGet(t, d, in.ID)
		if sc = got.StandbyCompression; sc.State != instances.CompressionStateCompressing {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delayed compression did not finish: %+v", sc)
		}
	}
	if sc.State != instances.CompressionStateCompressed || sc.Compression != policy || stateFileOf(t, d, in.ID) != "memory.lz4" {
		t.Fatalf("after delayed compression: %+v, %s", sc, stateFileOf(t, d, in.ID))
	}
	restoreContinues(t, d, in.ID, "delayed compression")

	// Restore before a long delay ends: the uncompressed state restores.
	long := time.Hour
	if _, err := d.Instances.Standby(ctx, in.ID, instances.StandbyParams{CompressionDelay: &long}); err != nil {
		t.Fatal(err)
	}
	if f := stateFileOf(t, d, in.ID); f != "memory" {
		t.Fatalf("delayed standby stored %s", f)
	}
	restoreContinues(t, d, in.ID, "pending compression")

	// Snapshots of the running instance with every setting, each forked
	// into a new instance that continues from the snapshot's memory.
	for _, c := range compressionCases {
		name := "s-" + strings.NewReplacer(":", "-").Replace(c.String())
		sn, err := d.Instances.CreateSnapshot(ctx, in.ID, instances.SnapshotParams{Name: name, Compression: &c})
		if err != nil {
			t.Fatalf("snapshot %s: %v", c, err)
		}
		atSnap, _ := lastCount(t, d, in.ID)
		wantState := instances.CompressionStateNone
		if c.Enabled() {
			wantState = instances.CompressionStateCompressed
		}
		if sn.Compression != c || sn.CompressionState != wantState || sn.UncompressedBytes == 0 ||
			(c.Enabled() && (sn.CompressedBytes == 0 || sn.CompressedBytes >= sn.UncompressedBytes)) {
			t.Fatalf("snapshot %s: %+v", c, sn)
		}
		f, err := d.Instances.ForkSnapshot(ctx, sn.ID, instances.ForkParams{Name: "f" + name})
		if err != nil {
			t.Fatalf("fork of snapshot %s: %v", c, err)
		}
		if f.State != state.Running {
			t.Fatalf("fork of snapshot %s: %s", c, f.State)
		}
		waitCountAbove(t, d, f.ID, atSnap+1)
		if first := countsAfter(t, d, f.ID, 0)[0]; first > atSnap+2 || first < atSnap-3 {
			t.Fatalf("fork of snapshot %s started at %d; the snapshot was taken near %d", c, first, atSnap)
		}
		if err := d.Instances.Delete(ctx, f.ID); err != nil {
			t.Fatal(err)
		}
		if err := d.Instances.DeleteSnapshot(ctx, sn.ID); err != nil {
			t.Fatal(err)
		}
	}
	if got := mustGet(t, d, in.ID); got.State != state.Running {
		t.Fatalf("source after snapshots: %s", got.State)
	}
}
