package api

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"hypeman/internal/auth"
	"hypeman/internal/images"
	"hypeman/internal/pushes"
)

// fakePushes answers by image name and records the last request.
type fakePushes struct {
	last pushes.Request
	list []pushes.Push
}

func (f *fakePushes) Create(ctx context.Context, req pushes.Request) (*pushes.Push, error) {
	f.last = req
	switch req.Image {
	case "missing":
		return nil, fmt.Errorf("%w: missing", images.ErrNotFound)
	case "pulling":
		return nil, fmt.Errorf("%w: pulling", images.ErrNotReady)
	case "old":
		return nil, fmt.Errorf("%w: old: delete it and pull it again", images.ErrNotCached)
	}
	if req.Target == "bad" {
		return nil, fmt.Errorf("%w: target: bad", pushes.ErrInvalid)
	}
	return &pushes.Push{ID: "push-1", Image: req.Image, Digest: "sha256:ab", Target: req.Target,
		Status: pushes.StatusQueued, QueuePosition: 2, Layers: 3, Bytes: 300, CreatedAt: time.Now()}, nil
}

func (f *fakePushes) Get(ctx context.Context, id string) (*pushes.Push, error) {
	for i := range f.list {
		if f.list[i].ID == id {
			return &f.list[i], nil
		}
	}
	return nil, fmt.Errorf("%w: %s", pushes.ErrNotFound, id)
}

func (f *fakePushes) List(ctx context.Context) ([]pushes.Push, error) { return f.list, nil }

func TestPushRoutes(t *testing.T) {
	now := time.Now().UTC()
	fp := &fakePushes{list: []pushes.Push{{ID: "push-2", Image: "a", Digest: "sha256:cd", Target: "r.example/a:1",
		Status: pushes.StatusFailed, Error: "registry denied access: nope", Layers: 1, Bytes: 10, BytesDone: 4,
		CreatedAt: now, CompletedAt: &now}}}
	e := newTestEnv(t, func(o *Options) { o.Pushes = fp })
	tok := mint(t)

	var p map[string]any
	resp := e.do("POST", "/pushes", tok, `{"image":"app:1","target":"r.example/app:1","insecure":true,"credentials":{"registry_token":"tkn"}}`)
	jsonBody(t, resp, &p)
	if resp.StatusCode != 202 || p["id"] != "push-1" || p["status"] != "queued" || p["queue_position"] != 2.0 ||
		p["bytes_total"] != 300.0 || p["layers"] != 3.0 {
		t.Fatalf("create: %d %v", resp.StatusCode, p)
	}
	if b, ok := fp.last.Auth.(*authn.Bearer); !ok || b.Token != "tkn" || !fp.last.Insecure {
		t.Errorf("request reached the manager as %+v", fp.last)
	}

	for _, c := range []struct {
		body   string
		status int
		code   string
		word   string
	}{
		{`{"image":"missing","target":"r.example/a:1"}`, 404, CodeNotFound, "missing"},
		{`{"image":"pulling","target":"r.example/a:1"}`, 409, CodeImageNotReady, "pulling"},
		{`{"image":"old","target":"r.example/a:1"}`, 409, CodeConflict, "pull it again"},
		{`{"image":"a","target":"bad"}`, 400, CodeInvalidRequest, "target"},
		{`{"image":"a","target":"r.example/a:1","credentials":{"username":"u","registry_token":"t"}}`, 400, CodeInvalidRequest, "registry_token"},
		{`{"image":"a"}`, 400, CodeInvalidRequest, "target"},
	} {
		resp := e.do("POST", "/pushes", tok, c.body)
		code, msg := errBody(t, resp)
		if resp.StatusCode != c.status || code != c.code || !strings.Contains(msg, c.word) {
			t.Errorf("POST /pushes %s: %d %s %q; want %d %s mentioning %q", c.body, resp.StatusCode, code, msg, c.status, c.code, c.word)
		}
	}

	var list []map[string]any
	resp = e.do("GET", "/pushes", tok, "")
	jsonBody(t, resp, &list)
	if resp.StatusCode != 200 || len(list) != 1 || list[0]["error"] != "registry denied access: nope" || list[0]["bytes"] != 4.0 {
		t.Errorf("list: %d %v", resp.StatusCode, list)
	}
	p = nil
	resp = e.do("GET", "/pushes/push-2", tok, "")
	jsonBody(t, resp, &p)
	if resp.StatusCode != 200 || p["status"] != "failed" || p["completed_at"] == nil || p["queue_position"] != nil {
		t.Errorf("get: %d %v", resp.StatusCode, p)
	}
	if resp := e.do("GET", "/pushes/push-nope", tok, ""); resp.StatusCode != 404 {
		t.Errorf("get unknown: %d", resp.StatusCode)
	}
	// Scopes: reading needs image:read, pushing image:write.
	if resp := e.do("POST", "/pushes", mint(t, auth.ImageRead), `{"image":"a","target":"r.example/a:1"}`); resp.StatusCode != 403 {
		t.Errorf("push with image:read only: %d", resp.StatusCode)
	}
	if resp := e.do("GET", "/pushes", mint(t, auth.ImageRead), ""); resp.StatusCode != 200 {
		t.Errorf("list with image:read: %d", resp.StatusCode)
	}
}
