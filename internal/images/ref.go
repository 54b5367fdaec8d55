package images

import (
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// dockerHubCanonical is how Docker prints Docker Hub references;
// go-containerregistry says index.docker.io internally.
const (
	dockerHubCanonical = "docker.io"
	dockerHubInternal  = name.DefaultRegistry // "index.docker.io"
)

var digestRE = regexp.MustCompile(`^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}$`)

// isDigest reports whether s is a bare digest ("sha256:…"), not a name.
func isDigest(s string) bool { return digestRE.MatchString(s) }

// parsedRef is a reference as the store uses it.
type parsedRef struct {
	ref  name.Reference // for go-containerregistry (index.docker.io form)
	name string         // normalized, Docker style: docker.io/library/busybox:latest
}

// NormalizeName returns the Docker-style normalized form of a reference:
// "busybox" → "docker.io/library/busybox:latest", "localhost:5000/a" →
// "localhost:5000/a:latest", "repo@sha256:…" keeps its digest. This is the
// name under which the store records the image and which the API returns.
func NormalizeName(ref string) (string, error) {
	p, err := parseRef(ref, nil)
	if err != nil {
		return "", err
	}
	return p.name, nil
}

// parseRef parses and normalizes ref. allowHTTP decides whether the registry
// may be spoken to over plain HTTP (nil: never mark it insecure).
func parseRef(ref string, allowHTTP func(host string) bool) (parsedRef, error) {
	s := strings.TrimSpace(ref)
	if s == "" {
		return parsedRef{}, fmt.Errorf("%w: empty reference", ErrInvalidReference)
	}
	if isDigest(s) {
		return parsedRef{}, fmt.Errorf("%w: %q is a bare digest, not a repository reference", ErrInvalidReference, s)
	}
	r, err := name.ParseReference(s)
	if err != nil {
		return parsedRef{}, fmt.Errorf("%w: %q: %v", ErrInvalidReference, s, err)
	}
	if allowHTTP != nil && allowHTTP(r.Context().RegistryStr()) {
		if r, err = name.ParseReference(s, name.Insecure); err != nil {
			return parsedRef{}, fmt.Errorf("%w: %q: %v", ErrInvalidReference, s, err)
		}
	}
	n := r.Name()
	if rest, ok := strings.CutPrefix(n, dockerHubInternal+"/"); ok {
		n = dockerHubCanonical + "/" + rest
	}
	return parsedRef{ref: r, name: n}, nil
}

// httpPolicy decides which registries may be used over plain HTTP.
type httpPolicy struct {
	insecure map[string]bool // "host" (any port) or "host:port"
}

func newHTTPPolicy(insecure []string) httpPolicy {
	p := httpPolicy{insecure: map[string]bool{}}
	for _, h := range insecure {
		h = strings.TrimSpace(h)
		h = strings.TrimPrefix(strings.TrimPrefix(h, "http://"), "https://")
		h = strings.TrimSuffix(h, "/")
		if h != "" {
			p.insecure[strings.ToLower(h)] = true
		}
	}
	return p
}

// allowed reports whether host ("name", "name:port", "[::1]:port") may be
// reached over plain HTTP: loopback always, others only when configured.
func (p httpPolicy) allowed(host string) bool {
	host = strings.ToLower(host)
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
		return true
	}
	if p.insecure[host] || p.insecure[h] {
		return true
	}
	// docker.io and index.docker.io are the same registry.
	if h == dockerHubCanonical || h == dockerHubInternal {
		return p.insecure[dockerHubCanonical] || p.insecure[dockerHubInternal]
	}
	return false
}

// guardTransport refuses plain-HTTP requests to registries the policy does
// not allow. go-containerregistry falls back to HTTP by itself for RFC 1918
// addresses and *.localhost, and follows redirects and token realms to other
// hosts; this is the one place that enforces our rule for all of them.
type guardTransport struct {
	base   http.RoundTripper
	policy httpPolicy
}

func (g guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.policy.allowed(req.URL.Host) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), ErrInsecureRefused)
	}
	return g.base.RoundTrip(req)
}
