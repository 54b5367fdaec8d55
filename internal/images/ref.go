package images

import (
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
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

// repoComponentRE is one path component of a repository name (OCI
// distribution spec grammar).
var repoComponentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)

// hostLabelRE is one DNS label of a registry host.
var hostLabelRE = regexp.MustCompile(`^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?$`)

// CheckRepository reports why repo ("library/busybox") is not a valid
// repository name: non-empty components of lowercase letters and digits
// joined by ".", "_", "__" or dashes, separated by single slashes, at most
// 255 characters in all.
func CheckRepository(repo string) error {
	if repo == "" || len(repo) > 255 {
		return fmt.Errorf("repository name must be 1 to 255 characters")
	}
	for c := range strings.SplitSeq(repo, "/") {
		if c == "" {
			return fmt.Errorf("repository %q has an empty path component (a leading, trailing or double slash)", repo)
		}
		if !repoComponentRE.MatchString(c) {
			return fmt.Errorf("repository path component %q is invalid: use lowercase letters and digits, separated by '.', '_', '__' or '-'", c)
		}
	}
	return nil
}

// checkRegistryHost reports why host ("registry.example.com:5000",
// "[::1]:5000") is not a registry host name with an optional port.
func checkRegistryHost(host string) error {
	h, port := host, ""
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		h, port = host[:i], host[i+1:]
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("registry %q has an invalid port", host)
		}
	}
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		if net.ParseIP(h[1:len(h)-1]) == nil {
			return fmt.Errorf("registry %q is not a valid IPv6 address", host)
		}
		return nil
	}
	if len(h) == 0 || len(h) > 253 {
		return fmt.Errorf("registry host %q is not a valid host name", host)
	}
	for l := range strings.SplitSeq(h, ".") {
		if !hostLabelRE.MatchString(l) {
			return fmt.Errorf("registry host %q is not a valid host name", host)
		}
	}
	return nil
}

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
	// go-containerregistry accepts "../../etc/passwd" (registry "..") and
	// "/", "a//b" (empty path components): hold references to the
	// distribution grammar before they name a host to dial or a record.
	if err := checkRegistryHost(r.Context().RegistryStr()); err != nil {
		return parsedRef{}, fmt.Errorf("%w %q: %v", ErrInvalidReference, s, err)
	}
	if err := CheckRepository(r.Context().RepositoryStr()); err != nil {
		return parsedRef{}, fmt.Errorf("%w %q: %v", ErrInvalidReference, s, err)
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
//
// It also applies the registry policy where the dialer cannot (a custom
// base transport, a proxy that dials for us) and strips error responses of
// anything but registry error codes and short messages (sanitizeErrorBody).
type guardTransport struct {
	base        http.RoundTripper
	policy      httpPolicy
	registries  *registryPolicy
	ownDialer   bool  // base dials through registries.DialContext
	maxManifest int64 // Limits.MaxManifestBytes
}

func (g guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	refuse := func(err error) (*http.Response, error) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), err)
	}
	if req.URL.Scheme == "http" && !g.policy.allowed(req.URL.Host) {
		return refuse(ErrInsecureRefused)
	}
	proxied := false
	if g.ownDialer {
		if u, err := http.ProxyFromEnvironment(req); err == nil && u != nil {
			proxied = true
		}
	}
	if !g.ownDialer || proxied {
		if err := g.registries.checkURLHost(req.Context(), req.URL, proxied); err != nil {
			return refuse(err)
		}
	}
	resp, err := g.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 400 {
		sanitizeErrorBody(resp)
	} else if err := capManifestResponse(resp, g.maxManifest); err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), err)
	}
	return resp, nil
}
