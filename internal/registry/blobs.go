package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"hypeman/internal/fsutil"
	"hypeman/internal/units"
)

// diskBlobs stores blobs as files named by digest (blobs/sha256/<hex>) and
// upload sessions as temp files (uploads/<id>). It implements the
// go-containerregistry BlobHandler, BlobStatHandler and BlobDeleteHandler
// interfaces for the read and delete side; uploads never reach the library
// (Registry.serveUpload handles them), so there is no BlobPutHandler.
type diskBlobs struct {
	dir     string
	uploads string
}

// staleUpload is how old an unfinished upload may get before New removes it.
const staleUpload = 24 * time.Hour

func newDiskBlobs(dir, uploads string) (*diskBlobs, error) {
	for _, d := range []string{filepath.Join(dir, "sha256"), uploads} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
	}
	b := &diskBlobs{dir: dir, uploads: uploads}
	if ents, err := os.ReadDir(uploads); err == nil {
		for _, e := range ents {
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > staleUpload {
				os.Remove(filepath.Join(uploads, e.Name()))
			}
		}
	}
	return b, nil
}

func (b *diskBlobs) path(h v1.Hash) (string, error) {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return "", fmt.Errorf("unsupported digest %s", h)
	}
	return filepath.Join(b.dir, h.Algorithm, h.Hex), nil
}

func (b *diskBlobs) Stat(_ context.Context, _ string, h v1.Hash) (int64, error) {
	p, err := b.path(h)
	if err != nil {
		return 0, ggcr.ErrNotFound
	}
	st, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return 0, ggcr.ErrNotFound
	}
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func (b *diskBlobs) Get(_ context.Context, _ string, h v1.Hash) (io.ReadCloser, error) {
	p, err := b.path(h)
	if err != nil {
		return nil, ggcr.ErrNotFound
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ggcr.ErrNotFound
	}
	return f, err
}

func (b *diskBlobs) Delete(_ context.Context, _ string, h v1.Hash) error {
	p, err := b.path(h)
	if err != nil {
		return ggcr.ErrNotFound
	}
	if err := os.Remove(p); errors.Is(err, os.ErrNotExist) {
		return ggcr.ErrNotFound
	} else if err != nil {
		return err
	}
	return nil
}

// commit moves a verified temp file into place.
func (b *diskBlobs) commit(tmp, final string) error {
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(final))
}

// Upload sessions. The id is random hex; the session is the file
// uploads/<id>, its size is the offset the next chunk must start at.

var uploadIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

func newUploadID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func uploadLocation(repo, id string) string { return "/v2/" + repo + "/blobs/uploads/" + id }
func blobLocation(repo string, h v1.Hash) string {
	return "/v2/" + repo + "/blobs/" + h.String()
}

// serveUpload implements the OCI upload protocol: POST starts a session
// (or uploads monolithically with ?digest=, or mounts with ?mount=), PATCH
// appends a chunk, PUT ?digest= finishes (with an optional last chunk), GET
// reports progress, DELETE cancels.
func (r *Registry) serveUpload(w http.ResponseWriter, req *http.Request, rt route) {
	defer req.Body.Close()
	if req.Method == http.MethodPost {
		if rt.ref != "" {
			regError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "POST to an upload session")
			return
		}
		r.startUpload(w, req, rt)
		return
	}
	if !uploadIDRE.MatchString(rt.ref) {
		regError(w, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "unknown upload")
		return
	}
	path := filepath.Join(r.blobs.uploads, rt.ref)
	st, err := os.Stat(path)
	if err != nil {
		regError(w, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "unknown upload")
		return
	}
	switch req.Method {
	case http.MethodGet:
		w.Header().Set("Location", uploadLocation(rt.repo, rt.ref))
		w.Header().Set("Range", rangeHeader(st.Size()))
		w.Header().Set("Docker-Upload-UUID", rt.ref)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodDelete:
		os.Remove(path)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodPatch:
		size, ok := r.appendChunk(w, req, path, st.Size())
		if !ok {
			return
		}
		w.Header().Set("Location", uploadLocation(rt.repo, rt.ref))
		w.Header().Set("Range", rangeHeader(size))
		w.Header().Set("Docker-Upload-UUID", rt.ref)
		w.WriteHeader(http.StatusAccepted)
	case http.MethodPut:
		if _, ok := r.appendChunk(w, req, path, st.Size()); !ok {
			return
		}
		r.finishUpload(w, req, rt.repo, path)
	default:
		regError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "unsupported method for uploads")
	}
}

func rangeHeader(size int64) string {
	if size == 0 {
		return "0-0"
	}
	return "0-" + strconv.FormatInt(size-1, 10)
}

