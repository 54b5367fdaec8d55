package cli

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
)

// tarEntry is one archive member as the tests describe it.
type tarEntry struct {
	Name, Body, Link string
	Type             byte
	Uid              int
}

func (e tarEntry) String() string {
	switch e.Type {
	case tar.TypeDir:
		return e.Name
	case tar.TypeSymlink:
		return e.Name + " -> " + e.Link
	case tar.TypeLink:
		return e.Name + " => " + e.Link
	}
	return fmt.Sprintf("%s=%q", e.Name, e.Body)
}

func readTar(t *testing.T, b []byte) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		body, _ := io.ReadAll(tr)
		out = append(out, tarEntry{Name: h.Name, Body: string(body), Link: h.Linkname, Type: h.Typeflag, Uid: h.Uid})
	}
}

func makeTar(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Linkname: e.Link, Mode: 0o644, Size: int64(len(e.Body))}
		if e.Type == 0 {
			h.Typeflag = tar.TypeReg
		}
		if e.Type == tar.TypeDir {
			h.Mode = 0o755
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.Body)
	}
	tw.Close()
	return buf.Bytes()
}

// cpFake is a fake server with stat and cp endpoints.
type cpFake struct {
	*fakeServer
	mu            sync.Mutex
	remote        map[string]string // guest path → "dir" | "file"
	statOff       bool              // stat answers 501
	statForbidden bool              // stat answers 403
	uploads       []cpUpload
	download      []byte // tar sent for "from"
	fail          string // error message sent instead of ok
}

type cpUpload struct {
	Path    string
	Archive []byte
}

func newCpFake(t *testing.T) *cpFake {
	f := &cpFake{fakeServer: newFake(t), remote: map[string]string{"/": "dir"}}
	f.handle("GET /instances/{id}/stat", func(w http.ResponseWriter, r *http.Request) {
		if f.statOff {
			writeJSON(w, http.StatusNotImplemented, `{"code":"not_implemented","message":"no agent"}`)
			return
		}
		if f.statForbidden {
			writeJSON(w, http.StatusForbidden, `{"code":"forbidden","message":"missing required scope: instance:read"}`)
			return
		}
		if r.URL.Query().Get("follow_links") != "true" {
			t.Errorf("stat without follow_links: %v", r.URL.Query())
		}
		f.mu.Lock()
		kind := f.remote[r.URL.Query().Get("path")]
		f.mu.Unlock()
		switch kind {
		case "":
			writeJSON(w, http.StatusOK, `{"exists":false}`)
		case "dir":
			writeJSON(w, http.StatusOK, `{"exists":true,"is_dir":true,"is_file":false,"mode":2147484141}`)
		default:
			writeJSON(w, http.StatusOK, `{"exists":true,"is_dir":false,"is_file":true,"mode":420,"size":3}`)
		}
	})
	f.handle("GET /instances/{id}/cp", wsHandler(t, func(ctx context.Context, conn *websocket.Conn) {
		start := readStartMsg(t, ctx, conn)
		path, _ := start["path"].(string)
		f.mu.Lock()
		fail := f.fail
		f.mu.Unlock()
		switch start["direction"] {
		case "to":
			var buf bytes.Buffer
			for {
				typ, data, err := conn.Read(ctx)
				if err != nil || typ != websocket.MessageBinary {
					t.Errorf("upload: %v %v", typ, err)
					return
				}
				if len(data) == 0 {
					break
				}
				buf.Write(data)
			}
			f.mu.Lock()
			f.uploads = append(f.uploads, cpUpload{path, buf.Bytes()})
			f.mu.Unlock()
		case "from":
			f.mu.Lock()
			f.uploads = append(f.uploads, cpUpload{Path: path})
			d := f.download
			f.mu.Unlock()
			for i := 0; i < len(d); i += 1000 { // small messages: the reader must reassemble
				conn.Write(ctx, websocket.MessageBinary, d[i:min(i+1000, len(d))])
			}
		default:
			t.Errorf("start %v", start)
		}
		if fail != "" {
			final(ctx, conn, `{"error":"`+fail+`","code":"not_found"}`)
			return
		}
		final(ctx, conn, `{"ok":true}`)
	}))
	return f
}

