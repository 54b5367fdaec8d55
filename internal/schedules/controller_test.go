package schedules_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/events/eventstest"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/schedules"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeInstances is an instance manager holding one instance and its
// snapshots in memory.
type fakeInstances struct {
	clk   *eventstest.Clock
	mu    sync.Mutex
	inst  map[string]*instances.Instance
	snaps map[string]*instances.Snapshot
	seq   int
}

func newFake(clk *eventstest.Clock) *fakeInstances {
	return &fakeInstances{clk: clk, inst: map[string]*instances.Instance{}, snaps: map[string]*instances.Snapshot{}}
}

func (f *fakeInstances) add(id, name string, st state.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inst[id] = &instances.Instance{ID: id, Name: name, State: st}
}

func (f *fakeInstances) remove(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.inst, id)
}

func (f *fakeInstances) Get(_ context.Context, ref string) (*instances.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ok := f.inst[ref]
	if !ok {
		return nil, fmt.Errorf("%w: %s", instances.ErrNotFound, ref)
	}
	cp := *in
	return &cp, nil
}

func (f *fakeInstances) CreateSnapshot(_ context.Context, ref string, p instances.SnapshotParams) (*instances.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p.Kind != instances.SnapshotStandby {
		return nil, fmt.Errorf("kind %q, want Standby", p.Kind)
	}
	for _, s := range f.snaps {
		if s.Name == p.Name {
			return nil, fmt.Errorf("%w: %s", instances.ErrNameInUse, p.Name)
		}
	}
	f.seq++
	s := &instances.Snapshot{ID: fmt.Sprintf("snap%02d", f.seq), Name: p.Name, Kind: p.Kind, SourceInstanceID: ref, Tags: p.Tags, CreatedAt: f.clk.Now()}
	f.snaps[s.ID] = s
	return s, nil
}

func (f *fakeInstances) DeleteSnapshot(_ context.Context, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.snaps[ref]; !ok {
		return instances.ErrSnapshotNotFound
	}
	delete(f.snaps, ref)
	return nil
}

// names returns the snapshot names, sorted.
func (f *fakeInstances) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, s := range f.snaps {
		out = append(out, s.Name)
	}
	slices.Sort(out)
	return out
}

func (f *fakeInstances) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.snaps)
}

type rig struct {
	t   *testing.T
	dir string
	clk *eventstest.Clock
	bus *events.Bus
	f   *fakeInstances
}

func newRig(t *testing.T) *rig {
	clk := eventstest.NewClock(t0)
	bus := events.New(events.Options{Clock: clk})
	t.Cleanup(bus.Close)
	return &rig{t: t, dir: t.TempDir(), clk: clk, bus: bus, f: newFake(clk)}
}

func (r *rig) controller() *schedules.Controller {
	c, err := schedules.New(schedules.Config{Dir: r.dir, Instances: r.f, Events: r.bus, Clock: r.clk})
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// run starts c.Run; the returned func stops it and waits.
func (r *rig) run(c *schedules.Controller) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				r.t.Errorf("Run: %v", err)
			}
		})
	}
	r.t.Cleanup(stop)
	return stop
}

