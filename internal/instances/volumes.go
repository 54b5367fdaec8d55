package instances

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
)

// Volumes in instances.
//
// An instance's metadata (Metadata.Volumes) is the truth about what it
// mounts; the volume store's attachments are the cross-instance lock table
// (a writable volume on one instance at a time, read-only ones anywhere),
// written before the metadata and reconciled by the daemon at start
// (VolumeAttachments). Volumes are attached and detached only while the
// instance is Stopped, so a running VM, a standby state and a snapshot's
// saved VM always match the metadata's disk set, which deriveDisks is the
// only derivation of.

// VolumeMount is one volume mounted in an instance (the API's VolumeMount).
type VolumeMount struct {
	// VolumeID is the volume's id (a request may name it by name; the
	// manager records the id).
	VolumeID  string `json:"volume_id"`
	MountPath string `json:"mount_path"`
	// ReadOnly: the guest mounts the volume read-only and the disk is
	// attached read-only. True for overlay mounts.
	ReadOnly bool `json:"readonly"`
	// Overlay gives the instance its own copy-on-write layer (an ext4 disk
	// of OverlaySize in the instance dir) over the read-only volume.
	Overlay     bool   `json:"overlay,omitempty"`
	OverlaySize string `json:"overlay_size,omitempty"`
}

// attachedVolume is a VolumeMount as persisted in metadata.
type attachedVolume struct {
	VolumeMount
	OverlayBytes int64 `json:"overlay_bytes,omitempty"`
	// Path is the volume's disk image (the store never moves an attached
	// volume's file).
	Path string `json:"path"`
	// OverlayFile is the per-instance overlay disk's name in the instance
	// dir (overlay mounts only).
	OverlayFile string `json:"overlay_file,omitempty"`
}

// VolumeInfo is what the manager needs to know about a volume.
type VolumeInfo struct {
	ID   string
	Name string
	// Path is the volume's disk image: a raw ext4 file (absolute).
	Path string
}

// VolumeAttachment is one instance's use of a volume, as the store records
// it.
type VolumeAttachment struct {
	InstanceID string
	MountPath  string
	ReadOnly   bool // true for overlay mounts too
	Overlay    bool
}

// VolumeStore is the volume store as the manager uses it. Errors must wrap
// ErrVolumeNotFound (unknown volume) and ErrVolumeInUse (the attachment
// rules refuse) so callers can branch.
type VolumeStore interface {
	// Get resolves a volume by id or name.
	Get(ctx context.Context, ref string) (VolumeInfo, error)
	// Attach records a atomically: a writable attachment needs the volume
	// to have no other, a read-only one needs no writable one; the same
	// instance twice is refused. Persisted before it returns.
	Attach(ctx context.Context, ref string, a VolumeAttachment) (VolumeInfo, error)
	// Detach removes instanceID's attachment of volume id (no-op if none);
	// DetachInstance removes all of an instance's.
	Detach(ctx context.Context, id, instanceID string) error
	DetachInstance(ctx context.Context, instanceID string) error
}

// Volume errors callers branch on.
var (
	ErrVolumeNotFound = errors.New("volume not found")
	// ErrVolumeInUse: the volume's attachments, or the instance's use of
	// it, refuse the operation (API 409).
	ErrVolumeInUse = errors.New("volume in use")
)

// ownMMIODevices are the virtio-mmio devices every instance may use
// besides its volume disks: image, overlay and config disks, the agent's
// virtio-serial, the NIC and the balloon. NIC and balloon are counted even
// when absent so a volume set that fits never stops fitting (networking
// re-enabled, hotplug memory added).
const ownMMIODevices = 6

// maxVolumeDisks is how many volume disks (an overlay volume needs two) the
// hypervisor's machine leaves for volumes; -1 = no known limit.
func (m *Manager) maxVolumeDisks() (int, int) {
	b, ok := m.cfg.Hypervisor.(hypervisor.DeviceBudget)
	if !ok {
		return -1, 0
	}
	slots := b.DeviceSlots()
	return max(slots-ownMMIODevices, 0), slots
}

