package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"hypeman/internal/hypervisor"
)

// ConvertState implements hypervisor.Hypervisor: it writes a copy of the
// snapshot in srcDir to dstDir with the state stored as c says. The state is
// streamed once (read, checksum-verified, decoded, re-encoded, written); a
// state already stored as c says is copied byte for byte. dstDir is
// published like a save: <dstDir>.tmp-*, synced, renamed.
func (d *Driver) ConvertState(ctx context.Context, srcDir, dstDir string, c hypervisor.Compression) (*hypervisor.SnapshotInfo, error) {
	info, err := convertState(ctx, srcDir, dstDir, c, d.log.Info)
	if err != nil {
		return nil, fmt.Errorf("qemu convert state %s: %w", srcDir, err)
	}
	return info, nil
}

func convertState(ctx context.Context, srcDir, dstDir string, c hypervisor.Compression, logf func(string, ...any)) (*hypervisor.SnapshotInfo, error) {
	start := time.Now()
	dstDir, err := newSnapshotDir(dstDir, c)
	if err != nil {
		return nil, err
	}
	meta, err := ReadSnapshotMeta(srcDir)
	if err != nil {
		return nil, err
	}
	src, err := os.Open(filepath.Join(srcDir, meta.State.File))
	if err != nil {
		return nil, fmt.Errorf("%w: state file: %w", hypervisor.ErrSnapshotCorrupt, err)
	}
	defer src.Close()
	if st, err := src.Stat(); err != nil || st.Size() != meta.State.Size {
		return nil, fmt.Errorf("%w: state file %s is not the %d bytes snapshot.json says", hypervisor.ErrSnapshotCorrupt, meta.State.File, meta.State.Size)
	}

	err = publishSnapshot(dstDir, func(tmp string) (*SnapshotMeta, error) {
		var err error
		if meta.State.compression() == c {
			err = copyState(ctx, src, tmp, meta.State)
		} else {
			meta.State, err = recodeState(ctx, src, tmp, meta.State, c)
		}
		return meta, err
	})
	if err != nil {
		return nil, err
	}
	logf("vm state converted", "from", srcDir, "to", dstDir, "compression", c.String(),
		"stream_bytes", meta.State.StreamSize, "file_bytes", meta.State.Size, "ms", time.Since(start).Milliseconds())
	return meta.Info(dstDir), nil
}

// ctxReader ends a copy once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// recodeState streams the state in src (described by sm) into a new state
// file in dir stored as c says.
func recodeState(ctx context.Context, src io.Reader, dir string, sm StateMeta, c hypervisor.Compression) (StateMeta, error) {
	sr, err := openState(src, sm)
	if err != nil {
		return sm, err
	}
	sw, err := createState(dir, c)
	if err != nil {
		sr.stop()
		return sm, err
	}
	n, copyErr := copyStream(errWriter{sw}, ctxReader{ctx, sr}, nil)
	fail := func(err error) (StateMeta, error) {
		sw.abort()
		return sm, err
	}
	if err := ctx.Err(); err != nil {
		sr.stop()
		return fail(err)
	}
	if err := sr.verify(); err != nil {
		return fail(err)
	}
	var we *writeError
	switch {
	case errors.As(copyErr, &we):
		return fail(copyErr) // our disk, not the snapshot
	case copyErr != nil:
		return fail(fmt.Errorf("%w: state file %s: %w", hypervisor.ErrSnapshotCorrupt, sm.File, copyErr))
	case n != sm.StreamSize:
		return fail(fmt.Errorf("%w: state file %s holds %d stream bytes, snapshot.json says %d", hypervisor.ErrSnapshotCorrupt,
			sm.File, n, sm.StreamSize))
	}
	return sw.finish()
}

// copyState copies the state file byte for byte into dir, verifying its
// checksum.
func copyState(ctx context.Context, src io.Reader, dir string, sm StateMeta) error {
	raw := sm
	raw.Compression = hypervisor.CompressionNone // hash the stored bytes, do not decode
	sr, err := openState(src, raw)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, sm.File), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := copyStream(errWriter{f}, ctxReader{ctx, sr}, nil); err != nil {
		return err
	}
	if err := sr.verify(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}
