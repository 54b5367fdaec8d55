// Package ingress publishes instance ports on host ports through an HTTP
// reverse proxy inside the daemon (the hypeman "ingress" resource).
//
// Why it is shaped this way:
//
//   - Every rule is HTTP, routed by port and Host header, proxied with
//     net/http/httputil.ReverseProxy (keep-alive pooling, X-Forwarded-*,
//     WebSocket upgrades, streaming). A rule without hostname is the port's
//     catch-all, so one port can carry hostname routes and a default at the
//     same time, and a request for a stopped instance gets a JSON 502 in the
//     API's error shape. With a Waker (wake.go), a request for an instance
//     in Standby (or Stopped, when its rule sets wake_stopped) is held
//     while the instance wakes, then proxied. Raw TCP publishing is not
//     offered: it would make a port exclusive to one target and cannot
//     answer errors; hypeman's ingress (Caddy) is HTTP as well.
//   - Targets are instance names resolved on every request through a small
//     Resolver the daemon implements, so an instance that restarts with
//     another address (or another networking mode) needs no ingress update.
//   - Connections to guests go through a dial function from the daemon (the
//     network manager's DialContext), so they are made inside the network
//     namespace where guest addresses live.
//   - Safe by default: listeners bind loopback unless the operator names
//     another address (publishing to a network is a deliberate act), and a
//     rule may not take a privileged host port (below 1024: ssh, DNS, ...)
//     unless the operator listed it in Config.AllowedPrivilegedPorts. The
//     rule is a validation error (400 naming rules[i].match.port), checked
//     here so every caller gets it. Where guests could reach the listeners,
//     a Publisher (the network manager's firewall) is told the ports, since
//     guests are otherwise cut off from the host.
//   - One listener per host port, opened when the first rule needs it and
//     closed with the last one. State (ingresses.json) is written atomically
//     before a change takes effect and restored by New; a port that cannot
//     be bound at restore is logged and reported by ListenErrors instead of
//     failing the daemon.
package ingress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hypeman/internal/fsutil"
	"hypeman/internal/ids"
)

// StateFile is the name of the ingress database inside Config.StateDir.
const StateFile = "ingresses.json"

// DefaultListenAddress is where listeners bind when Config.ListenAddress is
// empty: loopback, so nothing is published to a network by default.
const DefaultListenAddress = "127.0.0.1"

// DefaultAllowedPrivilegedPorts are the ports below 1024 a rule may use when
// Config.AllowedPrivilegedPorts is nil: HTTP and HTTPS, what an HTTP
// ingress is for (80 is also a rule's default port).
var DefaultAllowedPrivilegedPorts = []int{80, 443}

// PrivilegedPortsSetting is the daemon setting that lists the privileged
// ports rules may use (named in the error that refuses one).
const PrivilegedPortsSetting = "ingress_allowed_privileged_ports"

// Publisher opens the host ports ingress listens on to guests (the network
// firewall closes the host to them otherwise). Each call gives the complete
// set of ports; listen is Config.ListenAddress (resolved).
type Publisher interface {
	PublishPorts(ctx context.Context, listen string, ports []int) error
}

// Config configures a Manager.
type Config struct {
	// StateDir holds ingresses.json (required).
	StateDir string
	// ListenAddress is the host IP listeners bind to (default
	// DefaultListenAddress, loopback); 0.0.0.0 means every address.
	ListenAddress string
	// AllowedPrivilegedPorts lists the host ports below 1024 that rules may
	// use; nil means DefaultAllowedPrivilegedPorts, empty means none.
	AllowedPrivilegedPorts []int
	// Publisher, when set, is told the listening ports whenever they
	// change. Set it only when guests share the listeners' namespace.
	Publisher Publisher
	// DialContext connects to the address the Resolver returned. nil uses a
	// plain net.Dialer (the daemon's namespace).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialTimeout bounds connecting to a guest (default 10s).
	DialTimeout time.Duration
	// Waker, when set, wakes a target the resolver cannot reach because it
	// is asleep (see wake.go); nil answers 502 as for any target that is
	// not running.
	Waker Waker
	// WakeTimeout bounds how long a request is held while its target
	// wakes (default DefaultWakeTimeout).
	WakeTimeout time.Duration
	// WakeMetrics, when set, observes every wake.
	WakeMetrics WakeMetrics
}

