package cli

import (
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func volumeJSON(id, name string, size int, attachments string, created time.Time) string {
	return `{"id":"` + id + `","name":"` + name + `","size_gb":` + strconv.Itoa(size) + `,"attachments":[` + attachments +
		`],"created_at":"` + created.Format(time.RFC3339) + `"}`
}

func TestVolumeCreate(t *testing.T) {
	f := newFake(t)
	f.handle("POST /volumes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, volumeJSON("v0123456789abcdef", "data", 5, "", testNow))
	})
	f.handle("POST /volumes/from-archive", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, volumeJSON("v-archive", r.URL.Query().Get("name"), 1, "", testNow))
	})
	res := f.run("volume", "create", "--name", "data", "--size", "5", "--id", "myid", "--tag", "team=a")
	if res.code != 0 || res.stdout != "v0123456789abcdef\n" {
		t.Fatal(res)
	}
	reqs := f.requests("POST", "/volumes")
	want := map[string]any{"name": "data", "size_gb": float64(5), "id": "myid", "tags": map[string]any{"team": "a"}}
	if got := mustJSON(t, reqs[0].Body); !reflect.DeepEqual(got, want) {
		t.Fatalf("create body %v, want %v", got, want)
	}

	// --from-archive streams the file as application/gzip with the
	// parameters in the query.
	archive := filepath.Join(t.TempDir(), "site.tar.gz")
	content := "\x1f\x8b fake gzip bytes"
	os.WriteFile(archive, []byte(content), 0o644)
	res = f.run("volume", "create", "--name", "site", "--size", "1", "--tag", "app=web", "--from-archive", archive)
	if res.code != 0 || res.stdout != "v-archive\n" {
		t.Fatal(res)
	}
	reqs = f.requests("POST", "/volumes/from-archive")
	if len(reqs) != 1 || reqs[0].Body != content || reqs[0].Header.Get("Content-Type") != "application/gzip" {
		t.Fatalf("from-archive request %+v", reqs)
	}
	q := reqs[0].Query
	if q.Get("name") != "site" || q.Get("size_gb") != "1" || q.Get("tags[app]") != "web" {
		t.Errorf("from-archive query %v", q)
	}

	for _, args := range [][]string{
		{"volume", "create", "--size", "1"},                                    // no name
		{"volume", "create", "--name", "Bad_Name", "--size", "1"},              // name rule
		{"volume", "create", "--name", "x"},                                    // no size
		{"volume", "create", "--name", "x", "--size", "1", "--tag", "novalue"}, // bad tag
		{"volume", "create", "--name", "x", "--size", "1", "--from-archive", "/nonexistent.tgz"},
	} {
		if res := f.run(args...); res.code != 1 || !strings.Contains(res.stderr, "--help") {
			t.Errorf("%v:\n%v", args, res)
		}
	}
	if n := len(f.requests("POST", "/volumes")); n != 2 {
		t.Errorf("%d create requests, want 2 (usage errors must not reach the server)", n)
	}
}

func TestVolumeListGetRm(t *testing.T) {
	f := newFake(t)
	f.handle("GET /volumes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, "["+volumeJSON("vaaaaaaaaaaaaaaaaaaaaaa1", "data", 5, "", testNow.Add(-2*time.Hour))+","+
			volumeJSON("vbbbbbbbbbbbbbbbbbbbbbb2", "logs", 1, `{"instance_id":"i1","mount_path":"/logs","readonly":false}`, testNow)+"]")
	})
	f.handle("GET /volumes/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "nope" {
			writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"volume not found: \"nope\""}`)
			return
		}
		writeJSON(w, http.StatusOK, volumeJSON("vaaaaaaaaaaaaaaaaaaaaaa1", "data", 5, "", testNow))
	})
	f.handle("DELETE /volumes/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "busy" {
			writeJSON(w, http.StatusConflict, `{"code":"conflict","message":"cannot delete volume busy: it is attached to instance(s) i1"}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})

	res := f.run("volume", "list")
	want := [][]string{
		{"ID", "NAME", "SIZE", "ATTACHMENTS", "CREATED"},
		{"vaaaaaaaaaaa", "data", "5 GB", "-", "2 hours ago"},
		{"vbbbbbbbbbbb", "logs", "1 GB", "1", "just now"},
	}
	lines := strings.Split(strings.TrimRight(res.stdout, "\n"), "\n")
	if res.code != 0 || len(lines) != len(want) {
		t.Fatalf("list:\n%v", res)
	}
	for i, l := range lines {
		if got := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(l), -1); !reflect.DeepEqual(got, want[i]) {
			t.Errorf("list row %d = %q, want %q", i, got, want[i])
		}
	}
	res = f.run("volume", "ls", "-q", "--tag", "team=a")
	if res.code != 0 || res.stdout != "vaaaaaaaaaaaaaaaaaaaaaa1\nvbbbbbbbbbbbbbbbbbbbbbb2\n" {
		t.Fatalf("list -q:\n%v", res)
	}
	if q := f.requests("GET", "/volumes")[1].Query; q.Get("tags[team]") != "a" {
		t.Errorf("tag filter query %v", q)
	}
	res = f.run("volume", "get", "data")
	if res.code != 0 || mustJSON(t, res.stdout)["name"] != "data" {
		t.Fatalf("get:\n%v", res)
	}
	if res := f.run("volume", "get", "nope"); res.code != 1 || !strings.Contains(res.stderr, "volume not found") {
		t.Errorf("get missing:\n%v", res)
	}
	res = f.run("volume", "rm", "data", "busy", "logs")
	if res.code != 1 || res.stdout != "data\nlogs\n" || !strings.Contains(res.stderr, "busy: cannot delete volume busy: it is attached to instance(s) i1") {
		t.Errorf("rm:\n%v", res)
	}
}