// volumeDisks counts the disks a volume set needs.
func volumeDisks(vols []attachedVolume) int {
	n := 0
	for _, v := range vols {
		n++
		if v.Overlay {
			n++
		}
	}
	return n
}

// diskSet is an instance's complete disk set.
type diskSet struct {
	// Disks in the order the VM gets them, with their serials.
	Disks []hypervisor.Disk
	// Files are the disks kept in the instance dir (names relative to
	// it): what a fork or snapshot copies and a snapshot restore
	// replaces. The config disk is one of them.
	Files []string
	// Guest is what the guest init mounts.
	Guest []guestconfig.VolumeMount
}

// deriveDisks is the one derivation of an instance's disks (image, overlay,
// config, volumes, volume overlays) and their serials; boot, fork,
// snapshot and snapshot restore all use it. imagePath may be "" when only
// Files or Guest are needed.
func deriveDisks(dir, imagePath string, meta Metadata) diskSet {
	ds := diskSet{
		Disks: []hypervisor.Disk{
			{Path: imagePath, ReadOnly: true, Serial: guestconfig.SerialRoot},
			{Path: filepath.Join(dir, overlayFile), Serial: guestconfig.SerialOverlay},
			{Path: filepath.Join(dir, configFile), ReadOnly: true, Serial: guestconfig.SerialConfig},
		},
		Files: []string{overlayFile, configFile},
	}
	for i, v := range meta.Volumes {
		g := guestconfig.VolumeMount{Serial: guestconfig.VolumeSerial(i), MountPath: v.MountPath,
			ReadOnly: v.ReadOnly || v.Overlay, Overlay: v.Overlay}
		ds.Disks = append(ds.Disks, hypervisor.Disk{Path: v.Path, ReadOnly: g.ReadOnly, Serial: g.Serial})
		if v.Overlay {
			g.OverlaySerial = guestconfig.VolumeOverlaySerial(i)
			ds.Disks = append(ds.Disks, hypervisor.Disk{Path: filepath.Join(dir, v.OverlayFile), Serial: g.OverlaySerial})
			ds.Files = append(ds.Files, v.OverlayFile)
		}
		ds.Guest = append(ds.Guest, g)
	}
	return ds
}

// checkVolumeMount validates one mount's own fields (field is its prefix:
// "volumes[0]", or "" for the attach route's body) and returns its overlay
// disk size.
func (m *Manager) checkVolumeMount(field string, v *VolumeMount) (int64, error) {
	f := func(name string) string { return subField(field, name) }
	if strings.TrimSpace(v.VolumeID) == "" {
		return 0, &InvalidArgumentError{Field: f("volume_id"), Reason: "is required"}
	}
	if why := guestconfig.CheckMountPath(v.MountPath); why != "" {
		return 0, &InvalidArgumentError{Field: f("mount_path"), Reason: why}
	}
	if !v.Overlay {
		if v.OverlaySize != "" {
			return 0, &InvalidArgumentError{Field: f("overlay_size"), Reason: "is only for overlay mounts; set overlay: true or leave it out"}
		}
		return 0, nil
	}
	if !v.ReadOnly {
		return 0, &InvalidArgumentError{Field: f("overlay"), Reason: "an overlay mount needs readonly: true (the volume is the read-only lower layer; writes go to the instance's own overlay disk)"}
	}
	n, size, err := parseSizeField(f("overlay_size"), v.OverlaySize, m.cfg.DefaultOverlaySize, MinOverlayBytes, MaxOverlayBytes)
	if err != nil {
		return 0, err
	}
	v.OverlaySize = size
	return n, nil
}

