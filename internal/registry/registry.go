// Package registry is hypemand's built-in OCI distribution registry, served
// at /v2/: any OCI client (crane, skopeo, docker, `hypeman push`) can push an
// image to the daemon, and a pushed tag becomes an image of the same name in
// the image store, converted automatically.
//
// Why it is shaped this way:
//   - go-containerregistry's registry handler serves the read side and the
//     manifest API; we put three things of our own around it, because its
//     defaults suit tests, not a daemon:
//     1. Blob uploads (POST/PATCH/PUT .../blobs/uploads/...) are handled
//     here and streamed to temp files on disk; the library would buffer every
//     upload in memory under one global lock. Finished blobs are verified
//     against their digest and renamed into a content-addressed directory.
//     2. Blobs are served from disk by our BlobHandler, whose Stat is a file
//     size (blobs are verified once, when written) instead of re-hashing the
//     whole file on every HEAD/GET as the library's disk handler does.
//     3. Manifests, which the library keeps only in memory, are also written
//     to disk on every successful PUT and replayed into the handler on
//     start, so a daemon restart keeps the registry's content.
//   - A successful manifest PUT by tag triggers the import: the image is read
//     back from the same handler in-process (a RoundTripper that calls the
//     handler through a pipe, no socket, no auth) and handed to the image
//     store's ImportImage, which converts it in the background like a pull.
//   - Authentication is the API's JWT, accepted as Bearer or as the password
//     of HTTP Basic (any username), because registry clients only do Basic
//     without a token service. Pulls (GET) need image:read, pushes
//     image:write, deletes image:delete; HEAD (the existence check every
//     push client makes first) is allowed with either image:read or
//     image:write; /v2/ itself needs any valid token. Errors use the
//     registry's {"errors": [...]} format and a Basic challenge, which is
//     what OCI clients understand.
//   - Uploads are capped (Limits): a blob past registry_max_blob_size is
//     stopped while it streams, a manifest whose blobs add up past
//     registry_max_push_size is refused at PUT, both 413 in the registry
//     error shape. Reading the body is paced by the daemon's HTTP layer
//     (internal/httpserver: a minimum rate, not a total time), so large
//     uploads work while they make progress.
//   - Limitations: a tag is imported when its manifest is pushed; a push by
//     digest only is stored but not imported. Deleting from the registry does
//     not delete the imported image (DELETE /images/{name} does that).
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"hypeman/internal/auth"
	"hypeman/internal/images"
)

// Importer receives pushed images (the image store satisfies it).
type Importer interface {
	// ImportImage converts img under name in the background and returns at
	// once.
	ImportImage(ctx context.Context, name string, img v1.Image) (*images.Image, error)
}

// Options configures a Registry.
type Options struct {
	// Dir holds blobs/, uploads/ and manifests/ (paths.RegistryDir()).
	Dir string
	// Verifier checks tokens. Required.
	Verifier *auth.Verifier
	// Importer receives pushed tags; nil disables the import.
	Importer Importer
	Logger   *slog.Logger
	// Limits cap uploads.
	Limits Limits
	// Platform picks the image from a pushed index (default linux/amd64).
	Platform v1.Platform
}

// Limits cap what clients may upload. Uploads past a cap are answered 413
// with the registry's error shape, naming the setting.
type Limits struct {
	// MaxManifestBytes bounds one manifest (default 4 MiB).
	MaxManifestBytes int64
	// MaxBlobBytes bounds one uploaded blob (0: no limit). An upload that
	// goes past it is stopped while it streams.
	MaxBlobBytes int64
	// MaxPushBytes bounds the blobs one pushed image manifest references
	// (config and layers, as declared), checked when the manifest is put
	// (0: no limit).
	MaxPushBytes int64
}

// Registry is an http.Handler for /v2/.
type Registry struct {
	opts      Options
	log       *slog.Logger
	blobs     *diskBlobs
	manifests *manifestStore
	inner     http.Handler // the go-containerregistry handler, no auth
	transport http.RoundTripper

	importWG sync.WaitGroup
}

// New opens (creating if needed) the registry under opts.Dir and replays
// the manifests pushed before the last restart.
func New(opts Options) (*Registry, error) {
	if opts.Verifier == nil {
		return nil, errors.New("registry: Verifier is required")
	}
	if opts.Dir == "" {
		return nil, errors.New("registry: Dir is required")
	}
	if opts.Limits.MaxManifestBytes <= 0 {
		opts.Limits.MaxManifestBytes = 4 << 20
	}
	l := opts.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	l = l.With("component", "registry")
	b, err := newDiskBlobs(filepath.Join(opts.Dir, "blobs"), filepath.Join(opts.Dir, "uploads"))
	if err != nil {
		return nil, err
	}
	ms, err := newManifestStore(filepath.Join(opts.Dir, "manifests"))
	if err != nil {
		return nil, err
	}
	inner := ggcr.New(ggcr.WithBlobHandler(b), ggcr.Logger(slog.NewLogLogger(l.Handler(), slog.LevelDebug)))
	r := &Registry{opts: opts, log: l, blobs: b, manifests: ms, inner: inner, transport: handlerTransport{inner}}
	n, err := ms.replay(inner)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		l.Info("registry manifests restored", "count", n)
	}
	return r, nil
}

