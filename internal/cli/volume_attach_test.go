package cli

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hypeman/internal/api/client"
)

func TestParseVolumeSpec(t *testing.T) {
	for spec, want := range map[string]client.VolumeMount{
		"data:/data":                      {VolumeId: "data", MountPath: "/data"},
		"data:/data:ro":                   {VolumeId: "data", MountPath: "/data", Readonly: ptr(true)},
		"models:/m:ro:overlay=1GB":        {VolumeId: "models", MountPath: "/m", Readonly: ptr(true), Overlay: ptr(true), OverlaySize: ptr("1GB")},
		"vol-abc:/relative/checked/later": {VolumeId: "vol-abc", MountPath: "/relative/checked/later"},
	} {
		got, err := parseVolumeSpec(spec)
		require.NoError(t, err, spec)
		assert.Equal(t, want, got, spec)
	}
	for spec, msg := range map[string]string{
		"data":                "want VOLUME:/mount/path",
		":/data":              "volume (ID or name)",
		"data:":               "mount path is empty",
		"data:/d:rw":          `unknown option "rw"`,
		"data:/d:ro:overlay=": "needs a SIZE",
	} {
		_, err := parseVolumeSpec(spec)
		assert.ErrorContains(t, err, msg, spec)
	}
}

func TestRunVolumeFlag(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 201, instanceJSON("i1", "web", "Initializing", testNow, ""))
	})
	res := f.run("run", "-d", "--name", "web", "--volume", "data:/data", "--volume", "m:/m:ro:overlay=2GB", "busybox")
	require.Equal(t, 0, res.code, res)
	body := mustJSON(t, f.requests("POST", "/instances")[0].Body)
	assert.Equal(t, []any{
		map[string]any{"volume_id": "data", "mount_path": "/data"},
		map[string]any{"volume_id": "m", "mount_path": "/m", "readonly": true, "overlay": true, "overlay_size": "2GB"},
	}, body["volumes"])

	res = f.run("run", "-d", "--volume", "data", "busybox")
	assert.Equal(t, 1, res.code, res)
	assert.Contains(t, res.stderr, "VOLUME:/mount/path")
}

func TestVolumeAttachDetach(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances/{id}/volumes/{vol}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "busy" {
			writeJSON(w, 409, `{"code":"invalid_state","message":"cannot attach a volume to instance in state Running; stop the instance first"}`)
			return
		}
		writeJSON(w, 200, instanceJSON("i1", r.PathValue("id"), "Stopped", testNow, `"volumes":[{"volume_id":"vol-1","mount_path":"/data","readonly":true}]`))
	})
	f.handle("DELETE /instances/{id}/volumes/{vol}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, instanceJSON("i1", r.PathValue("id"), "Stopped", testNow, ""))
	})

	res := f.run("volume", "attach", "data", "--instance", "web", "--mount-path", "/data", "--readonly")
	require.Equal(t, 0, res.code, res)
	assert.Equal(t, "data\n", res.stdout)
	req := f.requests("POST", "/instances/web/volumes/data")
	require.Len(t, req, 1)
	assert.Equal(t, map[string]any{"mount_path": "/data", "readonly": true}, mustJSON(t, req[0].Body))

	res = f.run("volume", "attach", "data", "--instance", "busy", "--mount-path", "/data")
	assert.Equal(t, 1, res.code, res)
	assert.Contains(t, res.stderr, "stop the instance first")
	assert.Equal(t, map[string]any{"mount_path": "/data"}, mustJSON(t, f.requests("POST", "/instances/busy/volumes/data")[0].Body))

	res = f.run("volume", "attach", "data", "--instance", "web")
	assert.Equal(t, 1, res.code, res)
	assert.Contains(t, res.stderr, "--mount-path")

	res = f.run("--format", "json", "volume", "detach", "data", "--instance", "web")
	require.Equal(t, 0, res.code, res)
	assert.True(t, strings.Contains(res.stdout, `"name":"web"`) || strings.Contains(res.stdout, `"name": "web"`), res.stdout)
	assert.Len(t, f.requests("DELETE", "/instances/web/volumes/data"), 1)
}
