package api

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"

	"hypeman/internal/api/gen"
	"hypeman/internal/testutil/tier"
	"hypeman/internal/untar/untartest"
	"hypeman/internal/volumes"
)

func newVolumeEnv(t *testing.T, maxBody int64) (*testEnv, *volumes.Store) {
	t.Helper()
	tier.Tools(t, "mkfs.ext4")
	vs, err := volumes.New(volumes.Config{Dir: filepath.Join(t.TempDir(), "volumes"), MaxSizeGB: 10})
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t, func(o *Options) {
		o.Volumes = vs
		o.MaxBodyBytes = maxBody
	})
	return e, vs
}

func TestVolumeRoutes(t *testing.T) {
	e, vs := newVolumeEnv(t, 0)
	tok := mint(t)

	resp := e.do("POST", "/volumes", tok, `{"name":"data","size_gb":1,"tags":{"team":"a"}}`)
	if resp.StatusCode != 201 {
		code, msg := errBody(t, resp)
		t.Fatalf("create: %d %s %s", resp.StatusCode, code, msg)
	}
	var raw map[string]any
	jsonBody(t, resp, &raw)
	for _, k := range []string{"id", "name", "size_gb", "created_at", "attachments", "tags"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("volume JSON lacks %q: %v", k, raw)
		}
	}
	if a, ok := raw["attachments"].([]any); !ok || len(a) != 0 {
		t.Errorf("attachments = %v, want []", raw["attachments"])
	}
	id, _ := raw["id"].(string)

	resp = e.do("POST", "/volumes", tok, `{"id":"custom-1","name":"other","size_gb":2}`)
	if resp.StatusCode != 201 {
		t.Fatalf("create with id: %d", resp.StatusCode)
	}
	resp.Body.Close()

	for _, c := range []struct {
		body, code, mention string
		status              int
	}{
		{`{"name":"data","size_gb":1}`, "conflict", "data", 409},
		{`{"name":"x","id":"data","size_gb":1}`, "conflict", "data", 409},
		{`{"name":"Bad_Name","size_gb":1}`, "invalid_request", "name", 400},
		{`{"name":"big","size_gb":11}`, "invalid_request", "volume_max_size_gb", 400},
		{`{"name":"zero","size_gb":0}`, "invalid_request", "size_gb", 400},
		{`{"name":"badid","id":"../x","size_gb":1}`, "invalid_request", "id", 400},
		{`{"name":"t","size_gb":1,"tags":{"k":"bad\u0001"}}`, "invalid_request", "tags", 400},
		{`{"size_gb":1}`, "invalid_request", "name", 400},
	} {
		resp := e.do("POST", "/volumes", tok, c.body)
		code, msg := errBody(t, resp)
		if resp.StatusCode != c.status || code != c.code || !strings.Contains(msg, c.mention) {
			t.Errorf("POST %s: %d %s %q; want %d %s mentioning %q", c.body, resp.StatusCode, code, msg, c.status, c.code, c.mention)
		}
	}

	var list []gen.Volume
	jsonBody(t, e.do("GET", "/volumes", tok, ""), &list)
	if len(list) != 2 {
		t.Fatalf("list = %+v", list)
	}
	jsonBody(t, e.do("GET", "/volumes?tags[team]=a", tok, ""), &list)
	if len(list) != 1 || list[0].Id != id {
		t.Errorf("list tags[team]=a = %+v", list)
	}
	var v gen.Volume
	jsonBody(t, e.do("GET", "/volumes/other", tok, ""), &v)
	if v.Id != "custom-1" || v.SizeGb != 2 {
		t.Errorf("get by name = %+v", v)
	}
	if resp := e.do("GET", "/volumes/nope", tok, ""); resp.StatusCode != 404 {
		t.Errorf("get missing: %d", resp.StatusCode)
	} else if code, _ := errBody(t, resp); code != "not_found" {
		t.Errorf("get missing code %s", code)
	}

	// Attached (by an instance, through the store) → delete is 409 naming it.
	if _, err := vs.Attach(context.Background(), id, volumes.Attachment{InstanceID: "inst-7", MountPath: "/data"}); err != nil {
		t.Fatal(err)
	}
	jsonBody(t, e.do("GET", "/volumes/"+id, tok, ""), &v)
	if v.Attachments == nil || len(*v.Attachments) != 1 || (*v.Attachments)[0].InstanceId != "inst-7" || (*v.Attachments)[0].MountPath != "/data" {
		t.Errorf("attachments = %+v", v.Attachments)
	}
	resp = e.do("DELETE", "/volumes/"+id, tok, "")
	if code, msg := errBody(t, resp); resp.StatusCode != 409 || code != "conflict" || !strings.Contains(msg, "inst-7") {
		t.Errorf("delete attached: %d %s %q", resp.StatusCode, code, msg)
	}
	vs.DetachInstance(context.Background(), "inst-7")
	if resp := e.do("DELETE", "/volumes/"+id, tok, ""); resp.StatusCode != 204 {
		t.Errorf("delete: %d", resp.StatusCode)
	}
	if resp := e.do("DELETE", "/volumes/"+id, tok, ""); resp.StatusCode != 404 {
		t.Errorf("second delete: %d", resp.StatusCode)
	}

	// Scopes: volume:read lists, cannot create or delete.
	ro := mint(t, "volume:read")
	if resp := e.do("GET", "/volumes", ro, ""); resp.StatusCode != 200 {
		t.Errorf("list with volume:read: %d", resp.StatusCode)
	}
	if resp := e.do("POST", "/volumes", ro, `{"name":"n","size_gb":1}`); resp.StatusCode != 403 {
		t.Errorf("create with volume:read: %d", resp.StatusCode)
	}
	if resp := e.do("DELETE", "/volumes/other", mint(t, "volume:write"), ""); resp.StatusCode != 403 {
		t.Errorf("delete with volume:write only: %d", resp.StatusCode)
	}
}