func (f *cpFake) last(t *testing.T) cpUpload {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.uploads) == 0 {
		t.Fatal("no copy reached the server")
	}
	return f.uploads[len(f.uploads)-1]
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(body, "->") {
			if err := os.Symlink(body[2:], p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(body), 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

func names(es []tarEntry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.String()
	}
	sort.Strings(out)
	return out
}

func TestCpToInstance(t *testing.T) {
	f := newCpFake(t)
	f.remote["/srv"] = "dir"
	f.remote["/etc/hosts"] = "file"
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.txt": "hello", "site/index.html": "<h1>", "site/css/x.css": "body{}", "site/link": "->index.html"})
	os.Mkdir(filepath.Join(dir, "site", "empty"), 0o700)

	cases := []struct {
		src, dst, wantPath string
		want               []string
	}{
		{"a.txt", "web:/srv", "/srv", []string{`a.txt="hello"`}},
		{"a.txt", "web:/srv/renamed.txt", "/srv", []string{`renamed.txt="hello"`}},
		{"a.txt", "web:/etc/hosts", "/etc", []string{`hosts="hello"`}},
		{"site", "web:/srv", "/srv", []string{"site/", "site/css/", `site/css/x.css="body{}"`, "site/empty/", `site/index.html="<h1>"`, "site/link -> index.html"}},
		{"site", "web:/www", "/", []string{"www/", "www/css/", `www/css/x.css="body{}"`, "www/empty/", `www/index.html="<h1>"`, "www/link -> index.html"}},
		{"site/.", "web:/srv", "/srv", []string{"css/", `css/x.css="body{}"`, "empty/", `index.html="<h1>"`, "link -> index.html"}},
		{"site/link", "web:/srv", "/srv", []string{"link -> index.html"}},
	}
	t.Chdir(dir) // relative sources, as typed
	for _, c := range cases {
		o, _, _ := testOptions(f.srv.URL, nil)
		res := runWith(t, t.Context(), o, "cp", c.src, c.dst)
		if res.code != 0 {
			t.Errorf("cp %s %s:\n%v", c.src, c.dst, res)
			continue
		}
		up := f.last(t)
		got := readTar(t, up.Archive)
		if up.Path != c.wantPath || !reflect.DeepEqual(names(got), c.want) {
			t.Errorf("cp %s %s: path %q entries\n%v\nwant %q\n%v", c.src, c.dst, up.Path, names(got), c.wantPath, c.want)
		}
		for _, e := range got {
			if e.Uid != 0 {
				t.Errorf("cp %s: %s has uid %d without -a", c.src, e.Name, e.Uid)
			}
		}
	}
	// -L follows the source link; -a keeps the uid.
	o, _, _ := testOptions(f.srv.URL, nil)
	if res := runWith(t, t.Context(), o, "cp", "-L", "-a", filepath.Join(dir, "site", "link"), "web:/srv"); res.code != 0 {
		t.Fatal(res)
	}
	got := readTar(t, f.last(t).Archive)
	if len(got) != 1 || got[0].String() != `link="<h1>"` || got[0].Uid != os.Getuid() {
		t.Fatalf("cp -L -a: %v (uid %d)", got, got[0].Uid)
	}

	// Refusals before anything is sent.
	n := len(f.uploads)
	for _, c := range []struct{ src, dst, inErr string }{
		{filepath.Join(dir, "site"), "web:/etc/hosts", "cannot copy a directory onto the file web:/etc/hosts"},
		{filepath.Join(dir, "a.txt"), "web:/nope/", "destination directory does not exist"},
		{dir + "/a.txt/.", "web:/srv", "not a directory"},
		{filepath.Join(dir, "missing"), "web:/srv", "no such file"},
	} {
		res := f.run("cp", c.src, c.dst)
		if res.code != 1 || !strings.Contains(res.stderr, c.inErr) {
			t.Errorf("cp %s %s:\n%v", c.src, c.dst, res)
		}
	}
	if len(f.uploads) != n {
		t.Fatal("a refused copy reached the server")
	}
}

func TestCpToInstanceFromStdinAndWithoutStat(t *testing.T) {
	f := newCpFake(t)
	archive := makeTar(t, tarEntry{Name: "../weird", Body: "x"}) // passed through untouched
	o, _, _ := testOptions(f.srv.URL, nil)
	o.stdin = bytes.NewReader(archive)
	if res := runWith(t, t.Context(), o, "cp", "-", "web:/data"); res.code != 0 {
		t.Fatal(res)
	}
	if up := f.last(t); up.Path != "/data" || !bytes.Equal(up.Archive, archive) {
		t.Fatalf("stdin tar: %q, %d bytes", up.Path, len(up.Archive))
	}
	if len(f.requests("GET", "/instances/web/stat")) != 0 {
		t.Fatal("cp - stat'ed the destination")
	}
	// A server without stat, or a token without instance:read: a trailing
	// slash means "into this directory".
	file := filepath.Join(t.TempDir(), "f.txt")
	os.WriteFile(file, []byte("abc"), 0o600)
	for _, mode := range []string{"501", "403"} {
		f.statOff, f.statForbidden = mode == "501", mode == "403"
		for dst, want := range map[string][2]string{"web:/data/": {"/data/", "f.txt"}, "web:/data/g.txt": {"/data", "g.txt"}} {
			if res := f.run("cp", file, dst); res.code != 0 {
				t.Fatal(res)
			}
			up := f.last(t)
			if got := readTar(t, up.Archive); up.Path != want[0] || len(got) != 1 || got[0].Name != want[1] {
				t.Errorf("stat %s, %s: %q %v", mode, dst, up.Path, got)
			}
		}
	}
}

func TestCpFromInstance(t *testing.T) {
	f := newCpFake(t)
	dirTar := makeTar(t,
		tarEntry{Name: "app/", Type: tar.TypeDir},
		tarEntry{Name: "app/conf/", Type: tar.TypeDir},
		tarEntry{Name: "app/conf/a.ini", Body: "a=1"},
		tarEntry{Name: "app/run.sh", Body: "#!/bin/sh"},
		tarEntry{Name: "app/latest", Type: tar.TypeSymlink, Link: "run.sh"},
		tarEntry{Name: "app/hard", Type: tar.TypeLink, Link: "app/run.sh"},
	)
	fileTar := makeTar(t, tarEntry{Name: "hosts", Body: "127.0.0.1 localhost"})
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}

	// A directory into an existing directory, and as a new name.
	for _, c := range []struct{ dst, top string }{{"", "app"}, {"copy", "copy"}} {
		dir := t.TempDir()
		f.download = dirTar
		res := f.run("cp", "web:/opt/app", filepath.Join(dir, c.dst))
		if res.code != 0 {
			t.Fatal(res)
		}
		root := filepath.Join(dir, c.top)
		link, _ := os.Readlink(filepath.Join(root, "latest"))
		if read(filepath.Join(root, "conf", "a.ini")) != "a=1" || read(filepath.Join(root, "hard")) != "#!/bin/sh" || link != "run.sh" {
			t.Errorf("dst %q: tree not extracted under %s", c.dst, root)
		}
		if up := f.last(t); up.Path != "/opt/app" {
			t.Errorf("asked for %q", up.Path)
		}
	}
	// The contents of a directory, into a new directory.
	dir := t.TempDir()
	f.download = dirTar
	if res := f.run("cp", "web:/opt/app/.", filepath.Join(dir, "flat")); res.code != 0 {
		t.Fatal(res)
	}
	if read(filepath.Join(dir, "flat", "run.sh")) != "#!/bin/sh" || f.last(t).Path != "/opt/app" {
		t.Errorf("contents copy: %q", f.last(t).Path)
	}
	// A file onto an existing file, into a directory, as a new name.
	f.download = fileTar
	os.WriteFile(filepath.Join(dir, "old"), []byte("old"), 0o600)
	for dst, want := range map[string]string{"old": "old", ".": "hosts", "new": "new"} {
		if res := f.run("cp", "web:/etc/hosts", filepath.Join(dir, dst)); res.code != 0 {
			t.Fatal(res)
		}
		if got := read(filepath.Join(dir, want)); got != "127.0.0.1 localhost" {
			t.Errorf("file to %s: %s has %q", dst, want, got)
		}
	}
	// A directory onto a file is refused.
	f.download = dirTar
	if res := f.run("cp", "web:/opt/app", filepath.Join(dir, "old")); res.code != 1 || !strings.Contains(res.stderr, "cannot copy a directory onto the file") {
		t.Fatal(res)
	}
	// To stdout: the archive as sent.
	o, stdout, _ := testOptions(f.srv.URL, nil)
	if res := runWith(t, t.Context(), o, "cp", "web:/opt/app", "-"); res.code != 0 || !bytes.Equal(stdout.Bytes(), dirTar) {
		t.Fatalf("to stdout: %d bytes\n%v", stdout.Len(), res)
	}
	// The server's error (here after the data) fails the copy.
	f.download, f.fail = fileTar, "copy failed midway"
	if res := f.run("cp", "web:/etc/hosts", t.TempDir()); res.code != 1 || !strings.Contains(res.stderr, "Error: copy failed midway") {
		t.Fatal(res)
	}
}

