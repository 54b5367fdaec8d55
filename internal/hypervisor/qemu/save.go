package qemu

// Saving and restoring VM state (standby, snapshots, forks).
//
// Why it works this way:
//   - The state is QEMU's migration stream. QEMU 7.2 has no file: migration
//     URI, so the stream goes through a pipe whose one end is handed to QEMU
//     over QMP (getfd + "fd:" URI) and whose other end the driver reads or
//     writes. Compared with exec:cat this keeps the bytes in our process, so
//     they are checksummed (and optionally zstd- or lz4-compressed, see
//     codec.go) on the fly, in one pass, and no socket file or shell is
//     involved.
//   - A snapshot dir is written as <snapshotDir>.tmp-*, every file and the
//     dir fsynced, then renamed into place: a crash leaves at most a temp dir
//     (removed by the next save to the same path), never a snapshotDir that
//     looks valid. snapshot.json is written last, inside the temp dir.
//   - Restore never writes to the snapshot dir: the state is opened read-only,
//     so one snapshot can be restored many times (fork).
//   - Restore checks what it can before starting QEMU (format, QEMU build,
//     accelerator, kernel/initrd sha256, file sizes) and verifies the state
//     checksum while streaming it into QEMU; QEMU is started with -S, so a
//     VM whose state fails the checksum is killed before it ever ran.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hypeman/internal/fsutil"
	"hypeman/internal/hypervisor"
	"hypeman/internal/hypervisor/qemu/qmp"
)

const (
	// migrateBandwidth replaces QEMU's default 32 MiB/s migration limit: the
	// stream goes to a local file, as fast as possible.
	migrateBandwidth = int64(1) << 40
	// streamBuf is the copy buffer and the pipe size we ask for.
	streamBuf = 1 << 20
	// fd names registered with getfd.
	saveFDName    = "hm-save"
	restoreFDName = "hm-restore"
	// pollEvery is the query-migrate poll interval once the stream ended.
	pollEvery = 2 * time.Millisecond
)

// SaveState implements hypervisor.VM. See the package notes above and
// hypervisor.VM.SaveState for the contract; snapshotDir must be absolute.
func (v *VM) SaveState(ctx context.Context, snapshotDir string, opts hypervisor.SaveOptions) (*hypervisor.SnapshotInfo, error) {
	info, err := v.saveState(ctx, snapshotDir, opts)
	if err != nil {
		return nil, fmt.Errorf("qemu save state: %w", err)
	}
	return info, nil
}

