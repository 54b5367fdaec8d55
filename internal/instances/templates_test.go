package instances

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"hypeman/internal/events"
	"hypeman/internal/instances/state"
)

// The transition table with Template: promote only from Standby, demote
// only from Template, and a Template can be forked, restored, demoted and
// deleted but never started, stopped, paused or put on standby.
func TestTemplateTransitionTable(t *testing.T) {
	for _, st := range state.All() {
		promote := checkTransition(ActionPromote, st) == nil
		demote := checkTransition(ActionDemote, st) == nil
		if promote != (st == state.Standby) {
			t.Errorf("promote allowed in %s: %v", st, promote)
		}
		if demote != (st == state.Template) {
			t.Errorf("demote allowed in %s: %v", st, demote)
		}
	}
	want := []Action{ActionFork, ActionRestore, ActionDemote, ActionDelete}
	if got := Allowed(state.Template); !slices.Equal(got, want) {
		t.Errorf("Allowed(Template) = %v, want %v", got, want)
	}
	for _, a := range []Action{ActionStart, ActionStop, ActionStandby, ActionPause, ActionResume, ActionExec, ActionPromote} {
		var te *TransitionError
		if err := checkTransition(a, state.Template); !errors.As(err, &te) || te.State != state.Template {
			t.Errorf("%s on a Template: %v", a, err)
		}
	}
	if !state.Template.TerminalForWait() {
		t.Error("a waiter for another state must give up on Template: nothing moves it by itself")
	}
}

// standbyInstance creates an instance, runs it and puts it on standby.
func standbyInstance(t *testing.T, m *Manager, hv *fakeHV, name string) *Instance {
	t.Helper()
	in, _ := runningInstance(t, m, hv, CreateParams{Name: name, Image: "img"})
	sb, err := m.Standby(context.Background(), in.ID, StandbyParams{})
	if err != nil || sb.State != state.Standby {
		t.Fatalf("standby: %v %+v", err, sb)
	}
	return sb
}

