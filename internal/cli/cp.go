package cli

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/coder/websocket"
	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

type cpFlags struct {
	archive     bool
	followLinks bool
}

func (a *app) cpCommand() *cobra.Command {
	var f cpFlags
	cmd := &cobra.Command{
		Use:   "cp [-a] [-L] SRC DST",
		Short: "Copy files between a running instance and this machine",
		Long: `Copy a file or a directory to or from a Running instance, like docker cp.
One of SRC and DST is INSTANCE:PATH (an absolute path in the guest), the
other a local path, or - for a tar stream on stdin (to the instance, DST is
then a directory) or stdout (from the instance).

  DST is an existing directory  SRC is copied into it
  DST does not exist            SRC is copied as DST (its parent must exist)
  DST is an existing file       SRC (a file) replaces it
  SRC ends with /.              the contents of the directory SRC are copied
                                into DST (created when missing)

Symbolic links are copied as links (-L follows SRC itself when it is one).
Files copied into an instance belong to root unless -a keeps your uid/gid;
files copied out belong to you. Entries of the guest's archive that would
land outside DST are refused.

Telling "into this directory" from "as this name" needs a stat of the guest
DST (scope instance:read); without it a DST ending in / is a directory and
any other DST a new name.`,
		Example: `  hypeman cp ./site web:/var/www
  hypeman cp web:/var/log/app.log .
  hypeman cp web:/etc/. ./guest-etc
  tar -C build -c . | hypeman cp - web:/srv/app`,
		Args: exactArgs(2, "SRC and DST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, dst := args[0], args[1]
			srcInst, srcPath, srcRemote := splitRemote(src)
			dstInst, dstPath, dstRemote := splitRemote(dst)
			usage := func(format string, v ...any) error {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf(format, v...)}
			}
			switch {
			case srcRemote && dstRemote:
				return usage("copying between two instances is not supported: copy through a local directory")
			case !srcRemote && !dstRemote:
				return usage("one of SRC and DST must be INSTANCE:PATH")
			case srcRemote && (srcInst == "" || srcPath == ""), dstRemote && (dstInst == "" || dstPath == ""):
				return usage("want INSTANCE:PATH with both parts")
			case srcRemote && !path.IsAbs(srcPath), dstRemote && !path.IsAbs(dstPath):
				return usage("the path in the instance must be absolute (start with /)")
			case srcRemote:
				return a.copyFromInstance(cmd.Context(), srcInst, srcPath, dst)
			default:
				return a.copyToInstance(cmd.Context(), f, src, dstInst, dstPath)
			}
		},
	}
	cmd.Flags().BoolVarP(&f.archive, "archive", "a", false, "keep uid/gid of files copied into the instance")
	cmd.Flags().BoolVarP(&f.followLinks, "follow-link", "L", false, "follow SRC when it is a symbolic link")
	return cmd
}

// splitRemote recognizes INSTANCE:PATH: a colon before any slash. Local
// paths with a colon can be written ./a:b.
func splitRemote(arg string) (instance, p string, ok bool) {
	i := strings.IndexByte(arg, ':')
	if i < 0 || strings.ContainsRune(arg[:i], '/') {
		return "", "", false
	}
	return arg[:i], arg[i+1:], true
}

// contentsOf reports SRC/. (copy the directory's contents) and the
// directory.
func contentsOf(p, sep string) (string, bool) {
	if p == "." || !strings.HasSuffix(p, sep+".") {
		return p, false
	}
	return strings.TrimSuffix(p, "."), true
}

// --- to the instance ---

