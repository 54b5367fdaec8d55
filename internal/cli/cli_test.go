package cli

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/creack/pty"
)

func TestAuthErrorsExplainTheFix(t *testing.T) {
	f := newFake(t)
	f.handle("GET /images", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, "[]") })
	o, _, _ := testOptions(f.srv.URL, map[string]string{"HYPEMAN_API_KEY": ""})
	res := runWith(t, t.Context(), o, "images")
	if res.code != 1 || !strings.Contains(res.stderr, "missing or invalid bearer token (HYPEMAN_API_KEY is not set; mint a token with hypeman-token)") {
		t.Fatal(res)
	}
	if h := f.requests("GET", "/images")[0].Header.Get("Authorization"); h != "" {
		t.Errorf("sent Authorization %q without a key", h)
	}
	o, _, _ = testOptions(f.srv.URL, map[string]string{"HYPEMAN_API_KEY": "wrong"})
	res = runWith(t, t.Context(), o, "images")
	if res.code != 1 || !strings.Contains(res.stderr, "(check HYPEMAN_API_KEY)") {
		t.Fatal(res)
	}
}

func TestServerUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	o, _, _ := testOptions(url, nil)
	res := runWith(t, t.Context(), o, "ps")
	if res.code != 1 || !strings.Contains(res.stderr, "Error: cannot reach hypemand at "+url) || !strings.Contains(res.stderr, "connection refused") {
		t.Fatal(res)
	}
	o, _, _ = testOptions("ftp://x", nil)
	res = runWith(t, t.Context(), o, "ps")
	if res.code != 1 || !strings.Contains(res.stderr, `invalid base URL "ftp://x"`) {
		t.Fatal(res)
	}
}

func TestNonAPIResponses(t *testing.T) {
	// A proxy's HTML error page, and a 200 that is not JSON.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/instances" {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			w.Write([]byte("<html>bad gateway</html>"))
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("hello"))
	}))
	defer srv.Close()
	o, _, _ := testOptions(srv.URL, nil)
	res := runWith(t, t.Context(), o, "ps")
	if res.code != 1 || !strings.Contains(res.stderr, "server answered 502 Bad Gateway: <html>bad gateway</html>") {
		t.Fatal(res)
	}
	o, _, _ = testOptions(srv.URL, nil)
	res = runWith(t, t.Context(), o, "images")
	if res.code != 1 || !strings.Contains(res.stderr, "not JSON: is "+srv.URL+" a hypemand?") {
		t.Fatal(res)
	}
}

func TestBaseURLFlagAndPathPrefix(t *testing.T) {
	f := newFake(t)
	f.handle("GET /prefix/instances", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, "[]") })
	o, _, _ := testOptions("http://127.0.0.1:1", nil) // the flag wins over the environment
	res := runWith(t, t.Context(), o, "--base-url", f.srv.URL+"/prefix/", "ps", "-a")
	if res.code != 0 || !strings.HasPrefix(res.stdout, "ID") {
		t.Fatal(res)
	}
}

func TestVersion(t *testing.T) {
	f := newFake(t)
	f.handle("GET /capabilities", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, `{"server":{"version":"1.2.3","api_version":"0.3.0"},"host":{"os":"linux","arch":"amd64"},
			"default_runtime":{"name":"qemu-microvm","available":true},"runtimes":[],"network":{"model":"nat","guest_to_guest":false},
			"images":{"platforms":["linux/amd64"],"default_platform":"linux/amd64"},"features":[],
			"accelerator":"tcg","accelerator_reason":"kvm_pvm detected","networking":{"mode":"user"}}`)
	})
	res := f.run("version")
	if res.code != 0 || !strings.HasPrefix(res.stdout, "Client: hypeman ") ||
		!strings.Contains(res.stdout, "Server: hypemand 1.2.3 (API 0.3.0) at "+f.srv.URL) ||
		!strings.Contains(res.stdout, "hypervisor qemu-microvm, accelerator tcg (kvm_pvm detected), networking user") {
		t.Fatal(res)
	}
	res = f.run("version", "--format", "json")
	if res.code != 0 || !strings.Contains(res.stdout, `"server":{"version":"1.2.3"`) && !strings.Contains(res.stdout, `"server":{"server":{"version":"1.2.3"`) || !strings.Contains(res.stdout, `"client":{`) {
		t.Fatal(res)
	}
	f.srv.Close()
	res = f.run("version")
	if res.code != 1 || !strings.HasPrefix(res.stdout, "Client: hypeman") || !strings.Contains(res.stderr, "cannot reach hypemand") {
		t.Fatal(res)
	}
}

func TestHelpAndUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	code := Run(context.Background(), []string{"--help"}, nil, &out, &errb, nil)
	if code != 0 {
		t.Fatalf("--help exit %d: %s", code, errb.String())
	}
	for _, cmd := range []string{"pull", "images", "rmi", "push", "run", "ps", "inspect", "logs", "stop", "start", "rm", "wait", "events", "version", "HYPEMAN_BASE_URL", "HYPEMAN_API_KEY"} {
		if !strings.Contains(out.String(), cmd) {
			t.Errorf("help lacks %q", cmd)
		}
	}
	out.Reset()
	if code := Run(context.Background(), []string{"wait", "--help"}, nil, &out, &errb, nil); code != 0 || !strings.Contains(out.String(), "Exit status: 0 when") {
		t.Errorf("wait --help: %d %s", code, out.String())
	}
	errb.Reset()
	code = Run(context.Background(), []string{"frobnicate"}, nil, &out, &errb, nil)
	if code != 1 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: exit %d, %q", code, errb.String())
	}
}

func TestTerminalDetection(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pty: %v", err)
	}
	defer ptmx.Close()
	defer tty.Close()
	if err := pty.Setsize(tty, &pty.Winsize{Rows: 40, Cols: 132}); err != nil {
		t.Fatal(err)
	}
	env := func(k string) string { return map[string]string{"TERM": "xterm"}[k] }
	if ok, width := terminal(tty, env); !ok || width != 132 {
		t.Errorf("pty: terminal = %v, width %d; want true, 132", ok, width)
	}
	if ok, _ := terminal(tty, func(string) string { return "dumb" }); ok {
		t.Error("TERM=dumb must not get a redrawn progress bar")
	}
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if ok, width := terminal(f, env); ok || width != 80 {
		t.Errorf("regular file: terminal = %v, %d", ok, width)
	}
	if ok, _ := terminal(&bytes.Buffer{}, env); ok {
		t.Error("a buffer is not a terminal")
	}
}
