package cli

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

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

// cpFake is a fake server with stat and cp endpoints. Puts are recorded;
// a "from" session plays the scripted messages.
type cpFake struct {
	*fakeServer
	mu            sync.Mutex
	remote        map[string]string // guest path → "dir" | "file"
	statOff       bool              // stat answers 501
	statForbidden bool              // stat answers 403
	puts          []cpPut
	froms         []map[string]any // start messages of downloads
	script        []string         // "t:" text, "b:" binary: what a download sends
	putFail       string           // error for every put
}

// cpPut is one upload as the server saw it.
type cpPut struct {
	Start map[string]any
	Data  string
}

func (p cpPut) String() string {
	s := fmt.Sprint(p.Start["guest_path"])
	switch {
	case p.Start["is_dir"] == true:
		s += "/"
	case p.Start["link_target"] != nil:
		s += " -> " + fmt.Sprint(p.Start["link_target"])
	default:
		s += fmt.Sprintf("=%q", p.Data)
	}
	return s
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
			writeJSON(w, http.StatusOK, `{"exists":true,"is_dir":true,"is_file":false,"mode":493}`)
		default:
			writeJSON(w, http.StatusOK, `{"exists":true,"is_dir":false,"is_file":true,"mode":420,"size":3}`)
		}
	})
	f.handle("GET /instances/{id}/cp", wsHandler(t, func(ctx context.Context, conn *websocket.Conn) {
		start := readStartMsg(t, ctx, conn)
		switch start["direction"] {
		case "to":
			var buf bytes.Buffer
			for {
				typ, data, err := conn.Read(ctx)
				if err != nil {
					t.Errorf("upload: %v", err)
					return
				}
				if typ == websocket.MessageText {
					if string(data) != `{"type":"end"}` {
						t.Errorf("upload: text %q", data)
					}
					break
				}
				buf.Write(data)
			}
			f.mu.Lock()
			f.puts = append(f.puts, cpPut{start, buf.String()})
			fail := f.putFail
			f.mu.Unlock()
			if fail != "" {
				final(ctx, conn, `{"type":"result","success":false,"error":"`+fail+`","code":"conflict"}`)
				return
			}
			final(ctx, conn, fmt.Sprintf(`{"type":"result","success":true,"bytes_written":%d}`, buf.Len()))
		case "from":
			f.mu.Lock()
			f.froms = append(f.froms, start)
			script := f.script
			f.mu.Unlock()
			for _, m := range script {
				typ := websocket.MessageText
				if m[0] == 'b' {
					typ = websocket.MessageBinary
				}
				if conn.Write(ctx, typ, []byte(m[2:])) != nil {
					return
				}
			}
			conn.Close(websocket.StatusNormalClosure, "")
		default:
			t.Errorf("start %v", start)
		}
	}))
	return f
}

func (f *cpFake) putList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.puts))
	for i, p := range f.puts {
		out[i] = p.String()
	}
	return out
}

func (f *cpFake) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.puts, f.froms = nil, nil
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