func TestTemplateLifecycle(t *testing.T) {
	hv := newFakeHV()
	m, bus := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	tpl := standbyInstance(t, m, hv, "tpl")

	// Demote of a Standby instance and promote of a Template are no-ops.
	if in, err := m.DemoteTemplate(ctx, "tpl"); err != nil || in.State != state.Standby {
		t.Fatalf("demote of a Standby instance: %v %+v", err, in)
	}
	in, err := m.PromoteTemplate(ctx, "tpl")
	if err != nil || in.State != state.Template || in.ForkCount != 0 || !in.HasSnapshot {
		t.Fatalf("promote: %v %+v", err, in)
	}
	if in, err := m.PromoteTemplate(ctx, "tpl"); err != nil || in.State != state.Template {
		t.Fatalf("promote again: %v %+v", err, in)
	}
	if list, _ := m.List(ctx, ListOptions{State: state.Template}); len(list) != 1 || list[0].ID != tpl.ID {
		t.Fatalf("list state=Template: %+v", list)
	}

	// Forks: the usual fork path, the template stays a Template and
	// counts them. The default target of a Template's fork is Standby.
	f1, err := m.Fork(ctx, "tpl", ForkParams{Name: "f1", TargetState: state.Running})
	if err != nil || f1.State != state.Running || f1.ForkOfTemplate != tpl.ID {
		t.Fatalf("fork f1: %v %+v", err, f1)
	}
	f2, err := m.Fork(ctx, "tpl", ForkParams{Name: "f2"})
	if err != nil || f2.State != state.Standby || f2.ForkOfTemplate != tpl.ID {
		t.Fatalf("fork f2: %v %+v", err, f2)
	}
	if in, _ := m.Get(ctx, "tpl"); in.State != state.Template || in.ForkCount != 2 {
		t.Fatalf("template after 2 forks: %+v", in)
	}
	// A fork of a fork does not count toward the template.
	if _, err := m.Fork(ctx, "f2", ForkParams{Name: "f2b"}); err != nil {
		t.Fatal(err)
	}
	if in, _ := m.Get(ctx, "tpl"); in.ForkCount != 2 {
		t.Fatalf("fork count after a fork of a fork: %d", in.ForkCount)
	}

	// Refusals name the forks and say what to do; they are state conflicts.
	for name, call := range map[Action]func() error{
		ActionRestore: func() error { _, err := m.Restore(ctx, "tpl"); return err },
		ActionStart:   func() error { _, err := m.Start(ctx, "tpl", StartParams{}); return err },
		ActionDelete:  func() error { return m.Delete(ctx, "tpl") },
		ActionDemote:  func() error { _, err := m.DemoteTemplate(ctx, "tpl"); return err },
	} {
		err := call()
		var tu *TemplateInUseError
		var te *TransitionError
		if !errors.As(err, &tu) || !errors.As(err, &te) || te.State != state.Template {
			t.Fatalf("%s of a template with forks: %v", name, err)
		}
		msg := err.Error()
		if len(tu.Forks) != 2 || tu.Forks[0].Name != "f1" || tu.Forks[1].Name != "f2" ||
			!strings.Contains(msg, "f1 ("+f1.ID+")") || !strings.Contains(msg, "f2 ("+f2.ID+")") ||
			!strings.Contains(msg, "delete them first") || !strings.Contains(msg, string(name)) {
			t.Errorf("%s refusal: %q %+v", name, msg, tu.Forks)
		}
	}
	if in, _ := m.Get(ctx, "tpl"); in.State != state.Template || in.ForkCount != 2 {
		t.Fatalf("template after refusals: %+v", in)
	}
	// Snapshots of a template are refused (fork it, or demote it).
	var te *TransitionError
	if _, err := m.CreateSnapshot(ctx, "tpl", SnapshotParams{}); !errors.As(err, &te) {
		t.Fatalf("snapshot of a template: %v", err)
	}

	// Deleting the forks brings the count down; then restore un-promotes
	// and restores.
	for _, f := range []string{"f1", "f2"} {
		if err := m.Delete(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	if in, _ := m.Get(ctx, "tpl"); in.State != state.Template || in.ForkCount != 0 {
		t.Fatalf("template after its forks were deleted: %+v", in)
	}
	in, err = m.Restore(ctx, "tpl")
	if err != nil || in.State != state.Running || in.ForkCount != 0 {
		t.Fatalf("restore of a template without forks: %v %+v", err, in)
	}

	// The bus carried the transitions.
	evs, _ := bus.Since(0, tpl.ID)
	var got []string
	for _, ev := range evs {
		if ev.Type == events.TypeStateChange && (ev.From == state.Template || ev.To == state.Template) {
			got = append(got, string(ev.From)+">"+string(ev.To))
		}
	}
	if want := []string{"Standby>Template", "Template>Standby"}; !slices.Equal(got, want) {
		t.Fatalf("template events %v, want %v", got, want)
	}
}

func TestDemoteTemplateWithoutForks(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	standbyInstance(t, m, hv, "tpl")
	if _, err := m.PromoteTemplate(ctx, "tpl"); err != nil {
		t.Fatal(err)
	}
	f, err := m.Fork(ctx, "tpl", ForkParams{Name: "f", TargetState: state.Stopped})
	if err != nil || f.ForkOfTemplate == "" {
		t.Fatalf("disk-only fork: %v %+v", err, f)
	}
	if err := m.Delete(ctx, "f"); err != nil {
		t.Fatal(err)
	}
	in, err := m.DemoteTemplate(ctx, "tpl")
	if err != nil || in.State != state.Standby || in.ForkCount != 0 {
		t.Fatalf("demote: %v %+v", err, in)
	}
	// Promotion needs Standby.
	in, err = m.Restore(ctx, "tpl")
	if err != nil || in.State != state.Running {
		t.Fatalf("restore after demote: %v %+v", err, in)
	}
	var te *TransitionError
	if _, err := m.PromoteTemplate(ctx, "tpl"); !errors.As(err, &te) || te.State != state.Running {
		t.Fatalf("promote of a Running instance: %v", err)
	}
}

// readMeta reads an instance's metadata.json as stored.
func readMeta(t *testing.T, m *Manager, id string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(m.dir(id), metadataFile))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func writeMeta(t *testing.T, m *Manager, id string, v map[string]any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := os.WriteFile(filepath.Join(m.dir(id), metadataFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Template fields are persisted (format version 3 for a Template, unchanged
// for its forks) and the counts are recomputed at load from the forks that
// exist, whatever the stored count says.
func TestTemplateForkCountPersistedAndRecountedAtLoad(t *testing.T) {
	root := t.TempDir()
	hv := newFakeHV()
	m, _ := newTestManager(t, root, hv)
	ctx := context.Background()
	tpl := standbyInstance(t, m, hv, "tpl")
	other := standbyInstance(t, m, hv, "other")
	if _, err := m.PromoteTemplate(ctx, "tpl"); err != nil {
		t.Fatal(err)
	}
	var forks []*Instance
	for _, n := range []string{"f1", "f2", "f3"} {
		f, err := m.Fork(ctx, "tpl", ForkParams{Name: n, TargetState: state.Stopped})
		if err != nil {
			t.Fatal(err)
		}
		forks = append(forks, f)
	}
	tm := readMeta(t, m, tpl.ID)
	if tm["version"] != float64(3) || tm["is_template"] != true || tm["fork_count"] != float64(3) {
		t.Fatalf("stored template metadata: version %v is_template %v fork_count %v", tm["version"], tm["is_template"], tm["fork_count"])
	}
	if fm := readMeta(t, m, forks[0].ID); fm["fork_of_template"] != tpl.ID || fm["version"] != float64(1) {
		t.Fatalf("stored fork metadata: %v %v", fm["fork_of_template"], fm["version"])
	}
	m.Close()

	// Drift on disk: a wrong stored count, a fork whose delete was cut
	// short after its rename, and a fork naming an instance that is not a
	// template.
	tm["fork_count"] = 7
	writeMeta(t, m, tpl.ID, tm)
	if err := os.Rename(m.dir(forks[2].ID), filepath.Join(root, "instances", ".deleted-"+forks[2].ID)); err != nil {
		t.Fatal(err)
	}
	fm := readMeta(t, m, forks[1].ID)
	fm["fork_of_template"] = other.ID
	writeMeta(t, m, forks[1].ID, fm)

	m2, _ := newTestManager(t, root, hv)
	in, err := m2.Get(ctx, "tpl")
	if err != nil || in.State != state.Template || in.ForkCount != 1 {
		t.Fatalf("template after load: %v %+v", err, in)
	}
	if got := readMeta(t, m2, tpl.ID)["fork_count"]; got != float64(1) {
		t.Fatalf("stored count after load: %v", got)
	}
	if f, _ := m2.Get(ctx, forks[1].ID); f.ForkOfTemplate != "" {
		t.Fatalf("fork naming a non-template kept it: %q", f.ForkOfTemplate)
	}
	var tu *TemplateInUseError
	if err := m2.Delete(ctx, "tpl"); !errors.As(err, &tu) || len(tu.Forks) != 1 || tu.Forks[0].ID != forks[0].ID {
		t.Fatalf("delete after load: %v", err)
	}
}

// A daemon killed in the middle of a template's fork: the half fork is
// discarded at load and the template's count does not include it.
func TestInterruptedTemplateForkIsNotCounted(t *testing.T) {
	for _, step := range []string{"fork:created", "fork:started"} {
		t.Run(step, func(t *testing.T) {
			root := t.TempDir()
			hv := newFakeHV()
			st := newStepper()
			m, _ := newTestManagerWith(t, root, hv, func(cfg *Config) { cfg.StepHook = st.hook })
			ctx := context.Background()
			standbyInstance(t, m, hv, "tpl")
			if _, err := m.PromoteTemplate(ctx, "tpl"); err != nil {
				t.Fatal(err)
			}
			st.arm(step, nil)
			go m.Fork(context.Background(), "tpl", ForkParams{Name: "half", TargetState: state.Running})
			st.wait(t, step)
			m.Close() // kill -9

			m2, _ := newTestManager(t, root, hv)
			in, err := m2.Get(ctx, "tpl")
			if err != nil || in.State != state.Template || in.ForkCount != 0 {
				t.Fatalf("template after the interrupted fork: %v %+v", err, in)
			}
			if _, err := m2.Get(ctx, "half"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("half fork: %v", err)
			}
			if in, err := m2.DemoteTemplate(ctx, "tpl"); err != nil || in.State != state.Standby {
				t.Fatalf("demote: %v %+v", err, in)
			}
		})
	}
}