// armed waits until the controller has armed its timer (it has finished
// any run and is waiting).
func (r *rig) armed() {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.clk.WaitTimers(ctx, 1); err != nil {
		r.t.Fatalf("controller never armed its timer: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestOneMinuteMaxCountTwoKeepsNewestTwoAfterThreeRuns(t *testing.T) {
	r := newRig(t)
	r.f.add("i1", "web", state.Running)
	// A manual snapshot of the same instance: retention must not touch it.
	if _, err := r.f.CreateSnapshot(context.Background(), "i1", instances.SnapshotParams{Kind: instances.SnapshotStandby, Name: "manual"}); err != nil {
		t.Fatal(err)
	}
	c := r.controller()
	sc, err := c.Set(context.Background(), "i1", schedules.Request{
		Interval: "1m", NamePrefix: ptr("nightly"), Metadata: map[string]string{"team": "a"},
		Retention: schedules.Retention{MaxCount: 2},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !sc.NextRunAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("next_run_at %s, want %s", sc.NextRunAt, t0.Add(time.Minute))
	}
	r.run(c)
	var ids []string
	for i := range 3 {
		r.armed()
		r.clk.Advance(time.Minute)
		r.armed()
		got, err := c.Get(context.Background(), "i1")
		if err != nil {
			t.Fatal(err)
		}
		if got.LastRunAt == nil || !got.LastRunAt.Equal(t0.Add(time.Duration(i+1)*time.Minute)) || got.LastError != nil || got.LastSnapshotID == nil {
			t.Fatalf("run %d: %+v", i+1, got)
		}
		ids = append(ids, *got.LastSnapshotID)
	}
	want := []string{"manual", "nightly-20260301-120200", "nightly-20260301-120300"}
	if got := r.f.names(); !slices.Equal(got, want) {
		t.Fatalf("snapshots after 3 runs: %v, want %v", got, want)
	}
	got, _ := c.Get(context.Background(), "i1")
	if *got.LastSnapshotID != ids[2] || len(got.Taken) != 2 || got.Taken[0].ID != ids[1] || got.Taken[1].ID != ids[2] {
		t.Fatalf("schedule's own snapshots: %+v (runs took %v)", got.Taken, ids)
	}
	if !got.NextRunAt.Equal(t0.Add(4 * time.Minute)) {
		t.Fatalf("next_run_at %s", got.NextRunAt)
	}
	r.f.mu.Lock()
	tags := r.f.snaps[ids[2]].Tags
	r.f.mu.Unlock()
	if tags["team"] != "a" {
		t.Fatalf("metadata not copied to the snapshot's tags: %v", tags)
	}
}

func TestMaxAgePrunes(t *testing.T) {
	r := newRig(t)
	r.f.add("i1", "web", state.Running)
	c := r.controller()
	if _, err := c.Set(context.Background(), "i1", schedules.Request{Interval: "10m", Retention: schedules.Retention{MaxAge: "25m"}}); err != nil {
		t.Fatal(err)
	}
	r.run(c)
	for range 4 {
		r.armed()
		r.clk.Advance(10 * time.Minute)
		r.armed()
	}
	// Runs at 10, 20, 30, 40 min; at 40 the cut is 15: 10 is gone.
	want := []string{"web-20260301-122000", "web-20260301-123000", "web-20260301-124000"}
	if got := r.f.names(); !slices.Equal(got, want) {
		t.Fatalf("after max_age prune: %v, want %v", got, want)
	}
}

func TestRestartRunsMissedScheduleOnceAndKeepsState(t *testing.T) {
	r := newRig(t)
	r.f.add("i1", "web", state.Running)
	c := r.controller()
	if _, err := c.Set(context.Background(), "i1", schedules.Request{Interval: "1m", Retention: schedules.Retention{MaxCount: 10}}); err != nil {
		t.Fatal(err)
	}
	stop := r.run(c)
	r.armed()
	r.clk.Advance(time.Minute)
	r.armed()
	stop()
	if r.f.count() != 1 {
		t.Fatalf("first run: %d snapshots", r.f.count())
	}
	// The daemon is down for 10 intervals.
	r.clk.Advance(10 * time.Minute)
	c2 := r.controller() // loads the persisted record
	sc, err := c2.Get(context.Background(), "i1")
	if err != nil || sc.LastRunAt == nil || len(sc.Taken) != 1 {
		t.Fatalf("not persisted: %+v %v", sc, err)
	}
	r.run(c2)
	r.armed()
	if r.f.count() != 2 {
		t.Fatalf("missed runs at start: %d snapshots, want 2 (one catch-up run, not ten)", r.f.count())
	}
	sc, _ = c2.Get(context.Background(), "i1")
	if now := t0.Add(11 * time.Minute); !sc.LastRunAt.Equal(now) || !sc.NextRunAt.Equal(now.Add(time.Minute)) || len(sc.Taken) != 2 {
		t.Fatalf("after catch-up: %+v", sc)
	}
}

func TestSkipsInstanceNotRunningAndRecordsWhy(t *testing.T) {
	r := newRig(t)
	r.f.add("i1", "web", state.Stopped)
	c := r.controller()
	if _, err := c.Set(context.Background(), "i1", schedules.Request{Interval: "1m", Retention: schedules.Retention{MaxCount: 1}}); err != nil {
		t.Fatal(err)
	}
	r.run(c)
	r.armed()
	r.clk.Advance(time.Minute)
	r.armed()
	sc, _ := c.Get(context.Background(), "i1")
	if r.f.count() != 0 || sc.LastError == nil || !strings.Contains(*sc.LastError, "Stopped") || sc.LastRunAt == nil {
		t.Fatalf("stopped instance: %d snapshots, schedule %+v", r.f.count(), sc)
	}
	// Running again: the next run succeeds and clears last_error.
	r.f.add("i1", "web", state.Running)
	r.clk.Advance(time.Minute)
	r.armed()
	sc, _ = c.Get(context.Background(), "i1")
	if r.f.count() != 1 || sc.LastError != nil {
		t.Fatalf("after start: %d snapshots, last_error %v", r.f.count(), sc.LastError)
	}
}

func TestDeletedInstanceDropsSchedule(t *testing.T) {
	r := newRig(t)
	r.f.add("i1", "web", state.Running)
	r.f.add("i2", "db", state.Running)
	c := r.controller()
	for _, id := range []string{"i1", "i2"} {
		if _, err := c.Set(context.Background(), id, schedules.Request{Interval: "1h", Retention: schedules.Retention{MaxCount: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	// i2 is deleted while the daemon is down: dropped at start.
	r.f.remove("i2")
	r.run(c)
	r.armed()
	if _, err := c.Get(context.Background(), "i2"); !errors.Is(err, schedules.ErrNotFound) {
		t.Fatalf("schedule of an instance deleted while down: %v", err)
	}
	// i1 is deleted while running: the Deleted event drops it.
	r.f.remove("i1")
	if _, err := r.bus.Publish(events.Deleted("i1", state.Running, "deleted")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Get(context.Background(), "i1"); errors.Is(err, schedules.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("schedule of a deleted instance survived")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if ents, _ := os.ReadDir(r.dir); len(ents) != 0 {
		t.Fatalf("schedule files left: %v", ents)
	}
}

func TestRecordIsVersionedAndNewerRefused(t *testing.T) {
	r := newRig(t)
	r.f.add("i1", "web", state.Running)
	c := r.controller()
	if _, err := c.Set(context.Background(), "i1", schedules.Request{Interval: "1h", Retention: schedules.Retention{MaxAge: "24h"}}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(r.dir, "i1.json"))
	if err != nil {
		t.Fatal(err)
	}
	var head struct{ Version int }
	if err := json.Unmarshal(b, &head); err != nil || head.Version != 1 {
		t.Fatalf("record version %d (%v)", head.Version, err)
	}
	if err := os.WriteFile(filepath.Join(r.dir, "i1.json"), []byte(`{"version":99,"instance_id":"i1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	c2 := r.controller()
	if _, err := c2.Get(context.Background(), "i1"); !errors.Is(err, schedules.ErrNotFound) {
		t.Fatalf("a newer record must not load: %v", err)
	}
}

func TestValidate(t *testing.T) {
	ok := schedules.Retention{MaxCount: 1}
	for _, tc := range []struct {
		name  string
		req   schedules.Request
		field string
	}{
		{"no interval", schedules.Request{Retention: ok}, "interval"},
		{"bad interval", schedules.Request{Interval: "daily", Retention: ok}, "interval"},
		{"short interval", schedules.Request{Interval: "59s", Retention: ok}, "interval"},
		{"long prefix", schedules.Request{Interval: "1h", NamePrefix: ptr(strings.Repeat("a", 48)), Retention: ok}, "name_prefix"},
		{"bad prefix", schedules.Request{Interval: "1h", NamePrefix: ptr("Nightly_"), Retention: ok}, "name_prefix"},
		{"bad metadata", schedules.Request{Interval: "1h", Metadata: map[string]string{"k": "bad\x00"}, Retention: ok}, "metadata"},
		{"no retention", schedules.Request{Interval: "1h"}, "retention"},
		{"negative count", schedules.Request{Interval: "1h", Retention: schedules.Retention{MaxCount: -1}}, "retention.max_count"},
		{"bad age", schedules.Request{Interval: "1h", Retention: schedules.Retention{MaxAge: "week"}}, "retention.max_age"},
		{"zero age", schedules.Request{Interval: "1h", Retention: schedules.Retention{MaxAge: "0s"}}, "retention.max_age"},
	} {
		err := tc.req.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.field)
		}
	}
	if err := (schedules.Request{Interval: "1m", NamePrefix: ptr(strings.Repeat("a", 47)), Retention: ok}).Validate(); err != nil {
		t.Errorf("valid request refused: %v", err)
	}
}
