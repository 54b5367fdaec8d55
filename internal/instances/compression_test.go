package instances

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
)

var (
	cNone  = hypervisor.Compression{}
	cZstd1 = hypervisor.Compression{Algorithm: "zstd", Level: 1}
	cZstd5 = hypervisor.Compression{Algorithm: "zstd", Level: 5}
	cLZ40  = hypervisor.Compression{Algorithm: "lz4", Level: 0}
	cLZ49  = hypervisor.Compression{Algorithm: "lz4", Level: 9}
)

func ptr[T any](v T) *T { return &v }

// running creates an instance and waits until it runs on the fake.
func running(t *testing.T, m *Manager, hv *fakeHV, p CreateParams) *Instance {
	t.Helper()
	if p.Image == "" {
		p.Image = "img"
	}
	in, err := m.Create(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	hv.vm(m.dir(in.ID)).print("HYPEMAN-PROGRAM-START")
	return waitFor(t, m, in.ID, state.Running)
}

// lastSave is the compression of the last SaveState.
func (h *fakeHV) lastSave() hypervisor.Compression {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.saves[len(h.saves)-1]
}

func (h *fakeHV) convertCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.converts)
}

func TestCompressionPrecedence(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManagerWith(t, t.TempDir(), hv, func(c *Config) { c.SnapshotCompression = cLZ40 })
	ctx := context.Background()
	plain := running(t, m, hv, CreateParams{Name: "plain"})
	pol := running(t, m, hv, CreateParams{Name: "pol", SnapshotPolicy: &SnapshotPolicy{Compression: &cZstd5}})
	if pol.SnapshotPolicy == nil || *pol.SnapshotPolicy.Compression != cZstd5 || plain.SnapshotPolicy != nil {
		t.Fatalf("policy view: %+v / %+v", pol.SnapshotPolicy, plain.SnapshotPolicy)
	}

	standby := func(id string, p StandbyParams, want hypervisor.Compression) {
		t.Helper()
		in, err := m.Standby(ctx, id, p)
		if err != nil {
			t.Fatal(err)
		}
		sc := in.StandbyCompression
		wantState := CompressionStateNone
		if want.Enabled() {
			wantState = CompressionStateCompressed
		}
		if hv.lastSave() != want || in.State != state.Standby || sc == nil || sc.Compression != want || sc.State != wantState ||
			sc.UncompressedBytes != fakeStreamBytes {
			t.Fatalf("standby %s %+v: saved %s, view %+v, want %s", id, p, hv.lastSave(), sc, want)
		}
		if in, err = m.Restore(ctx, id); err != nil || in.State != state.Running || in.StandbyCompression != nil {
			t.Fatalf("restore: %v %+v", err, in)
		}
	}
	standby(plain.ID, StandbyParams{}, cLZ40)                      // server default
	standby(pol.ID, StandbyParams{}, cZstd5)                       // instance policy
	standby(pol.ID, StandbyParams{Compression: &cLZ49}, cLZ49)     // request
	standby(pol.ID, StandbyParams{Compression: &cNone}, cNone)     // explicit none wins
	standby(plain.ID, StandbyParams{Compression: &cZstd1}, cZstd1) // request over default
	standby(plain.ID, StandbyParams{CompressionDelay: ptr(0 * time.Second)}, cLZ40)

	snap := func(id string, p SnapshotParams, want hypervisor.Compression) *Snapshot {
		t.Helper()
		sn, err := m.CreateSnapshot(ctx, id, p)
		if err != nil {
			t.Fatal(err)
		}
		wantState, wantComp := CompressionStateNone, int64(0)
		if want.Enabled() {
			wantState, wantComp = CompressionStateCompressed, fakeStreamBytes/4
		}
		if sn.Compression != want || sn.CompressionState != wantState || sn.CompressedBytes != wantComp ||
			sn.UncompressedBytes != fakeStreamBytes {
			t.Fatalf("snapshot %+v: %+v, want %s", p, sn, want)
		}
		if got, err := m.GetSnapshot(ctx, sn.ID); err != nil || got.Compression != want || got.CompressionState != wantState {
			t.Fatalf("snapshot as read back: %v %+v", err, got)
		}
		return sn
	}
	snap(pol.ID, SnapshotParams{}, cZstd5)
	if hv.lastSave() != cZstd5 {
		t.Fatalf("live snapshot saved as %s", hv.lastSave())
	}
	snap(pol.ID, SnapshotParams{Compression: &cLZ49}, cLZ49)
	snap(plain.ID, SnapshotParams{}, cLZ40)

	// A snapshot of a Standby instance converts its saved state to the
	// snapshot's setting; the standby state itself is not touched.
	if _, err := m.Standby(ctx, pol.ID, StandbyParams{Compression: &cNone}); err != nil {
		t.Fatal(err)
	}
	n := hv.convertCount()
	sn := snap(pol.ID, SnapshotParams{Compression: &cZstd1}, cZstd1)
	if hv.convertCount() != n+1 {
		t.Fatal("snapshot of a Standby instance did not convert its state")
	}
	if c, _ := readFakeState(filepath.Join(m.dir(pol.ID), standbyDir)); c != cNone {
		t.Fatalf("standby state changed to %s by a snapshot", c)
	}
	// Restoring that snapshot into the instance: its standby state is the
	// snapshot's.
	if _, err := m.Stop(ctx, plain.ID, StopParams{}); err != nil {
		t.Fatal(err)
	}
	in, err := m.RestoreSnapshot(ctx, pol.ID, sn.ID, RestoreSnapshotParams{})
	if err != nil || in.State != state.Running {
		t.Fatalf("restore snapshot: %v %+v", err, in)
	}
	// A fork of a Standby snapshot kept in Standby reports the snapshot's
	// storage and keeps the source's policy.
	f, err := m.ForkSnapshot(ctx, sn.ID, ForkParams{Name: "forked", TargetState: state.Standby})
	if err != nil {
		t.Fatal(err)
	}
	if f.StandbyCompression == nil || f.StandbyCompression.Compression != cZstd1 || f.StandbyCompression.State != CompressionStateCompressed ||
		f.SnapshotPolicy == nil || *f.SnapshotPolicy.Compression != cZstd5 {
		t.Fatalf("fork: %+v %+v", f.StandbyCompression, f.SnapshotPolicy)
	}
}

