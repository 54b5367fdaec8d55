package conformance_test

import (
	"context"
	"strings"
	"testing"
	"time"
)

// volumeWriter is the program of the instances in the volume flow: the
// writer leaves a note on the volume, every instance then idles.
const volumeWriter = `echo from-writer > /data/note && sync && echo wrote-note; exec sleep 1000000`

// volumes walks hypeman's CLI through a volume's life next to the
// instance flow: create, attach at run, data outliving its writer, a
// read-only reader, detach/attach on a Stopped instance and refusal to
// delete an attached volume.
func (f *flow) volumes() {
	var volID, writerID string
	f.step("volume create and list", func(t *testing.T) {
		volID = strings.TrimSpace(f.cli(t, nil, "volume", "create", "--name", "confdata", "--size", "1", "--tag", "suite=conformance-volumes").Stdout)
		if volID == "" || strings.Contains(volID, "\n") {
			t.Fatalf("volume create printed %q, want the volume id", volID)
		}
		if got := strings.TrimSpace(f.cli(t, nil, "volume", "list", "-q", "--tag", "suite=conformance-volumes").Stdout); got != volID {
			t.Errorf("volume list -q --tag: %q, want %q", got, volID)
		}
		var v struct {
			ID     string `json:"id"`
			Name   string `json:"name"`
			SizeGB int    `json:"size_gb"`
		}
		f.json(t, &v, "volume", "get", volID)
		if v.ID != volID || v.Name != "confdata" || v.SizeGB != 1 {
			t.Errorf("volume get: %+v", v)
		}
	})

	f.step("run with a volume", func(t *testing.T) {
		r := f.cli(t, nil, "run", "--name", "vol-writer", "--memory", "256MB", "--cpus", "1",
			"--tag", "suite=conformance-volumes", "-v", "confdata:/data", "--cmd", volumeWriter, "conformance/web:v1")
		writerID = strings.TrimSpace(r.Stdout)
		f.wait(t, "vol-writer", "Running")
		// Running is the program's start: wait for its note to be written.
		for deadline := time.Now().Add(time.Minute); !strings.Contains(f.cli(t, nil, "logs", "--tail", "20", "vol-writer").Stdout, "wrote-note"); {
			if time.Now().After(deadline) {
				t.Fatal("the writer did not print wrote-note in a minute")
			}
			time.Sleep(200 * time.Millisecond)
		}
		if r := f.cli(t, nil, "exec", "-T", "vol-writer", "--", "cat", "/data/note"); r.Stdout != "from-writer\n" {
			t.Errorf("the writer's note on its volume: %q", r.Stdout)
		}
		var v struct {
			Attachments []struct {
				InstanceID string `json:"instance_id"`
				MountPath  string `json:"mount_path"`
				Readonly   bool   `json:"readonly"`
			} `json:"attachments"`
		}
		f.json(t, &v, "volume", "get", "confdata")
		if len(v.Attachments) != 1 || v.Attachments[0].InstanceID != writerID || v.Attachments[0].MountPath != "/data" || v.Attachments[0].Readonly {
			t.Errorf("volume get attachments: %+v, want the writer at /data read-write", v.Attachments)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if r := f.up.Run(t, ctx, "", nil, "volume", "delete", "confdata"); r.Code == 0 || !strings.Contains(r.Stdout+r.Stderr, "conflict") {
			t.Errorf("delete of an attached volume: %v, want a conflict", r)
		}
	})

	f.step("data outlives its writer", func(t *testing.T) {
		f.cli(t, nil, "rm", "--force", "vol-writer")
		f.cli(t, nil, "run", "--name", "vol-reader", "--memory", "256MB", "--cpus", "1",
			"--tag", "suite=conformance-volumes", "-v", "confdata:/data:ro", "--cmd", "exec sleep 1000000", "conformance/web:v1")
		f.wait(t, "vol-reader", "Running")
		if r := f.cli(t, nil, "exec", "-T", "vol-reader", "--", "cat", "/data/note"); r.Stdout != "from-writer\n" {
			t.Errorf("the note read by a second instance: %q", r.Stdout)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if r := f.up.Run(t, ctx, "", nil, "exec", "-T", "vol-reader", "--", "touch", "/data/x"); r.Code == 0 {
			t.Errorf("a write to a read-only volume succeeded: %v", r)
		}
	})

	f.step("detach and attach a Stopped instance", func(t *testing.T) {
		f.cli(t, nil, "stop", "vol-reader")
		f.wait(t, "vol-reader", "Stopped")
		f.cli(t, nil, "volume", "detach", "confdata", "--instance", "vol-reader")
		f.cli(t, nil, "volume", "attach", "confdata", "--instance", "vol-reader", "--mount-path", "/mnt/vol", "--readonly")
		f.cli(t, nil, "start", "vol-reader")
		f.wait(t, "vol-reader", "Running")
		if r := f.cli(t, nil, "exec", "-T", "vol-reader", "--", "cat", "/mnt/vol/note"); r.Stdout != "from-writer\n" {
			t.Errorf("the note at the new mount path: %q", r.Stdout)
		}
	})

	f.step("volume rm", func(t *testing.T) {
		f.cli(t, nil, "rm", "--force", "vol-reader")
		f.cli(t, nil, "volume", "delete", "confdata")
		if got := strings.TrimSpace(f.cli(t, nil, "volume", "list", "-q").Stdout); got != "" {
			t.Errorf("volume list after delete: %q", got)
		}
	})
}
