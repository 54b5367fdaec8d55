package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"hypeman/internal/fsutil"
	"hypeman/internal/units"
)

// manifestStore persists the manifests the in-memory library handler holds.
// One file per (repository, reference): manifests/<sha256(repo NUL ref)>.json.
type manifestStore struct {
	dir string
	mu  sync.Mutex // orders writes so Seq grows in write order
	seq int64
}

// savedManifest is one persisted manifest PUT.
type savedManifest struct {
	Seq         int64  `json:"seq"` // replay order (children before indexes)
	Repo        string `json:"repo"`
	Reference   string `json:"reference"`
	ContentType string `json:"content_type"`
	Manifest    []byte `json:"manifest"`
}

func newManifestStore(dir string) (*manifestStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	return &manifestStore{dir: dir}, nil
}

func (m *manifestStore) file(repo, ref string) string {
	sum := sha256.Sum256([]byte(repo + "\x00" + ref))
	return filepath.Join(m.dir, hex.EncodeToString(sum[:])+".json")
}

func (m *manifestStore) save(repo, ref, contentType string, body []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq = max(m.seq+1, time.Now().UnixNano())
	return fsutil.WriteJSONAtomic(m.file(repo, ref), savedManifest{
		Seq: m.seq, Repo: repo, Reference: ref, ContentType: contentType, Manifest: body,
	}, 0o644)
}

func (m *manifestStore) remove(repo, ref string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	err := os.Remove(m.file(repo, ref))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// replay PUTs every saved manifest into h in the order they were first
// written, and returns how many it restored. A manifest h refuses (e.g. an
// index whose child is gone) is logged by the caller through the count and
// skipped.
func (m *manifestStore) replay(h http.Handler) (int, error) {
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		return 0, fmt.Errorf("registry: %w", err)
	}
	var all []savedManifest
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		var sm savedManifest
		if err := fsutil.ReadJSON(filepath.Join(m.dir, e.Name()), &sm); err != nil {
			continue
		}
		all = append(all, sm)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Seq < all[j].Seq })
	n := 0
	for _, sm := range all {
		m.seq = max(m.seq, sm.Seq)
		req := httptest.NewRequest(http.MethodPut, "/v2/"+sm.Repo+"/manifests/"+sm.Reference, bytes.NewReader(sm.Manifest))
		req.Header.Set("Content-Type", sm.ContentType)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == http.StatusCreated {
			n++
		}
	}
	return n, nil
}

// putManifest stores a manifest through the library handler, persists it,
// and imports the image when the reference is a tag.
func (r *Registry) putManifest(w http.ResponseWriter, req *http.Request, rt route) {
	body, err := io.ReadAll(io.LimitReader(req.Body, r.opts.Limits.MaxManifestBytes+1))
	if err != nil {
		regError(w, http.StatusBadRequest, "MANIFEST_INVALID", "reading manifest: "+err.Error())
		return
	}
	if int64(len(body)) > r.opts.Limits.MaxManifestBytes {
		regError(w, http.StatusRequestEntityTooLarge, "SIZE_INVALID", fmt.Sprintf("manifest larger than %d bytes", r.opts.Limits.MaxManifestBytes))
		return
	}
	isTag := tagRE.MatchString(rt.ref)
	if !isTag && !strings.HasPrefix(rt.ref, "sha256:") {
		regError(w, http.StatusBadRequest, "MANIFEST_INVALID", fmt.Sprintf("invalid reference %q (tag or sha256 digest)", rt.ref))
		return
	}
	ct := req.Header.Get("Content-Type")
	if !types.MediaType(ct).IsImage() && !types.MediaType(ct).IsIndex() {
		regError(w, http.StatusBadRequest, "MANIFEST_INVALID", fmt.Sprintf("unsupported manifest media type %q", ct))
		return
	}
	if max := r.opts.Limits.MaxPushBytes; max > 0 && types.MediaType(ct).IsImage() {
		var m v1.Manifest
		if err := json.Unmarshal(body, &m); err != nil {
			regError(w, http.StatusBadRequest, "MANIFEST_INVALID", "manifest is not valid JSON")
			return
		}
		total := int64(0)
		for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if d.Size < 0 {
				regError(w, http.StatusBadRequest, "MANIFEST_INVALID", fmt.Sprintf("blob %s has a negative size", d.Digest))
				return
			}
			switch {
			case d.Size > max:
				total = max + 1
			case total <= max: // past max the sum only needs to stay past it (no overflow)
				total += d.Size
			}
		}
		if total > max {
			regError(w, http.StatusRequestEntityTooLarge, "SIZE_INVALID",
				fmt.Sprintf("image references %s of blobs, more than %s; raise registry_max_push_size to allow it",
					units.FormatSize(total), units.FormatSize(max)))
			return
		}
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	cw := &capture{ResponseWriter: w}
	r.inner.ServeHTTP(cw, req)
	if cw.status != http.StatusCreated {
		return
	}
	if err := r.manifests.save(rt.repo, rt.ref, ct, body); err != nil {
		r.log.Error("persist manifest", "repo", rt.repo, "ref", rt.ref, "err", err)
	}
	if isTag && r.opts.Importer != nil {
		r.importTag(rt.repo, rt.ref)
	}
}

// deleteManifest deletes through the library handler and forgets the saved
// copy. (Deleting from the registry does not delete the imported image.)
func (r *Registry) deleteManifest(w http.ResponseWriter, req *http.Request, rt route) {
	cw := &capture{ResponseWriter: w}
	r.inner.ServeHTTP(cw, req)
	if cw.status == http.StatusAccepted || cw.status == http.StatusOK {
		if err := r.manifests.remove(rt.repo, rt.ref); err != nil {
			r.log.Error("forget manifest", "repo", rt.repo, "ref", rt.ref, "err", err)
		}
	}
}

// importTag reads repo:tag back from the library handler in-process and
// hands it to the importer, which converts it in the background.
func (r *Registry) importTag(repo, tag string) {
	imageName := repo + ":" + tag
	// The host part only selects the in-process transport; it is never dialed.
	ref, err := name.ParseReference("hypeman.internal/"+repo+":"+tag, name.Insecure)
	if err != nil {
		r.log.Warn("pushed image not imported: bad reference", "image", imageName, "err", err)
		return
	}
	r.importWG.Add(1)
	defer r.importWG.Done()
	ctx := context.Background()
	img, err := remote.Image(ref, remote.WithTransport(r.transport), remote.WithContext(ctx), remote.WithPlatform(r.platform()))
	if err != nil {
		r.log.Warn("pushed image not imported", "image", imageName, "err", err)
		return
	}
	rec, err := r.opts.Importer.ImportImage(ctx, imageName, img)
	if err != nil {
		r.log.Warn("pushed image not imported", "image", imageName, "err", err)
		return
	}
	r.log.Info("pushed image imported", "image", imageName, "name", rec.Name, "status", rec.Status)
}
