package volumes

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"hypeman/internal/testutil/tier"
)

func newStore(t *testing.T, dir string) *Store {
	t.Helper()
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "volumes")
	}
	s, err := New(Config{Dir: dir, MaxSizeGB: 100})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustCreate(t *testing.T, s *Store, p CreateParams) *Volume {
	t.Helper()
	v, err := s.Create(context.Background(), p)
	if err != nil {
		t.Fatalf("create %+v: %v", p, err)
	}
	return v
}

// inode is what debugfs reports about a path inside an ext4 image.
type inode struct {
	typ        string
	mode       uint32
	uid, gid   int
	mtime      int64
	links      int
	size       int64
	linkTarget string
}

// debugfsStat reads a path's inode from an ext4 image without mounting it.
func debugfsStat(t *testing.T, img, path string) inode {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "stat "+path, img).CombinedOutput()
	if err != nil || strings.Contains(string(out), "File not found") {
		t.Fatalf("debugfs stat %s: %v: %s", path, err, out)
	}
	var in inode
	f := strings.Fields(string(out))
	for i := 0; i+1 < len(f); i++ {
		switch f[i] {
		case "Type:":
			in.typ = f[i+1]
		case "Mode:":
			m, _ := strconv.ParseUint(f[i+1], 8, 32)
			in.mode = uint32(m)
		case "User:":
			in.uid, _ = strconv.Atoi(f[i+1])
		case "Group:":
			in.gid, _ = strconv.Atoi(f[i+1])
		case "Links:":
			in.links, _ = strconv.Atoi(f[i+1])
		case "Size:":
			if in.size == 0 {
				in.size, _ = strconv.ParseInt(f[i+1], 10, 64)
			}
		case "mtime:":
			hex := strings.SplitN(strings.TrimPrefix(f[i+1], "0x"), ":", 2)[0]
			in.mtime, _ = strconv.ParseInt(hex, 16, 64)
		}
	}
	if _, after, ok := strings.Cut(string(out), "Fast link dest: \""); ok {
		in.linkTarget, _, _ = strings.Cut(after, "\"")
	}
	return in
}

func TestCreateEmptyGetListDelete(t *testing.T) {
	tier.Tools(t, "mkfs.ext4", "debugfs")
	s := newStore(t, "")
	ctx := context.Background()
	v := mustCreate(t, s, CreateParams{Name: "data", SizeGB: 1, Tags: map[string]string{"team": "a"}})
	if len(v.ID) != 24 || v.Name != "data" || v.SizeGB != 1 || v.CreatedAt.IsZero() || len(v.Attachments) != 0 {
		t.Fatalf("volume = %+v", v)
	}
	fi, err := os.Stat(v.Path)
	if err != nil || fi.Size() != 1<<30 {
		t.Fatalf("disk %s: %v size %d, want 1 GiB", v.Path, err, fi.Size())
	}
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 64<<20 {
		t.Errorf("disk uses %d bytes: not sparse", used)
	}
	root := debugfsStat(t, v.Path, "/")
	if root.typ != "directory" || root.mode != 0o755 || root.uid != 0 || root.gid != 0 {
		t.Errorf("root dir = %+v, want a 0755 directory owned by 0:0", root)
	}

	w := mustCreate(t, s, CreateParams{ID: "my-vol.2", Name: "other", SizeGB: 2})
	for _, ref := range []string{v.ID, "data"} {
		got, err := s.Get(ctx, ref)
		if err != nil || got.ID != v.ID {
			t.Errorf("Get(%q) = %+v, %v", ref, got, err)
		}
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(nope) err = %v, want ErrNotFound", err)
	}
	all, _ := s.List(ctx, nil)
	if len(all) != 2 || all[0].ID != v.ID || all[1].ID != w.ID {
		t.Errorf("List = %v", all)
	}
	if got, _ := s.List(ctx, map[string]string{"team": "a"}); len(got) != 1 || got[0].ID != v.ID {
		t.Errorf("List(team=a) = %v", got)
	}
	if got, _ := s.List(ctx, map[string]string{"team": "b"}); len(got) != 0 {
		t.Errorf("List(team=b) = %v", got)
	}

	// A new store over the same directory sees the same volumes.
	s2 := newStore(t, s.dir)
	if got, err := s2.Get(ctx, "other"); err != nil || got.ID != "my-vol.2" || got.SizeGB != 2 {
		t.Errorf("after reopen Get(other) = %+v, %v", got, err)
	}

	if err := s.Delete(ctx, "data"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(v.Path)); !os.IsNotExist(err) {
		t.Errorf("volume dir still there: %v", err)
	}
	if _, err := s.Get(ctx, v.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after delete err = %v", err)
	}
	if err := s.Delete(ctx, v.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete err = %v", err)
	}
}

