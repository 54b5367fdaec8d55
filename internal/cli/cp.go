package cli

// cp speaks the API's cp WebSocket (the protocol hypeman's CLI speaks):
// one connection per file, directory or symlink copied into the instance,
// one connection per tree copied out of it. See openapi.yaml,
// /instances/{id}/cp.

import (
	"archive/tar"
	"context"
	"encoding/json"
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
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
	"hypeman/internal/api/execws"
	"hypeman/internal/fsutil"
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

Contents are copied byte for byte; permission bits and modification times
are kept both ways. Symbolic links are copied as links; -L follows them (a
linked directory is then copied empty). Files copied into an instance
belong to root unless -a keeps your uid/gid; files copied out belong to
you. Entries the instance sends that would land outside DST are refused,
and so are archive entries on stdin that climb out of DST.

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
				return a.copyFromInstance(cmd.Context(), f, srcInst, srcPath, dst)
			case src == "-":
				return a.copyTarToInstance(cmd.Context(), f, dstInst, dstPath)
			default:
				return a.copyToInstance(cmd.Context(), f, src, dstInst, dstPath)
			}
		},
	}
	cmd.Flags().BoolVarP(&f.archive, "archive", "a", false, "keep uid/gid of files copied into the instance")
	cmd.Flags().BoolVarP(&f.followLinks, "follow-link", "L", false, "follow symbolic links in SRC")
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

// uploader puts entries into one instance, one WebSocket each.
type uploader struct {
	a        *app
	instance string
	f        cpFlags
	dirs     []client.CopyStart // the directories put, in order
	// filled holds the directories that got entries after they were put:
	// their mtime is set again at the end (writing into a directory
	// changes it).
	filled map[string]bool
}

// copyToInstance copies a local file or tree to where docker cp would put
// it: the remote DST is stat'ed to tell "into this directory" from "as
// this name".
func (a *app) copyToInstance(ctx context.Context, f cpFlags, src, instance, dst string) error {
	c, err := a.api()
	if err != nil {
		return err
	}
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
	srcDir := fi.IsDir()
	if contents && !srcDir {
		return fmt.Errorf("%s is not a directory", dirPath)
	}
	remote, err := a.statRemote(ctx, c, instance, dst)
	if err != nil {
		return err
	}
	var target string // the guest path SRC becomes
	switch {
	case contents:
		if remote != nil && !deref(remote.IsDir) {
			return fmt.Errorf("cannot copy a directory onto the file %s:%s", instance, dst)
		}
		target = path.Clean(dst)
	case remote != nil && deref(remote.IsDir):
		target = path.Join(dst, filepath.Base(dirPath))
	case remote != nil && srcDir:
		return fmt.Errorf("cannot copy a directory onto the file %s:%s", instance, dst)
	case remote == nil && strings.HasSuffix(dst, "/") && !srcDir:
		return fmt.Errorf("%s:%s: the destination directory does not exist", instance, dst)
	default: // a new name, or a file replacing a file
		target = path.Clean(dst)
	}
	up := &uploader{a: a, instance: instance, f: f, filled: map[string]bool{}}
	// Copying the contents into an existing directory leaves that
	// directory's own mode and times alone (as hypeman's CLI does).
	skipTop := contents && remote != nil
	if err := up.tree(ctx, walkPath, target, skipTop); err != nil {
		return err
	}
	return up.finish(ctx)
}

// tree puts the local tree at local under the guest path target.
func (up *uploader) tree(ctx context.Context, local, target string, skipTop bool) error {
	return filepath.WalkDir(local, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(local, p)
		if err != nil {
			return err
		}
		if rel == "." && skipTop {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		guest := path.Join(target, filepath.ToSlash(rel))
		if rel != "." {
			up.filled[path.Dir(guest)] = true
		}
		return up.entry(ctx, p, guest, fi)
	})
}

