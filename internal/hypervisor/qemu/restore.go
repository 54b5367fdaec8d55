package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"hypeman/internal/hypervisor"
)

// Restore implements hypervisor.Hypervisor: check the snapshot, start QEMU
// in cfg.Dir with the saved argv (overrides applied) plus "-S -incoming
// defer", stream the state in through a pipe while verifying its checksum,
// wait for QEMU to finish loading and return the VM paused. Files Restore
// expects in cfg.Dir: the snapshot's InstanceFiles (hypervisor.SnapshotInfo)
// with their saved sizes; QEMU creates the rest (qmp.sock, the agent socket,
// serial.log, vmm.log; the serial log is appended to). The snapshot dir is
// only read.
func (d *Driver) Restore(ctx context.Context, cfg hypervisor.RestoreConfig) (hypervisor.VM, error) {
	v, err := d.restore(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("qemu restore %s: %w", cfg.SnapshotDir, err)
	}
	return v, nil
}

func (d *Driver) restore(ctx context.Context, cfg hypervisor.RestoreConfig) (*VM, error) {
	start := time.Now()
	if !filepath.IsAbs(cfg.Dir) {
		return nil, fmt.Errorf("dir %q: must be an absolute path", cfg.Dir)
	}
	if cfg.SnapshotDir == "" {
		return nil, errors.New("no snapshot dir")
	}
	meta, err := ReadSnapshotMeta(cfg.SnapshotDir)
	if err != nil {
		return nil, err
	}
	if err := checkMemoryFile(meta.MemoryFile, cfg.MemoryFile); err != nil {
		return nil, err
	}
	ver, pkg, err := d.installedVersion(ctx)
	if err != nil {
		return nil, err
	}
	argv, err := restoreArgv(d.binary, meta.Argv, cfg)
	if err != nil {
		return nil, err
	}
	env := snapshotEnv{qemuVersion: ver, qemuPackage: pkg, accel: d.accel.Accel, digest: d.digests.digest}
	if err := checkSnapshot(meta, cfg.SnapshotDir, cfg.Dir, env); err != nil {
		return nil, err
	}
	state, err := os.Open(filepath.Join(cfg.SnapshotDir, meta.State.File))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", hypervisor.ErrSnapshotCorrupt, err)
	}
	defer state.Close()
	checked := time.Now()

	rec := LaunchRecord{Argv: argv, Accel: meta.Accel, TSCKHz: meta.TSCKHz, RestoredFrom: cfg.SnapshotDir}
	id := cfg.ID
	if id == "" {
		name, _ := argValue(argv, "-name")
		id, _ = optValue(name, "guest")
	}
	v, err := d.start(ctx, cfg.Dir, id, rec, []string{"-S", "-incoming", "defer"})
	if err != nil {
		return nil, err
	}
	launched := time.Now()
	fail := func(err error) (*VM, error) {
		if kerr := v.Kill(); kerr != nil {
			d.log.Warn("killing failed restore", "err", kerr)
		}
		v.Close()
		return nil, err
	}
	if err := v.streamIn(ctx, state, meta.State, meta.MemoryFile != nil); err != nil {
		return fail(err)
	}
	st, err := v.Status(ctx)
	if err != nil {
		return fail(err)
	}
	if st != hypervisor.RunStatePaused {
		return fail(fmt.Errorf("vm is %s after loading its state, want paused", st))
	}
	v.log.Info("vm restored", "snapshot", cfg.SnapshotDir, "check_ms", checked.Sub(start).Milliseconds(),
		"launch_ms", launched.Sub(checked).Milliseconds(), "load_ms", time.Since(launched).Milliseconds(),
		"total_ms", time.Since(start).Milliseconds())
	return v, nil
}

// streamIn feeds the state file into the incoming QEMU and waits until QEMU
// has loaded it. A checksum, size or decompression failure is
// ErrSnapshotCorrupt and takes precedence over QEMU's own failure (which a
// damaged stream usually causes). ignoreShared must match the save's
// capability (it changes the stream format).
func (v *VM) streamIn(ctx context.Context, state *os.File, sm StateMeta, ignoreShared bool) error {
	c, err := v.QMP(ctx)
	if err != nil {
		return err
	}
	if ignoreShared {
		if err := setIgnoreShared(ctx, c, true); err != nil {
			return err
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer w.Close()
	setPipeSize(w)
	err = c.ExecuteFD(ctx, "getfd", map[string]any{"fdname": restoreFDName}, r, nil)
	r.Close()
	if err != nil {
		return err
	}
	if err := c.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + restoreFDName}, nil); err != nil {
		return err
	}
	fed := make(chan error, 1)
	go func() { fed <- feedState(w, state, sm) }()

	var feedErr error
	select {
	case feedErr = <-fed:
	case <-ctx.Done():
		w.Close() // QEMU sees a short stream and gives up; the caller kills it
		<-fed
		return ctx.Err()
	}
	if errors.Is(feedErr, hypervisor.ErrSnapshotCorrupt) {
		return feedErr
	}
	if err := v.waitMigration(ctx, false); err != nil {
		if feedErr != nil {
			return fmt.Errorf("%w (feeding the state: %w)", err, feedErr)
		}
		return err
	}
	return feedErr
}