func TestCreateValidatesAndKeepsNamesUnique(t *testing.T) {
	tier.Tools(t, "mkfs.ext4")
	s := newStore(t, "")
	ctx := context.Background()
	mustCreate(t, s, CreateParams{ID: "vol1", Name: "data", SizeGB: 1})
	for _, tc := range []struct {
		p     CreateParams
		field string // "" = ErrExists
	}{
		{CreateParams{Name: "data", SizeGB: 1}, ""},
		{CreateParams{ID: "vol1", Name: "x", SizeGB: 1}, ""},
		{CreateParams{ID: "data", Name: "y", SizeGB: 1}, ""}, // an ID equal to a name
		{CreateParams{Name: "vol1", SizeGB: 1}, ""},          // a name equal to an ID
		{CreateParams{Name: "Bad_Name", SizeGB: 1}, "name"},  // instance name rule
		{CreateParams{Name: "", SizeGB: 1}, "name"},          //
		{CreateParams{Name: "ok", SizeGB: 0}, "size_gb"},     //
		{CreateParams{Name: "ok", SizeGB: 101}, "size_gb"},   // over MaxSizeGB
		{CreateParams{ID: "../x", Name: "ok", SizeGB: 1}, "id"},
		{CreateParams{ID: ".hidden", Name: "ok", SizeGB: 1}, "id"},
		{CreateParams{ID: strings.Repeat("a", 129), Name: "ok", SizeGB: 1}, "id"},
		{CreateParams{Name: "ok", SizeGB: 1, Tags: map[string]string{"": "x"}}, "tags"},
	} {
		_, err := s.Create(ctx, tc.p)
		if tc.field == "" {
			if !errors.Is(err, ErrExists) {
				t.Errorf("%+v: err = %v, want ErrExists", tc.p, err)
			}
			continue
		}
		var ie *InvalidError
		if !errors.As(err, &ie) || ie.Field != tc.field || !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: err = %v, want an InvalidError on %s", tc.p, err, tc.field)
		}
	}
	if err := s.Delete(ctx, "data"); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, CreateParams{Name: "data", SizeGB: 1}) // the name is free again
	entries, _ := os.ReadDir(s.dir)
	if len(entries) != 1 {
		t.Errorf("volumes dir holds %d entries, want 1 (failed creates leave nothing)", len(entries))
	}
}

func TestAttachRules(t *testing.T) {
	tier.Tools(t, "mkfs.ext4")
	s := newStore(t, "")
	ctx := context.Background()
	v := mustCreate(t, s, CreateParams{Name: "shared", SizeGB: 1})
	ro := func(id string) Attachment { return Attachment{InstanceID: id, MountPath: "/data", ReadOnly: true} }
	rw := func(id string) Attachment { return Attachment{InstanceID: id, MountPath: "/data"} }

	if _, err := s.Attach(ctx, "shared", ro("i1")); err != nil {
		t.Fatal(err)
	}
	got, err := s.Attach(ctx, v.ID, Attachment{InstanceID: "i2", MountPath: "/d", ReadOnly: true, Overlay: true})
	if err != nil || len(got.Attachments) != 2 {
		t.Fatalf("second read-only attach: %+v, %v", got, err)
	}
	if _, err := s.Attach(ctx, v.ID, rw("i3")); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "i1, i2") {
		t.Errorf("writable attach over readers: err = %v, want ErrInUse naming i1, i2", err)
	}
	if _, err := s.Attach(ctx, v.ID, ro("i1")); !errors.Is(err, ErrInUse) {
		t.Errorf("same instance twice: err = %v, want ErrInUse", err)
	}
	var iu *InUseError
	if err := s.Delete(ctx, v.ID); !errors.As(err, &iu) || len(iu.Instances) != 2 {
		t.Errorf("delete while attached: err = %v, want InUseError naming 2 instances", err)
	}

	// Persisted: a reopened store enforces the same table.
	s2 := newStore(t, s.dir)
	if got, _ := s2.Get(ctx, v.ID); len(got.Attachments) != 2 || !got.Attachments[1].Overlay {
		t.Errorf("after reopen attachments = %+v", got.Attachments)
	}

	if err := s.Detach(ctx, v.ID, "i1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Detach(ctx, v.ID, "never-attached"); err != nil {
		t.Errorf("detach of an instance without attachment: %v", err)
	}
	if err := s.DetachInstance(ctx, "i2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(ctx, v.ID, rw("w1")); err != nil {
		t.Fatalf("writable attach on a free volume: %v", err)
	}
	if _, err := s.Attach(ctx, v.ID, ro("r1")); !errors.Is(err, ErrInUse) {
		t.Errorf("read-only attach over a writer: err = %v, want ErrInUse", err)
	}
	if _, err := s.Attach(ctx, v.ID, rw("w2")); !errors.Is(err, ErrInUse) {
		t.Errorf("second writer: err = %v, want ErrInUse", err)
	}
	if _, err := s.Attach(ctx, "missing", rw("w2")); !errors.Is(err, ErrNotFound) {
		t.Errorf("attach of a missing volume: err = %v", err)
	}
	if err := s.DetachInstance(ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, v.ID); err != nil {
		t.Errorf("delete after detaching all: %v", err)
	}
}