// entry puts one local entry (a linked directory, followed, is made empty:
// WalkDir does not descend into links).
func (up *uploader) entry(ctx context.Context, local, guest string, fi fs.FileInfo) error {
	if fi.Mode()&fs.ModeSymlink != 0 && up.f.followLinks {
		if tfi, err := os.Stat(local); err == nil {
			fi = tfi
		}
	}
	start := client.CopyStart{Direction: client.CopyToGuest, GuestPath: guest, Mtime: ptr(fi.ModTime().Unix())}
	if fi.Mode()&fs.ModeSymlink == 0 {
		start.Mode = ptr(int(fsutil.UnixPerm(fi.Mode())))
	}
	if up.f.archive {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			start.Uid, start.Gid = ptr(int(st.Uid)), ptr(int(st.Gid))
		}
	}
	switch m := fi.Mode(); {
	case m.IsDir():
		start.IsDir = ptr(true)
		_, err := up.a.putEntry(ctx, up.instance, start, nil)
		up.dirs = append(up.dirs, start)
		return err
	case m&fs.ModeSymlink != 0:
		link, err := os.Readlink(local)
		if err != nil {
			return err
		}
		start.LinkTarget, start.Mtime = &link, nil
		_, err = up.a.putEntry(ctx, up.instance, start, nil)
		return err
	case m.IsRegular():
		file, err := os.Open(local)
		if err != nil {
			return err
		}
		defer file.Close()
		n, err := up.a.putEntry(ctx, up.instance, start, file)
		if err == nil && n != fi.Size() {
			err = fmt.Errorf("%s: %d bytes copied, %d expected (did it change while being copied?)", local, n, fi.Size())
		}
		return err
	}
	fmt.Fprintf(up.a.stderr, "hypeman cp: skipping %s: not a regular file, directory or symbolic link\n", local)
	return nil
}

// finish sets the times of the directories that got contents, deepest
// first, so that writing into them does not leave today's time.
func (up *uploader) finish(ctx context.Context) error {
	for _, d := range slices.Backward(up.dirs) {
		if !up.filled[d.GuestPath] {
			continue
		}
		d.Uid, d.Gid = nil, nil // the owner was set when it was made
		if _, err := up.a.putEntry(ctx, up.instance, d, nil); err != nil {
			return err
		}
	}
	return nil
}

// putEntry creates one entry in the guest: the start message, a file's
// bytes, the end message; it returns the bytes the guest wrote.
func (a *app) putEntry(ctx context.Context, instance string, start client.CopyStart, data io.Reader) (int64, error) {
	conn, err := a.dialWS(ctx, instance, "cp")
	if err != nil {
		return 0, err
	}
	defer conn.CloseNow()
	result := make(chan putResult, 1)
	go func() { result <- readPutResult(ctx, conn) }()
	fail := func(err error) (int64, error) {
		// The server may have ended the session with its reason.
		if r := <-result; r.err != nil {
			return 0, r.err
		}
		return 0, execws.EndedEarly(ctx, err)
	}
	if err := execws.SendJSON(ctx, conn, start); err != nil {
		return fail(err)
	}
	if data != nil {
		buf := make([]byte, 32<<10)
		for {
			n, rerr := io.ReadFull(data, buf)
			if n > 0 {
				if err := conn.Write(ctx, websocket.MessageBinary, buf[:n]); err != nil {
					return fail(err)
				}
			}
			if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
				break
			}
			if rerr != nil {
				return 0, fmt.Errorf("read: %w", rerr) // the deferred close aborts the copy
			}
		}
	}
	if err := execws.SendJSON(ctx, conn, client.CopyEnd{Type: "end"}); err != nil {
		return fail(err)
	}
	r := <-result
	if r.err == nil {
		_ = conn.Close(websocket.StatusNormalClosure, "")
	}
	return r.n, r.err
}

type putResult struct {
	n   int64
	err error
}

// readPutResult reads the server's answer to a put: one CopyResult.
func readPutResult(ctx context.Context, conn *websocket.Conn) putResult {
	typ, msg, err := conn.Read(ctx)
	if err != nil {
		return putResult{err: execws.EndedEarly(ctx, err)}
	}
	var r client.CopyResult
	if typ != websocket.MessageText || json.Unmarshal(msg, &r) != nil || r.Type != "result" {
		return putResult{err: fmt.Errorf("server sent an unexpected message: %q", truncate(string(msg), 200))}
	}
	if !r.Success {
		return putResult{err: &APIError{Code: deref(r.Code), Message: deref(r.Error)}}
	}
	return putResult{n: deref(r.BytesWritten)}
}