// postArchive streams body to /volumes/from-archive.
func postArchive(t *testing.T, e *testEnv, query string, body io.Reader) *http.Response {
	t.Helper()
	req, err := http.NewRequest("POST", e.srv.URL+"/volumes/from-archive?"+query, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/gzip")
	req.Header.Set("Authorization", "Bearer "+mint(t))
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func tarGz(t *testing.T, entries ...untartest.Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(untartest.Tar(t, entries...))
	zw.Close()
	return buf.Bytes()
}

func TestVolumeFromArchiveRoute(t *testing.T) {
	tier.Root(t, "extraction gives files their owners (chown)")
	// A 4 KiB JSON body limit: the archive (~256 KiB, incompressible) is
	// streamed past it.
	e, vs := newVolumeEnv(t, 4<<10)
	random := make([]byte, 256<<10)
	rand.Read(random)
	archive := tarGz(t, untartest.Entry{Name: "blob", Data: string(random)}, untartest.Entry{Name: "etc/motd", Data: "hi", Mode: 0o600, UID: 1000})

	resp := postArchive(t, e, "name=seeded&size_gb=1&id=seed-1&tags[src]=tgz", bytes.NewReader(archive))
	if resp.StatusCode != 201 {
		code, msg := errBody(t, resp)
		t.Fatalf("from-archive: %d %s %s", resp.StatusCode, code, msg)
	}
	var v gen.Volume
	jsonBody(t, resp, &v)
	if v.Id != "seed-1" || v.Name != "seeded" || v.SizeGb != 1 || v.Tags == nil || (*v.Tags)["src"] != "tgz" {
		t.Errorf("volume = %+v", v)
	}
	if got, err := vs.Get(context.Background(), "seeded"); err != nil || got.Path == "" {
		t.Errorf("store: %+v, %v", got, err)
	}

	for _, c := range []struct {
		name, query string
		body        []byte
		status      int
		code        string
		mention     string
	}{
		{"traversal", "name=evil&size_gb=1", tarGz(t, untartest.Entry{Name: "../../etc/evil", Data: "x"}), 400, "invalid_request", "../../etc/evil"},
		{"device", "name=evil&size_gb=1", tarGz(t, untartest.Entry{Name: "dev/mem", Typ: tar.TypeChar, Major: 1, Minor: 1}), 400, "invalid_request", "dev/mem"},
		{"not gzip", "name=evil&size_gb=1", []byte("plain text"), 400, "invalid_request", "gzip"},
		{"no name", "size_gb=1", archive, 400, "invalid_request", "name"},
		{"size over max", "name=big&size_gb=11", archive, 400, "invalid_request", "size_gb"},
		{"name taken", "name=seeded&size_gb=1", archive, 409, "conflict", "seeded"},
	} {
		resp := postArchive(t, e, c.query, bytes.NewReader(c.body))
		code, msg := errBody(t, resp)
		if resp.StatusCode != c.status || code != c.code || !strings.Contains(msg, c.mention) {
			t.Errorf("%s: %d %s %q; want %d %s mentioning %q", c.name, resp.StatusCode, code, msg, c.status, c.code, c.mention)
		}
	}
	if list, _ := vs.List(context.Background(), nil); len(list) != 1 {
		t.Errorf("failed creates left volumes: %d", len(list))
	}
}

// overwriteBomb is a tar.gz that writes the same 1 MiB file n times (each
// entry replaces the last): little disk, little compressed data, n MiB of
// file bytes.
func overwriteBomb(t *testing.T, n int) []byte {
	t.Helper()
	var one bytes.Buffer
	tw := tar.NewWriter(&one)
	tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: 1 << 20, Typeflag: tar.TypeReg})
	tw.Write(make([]byte, 1<<20))
	tw.Flush()
	var member bytes.Buffer
	zw := gzip.NewWriter(&member)
	zw.Write(one.Bytes())
	zw.Close()
	var out bytes.Buffer
	for i := 0; i < n; i++ {
		out.Write(member.Bytes()) // gzip members concatenate
	}
	return out.Bytes()
}

// Over size_gb is 413 naming size_gb, and the volume is not created.
func TestVolumeFromArchiveOverCap(t *testing.T) {
	tier.Root(t, "extraction gives files their owners (chown)")
	e, vs := newVolumeEnv(t, 0)
	resp := postArchive(t, e, "name=bomb&size_gb=1", bytes.NewReader(overwriteBomb(t, 1100)))
	code, msg := errBody(t, resp)
	if resp.StatusCode != 413 || code != "request_too_large" || !strings.Contains(msg, "size_gb=1") {
		t.Errorf("over cap: %d %s %q", resp.StatusCode, code, msg)
	}
	if list, _ := vs.List(context.Background(), nil); len(list) != 0 {
		t.Errorf("over-cap create left a volume")
	}
}