// copyToInstance sends a tar stream and names its top entry so that it
// lands where docker cp would put it: the remote DST is stat'ed to tell
// "into this directory" from "as this name".
func (a *app) copyToInstance(ctx context.Context, f cpFlags, src, instance, dst string) error {
	c, err := a.api()
	if err != nil {
		return err
	}
	var (
		dstDir string // the directory the guest extracts into
		top    string // name of the top entry ("" = the contents of src)
		srcDir bool
	)
	if src != "-" {
		dirPath, contents := contentsOf(src, string(filepath.Separator))
		walkPath := dirPath
		fi, err := os.Lstat(dirPath)
		if err == nil && fi.Mode()&fs.ModeSymlink != 0 && (f.followLinks || contents) {
			if walkPath, err = filepath.EvalSymlinks(dirPath); err == nil {
				fi, err = os.Lstat(walkPath)
			}
		}
		if err != nil {
			return err
		}
		srcDir = fi.IsDir()
		if contents && !srcDir {
			return fmt.Errorf("%s is not a directory", dirPath)
		}
		remote, err := a.statRemote(ctx, c, instance, dst)
		if err != nil {
			return err
		}
		switch {
		case contents:
			if remote != nil && !deref(remote.IsDir) {
				return fmt.Errorf("cannot copy a directory onto the file %s:%s", instance, dst)
			}
			dstDir = dst
		case remote != nil && deref(remote.IsDir):
			dstDir, top = dst, filepath.Base(dirPath)
		case remote != nil && srcDir:
			return fmt.Errorf("cannot copy a directory onto the file %s:%s", instance, dst)
		case remote == nil && strings.HasSuffix(dst, "/") && !srcDir:
			return fmt.Errorf("%s:%s: the destination directory does not exist", instance, dst)
		default: // a new name, or a file replacing a file
			dstDir, top = path.Dir(path.Clean(dst)), path.Base(path.Clean(dst))
		}
		src = walkPath
	} else {
		dstDir = dst
	}

	conn, err := a.dialWS(ctx, instance, "cp")
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	if err := sendJSON(ctx, conn, client.CopyStart{Direction: client.CopyToGuest, Path: dstDir}); err != nil {
		return endedEarly(ctx, err)
	}

	// Produce the tar stream in a goroutine; send it as 32 KiB messages.
	pr, pw := io.Pipe()
	go func() {
		if src == "-" {
			_, err := io.Copy(pw, a.stdin)
			pw.CloseWithError(err)
			return
		}
		pw.CloseWithError(writeTar(pw, src, top, f, a.stderr))
	}()
	defer pr.CloseWithError(errors.New("copy ended"))
	result := make(chan error, 1)
	go func() { result <- readCopyResult(ctx, conn, nil) }()

	buf := make([]byte, 32<<10)
	for {
		n, rerr := io.ReadFull(pr, buf)
		if n > 0 {
			if err := conn.Write(ctx, websocket.MessageBinary, buf[:n]); err != nil {
				// The server may have ended early with its reason.
				return firstErr(<-result, endedEarly(ctx, err))
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return fmt.Errorf("read %s: %w", src, rerr)
		}
	}
	if err := conn.Write(ctx, websocket.MessageBinary, nil); err != nil {
		return firstErr(<-result, endedEarly(ctx, err))
	}
	return <-result
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// statRemote stats a guest path (following links); nil when it does not
// exist. When the server cannot stat (501) or the token may not
// (instance:read is missing, 403) it answers as if nothing existed, except
// for a trailing slash, which then means "a directory".
func (a *app) statRemote(ctx context.Context, c *client.ClientWithResponses, instance, p string) (*client.PathInfo, error) {
	r, err := c.StatInstancePathWithResponse(ctx, instance, &client.StatInstancePathParams{Path: p, FollowLinks: ptr(true)})
	if err == nil && (r.StatusCode() == http.StatusNotImplemented || r.StatusCode() == http.StatusForbidden) {
		if strings.HasSuffix(p, "/") {
			return &client.PathInfo{Exists: true, IsDir: ptr(true)}, nil
		}
		return nil, nil
	}
	if err := a.check(ctx, r, err, http.StatusOK); err != nil {
		return nil, err
	}
	pi := r.JSON200
	if pi.Error != nil && *pi.Error != "" {
		return nil, fmt.Errorf("%s:%s: %s", instance, p, *pi.Error)
	}
	if !pi.Exists {
		return nil, nil
	}
	return pi, nil
}

// writeTar archives src under the name top ("" = its contents only).
// Symbolic links are archived as links, special files are skipped.
func writeTar(w io.Writer, src, top string, f cpFlags, warn io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		name := path.Join(top, filepath.ToSlash(rel))
		if rel == "." && top == "" {
			return nil // contents only: no entry for src itself
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		if !fi.Mode().IsRegular() && !fi.IsDir() && fi.Mode()&fs.ModeSymlink == 0 {
			fmt.Fprintf(warn, "hypeman cp: skipping %s: not a regular file, directory or symbolic link\n", p)
			return nil
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = name
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if !f.archive {
			hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		file, err := os.Open(p)
		if err != nil {
			return err
		}
		defer file.Close()
		if _, err := io.CopyN(tw, file, hdr.Size); err != nil {
			return fmt.Errorf("%s: %w (did it change while being copied?)", p, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// readCopyResult reads until the server's final message; binary messages
// go to data (nil: none are expected).
func readCopyResult(ctx context.Context, conn *websocket.Conn, data io.Writer) error {
	for {
		typ, msg, err := conn.Read(ctx)
		if err != nil {
			return endedEarly(ctx, err)
		}
		if typ == websocket.MessageBinary {
			if data == nil {
				return fmt.Errorf("server sent data during an upload")
			}
			if _, err := data.Write(msg); err != nil {
				return err
			}
			continue
		}
		res, err := parseResult(msg)
		if err != nil {
			return err
		}
		if !res.OK {
			return fmt.Errorf("server ended the copy without a result: %q", truncate(string(msg), 200))
		}
		_ = conn.Close(websocket.StatusNormalClosure, "")
		return nil
	}
}

// --- from the instance ---

func (a *app) copyFromInstance(ctx context.Context, instance, src, dst string) error {
	remoteDir, contents := contentsOf(src, "/")
	from := path.Base(path.Clean(remoteDir)) // the guest names the top entry so
	var x *extractor
	if dst != "-" {
		x = &extractor{from: from, warn: a.stderr}
		fi, err := os.Stat(dst)
		switch {
		case err == nil && fi.IsDir():
			x.dir, x.to = dst, from
			if contents {
				x.to = ""
			}
		case err == nil && contents:
			return fmt.Errorf("cannot copy a directory onto the file %s", dst)
		case err == nil:
			x.dir, x.to, x.fileOnly = filepath.Dir(dst), filepath.Base(dst), true
		case !errors.Is(err, fs.ErrNotExist):
			return err
		case contents:
			if err := os.Mkdir(dst, 0o755); err != nil {
				return err
			}
			x.dir, x.to = dst, ""
		case strings.HasSuffix(dst, string(filepath.Separator)):
			return fmt.Errorf("%s: the destination directory does not exist", dst)
		default:
			x.dir, x.to = filepath.Dir(dst), filepath.Base(dst)
		}
	}

	conn, err := a.dialWS(ctx, instance, "cp")
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	if contents {
		remoteDir = path.Clean(remoteDir)
	} else {
		remoteDir = src // as given: the guest resolves it
	}
	if err := sendJSON(ctx, conn, client.CopyStart{Direction: client.CopyFromGuest, Path: remoteDir}); err != nil {
		return endedEarly(ctx, err)
	}
	if x == nil {
		return readCopyResult(ctx, conn, a.stdout)
	}
	// The extractor consumes the stream as it arrives; the result message
	// decides whether what was written is complete.
	pr, pw := io.Pipe()
	extracted := make(chan error, 1)
	go func() {
		err := x.extract(pr)
		if err == nil {
			_, err = io.Copy(io.Discard, pr) // padding after the end marker
		}
		pr.CloseWithError(err) // on failure: stops the download with err
		extracted <- err
	}()
	err = readCopyResult(ctx, conn, pw)
	pw.CloseWithError(err)
	xerr := <-extracted
	if err != nil {
		return err
	}
	return xerr
}

// extractor writes a tar stream from the guest under dir, confined to it:
// every name is resolved through an os.Root (no "..", no absolute names,
// no symbolic link followed out of dir), and only entries under the
// expected top name are accepted, renamed to `to` ("" = strip it).
type extractor struct {
	dir      string
	from, to string
	fileOnly bool // DST is an existing file: the source must be one
	warn     io.Writer
}

type dirMeta struct {
	name string
	hdr  *tar.Header
}

func (x *extractor) extract(r io.Reader) error {
	root, err := os.OpenRoot(x.dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	var dirs []dirMeta
	n := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the archive from the instance: %w", err)
		}
		n++
		name, err := x.mapName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue // the top directory itself, with "contents of"
		}
		if x.fileOnly && hdr.Typeflag == tar.TypeDir {
			return fmt.Errorf("cannot copy a directory onto the file %s", filepath.Join(x.dir, x.to))
		}
		if parent := path.Dir(name); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return err
			}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return err
			}
			dirs = append(dirs, dirMeta{name, hdr})
		case tar.TypeReg:
			if err := x.replaceable(root, name); err != nil {
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
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := root.Chmod(name, fs.FileMode(hdr.Mode)&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
				return err
			}
			_ = root.Chtimes(name, hdr.AccessTime, hdr.ModTime)
		case tar.TypeSymlink:
			if err := x.replaceable(root, name); err != nil {
				return err
			}
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return err
			}
		case tar.TypeLink:
			target, err := x.mapName(hdr.Linkname)
			if err != nil || target == "" {
				return fmt.Errorf("refusing hard link %s → %s: outside the copied tree", hdr.Name, hdr.Linkname)
			}
			if err := x.replaceable(root, name); err != nil {
				return err
			}
			if err := root.Link(target, name); err != nil {
				return err
			}
		default:
			fmt.Fprintf(x.warn, "hypeman cp: skipping %s: unsupported entry type %q\n", hdr.Name, hdr.Typeflag)
		}
	}
	if n == 0 {
		return fmt.Errorf("the instance sent an empty archive")
	}
	// Directory modes and times last: a read-only directory must not stop
	// its own contents from being written, and writing them changes mtime.
	for _, d := range slices.Backward(dirs) {
		if err := root.Chmod(d.name, fs.FileMode(d.hdr.Mode)&fs.ModePerm); err != nil {
			return err
		}
		_ = root.Chtimes(d.name, d.hdr.AccessTime, d.hdr.ModTime)
	}
	return nil
}

// mapName checks an archive name and renames its top component.
func (x *extractor) mapName(name string) (string, error) {
	clean := path.Clean(strings.TrimSuffix(name, "/"))
	first, rest, _ := strings.Cut(clean, "/")
	if path.IsAbs(name) || clean == ".." || strings.HasPrefix(clean, "../") || first != x.from {
		return "", fmt.Errorf("refusing archive entry %q: outside %s", name, x.from)
	}
	if x.to == "" {
		return rest, nil
	}
	return path.Join(x.to, rest), nil
}

// replaceable removes what is at name unless it is a directory (a file
// replaces a file or a link, never a directory).
func (x *extractor) replaceable(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.IsDir():
		return fmt.Errorf("cannot overwrite the directory %s with a file", filepath.Join(x.dir, name))
	}
	return root.Remove(name)
}