// Manager owns the ingresses and their listeners. Safe for concurrent use.
type Manager struct {
	cfg      Config
	path     string
	resolver Resolver
	log      *slog.Logger
	proxy    *httputil.ReverseProxy
	tr       *http.Transport
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)

	routes atomic.Pointer[routeTable]
	wake   *wakeFlights // nil without a Waker

	mu         sync.Mutex
	ingresses  []*Ingress
	listeners  map[int]*listener
	listenErrs map[int]error
	closed     bool
}

type listener struct {
	ln  net.Listener
	srv *http.Server
}

// stateVersion is the ingress state file format this build writes and the
// newest it reads (a file without "version" is version 1).
const stateVersion = 1

type stateFile struct {
	Version   int        `json:"version"`
	Ingresses []*Ingress `json:"ingresses"`
}

// New loads the persisted ingresses and starts their listeners.
func New(ctx context.Context, cfg Config, resolver Resolver, logger *slog.Logger) (*Manager, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("ingress: state dir is required")
	}
	if resolver == nil {
		return nil, errors.New("ingress: resolver is required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.WakeTimeout <= 0 {
		cfg.WakeTimeout = DefaultWakeTimeout
	}
	if cfg.ListenAddress == "" {
		cfg.ListenAddress = DefaultListenAddress
	}
	if cfg.AllowedPrivilegedPorts == nil {
		cfg.AllowedPrivilegedPorts = DefaultAllowedPrivilegedPorts
	}
	for _, p := range cfg.AllowedPrivilegedPorts {
		if p < 1 || p >= 1024 {
			return nil, fmt.Errorf("ingress: allowed privileged port %d is not in 1-1023", p)
		}
	}
	dial := cfg.DialContext
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("ingress state dir: %w", err)
	}
	m := &Manager{
		cfg:        cfg,
		path:       filepath.Join(cfg.StateDir, StateFile),
		resolver:   resolver,
		dial:       dial,
		log:        logger.With("component", "ingress"),
		listeners:  map[int]*listener{},
		listenErrs: map[int]error{},
	}
	if cfg.Waker != nil {
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		m.wake = &wakeFlights{waker: cfg.Waker, metrics: cfg.WakeMetrics, timeout: cfg.WakeTimeout, log: m.log,
			ctx: wctx, cancel: cancel, flights: map[flightKey]*flight{}}
	}
	m.tr = &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
			defer cancel()
			return dial(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 16,
		// A pooled connection to a guest is an established inbound TCP
		// connection to it, which auto-standby counts as activity: idle
		// ones are closed after a second so the last request's connection
		// does not keep an instance awake (a new connect on the bridge
		// costs well under a millisecond).
		IdleConnTimeout:       time.Second,
		ExpectContinueTimeout: time.Second,
	}
	m.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := pr.In.Context().Value(targetKey{}).(*resolved)
			pr.SetURL(&url.URL{Scheme: "http", Host: t.addr})
			pr.Out.Host = pr.In.Host // the guest sees the Host the client asked for
			pr.SetXForwarded()
		},
		Transport: m.tr,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			t, _ := r.Context().Value(targetKey{}).(*resolved)
			msg := fmt.Sprintf("upstream error: %v", err)
			if t != nil {
				msg = fmt.Sprintf("instance %q port %d (%s): %v", t.rule.Target.Instance, t.rule.Target.Port, t.addr, err)
			}
			m.log.Debug("proxy error", "error", msg)
			writeError(w, http.StatusBadGateway, "bad_gateway", msg)
		},
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}

	var st stateFile
	switch _, err := fsutil.ReadVersionedJSON(m.path, stateVersion, &st); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		// An unknown version is a *fsutil.VersionError naming the file.
		if m.wake != nil {
			m.wake.cancel()
		}
		return nil, fmt.Errorf("ingress state: %w", err)
	}
	m.ingresses = st.Ingresses
	m.routes.Store(buildTable(m.ingresses))
	for _, port := range portsOf(m.ingresses) {
		if !m.portAllowed(port) {
			// Kept: it was allowed when created; the operator decides.
			m.log.Warn("restored ingress uses a privileged port that is no longer allowed", "port", port, "setting", PrivilegedPortsSetting)
		}
		ln, err := m.listen(ctx, port)
		if err != nil {
			m.listenErrs[port] = err
			m.log.Error("ingress port not available", "port", port, "error", err)
			continue
		}
		m.serve(port, ln)
	}
	m.publish(ctx)
	m.log.Info("ingresses restored", "count", len(m.ingresses), "listeners", len(m.listeners), "address", cfg.ListenAddress)
	return m, nil
}

