package agent

import (
	"archive/tar"
	"bufio"
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

// ErrEscapes is returned (wrapped) when a tar entry would land outside the
// destination directory.
var ErrEscapes = errors.New("path escapes the destination")

// copyTo extracts a tar stream under a destination directory (created if
// missing). All writes go through an os.Root opened on the destination, so
// no entry name, ".." component or symlink can reach outside it.
func (s *Server) copyTo(st net.Conn, br *bufio.Reader, dst string, log *slog.Logger) {
	fw := &frameWriter{w: st}
	root, err := s.openDestination(dst)
	if err != nil {
		_ = writeJSONLine(st, errorResponse(err))
		return
	}
	defer root.Close()
	if err := writeJSONLine(st, Response{}); err != nil {
		return
	}
	data := &frameDataReader{r: br}
	err = extractTar(root, data)
	if err == nil {
		// Consume the tar padding and the client's end frame.
		_, err = io.Copy(io.Discard, data)
		if err == nil && data.end != nil && data.end.Error != "" {
			err = fmt.Errorf("client aborted: %s", data.end.Error)
		}
	}
	resp := Response{}
	if err != nil {
		log.Info("copy to guest failed", "dst", dst, "err", err)
		resp = errorResponse(fmt.Errorf("copy to %s: %w", dst, err))
	}
	_ = fw.json(frameEnd, resp)
}

func (s *Server) openDestination(dst string) (*os.Root, error) {
	p, err := guestPath(dst)
	if err != nil {
		return nil, err
	}
	host, err := guestproc.ResolveInRoot(s.Root, p)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(host, 0o755); err != nil {
		return nil, fmt.Errorf("destination %s: %w", dst, err)
	}
	root, err := os.OpenRoot(host)
	if err != nil {
		return nil, fmt.Errorf("destination %s: %w", dst, err)
	}
	return root, nil
}

// entryName turns a tar entry name into a clean path relative to the
// destination, refusing names that climb out of it.
func entryName(name string) (string, error) {
	clean := path.Clean("/" + strings.TrimLeft(name, "/"))
	rel := strings.TrimPrefix(clean, "/")
	// Any ".." was resolved lexically against "/": compare with the raw
	// name to reject entries that tried to climb.
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: %q", ErrEscapes, name)
		}
	}
	if rel == "" {
		rel = "."
	}
	return rel, nil
}

func extractTar(root *os.Root, r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		name, err := entryName(hdr.Name)
		if err != nil {
			return err
		}
		if err := extractEntry(root, tr, hdr, name); err != nil {
			return fmt.Errorf("extract %s: %w", hdr.Name, err)
		}
	}
}

func extractEntry(root *os.Root, tr *tar.Reader, hdr *tar.Header, name string) error {
	mode := os.FileMode(hdr.Mode).Perm()
	if hdr.Mode&0o4000 != 0 {
		mode |= os.ModeSetuid
	}
	if hdr.Mode&0o2000 != 0 {
		mode |= os.ModeSetgid
	}
	if hdr.Mode&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	if dir := path.Dir(name); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := root.MkdirAll(name, 0o755); err != nil {
			return err
		}
		if err := root.Chmod(name, mode); err != nil {
			return err
		}
	case tar.TypeReg, tar.TypeRegA:
		if err := removeNonDir(root, name); err != nil {
			return err
		}
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if err := root.Chmod(name, mode); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := removeNonDir(root, name); err != nil {
			return err
		}
		if err := root.Symlink(hdr.Linkname, name); err != nil {
			return err
		}
		_ = root.Lchown(name, hdr.Uid, hdr.Gid)
		return nil
	case tar.TypeLink:
		target, err := entryName(hdr.Linkname)
		if err != nil {
			return err
		}
		if err := removeNonDir(root, name); err != nil {
			return err
		}
		return root.Link(target, name)
	default:
		return nil // devices, fifos: not supported by os.Root; skipped
	}
	_ = root.Lchown(name, hdr.Uid, hdr.Gid)
	if !hdr.ModTime.IsZero() {
		_ = root.Chtimes(name, hdr.ModTime, hdr.ModTime)
	}
	return nil
}

// removeNonDir removes name if it exists and is not a directory, so that a
// regular file or link can take its place (and a symlink is never written
// through).
func removeNonDir(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("a directory is in the way")
	}
	return root.Remove(name)
}

// copyFrom streams a tar archive of a path inside the root. The archive's
// top entry is the path's base name; a symlink as the final component is
// archived as a link, and symlinks inside directories are never followed.
func (s *Server) copyFrom(st net.Conn, src string, log *slog.Logger) {
	fw := &frameWriter{w: st}
	p, err := guestPath(src)
	if err != nil {
		_ = writeJSONLine(st, errorResponse(err))
		return
	}
	host, err := guestproc.ResolveParentInRoot(s.Root, p)
	if err == nil {
		_, err = os.Lstat(host)
	}
	if err != nil {
		_ = writeJSONLine(st, errorResponse(fmt.Errorf("copy from %s: %w", src, err)))
		return
	}
	// Walk from an os.Root on the parent so that a concurrent symlink swap
	// inside the tree cannot make the walk leave it.
	parent, base := filepath.Dir(host), filepath.Base(host)
	if p == "/" {
		parent, base = host, "."
	}
	root, err := os.OpenRoot(parent)
	if err != nil {
		_ = writeJSONLine(st, errorResponse(fmt.Errorf("copy from %s: %w", src, err)))
		return
	}
	defer root.Close()
	if err := writeJSONLine(st, Response{}); err != nil {
		return
	}
	tw := tar.NewWriter(dataWriter{fw: fw, typ: frameData})
	err = writeTree(root, tw, base)
	if cerr := tw.Close(); err == nil {
		err = cerr
	}
	resp := Response{}
	if err != nil {
		log.Info("copy from guest failed", "src", src, "err", err)
		resp = errorResponse(fmt.Errorf("copy from %s: %w", src, err))
	}
	_ = fw.json(frameEnd, resp)
}

type inode struct{ dev, ino uint64 }

func writeTree(root *os.Root, tw *tar.Writer, top string) error {
	links := map[inode]string{}
	add := func(name string, fi fs.FileInfo) error {
		var link string
		if fi.Mode()&fs.ModeSymlink != 0 {
			l, err := root.Readlink(name)
			if err != nil {
				return err
			}
			link = l
		}
		if fi.Mode()&fs.ModeSocket != 0 {
			return nil // not archivable
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = name
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			key := inode{uint64(st.Dev), st.Ino}
			if first, ok := links[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				return tw.WriteHeader(hdr)
			}
			links[key] = name
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := root.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.CopyN(tw, f, hdr.Size)
		if errors.Is(err, io.EOF) {
			// The file shrank while being read: pad to the announced size.
			_, err = io.CopyN(tw, zeroReader{}, hdr.Size-n)
		}
		return err
	}
	fi, err := root.Lstat(top)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return add(top, fi)
	}
	return fs.WalkDir(root.FS(), top, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if name == "." && top == "." {
			return nil
		}
		return add(name, info)
	})
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