// checkVolumeSet validates a whole set: no volume twice, no mount path on,
// under or over another, and the disks fit the machine. field names entry
// i in errors.
func (m *Manager) checkVolumeSet(vols []attachedVolume, field func(i int) string) error {
	for i, v := range vols {
		for j := range i {
			w := vols[j]
			switch {
			case v.VolumeID == w.VolumeID:
				return &InvalidArgumentError{Field: subField(field(i), "volume_id"), Reason: fmt.Sprintf("volume %s is already mounted at %s; a volume is mounted once per instance", v.VolumeID, w.MountPath)}
			case v.MountPath == w.MountPath:
				return &InvalidArgumentError{Field: subField(field(i), "mount_path"), Reason: fmt.Sprintf("%s is already the mount path of volume %s", v.MountPath, w.VolumeID)}
			case strings.HasPrefix(v.MountPath, w.MountPath+"/"), strings.HasPrefix(w.MountPath, v.MountPath+"/"):
				return &InvalidArgumentError{Field: subField(field(i), "mount_path"), Reason: fmt.Sprintf("%s and %s (volume %s) are nested; mount volumes at paths that do not contain each other", v.MountPath, w.MountPath, w.VolumeID)}
			}
		}
	}
	if limit, slots := m.maxVolumeDisks(); limit >= 0 && volumeDisks(vols) > limit {
		return &InvalidArgumentError{Field: cmp.Or(field(len(vols)-1), "volumes"), Reason: fmt.Sprintf(
			"too many volumes: at most %d volume disks per instance on this runtime (%s has %d device slots, %d used by the instance's own devices; an overlay mount uses 2 disks), this asks for %d",
			limit, m.cfg.Hypervisor.Name(), slots, ownMMIODevices, volumeDisks(vols))}
	}
	return nil
}

