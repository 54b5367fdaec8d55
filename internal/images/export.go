package images

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Export: the store hands a ready image, as it was pulled (same manifest,
// config and compressed layers, read from the OCI cache), to a pusher, with
// a transport that reaches registries under the same policy as pulls.

// PushSource is a ready image read back from the OCI cache for a push.
type PushSource struct {
	Name   string // the image's recorded name
	Digest string // manifest digest
	Image  v1.Image
	Layers int
	Bytes  int64 // compressed layers + config + manifest
	// Release lets the cache collect the image's blobs again (call it once
	// the push ended; until then deleting the image keeps its blobs).
	Release func()
}

// PushSource returns the image named ref (a name or a bare digest) for a
// push. Errors: ErrNotFound; ErrNotReady (pulling or failed); ErrNotCached
// when the store did not keep the image's layers (pulled before the cache
// existed, or image_oci_cache is off): pulling it again (after deleting it)
// makes it pushable.
func (s *Store) PushSource(ctx context.Context, ref string) (*PushSource, error) {
	img, err := s.Get(ctx, ref)
	if err != nil {
		return nil, err
	}
	if img.Status != StatusReady {
		msg := fmt.Sprintf("%s is %s", img.Name, img.Status)
		if img.Error != "" {
			msg += ": " + img.Error
		}
		return nil, fmt.Errorf("%w: %s; push it once it is ready", ErrNotReady, msg)
	}
	if s.cache == nil {
		return nil, fmt.Errorf("%w: %s: the store keeps no layers (image_oci_cache is false); enable it, delete the image and pull it again to push it", ErrNotCached, img.Name)
	}
	h, err := v1.NewHash(img.Digest)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: digest %q: %v", ErrNotCached, img.Name, img.Digest, err)
	}
	// Pin before reading: a concurrent delete then keeps the blobs until
	// Release.
	m, err := s.cache.manifest(h)
	if err != nil {
		return nil, s.notCached(img.Name, err)
	}
	release := s.cache.pin(append([]v1.Hash{h, m.Config.Digest}, layerDigests(m)...))
	ci, m, err := s.cache.image(h)
	if err != nil {
		release()
		return nil, s.notCached(img.Name, err)
	}
	raw, err := ci.RawManifest()
	if err != nil {
		release()
		return nil, err
	}
	out := &PushSource{Name: img.Name, Digest: img.Digest, Image: ci, Layers: len(m.Layers),
		Bytes: int64(len(raw)) + m.Config.Size, Release: release}
	for _, l := range m.Layers {
		out.Bytes += l.Size
	}
	return out, nil
}

func (s *Store) notCached(n string, err error) error {
	if !errors.Is(err, ErrNotCached) {
		return err
	}
	return fmt.Errorf("%w: %s was stored without its layers (pulled before this hypemand kept them): delete it and pull it again to enable pushing (%v)",
		ErrNotCached, n, err)
}

// OCICacheBytes is the disk space the OCI cache's blobs take (0 when it is
// disabled).
func (s *Store) OCICacheBytes() int64 {
	if s.cache == nil {
		return 0
	}
	return s.cache.Size()
}

// PushTransport is the HTTP transport pushes use: it dials only where the
// registry policy allows (registries_allow, like pulls) and strips remote
// error bodies to registry error codes and short messages. Plain HTTP is
// allowed where pulls allow it (loopback, insecure_registries) and, when
// insecureHost is set ("host" or "host:port", the push's explicit
// `insecure`), to that registry too.
func (s *Store) PushTransport(insecureHost string) http.RoundTripper {
	g := s.transport.(guardTransport)
	if insecureHost != "" {
		p := httpPolicy{insecure: maps.Clone(s.policy.insecure)}
		p.insecure[strings.ToLower(insecureHost)] = true
		g.policy = p
	}
	return g
}

// ParseTarget parses a push target: a full reference (registry host,
// repository, tag or digest; Docker Hub when no host is named), held to the
// distribution grammar like pull references. insecure marks it for plain
// HTTP.
func ParseTarget(ref string, insecure bool) (name.Reference, error) {
	p, err := parseRef(ref, func(string) bool { return insecure })
	if err != nil {
		return nil, err
	}
	return p.ref, nil
}

// RegistryErrorKind classifies an error from talking to a registry (the
// same kinds as pulls: ErrRegistryUnreachable, ErrUnauthorized,
// ErrRegistryNotAllowed, ErrNotFoundUpstream, ErrRegistry, ...).
func RegistryErrorKind(err error) error { return classify(err, phaseManifest) }