func (v *VM) saveState(ctx context.Context, snapshotDir string, opts hypervisor.SaveOptions) (*hypervisor.SnapshotInfo, error) {
	start := time.Now()
	snapshotDir, err := newSnapshotDir(snapshotDir, opts.Compression)
	if err != nil {
		return nil, err
	}
	rec, err := ReadLaunchRecord(v.dir)
	if err != nil {
		return nil, fmt.Errorf("launch record: %w", err)
	}
	if len(rec.Argv) < 2 {
		return nil, fmt.Errorf("launch record %s: empty argv", ArgsFileName)
	}
	// A full-RAM snapshot of a file-backed VM records anonymous RAM, so it
	// never needs the file (memfile.go); ExcludeMemory needs a VM whose RAM
	// is the file.
	argv := argvWithAnonMemory(rec.Argv)
	var memFile string
	if opts.ExcludeMemory {
		mp, ok := sharedMemoryFile(rec.Argv)
		if !ok {
			return nil, errors.New("exclude memory: the VM's RAM is not in a shared memory file (launch it with a memory file; a clone maps its template's file privately and is saved with its RAM)")
		}
		argv, memFile = rec.Argv, mp
		if !filepath.IsAbs(memFile) {
			memFile = filepath.Join(v.dir, memFile)
		}
	}
	c, err := v.QMP(ctx)
	if err != nil {
		return nil, err
	}

	meta := &SnapshotMeta{
		Kind:        snapshotKind,
		Format:      SnapshotFormat,
		QEMUVersion: c.Version().String(),
		QEMUPackage: c.Version().Package,
		Accel:       rec.Accel,
		TSCKHz:      rec.TSCKHz,
		Argv:        argv,
	}
	if meta.MemoryMiB, err = memoryMiBOf(rec.Argv); err != nil {
		return nil, err
	}
	for flag, dst := range map[string]**FileDigest{"-kernel": &meta.Kernel, "-initrd": &meta.Initrd} {
		p, ok := argValue(rec.Argv, flag)
		if !ok {
			continue
		}
		abs := p
		if !filepath.IsAbs(abs) {
			abs = filepath.Join(v.dir, p)
		}
		size, sum, err := v.drv.digests.digest(abs)
		if err != nil {
			return nil, fmt.Errorf("boot file: %w", err)
		}
		*dst = &FileDigest{Path: p, Size: size, SHA256: sum}
	}
	for _, name := range instanceFilesOf(rec.Argv) {
		fi, err := os.Stat(filepath.Join(v.dir, name))
		if err != nil {
			return nil, fmt.Errorf("instance file: %w", err)
		}
		meta.InstanceFiles = append(meta.InstanceFiles, InstanceFile{Name: name, Size: fi.Size()})
	}

	described := time.Now()

	var st struct {
		Status string `json:"status"`
	}
	if err := v.execute(ctx, "query-status", nil, &st); err != nil {
		return nil, err
	}
	switch st.Status {
	case "running":
		if err := v.execute(ctx, "stop", nil, nil); err != nil {
			return nil, fmt.Errorf("pause: %w", err)
		}
	case "paused":
	case "postmigrate":
		return nil, errors.New("vm state was already saved (QEMU refuses to migrate again before the VM is resumed)")
	default:
		return nil, fmt.Errorf("vm is %q: only a running or paused VM can be saved", st.Status)
	}
	paused := time.Now()

	var state StateMeta
	var streamed, memSynced time.Time
	err = publishSnapshot(snapshotDir, func(tmp string) (*SnapshotMeta, error) {
		if state, err = v.streamOut(ctx, c, tmp, opts.Compression, opts.ExcludeMemory); err != nil {
			return nil, err
		}
		streamed = time.Now()
		if opts.ExcludeMemory {
			// The VM is stopped: its RAM (the file) no longer changes.
			if err := fsutil.SyncFile(memFile); err != nil {
				return nil, fmt.Errorf("memory file: %w", err)
			}
			size, fp, err := memFingerprint(memFile)
			if err != nil {
				return nil, fmt.Errorf("memory file: %w", err)
			}
			meta.MemoryFile = &MemoryFileMeta{Path: memFile, Size: size, Fingerprint: fp}
		}
		memSynced = time.Now()
		meta.State = state
		meta.CreatedAt = time.Now().UTC()
		return meta, nil
	})
	if err != nil {
		return nil, err
	}
	if opts.ExcludeMemory {
		v.mu.Lock()
		v.memoryExported = true
		v.mu.Unlock()
	}
	v.log.Info("vm state saved", "snapshot", snapshotDir, "describe_ms", described.Sub(start).Milliseconds(),
		"pause_ms", paused.Sub(described).Milliseconds(), "stream_ms", streamed.Sub(paused).Milliseconds(),
		"memory_file_ms", memSynced.Sub(streamed).Milliseconds(), "exclude_memory", opts.ExcludeMemory,
		"total_ms", time.Since(start).Milliseconds(),
		"stream_bytes", state.StreamSize, "file_bytes", state.Size, "compression", state.compression().String())
	return meta.Info(snapshotDir), nil
}

// newSnapshotDir checks the arguments of a save or conversion: the target
// dir (returned cleaned) must be absolute and not exist, c valid.
func newSnapshotDir(dir string, c hypervisor.Compression) (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("snapshot dir %q: must be an absolute path", dir)
	}
	dir = filepath.Clean(dir)
	if _, err := os.Lstat(dir); err == nil {
		return "", fmt.Errorf("snapshot dir %s: %w", dir, fs.ErrExist)
	}
	return dir, nil
}