// portAllowed reports whether rules may listen on a host port: 1024 and
// up, or a privileged port the configuration lists.
func (m *Manager) portAllowed(port int) bool {
	return port >= 1024 || slices.Contains(m.cfg.AllowedPrivilegedPorts, port)
}

// checkPrivileged refuses rule i's host port when it is not allowed.
func (m *Manager) checkPrivileged(i, port int) error {
	if m.portAllowed(port) {
		return nil
	}
	return fmt.Errorf("%w: rules[%d].match.port: %d is a privileged port (below 1024); allowed: %v; "+
		"use a port of 1024 or more, or have the operator add it to the daemon setting %s",
		ErrInvalid, i, port, m.cfg.AllowedPrivilegedPorts, PrivilegedPortsSetting)
}

// publish tells the Publisher the ports listened on; m.mu is held or m is
// not shared yet. A failure leaves guests without access to the ports
// (the safe side) and is logged: the listeners themselves work.
func (m *Manager) publish(ctx context.Context) {
	if m.cfg.Publisher == nil {
		return
	}
	ports := make([]int, 0, len(m.listeners))
	for p := range m.listeners {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	if err := m.cfg.Publisher.PublishPorts(context.WithoutCancel(ctx), m.cfg.ListenAddress, ports); err != nil {
		m.log.Error("cannot open ingress ports to guests", "ports", ports, "error", err)
	}
}

// Create validates req, opens the listeners it needs, persists and
// activates it.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (*Ingress, error) {
	rules, err := normalize(req)
	if err != nil {
		return nil, err
	}
	for i, r := range rules {
		if err := m.checkPrivileged(i, r.Match.Port); err != nil {
			m.log.Info("ingress refused: privileged host port", "name", req.Name, "port", r.Match.Port, "setting", PrivilegedPortsSetting)
			return nil, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errors.New("ingress manager closed")
	}
	taken := map[routeKey]string{}
	for _, ing := range m.ingresses {
		if ing.Name == req.Name {
			return nil, fmt.Errorf("%w: an ingress named %q exists", ErrConflict, req.Name)
		}
		for _, r := range ing.Rules {
			taken[routeKey{r.Match.Port, routeHost(r.Match.Hostname)}] = ing.Name
		}
	}
	for _, r := range rules {
		k := routeKey{r.Match.Port, routeHost(r.Match.Hostname)}
		if other, ok := taken[k]; ok {
			return nil, fmt.Errorf("%w: %s is already routed by ingress %q", ErrConflict, k, other)
		}
	}
	opened := map[int]net.Listener{}
	closeOpened := func() {
		for _, ln := range opened {
			ln.Close()
		}
	}
	for _, r := range rules {
		p := r.Match.Port
		if m.listeners[p] != nil || opened[p] != nil {
			continue
		}
		ln, err := m.listen(ctx, p)
		if err != nil {
			closeOpened()
			return nil, err
		}
		opened[p] = ln
	}
	ing := &Ingress{ID: ids.New(), Name: req.Name, Tags: maps.Clone(req.Tags), Rules: rules, CreatedAt: time.Now().UTC()}
	next := append(append([]*Ingress(nil), m.ingresses...), ing)
	if err := m.save(next); err != nil {
		closeOpened()
		return nil, err
	}
	m.ingresses = next
	m.routes.Store(buildTable(next))
	for p, ln := range opened {
		delete(m.listenErrs, p)
		m.serve(p, ln)
	}
	if len(opened) > 0 {
		m.publish(ctx)
	}
	m.log.Info("ingress created", "name", ing.Name, "id", ing.ID, "rules", len(rules))
	return cloneIngress(ing), nil
}

// Get returns an ingress by ID or name.
func (m *Manager) Get(ctx context.Context, idOrName string) (*Ingress, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := m.find(idOrName)
	if i < 0 {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, idOrName)
	}
	return cloneIngress(m.ingresses[i]), nil
}

