package images

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"hypeman/internal/untar"
)

// Sentinel errors callers branch on with errors.Is. Pull failures arrive as a
// *PullError whose Kind is one of the Err* values below, so both
// errors.Is(err, ErrCorruptLayer) and errors.As(err, &pullErr) work.
var (
	// ErrNotFound: the store has no image under that name or digest.
	ErrNotFound = errors.New("image not found")
	// ErrInvalidReference: the reference does not parse (a 400-class error).
	ErrInvalidReference = errors.New("invalid image reference")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("image store closed")
	// ErrPullInFlight: a pull with its own credentials met a pull of the
	// same name already running (a 409-class error).
	ErrPullInFlight = errors.New("image pull already in flight")

	// ErrRegistryUnreachable: the registry could not be reached (DNS, refused
	// connection, TLS failure, plain HTTP refused by policy).
	ErrRegistryUnreachable = errors.New("registry unreachable")
	// ErrNotFoundUpstream: the registry has no such repository, tag or digest.
	ErrNotFoundUpstream = errors.New("image not found in registry")
	// ErrUnauthorized: the registry refused our credentials (401/403).
	ErrUnauthorized = errors.New("registry denied access")
	// ErrRegistry: any other error answered by the registry.
	ErrRegistry = errors.New("registry error")
	// ErrDigestMismatch: a pinned reference resolved to different bytes.
	ErrDigestMismatch = errors.New("manifest digest mismatch")
	// ErrNoMatchingPlatform: the image exists but not for linux/amd64.
	ErrNoMatchingPlatform = errors.New("no image for the requested platform")
	// ErrCorruptLayer: a layer's bytes do not match its digest, do not
	// decompress, or contain entries that cannot be applied safely.
	ErrCorruptLayer = errors.New("corrupt layer")
	// ErrConvert: building the root disk failed (mkfs, disk space).
	ErrConvert = errors.New("root disk build failed")
	// ErrInterrupted: the daemon stopped while this pull was running.
	ErrInterrupted = errors.New("pull interrupted")

	// ErrUnsafePath is wrapped (under ErrCorruptLayer) when a layer entry
	// would land outside the root filesystem.
	ErrUnsafePath = untar.ErrUnsafePath
	// ErrInsecureRefused is wrapped (under ErrRegistryUnreachable) when a
	// plain-HTTP request was refused because the registry is neither loopback
	// nor listed as insecure.
	ErrInsecureRefused = errors.New("plain HTTP refused: registry is not loopback and not configured as insecure")
)

// PullError describes why a pull or an import failed.
type PullError struct {
	Ref      string // normalized reference
	Registry string // registry host, e.g. "index.docker.io" or "127.0.0.1:5000"
	Layer    string // digest of the layer at fault, when the failure is about one layer
	Kind     error  // one of the Err* sentinels (or context.Canceled)
	Err      error  // underlying cause
}

func (e *PullError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pull %s: %v", e.Ref, e.Kind)
	switch {
	case e.Layer != "":
		fmt.Fprintf(&b, " %s", e.Layer)
	case e.Registry != "" && (e.Kind == ErrRegistryUnreachable || e.Kind == ErrUnauthorized || e.Kind == ErrRegistry):
		fmt.Fprintf(&b, " (%s)", e.Registry)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Unwrap exposes both the kind and the cause to errors.Is / errors.As.
func (e *PullError) Unwrap() []error {
	out := make([]error, 0, 2)
	if e.Kind != nil {
		out = append(out, e.Kind)
	}
	if e.Err != nil {
		out = append(out, e.Err)
	}
	return out
}

// localError marks a failure of our own filesystem (staging directory, disk
// space), as opposed to a problem with the bytes the registry sent.
type localError struct {
	Op   string
	Path string
	Err  error
}

func (e *localError) Error() string { return fmt.Sprintf("%s %s: %v", e.Op, e.Path, e.Err) }
func (e *localError) Unwrap() error { return e.Err }

// phase tells classify what a failure without a clearer signature means.
type phase int

const (
	phaseManifest phase = iota // resolving the reference / fetching manifests and config
	phaseLayer                 // streaming and applying one layer
	phaseConvert               // building the disk
)

// classify maps an error from go-containerregistry, the network, the
// tar applier or mkfs to one of our kinds.
func classify(err error, ph phase) error {
	var te *transport.Error
	var ne net.Error
	var dnsErr *net.DNSError
	var opErr *net.OpError
	var certErr *tls.CertificateVerificationError
	var unkAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var recErr tls.RecordHeaderError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		if errors.Is(err, context.DeadlineExceeded) {
			return context.DeadlineExceeded
		}
		return context.Canceled
	case errors.Is(err, ErrImageTooLarge):
		return ErrImageTooLarge
	case errors.Is(err, ErrRegistryNotAllowed):
		return ErrRegistryNotAllowed
	case errors.Is(err, ErrInsecureRefused):
		return ErrRegistryUnreachable
	case errors.Is(err, ErrUnsafePath), errors.Is(err, ErrCorruptLayer),
		errors.Is(err, untar.ErrBadEntry), errors.Is(err, untar.ErrRefused):
		return ErrCorruptLayer
	case errors.As(err, new(*localError)), errors.As(err, new(*untar.LocalError)):
		return ErrConvert
	case errors.As(err, &te):
		switch {
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
			return ErrUnauthorized
		case te.StatusCode == http.StatusNotFound:
			return ErrNotFoundUpstream
		}
		for _, d := range te.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return ErrNotFoundUpstream
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return ErrUnauthorized
			}
		}
		return ErrRegistry
	case errors.As(err, &dnsErr), errors.As(err, &opErr), errors.As(err, &certErr),
		errors.As(err, &unkAuth), errors.As(err, &hostErr), errors.As(err, &recErr):
		return ErrRegistryUnreachable
	case errors.As(err, &ne) && ph != phaseConvert:
		return ErrRegistryUnreachable
	case strings.Contains(err.Error(), "does not match requested digest"):
		// go-containerregistry reports a pinned-digest mismatch only as text.
		return ErrDigestMismatch
	}
	switch ph {
	case phaseLayer:
		// Not the network and not the registry answering: the bytes we got
		// are wrong (digest or size mismatch, bad gzip, bad tar).
		return ErrCorruptLayer
	case phaseConvert:
		return ErrConvert
	default:
		return ErrRegistry
	}
}