// TestCpToInstance: one connection per entry, each landing where docker cp
// would put it, with the start fields hypeman's protocol defines.
func TestCpToInstance(t *testing.T) {
	f := newCpFake(t)
	f.remote["/srv"] = "dir"
	f.remote["/etc/hosts"] = "file"
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.txt": "hello", "site/index.html": "<h1>", "site/css/x.css": "body{}", "site/link": "->index.html"})
	os.Mkdir(filepath.Join(dir, "site", "empty"), 0o700)

	cases := []struct {
		src, dst string
		want     []string
	}{
		{"a.txt", "web:/srv", []string{`/srv/a.txt="hello"`}},
		{"a.txt", "web:/srv/renamed.txt", []string{`/srv/renamed.txt="hello"`}},
		{"a.txt", "web:/etc/hosts", []string{`/etc/hosts="hello"`}},
		// Directories first, their times set again after their contents.
		{"site", "web:/srv", []string{"/srv/site/", "/srv/site/css/", `/srv/site/css/x.css="body{}"`, "/srv/site/empty/",
			`/srv/site/index.html="<h1>"`, "/srv/site/link -> index.html", "/srv/site/css/", "/srv/site/"}},
		{"site", "web:/www", []string{"/www/", "/www/css/", `/www/css/x.css="body{}"`, "/www/empty/", `/www/index.html="<h1>"`,
			"/www/link -> index.html", "/www/css/", "/www/"}},
		{"site/.", "web:/srv", []string{"/srv/css/", `/srv/css/x.css="body{}"`, "/srv/empty/", `/srv/index.html="<h1>"`,
			"/srv/link -> index.html", "/srv/css/"}},
		{"site/link", "web:/srv", []string{"/srv/link -> index.html"}},
	}
	t.Chdir(dir) // relative sources, as typed
	for _, c := range cases {
		f.reset()
		o, _, _ := testOptions(f.srv.URL, nil)
		res := runWith(t, t.Context(), o, "cp", c.src, c.dst)
		if got := f.putList(); res.code != 0 || !reflect.DeepEqual(got, c.want) {
			t.Errorf("cp %s %s: %v\n got %q\nwant %q", c.src, c.dst, res, got, c.want)
		}
	}
	// The start message of a file: mode bits and mtime, no owner without -a.
	f.reset()
	os.Chmod(filepath.Join(dir, "a.txt"), os.ModeSetuid|0o751)
	mtime := time.Date(2022, 2, 3, 4, 5, 6, 0, time.UTC)
	os.Chtimes(filepath.Join(dir, "a.txt"), mtime, mtime)
	if res := f.run("cp", filepath.Join(dir, "a.txt"), "web:/srv"); res.code != 0 {
		t.Fatal(res)
	}
	want := map[string]any{"direction": "to", "guest_path": "/srv/a.txt", "mode": float64(0o4751), "mtime": float64(mtime.Unix())}
	if got := f.puts[0].Start; !reflect.DeepEqual(got, want) {
		t.Errorf("start %v, want %v", got, want)
	}
	// -L follows links (a link to a file is sent as the file); -a sends
	// the owner.
	f.reset()
	if res := f.run("cp", "-L", "-a", filepath.Join(dir, "site", "link"), "web:/srv"); res.code != 0 {
		t.Fatal(res)
	}
	if got := f.putList(); len(got) != 1 || got[0] != `/srv/link="<h1>"` || f.puts[0].Start["uid"] != float64(os.Getuid()) {
		t.Fatalf("cp -L -a: %v %v", got, f.puts[0].Start)
	}
	// The server's refusal is the error.
	f.putFail = "a directory is in the way"
	if res := f.run("cp", filepath.Join(dir, "a.txt"), "web:/srv"); res.code != 1 || !strings.Contains(res.stderr, "Error: a directory is in the way") {
		t.Fatal(res)
	}
	f.putFail = ""

	// Refusals before anything is sent.
	f.reset()
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
	if len(f.putList()) != 0 {
		t.Fatal("a refused copy reached the server")
	}
}

func TestCpToInstanceFromStdinAndWithoutStat(t *testing.T) {
	f := newCpFake(t)
	archive := makeTar(t,
		tarEntry{Name: "./", Type: tar.TypeDir},
		tarEntry{Name: "/abs/x", Body: "rooted at DST"},
		tarEntry{Name: "d/", Type: tar.TypeDir},
		tarEntry{Name: "d/f", Body: "f"},
		tarEntry{Name: "hard", Type: tar.TypeLink, Link: "d/f"},
	)
	o, _, stderr := testOptions(f.srv.URL, nil)
	o.stdin = bytes.NewReader(archive)
	if res := runWith(t, t.Context(), o, "cp", "-", "web:/data"); res.code != 0 {
		t.Fatal(res)
	}
	want := []string{"/data/", `/data/abs/x="rooted at DST"`, "/data/d/", `/data/d/f="f"`, "/data/d/", "/data/"}
	if got := f.putList(); !reflect.DeepEqual(got, want) || !strings.Contains(stderr.String(), "skipping hard") {
		t.Fatalf("stdin tar: %q\n%s", got, stderr)
	}
	if len(f.requests("GET", "/instances/web/stat")) != 0 {
		t.Fatal("cp - stat'ed the destination")
	}
	// Names that climb out of DST, or go through a link the archive made,
	// are refused before they are sent.
	for name, archive := range map[string][]byte{
		"dot-dot":      makeTar(t, tarEntry{Name: "ok", Body: "x"}, tarEntry{Name: "a/../../evil", Body: "x"}),
		"through link": makeTar(t, tarEntry{Name: "out", Type: tar.TypeSymlink, Link: "/etc"}, tarEntry{Name: "out/evil", Body: "x"}),
	} {
		f.reset()
		o, _, _ := testOptions(f.srv.URL, nil)
		o.stdin = bytes.NewReader(archive)
		res := runWith(t, t.Context(), o, "cp", "-", "web:/data")
		if res.code != 1 || !strings.Contains(res.stderr, "refusing archive entry") || slices.ContainsFunc(f.putList(), func(s string) bool { return strings.Contains(s, "evil") }) {
			t.Errorf("%s: %v %q", name, res, f.putList())
		}
	}
	// A server without stat, or a token without instance:read: a trailing
	// slash means "into this directory".
	file := filepath.Join(t.TempDir(), "f.txt")
	os.WriteFile(file, []byte("abc"), 0o600)
	for _, mode := range []string{"501", "403"} {
		f.statOff, f.statForbidden = mode == "501", mode == "403"
		for dst, want := range map[string]string{"web:/data/": `/data/f.txt="abc"`, "web:/data/g.txt": `/data/g.txt="abc"`} {
			f.reset()
			if res := f.run("cp", file, dst); res.code != 0 {
				t.Fatal(res)
			}
			if got := f.putList(); len(got) != 1 || got[0] != want {
				t.Errorf("stat %s, %s: %q", mode, dst, got)
			}
		}
	}
}

