package httpserver

import (
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// overCapBody is the answer to a connection refused for being over a cap.
const overCapBody = `{"code":"unavailable","message":"too many connections; retry later"}` + "\n"

func overCapResponse() []byte {
	return []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n" +
		"Retry-After: 1\r\nContent-Length: " + strconv.Itoa(len(overCapBody)) + "\r\n\r\n" + overCapBody)
}

// Listen wraps ln so that at most l.MaxConns connections are open at once,
// and at most l.MaxConnsPerIP from one client IP. A connection over a cap
// is answered 503 and closed right away, so Accept keeps serving everyone
// else (a limit that queued connections would let a flood lock out the
// health check too).
func Listen(ln net.Listener, l Limits, logger *slog.Logger) net.Listener {
	if l.MaxConns <= 0 && l.MaxConnsPerIP <= 0 {
		return ln
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &capListener{Listener: ln, max: l.MaxConns, perIP: l.MaxConnsPerIP, log: logger, byIP: map[string]int{}}
}

type capListener struct {
	net.Listener
	max, perIP int
	log        *slog.Logger

	mu       sync.Mutex
	open     int
	byIP     map[string]int
	refused  atomic.Int64
	lastWarn time.Time
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c)
		if l.admit(ip) {
			return &countedConn{Conn: c, l: l, ip: ip}, nil
		}
		l.refuse(c, ip)
	}
}

func (l *capListener) admit(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if (l.max > 0 && l.open >= l.max) || (l.perIP > 0 && l.byIP[ip] >= l.perIP) {
		return false
	}
	l.open++
	l.byIP[ip]++
	return true
}

func (l *capListener) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byIP[ip]--; l.byIP[ip] <= 0 {
		delete(l.byIP, ip)
	}
}

// refuse answers 503 without reading the request (a fresh socket's send
// buffer takes it without blocking; the deadline guards the odd case) and
// closes. Warnings are logged at most once a second.
func (l *capListener) refuse(c net.Conn, ip string) {
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Write(overCapResponse())
	_ = c.Close()
	n := l.refused.Add(1)
	l.mu.Lock()
	warn := time.Since(l.lastWarn) >= time.Second
	if warn {
		l.lastWarn = time.Now()
	}
	open, fromIP := l.open, l.byIP[ip]
	l.mu.Unlock()
	if warn {
		l.log.Warn("connection refused: over the connection cap", "client", ip, "open", open, "open_from_client", fromIP,
			"max", l.max, "max_per_ip", l.perIP, "refused_total", n)
	}
}

// Refused reports how many connections a listener from Listen has refused
// (0 for any other listener).
func Refused(ln net.Listener) int64 {
	if cl, ok := ln.(*capListener); ok {
		return cl.refused.Load()
	}
	return 0
}

func remoteIP(c net.Conn) string {
	switch a := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		return a.IP.String()
	case nil:
		return ""
	default:
		host, _, err := net.SplitHostPort(a.String())
		if err != nil {
			return a.String()
		}
		return host
	}
}

// countedConn gives its slot back when closed (once).
type countedConn struct {
	net.Conn
	l    *capListener
	ip   string
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}
