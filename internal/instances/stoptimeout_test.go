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

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/instances/state"
)

func TestStopTimeoutCreateValidation(t *testing.T) {
	m, _ := newTestManager(t, t.TempDir(), newFakeHV())
	for in, want := range map[string]string{
		"soon": "not a Go duration", "30": "not a Go duration", "0s": "out of range (1s to 1h)",
		"500ms": "out of range (1s to 1h)", "61m": "out of range (1s to 1h)", "-5s": "out of range",
	} {
		_, err := m.Create(context.Background(), CreateParams{Name: "x", Image: "img", StopTimeout: in})
		var ie *InvalidArgumentError
		if !errors.As(err, &ie) || ie.Field != "stop_timeout" || !strings.Contains(ie.Reason, want) {
			t.Errorf("stop_timeout %q: %v, want an error on stop_timeout saying %q", in, err, want)
		}
	}
	if all, err := m.List(context.Background(), ListOptions{}); err != nil || len(all) != 0 {
		t.Fatalf("refused creates left instances: %d %v", len(all), err)
	}
}

// guestConfigOf reads the instance's guest config disk (what the guest
// init gets at its next boot).
func guestConfigOf(t *testing.T, m *Manager, id string) *guestconfig.Config {
	t.Helper()
	disk, err := os.ReadFile(filepath.Join(m.dir(id), configFile))
	if err != nil {
		t.Fatal(err)
	}
	gc, err := guestconfig.Decode(disk)
	if err != nil {
		t.Fatal(err)
	}
	return gc
}

// guestStopSecondsOf reads the stop timeout the instance's guest config
// disk gives the guest init.
func guestStopSecondsOf(t *testing.T, m *Manager, id string) int {
	t.Helper()
	return guestConfigOf(t, m, id).StopTimeoutSeconds
}

// An instance's stop_timeout is shown, reaches the guest config at every
// boot, survives a daemon restart (also when the server default changes)
// and is kept by forks; metadata written before the field existed gets the
// server default.
func TestStopTimeoutPersistedAndUsed(t *testing.T) {
	hv := newFakeHV()
	root := t.TempDir()
	m, _ := newTestManager(t, root, hv) // server default 1s
	ctx := context.Background()
	in, err := m.Create(ctx, CreateParams{Name: "slow", Image: "img", StopTimeout: "90s"})
	if err != nil {
		t.Fatal(err)
	}
	def, err := m.Create(ctx, CreateParams{Name: "def", Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	odd, err := m.Create(ctx, CreateParams{Name: "odd", Image: "img", StopTimeout: "2500ms"})
	if err != nil {
		t.Fatal(err)
	}
	if in.StopTimeout != "1m30s" || def.StopTimeout != "1s" || odd.StopTimeout != "2.5s" {
		t.Fatalf("views: %q %q %q", in.StopTimeout, def.StopTimeout, odd.StopTimeout)
	}
	if got := guestStopSecondsOf(t, m, odd.ID); got != 3 {
		t.Fatalf("guest config stop timeout of 2.5s: %d, want 3 (rounded up)", got)
	}
	if got := guestStopSecondsOf(t, m, in.ID); got != 90 {
		t.Fatalf("guest config stop timeout %d, want 90", got)
	}
	if _, err := m.Stop(ctx, in.ID, StopParams{}); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(m.dir(in.ID), configFile))
	if _, err := m.Start(ctx, in.ID, StartParams{}); err != nil {
		t.Fatal(err)
	}
	if got := guestStopSecondsOf(t, m, in.ID); got != 90 {
		t.Fatalf("after start: guest config stop timeout %d, want 90", got)
	}
	if _, err := m.Stop(ctx, in.ID, StopParams{}); err != nil {
		t.Fatal(err)
	}
	m.Close()

	// An old instance: no stop_timeout in its metadata.
	mp := filepath.Join(root, "instances", def.ID, metadataFile)
	var raw map[string]any
	b, err := os.ReadFile(mp)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &raw); err != nil || raw["stop_timeout"] != "1s" {
		t.Fatalf("persisted stop_timeout %v (%v)", raw["stop_timeout"], err)
	}
	delete(raw, "stop_timeout")
	b, _ = json.Marshal(raw)
	if err := os.WriteFile(mp, b, 0o644); err != nil {
		t.Fatal(err)
	}

	m2, _ := newTestManagerWith(t, root, hv, func(c *Config) { c.GuestStopTimeout = 7 * time.Second })
	got, err := m2.Get(ctx, in.ID)
	if err != nil || got.StopTimeout != "1m30s" {
		t.Fatalf("after restart: %+v %v", got, err)
	}
	if got, err := m2.Get(ctx, def.ID); err != nil || got.StopTimeout != "7s" {
		t.Fatalf("metadata without stop_timeout: %q %v, want the server default 7s", got.StopTimeout, err)
	}
	f, err := m2.Fork(ctx, in.ID, ForkParams{Name: "slow-fork", TargetState: state.Running})
	if err != nil {
		t.Fatal(err)
	}
	if f.StopTimeout != "1m30s" || guestStopSecondsOf(t, m2, f.ID) != 90 {
		t.Fatalf("fork: %q, guest %d", f.StopTimeout, guestStopSecondsOf(t, m2, f.ID))
	}
}

// A stop's timeout is checked against the instance's stop_timeout before
// anything happens; 0s kills the VM at once, and the exit says so.
func TestStopTimeoutOverride(t *testing.T) {
	hv := newFakeHV()
	m, _ := newTestManager(t, t.TempDir(), hv)
	ctx := context.Background()
	in, err := m.Create(ctx, CreateParams{Name: "k", Image: "img", StopTimeout: "30s"})
	if err != nil {
		t.Fatal(err)
	}
	hv.vm(m.dir(in.ID)).print(guestconfig.MarkerProgramStart)
	waitFor(t, m, in.ID, state.Running)
	for timeout, want := range map[string]string{
		"31s": "0s to the instance's stop_timeout (30s", "1h": "(30s, set at create)",
		"-1s": "out of range", "soon": "not a Go duration",
	} {
		_, err := m.Stop(ctx, in.ID, StopParams{Timeout: timeout})
		var ie *InvalidArgumentError
		if !errors.As(err, &ie) || ie.Field != "timeout" || !strings.Contains(ie.Reason, want) {
			t.Errorf("timeout %q: %v, want an error on timeout saying %q", timeout, err, want)
		}
	}
	if got, _ := m.Get(ctx, in.ID); got.State != state.Running || got.RestartStatus != nil {
		t.Fatalf("a refused stop acted: %+v", got)
	}
	got, err := m.Stop(ctx, in.ID, StopParams{Timeout: "0s"})
	if err != nil {
		t.Fatal(err)
	}
	if got.State != state.Stopped || got.ExitMessage == nil || !strings.Contains(*got.ExitMessage, "killed at once") {
		t.Fatalf("stop with timeout 0s: %s %v", got.State, deref(got.ExitMessage))
	}

	// The instance's full window is not a shortened stop: the ordinary
	// graceful path (here the fake's power-down).
	if _, err := m.Start(ctx, in.ID, StartParams{}); err != nil {
		t.Fatal(err)
	}
	got, err = m.Stop(ctx, in.ID, StopParams{Timeout: "30s"})
	if err != nil || got.State != state.Stopped || strings.Contains(deref(got.ExitMessage), "killed") {
		t.Fatalf("stop with the full timeout: %v %+v", err, got)
	}
}