func TestCompressionArgumentsRefused(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in := running(t, m, hv, CreateParams{Name: "web"})
	for _, tc := range []struct {
		name, field, reason string
		call                func() error
	}{
		{"standby zstd level 0", "compression.level", "zstd levels are 1-19", func() error {
			_, err := m.Standby(ctx, in.ID, StandbyParams{Compression: &hypervisor.Compression{Algorithm: "zstd"}})
			return err
		}},
		{"standby algorithm", "compression.algorithm", "not one of zstd, lz4", func() error {
			_, err := m.Standby(ctx, in.ID, StandbyParams{Compression: &hypervisor.Compression{Algorithm: "gzip", Level: 1}})
			return err
		}},
		{"standby negative delay", "compression_delay", "out of range", func() error {
			_, err := m.Standby(ctx, in.ID, StandbyParams{CompressionDelay: ptr(-time.Second)})
			return err
		}},
		{"standby huge delay", "compression_delay", "out of range", func() error {
			_, err := m.Standby(ctx, in.ID, StandbyParams{CompressionDelay: ptr(5000 * time.Hour)})
			return err
		}},
		{"snapshot lz4 level", "compression.level", "lz4 levels are 0-9", func() error {
			_, err := m.CreateSnapshot(ctx, in.ID, SnapshotParams{Compression: &hypervisor.Compression{Algorithm: "lz4", Level: 12}})
			return err
		}},
		{"create policy level", "snapshot_policy.compression.level", "zstd levels are 1-19", func() error {
			_, err := m.Create(ctx, CreateParams{Name: "x", Image: "img", SnapshotPolicy: &SnapshotPolicy{Compression: &hypervisor.Compression{Algorithm: "zstd", Level: 20}}})
			return err
		}},
		{"create policy delay", "snapshot_policy.standby_compression_delay", "out of range", func() error {
			_, err := m.Create(ctx, CreateParams{Name: "x", Image: "img", SnapshotPolicy: &SnapshotPolicy{StandbyCompressionDelay: -time.Minute}})
			return err
		}},
	} {
		err := tc.call()
		var ia *InvalidArgumentError
		if !errors.As(err, &ia) || ia.Field != tc.field || !strings.Contains(ia.Reason, tc.reason) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want invalid %s (%s)", tc.name, err, tc.field, tc.reason)
		}
	}
	// Nothing happened to the instance.
	if got, _ := m.Get(ctx, in.ID); got.State != state.Running || len(hv.saves) != 0 {
		t.Fatalf("after refused calls: %s, %d saves", got.State, len(hv.saves))
	}
	if _, err := New(ctx, Config{Paths: m.cfg.Paths, Hypervisor: hv, Images: fakeImages{}, Events: m.cfg.Events,
		SnapshotCompression: hypervisor.Compression{Algorithm: "lz4", Level: 11}}); !errors.Is(err, hypervisor.ErrInvalidCompression) {
		t.Fatalf("manager with a bad server default: %v", err)
	}
}

