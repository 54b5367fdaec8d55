package httpserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serve runs h under limits on a loopback port and returns its address.
func serve(t *testing.T, h http.Handler, l Limits) (string, net.Listener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	capped := Listen(ln, l, nil)
	srv := NewServer(h, l, nil)
	go srv.Serve(capped)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = srv.Close()
	})
	return ln.Addr().String(), capped
}

func dial(t *testing.T, addr string, local string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readResponse reads one response from c within d.
func readResponse(t *testing.T, c net.Conn, br *bufio.Reader, d time.Duration) *http.Response {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response within %v: %v", d, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// closedWithin fails unless the server closes c within d.
func closedWithin(t *testing.T, c net.Conn, br *bufio.Reader, d time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := br.ReadByte()
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection not closed by the server within %v: %v", d, err)
	}
}

// unauthorized answers 401 without reading the body (the API's auth path).
var unauthorized = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		_, _ = io.WriteString(w, `{"status":"ok"}`)
		return
	}
	w.Header().Set("WWW-Authenticate", "Bearer")
	http.Error(w, "missing bearer token", http.StatusUnauthorized)
})

const partialPost = "POST /instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"

// TestEarlyRejectClosesConnection: a 401 to a request whose body has not
// arrived closes the connection at once. Plain net/http answers, then waits
// to drain the rest of the body (here: forever).
func TestEarlyRejectClosesConnection(t *testing.T) {
	addr, _ := serve(t, unauthorized, Limits{ReadHeaderTimeout: 10 * time.Second, BodyTimeout: time.Minute, BodyIdleTimeout: time.Minute})
	c := dial(t, addr, "")
	if _, err := io.WriteString(c, partialPost); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp := readResponse(t, c, br, 5*time.Second)
	if resp.StatusCode != 401 || !resp.Close {
		t.Fatalf("status %d, Connection: close %v", resp.StatusCode, resp.Close)
	}
	closedWithin(t, c, br, 5*time.Second)
}

// TestSlowBodyIsCut: a body that stops arriving is cut by the idle
// deadline; the handler sees ErrBodyTimeout and the connection is closed.
func TestSlowBodyIsCut(t *testing.T) {
	got := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		got <- err
		http.Error(w, "slow", http.StatusRequestTimeout)
	})
	addr, _ := serve(t, h, Limits{BodyTimeout: 10 * time.Second, BodyIdleTimeout: 200 * time.Millisecond})
	c := dial(t, addr, "")
	start := time.Now()
	io.WriteString(c, partialPost)
	select {
	case err := <-got:
		if !errors.Is(err, ErrBodyTimeout) || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("handler read error %v, want ErrBodyTimeout", err)
		}
		t.Logf("stalled body cut after %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("stalled body not cut within 5s")
	}
	br := bufio.NewReader(c)
	if resp := readResponse(t, c, br, 5*time.Second); resp.StatusCode != 408 || !resp.Close {
		t.Fatalf("status %d close %v", resp.StatusCode, resp.Close)
	}
	closedWithin(t, c, br, 5*time.Second)
}

