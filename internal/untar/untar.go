// Package untar applies tar streams onto a directory without ever writing
// outside it: image layers (OCI whiteouts, device nodes, symlinked parents
// followed inside the root) and user archives for volumes (a strict policy
// that refuses anything that is not a plain file, directory, symlink or
// hardlink inside the tree).
//
// Why a package of its own: the image store and the volume store both turn
// untrusted tar bytes into a staging tree that mkfs then packs into a disk.
// The hard part is the same for both (every call through an os.Root, parents
// resolved by hand one component at a time, the final component replaced and
// never followed, deferred directory mtimes, owners, modes and xattrs kept, a
// byte budget enforced while the bytes stream), so it is written once; only
// the policy differs (Options).
//
// Errors: entries that would land outside the root match ErrUnsafePath,
// entries the policy refuses match ErrRefused, malformed ones ErrBadEntry;
// all three are the archive's fault. A failure of our own filesystem is a
// *LocalError. The error for an entry names it ("entry \"a/b\": ...").
package untar

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hypeman/internal/fsutil"
)

// Errors callers branch on with errors.Is.
var (
	// ErrUnsafePath: the entry would land outside the root (or, under
	// Strict, names a path with "..", an absolute path, or goes through a
	// symlink).
	ErrUnsafePath = errors.New("tar entry escapes the root directory")
	// ErrBadEntry: the entry is malformed (empty name, symlink loop,
	// hardlink to nothing, root entry that is not a directory).
	ErrBadEntry = errors.New("bad tar entry")
	// ErrRefused: the policy does not allow this kind of entry (device
	// nodes and fifos under Strict).
	ErrRefused = errors.New("tar entry type not allowed")
)

// LocalError marks a failure of our own filesystem (staging directory, disk
// space), as opposed to a problem with the archive's bytes.
type LocalError struct {
	Op   string
	Path string
	Err  error
}

func (e *LocalError) Error() string { return fmt.Sprintf("%s %s: %v", e.Op, e.Path, e.Err) }
func (e *LocalError) Unwrap() error { return e.Err }

// Options is the policy of an Applier.
type Options struct {
	// Whiteouts applies OCI layer whiteouts (".wh.NAME" hides NAME from lower
	// layers, ".wh..wh..opq" makes a directory opaque). Without it such names
	// are ordinary files.
	Whiteouts bool
	// Strict refuses, instead of containing, what only a hostile or broken
	// archive carries: absolute names, any ".." component, a path through a
	// symlink (symlink then write-through), hardlinks whose target goes
	// through one, device nodes and fifos. Without Strict, absolute names
	// are taken relative to the root and symlinked parents are followed with
	// the root as "/", as container runtimes do for image layers.
	Strict bool
	// Files, when set, counts regular file bytes written (sparse entries
	// expand beyond their share of the stream).
	Files *Budget
	Log   *slog.Logger
}

// Whiteout markers from the OCI image layer spec.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// maxSymlinkHops bounds symlink resolution while walking a path, like the
// kernel's ELOOP limit.
const maxSymlinkHops = 64

// Applier applies tar streams, in order, onto one directory (image layers
// one after the other, or a single archive).
//
// Safety: every filesystem call goes through an os.Root opened on the staging
// directory, and the parent directory of each entry is resolved by hand one
// component at a time (resolveDir): symlinks met on the way are followed as if
// the staging directory were "/", so "../../etc" or "/etc" in a symlink target
// stays inside. The final component is never followed: it is replaced.
type Applier struct {
	root *os.Root
	log  *slog.Logger
	opts Options

	// dirTimes holds directory mtimes, applied once at the end: creating
	// entries inside a directory would otherwise bump them again.
	dirTimes map[string]time.Time

	// Per layer: what this layer wrote (touched) and every ancestor of those
	// (touchedDirs), and the opaque directories it declared. Opaque markers
	// are applied at the end of the layer so that they hide only what lower
	// layers put there, whatever the order of entries in the tar.
	touched     map[string]struct{}
	touchedDirs map[string]struct{}
	opaque      []string

	xattrWarned bool
	stats       Stats
}

