package agent

// File operations: stat, put (one file, directory or symlink) and read_tree.
//
// Paths come from the host as absolute paths as the guest sees them. They
// are resolved with chroot semantics (guestproc: ".." stops at the root,
// absolute symlink targets are re-rooted) and every access then goes through
// an os.Root opened on the instance root, so neither a name nor a symlink -
// not even one swapped in while a copy runs - reaches outside the root.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"hypeman/internal/fsutil"
	"hypeman/internal/guest/guestproc"
)

// stat reports on a path inside the root without following a symlink in its
// final component.
func (s *Server) stat(p string) (*FileInfo, error) {
	p, err := guestPath(p)
	if err != nil {
		return nil, err
	}
	host, err := guestproc.ResolveParentInRoot(s.Root, p)
	if err != nil {
		return nil, err
	}
	fi, err := os.Lstat(host)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return &FileInfo{Exists: false}, nil
	}
	if err != nil {
		return nil, err
	}
	out := &FileInfo{Exists: true, Mode: fi.Mode(), Size: fi.Size(), IsDir: fi.IsDir(), ModTime: fi.ModTime()}
	if fi.Mode()&fs.ModeSymlink != 0 {
		out.LinkTarget, _ = os.Readlink(host)
	}
	return out, nil
}

// conflictError is a request the guest's filesystem is in the way of.
type conflictError struct{ msg string }

func (e conflictError) Error() string { return e.msg }

func conflictf(format string, args ...any) error {
	return conflictError{msg: fmt.Sprintf(format, args...)}
}

// inRoot resolves a guest path to a name relative to the instance root
// ("." is the root itself), following a symlink in the final component
// when followLast is set.
func (s *Server) inRoot(p string, followLast bool) (string, error) {
	p, err := guestPath(p)
	if err != nil {
		return "", err
	}
	resolve := guestproc.ResolveParentInRoot
	if followLast {
		resolve = guestproc.ResolveInRoot
	}
	host, err := resolve(s.Root, p)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(s.Root, host)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%w: %q resolves outside the root", errBadPath, p)
	}
	return filepath.ToSlash(rel), nil
}

// --- put ---

const maxLinkTarget = 4096

// put creates one entry. Directories and symlinks are answered with the
// response line; a file gets an empty response line, then the client's data
// frames and end frame, then the server's end frame (Response.Written), sent
// early when writing fails.
func (s *Server) put(st net.Conn, br *bufio.Reader, req *PutRequest, log *slog.Logger) {
	if req == nil {
		_ = writeJSONLine(st, Response{Error: "put: no request", Code: CodeBadRequest})
		return
	}
	root, err := os.OpenRoot(s.Root)
	if err != nil {
		_ = writeJSONLine(st, errorResponse(err))
		return
	}
	defer root.Close()
	switch req.Kind {
	case PutDir:
		err = s.putDir(root, req)
	case PutSymlink:
		err = s.putSymlink(root, req)
	case PutFile:
		s.putFile(st, br, root, req, log)
		return
	default:
		err = badRequestError{err: fmt.Errorf("put: unknown kind %q (want file, dir or symlink)", req.Kind)}
	}
	if err != nil {
		log.Info("put failed", "path", req.Path, "kind", req.Kind, "err", err)
		_ = writeJSONLine(st, errorResponse(fmt.Errorf("%s: %w", req.Path, err)))
		return
	}
	_ = writeJSONLine(st, Response{})
}

func (s *Server) putDir(root *os.Root, req *PutRequest) error {
	name, err := s.inRoot(req.Path, true)
	if err != nil {
		return err
	}
	created := false
	fi, err := root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := mkdirAll(root, name); err != nil {
			return err
		}
		created = true
	case err != nil:
		return err
	case !fi.IsDir():
		return conflictf("it exists and is not a directory")
	}
	return setMeta(root, name, req, created, 0o755)
}

func (s *Server) putSymlink(root *os.Root, req *PutRequest) error {
	t := req.LinkTarget
	if t == "" || len(t) > maxLinkTarget || strings.ContainsRune(t, 0) {
		return badRequestError{err: errors.New("the link target must be 1 to 4096 bytes without NUL")}
	}
	// The link itself replaces what is at the path: never follow it.
	name, err := s.inRoot(req.Path, false)
	if err != nil {
		return err
	}
	if err := prepareEntry(root, name); err != nil {
		return err
	}
	if err := root.Symlink(t, name); err != nil {
		return err
	}
	if req.UID != 0 || req.GID != 0 {
		return root.Lchown(name, int(req.UID), int(req.GID))
	}
	return nil
}

