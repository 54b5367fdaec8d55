package api

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hypeman/internal/events"
	"hypeman/internal/instances"
	"hypeman/internal/paths"
)

// Stored data written by a newer hypemand (a format version this build
// does not know) is never a 500: a snapshot record answers 409
// unsupported_format naming the file; an instance whose metadata cannot be
// read lists as Unknown with the reason, refuses everything but delete,
// and deletes.
func TestStoredDataInUnknownVersion(t *testing.T) {
	root := t.TempDir()
	p := paths.New(root)
	for dir, file := range map[string]string{p.SnapshotDir("snapfuture"): "snapshot.json", p.InstanceDir("instfuture"): "metadata.json"} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(`{"version":99,"id":"x"}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := instances.New(context.Background(), instances.Config{
		Paths: p, Hypervisor: fakeHypervisor{}, Images: noImages{}, Events: events.New(events.Options{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	h, err := NewServer(Options{Instances: m, Images: newFakeImages(), Secret: testSecret,
		Lifecycle: m, Snapshots: m, Guest: m, Ingresses: &fakeIngresses{}})
	if err != nil {
		t.Fatal(err)
	}
	tok := mint(t)

	rec := serve(h, "GET", "/snapshots/snapfuture", tok, "", nil)
	code, msg := checkErrorShape(t, rec)
	if rec.Code != 409 || code != CodeUnsupportedFormat || !strings.Contains(msg, "snapshot.json") || !strings.Contains(msg, "99") {
		t.Fatalf("snapshot in a future format: %d %s %q", rec.Code, code, msg)
	}

	rec = serve(h, "GET", "/instances/instfuture", tok, "", nil)
	var in struct {
		State      string  `json:"state"`
		StateError *string `json:"state_error"`
	}
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &in) != nil || in.State != "Unknown" ||
		in.StateError == nil || !strings.Contains(*in.StateError, "99") {
		t.Fatalf("instance in a future format: %d %s", rec.Code, rec.Body)
	}
	rec = serve(h, "POST", "/instances/instfuture/start", tok, "", nil)
	if code, _ := checkErrorShape(t, rec); rec.Code != 409 {
		t.Fatalf("start of an unreadable instance: %d %s", rec.Code, code)
	}
	if rec = serve(h, "DELETE", "/instances/instfuture", tok, "", nil); rec.Code != 204 {
		t.Fatalf("delete of an unreadable instance: %d %s", rec.Code, rec.Body)
	}
	if rec = serve(h, "GET", "/instances/instfuture", tok, "", nil); rec.Code != 404 {
		t.Fatalf("after delete: %d %s", rec.Code, rec.Body)
	}
}