// TestTrickleBodyIsCutByTotal: a client sending a byte now and then (never
// idle long enough for the idle deadline) is cut when it falls behind
// BodyTimeout + received/BodyMinRate.
func TestTrickleBodyIsCutByTotal(t *testing.T) {
	got := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		got <- err
	})
	addr, _ := serve(t, h, Limits{BodyTimeout: 300 * time.Millisecond, BodyMinRate: 1 << 20, BodyIdleTimeout: time.Second})
	c := dial(t, addr, "")
	io.WriteString(c, partialPost)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				if _, err := io.WriteString(c, " "); err != nil {
					return
				}
			}
		}
	}()
	select {
	case err := <-got:
		if !errors.Is(err, ErrBodyTimeout) {
			t.Fatalf("handler read error %v, want ErrBodyTimeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("trickling body not cut within 5s")
	}
}

// TestSteadyUploadOutlivesBodyTimeout: an upload that keeps the minimum
// rate is read to the end however long it takes, and the handler runs on
// after the body deadline would have passed (its context is not canceled).
func TestSteadyUploadOutlivesBodyTimeout(t *testing.T) {
	type result struct {
		n      int
		err    error
		ctxErr error
	}
	got := make(chan result, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		// A handler that works long after its body arrived (a create that
		// boots a VM) is not cut either.
		time.Sleep(400 * time.Millisecond)
		got <- result{len(b), err, r.Context().Err()}
		fmt.Fprintf(w, "%d", len(b))
	})
	l := Limits{BodyTimeout: 200 * time.Millisecond, BodyMinRate: 16 << 10, BodyIdleTimeout: 300 * time.Millisecond, WriteTimeout: 600 * time.Millisecond}
	addr, _ := serve(t, h, l)
	const chunk, chunks = 4 << 10, 20 // 80 KB over ~1 s: 80 KB/s, above the 16 KB/s minimum
	c := dial(t, addr, "")
	fmt.Fprintf(c, "PUT /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", chunk*chunks)
	start := time.Now()
	for range chunks {
		if _, err := c.Write([]byte(strings.Repeat("a", chunk))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r := <-got
	if r.err != nil || r.n != chunk*chunks || r.ctxErr != nil {
		t.Fatalf("upload: %d bytes, err %v, ctx %v", r.n, r.err, r.ctxErr)
	}
	if el := time.Since(start); el < 3*l.BodyTimeout {
		t.Fatalf("upload took %v; the test needs it to outlast the body timeout", el)
	}
	if resp := readResponse(t, c, bufio.NewReader(c), 5*time.Second); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("status %d close %v", resp.StatusCode, resp.Close)
	}
}

// TestStreamsHaveNoBodyDeadline: a response streamed for much longer than
// every body limit reaches the client whole.
func TestStreamsHaveNoBodyDeadline(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range 10 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			http.NewResponseController(w).Flush()
			select {
			case <-time.After(60 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	})
	l := Limits{ReadHeaderTimeout: 100 * time.Millisecond, BodyTimeout: 50 * time.Millisecond, BodyIdleTimeout: 50 * time.Millisecond}
	addr, _ := serve(t, h, l)
	resp, err := http.Get("http://" + addr + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || strings.Count(string(b), "data:") != 10 {
		t.Fatalf("stream cut: %q %v", b, err)
	}
}

// TestConnectionCaps: connections over the total or per-IP cap get a 503
// at once; the others are served; a freed slot is reused.
func TestConnectionCaps(t *testing.T) {
	addr, ln := serve(t, unauthorized, Limits{MaxConns: 5, MaxConnsPerIP: 3})
	get := func(c net.Conn) int {
		t.Helper()
		io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
		return readResponse(t, c, bufio.NewReader(c), 5*time.Second).StatusCode
	}
	var held []net.Conn
	for range 3 {
		c := dial(t, addr, "127.0.0.1")
		if st := get(c); st != 200 {
			t.Fatalf("under the caps: %d", st)
		}
		held = append(held, c)
	}
	if st := get(dial(t, addr, "127.0.0.1")); st != 503 {
		t.Fatalf("4th connection from one IP: %d, want 503", st)
	}
	for range 2 {
		if st := get(dial(t, addr, "127.0.0.2")); st != 200 {
			t.Fatalf("other IP under the caps: %d", st)
		}
	}
	// 5 open now: the test keeps every accepted connection open.
	if st := get(dial(t, addr, "127.0.0.3")); st != 503 {
		t.Fatalf("6th connection in total: %d, want 503", st)
	}
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := dial(t, addr, "127.0.0.1")
		st := get(c)
		if st == 200 {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("a closed connection's slot was not given back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := Refused(ln); n < 2 {
		t.Fatalf("refused count %d", n)
	}
}

func TestRaiseNoFileLimit(t *testing.T) {
	cur, err := RaiseNoFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if cur != rl.Max || rl.Cur != rl.Max {
		t.Fatalf("soft limit %d (returned %d), hard %d", rl.Cur, cur, rl.Max)
	}
}
