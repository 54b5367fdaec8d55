// Package e2e runs the real hypemand binary for end-to-end tests: built once
// per test process, started on a free loopback port with a fresh data dir,
// killable with SIGKILL and restartable on the same data dir.
//
// Why a subprocess and not an in-process server: the acceptance tests kill
// the daemon with -9 while VMs run and expect the next daemon to re-adopt
// them. Only a real process dying proves that nothing depends on in-memory
// state or on the daemon being a VM's parent.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"hypeman/internal/auth"
	"hypeman/internal/testutil"
	"hypeman/internal/testutil/tier"
)

// goBuild builds one main package of this repository once per test
// process.
type goBuild struct {
	once sync.Once
	path string
	err  error
}

var (
	daemonBuild  goBuild
	cliBuild     goBuild
	kubeletBuild goBuild
)

func (b *goBuild) get(t testing.TB, pkg, name string) string {
	t.Helper()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", name+"-e2e-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", b.path, pkg)
		cmd.Dir = testutil.RepoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("%v: %s", err, out)
		}
	})
	if b.err != nil {
		t.Fatalf("build %s: %v", name, b.err)
	}
	return b.path
}

// Binary builds hypemand once per test process.
func Binary(t testing.TB) string {
	t.Helper()
	return daemonBuild.get(t, "./cmd/hypemand", "hypemand")
}

// CLIBinary builds our CLI (cmd/hypeman) once per test process, for tests
// that run it as a separate process the way users do (timings, or side by
// side with another client's binary).
func CLIBinary(t testing.TB) string {
	t.Helper()
	return cliBuild.get(t, "./cmd/hypeman", "hypeman")
}

// KubeletBinary builds hypeman-kubelet (cmd/hypeman-kubelet, the
// Kubernetes node provider) once per test process, for the cluster tests in
// test/k8s that run one beside each hypemand.
func KubeletBinary(t testing.TB) string {
	t.Helper()
	return kubeletBuild.get(t, "./cmd/hypeman-kubelet", "hypeman-kubelet")
}

// Server is one hypemand process (and its successors after Restart).
type Server struct {
	t       testing.TB
	DataDir string
	Addr    string
	BaseURL string
	Token   string
	Extra   []string // extra flags
	// Env is added to the daemon's environment at each (re)start.
	Env []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{}
}

// Start launches hypemand with a fresh data dir and waits for /health. The
// daemon boots VMs: the test is skipped in the unit tier (package tier).
func Start(t testing.TB, extraFlags ...string) *Server {
	t.Helper()
	tier.VM(t)
	testutil.RequireTools(t, "qemu-system-x86_64", "mkfs.erofs", "mkfs.ext4")
	testutil.Kernel(t)
	s := &Server{t: t, DataDir: t.TempDir(), Extra: extraFlags}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = ln.Addr().String()
	ln.Close()
	s.BaseURL = "http://" + s.Addr
	s.start()
	secret, err := auth.LoadSecret(filepath.Join(s.DataDir, "jwt-secret"))
	if err != nil {
		t.Fatal(err)
	}
	s.Token, err = auth.Mint(secret, auth.MintOptions{UserID: "e2e", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.cleanup)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	args := append([]string{
		"--data-dir", s.DataDir, "--listen", s.Addr, "--metrics-listen", "",
		"--kernel-dir", testutil.KernelDir(), "--init-binary", testutil.InitBinary(s.t),
		// Tests never touch the host's network namespace: networking is
		// off unless a test passes --network-mode with its own netns.
		"--network-mode", "none",
		// The tests' registries are in-process, on loopback.
		"--registries-allow", "127.0.0.0/8",
		// No background template builds (VMs the tests do not own).
		"--warm-enabled", "false",
	}, s.Extra...)
	cmd := exec.Command(Binary(s.t), args...)
	cmd.Env = append(os.Environ(), s.Env...)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.logs, s.done = cmd, logs, done
	s.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			s.t.Fatalf("hypemand exited at start:\n%s", logs.String())
		default:
		}
		if resp, err := http.Get(s.BaseURL + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("hypemand not healthy after 60s:\n%s", logs.String())
}

// Kill sends SIGKILL to the daemon (VMs keep running) and waits for it.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Restart starts a new daemon on the same data dir and port.
func (s *Server) Restart() { s.start() }

// Logs returns the current daemon's output.
func (s *Server) Logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

// cleanup deletes every instance (killing VMs) and stops the daemon.
func (s *Server) cleanup() {
	var list []map[string]any
	if st, _ := s.JSON("GET", "/instances", nil, &list); st == 200 {
		for _, in := range list {
			s.Do("DELETE", "/instances/"+in["id"].(string), nil)
		}
	}
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-done
	}
	if s.t.Failed() {
		s.t.Logf("hypemand output:\n%s", s.Logs())
	}
}

