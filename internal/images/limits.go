package images

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"hypeman/internal/units"
	"hypeman/internal/untar"
)

// ErrImageTooLarge is the kind of a pull or import stopped by one of the
// store's caps (Config.Max*). The *LimitError names the cap and the setting.
var ErrImageTooLarge = errors.New("image exceeds a configured limit")

// Limits cap what one image may cost, for pulls and pushed images alike.
// Zero means no limit. They are enforced while the bytes stream (a manifest
// or layer is never read whole to be measured).
type Limits struct {
	// MaxUnpackedBytes bounds the bytes all layers unpack to (tar stream
	// and file contents written, each counted on its own), so a 2 MB gzip
	// bomb stops at the cap instead of filling the disk.
	MaxUnpackedBytes int64
	// MaxConfigBytes bounds the image config blob (held in memory).
	MaxConfigBytes int64
	// MaxManifestBytes bounds one manifest or index.
	MaxManifestBytes int64
	// MaxLayers bounds the number of layers.
	MaxLayers int
}

// LimitError says which cap an image hit. It matches ErrImageTooLarge.
type LimitError struct {
	What    string // "unpacked content", "config blob", "manifest", "layer count"
	Limit   int64
	Got     int64 // what the image declares (0 when the read stopped at the cap)
	Setting string
	count   bool // Limit and Got are counts, not bytes
}

func (e *LimitError) Error() string {
	limit, got := units.FormatSize(e.Limit), ""
	if e.count {
		limit = fmt.Sprint(e.Limit)
	}
	switch {
	case e.Got > 0 && e.count:
		got = fmt.Sprintf(" (it has %d)", e.Got)
	case e.Got > 0:
		got = fmt.Sprintf(" (it is %d bytes)", e.Got)
	}
	return fmt.Sprintf("%s exceeds the limit of %s%s; raise %s to allow it", e.What, limit, got, e.Setting)
}

func (e *LimitError) Unwrap() error { return ErrImageTooLarge }

// checkManifest applies the manifest, layer count and config caps to a
// resolved image before any of its blobs is fetched.
func (l Limits) checkManifest(img v1.Image) error {
	if l.MaxManifestBytes > 0 {
		raw, err := img.RawManifest()
		if err != nil {
			return err
		}
		if n := int64(len(raw)); n > l.MaxManifestBytes {
			return &LimitError{What: "manifest", Limit: l.MaxManifestBytes, Got: n, Setting: "image_max_manifest_size"}
		}
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	if l.MaxLayers > 0 && len(m.Layers) > l.MaxLayers {
		return &LimitError{What: "layer count", Limit: int64(l.MaxLayers), Got: int64(len(m.Layers)), Setting: "image_max_layers", count: true}
	}
	if l.MaxConfigBytes > 0 && m.Config.Size > l.MaxConfigBytes {
		return &LimitError{What: "config blob", Limit: l.MaxConfigBytes, Got: m.Config.Size, Setting: "image_max_config_size"}
	}
	return nil
}

// newBudget is a cap on unpacked bytes whose error is a *LimitError naming
// what and the setting that raises it.
func newBudget(limit int64, what, setting string) *untar.Budget {
	return &untar.Budget{Limit: limit, Err: func() error {
		return &LimitError{What: what, Limit: limit, Setting: setting}
	}}
}

// capManifestResponse bounds a manifest response body to max bytes while
// it streams (go-containerregistry's own bound is 100 MiB).
func capManifestResponse(resp *http.Response, max int64) error {
	if max <= 0 || resp.Request == nil || !strings.Contains(resp.Request.URL.Path, "/manifests/") {
		return nil
	}
	if resp.ContentLength > max {
		resp.Body.Close() // declared too long: not read at all
		return &LimitError{What: "manifest", Limit: max, Got: resp.ContentLength, Setting: "image_max_manifest_size"}
	}
	b := newBudget(max, "manifest", "image_max_manifest_size")
	resp.Body = readCloser{b.Reader(resp.Body), resp.Body}
	return nil
}

type readCloser struct {
	io.Reader
	io.Closer
}