// copyTarToInstance puts the entries of a tar stream on stdin under the
// guest directory dst. Names are confined to dst: ".." is refused, a
// leading / is dropped, and no entry may go through a symlink the archive
// itself created.
func (a *app) copyTarToInstance(ctx context.Context, f cpFlags, instance, dst string) error {
	up := &uploader{a: a, instance: instance, f: f, filled: map[string]bool{}}
	links := map[string]bool{} // guest paths of the links this archive made
	tr := tar.NewReader(a.stdin)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the archive on stdin: %w", err)
		}
		rel, err := archiveName(hdr.Name)
		if err != nil {
			return err
		}
		guest := path.Join(dst, rel)
		for p := path.Dir(guest); p != dst && p != "/" && p != "."; p = path.Dir(p) {
			if links[p] {
				return fmt.Errorf("refusing archive entry %q: it goes through the symbolic link %s the archive created", hdr.Name, p)
			}
		}
		if rel != "." {
			up.filled[path.Dir(guest)] = true
		}
		start := client.CopyStart{Direction: client.CopyToGuest, GuestPath: guest,
			Mode: ptr(int(hdr.Mode & 0o7777)), Mtime: ptr(hdr.ModTime.Unix())}
		if f.archive {
			start.Uid, start.Gid = ptr(hdr.Uid), ptr(hdr.Gid)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			start.IsDir = ptr(true)
			if _, err := a.putEntry(ctx, instance, start, nil); err != nil {
				return err
			}
			up.dirs = append(up.dirs, start)
		case tar.TypeReg:
			if _, err := a.putEntry(ctx, instance, start, tr); err != nil {
				return err
			}
		case tar.TypeSymlink:
			start.LinkTarget, start.Mode, start.Mtime = &hdr.Linkname, nil, nil
			if _, err := a.putEntry(ctx, instance, start, nil); err != nil {
				return err
			}
			links[guest] = true
		default:
			fmt.Fprintf(a.stderr, "hypeman cp: skipping %s: entry type %q is not copied (regular files, directories and symbolic links are)\n", hdr.Name, hdr.Typeflag)
		}
	}
	return up.finish(ctx)
}

// archiveName turns an archive entry name into a clean path relative to
// the destination ("." for the destination itself).
func archiveName(name string) (string, error) {
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("refusing archive entry %q: it climbs out of the destination", name)
		}
	}
	return path.Clean(strings.TrimLeft(name, "/")), nil
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

// --- from the instance ---

// copyFromInstance downloads SRC over one WebSocket. Where it lands is
// decided by the first entry (the source itself: a file or a directory)
// and DST, as docker cp does.
func (a *app) copyFromInstance(ctx context.Context, f cpFlags, instance, src, dst string) error {
	remote, contents := contentsOf(src, "/")
	if contents {
		remote = path.Clean(remote)
	}
	conn, err := a.dialWS(ctx, instance, "cp")
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	start := client.CopyStart{Direction: client.CopyFromGuest, GuestPath: remote}
	if f.followLinks {
		start.FollowLinks = ptr(true)
	}
	if err := execws.SendJSON(ctx, conn, start); err != nil {
		return execws.EndedEarly(ctx, err)
	}
	rd := &treeReader{ctx: ctx, conn: conn}
	var sink entrySink
	if dst == "-" {
		top := path.Base(path.Clean(remote))
		if contents {
			top = ""
		}
		sink = &tarSink{tw: tar.NewWriter(a.stdout), top: top}
	} else {
		sink = &extractor{dst: dst, contents: contents, srcBase: path.Base(path.Clean(remote)), warn: a.stderr}
	}
	err = rd.each(sink.entry)
	if cerr := sink.close(err == nil); err == nil {
		err = cerr
	}
	if err == nil {
		_ = conn.Close(websocket.StatusNormalClosure, "")
	}
	return err
}

// entrySink receives a download's entries; close(ok) finishes (ok: every
// entry arrived).
type entrySink interface {
	entry(h client.CopyFileHeader, data io.Reader) error
	close(ok bool) error
}

// treeReader reads a "from" session: per entry a header, a regular file's
// bytes, an end; the last end is final.
type treeReader struct {
	ctx  context.Context
	conn *websocket.Conn
}

// each calls fn per entry with a reader of exactly its bytes; it returns
// after the final end marker, or with the server's error.
func (r *treeReader) each(fn func(client.CopyFileHeader, io.Reader) error) error {
	for first := true; ; first = false {
		h, err := r.header(first)
		if err != nil {
			return err
		}
		body := &entryBody{r: r, left: 0}
		if !h.IsDir && !h.IsSymlink {
			body.left = h.Size
		}
		if err := fn(h, body); err != nil {
			if body.err != nil {
				return body.err
			}
			return err
		}
		if _, err := io.Copy(io.Discard, body); err != nil {
			return err
		}
		if final, err := r.end(); err != nil || final {
			return err
		}
	}
}