// Do sends an authenticated request; body (if not nil) is JSON-encoded.
// A transport error fails the test (call it from the test goroutine).
func (s *Server) Do(method, path string, body any) (int, []byte) {
	s.t.Helper()
	st, out, err := s.TryDo(method, path, body)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	return st, out
}

// TryDo is Do returning transport errors instead of failing the test: for
// requests that are expected to die with the daemon, from any goroutine.
func (s *Server) TryDo(method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.BaseURL+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+s.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out, nil
}

// JSON is Do plus decoding the response into out (when status < 300).
func (s *Server) JSON(method, path string, body, out any) (int, []byte) {
	s.t.Helper()
	st, b := s.Do(method, path, body)
	if st < 300 && out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			s.t.Fatalf("%s %s: decode %q: %v", method, path, b, err)
		}
	}
	return st, b
}

// SSE opens an authenticated event stream and returns a channel of data
// payloads (one per event); it closes when ctx ends or the stream does.
func (s *Server) SSE(ctx context.Context, path string) <-chan string {
	s.t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", s.BaseURL+path, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.Token)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		s.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	ch := make(chan string, 1024)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var data []string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if data != nil {
					select {
					case ch <- strings.Join(data, "\n"):
					case <-ctx.Done():
						return
					}
					data = nil
				}
			case strings.HasPrefix(line, "data:"):
				data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
			}
		}
	}()
	return ch
}

// LogLines opens a log stream (GET /instances/{id}/logs?...) and returns
// its lines: every event's data is the line as a JSON string (data that is
// not one comes through marked, so a test sees it).
func (s *Server) LogLines(ctx context.Context, path string) <-chan string {
	s.t.Helper()
	events := s.SSE(ctx, path)
	out := make(chan string, 1024)
	go func() {
		defer close(out)
		for d := range events {
			var line string
			if err := json.Unmarshal([]byte(d), &line); err != nil {
				line = "<not a JSON string: " + d + ">"
			}
			select {
			case out <- line:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// syncBuffer is a bytes.Buffer safe for the daemon's output goroutine and
// test readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// MetricsURL returns the /metrics URL of the current daemon's metrics
// listener, read from its "metrics listening" log line. Start the server
// with "--metrics-listen", "127.0.0.1:0" (e2e disables metrics otherwise).
func (s *Server) MetricsURL() string {
	s.t.Helper()
	if !s.WaitLog(`msg="metrics listening"`, 30*time.Second) {
		s.t.Fatalf("no metrics listener (start with --metrics-listen 127.0.0.1:0):\n%s", s.Logs())
	}
	for _, line := range strings.Split(s.Logs(), "\n") {
		if !strings.Contains(line, `msg="metrics listening"`) {
			continue
		}
		for _, f := range strings.Fields(line) {
			if addr, ok := strings.CutPrefix(f, "addr="); ok {
				return "http://" + addr + "/metrics"
			}
		}
	}
	s.t.Fatalf("metrics log line has no addr:\n%s", s.Logs())
	return ""
}

// WaitLog waits until the daemon's output contains s.
func (s *Server) WaitLog(sub string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(s.Logs(), sub) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// PushImage pushes img to the daemon's built-in registry as repoTag
// ("apps/web:v1") the way hypeman's CLI does (`hypeman push`: anonymous
// registry auth, the API token as a Bearer header on every request) and
// waits until the image is ready to run.
func (s *Server) PushImage(repoTag string, img v1.Image) {
	s.t.Helper()
	ref, err := name.ParseReference(s.Addr+"/"+repoTag, name.Insecure)
	if err != nil {
		s.t.Fatal(err)
	}
	tr := bearerTransport{base: http.DefaultTransport, token: s.Token}
	if err := remote.Write(ref, img, remote.WithAuth(authn.Anonymous), remote.WithTransport(tr)); err != nil {
		s.t.Fatalf("push %s: %v", repoTag, err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var im struct {
			Status string `json:"status"`
		}
		st, body := s.JSON("GET", "/images/"+url.PathEscape(repoTag), nil, &im)
		switch {
		case st == 200 && im.Status == "ready":
			return
		case im.Status == "failed":
			s.t.Fatalf("pushed image %s failed to convert: %s", repoTag, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("pushed image %s not ready after 2 minutes", repoTag)
}

// bearerTransport sets the Authorization header on every request.
type bearerTransport struct {
	base  http.RoundTripper
	token string
}

func (b bearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(req)
}
