package instances

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hypeman/internal/fsutil"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/instances/state"
	"hypeman/internal/warm"
)

// A template whose state cannot be restored never fails a create: the
// instance boots cold (start_mode cold), and the template is discarded.
// Creates with volumes or skip_guest_agent are never served warm.
func TestWarmFailureFallsBackToCold(t *testing.T) {
	root := t.TempDir()
	hv := newFakeHV()
	// The key a default create of image "local" has in this manager.
	key := warm.Key{
		Shape: warm.Shape{ImageDigest: "sha256:abc", MemoryMiB: 1024, VCPUs: 2, OverlayBytes: 10 << 30},
		Env:   warm.Env{Cmdline: DefaultCmdline + " " + templateCmdline, GuestFormat: guestconfig.FormatVersion},
	}
	tdir := filepath.Join(root, "templates", key.ID())
	if err := os.MkdirAll(filepath.Join(tdir, warm.SnapshotDirName), 0o755); err != nil { // no state in it
		t.Fatal(err)
	}
	for _, f := range []string{overlayFile, configFile} {
		os.WriteFile(filepath.Join(tdir, f), []byte("x"), 0o644)
	}
	rec := warm.Template{Version: 1, Key: key, Image: "local", Files: []string{overlayFile, configFile}, CreatedAt: time.Now()}
	if err := fsutil.WriteJSONAtomic(filepath.Join(tdir, "template.json"), rec, 0o644); err != nil {
		t.Fatal(err)
	}
	m, _ := newTestManagerWith(t, root, hv, func(c *Config) {
		c.Warm = &warm.Config{Dir: filepath.Join(root, "templates")}
	})
	if st := m.WarmPool().Status(); st.Templates != 1 {
		t.Fatalf("the template on disk was not loaded: %+v", st)
	}
	ctx := context.Background()
	in, err := m.Create(ctx, CreateParams{Name: "a", Image: "local"})
	if err != nil {
		t.Fatalf("a broken template failed the create: %v", err)
	}
	if in.StartMode != StartCold || in.State != state.Initializing {
		t.Fatalf("start mode %q, state %s", in.StartMode, in.State)
	}
	if vm := hv.vm(m.dir(in.ID)); vm == nil || vm.cfg.KernelPath != m.cfg.Boot.KernelPath || vm.exited() {
		t.Fatal("no cold-booted VM")
	}
	if _, err := os.Stat(tdir); !os.IsNotExist(err) {
		t.Fatalf("the unusable template was kept: %v", err)
	}
	// The overlay is a fresh ext4 disk, not the template's copy.
	if fi, err := os.Stat(filepath.Join(m.dir(in.ID), overlayFile)); err != nil || fi.Size() != 10<<30 {
		t.Fatalf("overlay after the fallback: %v %v", fi, err)
	}
	b, _ := os.ReadFile(filepath.Join(m.dir(in.ID), hypemanLog))
	if len(b) == 0 || !strings.Contains(string(b), "warm start failed, booting cold") {
		t.Fatalf("fallback not logged:\n%s", b)
	}

	// Not eligible: no lookup at all.
	meta := Metadata{SkipGuestAgent: true, MemoryBytes: 1 << 30, VCPUs: 1}
	if _, ok := m.warmShape(meta, ImageInfo{Digest: "sha256:abc"}); ok {
		t.Fatal("skip_guest_agent served warm")
	}
	meta = Metadata{Volumes: []attachedVolume{{}}, MemoryBytes: 1 << 30, VCPUs: 1}
	if _, ok := m.warmShape(meta, ImageInfo{Digest: "sha256:abc"}); ok {
		t.Fatal("a create with volumes served warm")
	}
}