// msgs builds a download script: header texts, data, ends.
func hdr(p string, kind string, size int, mode int) string {
	h := map[string]any{"type": "header", "path": p, "mode": mode, "is_dir": kind == "dir", "is_symlink": strings.HasPrefix(kind, "->"),
		"size": size, "mtime": 1600000000, "uid": 0, "gid": 0}
	if strings.HasPrefix(kind, "->") {
		h["link_target"] = kind[2:]
	}
	b, _ := json.Marshal(h)
	return "t:" + string(b)
}

const (
	endMsg   = `t:{"type":"end","final":false}`
	finalMsg = `t:{"type":"end","final":true}`
)

func TestCpFromInstance(t *testing.T) {
	f := newCpFake(t)
	dirScript := []string{
		hdr(".", "dir", 0, 0o750), endMsg,
		hdr("conf", "dir", 0, 0o755), endMsg,
		hdr("conf/a.ini", "file", 3, 0o600), "b:a=1", endMsg,
		hdr("latest", "->run.sh", 0, 0o777), endMsg,
		hdr("run.sh", "file", 9, 0o755), "b:#!/b", "b:in/sh", finalMsg, // data in several messages
	}
	fileScript := []string{hdr(".", "file", 19, 0o644), "b:127.0.0.1 localhost", finalMsg}
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
		f.script = dirScript
		res := f.run("cp", "web:/opt/app", filepath.Join(dir, c.dst))
		if res.code != 0 {
			t.Fatal(res)
		}
		root := filepath.Join(dir, c.top)
		link, _ := os.Readlink(filepath.Join(root, "latest"))
		fi, _ := os.Stat(root)
		rf, _ := os.Stat(filepath.Join(root, "run.sh"))
		if read(filepath.Join(root, "conf", "a.ini")) != "a=1" || read(filepath.Join(root, "run.sh")) != "#!/bin/sh" || link != "run.sh" ||
			fi.Mode().Perm() != 0o750 || rf.Mode().Perm() != 0o755 || rf.ModTime().Unix() != 1600000000 || fi.ModTime().Unix() != 1600000000 {
			t.Errorf("dst %q: tree not extracted under %s as sent", c.dst, root)
		}
	}
	if got := f.froms[0]; !reflect.DeepEqual(got, map[string]any{"direction": "from", "guest_path": "/opt/app"}) {
		t.Errorf("start %v", got)
	}
	// The contents of a directory, into a new directory; -L asks the
	// server to follow links.
	dir := t.TempDir()
	f.script = dirScript
	if res := f.run("cp", "-L", "web:/opt/app/.", filepath.Join(dir, "flat")); res.code != 0 {
		t.Fatal(res)
	}
	if last := f.froms[len(f.froms)-1]; read(filepath.Join(dir, "flat", "run.sh")) != "#!/bin/sh" || last["guest_path"] != "/opt/app" || last["follow_links"] != true {
		t.Errorf("contents copy: %v", last)
	}
	// A file onto an existing file, into a directory, as a new name.
	f.script = fileScript
	os.WriteFile(filepath.Join(dir, "old"), []byte("old"), 0o600)
	for dst, want := range map[string]string{"old": "old", ".": "hosts", "new": "new"} {
		if res := f.run("cp", "web:/etc/hosts", filepath.Join(dir, dst)); res.code != 0 {
			t.Fatal(res)
		}
		if got := read(filepath.Join(dir, want)); got != "127.0.0.1 localhost" {
			t.Errorf("file to %s: %s has %q", dst, want, got)
		}
	}
	// A directory onto a file, or a file as SRC/., is refused.
	f.script = dirScript
	if res := f.run("cp", "web:/opt/app", filepath.Join(dir, "old")); res.code != 1 || !strings.Contains(res.stderr, "cannot copy a directory onto the file") {
		t.Fatal(res)
	}
	f.script = fileScript
	if res := f.run("cp", "web:/etc/hosts/.", dir); res.code != 1 || !strings.Contains(res.stderr, "not a directory") {
		t.Fatal(res)
	}
	// To stdout: a tar stream named like docker's (the source's base name).
	f.script = dirScript
	o, stdout, _ := testOptions(f.srv.URL, nil)
	if res := runWith(t, t.Context(), o, "cp", "web:/opt/app", "-"); res.code != 0 {
		t.Fatal(res)
	}
	got := names(readTar(t, stdout.Bytes()))
	want := []string{"app/", "app/conf/", `app/conf/a.ini="a=1"`, "app/latest -> run.sh", `app/run.sh="#!/bin/sh"`}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("to stdout: %q", got)
	}
}