// List returns all ingresses, oldest first.
func (m *Manager) List(ctx context.Context) ([]*Ingress, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Ingress, len(m.ingresses))
	for i, ing := range m.ingresses {
		out[i] = cloneIngress(ing)
	}
	return out, nil
}

// Delete removes an ingress by ID or name and closes the listeners no other
// ingress uses. In-flight requests on a closed port get up to 2 s to end.
func (m *Manager) Delete(ctx context.Context, idOrName string) error {
	m.mu.Lock()
	i := m.find(idOrName)
	if i < 0 {
		m.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNotFound, idOrName)
	}
	gone := m.ingresses[i]
	next := append(append([]*Ingress(nil), m.ingresses[:i]...), m.ingresses[i+1:]...)
	if err := m.save(next); err != nil {
		m.mu.Unlock()
		return err
	}
	m.ingresses = next
	m.routes.Store(buildTable(next))
	still := map[int]bool{}
	for _, p := range portsOf(next) {
		still[p] = true
	}
	var stop []*listener
	for _, p := range portsOf([]*Ingress{gone}) {
		if still[p] {
			continue
		}
		delete(m.listenErrs, p)
		if l := m.listeners[p]; l != nil {
			l.ln.Close() // free the port now: a Create may want it right away
			stop = append(stop, l)
			delete(m.listeners, p)
		}
	}
	if len(stop) > 0 {
		m.publish(ctx)
	}
	m.mu.Unlock()
	m.log.Info("ingress deleted", "name", gone.Name, "id", gone.ID)
	shutdown(ctx, stop)
	return nil
}

// ListenErrors reports ports whose listener could not be opened when the
// state was restored (their rules are kept and start working when a later
// Create binds the port).
func (m *Manager) ListenErrors() map[int]error {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[int]error, len(m.listenErrs))
	for p, err := range m.listenErrs {
		out[p] = err
	}
	return out
}

// Ports lists the host ports being listened on.
func (m *Manager) Ports() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]int, 0, len(m.listeners))
	for p := range m.listeners {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// Close stops every listener (the ingresses stay persisted).
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	var stop []*listener
	for p, l := range m.listeners {
		l.ln.Close()
		stop = append(stop, l)
		delete(m.listeners, p)
	}
	m.publish(context.Background())
	m.mu.Unlock()
	shutdown(context.Background(), stop)
	if m.wake != nil {
		m.wake.close()
	}
	m.tr.CloseIdleConnections()
	return nil
}

func shutdown(ctx context.Context, ls []*listener) {
	if len(ls) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.srv.Shutdown(ctx); err != nil {
				l.srv.Close()
			}
		}()
	}
	wg.Wait()
}

func (m *Manager) find(idOrName string) int {
	for i, ing := range m.ingresses {
		if ing.ID == idOrName || ing.Name == idOrName {
			return i
		}
	}
	return -1
}

func (m *Manager) save(list []*Ingress) error {
	if list == nil {
		list = []*Ingress{}
	}
	if err := fsutil.WriteJSONAtomic(m.path, &stateFile{Version: stateVersion, Ingresses: list}, 0o600); err != nil {
		return fmt.Errorf("save ingresses: %w", err)
	}
	return nil
}