func TestReconcile(t *testing.T) {
	tier.Tools(t, "mkfs.ext4")
	s := newStore(t, "")
	ctx := context.Background()
	a := mustCreate(t, s, CreateParams{Name: "a", SizeGB: 1})
	b := mustCreate(t, s, CreateParams{Name: "b", SizeGB: 1})
	// The store remembers i-gone (its instance was deleted before the store
	// was told) and lost i-new's attachment of b (crash between writes).
	if _, err := s.Attach(ctx, a.ID, Attachment{InstanceID: "i-gone", MountPath: "/a"}); err != nil {
		t.Fatal(err)
	}
	live := map[string][]Attachment{
		b.ID:        {{InstanceID: "i-new", MountPath: "/b", ReadOnly: true}},
		"no-volume": {{InstanceID: "i-x", MountPath: "/x"}},
	}
	if err := s.Reconcile(ctx, live); err != nil {
		t.Fatal(err)
	}
	s2 := newStore(t, s.dir) // and it was persisted
	if got, _ := s2.Get(ctx, a.ID); len(got.Attachments) != 0 {
		t.Errorf("a attachments = %+v, want none", got.Attachments)
	}
	if got, _ := s2.Get(ctx, b.ID); len(got.Attachments) != 1 || got.Attachments[0].InstanceID != "i-new" || !got.Attachments[0].ReadOnly {
		t.Errorf("b attachments = %+v, want i-new read-only", got.Attachments)
	}
}

func TestNewRemovesLeftovers(t *testing.T) {
	tier.Tools(t, "mkfs.ext4")
	s := newStore(t, "")
	v := mustCreate(t, s, CreateParams{Name: "keep", SizeGB: 1})
	vdir := filepath.Dir(v.Path)
	// A create killed mid-mkfs: directory with a temp disk and staging, no record.
	half := filepath.Join(s.dir, "halfmade")
	os.MkdirAll(filepath.Join(half, stagingDir, "etc"), 0o700)
	os.WriteFile(filepath.Join(half, dataTmp), []byte("x"), 0o600)
	// Temp files inside a complete volume.
	os.WriteFile(filepath.Join(vdir, "."+recordFile+".tmp-123"), []byte("{"), 0o600)
	os.WriteFile(filepath.Join(vdir, dataTmp), []byte("x"), 0o600)
	os.MkdirAll(filepath.Join(vdir, stagingDir), 0o700)

	s2 := newStore(t, s.dir)
	if _, err := os.Stat(half); !os.IsNotExist(err) {
		t.Errorf("half-created volume dir still there: %v", err)
	}
	entries, _ := os.ReadDir(vdir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != dataFile+","+recordFile {
		t.Errorf("complete volume dir holds %v, want only %s and %s", names, dataFile, recordFile)
	}
	if _, err := s2.Get(context.Background(), "keep"); err != nil {
		t.Errorf("complete volume lost: %v", err)
	}
}

// TestReadOnlyAttachReplaysJournal: a volume whose writer was killed
// (journal needing recovery) is clean before its first read-only
// attachment, which a read-only guest mount needs.
func TestReadOnlyAttachReplaysJournal(t *testing.T) {
	tier.Tools(t, "mkfs.ext4", "debugfs", "e2fsck", "dumpe2fs")
	s := newStore(t, t.TempDir())
	v := mustCreate(t, s, CreateParams{Name: "dirty", SizeGB: 1})
	if out, err := exec.Command("debugfs", "-w", "-R", "feature needs_recovery", v.Path).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	features := func() string {
		out, err := exec.Command("dumpe2fs", "-h", v.Path).CombinedOutput()
		if err != nil {
			t.Fatalf("dumpe2fs: %v: %s", err, out)
		}
		return string(out)
	}
	if !strings.Contains(features(), "needs_recovery") {
		t.Fatal("setup: the volume is not marked as needing recovery")
	}
	// A writable attachment leaves it to the guest kernel.
	if _, err := s.Attach(t.Context(), v.ID, Attachment{InstanceID: "w", MountPath: "/data"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(features(), "needs_recovery") {
		t.Error("a writable attach replayed the journal; the guest does that")
	}
	if err := s.Detach(t.Context(), v.ID, "w"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(t.Context(), v.ID, Attachment{InstanceID: "r", MountPath: "/data", ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if f := features(); strings.Contains(f, "needs_recovery") {
		t.Errorf("still needs recovery after a read-only attach:\n%s", f)
	}
}