// prepareEntry creates name's parents and removes what is at name unless
// it is a directory (which is an error).
func prepareEntry(root *os.Root, name string) error {
	if name == "." {
		return conflictf("it is the root directory")
	}
	if err := mkdirAll(root, path.Dir(name)); err != nil {
		return err
	}
	err := fsutil.MakeRoom(root, name)
	if errors.Is(err, fsutil.ErrIsDir) {
		return conflictf("a directory is in the way")
	}
	return err
}

// mkdirAll creates dir and its missing parents (0755).
func mkdirAll(root *os.Root, dir string) error {
	if dir == "." {
		return nil
	}
	err := root.MkdirAll(dir, 0o755)
	if errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTDIR) {
		return conflictf("a file is in the way of its parent directories")
	}
	return err
}

// setMeta applies owner, mode and mtime (in that order: chown clears the
// setuid bits). A zero mode is applied as def only to a new entry.
func setMeta(root *os.Root, name string, req *PutRequest, created bool, def fs.FileMode) error {
	if req.UID != 0 || req.GID != 0 {
		if err := root.Chown(name, int(req.UID), int(req.GID)); err != nil {
			return err
		}
	}
	switch {
	case req.Mode != 0:
		if err := root.Chmod(name, fsutil.FileMode(req.Mode)); err != nil {
			return err
		}
	case created:
		if err := root.Chmod(name, def); err != nil {
			return err
		}
	}
	if req.Mtime != 0 {
		t := time.Unix(req.Mtime, 0)
		if err := root.Chtimes(name, t, t); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) putFile(st net.Conn, br *bufio.Reader, root *os.Root, req *PutRequest, log *slog.Logger) {
	fw := &frameWriter{w: st}
	f, name, created, err := s.createFile(root, req.Path)
	if err != nil {
		log.Info("put failed", "path", req.Path, "kind", req.Kind, "err", err)
		_ = writeJSONLine(st, errorResponse(fmt.Errorf("%s: %w", req.Path, err)))
		return
	}
	if err := writeJSONLine(st, Response{}); err != nil {
		f.Close()
		return
	}
	n, err := receiveFile(f, br)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = setMeta(root, name, req, created, 0o644)
	}
	resp := Response{Written: n}
	if err != nil {
		log.Info("put failed", "path", req.Path, "written", n, "err", err)
		resp = errorResponse(fmt.Errorf("%s: %w", req.Path, err))
	}
	_ = fw.json(frameEnd, resp)
}

// createFile opens (truncating) or creates the regular file at p, creating
// its parents. A symlink in the final component is followed inside the root.
func (s *Server) createFile(root *os.Root, p string) (*os.File, string, bool, error) {
	name, err := s.inRoot(p, true)
	if err != nil {
		return nil, "", false, err
	}
	if name == "." {
		return nil, "", false, conflictf("it is the root directory")
	}
	if err := mkdirAll(root, path.Dir(name)); err != nil {
		return nil, "", false, err
	}
	created := false
	fi, err := root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		created = true
	case err != nil:
		return nil, "", false, err
	case fi.IsDir():
		return nil, "", false, conflictf("cannot write a file over a directory")
	case !fi.Mode().IsRegular():
		return nil, "", false, conflictf("it exists and is not a regular file")
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, "", false, err
	}
	return f, name, created, nil
}

// errClientAborted: the client ended a put with an error of its own.
var errClientAborted = errors.New("the client aborted the copy")

// receiveFile writes data frames to f until the client's end frame.
func receiveFile(f *os.File, br *bufio.Reader) (int64, error) {
	var n int64
	for {
		typ, payload, err := readFrame(br)
		if err != nil {
			return n, fmt.Errorf("read from client: %w", err)
		}
		switch typ {
		case frameData:
			w, err := f.Write(payload)
			n += int64(w)
			if err != nil {
				return n, err
			}
		case frameEnd:
			var resp Response
			if err := json.Unmarshal(payload, &resp); err != nil {
				return n, badRequestError{err: fmt.Errorf("bad end frame: %w", err)}
			}
			if resp.Error != "" {
				return n, fmt.Errorf("%w: %s", errClientAborted, resp.Error)
			}
			return n, nil
		default:
			return n, badRequestError{err: fmt.Errorf("unexpected frame type %d in a put", typ)}
		}
	}
}

// --- read_tree ---