// Stats count what an Applier wrote.
type Stats struct {
	Entries int   // tar entries applied (all layers)
	Bytes   int64 // regular file bytes written
}

// New opens an Applier on dir (an existing directory, normally empty). The
// root becomes 0755 owned by 0:0 unless an archive entry "./" says otherwise.
func New(dir string, opts Options) (*Applier, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, &LocalError{Op: "open staging root", Path: dir, Err: err}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	f := &Applier{root: root, log: opts.Log, opts: opts, dirTimes: map[string]time.Time{}}
	if err := root.Chmod(".", 0o755); err != nil {
		root.Close()
		return nil, &LocalError{Op: "chmod", Path: dir, Err: err}
	}
	if err := root.Lchown(".", 0, 0); err != nil {
		root.Close()
		return nil, &LocalError{Op: "chown", Path: dir, Err: err}
	}
	return f, nil
}

// Close releases the root.
func (f *Applier) Close() error { return f.root.Close() }

// Stats returns what was applied so far.
func (f *Applier) Stats() Stats { return f.stats }

// Apply reads one uncompressed tar stream and applies it. Call Finish after
// the last one.
func (f *Applier) Apply(ctx context.Context, r io.Reader) error {
	f.touched = map[string]struct{}{}
	f.touchedDirs = map[string]struct{}{}
	f.opaque = nil
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		if err := f.applyEntry(hdr, tr); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		f.stats.Entries++
	}
	for _, d := range f.opaque {
		if err := f.clearOpaque(d); err != nil {
			return fmt.Errorf("opaque dir %q: %w", d, err)
		}
	}
	return nil
}

// Finish applies the deferred directory mtimes.
func (f *Applier) Finish() error {
	for p, mt := range f.dirTimes {
		if err := f.root.Chtimes(p, mt, mt); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return &LocalError{Op: "chtimes", Path: p, Err: err}
		}
	}
	return nil
}

// cleanEntryPath turns a tar entry name into a clean path relative to the
// root ("." for the root itself). Absolute names are taken as relative to the
// image root, as every runtime does; names that climb above it are refused.
// strict refuses absolute names and any ".." component outright.
func cleanEntryPath(name string, strict bool) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: bad name %q", ErrBadEntry, name)
	}
	if strict {
		if strings.HasPrefix(name, "/") {
			return "", fmt.Errorf("%w: absolute path %q", ErrUnsafePath, name)
		}
		for _, c := range strings.Split(name, "/") {
			if c == ".." {
				return "", fmt.Errorf("%w: %q has a \"..\" component", ErrUnsafePath, name)
			}
		}
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	c = strings.TrimLeft(c, "/")
	if c == "" {
		c = "."
	}
	return c, nil
}

func joinRel(dir, base string) string {
	if dir == "." || dir == "" {
		return base
	}
	return dir + "/" + base
}

// resolveDir resolves p (a clean relative path) to a real directory inside
// the root with no symlink in it. Symlinks are followed with the root as "/".
// With create, missing components become 0755 directories and non-directory
// components are replaced by directories (what an overlay mount shows when
// an upper layer puts a directory over a lower file).
func (f *Applier) resolveDir(p string, create bool) (string, error) {
	var pending []string
	if p != "." {
		pending = strings.Split(p, "/")
	}
	cur := "."
	hops := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = path.Dir(cur) // cur is real (no symlinks), so ".." is lexical; Dir(".") == "."
			continue
		}
		next := joinRel(cur, c)
		fi, err := f.root.Lstat(next)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if !create {
				return "", err
			}
			if err := f.root.Mkdir(next, 0o755); err != nil {
				return "", &LocalError{Op: "mkdir", Path: next, Err: err}
			}
			f.mark(next)
			cur = next
		case err != nil:
			return "", &LocalError{Op: "lstat", Path: next, Err: err}
		case fi.IsDir():
			cur = next
		case fi.Mode()&fs.ModeSymlink != 0:
			if f.opts.Strict {
				return "", fmt.Errorf("%w: %q goes through the symlink %q", ErrUnsafePath, p, next)
			}
			hops++
			if hops > maxSymlinkHops {
				return "", fmt.Errorf("%w: too many levels of symbolic links resolving %q", ErrBadEntry, p)
			}
			target, err := f.root.Readlink(next)
			if err != nil {
				return "", &LocalError{Op: "readlink", Path: next, Err: err}
			}
			if strings.HasPrefix(target, "/") {
				cur = "."
			}
			if t := strings.Trim(target, "/"); t != "" {
				pending = append(strings.Split(t, "/"), pending...)
			}
		default:
			if !create {
				return "", fmt.Errorf("%q: %w", next, fs.ErrNotExist)
			}
			if err := f.remove(next); err != nil {
				return "", err
			}
			if err := f.root.Mkdir(next, 0o755); err != nil {
				return "", &LocalError{Op: "mkdir", Path: next, Err: err}
			}
			f.mark(next)
			cur = next
		}
	}
	return cur, nil
}

