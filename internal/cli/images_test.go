package cli

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// imageSequence serves POST /images and then GET /images/{name} answers
// from steps, staying on the last one.
func imageSequence(f *fakeServer, name string, steps ...string) {
	var n atomic.Int32
	f.handle("POST /images", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusAccepted, steps[0])
	})
	f.handle("GET /images/{name}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("name") != name {
			writeJSON(w, http.StatusNotFound, `{"code":"not_found","message":"image not found: `+r.PathValue("name")+`"}`)
			return
		}
		i := min(int(n.Add(1)), len(steps)-1)
		writeJSON(w, http.StatusOK, steps[i])
	})
}

const alpine = "docker.io/library/alpine:3.20"

func img(status, extra string) string {
	s := `{"name":"` + alpine + `","status":"` + status + `","created_at":"2025-03-01T11:00:00Z"`
	if extra != "" {
		s += "," + extra
	}
	return s + "}"
}

var pullSteps = []string{
	img("pending", `"progress":{"bytes_done":0,"bytes_total":0,"layers_done":0,"layers_total":0}`),
	img("pulling", `"progress":{"bytes_done":100,"bytes_total":7100000,"layers_done":0,"layers_total":2}`),
	img("pulling", `"progress":{"bytes_done":5000000,"bytes_total":7100000,"layers_done":1,"layers_total":2}`),
	img("converting", `"progress":{"bytes_done":7100000,"bytes_total":7100000,"layers_done":2,"layers_total":2}`),
	img("ready", `"digest":"sha256:aaaabbbbccccddddeeee","size_bytes":12300000`),
}

func TestPullFollowsToReady(t *testing.T) {
	f := newFake(t)
	imageSequence(f, alpine, pullSteps...)
	res := f.run("pull", "alpine:3.20")
	if res.code != 0 || res.stdout != alpine+"\n" {
		t.Fatalf("want the image name and exit 0:\n%v", res)
	}
	posts := f.requests("POST", "/images")
	if len(posts) != 1 || mustJSON(t, posts[0].Body)["name"] != "alpine:3.20" {
		t.Fatalf("POST /images requests: %+v", posts)
	}
	if ct := posts[0].Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("POST content type %q", ct)
	}
	// The name is one URL-encoded path segment.
	gets := f.requests("GET", "/images/")
	if len(gets) < 4 || !strings.HasPrefix(gets[0].URI, "/images/docker.io%2Flibrary%2Falpine:3.20") {
		t.Fatalf("GET requests: %d, first %q", len(gets), gets[0].URI)
	}
	want := alpine + ": pending\n" +
		alpine + ": pulling (layers 0/2, 7.1 MB)\n" +
		alpine + ": pulling (layers 1/2, 7.1 MB)\n" +
		alpine + ": converting (layers 2/2, 7.1 MB)\n" +
		alpine + ": ready (sha256:aaaabbbbcccc, 12.3 MB)\n"
	if res.stderr != want {
		t.Fatalf("status lines:\n%s\nwant:\n%s", res.stderr, want)
	}
}

func TestPullProgressBarOnTTY(t *testing.T) {
	f := newFake(t)
	imageSequence(f, alpine, pullSteps...)
	o, _, _ := testOptions(f.srv.URL, nil)
	o.progressTTY, o.termWidth = true, 120
	res := runWith(t, context.Background(), o, "pull", "alpine:3.20")
	if res.code != 0 {
		t.Fatal(res)
	}
	for _, want := range []string{"\r\x1b[K", "pulling", "[", "5.0 MB / 7.1 MB", "layers 1/2", "converting", "ready"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("progress output lacks %q: %q", want, res.stderr)
		}
	}
	if !strings.HasSuffix(res.stderr, "\n") || strings.Count(res.stderr, "\n") != 1 {
		t.Errorf("the bar should be one redrawn line ending in a newline: %q", res.stderr)
	}
}

