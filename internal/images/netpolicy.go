package images

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"unicode"
)

// ErrRegistryNotAllowed is the kind of a pull that would connect to an
// address the registry policy refuses: loopback, private, link-local and
// other non-public addresses unless configured (registries_allow).
var ErrRegistryNotAllowed = errors.New("registry address not allowed")

// Resolver looks host names up (net.DefaultResolver satisfies it).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// registryPolicy decides which addresses pulls may connect to. A pull talks
// to the registry named in the reference, to its token service and to
// wherever blobs are redirected (often another host): the decision is made
// in the dialer, on the IP actually dialed after one DNS lookup, so a name
// that resolves to an internal address (or rebinds to one between two
// lookups) is refused like the address itself.
type registryPolicy struct {
	public   bool            // public addresses allowed
	names    map[string]bool // "host" or "host:port", lower case
	prefixes []netip.Prefix  // allowed IPs and CIDRs
	ipPorts  map[netip.AddrPort]bool
	self     map[string]bool // the daemon's own listen address(es), "host:port"
	proxies  map[string]bool // configured HTTP(S) proxies, "host:port"
	resolver Resolver
}

// newRegistryPolicy parses the allow list: entries are "host", "host:port",
// an IP, "IP:port" or a CIDR.
func newRegistryPolicy(allow []string, denyPublic bool, self string, resolver Resolver, getenv func(string) string) (*registryPolicy, error) {
	p := &registryPolicy{public: !denyPublic, names: map[string]bool{}, ipPorts: map[netip.AddrPort]bool{},
		self: map[string]bool{}, proxies: map[string]bool{}, resolver: resolver}
	if p.resolver == nil {
		p.resolver = net.DefaultResolver
	}
	for _, raw := range allow {
		e := strings.ToLower(strings.TrimSpace(raw))
		e = strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(e, "https://"), "http://"), "/")
		if e == "" {
			continue
		}
		if pfx, err := netip.ParsePrefix(e); err == nil {
			p.prefixes = append(p.prefixes, pfx.Masked())
			continue
		}
		if ip, err := netip.ParseAddr(strings.Trim(e, "[]")); err == nil {
			p.prefixes = append(p.prefixes, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
			continue
		}
		if ap, err := netip.ParseAddrPort(e); err == nil {
			p.ipPorts[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = true
			continue
		}
		if err := checkRegistryHost(e); err != nil {
			return nil, fmt.Errorf("registries_allow entry %q: want a host, host:port, IP or CIDR: %v", raw, err)
		}
		p.names[e] = true
	}
	if self != "" {
		if host, port, err := net.SplitHostPort(self); err == nil {
			if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
				// Listening on all addresses: loopback reaches it.
				for _, h := range []string{"127.0.0.1", "::1", "localhost"} {
					p.self[net.JoinHostPort(h, port)] = true
				}
			}
			p.self[strings.ToLower(net.JoinHostPort(host, port))] = true
		}
	}
	if getenv != nil {
		for _, k := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"} {
			if u, err := url.Parse(getenv(k)); err == nil && u.Host != "" {
				port := u.Port()
				if port == "" {
					port = map[string]string{"https": "443"}[u.Scheme]
					if port == "" {
						port = "80"
					}
				}
				p.proxies[strings.ToLower(net.JoinHostPort(u.Hostname(), port))] = true
			}
		}
	}
	return p, nil
}

// listedName reports whether host:port is allowed by name.
func (p *registryPolicy) listedName(host, port string) bool {
	host = strings.ToLower(host)
	hp := net.JoinHostPort(host, port)
	return p.names[host] || p.names[hp] || p.self[hp] || p.proxies[hp]
}

// allowIP reports whether ip:port may be dialed, and why not.
func (p *registryPolicy) allowIP(ip netip.Addr, port uint16) (bool, string) {
	ip = ip.Unmap()
	if p.ipPorts[netip.AddrPortFrom(ip, port)] || p.self[netip.AddrPortFrom(ip, port).String()] {
		return true, ""
	}
	for _, pfx := range p.prefixes {
		if pfx.Contains(ip) {
			return true, ""
		}
	}
	kind := addressKind(ip)
	if kind == "" {
		if p.public {
			return true, ""
		}
		return false, "a public address, and registries_allow_public is false"
	}
	return false, "a " + kind + " address"
}