// mark records that this layer wrote p (and so all its ancestors).
func (f *Applier) mark(p string) {
	f.touched[p] = struct{}{}
	for d := path.Dir(p); d != "."; d = path.Dir(d) {
		if _, ok := f.touchedDirs[d]; ok {
			break
		}
		f.touchedDirs[d] = struct{}{}
	}
}

// remove deletes p (recursively) and forgets deferred mtimes under it.
func (f *Applier) remove(p string) error {
	if err := f.root.RemoveAll(p); err != nil {
		return &LocalError{Op: "remove", Path: p, Err: err}
	}
	if len(f.dirTimes) > 0 {
		prefix := p + "/"
		for k := range f.dirTimes {
			if k == p || strings.HasPrefix(k, prefix) {
				delete(f.dirTimes, k)
			}
		}
	}
	return nil
}

// replace removes whatever is at p, except an existing real directory when
// keepDir is set (a directory entry over a directory only updates metadata).
// It reports whether p is now absent.
func (f *Applier) replace(p string, keepDir bool) (absent bool, err error) {
	fi, err := f.root.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, &LocalError{Op: "lstat", Path: p, Err: err}
	}
	if keepDir && fi.IsDir() {
		return false, nil
	}
	return true, f.remove(p)
}

func (f *Applier) applyEntry(hdr *tar.Header, r io.Reader) error {
	rel, err := cleanEntryPath(hdr.Name, f.opts.Strict)
	if err != nil {
		return err
	}
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "."
	}

	// Whiteouts.
	if f.opts.Whiteouts && strings.HasPrefix(base, whiteoutPrefix) {
		switch {
		case base == whiteoutOpaque:
			d, err := f.resolveDir(dir, true)
			if err != nil {
				return err
			}
			f.opaque = append(f.opaque, d)
			return nil
		case strings.HasPrefix(base, whiteoutMeta):
			return nil // other AUFS metadata (.wh..wh.plnk etc.): nothing to apply
		}
		victim := strings.TrimPrefix(base, whiteoutPrefix)
		if victim == "" || victim == "." || victim == ".." || strings.ContainsRune(victim, '/') {
			return fmt.Errorf("%w: whiteout %q", ErrUnsafePath, hdr.Name)
		}
		d, err := f.resolveDir(dir, false)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // nothing below to hide
		}
		if err != nil {
			return err
		}
		p := joinRel(d, victim)
		if _, mine := f.touched[p]; mine {
			return nil // a whiteout hides lower layers only
		}
		return f.remove(p)
	}

	if rel == "." {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w: root entry is not a directory", ErrBadEntry)
		}
		f.mark(".")
		return f.setMeta(".", hdr, true)
	}

	parent, err := f.resolveDir(dir, true)
	if err != nil {
		return err
	}
	full := joinRel(parent, base)
	f.mark(full)

	switch hdr.Typeflag {
	case tar.TypeDir:
		absent, err := f.replace(full, true)
		if err != nil {
			return err
		}
		if absent {
			if err := f.root.Mkdir(full, 0o700); err != nil {
				return &LocalError{Op: "mkdir", Path: full, Err: err}
			}
		}
		return f.setMeta(full, hdr, true)

	case tar.TypeReg, tar.TypeRegA:
		if _, err := f.replace(full, false); err != nil {
			return err
		}
		if err := f.writeFile(full, r); err != nil {
			return err
		}
		return f.setMeta(full, hdr, true)

	case tar.TypeSymlink:
		if _, err := f.replace(full, false); err != nil {
			return err
		}
		if hdr.Linkname == "" {
			return fmt.Errorf("%w: symlink with empty target", ErrBadEntry)
		}
		// The target is stored verbatim; it is only ever interpreted later,
		// inside the guest, or by resolveDir, which keeps it inside the root.
		if err := f.root.Symlink(hdr.Linkname, full); err != nil {
			return &LocalError{Op: "symlink", Path: full, Err: err}
		}
		return f.setMeta(full, hdr, false)

	case tar.TypeLink:
		target, err := cleanEntryPath(hdr.Linkname, f.opts.Strict)
		if err != nil {
			return fmt.Errorf("hardlink target: %w", err)
		}
		tdir, tbase := path.Split(target)
		tdir = strings.TrimSuffix(tdir, "/")
		if tdir == "" {
			tdir = "."
		}
		tparent, err := f.resolveDir(tdir, false)
		if err != nil {
			return fmt.Errorf("%w: hardlink target %q: %v", ErrBadEntry, hdr.Linkname, err)
		}
		tfull := joinRel(tparent, tbase)
		if tfull == full {
			return nil
		}
		tfi, err := f.root.Lstat(tfull)
		if err != nil {
			return fmt.Errorf("%w: hardlink target %q: %v", ErrBadEntry, hdr.Linkname, err)
		}
		if tfi.IsDir() {
			return fmt.Errorf("%w: hardlink to directory %q", ErrBadEntry, hdr.Linkname)
		}
		if _, err := f.replace(full, false); err != nil {
			return err
		}
		if err := f.root.Link(tfull, full); err != nil {
			return &LocalError{Op: "link", Path: full, Err: err}
		}
		return nil

	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if f.opts.Strict {
			return fmt.Errorf("%w: device nodes and fifos are refused (type %q)", ErrRefused, string(rune(hdr.Typeflag)))
		}
		if _, err := f.replace(full, false); err != nil {
			return err
		}
		mode := uint32(hdr.Mode & 0o7777)
		switch hdr.Typeflag {
		case tar.TypeChar:
			mode |= unix.S_IFCHR
		case tar.TypeBlock:
			mode |= unix.S_IFBLK
		default:
			mode |= unix.S_IFIFO
		}
		dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
		if err := f.atParent(parent, func(fd int) error { return unix.Mknodat(fd, base, mode, dev) }); err != nil {
			return &LocalError{Op: "mknod", Path: full, Err: err}
		}
		return f.setMeta(full, hdr, true)

	case tar.TypeXGlobalHeader, tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
		return nil // consumed by archive/tar; nothing to create
	default:
		if f.opts.Strict {
			return fmt.Errorf("%w: unsupported entry type %q", ErrRefused, string(rune(hdr.Typeflag)))
		}
		f.log.Warn("skipping unsupported tar entry type", "name", hdr.Name, "type", string(rune(hdr.Typeflag)))
		return nil
	}
}

