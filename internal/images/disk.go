package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"hypeman/internal/childproc"
)

// DiskFormat is the filesystem of an image's root disk.
type DiskFormat string

const (
	DiskAuto  DiskFormat = "auto" // erofs when mkfs.erofs is installed, else ext4
	DiskErofs DiskFormat = "erofs"
	DiskExt4  DiskFormat = "ext4"
)

// diskBuilder builds root disks in one format.
type diskBuilder struct {
	format DiskFormat
	tool   string // absolute path of mkfs.erofs or mkfs.ext4
	reason string // why this format
}

// chooseDisk resolves the configured format to a builder.
func chooseDisk(want DiskFormat, lookPath func(string) (string, error)) (diskBuilder, error) {
	switch want {
	case "", DiskAuto:
		if p, err := lookPath("mkfs.erofs"); err == nil {
			return diskBuilder{DiskErofs, p, "auto: mkfs.erofs found; erofs is read-only by design, compact and fast to build"}, nil
		}
		if p, err := lookPath("mkfs.ext4"); err == nil {
			return diskBuilder{DiskExt4, p, "auto: mkfs.erofs not installed (erofs-utils); falling back to ext4"}, nil
		}
		return diskBuilder{}, fmt.Errorf("images: neither mkfs.erofs (erofs-utils) nor mkfs.ext4 (e2fsprogs) is installed")
	case DiskErofs:
		p, err := lookPath("mkfs.erofs")
		if err != nil {
			return diskBuilder{}, fmt.Errorf("images: disk format erofs configured but mkfs.erofs is not installed (Debian: erofs-utils): %w", err)
		}
		return diskBuilder{DiskErofs, p, "configured: erofs"}, nil
	case DiskExt4:
		p, err := lookPath("mkfs.ext4")
		if err != nil {
			return diskBuilder{}, fmt.Errorf("images: disk format ext4 configured but mkfs.ext4 is not installed (Debian: e2fsprogs): %w", err)
		}
		return diskBuilder{DiskExt4, p, "configured: ext4"}, nil
	default:
		return diskBuilder{}, fmt.Errorf("images: unknown disk format %q (want auto, erofs or ext4)", want)
	}
}

// fileName is the disk's file name inside the digest directory.
func (b diskBuilder) fileName() string { return "rootfs." + string(b.format) }

// build turns the staging tree into out, via a temporary file in the same
// directory renamed into place. uuid is a stable filesystem UUID.
func (b diskBuilder) build(ctx context.Context, staging, out, uuid string) (int64, error) {
	tmp := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".tmp")
	_ = os.Remove(tmp)
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	var err error
	switch b.format {
	case DiskErofs:
		// Uncompressed (see package doc); --preserve-mtime keeps per-file
		// mtimes instead of clamping them to the build time.
		err = run(ctx, b.tool, "--quiet", "--preserve-mtime", "-U", uuid, tmp, staging)
	case DiskExt4:
		err = b.buildExt4(ctx, staging, tmp, uuid)
	default:
		err = fmt.Errorf("unknown disk format %q", b.format)
	}
	if err != nil {
		return 0, err
	}
	f, err := os.Open(tmp)
	if err != nil {
		return 0, &localError{Op: "open", Path: tmp, Err: err}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, &localError{Op: "fsync", Path: tmp, Err: err}
	}
	fi, err := f.Stat()
	f.Close()
	if err != nil {
		return 0, &localError{Op: "stat", Path: tmp, Err: err}
	}
	if err := os.Rename(tmp, out); err != nil {
		return 0, &localError{Op: "rename", Path: out, Err: err}
	}
	ok = true
	return fi.Size(), nil
}

// buildExt4 sizes an ext4 filesystem for the tree and fills it with mkfs.ext4
// -d. No journal (the disk is attached read-only), root owned by 0:0. If the
// estimate turns out too small, it retries once with twice the headroom.
func (b diskBuilder) buildExt4(ctx context.Context, staging, tmp, uuid string) error {
	est, err := estimateExt4(staging)
	if err != nil {
		return err
	}
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		size := est.size(attempt)
		inodes := est.inodes + est.inodes/4 + 256
		_ = os.Remove(tmp)
		f, err := os.Create(tmp)
		if err != nil {
			return &localError{Op: "create", Path: tmp, Err: err}
		}
		err = f.Truncate(size)
		f.Close()
		if err != nil {
			return &localError{Op: "truncate", Path: tmp, Err: err}
		}
		lastErr = run(ctx, b.tool, "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
			"-N", strconv.FormatInt(inodes, 10), "-O", "^has_journal",
			"-E", "root_owner=0:0", "-L", "hm-root", "-U", uuid, "-d", staging, tmp)
		if lastErr == nil || ctx.Err() != nil {
			return lastErr
		}
	}
	return lastErr
}

type ext4Estimate struct {
	blocks int64 // 4 KiB data blocks for file contents, directories, long symlinks
	inodes int64
}

func (e ext4Estimate) size(attempt int) int64 {
	data := e.blocks * 4096
	headroom := data/8 + 16<<20 // block-group metadata, extent trees, slack
	if attempt > 0 {
		headroom = data/2 + 64<<20
	}
	total := data + headroom + e.inodes*256
	const align = 4 << 20
	return (total + align - 1) / align * align
}

func estimateExt4(dir string) (ext4Estimate, error) {
	var e ext4Estimate
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		if st != nil && st.Nlink > 1 && !fi.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		e.inodes++
		switch {
		case fi.Mode().IsRegular():
			e.blocks += (fi.Size() + 4095) / 4096
		case fi.IsDir():
			e.blocks += 1 + (fi.Size()+4095)/4096
		case fi.Mode()&fs.ModeSymlink != 0 && fi.Size() >= 60:
			e.blocks++
		}
		return nil
	})
	if err != nil {
		return e, &localError{Op: "walk", Path: dir, Err: err}
	}
	return e, nil
}

// run executes a mkfs tool and folds its output into the error.
func run(ctx context.Context, tool string, args ...string) error {
	cmd := childproc.CommandContext(ctx, tool, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		msg := strings.TrimSpace(out.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) && msg != "" {
			return fmt.Errorf("%s: %v: %s", filepath.Base(tool), err, msg)
		}
		return fmt.Errorf("%s: %w", filepath.Base(tool), err)
	}
	return nil
}

// uuidFromDigest derives a stable filesystem UUID from a digest's hex.
func uuidFromDigest(hex string) string {
	h := (hex + strings.Repeat("0", 32))[:32]
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