func TestPullJSONPrintsFinalImage(t *testing.T) {
	f := newFake(t)
	imageSequence(f, alpine, pullSteps...)
	res := f.run("pull", "--format", "json", "alpine:3.20")
	if res.code != 0 || res.stdout != pullSteps[len(pullSteps)-1]+"\n" {
		t.Fatalf("want the raw ready image:\n%v", res)
	}
}

func TestPullFailed(t *testing.T) {
	f := newFake(t)
	imageSequence(f, alpine,
		img("pending", ""),
		img("pulling", ""),
		img("failed", `"error":"manifest unknown","error_kind":"not_found_upstream"`))
	res := f.run("pull", "alpine:3.20")
	if res.code != 1 || res.stdout != "" {
		t.Fatalf("want exit 1 and no result:\n%v", res)
	}
	if !strings.Contains(res.stderr, "Error: image "+alpine+" failed: manifest unknown (not_found_upstream)") {
		t.Fatalf("error message:\n%v", res)
	}
}

func TestPullRejected(t *testing.T) {
	f := newFake(t)
	f.handle("POST /images", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusBadRequest, `{"code":"invalid_request","message":"invalid image reference \"UPPER\""}`)
	})
	res := f.run("pull", "UPPER")
	if res.code != 1 || !strings.Contains(res.stderr, `Error: invalid image reference "UPPER"`) {
		t.Fatal(res)
	}
}

func TestPullInterruptedKeepsServerWorking(t *testing.T) {
	f := newFake(t)
	imageSequence(f, alpine, img("pending", ""), img("pulling", ""))
	o, _, _ := testOptions(f.srv.URL, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(100*time.Millisecond, cancel)
	res := runWith(t, ctx, o, "pull", "alpine:3.20")
	if res.code != exitInterrupted || !strings.Contains(res.stderr, "the server keeps working on it") {
		t.Fatal(res)
	}
}

func TestImagesTable(t *testing.T) {
	f := newFake(t)
	f.handle("GET /images", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, "["+
			img("ready", `"digest":"sha256:aaaabbbbccccdddd","size_bytes":12300000`)+","+
			`{"name":"docker.io/library/big:1","status":"pulling","created_at":"2025-03-01T11:59:30Z","progress":{"bytes_done":25,"bytes_total":100,"layers_done":0,"layers_total":1}}`+
			"]")
	})
	res := f.run("images")
	if res.code != 0 {
		t.Fatal(res)
	}
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header + 2 rows:\n%s", res.stdout)
	}
	for i, want := range [][]string{
		{"NAME", "STATUS", "DIGEST", "SIZE", "CREATED"},
		{alpine, "ready", "sha256:aaaabbbbcccc", "12.3 MB", "1 hour ago"},
		{"docker.io/library/big:1", "pulling 25%", "-", "-", "30 seconds ago"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
	res = f.run("images", "--format", "json")
	if res.code != 0 || !strings.HasPrefix(res.stdout, `[{"name":"`+alpine) {
		t.Fatal(res)
	}
}

func TestRmiReportsEachFailure(t *testing.T) {
	f := newFake(t)
	f.handle("DELETE /images/{name}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("name") == "busybox" {
			writeJSON(w, http.StatusConflict, `{"code":"conflict","message":"image docker.io/library/busybox:latest is used by instance(s): web"}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	res := f.run("rmi", "alpine", "busybox", "nginx")
	if res.code != 1 {
		t.Fatal(res)
	}
	if res.stdout != "alpine\nnginx\n" {
		t.Errorf("deleted images printed: %q", res.stdout)
	}
	if res.stderr != "Error: busybox: image docker.io/library/busybox:latest is used by instance(s): web\n" {
		t.Errorf("stderr %q", res.stderr)
	}
	if n := len(f.requests("DELETE", "/images/")); n != 3 {
		t.Errorf("%d DELETE requests, want 3", n)
	}
}
