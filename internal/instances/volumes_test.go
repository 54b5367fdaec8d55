package instances

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hypeman/internal/fsutil"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
)

// fakeVolumes is an in-memory volume store with the contract's
// attachment rules.
type fakeVolumes struct {
	mu   sync.Mutex
	vols map[string]*fakeVolume // by id
}

type fakeVolume struct {
	info VolumeInfo
	att  []VolumeAttachment
}

func newFakeVolumes(t *testing.T, names ...string) *fakeVolumes {
	f := &fakeVolumes{vols: map[string]*fakeVolume{}}
	dir := t.TempDir()
	for _, n := range names {
		id := "vol-" + n
		p := filepath.Join(dir, id+".ext4")
		require.NoError(t, os.WriteFile(p, nil, 0o644))
		f.vols[id] = &fakeVolume{info: VolumeInfo{ID: id, Name: n, Path: p}}
	}
	return f
}

func (f *fakeVolumes) find(ref string) (*fakeVolume, error) {
	if v, ok := f.vols[ref]; ok {
		return v, nil
	}
	for _, v := range f.vols {
		if v.info.Name == ref {
			return v, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", ErrVolumeNotFound, ref)
}

func (f *fakeVolumes) Get(ctx context.Context, ref string) (VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, err := f.find(ref)
	if err != nil {
		return VolumeInfo{}, err
	}
	return v.info, nil
}

func (f *fakeVolumes) Attach(ctx context.Context, ref string, a VolumeAttachment) (VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, err := f.find(ref)
	if err != nil {
		return VolumeInfo{}, err
	}
	for _, o := range v.att {
		if o.InstanceID == a.InstanceID || !a.ReadOnly || !o.ReadOnly {
			return VolumeInfo{}, fmt.Errorf("%w: volume %s is attached to %s (readonly %t)", ErrVolumeInUse, v.info.ID, o.InstanceID, o.ReadOnly)
		}
	}
	v.att = append(v.att, a)
	return v.info, nil
}

func (f *fakeVolumes) Detach(ctx context.Context, id, instanceID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.vols[id]; ok {
		v.att = slices.DeleteFunc(v.att, func(a VolumeAttachment) bool { return a.InstanceID == instanceID })
	}
	return nil
}

func (f *fakeVolumes) DetachInstance(ctx context.Context, instanceID string) error {
	f.mu.Lock()
	ids := make([]string, 0, len(f.vols))
	for id := range f.vols {
		ids = append(ids, id)
	}
	f.mu.Unlock()
	for _, id := range ids {
		f.Detach(ctx, id, instanceID)
	}
	return nil
}

// users lists the instances attached to a volume.
func (f *fakeVolumes) users(id string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, a := range f.vols[id].att {
		out = append(out, a.InstanceID)
	}
	slices.Sort(out)
	return out
}

// budgetHV is the fake hypervisor with microvm's device budget.
type budgetHV struct{ *fakeHV }

func (budgetHV) DeviceSlots() int { return 24 }

func newVolumeManager(t *testing.T, vols *fakeVolumes) (*Manager, *fakeHV) {
	hv := newFakeHV()
	m, _ := newTestManagerWith(t, t.TempDir(), hv, func(c *Config) {
		c.Hypervisor = budgetHV{hv}
		c.Volumes = vols
		c.DefaultOverlaySize = "64MB"
	})
	return m, hv
}

// stopped creates an instance and lets its guest exit.
func stopped(t *testing.T, m *Manager, hv *fakeHV, p CreateParams) *Instance {
	t.Helper()
	in, err := m.Create(context.Background(), p)
	require.NoError(t, err)
	hv.vm(m.dir(in.ID)).exit(0, "done")
	return waitFor(t, m, in.ID, state.Stopped)
}

func TestCreateVolumeValidation(t *testing.T) {
	names := []string{"a", "b"}
	many := make([]VolumeMount, 19)
	for i := range many {
		names = append(names, fmt.Sprint(i))
		many[i] = VolumeMount{VolumeID: fmt.Sprint(i), MountPath: fmt.Sprintf("/v%d", i), ReadOnly: true}
	}
	overlays := make([]VolumeMount, 10)
	for i := range overlays {
		overlays[i] = VolumeMount{VolumeID: fmt.Sprint(i), MountPath: fmt.Sprintf("/o%d", i), ReadOnly: true, Overlay: true}
	}
	vols := newFakeVolumes(t, names...)
	m, _ := newVolumeManager(t, vols)
	for _, c := range []struct {
		name  string
		vols  []VolumeMount
		field string
		in    string
	}{
		{"no id", []VolumeMount{{MountPath: "/data"}}, "volumes[0].volume_id", "required"},
		{"relative", []VolumeMount{{VolumeID: "a", MountPath: "data"}}, "volumes[0].mount_path", "absolute"},
		{"dotdot", []VolumeMount{{VolumeID: "a", MountPath: "/data/../etc"}}, "volumes[0].mount_path", "clean"},
		{"root", []VolumeMount{{VolumeID: "a", MountPath: "/"}}, "volumes[0].mount_path", "must not be /"},
		{"proc", []VolumeMount{{VolumeID: "a", MountPath: "/proc/x"}}, "volumes[0].mount_path", "/proc"},
		{"overlay rw", []VolumeMount{{VolumeID: "a", MountPath: "/d", Overlay: true}}, "volumes[0].overlay", "readonly: true"},
		{"overlay size alone", []VolumeMount{{VolumeID: "a", MountPath: "/d", OverlaySize: "1GB"}}, "volumes[0].overlay_size", "overlay: true"},
		{"overlay size bad", []VolumeMount{{VolumeID: "a", MountPath: "/d", ReadOnly: true, Overlay: true, OverlaySize: "lots"}}, "volumes[0].overlay_size", ""},
		{"same path", []VolumeMount{{VolumeID: "a", MountPath: "/d", ReadOnly: true}, {VolumeID: "b", MountPath: "/d"}}, "volumes[1].mount_path", "already"},
		{"nested", []VolumeMount{{VolumeID: "a", MountPath: "/d/e", ReadOnly: true}, {VolumeID: "b", MountPath: "/d"}}, "volumes[1].mount_path", "nested"},
		{"same volume", []VolumeMount{{VolumeID: "a", MountPath: "/x", ReadOnly: true}, {VolumeID: "a", MountPath: "/y", ReadOnly: true}}, "volumes[1].volume_id", "once per instance"},
		{"same volume by name and id", []VolumeMount{{VolumeID: "a", MountPath: "/x", ReadOnly: true}, {VolumeID: "vol-a", MountPath: "/y", ReadOnly: true}}, "volumes[1].volume_id", "once per instance"},
		{"too many", many, "volumes[18]", "at most 18 volume disks per instance"},
		{"too many overlays", overlays, "volumes[9]", "an overlay mount uses 2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := m.Create(context.Background(), CreateParams{Name: "v", Image: "img", Volumes: c.vols})
			var ie *InvalidArgumentError
			require.ErrorAs(t, err, &ie)
			assert.Equal(t, c.field, ie.Field)
			assert.Contains(t, ie.Reason, c.in)
			assert.Empty(t, vols.users("vol-a"), "a refused create leaves no attachment")
		})
	}
	_, err := m.Create(context.Background(), CreateParams{Name: "v", Image: "img", Volumes: []VolumeMount{{VolumeID: "nope", MountPath: "/d"}}})
	assert.ErrorIs(t, err, ErrVolumeNotFound)
	assert.ErrorContains(t, err, "volumes[0]: volume not found: nope")

	// Without a store, volumes are refused by name.
	plain, _ := newTestManager(t, t.TempDir(), newFakeHV())
	_, err = plain.Create(context.Background(), CreateParams{Name: "v", Image: "img", Volumes: []VolumeMount{{VolumeID: "a", MountPath: "/d"}}})
	var ie *InvalidArgumentError
	require.ErrorAs(t, err, &ie)
	assert.Equal(t, "volumes", ie.Field)
}

func TestDeriveDisks(t *testing.T) {
	meta := Metadata{Volumes: []attachedVolume{
		{VolumeMount: VolumeMount{VolumeID: "v1", MountPath: "/data"}, Path: "/vols/v1.ext4"},
		{VolumeMount: VolumeMount{VolumeID: "v2", MountPath: "/ref", ReadOnly: true, Overlay: true}, Path: "/vols/v2.ext4", OverlayFile: "volume-overlay-0.ext4"},
		{VolumeMount: VolumeMount{VolumeID: "v3", MountPath: "/ro", ReadOnly: true}, Path: "/vols/v3.ext4"},
	}}
	ds := deriveDisks("/inst", "/img/root.erofs", meta)
	assert.Equal(t, []hypervisor.Disk{
		{Path: "/img/root.erofs", ReadOnly: true, Serial: "hm-root"},
		{Path: "/inst/overlay.ext4", Serial: "hm-overlay"},
		{Path: "/inst/config.raw", ReadOnly: true, Serial: "hm-config"},
		{Path: "/vols/v1.ext4", Serial: "hm-vol0"},
		{Path: "/vols/v2.ext4", ReadOnly: true, Serial: "hm-vol1"},
		{Path: "/inst/volume-overlay-0.ext4", Serial: "hm-vol1-ov"},
		{Path: "/vols/v3.ext4", ReadOnly: true, Serial: "hm-vol2"},
	}, ds.Disks)
	assert.Equal(t, []string{"overlay.ext4", "config.raw", "volume-overlay-0.ext4"}, ds.Files)
	assert.Equal(t, []guestconfig.VolumeMount{
		{Serial: "hm-vol0", MountPath: "/data"},
		{Serial: "hm-vol1", MountPath: "/ref", ReadOnly: true, Overlay: true, OverlaySerial: "hm-vol1-ov"},
		{Serial: "hm-vol2", MountPath: "/ro", ReadOnly: true},
	}, ds.Guest)
}

func TestVolumesAcrossTheLifecycle(t *testing.T) {
	ctx := context.Background()
	vols := newFakeVolumes(t, "data", "ref", "extra")
	m, hv := newVolumeManager(t, vols)

	in, err := m.Create(ctx, CreateParams{Name: "a", Image: "img", Volumes: []VolumeMount{
		{VolumeID: "data", MountPath: "/data"},
		{VolumeID: "ref", MountPath: "/ref", ReadOnly: true, Overlay: true},
	}})
	require.NoError(t, err)
	assert.Equal(t, []VolumeMount{
		{VolumeID: "vol-data", MountPath: "/data"},
		{VolumeID: "vol-ref", MountPath: "/ref", ReadOnly: true, Overlay: true, OverlaySize: "64MB"},
	}, in.Volumes)
	// The VM got the derived disks, the guest its mounts.
	vm := hv.vm(m.dir(in.ID))
	assert.Equal(t, deriveDisks(m.dir(in.ID), "/nonexistent/rootfs.erofs", m.mustMeta(t, in.ID)).Disks, vm.cfg.Disks)
	assert.Len(t, vm.cfg.Disks, 6)
	raw, err := os.ReadFile(filepath.Join(m.dir(in.ID), configFile))
	require.NoError(t, err)
	gc, err := guestconfig.Decode(raw)
	require.NoError(t, err)
	assert.Equal(t, []guestconfig.VolumeMount{
		{Serial: "hm-vol0", MountPath: "/data"},
		{Serial: "hm-vol1", MountPath: "/ref", ReadOnly: true, Overlay: true, OverlaySerial: "hm-vol1-ov"},
	}, gc.Volumes)
	assert.FileExists(t, filepath.Join(m.dir(in.ID), "volume-overlay-0.ext4"))
	assert.Equal(t, []string{in.ID}, vols.users("vol-data"))

	// A writable volume is one instance's: a second create is refused
	// and leaves nothing attached.
	_, err = m.Create(ctx, CreateParams{Name: "b", Image: "img", Volumes: []VolumeMount{
		{VolumeID: "ref", MountPath: "/ref", ReadOnly: true}, {VolumeID: "data", MountPath: "/data"}}})
	assert.ErrorIs(t, err, ErrVolumeInUse)
	assert.Equal(t, []string{in.ID}, vols.users("vol-ref"))

	// Attach/detach need Stopped; fork and snapshot refuse the writable volume.
	var te *TransitionError
	_, err = m.AttachVolume(ctx, "a", "extra", VolumeMount{MountPath: "/extra"})
	require.ErrorAs(t, err, &te)
	assert.ErrorContains(t, err, "stop the instance first")
	_, err = m.DetachVolume(ctx, "a", "data")
	require.ErrorAs(t, err, &te)
	hv.vm(m.dir(in.ID)).exit(0, "done")
	waitFor(t, m, in.ID, state.Stopped)
	_, err = m.Fork(ctx, "a", ForkParams{Name: "f"})
	assert.ErrorIs(t, err, ErrVolumeInUse)
	assert.ErrorContains(t, err, "volume vol-data is mounted writable at /data")
	_, err = m.CreateSnapshot(ctx, "a", SnapshotParams{})
	assert.ErrorIs(t, err, ErrVolumeInUse)

	// Detach the writable one (by name), attach another read-only.
	got, err := m.DetachVolume(ctx, "a", "data")
	require.NoError(t, err)
	assert.Len(t, got.Volumes, 1)
	assert.Empty(t, vols.users("vol-data"))
	_, err = m.DetachVolume(ctx, "a", "data")
	assert.ErrorIs(t, err, ErrVolumeNotFound)
	_, err = m.AttachVolume(ctx, "a", "extra", VolumeMount{MountPath: "/ref/sub", ReadOnly: true})
	var ie *InvalidArgumentError
	require.ErrorAs(t, err, &ie)
	assert.Equal(t, "mount_path", ie.Field)
	got, err = m.AttachVolume(ctx, "a", "extra", VolumeMount{MountPath: "/extra", ReadOnly: true})
	require.NoError(t, err)
	assert.Equal(t, "/extra", got.Volumes[1].MountPath)
	assert.Equal(t, []string{in.ID}, vols.users("vol-extra"))

	// Fork: same read-only attachments, own overlay disk.
	fork, err := m.Fork(ctx, "a", ForkParams{Name: "f"})
	require.NoError(t, err)
	assert.Equal(t, got.Volumes, fork.Volumes)
	assert.ElementsMatch(t, []string{in.ID, fork.ID}, vols.users("vol-ref"))
	assert.FileExists(t, filepath.Join(m.dir(fork.ID), "volume-overlay-0.ext4"))

	// A snapshot keeps the set; restoring it after a detach re-attaches.
	snap, err := m.CreateSnapshot(ctx, "a", SnapshotParams{})
	require.NoError(t, err)
	assert.FileExists(t, filepath.Join(m.cfg.Paths.SnapshotDir(snap.ID), "volume-overlay-0.ext4"))
	_, err = m.DetachVolume(ctx, "a", "ref")
	require.NoError(t, err)
	assert.NoFileExists(t, filepath.Join(m.dir(in.ID), "volume-overlay-0.ext4"))
	restored, err := m.RestoreSnapshot(ctx, "a", snap.ID, RestoreSnapshotParams{})
	require.NoError(t, err)
	assert.Equal(t, got.Volumes, restored.Volumes)
	assert.FileExists(t, filepath.Join(m.dir(in.ID), "volume-overlay-0.ext4"))
	assert.ElementsMatch(t, []string{in.ID, fork.ID}, vols.users("vol-ref"))

	// A volume gone since the snapshot: a clear 404-class error naming it.
	require.NoError(t, m.Delete(ctx, fork.ID))
	vols.mu.Lock()
	delete(vols.vols, "vol-extra")
	vols.mu.Unlock()
	_, err = m.ForkSnapshot(ctx, snap.ID, ForkParams{Name: "g"})
	assert.ErrorIs(t, err, ErrVolumeNotFound)
	assert.ErrorContains(t, err, "volume vol-extra at /extra")
	assert.Equal(t, []string{in.ID}, vols.users("vol-ref"), "the failed fork left no attachment")

	// Delete detaches everything.
	require.NoError(t, m.Delete(ctx, "a"))
	assert.Empty(t, vols.users("vol-ref"))
	assert.Empty(t, m.VolumeAttachments())
}

func TestVolumeMetadataVersion(t *testing.T) {
	vols := newFakeVolumes(t, "ro")
	m, hv := newVolumeManager(t, vols)
	plain := stopped(t, m, hv, CreateParams{Name: "plain", Image: "img"})
	with := stopped(t, m, hv, CreateParams{Name: "with", Image: "img", Volumes: []VolumeMount{{VolumeID: "ro", MountPath: "/ro", ReadOnly: true}}})
	for id, want := range map[string]int{plain.ID: 1, with.ID: 2} {
		var v struct{ Version int }
		require.NoError(t, fsutil.ReadJSON(filepath.Join(m.dir(id), metadataFile), &v))
		assert.Equal(t, want, v.Version, id)
	}
	// Reloaded, the volumes are still there and reported for reconcile.
	m2, _ := newTestManagerWith(t, filepath.Dir(filepath.Dir(m.dir(with.ID))), hv, func(c *Config) { c.Volumes = vols })
	got, err := m2.Get(context.Background(), "with")
	require.NoError(t, err)
	assert.Equal(t, "/ro", got.Volumes[0].MountPath)
	assert.Equal(t, map[string][]VolumeAttachment{"vol-ro": {{InstanceID: with.ID, MountPath: "/ro", ReadOnly: true}}}, m2.VolumeAttachments())
}

func (m *Manager) mustMeta(t *testing.T, id string) Metadata {
	t.Helper()
	e, err := m.resolve(id)
	require.NoError(t, err)
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.meta
}

func TestBootRefusesAMissingVolumeDisk(t *testing.T) {
	vols := newFakeVolumes(t, "gone")
	m, hv := newVolumeManager(t, vols)
	in := stopped(t, m, hv, CreateParams{Name: "a", Image: "img", Volumes: []VolumeMount{{VolumeID: "gone", MountPath: "/g"}}})
	require.NoError(t, os.Remove(vols.vols["vol-gone"].info.Path))
	_, err := m.Start(context.Background(), in.ID, StartParams{})
	assert.ErrorIs(t, err, ErrVolumeNotFound)
	assert.ErrorContains(t, err, "detach it")
	got, err := m.DetachVolume(context.Background(), in.ID, "vol-gone")
	require.NoError(t, err)
	assert.Empty(t, got.Volumes)
}