func (m *Manager) listen(ctx context.Context, port int) (net.Listener, error) {
	addr := net.JoinHostPort(m.cfg.ListenAddress, strconv.Itoa(port))
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrListen, addr, err)
	}
	return ln, nil
}

// serve starts the HTTP server of a port; m.mu is held or m is not shared yet.
func (m *Manager) serve(port int, ln net.Listener) {
	srv := &http.Server{
		Handler:           m.handler(port),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(m.log.Handler(), slog.LevelDebug),
	}
	m.listeners[port] = &listener{ln: ln, srv: srv}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			m.log.Error("ingress listener stopped", "port", port, "error", err)
		}
	}()
}

type targetKey struct{}

type resolved struct {
	rule Rule
	addr string
}

func (m *Manager) handler(port int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := requestHost(r.Host)
		rule, ok := m.routes.Load().lookup(port, host)
		if !ok {
			writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no ingress rule for host %q on port %d", host, port))
			return
		}
		if !rule.RequestHeaderAuth.allows(r) {
			writeError(w, http.StatusUnauthorized, "unauthorized", fmt.Sprintf("this route needs the %s header", rule.RequestHeaderAuth.Header))
			return
		}
		rule.RequestHeaderAuth.strip(r)
		rule.Target.Instance = targetInstance(rule, host)
		addr, err := m.resolver.GuestAddr(r.Context(), rule.Target.Instance, rule.Target.Port)
		if err != nil && m.wake != nil {
			var ok bool
			if addr, ok = m.wakeTarget(w, r, rule, err); !ok {
				return
			}
			err = nil
		}
		if err != nil {
			writeError(w, http.StatusBadGateway, "bad_gateway",
				fmt.Sprintf("instance %q port %d is not reachable: %v", rule.Target.Instance, rule.Target.Port, err))
			return
		}
		ctx := context.WithValue(r.Context(), targetKey{}, &resolved{rule: rule, addr: addr})
		m.proxy.ServeHTTP(w, r.WithContext(ctx))
	})
}

// writeError writes the API's error shape {code, message}.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}{code, msg})
}

// routeTable is an immutable snapshot of the routes, swapped atomically.
type routeTable map[int]*portRoutes

type portRoutes struct {
	exact    map[string]Rule
	wildcard map[string]Rule // key: the part after "*."
	any      *Rule
}

func buildTable(list []*Ingress) *routeTable {
	t := routeTable{}
	for _, ing := range list {
		for _, r := range ing.Rules {
			pr := t[r.Match.Port]
			if pr == nil {
				pr = &portRoutes{exact: map[string]Rule{}, wildcard: map[string]Rule{}}
				t[r.Match.Port] = pr
			}
			switch h := r.Match.Hostname; {
			case h == "":
				r := r
				pr.any = &r
			case strings.HasPrefix(h, "*.") || strings.HasPrefix(h, "{"):
				pr.wildcard[strings.TrimPrefix(routeHost(h), "*.")] = r
			default:
				pr.exact[h] = r
			}
		}
	}
	return &t
}

// lookup prefers an exact hostname, then a wildcard, then the catch-all.
func (t *routeTable) lookup(port int, host string) (Rule, bool) {
	pr := (*t)[port]
	if pr == nil {
		return Rule{}, false
	}
	if r, ok := pr.exact[host]; ok {
		return r, true
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		if r, ok := pr.wildcard[host[i+1:]]; ok {
			return r, true
		}
	}
	if pr.any != nil {
		return *pr.any, true
	}
	return Rule{}, false
}

func portsOf(list []*Ingress) []int {
	seen := map[int]bool{}
	var out []int
	for _, ing := range list {
		for _, r := range ing.Rules {
			if !seen[r.Match.Port] {
				seen[r.Match.Port] = true
				out = append(out, r.Match.Port)
			}
		}
	}
	sort.Ints(out)
	return out
}

func cloneIngress(i *Ingress) *Ingress {
	c := *i
	c.Rules = append([]Rule(nil), i.Rules...)
	c.Tags = maps.Clone(i.Tags)
	return &c
}
