package agent

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hypeman/internal/guest/guestconfig"
)

// fakeProgram is a ProgramStarter that accepts one start.
type fakeProgram struct {
	mu   sync.Mutex
	reqs []StartRequest
}

func (f *fakeProgram) StartProgram(_ context.Context, req StartRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	if len(f.reqs) > 1 {
		return ErrAlreadyStarted
	}
	return nil
}

func remoteCode(t *testing.T, err error) string {
	t.Helper()
	var re *RemoteError
	require.True(t, errors.As(err, &re), "want a RemoteError, got %v", err)
	return re.Code
}

// The start op hands the config to the init once, and from then on execs
// inherit the started instance's env, user, cwd and hostname instead of
// the template's.
func TestStartOp(t *testing.T) {
	prog := &fakeProgram{}
	h := newHarness(t, func(s *Server) { s.Program = prog })
	ctx := ctxT(t)
	seed := make([]byte, 64)
	cfg := guestconfig.Config{
		Cmd: []string{"/bin/app"}, Env: map[string]string{"BASE": "started"}, WorkingDir: "/tmp",
		User: "app", Hostname: "clone-1", Network: &guestconfig.Network{Address: "10.0.0.5/24"},
	}

	assert.Equal(t, CodeBadRequest, remoteCode(t, h.client.Start(ctx, StartRequest{Config: cfg, Seed: []byte("short")})))
	vcfg := cfg
	vcfg.Volumes = []guestconfig.VolumeMount{{Serial: "hm-vol0", MountPath: "/data"}}
	assert.Equal(t, CodeBadRequest, remoteCode(t, h.client.Start(ctx, StartRequest{Config: vcfg, Seed: seed})))
	assert.Empty(t, prog.reqs, "refused requests must not reach the init")

	// Before the start: the template's defaults.
	o := h.run(t, ExecRequest{Argv: []string{"sh", "-c", `echo "$BASE $HOSTNAME"; pwd`}}, nil)
	assert.Equal(t, "base testhost\n/data\n", o.stdout)

	require.NoError(t, h.client.Start(ctx, StartRequest{Config: cfg, Seed: seed, HostTimeUnixNano: 42}))
	require.Len(t, prog.reqs, 1)
	assert.Equal(t, cfg.Cmd, prog.reqs[0].Config.Cmd)
	assert.Equal(t, int64(42), prog.reqs[0].HostTimeUnixNano)

	o = h.run(t, ExecRequest{Argv: []string{"sh", "-c", `echo "$BASE $HOSTNAME"; pwd; id -u`}}, nil)
	assert.Equal(t, "started clone-1\n/tmp\n1000\n", o.stdout)

	// Single use.
	assert.Equal(t, CodeConflict, remoteCode(t, h.client.Start(ctx, StartRequest{Config: cfg, Seed: seed})))
}

// A guest not booted in template mode refuses start.
func TestStartOpWithoutTemplate(t *testing.T) {
	h := newHarness(t)
	err := h.client.Start(ctxT(t), StartRequest{Seed: make([]byte, 64)})
	assert.Equal(t, CodeConflict, remoteCode(t, err))
}