func (r *Registry) platform() v1.Platform {
	if r.opts.Platform.OS == "" {
		return v1.Platform{OS: "linux", Architecture: "amd64"}
	}
	return r.opts.Platform
}

// Wait blocks until imports started by pushes have been handed to the
// importer (the conversions themselves run in the image store).
func (r *Registry) Wait() { r.importWG.Wait() }

// regError writes an OCI distribution error body.
func regError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}

// Tags (OCI distribution spec grammar).
var tagRE = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

// route is a parsed /v2/ path.
type route struct {
	kind string // "ping", "catalog", "tags", "manifest", "blob", "upload"
	repo string
	ref  string // manifest reference, blob digest or upload id
}

func parsePath(p string) (route, bool) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return route{}, p == "/v2"
	}
	if rest == "" {
		return route{kind: "ping"}, true
	}
	if rest == "_catalog" {
		return route{kind: "catalog"}, true
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	switch {
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		return route{kind: "tags", repo: strings.Join(segs[:n-2], "/")}, true
	case n >= 3 && segs[n-2] == "manifests":
		return route{kind: "manifest", repo: strings.Join(segs[:n-2], "/"), ref: segs[n-1]}, true
	case n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads":
		return route{kind: "upload", repo: strings.Join(segs[:n-3], "/"), ref: segs[n-1]}, true
	case n >= 3 && segs[n-2] == "blobs" && segs[n-1] == "uploads":
		return route{kind: "upload", repo: strings.Join(segs[:n-2], "/")}, true
	case n >= 3 && segs[n-2] == "blobs":
		return route{kind: "blob", repo: strings.Join(segs[:n-2], "/"), ref: segs[n-1]}, true
	}
	return route{}, false
}

// allowedBy returns the scopes any one of which permits the request (nil =
// any valid token). HEAD is an existence check every push client makes
// before uploading, so pushers (image:write) may HEAD too; reading content
// (GET) needs image:read.
func allowedBy(method string, rt route) []auth.Scope {
	switch {
	case rt.kind == "ping":
		return nil
	case rt.kind == "upload":
		return []auth.Scope{auth.ImageWrite}
	case method == http.MethodHead:
		return []auth.Scope{auth.ImageRead, auth.ImageWrite}
	case method == http.MethodGet:
		return []auth.Scope{auth.ImageRead}
	case method == http.MethodDelete:
		return []auth.Scope{auth.ImageDelete}
	}
	return []auth.Scope{auth.ImageWrite}
}

func allows(p *auth.Principal, any []auth.Scope) bool {
	if any == nil {
		return true
	}
	for _, s := range any {
		if p.Allows(s) {
			return true
		}
	}
	return false
}

// ServeHTTP authenticates, authorizes and dispatches one registry request.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rt, ok := parsePath(req.URL.Path)
	tok, err := auth.TokenFromRequest(req, true)
	var p *auth.Principal
	if err == nil {
		p, err = r.opts.Verifier.Verify(tok)
	}
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Basic realm="hypeman"`)
		regError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required: use an API token as Bearer token or as the Basic auth password")
		return
	}
	if !ok {
		regError(w, http.StatusNotFound, "NAME_UNKNOWN", "unknown registry path")
		return
	}
	if need := allowedBy(req.Method, rt); !allows(p, need) {
		regError(w, http.StatusForbidden, "DENIED", "missing required scope: "+string(need[0]))
		return
	}
	if rt.repo != "" {
		if err := images.CheckRepository(rt.repo); err != nil {
			regError(w, http.StatusBadRequest, "NAME_INVALID", err.Error())
			return
		}
	}
	switch {
	case rt.kind == "upload":
		r.serveUpload(w, req, rt)
	case rt.kind == "manifest" && req.Method == http.MethodPut:
		r.putManifest(w, req, rt)
	case rt.kind == "manifest" && req.Method == http.MethodDelete:
		r.deleteManifest(w, req, rt)
	default:
		r.inner.ServeHTTP(w, req)
	}
}

// capture records the status an inner handler wrote.
type capture struct {
	http.ResponseWriter
	status int
}

func (c *capture) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *capture) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	return c.ResponseWriter.Write(b)
}
