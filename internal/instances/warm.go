package instances

// Warm create: a create whose shape (image, memory, vcpus, overlay size,
// NIC...) has a pre-booted template in the warm pool (package warm) is
// served by restoring the template's saved guest into the new instance's
// dir instead of booting a kernel. The guest was saved in template mode,
// waiting for its program; the agent's start op gives it the instance's
// identity (clock, RNG, hostname, network) and program. From there it is a
// normal instance: a restart after an exit is a cold boot of this instance.
//
// The restore reuses the fork machinery: copies of the template's disks in
// the instance dir, hypervisor.Restore with the instance's own NIC backend,
// and the guest re-addressed through the agent. The clone's serial log is a
// new file in its own dir: the template's boot lines never appear in it.
//
// Served cold (no template used, none built): requests with volumes (a
// template has no volume disks), skip_guest_agent (the program arrives
// through the agent), and managers without a pool. Any warm failure falls
// back to a cold boot (logged), never fails the create.
//
// Hooks elsewhere (one line each): Create calls bootOrWarm instead of
// boot; boot records StartMode cold; New opens the pool (openWarm) and
// Close closes it.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"hypeman/internal/guest/agent"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances/state"
	"hypeman/internal/rotlog"
	"hypeman/internal/warm"
)

// Start modes (Metadata.StartMode).
const (
	StartCold = "cold"
	StartWarm = "warm"
)

// templateReadyTimeout bounds a template build's boot (TCG, loaded host).
const templateReadyTimeout = 2 * time.Minute

// errNoTemplate: no template for the shape (a miss, not a failure).
var errNoTemplate = errors.New("no warm template")

// warmStarter is implemented by agent connections that can start a
// template-mode guest's program.
type warmStarter interface {
	Start(ctx context.Context, req agent.StartRequest) error
}

// openWarm opens the warm pool when cfg.Warm is set (New).
func (m *Manager) openWarm(ctx context.Context) error {
	if m.cfg.Warm == nil {
		return nil
	}
	probe := &warm.EnvProbe{
		KernelPath: m.cfg.Boot.KernelPath, InitrdPath: m.cfg.Boot.InitrdPath,
		Cmdline: m.cfg.Boot.Cmdline + " " + templateCmdline, GuestFormat: guestconfig.FormatVersion,
	}
	if br, ok := m.cfg.Hypervisor.(hypervisor.BuildReporter); ok {
		probe.VMMBuild = br.VMMBuild
	}
	m.killTemplateBuilds(ctx)
	wm, _ := m.cfg.Metrics.(warm.Metrics)
	p, err := warm.New(ctx, *m.cfg.Warm, probe.Env, m, wm, m.log.With("component", "warm"))
	if err != nil {
		return fmt.Errorf("warm pool: %w", err)
	}
	m.warm = p
	return nil
}

// killTemplateBuilds kills the VMs of template builds a previous daemon
// was killed in the middle of (VMMs outlive the daemon); the pool then
// deletes their dirs.
func (m *Manager) killTemplateBuilds(ctx context.Context) {
	ents, _ := os.ReadDir(m.cfg.Warm.Dir)
	for _, de := range ents {
		if !strings.HasSuffix(de.Name(), warm.BuildingSuffix) {
			continue
		}
		vm, err := m.cfg.Hypervisor.Attach(ctx, filepath.Join(m.cfg.Warm.Dir, de.Name()))
		if err != nil {
			continue
		}
		m.log.Info("killing the VM of an interrupted template build", "dir", de.Name())
		_ = vm.Kill()
		<-vm.Done()
		vm.Close()
	}
}

// WarmStatus reports warm create for /capabilities: whether it is enabled,
// why not, and the pool.
func (m *Manager) WarmStatus() (enabled bool, reason string, st warm.Status) {
	if m.warm == nil {
		return false, "warm create is disabled in the server configuration (warm_enabled)", st
	}
	return true, "", m.warm.Status()
}

// WarmPool is the pool (nil when disabled), for tests and benchmarks.
func (m *Manager) WarmPool() *warm.Pool { return m.warm }

