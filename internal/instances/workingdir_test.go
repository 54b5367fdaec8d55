package instances

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hypeman/internal/instances/state"
	"hypeman/internal/warm"
)

func TestWorkingDirCreateValidation(t *testing.T) {
	m, _ := newTestManager(t, t.TempDir(), newFakeHV())
	for in, want := range map[string]string{
		"srv/app":                       "absolute path",
		"./app":                         "absolute path",
		"/srv//app":                     `clean path (no //, . or .. elements, no trailing /): use "/srv/app"`,
		"/srv/app/":                     `use "/srv/app"`,
		"/srv/./app":                    `use "/srv/app"`,
		"/srv/../etc":                   `use "/etc"`,
		"/a\x00b":                       "NUL",
		"/" + strings.Repeat("d", 4096): "at most 4096 bytes",
	} {
		_, err := m.Create(context.Background(), CreateParams{Name: "x", Image: "img", WorkingDir: in})
		var ie *InvalidArgumentError
		if !errors.As(err, &ie) || ie.Field != "working_dir" || !strings.Contains(ie.Reason, want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("working_dir %.40q: %v, want an error on working_dir saying %q", in, err, want)
		}
	}
	if all, err := m.List(context.Background(), ListOptions{}); err != nil || len(all) != 0 {
		t.Fatalf("refused creates left instances: %d %v", len(all), err)
	}
	// The longest allowed path and the root itself are fine.
	for i, ok := range []string{"/", "/" + strings.Repeat("d", MaxWorkingDirLen-1)} {
		if _, err := m.Create(context.Background(), CreateParams{Name: "ok" + string(rune('a'+i)), Image: "img", WorkingDir: ok}); err != nil {
			t.Errorf("working_dir of %d bytes: %v", len(ok), err)
		}
	}
}

// guestWorkDirOf reads the working directory the instance's guest config
// disk gives the program.
func guestWorkDirOf(t *testing.T, m *Manager, id string) string {
	t.Helper()
	return guestConfigOf(t, m, id).WorkingDir
}

// working_dir replaces the image's WORKDIR in the guest config at every
// boot, is shown and persisted (absent = the image's), survives a daemon
// restart, and is kept by forks, snapshot forks and restores; it is not
// part of the warm template shape.
func TestWorkingDirPersistedAndUsed(t *testing.T) {
	hv := newFakeHV()
	root := t.TempDir()
	m, _ := newTestManager(t, root, hv)
	ctx := context.Background()
	in, vm := runningInstance(t, m, hv, CreateParams{Name: "wd", Image: "workdir-img", WorkingDir: "/srv/app"})
	def, err := m.Create(ctx, CreateParams{Name: "def", Image: "workdir-img"})
	if err != nil {
		t.Fatal(err)
	}
	if in.WorkingDir != "/srv/app" || def.WorkingDir != "" {
		t.Fatalf("views: %q %q", in.WorkingDir, def.WorkingDir)
	}
	if got := guestWorkDirOf(t, m, in.ID); got != "/srv/app" {
		t.Fatalf("guest config working dir %q, want /srv/app", got)
	}
	if got := guestWorkDirOf(t, m, def.ID); got != fakeImageWorkDir {
		t.Fatalf("guest config working dir without working_dir %q, want the image's %q", got, fakeImageWorkDir)
	}
	for id, want := range map[string]any{in.ID: "/srv/app", def.ID: nil} {
		var raw map[string]any
		b, err := os.ReadFile(filepath.Join(root, "instances", id, metadataFile))
		if err != nil || json.Unmarshal(b, &raw) != nil || raw["working_dir"] != want {
			t.Fatalf("persisted working_dir of %s: %v (%v), want %v", id, raw["working_dir"], err, want)
		}
	}

	// A restart (program exit, then start) boots with it again.
	vm.exit(0, "exited")
	waitFor(t, m, in.ID, state.Stopped)
	os.Remove(filepath.Join(m.dir(in.ID), configFile))
	if _, err := m.Start(ctx, in.ID, StartParams{Cmd: &[]string{"pwd"}}); err != nil {
		t.Fatal(err)
	}
	if got := guestWorkDirOf(t, m, in.ID); got != "/srv/app" {
		t.Fatalf("after start: guest config working dir %q", got)
	}
	if _, err := m.Stop(ctx, in.ID, StopParams{}); err != nil {
		t.Fatal(err)
	}
	snap, err := m.CreateSnapshot(ctx, in.ID, SnapshotParams{Name: "s"})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()

	m2, _ := newTestManager(t, root, hv)
	if got, err := m2.Get(ctx, in.ID); err != nil || got.WorkingDir != "/srv/app" {
		t.Fatalf("after a daemon restart: %+v %v", got, err)
	}
	f, err := m2.Fork(ctx, in.ID, ForkParams{Name: "wd-fork", TargetState: state.Running})
	if err != nil {
		t.Fatal(err)
	}
	if f.WorkingDir != "/srv/app" || guestWorkDirOf(t, m2, f.ID) != "/srv/app" {
		t.Fatalf("fork: %q, guest %q", f.WorkingDir, guestWorkDirOf(t, m2, f.ID))
	}
	sf, err := m2.ForkSnapshot(ctx, snap.ID, ForkParams{Name: "wd-snap-fork", TargetState: state.Running})
	if err != nil {
		t.Fatal(err)
	}
	if sf.WorkingDir != "/srv/app" || guestWorkDirOf(t, m2, sf.ID) != "/srv/app" {
		t.Fatalf("snapshot fork: %q, guest %q", sf.WorkingDir, guestWorkDirOf(t, m2, sf.ID))
	}
	r, err := m2.RestoreSnapshot(ctx, in.ID, snap.ID, RestoreSnapshotParams{TargetState: state.Running})
	if err != nil {
		t.Fatal(err)
	}
	if r.WorkingDir != "/srv/app" || guestWorkDirOf(t, m2, in.ID) != "/srv/app" {
		t.Fatalf("restore: %q, guest %q", r.WorkingDir, guestWorkDirOf(t, m2, in.ID))
	}

	// The warm template shape does not depend on it: the program's
	// working directory comes with the start op (guestConfig).
	wroot := t.TempDir()
	mw, _ := newTestManagerWith(t, wroot, newFakeHV(), func(c *Config) { c.Warm = &warm.Config{Dir: filepath.Join(wroot, "templates")} })
	img := ImageInfo{Digest: "sha256:abc"}
	a, okA := mw.warmShape(Metadata{MemoryBytes: 1 << 30, VCPUs: 1, WorkingDir: "/srv/app"}, img)
	b, okB := mw.warmShape(Metadata{MemoryBytes: 1 << 30, VCPUs: 1}, img)
	if !okA || !okB || a != b {
		t.Fatalf("warm shapes differ by working_dir: %+v %v / %+v %v", a, okA, b, okB)
	}
}