// next reads one message; a text one is decoded, and a CopyError becomes
// an *APIError.
func (r *treeReader) next() (websocket.MessageType, []byte, string, error) {
	typ, msg, err := r.conn.Read(r.ctx)
	if err != nil {
		var ce websocket.CloseError
		if errors.As(err, &ce) && ce.Code == websocket.StatusNormalClosure {
			return 0, nil, "", errors.New("the copy ended before it was complete (no final marker)")
		}
		return 0, nil, "", execws.EndedEarly(r.ctx, err)
	}
	if typ == websocket.MessageBinary {
		return typ, msg, "", nil
	}
	var m struct {
		Type    string `json:"type"`
		Message string `json:"message"`
		Code    string `json:"code"`
	}
	if err := json.Unmarshal(msg, &m); err != nil {
		return 0, nil, "", fmt.Errorf("server sent an invalid message: %q", truncate(string(msg), 200))
	}
	if m.Type == "error" {
		return 0, nil, "", &APIError{Code: m.Code, Message: m.Message}
	}
	return typ, msg, m.Type, nil
}

// header reads an entry's header; the first one is the source itself.
func (r *treeReader) header(first bool) (client.CopyFileHeader, error) {
	var h client.CopyFileHeader
	typ, msg, kind, err := r.next()
	switch {
	case err != nil:
		return h, err
	case typ != websocket.MessageText || kind != "header":
		return h, fmt.Errorf("server sent %s where an entry header belongs", describeMsg(typ, kind))
	}
	if err := json.Unmarshal(msg, &h); err != nil {
		return h, fmt.Errorf("server sent an invalid header: %w", err)
	}
	if (h.Path == ".") != first || h.Size < 0 {
		return h, fmt.Errorf("server sent an invalid header: path %q, size %d", h.Path, h.Size)
	}
	return h, nil
}

func (r *treeReader) end() (bool, error) {
	typ, msg, kind, err := r.next()
	if err != nil {
		return false, err
	}
	if typ != websocket.MessageText || kind != "end" {
		return false, fmt.Errorf("server sent %s where an entry's end belongs", describeMsg(typ, kind))
	}
	var e client.CopyEnd
	if err := json.Unmarshal(msg, &e); err != nil {
		return false, fmt.Errorf("server sent an invalid end: %w", err)
	}
	return deref(e.Final), nil
}

func describeMsg(typ websocket.MessageType, kind string) string {
	if typ == websocket.MessageBinary {
		return "data"
	}
	return fmt.Sprintf("a %q message", kind)
}

// entryBody yields one entry's bytes from binary messages.
type entryBody struct {
	r    *treeReader
	left int64
	buf  []byte
	err  error
}