// waitCompression polls (bounded) until the instance's standby state is no
// longer "compressing".
func waitCompression(t *testing.T, m *Manager, id string) *StandbyCompression {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		in, err := m.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if sc := in.StandbyCompression; sc != nil && sc.State != CompressionStateCompressing {
			return sc
		}
		if time.Now().After(deadline) {
			t.Fatalf("still compressing: %+v", in.StandbyCompression)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hasJob reports whether the instance has a delayed compression scheduled.
func hasJob(m *Manager, id string) bool {
	e, err := m.resolve(id)
	if err != nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.compress != nil
}

func noStandbyNext(t *testing.T, m *Manager, id string) {
	t.Helper()
	if left, _ := filepath.Glob(filepath.Join(m.dir(id), standbyNextPrefix+"*")); len(left) != 0 {
		t.Fatalf("delayed compression left %v", left)
	}
}

func TestDelayedStandbyCompression(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in := running(t, m, hv, CreateParams{Name: "web",
		SnapshotPolicy: &SnapshotPolicy{Compression: &cZstd5, StandbyCompressionDelay: time.Hour}})

	// The policy's delay: saved uncompressed, compression pending.
	sb, err := m.Standby(ctx, in.ID, StandbyParams{})
	if err != nil {
		t.Fatal(err)
	}
	sc := sb.StandbyCompression
	if hv.lastSave() != cNone || sc == nil || sc.State != CompressionStateCompressing || sc.Compression != cZstd5 ||
		sc.CompressAt == nil || time.Until(*sc.CompressAt) < 59*time.Minute || sc.CompressedBytes != 0 {
		t.Fatalf("delayed standby: saved %s, %+v", hv.lastSave(), sc)
	}
	if !hasJob(m, in.ID) {
		t.Fatal("no compression scheduled")
	}
	// Restore before the delay: the pending job is dropped, nothing converted.
	if _, err := m.Restore(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if hv.convertCount() != 0 || hasJob(m, in.ID) {
		t.Fatal("pending compression kept although the instance was restored")
	}

	// A request delay overrides the policy's: compressed soon after.
	if _, err := m.Standby(ctx, in.ID, StandbyParams{Compression: &cLZ49, CompressionDelay: ptr(time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	sc = waitCompression(t, m, in.ID)
	if sc.State != CompressionStateCompressed || sc.Compression != cLZ49 || sc.CompressedBytes != fakeStreamBytes/4 ||
		sc.UncompressedBytes != fakeStreamBytes || sc.CompressAt != nil || sc.Error != "" {
		t.Fatalf("after delayed compression: %+v", sc)
	}
	if c, err := readFakeState(filepath.Join(m.dir(in.ID), standbyDir)); err != nil || c != cLZ49 {
		t.Fatalf("standby dir holds %s (%v), want the converted state", c, err)
	}
	noStandbyNext(t, m, in.ID)
	var meta Metadata
	b, _ := os.ReadFile(filepath.Join(m.dir(in.ID), metadataFile))
	json.Unmarshal(b, &meta)
	if meta.StandbyCompression.State != CompressionStateCompressed {
		t.Fatalf("persisted: %+v", meta.StandbyCompression)
	}
	if _, err := m.Restore(ctx, in.ID); err != nil {
		t.Fatal(err)
	}

	// A failed conversion: state "error", the uncompressed state stays.
	hv.convertHook = func(ctx context.Context) error { return errors.New("disk full") }
	if _, err := m.Standby(ctx, in.ID, StandbyParams{Compression: &cZstd1, CompressionDelay: ptr(time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	sc = waitCompression(t, m, in.ID)
	if sc.State != CompressionStateError || !strings.Contains(sc.Error, "disk full") {
		t.Fatalf("failed compression: %+v", sc)
	}
	if c, _ := readFakeState(filepath.Join(m.dir(in.ID), standbyDir)); c != cNone {
		t.Fatalf("standby state after a failed compression: %s", c)
	}
	if in, err := m.Restore(ctx, in.ID); err != nil || in.State != state.Running {
		t.Fatalf("restore after a failed compression: %v", err)
	}
}

func TestRestoreCancelsRunningCompression(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in := running(t, m, hv, CreateParams{Name: "web"})
	entered := make(chan struct{}, 1)
	cancelled := make(chan struct{}, 1)
	hv.convertHook = func(ctx context.Context) error {
		entered <- struct{}{}
		<-ctx.Done() // a long conversion: only cancellation ends it
		cancelled <- struct{}{}
		return ctx.Err()
	}
	if _, err := m.Standby(ctx, in.ID, StandbyParams{Compression: &cZstd1, CompressionDelay: ptr(time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("delayed compression never started")
	}
	// Restore does not wait for the conversion: it cancels it.
	done := make(chan error, 1)
	go func() { _, err := m.Restore(ctx, in.ID); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("restore blocked behind a running compression")
	}
	select {
	case <-cancelled: // restore waited for the conversion to stop
	default:
		t.Fatal("restore returned while the conversion still ran")
	}
	got, _ := m.Get(ctx, in.ID)
	if got.State != state.Running || got.StandbyCompression != nil || hasJob(m, in.ID) {
		t.Fatalf("after restore: %s %+v", got.State, got.StandbyCompression)
	}
	noStandbyNext(t, m, in.ID)

	// Delete cancels too (and still removes everything).
	if _, err := m.Standby(ctx, in.ID, StandbyParams{Compression: &cZstd1, CompressionDelay: ptr(time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	<-entered
	if err := m.Delete(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cancelled:
	default:
		t.Fatal("delete returned while the conversion still ran")
	}
	if _, err := os.Stat(m.dir(in.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("instance dir after delete: %v", err)
	}
}

func TestPendingCompressionSurvivesDaemonRestart(t *testing.T) {
	root := t.TempDir()
	hv := newFakeHV()
	m, _ := newTestManager(t, root, hv)
	ctx := context.Background()
	in := running(t, m, hv, CreateParams{Name: "web"})
	entered := make(chan struct{}, 1)
	hv.convertHook = func(ctx context.Context) error {
		entered <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	if _, err := m.Standby(ctx, in.ID, StandbyParams{Compression: &cLZ40, CompressionDelay: ptr(time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	<-entered
	// A crashed conversion's output is left behind, too.
	os.MkdirAll(filepath.Join(m.dir(in.ID), standbyNextPrefix+"crashed"), 0o755)
	m.Close() // cancels the running conversion, keeps the record
	if sc := readMetaCompression(t, m, in.ID); sc.State != CompressionStateCompressing {
		t.Fatalf("persisted after close: %+v", sc)
	}

	hv.convertHook = nil
	m2, _ := newTestManager(t, root, hv)
	sc := waitCompression(t, m2, in.ID)
	if sc.State != CompressionStateCompressed || sc.Compression != cLZ40 {
		t.Fatalf("after restart: %+v", sc)
	}
	noStandbyNext(t, m2, in.ID)
}

func readMetaCompression(t *testing.T, m *Manager, id string) StandbyCompression {
	t.Helper()
	var meta Metadata
	b, err := os.ReadFile(filepath.Join(m.dir(id), metadataFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		t.Fatal(err)
	}
	return meta.StandbyCompression
}

func TestLegacySnapshotRecordsMigrate(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	for id, tc := range map[string]struct {
		json string
		want hypervisor.Compression
		st   CompressionState
	}{
		"oldzstd": {`{"id":"oldzstd","name":"a","kind":"Standby","compressed":true,"source":{}}`, cZstd1, CompressionStateCompressed},
		"oldraw":  {`{"id":"oldraw","name":"b","kind":"Standby","compressed":false,"source":{}}`, cNone, CompressionStateNone},
		"olddisk": {`{"id":"olddisk","name":"c","kind":"Stopped","source":{}}`, cNone, CompressionStateNone},
	} {
		dir := m.cfg.Paths.SnapshotDir(id)
		os.MkdirAll(dir, 0o755)
		if err := os.WriteFile(filepath.Join(dir, snapshotFile), []byte(tc.json), 0o644); err != nil {
			t.Fatal(err)
		}
		sn, err := m.GetSnapshot(ctx, id)
		if err != nil || sn.Compression != tc.want || sn.CompressionState != tc.st {
			t.Errorf("%s: %v %+v, want %s %s", id, err, sn, tc.want, tc.st)
		}
	}
}