// sourceError marks a read error from the layer stream while copying a file,
// so it is not mistaken for a local write error.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

type sourceReader struct{ r io.Reader }

func (s sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		err = &sourceError{err}
	}
	return n, err
}

func (f *Applier) writeFile(full string, r io.Reader) error {
	out, err := f.root.OpenFile(full, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return &LocalError{Op: "create", Path: full, Err: err}
	}
	n, err := io.Copy(out, sourceReader{f.opts.Files.Reader(r)})
	f.stats.Bytes += n
	if err != nil {
		out.Close()
		var se *sourceError
		if errors.As(err, &se) {
			return se.err
		}
		return &LocalError{Op: "write", Path: full, Err: err}
	}
	if err := out.Close(); err != nil {
		return &LocalError{Op: "close", Path: full, Err: err}
	}
	return nil
}

// setMeta applies owner, mode, xattrs and mtime. Order matters: chown
// clears setuid/setgid and file capabilities, so it goes first.
func (f *Applier) setMeta(p string, hdr *tar.Header, withMode bool) error {
	if err := f.root.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
		return &LocalError{Op: "chown", Path: p, Err: err}
	}
	if !withMode {
		// Symlink: no mode; set its own mtime without following it.
		mt := hdr.ModTime
		if mt.IsZero() {
			return nil
		}
		dir, base := path.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		if dir == "" {
			dir = "."
		}
		t := unix.Timespec{Sec: mt.Unix(), Nsec: int64(mt.Nanosecond())}
		ts := []unix.Timespec{t, t}
		if err := f.atParent(dir, func(fd int) error {
			return unix.UtimesNanoAt(fd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
		}); err != nil {
			return &LocalError{Op: "lutimes", Path: p, Err: err}
		}
		return nil
	}
	if err := f.root.Chmod(p, fsutil.FileMode(uint32(hdr.Mode))); err != nil {
		return &LocalError{Op: "chmod", Path: p, Err: err}
	}
	if err := f.setXattrs(p, hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		f.dirTimes[p] = hdr.ModTime
		return nil
	}
	at := hdr.AccessTime
	if at.IsZero() {
		at = hdr.ModTime
	}
	if err := f.root.Chtimes(p, at, hdr.ModTime); err != nil {
		return &LocalError{Op: "chtimes", Path: p, Err: err}
	}
	return nil
}