// publishSnapshot makes a snapshot dir appear atomically at snapshotDir:
// fill writes the state into a temp dir beside it and returns the
// metadata, which is written last; the dir is synced and renamed into
// place. On error nothing is left (and temp dirs of earlier interrupted
// attempts are gone too).
func publishSnapshot(snapshotDir string, fill func(tmp string) (*SnapshotMeta, error)) error {
	parent := filepath.Dir(snapshotDir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	removeSnapshotTemps(snapshotDir)
	tmp, err := os.MkdirTemp(parent, filepath.Base(snapshotDir)+".tmp-")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	meta, err := fill(tmp)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	if err := writeSynced(filepath.Join(tmp, SnapshotMetaName), append(b, '\n')); err != nil {
		return err
	}
	if err := fsutil.SyncDir(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, snapshotDir); err != nil {
		return fmt.Errorf("publish snapshot: %w", err)
	}
	ok = true
	return fsutil.SyncDir(parent)
}

// removeSnapshotTemps deletes <snapshotDir>.tmp-* left by an interrupted
// save. The caller serialises saves to one snapshotDir.
func removeSnapshotTemps(snapshotDir string) {
	matches, _ := filepath.Glob(globEscape(snapshotDir) + ".tmp-*")
	for _, m := range matches {
		os.RemoveAll(m)
	}
}

func globEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`)
	return r.Replace(s)
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// streamOut migrates the (stopped) VM into a state file in dir, stored as
// comp says, and returns the state description. It returns only after QEMU
// reports the migration completed and the file is synced. ignoreShared
// leaves shared RAM (a memory file) out of the stream; it is set either
// way, since a restored clone's QEMU keeps the capability its incoming
// migration turned on.
func (v *VM) streamOut(ctx context.Context, c *qmp.Client, dir string, comp hypervisor.Compression, ignoreShared bool) (StateMeta, error) {
	if err := c.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": migrateBandwidth}, nil); err != nil {
		return StateMeta{}, err
	}
	if err := setIgnoreShared(ctx, c, ignoreShared); err != nil {
		return StateMeta{}, err
	}
	sw, err := createState(dir, comp)
	if err != nil {
		return StateMeta{}, err
	}

	r, w, err := os.Pipe()
	if err != nil {
		sw.abort()
		return StateMeta{}, err
	}
	setPipeSize(r)
	err = c.ExecuteFD(ctx, "getfd", map[string]any{"fdname": saveFDName}, w, nil)
	w.Close() // QEMU holds its own copy: EOF comes when QEMU closes it
	if err != nil {
		r.Close()
		sw.abort()
		return StateMeta{}, err
	}

	type result struct {
		sm  StateMeta
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer r.Close()
		_, err := copyStream(sw, r, v.saveHook)
		if err != nil {
			sw.abort()
			done <- result{err: err}
			return
		}
		sm, err := sw.finish()
		done <- result{sm: sm, err: err}
	}()

	if err := c.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + saveFDName}, nil); err != nil {
		_ = c.Execute(context.WithoutCancel(ctx), "closefd", map[string]any{"fdname": saveFDName}, nil)
		r.Close() // unblocks the reader if QEMU still holds the write end
		<-done
		return StateMeta{}, err
	}

	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		// Leave QEMU ready for another attempt: cancel and wait until the
		// migration has really ended.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = c.Execute(wctx, "migrate_cancel", nil, nil)
		r.Close()
		<-done
		_ = v.waitMigration(wctx, true)
		return StateMeta{}, ctx.Err()
	}
	// The stream ended: either QEMU completed (it closes the fd in cleanup,
	// after setting the final status) or it failed or died.
	if err := v.waitMigration(ctx, true); err != nil {
		return StateMeta{}, err
	}
	if res.err != nil {
		return StateMeta{}, fmt.Errorf("reading migration stream: %w", res.err)
	}
	return res.sm, nil
}

// waitMigration polls query-migrate until the migration is no longer in
// progress. outgoing selects the error wording only.
func (v *VM) waitMigration(ctx context.Context, outgoing bool) error {
	for {
		var mi struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := v.execute(ctx, "query-migrate", nil, &mi); err != nil {
			// A dropped connection usually means QEMU died; give the
			// reaper a moment to confirm.
			select {
			case <-v.done:
				return v.exitedDuringMigration()
			case <-time.After(500 * time.Millisecond):
			}
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		case "":
			if outgoing {
				return errors.New("no migration in progress")
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-v.done:
			return v.exitedDuringMigration()
		case <-time.After(pollEvery):
		}
	}
}

func (v *VM) exitedDuringMigration() error {
	return fmt.Errorf("qemu exited during migration: %w; vmm.log: %s", hypervisor.ErrNotRunning,
		logTail(filepath.Join(v.dir, hypervisor.VMMLogName), 5))
}

// copyStream copies src to dst with a large buffer, calling hook (tests)
// with the running total after each chunk. It returns the bytes read.
func copyStream(dst io.Writer, src io.Reader, hook func(int64)) (int64, error) {
	buf := make([]byte, streamBuf)
	var n int64
	for {
		k, rerr := src.Read(buf)
		if k > 0 {
			if _, err := dst.Write(buf[:k]); err != nil {
				return n, err
			}
			n += int64(k)
			if hook != nil {
				hook(n)
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// setPipeSize grows a pipe to streamBuf (fewer wakeups per MiB); best effort.
func setPipeSize(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, streamBuf)
	})
}

// setIgnoreShared sets the x-ignore-shared migration capability.
func setIgnoreShared(ctx context.Context, c *qmp.Client, on bool) error {
	caps := []map[string]any{{"capability": capIgnoreShared, "state": on}}
	if err := c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil); err != nil {
		return fmt.Errorf("migration capability %s: %w", capIgnoreShared, err)
	}
	return nil
}