// warmShape is the template shape of an instance; ok is false when the
// instance cannot be served warm (see the file comment).
func (m *Manager) warmShape(meta Metadata, img ImageInfo) (warm.Shape, bool) {
	if m.warm == nil || len(meta.Volumes) > 0 || meta.SkipGuestAgent || img.Digest == "" {
		return warm.Shape{}, false
	}
	mem, balloon := vmMemory(meta)
	return warm.Shape{
		ImageDigest: img.Digest, MemoryMiB: mem, BalloonMiB: balloon, VCPUs: meta.VCPUs,
		OverlayBytes: meta.OverlayBytes, DiskIOBps: meta.Limits.DiskIOBytesPerSec,
		NIC: m.networkEnabled(meta),
	}, true
}

// bootOrWarm starts a new instance (Create; caller holds e.op): warm from
// a template when one matches, else a cold boot, after which a template
// for the shape is requested.
func (m *Manager) bootOrWarm(ctx context.Context, e *entry, img ImageInfo) error {
	e.mu.Lock()
	meta := e.meta
	e.mu.Unlock()
	shape, ok := m.warmShape(meta, img)
	if !ok {
		return m.boot(ctx, e, img)
	}
	err := m.warmStart(ctx, e, img, shape)
	if err == nil {
		return nil
	}
	if !errors.Is(err, errNoTemplate) {
		m.log.Warn("warm create failed, booting cold", "id", meta.ID, "err", err)
		m.logf(meta.ID, "warm start failed, booting cold: %v", err)
		// A fresh overlay: the failed clone may have written to its copy.
		ov := filepath.Join(m.dir(meta.ID), overlayFile)
		os.Remove(ov)
		if err := createOverlayDisk(ctx, ov, meta.OverlayBytes); err != nil {
			return err
		}
	}
	if err := m.boot(ctx, e, img); err != nil {
		return err
	}
	m.warm.Request(context.WithoutCancel(ctx), shape, img.Digest)
	return nil
}