// writeError marks a failure to write into QEMU's end of the pipe.
type writeError struct{ err error }

func (e *writeError) Error() string { return "writing state to qemu: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

type errWriter struct{ w io.Writer }

func (e errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil {
		err = &writeError{err}
	}
	return n, err
}

// feedState copies the state file (decompressing it if needed) into w and
// closes w, hashing every stored byte. It always hashes the whole file, even
// after QEMU stopped reading, so a damaged file is reported as such.
func feedState(w *os.File, state *os.File, sm StateMeta) error {
	sr, err := openState(state, sm)
	if err != nil {
		w.Close()
		return err
	}
	n, copyErr := copyStream(errWriter{w}, sr, nil)
	w.Close()
	if err := sr.verify(); err != nil {
		return err
	}
	var we *writeError
	switch {
	case errors.As(copyErr, &we):
		return copyErr // QEMU stopped reading; its own error explains why
	case copyErr != nil:
		return fmt.Errorf("%w: state file %s: %w", hypervisor.ErrSnapshotCorrupt, sm.File, copyErr)
	case n != sm.StreamSize:
		return fmt.Errorf("%w: state file %s holds %d stream bytes, snapshot.json says %d", hypervisor.ErrSnapshotCorrupt,
			sm.File, n, sm.StreamSize)
	}
	return nil
}

// restoreArgv returns the saved argv to run with binary, with cfg's
// overrides: ID replaces the -name, Net the network backend, MemoryFile
// the file-backed RAM (mapped privately; paths inside cfg.Dir relative).
func restoreArgv(binary string, saved []string, cfg hypervisor.RestoreConfig) ([]string, error) {
	argv := append([]string{binary}, saved[1:]...)
	if cfg.MemoryFile != "" {
		var err error
		if argv, err = argvWithPrivateMemory(argv, rel(cfg.Dir, cfg.MemoryFile)); err != nil {
			return nil, err
		}
	}
	if cfg.ID != "" {
		name := "guest=" + escapeOpt(cfg.ID)
		if i := flagIndex(argv, "-name", nil); i >= 0 {
			argv[i+1] = name
		} else {
			argv = append([]string{argv[0], "-name", name}, argv[1:]...)
		}
	}
	if n := cfg.Net; n != nil {
		ni := flagIndex(argv, "-netdev", func(v string) bool { id, _ := optValue(v, "id"); return id == "net0" })
		di := flagIndex(argv, "-device", func(v string) bool { return strings.HasPrefix(v, netDeviceModel+",") })
		if ni < 0 || di < 0 {
			return nil, errors.New("network override: the snapshot has no network device (a NIC cannot be added on restore)")
		}
		if (n.TAP != "") == n.User {
			return nil, errors.New("network override: exactly one of TAP or User must be set")
		}
		if len(n.HostForwards) > 0 && !n.User {
			return nil, errors.New("network override: host forwards need user-mode networking")
		}
		nc := *n
		saved, _ := optValue(argv[di+1], "mac")
		if nc.MAC != "" && !sameMAC(nc.MAC, saved) {
			return nil, fmt.Errorf("network override: MAC %s differs from the saved %s (the MAC is part of the saved device state)", nc.MAC, saved)
		}
		nc.MAC = saved
		argv[ni+1], argv[di+1] = netArgs(&nc)
	}
	return argv, nil
}

func sameMAC(a, b string) bool {
	ha, err1 := net.ParseMAC(a)
	hb, err2 := net.ParseMAC(b)
	return err1 == nil && err2 == nil && ha.String() == hb.String()
}

// flagIndex returns the index of the first flag in argv whose value matches
// (any value when match is nil), or -1.
func flagIndex(argv []string, flag string, match func(string) bool) int {
	for i := 1; i+1 < len(argv); i++ {
		if argv[i] == flag && (match == nil || match(argv[i+1])) {
			return i
		}
	}
	return -1
}
