package ingress

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"regexp"
	"strings"
)

// Hostname patterns: "{instance}.example.com" routes like "*.example.com"
// (one label in front of example.com) and names the label, so a target of
// "{instance}" reaches the instance whose name is that label. One capture,
// as the whole first label: enough for per-instance subdomains without a
// template language.

var captureRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,63}$`)

// splitCapture returns the capture name and the rest of a pattern
// hostname ("{app}.example.com" → "app", "example.com").
func splitCapture(h string) (capture, rest string, ok bool) {
	if !strings.HasPrefix(h, "{") {
		return "", "", false
	}
	end := strings.Index(h, "}.")
	if end < 0 {
		return "", "", false
	}
	return h[1:end], h[end+2:], true
}

// routeHost is the routing identity of a hostname: a pattern routes like
// the wildcard over the same domain, so the two cannot both be defined.
func routeHost(h string) string {
	if _, rest, ok := splitCapture(h); ok {
		return "*." + rest
	}
	return h
}

// checkCaptureTarget requires a target written as a capture ("{x}") to
// name the capture of its own hostname.
func checkCaptureTarget(hostname, instance string) error {
	if !strings.HasPrefix(instance, "{") {
		if strings.ContainsAny(instance, "{}") {
			return fmt.Errorf("target instance %q: a capture reference is written {name}", instance)
		}
		return nil
	}
	want, _, ok := splitCapture(hostname)
	if !ok || instance != "{"+want+"}" {
		return fmt.Errorf("target instance %q does not name a capture of hostname %q", instance, hostname)
	}
	return nil
}

// targetInstance resolves a capture target for a request to host.
func targetInstance(r Rule, host string) string {
	if !strings.HasPrefix(r.Target.Instance, "{") {
		return r.Target.Instance
	}
	label, _, _ := strings.Cut(host, ".")
	return label
}

// HeaderAuth makes a rule answer 401 unless the request carries Header
// with exactly Value. The header is removed before the request is proxied,
// so the guest never sees the secret.
type HeaderAuth struct {
	Header string `json:"header"`
	Value  string `json:"value"`
}

// reservedHeaders may not carry the secret: they are authentication,
// routing, framing or hop-by-hop headers that proxies and clients rewrite.
var reservedHeaders = map[string]bool{
	"Authorization": true, "Proxy-Authorization": true, "Proxy-Authenticate": true, "Www-Authenticate": true,
	"Cookie": true, "Set-Cookie": true, "Host": true, "Connection": true, "Keep-Alive": true, "Te": true,
	"Trailer": true, "Transfer-Encoding": true, "Upgrade": true, "Content-Length": true, "Content-Type": true,
	"Forwarded": true, "Via": true, "Proxy-Connection": true,
}

func (a *HeaderAuth) validate() error {
	if a == nil {
		return nil
	}
	h := http.CanonicalHeaderKey(strings.TrimSpace(a.Header))
	switch {
	case h == "" || len(h) > 128 || !headerRE.MatchString(h):
		return fmt.Errorf("header %q is not a valid header name", a.Header)
	case reservedHeaders[h] || strings.HasPrefix(h, "X-Forwarded-") || strings.HasPrefix(h, "Proxy-"):
		return fmt.Errorf("header %s is reserved (authentication, cookie, host, framing, proxy or hop-by-hop); use a dedicated one such as X-Ingress-Verification", h)
	case len(a.Value) < 32 || len(a.Value) > 256:
		return fmt.Errorf("value must be 32 to 256 characters, got %d", len(a.Value))
	}
	a.Header = h
	return nil
}

var headerRE = regexp.MustCompile(`^[A-Za-z0-9!#$%&'*+.^_` + "`" + `|~-]+$`)

func (a *HeaderAuth) allows(r *http.Request) bool {
	if a == nil {
		return true
	}
	vs := r.Header.Values(a.Header)
	return len(vs) == 1 && subtle.ConstantTimeCompare([]byte(vs[0]), []byte(a.Value)) == 1
}

func (a *HeaderAuth) strip(r *http.Request) {
	if a != nil {
		r.Header.Del(a.Header)
	}
}