// warmStart restores the template for shape into e's dir and starts the
// instance's program in it. errNoTemplate on a miss. On any other error
// nothing of the attempt is left running (e is Stopped, without a VM).
func (m *Manager) warmStart(ctx context.Context, e *entry, img ImageInfo, shape warm.Shape) error {
	tpl, err := m.warm.Lookup(ctx, shape)
	if err != nil {
		return err
	}
	if tpl == nil {
		return errNoTemplate
	}
	t0 := time.Now()
	e.mu.Lock()
	meta := e.meta
	e.mu.Unlock()
	dir := m.dir(meta.ID)
	for _, f := range tpl.Files {
		dst := filepath.Join(dir, f)
		os.Remove(dst) // the cold path's empty overlay
		if err := copySparse(ctx, filepath.Join(tpl.Dir(), f), dst); err != nil {
			m.warm.Release(tpl)
			return fmt.Errorf("copy %s: %w", f, err)
		}
	}
	m.warm.Release(tpl)
	copied := time.Now()
	// The encoded config is not written: the template's config disk stays,
	// the guest gets its config through the agent's start op.
	lease, gc, _, err := m.prepareRun(ctx, e, meta, img)
	if err != nil {
		return err
	}
	defer m.settleAdmission(e)
	offset, err := rotlog.End(filepath.Join(dir, hypervisor.SerialLogName))
	if err != nil {
		return err
	}
	e.mu.Lock()
	markBooting(&e.meta, img, offset, StartWarm)
	e.meta.AgentReady = true // announced by the template before its save
	err = m.persist(e)
	e.mu.Unlock()
	if err != nil {
		return err
	}
	rc := hypervisor.RestoreConfig{ID: meta.ID, Dir: dir, SnapshotDir: tpl.SnapshotDir()}
	if mf := filepath.Join(tpl.Dir(), templateMemoryFile); statOK(mf) {
		// The clone maps the template's memory privately: its pages are
		// shared with every other clone until one writes them.
		rc.MemoryFile = mf
	}
	if lease != nil {
		rc.Net = lease.NetConfig()
		rc.Net.MAC = "" // the template's MAC stays in the device; the start op changes it
	}
	prepared := time.Now()
	vm, err := m.cfg.Hypervisor.Restore(ctx, rc)
	if err != nil {
		if errors.Is(err, hypervisor.ErrSnapshotIncompatible) || errors.Is(err, hypervisor.ErrSnapshotCorrupt) {
			m.warm.Discard(tpl, err)
		}
		return fmt.Errorf("restore template: %w", err)
	}
	lv := newLiveVM(vm)
	lv.launchedAt = time.Now()
	lv.agent.Store(true) // the template's agent announced itself before the save
	e.mu.Lock()
	e.live, e.attachErr = lv, ""
	e.mu.Unlock()
	m.startWatcher(e, lv, false)
	published := false
	fail := func(err error) error {
		lv.standby.Store(true) // not a program exit: records nothing
		_ = vm.Kill()
		<-lv.handled
		e.mu.Lock()
		e.meta.StartedAt, e.meta.StartMode, e.meta.AgentReady = nil, "", false
		_ = m.persist(e)
		e.mu.Unlock()
		if published {
			m.publish(meta.ID, state.Initializing, state.Stopped, "warm start failed")
		}
		if ctx.Err() == nil {
			// The template's guest did not come up as an instance:
			// build it again rather than fail every create of the shape.
			m.warm.Discard(tpl, err)
		}
		return err
	}
	if err := vm.Resume(ctx); err != nil {
		return fail(fmt.Errorf("resume template: %w", err))
	}
	m.publish(meta.ID, state.Stopped, state.Initializing, "start (warm, from a template)")
	published = true
	restored := time.Now()
	c, err := m.agentFor(ctx, e, lv)
	if err != nil {
		return fail(fmt.Errorf("guest agent: %w", err))
	}
	connected := time.Now()
	ws, ok := c.(warmStarter)
	if !ok {
		return fail(errors.New("the guest agent connection cannot start a template's program"))
	}
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err != nil {
		return fail(err)
	}
	req := agent.StartRequest{Config: *gc, HostTimeUnixNano: time.Now().UnixNano(), Seed: seed}
	if err := ws.Start(ctx, req); err != nil {
		return fail(fmt.Errorf("start op: %w", err))
	}
	m.logf(meta.ID, "vm restored from warm template %s (pid %d)", filepath.Base(tpl.Dir()), vm.Pid())
	m.log.Info("warm start", "id", meta.ID, "template", filepath.Base(tpl.Dir()),
		"copy_ms", copied.Sub(t0).Milliseconds(), "prepare_ms", prepared.Sub(copied).Milliseconds(),
		"restore_ms", restored.Sub(prepared).Milliseconds(), "agent_ms", connected.Sub(restored).Milliseconds(),
		"start_op_ms", time.Since(connected).Milliseconds())
	return nil
}

