package api

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
)

// fakeInstanceVolumes records calls; err, when set, is returned instead.
type fakeInstanceVolumes struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (f *fakeInstanceVolumes) AttachVolume(ctx context.Context, ref, vol string, p instances.VolumeMount) (*instances.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("attach %s %s %s ro=%t", ref, vol, p.MountPath, p.ReadOnly))
	if f.err != nil {
		return nil, f.err
	}
	return &instances.Instance{ID: ref, Name: ref, State: state.Stopped, Hypervisor: "qemu",
		Volumes: []instances.VolumeMount{{VolumeID: vol, MountPath: p.MountPath, ReadOnly: p.ReadOnly}}}, nil
}

func (f *fakeInstanceVolumes) DetachVolume(ctx context.Context, ref, vol string) (*instances.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("detach %s %s", ref, vol))
	if f.err != nil {
		return nil, f.err
	}
	return &instances.Instance{ID: ref, Name: ref, State: state.Stopped, Hypervisor: "qemu"}, nil
}

func TestInstanceVolumeRoutes(t *testing.T) {
	iv := &fakeInstanceVolumes{}
	e := newTestEnv(t, func(o *Options) { o.InstanceVolumes = iv })
	tok := mint(t)

	resp := e.do("POST", "/instances/web/volumes/data", tok, `{"mount_path":"/data","readonly":true}`)
	var in map[string]any
	jsonBody(t, resp, &in)
	require.Equal(t, 200, resp.StatusCode, in)
	assert.Equal(t, []any{map[string]any{"volume_id": "data", "mount_path": "/data", "readonly": true}}, in["volumes"])

	resp = e.do("DELETE", "/instances/web/volumes/data", tok, "")
	in = nil
	jsonBody(t, resp, &in)
	require.Equal(t, 200, resp.StatusCode, in)
	assert.Nil(t, in["volumes"])
	assert.Equal(t, []string{"attach web data /data ro=true", "detach web data"}, iv.calls)

	// The manager's errors keep their meaning.
	for _, c := range []struct {
		err    error
		status int
		code   string
	}{
		{fmt.Errorf("%w: v", instances.ErrVolumeNotFound), 404, "not_found"},
		{fmt.Errorf("%w: attached elsewhere", instances.ErrVolumeInUse), 409, "conflict"},
		{fmt.Errorf("%w; stop the instance first", &instances.TransitionError{Action: "attach a volume to", State: state.Running}), 409, "invalid_state"},
		{&instances.InvalidArgumentError{Field: "mount_path", Reason: "must be absolute"}, 400, "invalid_request"},
	} {
		iv.err = c.err
		resp := e.do("POST", "/instances/web/volumes/data", tok, `{"mount_path":"data"}`)
		code, msg := errBody(t, resp)
		assert.Equal(t, c.status, resp.StatusCode, msg)
		assert.Equal(t, c.code, code)
		assert.Equal(t, c.err.Error(), msg)
	}
	// The body is required and checked against the schema.
	resp = e.do("POST", "/instances/web/volumes/data", tok, `{"readonly":true}`)
	code, msg := errBody(t, resp)
	assert.Equal(t, 400, resp.StatusCode, msg)
	assert.Equal(t, "invalid_request", code)
}

func TestCreatePassesVolumes(t *testing.T) {
	e := newTestEnv(t, nil)
	resp := e.do("POST", "/instances", mint(t), `{"name":"web","image":"busybox","volumes":[
		{"volume_id":"data","mount_path":"/data"},
		{"volume_id":"ref","mount_path":"/ref","readonly":true,"overlay":true,"overlay_size":"1GB"}]}`)
	var in map[string]any
	jsonBody(t, resp, &in)
	require.Equal(t, 201, resp.StatusCode, in)
	assert.Equal(t, []instances.VolumeMount{
		{VolumeID: "data", MountPath: "/data"},
		{VolumeID: "ref", MountPath: "/ref", ReadOnly: true, Overlay: true, OverlaySize: "1GB"},
	}, e.inst.created[0].Volumes)
}