// DialContext dials addr ("host:port") if the policy allows it: a listed
// name as is, anything else only to the resolved addresses the policy
// allows, trying them in order.
func (p *registryPolicy) DialContext(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if p.listedName(host, portStr) {
		return d.DialContext(ctx, network, addr)
	}
	port, err := parsePort(portStr)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		ips = []netip.Addr{ip}
	} else if ips, err = p.resolver.LookupNetIP(ctx, "ip", host); err != nil {
		return nil, err
	}
	var refused []string
	var lastErr error
	for _, ip := range ips {
		if ok, why := p.allowIP(ip, port); !ok {
			refused = append(refused, ip.Unmap().String()+" ("+why+")")
			continue
		}
		c, err := d.DialContext(ctx, network, netip.AddrPortFrom(ip.Unmap(), port).String())
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return nil, fmt.Errorf("%w: %s resolves to %s; add it to registries_allow to pull from it",
		ErrRegistryNotAllowed, addr, strings.Join(refused, ", "))
}

// checkURLHost applies the policy to a request's host before it is sent,
// for what the dialer does not see: a custom transport (tests, embedders)
// and requests through a proxy, which dials the target itself (there the
// name is resolved here once, best effort).
func (p *registryPolicy) checkURLHost(ctx context.Context, u *url.URL, resolve bool) error {
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = map[string]string{"http": "80"}[u.Scheme]
		if port == "" {
			port = "443"
		}
	}
	if p.listedName(host, port) {
		return nil
	}
	pn, err := parsePort(port)
	if err != nil {
		return err
	}
	ips := []netip.Addr{}
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = append(ips, ip)
	} else if resolve {
		if ips, err = p.resolver.LookupNetIP(ctx, "ip", host); err != nil {
			return nil // the proxy reports it
		}
	}
	for _, ip := range ips {
		if ok, why := p.allowIP(ip, pn); !ok {
			return fmt.Errorf("%w: %s is %s; add it to registries_allow to pull from it",
				ErrRegistryNotAllowed, net.JoinHostPort(host, port), why)
		}
	}
	return nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("invalid port %q", s)
	}
	return uint16(n), nil
}

// nonPublic lists special-purpose ranges not covered by netip's
// predicates (RFC 6890 and friends).
var nonPublic = []struct {
	pfx  netip.Prefix
	kind string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\""},
	{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("64:ff9b::/96"), "NAT64"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "NAT64"},
	{netip.MustParsePrefix("100::/64"), "discard"},
	{netip.MustParsePrefix("2001::/23"), "IETF protocol"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("2002::/16"), "6to4"},
}

// addressKind names why ip is not a public unicast address ("" if it is).
func addressKind(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case ip.IsLoopback():
		return "loopback"
	case ip.IsPrivate():
		return "private"
	case ip.IsLinkLocalUnicast():
		return "link-local"
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsMulticast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return "multicast"
	case !ip.IsGlobalUnicast():
		return "non-unicast"
	}
	for _, r := range nonPublic {
		if r.pfx.Contains(ip) {
			return r.kind
		}
	}
	return ""
}

// maxErrorBody bounds what is read of an error response.
const maxErrorBody = 64 << 10

// sanitizeErrorBody replaces the body of an error response with what is
// safe to repeat in an image's error: the registry protocol's error codes
// and short messages when the body is a registry error document, nothing
// otherwise. A pull can be pointed at any URL; its failure must not become a
// way to read what some other service answered.
func sanitizeErrorBody(resp *http.Response) {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
	var doc struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	var out []byte
	if json.Unmarshal(raw, &doc) == nil && len(doc.Errors) > 0 {
		type diag struct {
			Code    string `json:"code"`
			Message string `json:"message,omitempty"`
		}
		var clean []diag
		for i, d := range doc.Errors {
			if i == 4 {
				break
			}
			code := strings.Map(func(r rune) rune {
				if r >= 'A' && r <= 'Z' || r == '_' {
					return r
				}
				return -1
			}, d.Code)
			if len(code) > 40 {
				code = code[:40]
			}
			clean = append(clean, diag{Code: code, Message: shortPrintable(d.Message, 200)})
		}
		out, _ = json.Marshal(map[string]any{"errors": clean})
	}
	resp.Body = io.NopCloser(strings.NewReader(string(out)))
	resp.ContentLength = int64(len(out))
	resp.Header.Del("Content-Length")
	if out == nil {
		resp.Header.Del("Content-Type")
	}
}

// shortPrintable keeps the first n printable runes of s.
func shortPrintable(s string, n int) string {
	var b strings.Builder
	for _, r := range s {
		if n == 0 {
			b.WriteString("…")
			break
		}
		if unicode.IsPrint(r) {
			b.WriteRune(r)
			n--
		}
	}
	return b.String()
}
