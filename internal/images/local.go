package images

import (
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// Images pushed to hypemand's own registry (/v2/) are "local": they are
// recorded under their repository path as pushed ("team/app:1", "demo:v1"),
// not under docker.io, and they are never pulled: a reference to them by
// the registry's own address ("127.0.0.1:8080/team/app:1") or by the bare
// path ("team/app:1") finds the pushed image. A bare path that names no
// local image keeps Docker's meaning (docker.io/library/...).
//
// Config.LocalRegistry tells which registry hosts are hypemand itself (the
// daemon knows its listen address); without it only bare paths match.

// localHostPrefix is the registry host used to parse local names with the
// reference grammar; it never appears in a recorded name.
const localHostPrefix = "hypeman.local/"

// explicitRegistry splits off the registry host of ref when ref names one
// (Docker's rule: a first path component with a '.' or ':', or
// "localhost"); host is "" for a bare path.
func explicitRegistry(ref string) (host, rest string) {
	first, after, ok := strings.Cut(ref, "/")
	if !ok {
		return "", ref
	}
	if strings.ContainsAny(first, ".:") || first == "localhost" {
		return first, after
	}
	return "", ref
}

// localName returns the recorded form of a local reference path:
// repository path plus ":tag" (default latest) or "@digest".
func localName(path string) (string, error) {
	r, err := name.ParseReference(localHostPrefix + path)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrInvalidReference, path, err)
	}
	repo := strings.TrimPrefix(r.Context().Name(), localHostPrefix)
	switch t := r.(type) {
	case name.Digest:
		return repo + "@" + t.DigestStr(), nil
	case name.Tag:
		return repo + ":" + t.TagStr(), nil
	}
	return "", fmt.Errorf("%w: %q", ErrInvalidReference, path)
}

// resolveLocked maps ref to the name it is recorded under and reports
// whether that name is local (never to be pulled). Caller holds s.mu.
func (s *Store) resolveLocked(ref string) (n string, local bool, err error) {
	ref = strings.TrimSpace(ref)
	host, rest := explicitRegistry(ref)
	switch {
	case host != "" && s.cfg.LocalRegistry != nil && s.cfg.LocalRegistry(host):
		n, err := localName(rest)
		return n, true, err
	case host == "" && ref != "" && !isDigest(ref):
		if n, err := localName(ref); err == nil {
			if e := s.names[n]; e != nil && e.Local {
				return n, true, nil
			}
		}
	}
	p, err := parseRef(ref, nil)
	if err != nil {
		return "", false, err
	}
	return p.name, false, nil
}