// BuildTemplate implements warm.Builder: it boots the image in template
// mode in dir (no instance record: it never shows in /instances), waits
// for the agent, saves the state and kills the VM. The template's NIC (when
// the shape has one) has a lease and TAP only while it is built; clones
// replace the backend with their own (hypervisor.RestoreConfig.Net) and
// their guest takes the clone's MAC and address at start. Resource admission does not see the build's VM (one at a time).
func (m *Manager) BuildTemplate(ctx context.Context, key warm.Key, image, dir string) ([]string, error) {
	img, err := m.cfg.Images.ResolveLocal(ctx, image)
	if err != nil {
		return nil, err
	}
	if img.Digest != key.ImageDigest {
		return nil, fmt.Errorf("image %s is now %s, not %s", image, img.Digest, key.ImageDigest)
	}
	meta := Metadata{OverlayBytes: key.OverlayBytes}
	if err := createOverlayDisk(ctx, filepath.Join(dir, overlayFile), key.OverlayBytes); err != nil {
		return nil, err
	}
	gc := &guestconfig.Config{
		Template: true, RootFS: img.FSType,
		// Only for a template stopped before it was given a program: a
		// clone's window comes with its program (the start op's config).
		StopTimeoutSeconds: guestStopSeconds(m.cfg.GuestStopTimeout),
	}
	if key.BalloonMiB > 0 {
		gc.MemoryTarget = int64(key.MemoryMiB-key.BalloonMiB) << 20
	}
	disk, err := gc.Encode()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, configFile), disk, 0o644); err != nil {
		return nil, err
	}
	cfg := hypervisor.VMConfig{
		ID: "template-" + key.ID(), Dir: dir,
		KernelPath: m.cfg.Boot.KernelPath, InitrdPath: m.cfg.Boot.InitrdPath,
		Cmdline:   m.cfg.Boot.Cmdline + " " + templateCmdline,
		MemoryMiB: key.MemoryMiB, BalloonMiB: key.BalloonMiB, VCPUs: key.VCPUs, DiskIOBps: key.DiskIOBps,
		Disks:       deriveDisks(dir, img.DiskPath, meta).Disks,
		AgentSocket: filepath.Join(dir, agentSock),
	}
	if key.BalloonMiB == 0 {
		// Guest RAM in a file the clones map copy-on-write. Not with a
		// balloon: QEMU frees ballooned pages by punching holes in the
		// file, which would zero them under every clone.
		cfg.MemoryFile = filepath.Join(dir, templateMemoryFile)
	}
	if key.NIC {
		// The same kind of backend as the clones' (QEMU saves user-mode
		// networking's state, so a TAP clone cannot load a slirp
		// template): a lease and TAP of its own while it is built.
		if !m.networkEnabled(meta) {
			return nil, errors.New("the shape has a NIC but this server has no network")
		}
		meta.ID = "template-" + key.ID()
		lease, err := m.leaseFor(ctx, meta)
		if err != nil {
			return nil, err
		}
		defer m.releaseNetwork(meta.ID)
		cfg.Net = lease.NetConfig()
	}
	vm, err := m.cfg.Hypervisor.Launch(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("launch template: %w", err)
	}
	defer func() {
		_ = vm.Kill()
		<-vm.Done()
		vm.Close()
	}()
	if err := waitForMarker(ctx, vm, filepath.Join(dir, hypervisor.SerialLogName), guestconfig.MarkerAgentReady, templateReadyTimeout); err != nil {
		return nil, err
	}
	info, err := vm.SaveState(ctx, filepath.Join(dir, warm.SnapshotDirName), hypervisor.SaveOptions{
		ExcludeMemory: cfg.MemoryFile != "", // the RAM stays in the memory file
	})
	if err != nil {
		return nil, fmt.Errorf("save template: %w", err)
	}
	return info.InstanceFiles, nil
}

// statOK reports whether path exists.
func statOK(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// templateMemoryFile is a template's guest RAM (shapes without a balloon):
// written by the template VM, then only ever mapped privately by clones.
const templateMemoryFile = "memory.raw"

// templateCmdline is added to a template's kernel command line. Under TCG
// on a loaded host the clocksource watchdog may find the TSC "unstable"
// against jiffies during boot and switch the guest to refined-jiffies, whose
// clock then drifts by seconds a minute; a template would pass that on to
// every clone (measured: clones 1-4 s off the host within seconds). The
// TSC here is QEMU's virtual clock: reliable, so the watchdog is off.
const templateCmdline = "tsc=reliable"

// waitForMarker polls a VM's serial log until a line contains marker, the
// VM exits, or timeout.
func waitForMarker(ctx context.Context, vm hypervisor.VM, path, marker string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r := rotlog.NewReader(path, 0)
	defer r.Close()
	found := false
	var last string
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		_ = r.Poll(func(b []byte) {
			last = string(b)
			if !found && strings.Contains(last, marker) {
				found = true
			}
		})
		if found {
			return nil
		}
		select {
		case <-vm.Done():
			return fmt.Errorf("template vm exited before %s (last console line: %q)", marker, last)
		case <-ctx.Done():
			return fmt.Errorf("template vm: no %s: %w", marker, ctx.Err())
		case <-t.C:
		}
	}
}