func (b *entryBody) Read(p []byte) (int, error) {
	for len(b.buf) == 0 {
		if b.err != nil {
			return 0, b.err
		}
		if b.left == 0 {
			return 0, io.EOF
		}
		typ, msg, kind, err := b.r.next()
		switch {
		case err != nil:
			b.err = err
		case typ != websocket.MessageBinary:
			b.err = fmt.Errorf("server sent %s with %d bytes of a file still to come", describeMsg(typ, kind), b.left)
		case int64(len(msg)) > b.left:
			b.err = fmt.Errorf("server sent more bytes than the file's header announced")
		default:
			b.buf, b.left = msg, b.left-int64(len(msg))
		}
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	return n, nil
}

// tarSink writes the entries as a tar stream, under the top name (the
// source's base name, as docker cp does; "" for SRC/.).
type tarSink struct {
	tw  *tar.Writer
	top string
}

func (s *tarSink) entry(h client.CopyFileHeader, data io.Reader) error {
	name := path.Join(s.top, h.Path)
	if name == "." {
		return nil // the contents of SRC/.: no entry for SRC itself
	}
	hdr := &tar.Header{Name: name, Mode: int64(h.Mode), ModTime: time.Unix(h.Mtime, 0), Uid: h.Uid, Gid: h.Gid, Typeflag: tar.TypeReg, Size: h.Size}
	switch {
	case h.IsDir:
		hdr.Typeflag, hdr.Name, hdr.Size = tar.TypeDir, name+"/", 0
	case h.IsSymlink:
		hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeSymlink, deref(h.LinkTarget), 0
	}
	if err := s.tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := io.Copy(s.tw, data)
	return err
}

func (s *tarSink) close(ok bool) error {
	if !ok {
		return nil // a truncated archive: no end-of-archive marker
	}
	return s.tw.Close()
}

// extractor writes a download under DST, confined to it: every name goes
// through an os.Root on the directory that receives the copy (no "..", no
// absolute names, no symbolic link followed out of it).
type extractor struct {
	dst      string
	contents bool   // SRC/.
	srcBase  string // base name of SRC, for "into this directory"
	warn     io.Writer

	root *os.Root
	top  string // the copy's name under root ("." = root itself)
	skip bool   // leave the top directory's metadata alone (contents into an existing directory)
	dirs []client.CopyFileHeader
}

// place decides where the source (the first entry) lands.
func (x *extractor) place(h client.CopyFileHeader) error {
	fi, err := os.Stat(x.dst)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	dir, top := filepath.Dir(x.dst), filepath.Base(x.dst)
	switch {
	case x.contents && !h.IsDir:
		return fmt.Errorf("the source is not a directory (it ends with /.)")
	case exists && fi.IsDir() && x.contents:
		dir, top, x.skip = x.dst, ".", true
	case exists && fi.IsDir():
		dir, top = x.dst, x.srcBase
	case exists && h.IsDir:
		return fmt.Errorf("cannot copy a directory onto the file %s", x.dst)
	case !exists && strings.HasSuffix(x.dst, string(filepath.Separator)):
		return fmt.Errorf("%s: the destination directory does not exist", x.dst)
	}
	if top == "/" || top == ".." {
		return fmt.Errorf("%s: cannot name the copy %q", x.dst, top)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	x.root, x.top = root, top
	return nil
}

func (x *extractor) entry(h client.CopyFileHeader, data io.Reader) error {
	if x.root == nil {
		if err := x.place(h); err != nil {
			return err
		}
	}
	name, err := x.name(h.Path)
	if err != nil {
		return err
	}
	if h.Path == "." && x.skip {
		return nil
	}
	if parent := path.Dir(name); parent != "." {
		if err := x.root.MkdirAll(parent, 0o755); err != nil {
			return err
		}
	}
	switch {
	case h.IsDir:
		fi, err := x.root.Lstat(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			err = x.root.Mkdir(name, 0o700)
		case err == nil && !fi.IsDir():
			err = fmt.Errorf("cannot copy a directory onto the file %s", filepath.Join(x.root.Name(), name))
		}
		if err != nil {
			return err
		}
		h.Path = name
		x.dirs = append(x.dirs, h)
		return nil
	case h.IsSymlink:
		if err := x.replaceable(name); err != nil {
			return err
		}
		return x.root.Symlink(deref(h.LinkTarget), name)
	}
	if err := x.replaceable(name); err != nil {
		return err
	}
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != h.Size {
		err = fmt.Errorf("%d bytes received, %d announced", n, h.Size)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(x.root.Name(), name), err)
	}
	if err := x.root.Chmod(name, fsutil.FileMode(uint32(h.Mode))); err != nil {
		return err
	}
	t := time.Unix(h.Mtime, 0)
	return x.root.Chtimes(name, t, t)
}

// name checks an entry path from the server and maps it under the copy.
func (x *extractor) name(p string) (string, error) {
	clean := path.Clean(p)
	if p == "" || path.IsAbs(p) || clean == ".." || strings.HasPrefix(clean, "../") || (clean == "." && p != ".") {
		return "", fmt.Errorf("refusing entry %q from the instance: outside the copied tree", p)
	}
	return path.Join(x.top, clean), nil
}

// replaceable removes what is at name unless it is a directory (a file
// replaces a file or a link, never a directory).
func (x *extractor) replaceable(name string) error {
	err := fsutil.MakeRoom(x.root, name)
	if errors.Is(err, fsutil.ErrIsDir) {
		return fmt.Errorf("cannot overwrite the directory %s with a file", filepath.Join(x.root.Name(), name))
	}
	return err
}

// close sets directory modes and times last, deepest first: a read-only
// directory must not stop its own contents from being written, and writing
// them changes its mtime.
func (x *extractor) close(ok bool) error {
	if x.root == nil {
		return nil
	}
	defer x.root.Close()
	if !ok {
		return nil
	}
	for _, d := range slices.Backward(x.dirs) {
		if err := x.root.Chmod(d.Path, fsutil.FileMode(uint32(d.Mode))); err != nil {
			return err
		}
		t := time.Unix(d.Mtime, 0)
		if err := x.root.Chtimes(d.Path, t, t); err != nil {
			return err
		}
	}
	return nil
}
