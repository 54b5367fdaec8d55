package instances

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"hypeman/internal/events"
	"hypeman/internal/instances/state"
)

func waitFor(t *testing.T, m *Manager, id string, want state.State) *Instance {
	t.Helper()
	res, err := m.WaitForState(context.Background(), id, []state.State{want}, 5*time.Second)
	if err != nil || res.State != want {
		t.Fatalf("wait %s: %v %+v", want, err, res)
	}
	in, err := m.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestLifecycleWithFakeHypervisor(t *testing.T) {
	hv := newFakeHV()
	m, bus := newTestManager(t, t.TempDir(), hv)
	sub := bus.Subscribe(events.SubscribeOptions{})
	defer sub.Close()
	ctx := context.Background()
	in, err := m.Create(ctx, CreateParams{Name: "web", Image: "img", Size: "512MB"})
	if err != nil {
		t.Fatal(err)
	}
	if in.State != state.Initializing || in.Size != "512MB" || in.VCPUs != 2 || in.OverlaySize != "10GB" {
		t.Fatalf("created: %+v", in)
	}
	vm := hv.vm(m.dir(in.ID))
	vm.print("HYPEMAN-PROGRAM-START")
	waitFor(t, m, in.ID, state.Running)

	// Name clash, prefix and name resolution.
	if _, err := m.Create(ctx, CreateParams{Name: "web", Image: "img"}); !errors.Is(err, ErrNameInUse) {
		t.Fatalf("dup name: %v", err)
	}
	for _, ref := range []string{"web", in.ID, in.ID[:6]} {
		if got, err := m.Get(ctx, ref); err != nil || got.ID != in.ID {
			t.Fatalf("resolve %q: %v", ref, err)
		}
	}
	// Invalid transition: start while Running → 409-style error naming allowed actions.
	var te *TransitionError
	if _, err := m.Start(ctx, "web", StartParams{}); !errors.As(err, &te) || te.State != state.Running {
		t.Fatalf("start running: %v", err)
	}
	// The guest exits by itself: the watcher records exit info, publishes Stopped.
	vm.exit(4, "exited with code 4")
	got := waitFor(t, m, in.ID, state.Stopped)
	if got.ExitCode == nil || *got.ExitCode != 4 || got.StoppedAt == nil {
		t.Fatalf("exit info: %+v", got)
	}
	var tos []state.State
	timeout := time.After(2 * time.Second)
	for len(tos) < 4 {
		select {
		case ev := <-sub.C():
			tos = append(tos, ev.To)
		case <-timeout:
			t.Fatalf("events: %v", tos)
		}
	}
	if fmt.Sprint(tos) != "[Stopped Initializing Running Stopped]" {
		t.Fatalf("event sequence %v", tos)
	}
	// Start again clears the exit info; Delete removes everything.
	again, err := m.Start(ctx, "web", StartParams{})
	if err != nil || again.ExitCode != nil || again.State != state.Initializing {
		t.Fatalf("restart: %v %+v", err, again)
	}
	if err := m.Delete(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, in.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

func TestAmbiguousPrefixAndReconcileOnRestart(t *testing.T) {
	root := t.TempDir()
	hv := newFakeHV()
	m, _ := newTestManager(t, root, hv)
	ctx := context.Background()
	var ids []string
	for i := range 40 {
		in, err := m.Create(ctx, CreateParams{Name: fmt.Sprintf("i%d", i), Image: "img"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, in.ID)
	}
	// With 40 random IDs over 26 first letters, some share a first letter.
	sort.Strings(ids)
	var amb string
	for i := 1; i < len(ids); i++ {
		if ids[i][0] == ids[i-1][0] {
			amb = ids[i][:1]
		}
	}
	if _, err := m.Get(ctx, amb); !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("prefix %q: %v", amb, err)
	}
	// One VM dies while "the daemon is down": a new manager reconciles it
	// to Stopped with the exit status its guest printed.
	victim := ids[0]
	m.Close()
	hv.vm(filepath.Join(root, "instances", victim)).exit(9, "killed by signal 9 (SIGKILL)")
	m2, _ := newTestManager(t, root, hv)
	got, err := m2.Get(ctx, victim)
	if err != nil || got.State != state.Stopped || got.ExitCode == nil || *got.ExitCode != 9 {
		t.Fatalf("reconciled: %v %+v", err, got)
	}
	other, _ := m2.Get(ctx, ids[1])
	if other.State != state.Initializing {
		t.Fatalf("re-adopted instance state %s", other.State)
	}
}

func TestConcurrentOperationsOnOneInstance(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in, err := m.Create(ctx, CreateParams{Name: "c", Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	// Many concurrent stops and starts: the per-instance lock and the
	// transition table mean each either succeeds or fails with a
	// TransitionError; the instance ends in a consistent state.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var unexpected []error
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if i%2 == 0 {
				_, err = m.Stop(ctx, in.ID, StopParams{})
			} else {
				_, err = m.Start(ctx, in.ID, StartParams{})
			}
			var te *TransitionError
			if err != nil && !errors.As(err, &te) {
				mu.Lock()
				unexpected = append(unexpected, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(unexpected) > 0 {
		t.Fatalf("unexpected errors: %v", unexpected)
	}
	got, _ := m.Get(ctx, in.ID)
	if got.State != state.Stopped && got.State != state.Initializing {
		t.Fatalf("final state %s", got.State)
	}
}

func TestCreateRejectsBadInput(t *testing.T) {
	m, _ := newTestManager(t, t.TempDir(), newFakeHV())
	ctx := context.Background()
	cases := map[string]CreateParams{
		"name":         {Name: "UPPER", Image: "img"},
		"image":        {Name: "a", Image: " "},
		"size":         {Name: "a", Image: "img", Size: "1KB"},
		"vcpus":        {Name: "a", Image: "img", VCPUs: 1000},
		"overlay_size": {Name: "a", Image: "img", OverlaySize: "lots"},
		"env":          {Name: "a", Image: "img", Env: map[string]string{"A=B": "x"}},
	}
	for field, p := range cases {
		var ia *InvalidArgumentError
		if _, err := m.Create(ctx, p); !errors.As(err, &ia) || ia.Field != field {
			t.Errorf("%s: got %v", field, err)
		}
	}
	if _, err := m.Create(ctx, CreateParams{Name: "a", Image: "missing"}); !errors.Is(err, ErrImageNotReady) {
		t.Errorf("missing image: %v", err)
	}
	// A caller that may not pull gets only what the store holds.
	if _, err := m.Create(ctx, CreateParams{Name: "a", Image: "img", NoPull: true}); !errors.Is(err, ErrPullNotAllowed) {
		t.Errorf("image not in the store, no pull allowed: %v", err)
	}
	if list, _ := m.List(ctx, ListOptions{}); len(list) != 0 {
		t.Errorf("failed creates left %d instances", len(list))
	}
}

// BenchmarkList200 lists 200 instances loaded from disk (20 of them with a
// live VMM) and reports the p99 latency of List; the target is < 5 ms.
func BenchmarkList200(b *testing.B) {
	root := b.TempDir()
	hv := newFakeHV()
	m, _ := newTestManager(b, root, hv)
	ctx := context.Background()
	for i := range 200 {
		in, err := m.Create(ctx, CreateParams{Name: fmt.Sprintf("n%03d", i), Image: "img", Tags: map[string]string{"team": "x"}})
		if err != nil {
			b.Fatal(err)
		}
		if i >= 20 {
			hv.vm(m.dir(in.ID)).exit(0, "exited")
		}
	}
	m.Close()
	m2, _ := newTestManager(b, root, hv) // load from disk
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		list, err := m2.List(ctx, ListOptions{})
		lat = append(lat, time.Since(start))
		if err != nil || len(list) != 200 {
			b.Fatalf("list: %v %d", err, len(list))
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
}

func TestAppLogsHideMarkersAndTail(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in, err := m.Create(ctx, CreateParams{Name: "logs", Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	vm := hv.vm(m.dir(in.ID))
	vm.print("HYPEMAN-AGENT-READY")
	vm.print("HYPEMAN-PROGRAM-START")
	for i := 1; i <= 5; i++ {
		vm.print(fmt.Sprintf("line %d", i))
	}
	vm.print("a program line mentioning HYPEMAN-PROGRAM-START is kept")
	vm.exit(0, "exited with code 0")
	waitFor(t, m, in.ID, state.Stopped)
	var got []string
	if err := m.StreamLogs(ctx, in.ID, LogOptions{Source: LogApp, Tail: 3}, func(l string) error { got = append(got, l); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []string{"line 4", "line 5", "a program line mentioning HYPEMAN-PROGRAM-START is kept"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("tail 3 = %q, want %q", got, want)
	}
	got = nil
	m.StreamLogs(ctx, in.ID, LogOptions{Source: LogHypeman, Tail: -1}, func(l string) error { got = append(got, l); return nil })
	if !strings.Contains(strings.Join(got, "\n"), "program exited: exited with code 0") {
		t.Fatalf("hypeman log: %q", got)
	}
	if _, err := ParseLogSource("bogus"); err == nil {
		t.Fatal("bad source accepted")
	}
}

func TestStartupRemovesInterruptedLeftovers(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join
	for _, d := range []string{p(root, "instances", ".deleted-abc", "x"), p(root, "snapshots", ".tmp-def"), p(root, "snapshots", ".deleted-ghi")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	newTestManager(t, root, newFakeHV())
	for _, d := range []string{p(root, "instances", ".deleted-abc"), p(root, "snapshots", ".tmp-def"), p(root, "snapshots", ".deleted-ghi")} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s survived startup", d)
		}
	}
}

// A snapshot name is refused only when another snapshot has exactly that
// name, not when it happens to prefix another snapshot's ID.
func TestSnapshotNameClashIsExact(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in, err := m.Create(ctx, CreateParams{Name: "src", Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	hv.vm(m.dir(in.ID)).exit(0, "exited")
	waitFor(t, m, in.ID, state.Stopped)
	first, err := m.CreateSnapshot(ctx, in.ID, SnapshotParams{Name: "one"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.CreateSnapshot(ctx, in.ID, SnapshotParams{Name: first.ID[:3]}); err != nil {
		t.Fatalf("name %q (a prefix of %s) refused: %v", first.ID[:3], first.ID, err)
	}
	if _, err := m.CreateSnapshot(ctx, in.ID, SnapshotParams{Name: "one"}); !errors.Is(err, ErrNameInUse) {
		t.Fatalf("duplicate name: %v", err)
	}
}