// TestCpFromInstanceRefusesBadStreams: a hostile or broken server cannot
// write outside the destination, and an incomplete copy is an error.
func TestCpFromInstanceRefusesBadStreams(t *testing.T) {
	f := newCpFake(t)
	top := hdr(".", "dir", 0, 0o755)
	for name, c := range map[string]struct {
		script []string
		inErr  string
	}{
		"dot-dot":         {[]string{top, endMsg, hdr("../evil", "file", 1, 0o644), "b:x", finalMsg}, "outside the copied tree"},
		"nested dot-dot":  {[]string{top, endMsg, hdr("a/../../evil", "file", 1, 0o644), "b:x", finalMsg}, "outside the copied tree"},
		"absolute":        {[]string{top, endMsg, hdr("/tmp/evil", "file", 1, 0o644), "b:x", finalMsg}, "outside the copied tree"},
		"through link":    {[]string{top, endMsg, hdr("out", "->../..", 0, 0o777), endMsg, hdr("out/evil", "file", 1, 0o644), "b:x", finalMsg}, "escapes"},
		"abs link":        {[]string{top, endMsg, hdr("out", "->/", 0, 0o777), endMsg, hdr("out/tmp/evil", "file", 1, 0o644), "b:x", finalMsg}, "escapes"},
		"no final marker": {[]string{top, endMsg, hdr("a", "file", 1, 0o644), "b:x", endMsg}, "no final marker"},
		"cut short":       {[]string{top, endMsg, hdr("a", "file", 5, 0o644), "b:x", endMsg}, "4 bytes of a file still to come"},
		"too many bytes":  {[]string{top, endMsg, hdr("a", "file", 1, 0o644), "b:xyz", finalMsg}, "more bytes than the file's header announced"},
		"second top":      {[]string{top, endMsg, hdr(".", "dir", 0, 0o755), finalMsg}, "invalid header"},
		"data first":      {[]string{"b:x"}, "where an entry header belongs"},
		"server error":    {[]string{top, endMsg, `t:{"type":"error","message":"read failed","path":"/app","code":"internal"}`}, "Error: read failed"},
		"unknown message": {[]string{top, `t:{"type":"weird"}`}, "where an entry's end belongs"},
		"not json":        {[]string{`t:nope`}, "invalid message"},
	} {
		base := t.TempDir()
		dst := filepath.Join(base, "dst")
		os.Mkdir(dst, 0o755)
		f.script = c.script
		res := f.run("cp", "web:/app", dst)
		if res.code != 1 || !strings.Contains(res.stderr, c.inErr) {
			t.Errorf("%s: want an error containing %q\n%v", name, c.inErr, res)
		}
		var found []string
		filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
			if d != nil && strings.Contains(d.Name(), "evil") {
				found = append(found, p)
			}
			return nil
		})
		if len(found) > 0 {
			t.Errorf("%s: wrote %v", name, found)
		}
		for _, p := range []string{"/evil", "/tmp/evil"} {
			if _, err := os.Stat(p); err == nil {
				os.Remove(p)
				t.Fatalf("%s: wrote %s", name, p)
			}
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