// TestCpFromInstanceConfined: a hostile archive cannot write outside the
// destination (names, links, wrong top entry).
func TestCpFromInstanceConfined(t *testing.T) {
	f := newCpFake(t)
	for name, archive := range map[string][]byte{
		"dot-dot":       makeTar(t, tarEntry{Name: "app/../../evil", Body: "x"}),
		"absolute":      makeTar(t, tarEntry{Name: "/tmp/evil", Body: "x"}),
		"other top":     makeTar(t, tarEntry{Name: "app/", Type: tar.TypeDir}, tarEntry{Name: "evil", Body: "x"}),
		"through link":  makeTar(t, tarEntry{Name: "app/", Type: tar.TypeDir}, tarEntry{Name: "app/out", Type: tar.TypeSymlink, Link: "../.."}, tarEntry{Name: "app/out/evil", Body: "x"}),
		"abs link":      makeTar(t, tarEntry{Name: "app/", Type: tar.TypeDir}, tarEntry{Name: "app/out", Type: tar.TypeSymlink, Link: "/"}, tarEntry{Name: "app/out/evil", Body: "x"}),
		"hard link out": makeTar(t, tarEntry{Name: "app/", Type: tar.TypeDir}, tarEntry{Name: "app/h", Type: tar.TypeLink, Link: "../outside"}),
	} {
		base := t.TempDir()
		dst := filepath.Join(base, "dst")
		os.Mkdir(dst, 0o755)
		os.WriteFile(filepath.Join(base, "outside"), []byte("keep"), 0o600)
		f.download = archive
		res := f.run("cp", "web:/app", dst)
		if res.code != 1 || !strings.Contains(res.stderr, "Error:") {
			t.Errorf("%s: accepted\n%v", name, res)
		}
		t.Logf("%s: %s", name, strings.TrimSpace(res.stderr))
		var found []string
		filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
			if strings.Contains(d.Name(), "evil") {
				found = append(found, p)
			}
			return nil
		})
		if len(found) > 0 {
			t.Errorf("%s: wrote %v", name, found)
		}
		if _, err := os.Stat("/evil"); err == nil {
			t.Fatalf("%s: wrote /evil", name)
		}
	}
}

func TestCpUsageAndRefusals(t *testing.T) {
	f := newCpFake(t)
	f.handle("GET /instances/gone/stat", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"instance not found: gone"}`)
	})
	f.handle("GET /instances/gone/cp", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"instance not found: gone"}`)
	})
	for _, c := range []struct {
		args  []string
		inErr string
	}{
		{[]string{"cp", "a", "b"}, "one of SRC and DST must be INSTANCE:PATH"},
		{[]string{"cp", "x:/a", "y:/b"}, "between two instances"},
		{[]string{"cp", "web:relative", "."}, "must be absolute"},
		{[]string{"cp", ":/a", "."}, "both parts"},
		{[]string{"cp", "gone:/etc/hosts", "."}, "Error: instance not found: gone"},
		{[]string{"cp", "cp_test.go", "gone:/tmp"}, "Error: instance not found: gone"},
	} {
		res := f.run(c.args...)
		if res.code != 1 || !strings.Contains(res.stderr, c.inErr) {
			t.Errorf("%v:\n%v", c.args, res)
		}
	}
	if ins, p, ok := splitRemote("./a:b"); ok {
		t.Errorf("./a:b parsed as remote %q %q", ins, p)
	}
}