// readTree streams the entries of a file or a directory tree: a header frame
// per entry (directories before their contents), a regular file's bytes as
// data frames, and an end frame saying whether everything was sent.
func (s *Server) readTree(st net.Conn, req *TreeRequest, log *slog.Logger) {
	if req == nil {
		_ = writeJSONLine(st, Response{Error: "read_tree: no request", Code: CodeBadRequest})
		return
	}
	root, name, fi, err := s.openTree(req)
	if err != nil {
		_ = writeJSONLine(st, errorResponse(fmt.Errorf("%s: %w", req.Path, err)))
		return
	}
	defer root.Close()
	if err := writeJSONLine(st, Response{}); err != nil {
		return
	}
	tw := &treeWriter{s: s, root: root, fw: &frameWriter{w: st}, follow: req.FollowLinks, buf: make([]byte, maxFrame)}
	if fi.IsDir() {
		err = fs.WalkDir(root.FS(), name, func(p string, d fs.DirEntry, err error) error {
			var info fs.FileInfo
			if err == nil {
				info, err = d.Info()
			}
			if err == nil {
				err = tw.entry(relTo(name, p), p, info)
			}
			if p != name && errors.Is(err, fs.ErrNotExist) {
				return nil // removed while the walk ran: not part of the copy
			}
			return err
		})
	} else {
		err = tw.entry(".", name, fi)
	}
	resp := Response{}
	if err != nil {
		log.Info("read_tree failed", "path", req.Path, "err", err)
		resp = errorResponse(fmt.Errorf("%s: %w", req.Path, err))
	}
	_ = tw.fw.json(frameEnd, resp)
}

func (s *Server) openTree(req *TreeRequest) (*os.Root, string, fs.FileInfo, error) {
	name, err := s.inRoot(req.Path, req.FollowLinks)
	if err != nil {
		return nil, "", nil, err
	}
	root, err := os.OpenRoot(s.Root)
	if err != nil {
		return nil, "", nil, err
	}
	fi, err := root.Lstat(name)
	if err == nil && !copyable(fi.Mode()) {
		err = conflictf("not a regular file, directory or symbolic link")
	}
	if err != nil {
		root.Close()
		return nil, "", nil, err
	}
	return root, name, fi, nil
}

func copyable(m fs.FileMode) bool {
	return m.IsRegular() || m.IsDir() || m&fs.ModeSymlink != 0
}

// relTo is p relative to the walk's top (both root-relative names).
func relTo(top, p string) string {
	switch {
	case p == top:
		return "."
	case top == ".":
		return p
	}
	return strings.TrimPrefix(p, top+"/")
}

type treeWriter struct {
	s      *Server
	root   *os.Root
	fw     *frameWriter
	follow bool
	buf    []byte
}

// entry sends one entry; name is root-relative, rel what the client sees.
// Sockets, FIFOs and devices have no content to copy and are skipped.
func (w *treeWriter) entry(rel, name string, fi fs.FileInfo) error {
	if fi.Mode()&fs.ModeSymlink != 0 && w.follow {
		if target, tfi, ok := w.resolve(name); ok {
			name, fi = target, tfi
		}
	}
	e := TreeEntry{Path: rel, Mode: fsutil.UnixPerm(fi.Mode()), Mtime: fi.ModTime().Unix()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.UID, e.GID = st.Uid, st.Gid
	}
	switch m := fi.Mode(); {
	case m&fs.ModeSymlink != 0:
		t, err := w.root.Readlink(name)
		if err != nil {
			return err
		}
		e.IsSymlink, e.LinkTarget = true, t
		return w.fw.json(frameHeader, e)
	case m.IsDir():
		e.IsDir = true
		return w.fw.json(frameHeader, e)
	case m.IsRegular():
		e.Size = fi.Size()
		return w.file(name, e)
	}
	return nil
}

// resolve follows a symlink inside the root; ok is false when it dangles,
// loops or leads to something that cannot be copied.
func (w *treeWriter) resolve(name string) (string, fs.FileInfo, bool) {
	target, err := w.s.inRoot("/"+name, true)
	if err != nil {
		return "", nil, false
	}
	fi, err := w.root.Lstat(target)
	if err != nil || !(fi.Mode().IsRegular() || fi.IsDir()) {
		return "", nil, false
	}
	return target, fi, true
}

// file sends a regular file's header and exactly e.Size bytes: a file that
// shrank while being read is padded with zeros, one that grew is cut.
func (w *treeWriter) file(name string, e TreeEntry) error {
	f, err := w.root.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := w.fw.json(frameHeader, e); err != nil {
		return err
	}
	out := dataWriter{fw: w.fw, typ: frameData}
	n, err := io.CopyBuffer(out, io.LimitReader(f, e.Size), w.buf)
	if err != nil {
		return err
	}
	if n < e.Size {
		_, err = io.CopyBuffer(out, io.LimitReader(zeroReader{}, e.Size-n), w.buf)
	}
	return err
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