// subField names field name inside prefix ("volumes[0].mount_path"; just
// name without a prefix).
func subField(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// inField prefixes err with the field it is about (when there is one).
func inField(field string, err error) error {
	if field == "" {
		return err
	}
	return fmt.Errorf("%s: %w", field, err)
}

// validateVolumes checks a create request's volumes.
func (m *Manager) validateVolumes(in []VolumeMount) ([]attachedVolume, error) {
	if len(in) == 0 {
		return nil, nil
	}
	if m.cfg.Volumes == nil {
		return nil, &InvalidArgumentError{Field: "volumes", Reason: "this server has no volume store; leave volumes out"}
	}
	field := func(i int) string { return fmt.Sprintf("volumes[%d]", i) }
	out := make([]attachedVolume, len(in))
	for i := range in {
		v := in[i]
		n, err := m.checkVolumeMount(field(i), &v)
		if err != nil {
			return nil, err
		}
		out[i] = attachedVolume{VolumeMount: v, OverlayBytes: n}
	}
	// Volume ids are compared after attach resolves names; paths now.
	if err := m.checkVolumeSet(out, field); err != nil {
		return nil, err
	}
	return out, nil
}

// attachVolumes records instance id's use of vols[from:] in the store,
// resolving names to ids (the whole set is checked again with ids: the
// same volume by name and by id is refused) and filling in the disk
// paths. On error every attachment made is undone.
func (m *Manager) attachVolumes(ctx context.Context, id string, vols []attachedVolume, from int, field func(i int) string) (err error) {
	for i := from; i < len(vols); i++ {
		info, err := m.cfg.Volumes.Get(ctx, vols[i].VolumeID)
		if err != nil {
			return inField(field(i), err)
		}
		vols[i].VolumeID = info.ID
	}
	if err := m.checkVolumeSet(vols, field); err != nil {
		return err
	}
	var done []string
	defer func() {
		if err != nil {
			for _, vid := range done {
				if derr := m.cfg.Volumes.Detach(context.WithoutCancel(ctx), vid, id); derr != nil {
					m.log.Error("undo volume attachment", "volume", vid, "instance", id, "err", derr)
				}
			}
		}
	}()
	for i := from; i < len(vols); i++ {
		v := &vols[i]
		info, err := m.cfg.Volumes.Attach(ctx, v.VolumeID, VolumeAttachment{InstanceID: id, MountPath: v.MountPath,
			ReadOnly: v.ReadOnly || v.Overlay, Overlay: v.Overlay})
		if err != nil {
			return inField(field(i), err)
		}
		done = append(done, info.ID)
		v.VolumeID, v.Path = info.ID, info.Path
	}
	return nil
}

// createVolumeOverlays creates the overlay disk of every overlay mount in
// vols that has none yet, in dir, with a name no volume in taken or vols
// uses.
func createVolumeOverlays(ctx context.Context, dir string, vols, taken []attachedVolume) error {
	used := map[string]bool{}
	for _, v := range slices.Concat(taken, vols) {
		used[v.OverlayFile] = true
	}
	for i := range vols {
		v := &vols[i]
		if !v.Overlay || v.OverlayFile != "" {
			continue
		}
		v.OverlayFile = freeOverlayFile(used)
		used[v.OverlayFile] = true
		if err := createOverlayDisk(ctx, filepath.Join(dir, v.OverlayFile), v.OverlayBytes); err != nil {
			return fmt.Errorf("volume %s overlay disk: %w", v.VolumeID, err)
		}
	}
	return nil
}

// freeOverlayFile names a new volume overlay disk not in used.
func freeOverlayFile(used map[string]bool) string {
	for n := 0; ; n++ {
		name := fmt.Sprintf("volume-overlay-%d.ext4", n)
		if !used[name] {
			return name
		}
	}
}

// checkVolumeFiles makes sure every volume's disk image is there before a
// boot (the store never moves or deletes an attached volume's file, so a
// missing one was removed behind its back).
func checkVolumeFiles(vols []attachedVolume) error {
	for _, v := range vols {
		if _, err := os.Stat(v.Path); err != nil {
			return fmt.Errorf("%w: volume %s (mounted at %s): its disk image is gone (%v); detach it to start the instance without it",
				ErrVolumeNotFound, v.VolumeID, v.MountPath, err)
		}
	}
	return nil
}

// detachAll removes an instance's attachments from the store (delete,
// failed create or fork). Errors are logged: the daemon's start-up
// reconcile drops attachments of instances that no longer exist.
func (m *Manager) detachAll(ctx context.Context, id string) {
	if m.cfg.Volumes == nil {
		return
	}
	if err := m.cfg.Volumes.DetachInstance(context.WithoutCancel(ctx), id); err != nil {
		m.log.Error("detach the volumes of a removed instance", "id", id, "err", err)
	}
}

// refuseWritableVolumes is the rule for forks and snapshots: a writable
// volume is shared state outside the instance that neither can copy
// consistently (a fork would be a second writer; a snapshot would pair
// the saved memory with whatever the volume holds later).
func refuseWritableVolumes(meta Metadata, what string) error {
	for _, v := range meta.Volumes {
		if !v.ReadOnly && !v.Overlay {
			return fmt.Errorf("%w: cannot %s instance %s: volume %s is mounted writable at %s, and %s; "+
				"stop the instance and detach the volume (or attach it read-only) first",
				ErrVolumeInUse, what, meta.Name, v.VolumeID, v.MountPath, writableReason(what))
		}
	}
	return nil
}

func writableReason(what string) string {
	if what == "fork" {
		return "the fork would be a second writer of the same filesystem"
	}
	return "a snapshot cannot capture an external disk's state consistently with the instance's"
}

// publicVolumes is the view of the metadata's volumes.
func publicVolumes(vols []attachedVolume) []VolumeMount {
	if len(vols) == 0 {
		return nil
	}
	out := make([]VolumeMount, len(vols))
	for i, v := range vols {
		out[i] = v.VolumeMount
	}
	return out
}

// AttachVolume attaches a volume to a Stopped instance: it is mounted at
// p.MountPath from the next boot on. p.VolumeID is ignored (volumeRef is
// the volume).
func (m *Manager) AttachVolume(ctx context.Context, ref, volumeRef string, p VolumeMount) (_ *Instance, err error) {
	if m.cfg.Volumes == nil {
		return nil, &InvalidArgumentError{Field: "volumes", Reason: "this server has no volume store"}
	}
	p.VolumeID = volumeRef
	ovBytes, err := m.checkVolumeMount("", &p)
	if err != nil {
		return nil, err
	}
	e, err := m.resolve(ref)
	if err != nil {
		return nil, err
	}
	e.op.Lock()
	defer e.op.Unlock()
	if err := m.requireStoppedForVolumes(ctx, e, "attach a volume to"); err != nil {
		return nil, err
	}
	e.mu.Lock()
	id, cur := e.meta.ID, slices.Clone(e.meta.Volumes)
	e.mu.Unlock()
	vols := append(cur, attachedVolume{VolumeMount: p, OverlayBytes: ovBytes})
	field := func(i int) string {
		if i == len(vols)-1 {
			return "" // the request's own fields
		}
		return fmt.Sprintf("volumes[%d]", i)
	}
	if err := m.checkVolumeSet(vols, field); err != nil {
		return nil, err
	}
	if err := m.attachVolumes(ctx, id, vols, len(cur), field); err != nil {
		return nil, err
	}
	added := vols[len(cur):]
	if err := createVolumeOverlays(ctx, m.dir(id), added, cur); err != nil {
		m.undoAttach(ctx, id, added[0])
		return nil, err
	}
	e.mu.Lock()
	e.meta.Volumes = vols
	err = m.persist(e)
	e.mu.Unlock()
	if err != nil {
		e.mu.Lock()
		e.meta.Volumes = cur
		e.mu.Unlock()
		m.undoAttach(ctx, id, added[0])
		return nil, err
	}
	m.logf(id, "volume %s attached at %s (readonly %t, overlay %t)", added[0].VolumeID, p.MountPath, p.ReadOnly, p.Overlay)
	return m.view(ctx, e)
}

func (m *Manager) undoAttach(ctx context.Context, id string, v attachedVolume) {
	if v.OverlayFile != "" {
		os.Remove(filepath.Join(m.dir(id), v.OverlayFile))
	}
	if err := m.cfg.Volumes.Detach(context.WithoutCancel(ctx), v.VolumeID, id); err != nil {
		m.log.Error("undo volume attachment", "volume", v.VolumeID, "instance", id, "err", err)
	}
}

// DetachVolume detaches a volume (by id or name) from a Stopped instance;
// an overlay mount's per-instance overlay disk is deleted with it.
func (m *Manager) DetachVolume(ctx context.Context, ref, volumeRef string) (_ *Instance, err error) {
	e, err := m.resolve(ref)
	if err != nil {
		return nil, err
	}
	e.op.Lock()
	defer e.op.Unlock()
	if err := m.requireStoppedForVolumes(ctx, e, "detach a volume from"); err != nil {
		return nil, err
	}
	e.mu.Lock()
	id, name, cur := e.meta.ID, e.meta.Name, slices.Clone(e.meta.Volumes)
	e.mu.Unlock()
	i := slices.IndexFunc(cur, func(v attachedVolume) bool { return v.VolumeID == volumeRef })
	if i < 0 && m.cfg.Volumes != nil {
		if info, gerr := m.cfg.Volumes.Get(ctx, volumeRef); gerr == nil {
			i = slices.IndexFunc(cur, func(v attachedVolume) bool { return v.VolumeID == info.ID })
		}
	}
	if i < 0 {
		return nil, fmt.Errorf("%w: volume %s is not attached to instance %s", ErrVolumeNotFound, volumeRef, name)
	}
	gone := cur[i]
	e.mu.Lock()
	e.meta.Volumes = slices.Delete(slices.Clone(cur), i, i+1)
	err = m.persist(e)
	if err != nil {
		e.meta.Volumes = cur
	}
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if gone.OverlayFile != "" {
		os.Remove(filepath.Join(m.dir(id), gone.OverlayFile))
	}
	if m.cfg.Volumes != nil {
		// The metadata no longer mounts it: a failure here leaves a stale
		// lock that the next daemon start reconciles away.
		if err := m.cfg.Volumes.Detach(ctx, gone.VolumeID, id); err != nil {
			m.log.Error("detach volume in the store", "volume", gone.VolumeID, "instance", id, "err", err)
		}
	}
	m.logf(id, "volume %s detached from %s", gone.VolumeID, gone.MountPath)
	return m.view(ctx, e)
}

// requireStoppedForVolumes refuses attach/detach unless e is Stopped: a
// running VM, a standby state and its snapshots all hold the disk set they
// were started with.
func (m *Manager) requireStoppedForVolumes(ctx context.Context, e *entry, what string) error {
	if err := m.refuseBroken(e, Action(what)); err != nil {
		return err
	}
	st := m.currentState(ctx, e)
	if st == state.Stopped {
		return nil
	}
	return fmt.Errorf("%w; stop the instance first (POST /instances/{id}/stop): volumes are attached and detached only while it is Stopped, and a Standby instance must be restored and stopped",
		&TransitionError{Action: Action(what), State: st, Allowed: Allowed(st)})
}

// VolumeAttachments lists every instance's volume use by volume id: what
// the daemon reconciles the store against at start.
func (m *Manager) VolumeAttachments() map[string][]VolumeAttachment {
	m.mu.Lock()
	es := make([]*entry, 0, len(m.entries))
	for _, e := range m.entries {
		es = append(es, e)
	}
	m.mu.Unlock()
	out := map[string][]VolumeAttachment{}
	for _, e := range es {
		e.mu.Lock()
		for _, v := range e.meta.Volumes {
			out[v.VolumeID] = append(out[v.VolumeID], VolumeAttachment{InstanceID: e.meta.ID, MountPath: v.MountPath,
				ReadOnly: v.ReadOnly || v.Overlay, Overlay: v.Overlay})
		}
		e.mu.Unlock()
	}
	return out
}

// switchVolumes moves instance id's store attachments from the volumes in
// from to those in to (a snapshot restore) and returns to with current
// paths. If a volume in to cannot be attached, the old attachments are
// put back and the error says which volume (ErrVolumeNotFound: deleted
// since the snapshot; ErrVolumeInUse: now mounted writable elsewhere).
func (m *Manager) switchVolumes(ctx context.Context, id string, from, to []attachedVolume, what string) ([]attachedVolume, error) {
	if len(from) == 0 && len(to) == 0 {
		return nil, nil
	}
	if m.cfg.Volumes == nil {
		return nil, &InvalidArgumentError{Field: "volumes", Reason: what + " mounts volumes and this server has no volume store"}
	}
	for _, v := range from {
		if err := m.cfg.Volumes.Detach(ctx, v.VolumeID, id); err != nil {
			return nil, fmt.Errorf("detach volume %s: %w", v.VolumeID, err)
		}
	}
	out, err := m.reattachVolumes(ctx, id, to, what)
	if err != nil {
		if _, rerr := m.reattachVolumes(context.WithoutCancel(ctx), id, from, "the instance"); rerr != nil {
			m.log.Error("put back volume attachments after a failed switch", "instance", id, "err", rerr)
		}
		return nil, err
	}
	return out, nil
}

// reattachVolumes records a new instance's (fork) use of the volumes its
// source mounts; the volumes must still exist. Overlay disks come with the
// source's files (deriveDisks.Files).
func (m *Manager) reattachVolumes(ctx context.Context, id string, vols []attachedVolume, from string) ([]attachedVolume, error) {
	if len(vols) == 0 {
		return nil, nil
	}
	if m.cfg.Volumes == nil {
		return nil, &InvalidArgumentError{Field: "volumes", Reason: from + " mounts volumes and this server has no volume store"}
	}
	out := slices.Clone(vols)
	err := m.attachVolumes(ctx, id, out, 0, func(i int) string {
		return fmt.Sprintf("%s mounts volume %s at %s", from, vols[i].VolumeID, vols[i].MountPath)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
