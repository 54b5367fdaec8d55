package daemon_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"hypeman/internal/daemon"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/testutil/testimage"
)

func TestSnapshotsTakeRestoreFork(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/counter", testimage.Busybox(t, counterImage(t)))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "snapme", Image: ref, Size: "256MB", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, in.ID, state.Running, bootTimeout)
	waitCountAbove(t, d, in.ID, 3)

	// A Standby-kind snapshot of a Running instance: it keeps running.
	snap, err := d.Instances.CreateSnapshot(ctx, in.ID, instances.SnapshotParams{Name: "warm", Tags: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	atSnap, _ := lastCount(t, d, in.ID)
	if snap.Kind != instances.SnapshotStandby || snap.SourceInstanceID != in.ID || snap.SizeBytes == 0 {
		t.Fatalf("snapshot: %+v", snap)
	}
	if s := mustGet(t, d, in.ID); s.State != state.Running {
		t.Fatalf("source after snapshot: %s", s.State)
	}
	waitCountAbove(t, d, in.ID, atSnap+5)
	if _, err := d.Instances.CreateSnapshot(ctx, in.ID, instances.SnapshotParams{Name: "warm"}); !errors.Is(err, instances.ErrNameInUse) {
		t.Fatalf("duplicate snapshot name: %v", err)
	}
	list, _ := d.Instances.ListSnapshots(ctx, instances.SnapshotFilter{})
	if len(list) != 1 || list[0].ID != snap.ID {
		t.Fatalf("list: %+v", list)
	}

	// Restore the instance to the snapshot: it continues from the snapshot's
	// counter value, not from where it was stopped.
	if _, err := d.Instances.Stop(ctx, in.ID, instances.StopParams{}); err != nil {
		t.Fatal(err)
	}
	offset := len(serialLog(t, d, in.ID))
	if _, err := d.Instances.RestoreSnapshot(ctx, in.ID, "warm", instances.RestoreSnapshotParams{}); err != nil {
		t.Fatal(err)
	}
	waitNewCounts(t, d, in.ID, offset)
	if c := countsAfter(t, d, in.ID, offset); c[0] > atSnap+2 || c[0] < atSnap-1 {
		t.Fatalf("after snapshot restore the counter is at %d; snapshot was taken near %d", c[0], atSnap)
	}

	// Fork the snapshot into a new instance.
	f, err := d.Instances.ForkSnapshot(ctx, snap.ID, instances.ForkParams{Name: "from-snap"})
	if err != nil {
		t.Fatal(err)
	}
	if f.State != state.Running {
		t.Fatalf("fork from snapshot: %s", f.State)
	}
	c := waitCountAbove(t, d, f.ID, atSnap)
	if first := countsAfter(t, d, f.ID, 0)[0]; first > atSnap+2 {
		t.Fatalf("snapshot fork started at %d, snapshot near %d (got %d later)", first, atSnap, c)
	}
	if err := d.Instances.DeleteSnapshot(ctx, "warm"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Instances.GetSnapshot(ctx, snap.ID); !errors.Is(err, instances.ErrSnapshotNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

// waitNewCounts waits until the counter printed something after offset.
func waitNewCounts(t *testing.T, d *daemon.Daemon, id string, offset int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if len(countsAfter(t, d, id, offset)) > 0 {
			return
		}
	}
	t.Fatalf("%s printed no counter after the restore:\n%s", id, serialLog(t, d, id))
}
