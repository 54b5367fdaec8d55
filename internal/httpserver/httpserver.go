// Package httpserver owns how hypemand's HTTP listener faces the network:
// how long a client may take to send its request, how many connections it
// may hold, and what happens to a connection whose request was refused.
//
// Why it exists: the API has routes that must stay open for minutes (log
// follows, event streams, a 5-minute wait, exec and cp WebSockets, large
// registry uploads) next to ordinary JSON requests that should take
// milliseconds. net/http's one ReadTimeout cannot tell them apart (it would
// cut streams, or, set high, let 20,000 clients that each send one byte of a
// 100 KB body hold a descriptor each until the daemon runs out). So:
//
//   - Headers must arrive within ReadHeaderTimeout (net/http enforces it).
//   - A request body is read under a deadline that grows with what arrived:
//     BodyTimeout plus one second per BodyMinRate bytes, and never more than
//     BodyIdleTimeout after the handler asked for more. Small JSON bodies get
//     about BodyTimeout; a multi-GB registry upload works as long as it keeps
//     up the minimum rate. When the body has been read to its end the
//     deadline is lifted, so a long handler (a create that boots a VM, a
//     wait) is not cut by it, and the write timeout starts over, so the
//     answer to a long upload can be written. Requests without a body
//     (every stream and WebSocket) never get a read deadline from here.
//   - A request answered with an error before its body was read (401, 403,
//     413, ...) gets `Connection: close` and its connection is closed once
//     the answer is out, instead of net/http waiting to drain up to 256 KB
//     of a body that may never come.
//   - Listen caps open connections in total and per client IP. Connections
//     over a cap are answered 503 and closed at once (not queued: a queue
//     full of attackers would also keep /health out).
//
// Timeouts and caps come from the daemon's configuration (internal/config).
package httpserver

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// Limits configure the server. A zero duration or count disables that limit.
type Limits struct {
	ReadHeaderTimeout time.Duration
	// BodyTimeout is the time a request body gets before BodyMinRate counts.
	BodyTimeout time.Duration
	// BodyMinRate (bytes/s) extends the body deadline by one second per
	// BodyMinRate bytes received.
	BodyMinRate int64
	// BodyIdleTimeout bounds each wait for more body bytes.
	BodyIdleTimeout time.Duration
	// WriteTimeout bounds writing an ordinary response; the API lifts it for
	// streams.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long.
	IdleTimeout time.Duration
	// MaxConns and MaxConnsPerIP cap open connections.
	MaxConns      int
	MaxConnsPerIP int
}

// NewServer returns an http.Server for h with the limits applied: the header
// timeout, write and idle timeouts on the server, and the body deadlines and
// early-close rule around h. Serve it on a listener from Listen.
func NewServer(h http.Handler, l Limits, logger *slog.Logger) *http.Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           GuardBodies(h, l),
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		WriteTimeout:      l.WriteTimeout,
		IdleTimeout:       l.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
}

// ErrBodyTimeout is returned by a guarded request body whose client did not
// send it in time. It wraps os.ErrDeadlineExceeded.
var ErrBodyTimeout = fmt.Errorf("request body not received in time: %w", os.ErrDeadlineExceeded)

// GuardBodies applies the body deadlines and the early-close rule to h.
func GuardBodies(h http.Handler, l Limits) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			h.ServeHTTP(w, r)
			return
		}
		b := &guardedBody{src: r.Body, rc: http.NewResponseController(w), lim: l, start: time.Now()}
		b.arm(b.start)
		r2 := r.WithContext(r.Context())
		r2.Body = b
		h.ServeHTTP(&earlyCloseWriter{ResponseWriter: w, body: b}, r2)
		if !b.finished() {
			// Whatever net/http would still read of this body (to reuse the
			// connection) fails at once; the connection is closed instead.
			_ = b.rc.SetReadDeadline(time.Now())
		}
	})
}

// guardedBody reads a request body under the growing deadline.
type guardedBody struct {
	src   io.ReadCloser
	rc    *http.ResponseController
	lim   Limits
	start time.Time

	mu  sync.Mutex
	n   int64
	eof bool
}

// arm sets the read deadline for the next read, asked for at now.
func (b *guardedBody) arm(now time.Time) {
	var dl time.Time
	if b.lim.BodyTimeout > 0 {
		dl = b.start.Add(b.lim.BodyTimeout)
		if b.lim.BodyMinRate > 0 {
			dl = dl.Add(time.Duration(float64(b.n) / float64(b.lim.BodyMinRate) * float64(time.Second)))
		}
	}
	if b.lim.BodyIdleTimeout > 0 {
		if idle := now.Add(b.lim.BodyIdleTimeout); dl.IsZero() || idle.Before(dl) {
			dl = idle
		}
	}
	_ = b.rc.SetReadDeadline(dl)
}

func (b *guardedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.eof {
		return 0, io.EOF
	}
	b.arm(time.Now())
	n, err := b.src.Read(p)
	b.n += int64(n)
	switch {
	case errors.Is(err, io.EOF):
		b.eof = true
		// The body is in: lift the deadline so the handler (and the
		// server's wait for the next request) are not bound by it, and
		// count the write timeout from now, so the answer to an upload
		// that took longer than WriteTimeout can still be written.
		_ = b.rc.SetReadDeadline(time.Time{})
		if b.lim.WriteTimeout > 0 {
			_ = b.rc.SetWriteDeadline(time.Now().Add(b.lim.WriteTimeout))
		}
	case err != nil && isTimeout(err):
		err = ErrBodyTimeout
	}
	return n, err
}

func (b *guardedBody) Close() error { return b.src.Close() }

func (b *guardedBody) finished() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// earlyCloseWriter adds `Connection: close` to an error answered before the
// request body was read to its end.
type earlyCloseWriter struct {
	http.ResponseWriter
	body  *guardedBody
	wrote bool
}

func (w *earlyCloseWriter) WriteHeader(code int) {
	if !w.wrote && code >= 200 {
		w.wrote = true
		if code >= 400 && !w.body.finished() {
			w.Header().Set("Connection", "close")
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *earlyCloseWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *earlyCloseWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (w *earlyCloseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// RaiseNoFileLimit raises the soft RLIMIT_NOFILE to the hard limit (the Go
// runtime usually has already) and returns the resulting soft limit.
func RaiseNoFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit NOFILE: %w", err)
	}
	if rl.Cur < rl.Max {
		want := rl
		want.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return rl.Cur, fmt.Errorf("setrlimit NOFILE to %d: %w", rl.Max, err)
		}
		rl = want
	}
	return rl.Cur, nil
}