func (r *Registry) startUpload(w http.ResponseWriter, req *http.Request, rt route) {
	q := req.URL.Query()
	if mount := q.Get("mount"); mount != "" {
		// Cross-repository mount: blobs are global here, so any existing
		// blob can be "mounted"; otherwise fall through to a new session.
		if h, err := v1.NewHash(mount); err == nil {
			if _, err := r.blobs.Stat(req.Context(), rt.repo, h); err == nil {
				w.Header().Set("Location", blobLocation(rt.repo, h))
				w.Header().Set("Docker-Content-Digest", h.String())
				w.WriteHeader(http.StatusCreated)
				return
			}
		}
	}
	id := newUploadID()
	path := filepath.Join(r.blobs.uploads, id)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		regError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
		return
	}
	f.Close()
	if q.Get("digest") != "" {
		// Monolithic upload: the whole blob is this request's body.
		if _, ok := r.appendChunk(w, req, path, 0); !ok {
			os.Remove(path)
			return
		}
		r.finishUpload(w, req, rt.repo, path)
		return
	}
	w.Header().Set("Location", uploadLocation(rt.repo, id))
	w.Header().Set("Range", "0-0")
	w.Header().Set("Docker-Upload-UUID", id)
	w.WriteHeader(http.StatusAccepted)
}

// appendChunk appends the request body to the session file, checking a
// Content-Range start against the current size. It returns the new size.
func (r *Registry) appendChunk(w http.ResponseWriter, req *http.Request, path string, size int64) (int64, bool) {
	if cr := req.Header.Get("Content-Range"); cr != "" && req.Method == http.MethodPatch {
		startStr, _, _ := strings.Cut(strings.TrimPrefix(cr, "bytes="), "-")
		start, err := strconv.ParseInt(strings.TrimSpace(startStr), 10, 64)
		if err != nil || start != size {
			w.Header().Set("Range", rangeHeader(size))
			regError(w, http.StatusRequestedRangeNotSatisfiable, "BLOB_UPLOAD_INVALID",
				fmt.Sprintf("chunk starts at %q but the upload has %d bytes", cr, size))
			return 0, false
		}
	}
	maxBlob := r.opts.Limits.MaxBlobBytes
	if maxBlob > 0 && req.ContentLength > 0 && size+req.ContentLength > maxBlob {
		blobTooLarge(w, maxBlob)
		return 0, false
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		regError(w, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "unknown upload")
		return 0, false
	}
	var body io.Reader = req.Body
	if maxBlob > 0 {
		// Stop copying one byte past the cap (the declared length may be
		// absent, chunked, or wrong).
		body = io.LimitReader(req.Body, maxBlob-size+1)
	}
	n, err := io.Copy(f, body)
	cerr := f.Close()
	if err == nil {
		err = cerr
	}
	if err == nil && maxBlob > 0 && size+n > maxBlob {
		_ = os.Truncate(path, size)
		blobTooLarge(w, maxBlob)
		return 0, false
	}
	if err != nil {
		// Drop what this chunk wrote so a retry can start at the old size.
		_ = os.Truncate(path, size)
		regError(w, http.StatusBadRequest, "BLOB_UPLOAD_INVALID", "reading chunk: "+err.Error())
		return 0, false
	}
	return size + n, true
}

func blobTooLarge(w http.ResponseWriter, max int64) {
	w.Header().Set("Connection", "close") // the rest of the body is not read
	regError(w, http.StatusRequestEntityTooLarge, "SIZE_INVALID",
		fmt.Sprintf("blob larger than %s; raise registry_max_blob_size to allow it", units.FormatSize(max)))
}

// finishUpload verifies the session file against ?digest= and commits it.
func (r *Registry) finishUpload(w http.ResponseWriter, req *http.Request, repo, path string) {
	h, err := v1.NewHash(req.URL.Query().Get("digest"))
	if err != nil || h.Algorithm != "sha256" {
		regError(w, http.StatusBadRequest, "DIGEST_INVALID", "missing or unsupported digest (sha256 required)")
		return
	}
	f, err := os.Open(path)
	if err != nil {
		regError(w, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "unknown upload")
		return
	}
	sum := sha256.New()
	_, err = io.Copy(sum, f)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		regError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
		return
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != h.Hex {
		os.Remove(path)
		regError(w, http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("content has digest sha256:%s, not %s", got, h))
		return
	}
	final, _ := r.blobs.path(h)
	if err := r.blobs.commit(path, final); err != nil {
		regError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
		return
	}
	w.Header().Set("Location", blobLocation(repo, h))
	w.Header().Set("Docker-Content-Digest", h.String())
	w.WriteHeader(http.StatusCreated)
}