func (f *Applier) setXattrs(p string, hdr *tar.Header) error {
	const prefix = "SCHILY.xattr."
	var attrs [][2]string
	for k, v := range hdr.PAXRecords {
		if strings.HasPrefix(k, prefix) {
			attrs = append(attrs, [2]string{strings.TrimPrefix(k, prefix), v})
		}
	}
	if len(attrs) == 0 || (hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeRegA && hdr.Typeflag != tar.TypeDir) {
		return nil
	}
	fh, err := f.root.Open(p)
	if err != nil {
		return &LocalError{Op: "open", Path: p, Err: err}
	}
	defer fh.Close()
	for _, a := range attrs {
		err := unix.Fsetxattr(int(fh.Fd()), a[0], []byte(a[1]), 0)
		switch {
		case err == nil:
		case errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.EPERM), errors.Is(err, unix.EINVAL):
			if !f.xattrWarned {
				f.xattrWarned = true
				f.log.Warn("cannot set xattr in staging dir; dropping", "path", p, "xattr", a[0], "err", err)
			}
		default:
			return &LocalError{Op: "setxattr " + a[0], Path: p, Err: err}
		}
	}
	return nil
}

// atParent runs fn with a file descriptor for dir (a resolved real
// directory inside the root), for the *at syscalls os.Root does not wrap.
func (f *Applier) atParent(dir string, fn func(fd int) error) error {
	d, err := f.root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return fn(int(d.Fd()))
}

// clearOpaque removes from d everything this layer did not write.
func (f *Applier) clearOpaque(d string) error {
	fh, err := f.root.Open(d)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return &LocalError{Op: "open", Path: d, Err: err}
	}
	entries, err := fh.ReadDir(-1)
	fh.Close()
	if err != nil {
		return &LocalError{Op: "readdir", Path: d, Err: err}
	}
	for _, e := range entries {
		p := joinRel(d, e.Name())
		_, mine := f.touched[p]
		_, holdsMine := f.touchedDirs[p]
		if mine || holdsMine {
			if e.IsDir() {
				if err := f.clearOpaque(p); err != nil {
					return err
				}
			}
			continue
		}
		if err := f.remove(p); err != nil {
			return err
		}
	}
	return nil
}
