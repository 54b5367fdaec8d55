package guestinit

import (
	"bytes"
	"context"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hypeman/internal/guest/agent"
	"hypeman/internal/guest/guestconfig"
)

// programScript is the test program: it reports what it received, writes a
// file to the root (which lands on the overlay disk), and exits 3 on SIGTERM.
const programScript = `echo "env greeting=$GREETING cwd=$(pwd) host=$(hostname) home=$HOME uid=$(id -u) args=$0,$1"
echo persisted-data > /state.txt
trap 'echo got SIGTERM; exit 3' TERM
echo ready
sleep 1000 & wait $!
`

// TestBootInVM boots one real VM (QEMU microvm under TCG) with the init built
// from this tree and checks the init and the agent end to end: markers, env,
// working dir, hostname, agent exec (plain, TTY, 126/127), stat, copy both
// ways, graceful shutdown forwarding SIGTERM, the program's exit code in the
// exit line, and a cleanly unmounted overlay disk holding the program's file.
func TestBootInVM(t *testing.T) {
	kit := newVMKit(t)
	img := buildImage(t, map[string]imageFile{
		"etc/passwd": {data: "root:x:0:0:root:/root:/bin/sh\n"},
		"etc/group":  {data: "root:x:0:\n"},
	})
	overlay := newOverlayDisk(t)
	cfg := &guestconfig.Config{
		Entrypoint: []string{"/bin/sh", "-c", programScript},
		Cmd:        []string{"arg0", "arg1"},
		Env:        map[string]string{"GREETING": "hello"},
		WorkingDir: "/work",
		Hostname:   "vmtest",
		RootFS:     "erofs",
	}
	start := time.Now()
	vm := kit.start(t, cfg, img, overlay)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := agent.Dial(ctx, vm.agentSock)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Ping(ctx), "agent ping; serial log:\n%s", vm.log())
	vm.waitFor(t, "ready\n", 30*time.Second)
	t.Logf("boot to program ready: %s", time.Since(start))

	log := vm.log()
	assert.Contains(t, log, "env greeting=hello cwd=/work host=vmtest home=/root uid=0 args=arg0,arg1\n")
	assert.Less(t, strings.Index(log, guestconfig.MarkerProgramStart+"\n"), strings.Index(log, "env greeting="))
	assert.Contains(t, log, guestconfig.MarkerAgentReady+"\n")

	run := func(req agent.ExecRequest) (agent.ExecResult, string) {
		t.Helper()
		var out bytes.Buffer
		res, err := c.Exec(ctx, req, agent.ExecIO{Stdout: &out, Stderr: &out})
		require.NoError(t, err)
		return res, out.String()
	}
	var rtts []time.Duration
	for range 5 {
		t0 := time.Now()
		res, out := run(agent.ExecRequest{Argv: []string{"echo", "hi"}})
		rtts = append(rtts, time.Since(t0))
		assert.Equal(t, 0, res.ExitCode)
		assert.Equal(t, "hi\n", out)
	}
	slices.Sort(rtts)
	t.Logf("exec echo round trip: median %s (min %s, max %s)", rtts[len(rtts)/2], rtts[0], rtts[len(rtts)-1])

	res, out := run(agent.ExecRequest{Argv: []string{"sh", "-c", `echo "$GREETING $(pwd)"; exit 3`}})
	assert.Equal(t, 3, res.ExitCode)
	assert.Equal(t, "hello /work\n", out, "exec inherits the instance env and working dir")
	res, _ = run(agent.ExecRequest{Argv: []string{"no-such-command"}})
	assert.Equal(t, 127, res.ExitCode)
	res, out = run(agent.ExecRequest{Argv: []string{"tty"}, TTY: true})
	assert.Equal(t, 0, res.ExitCode)
	assert.True(t, strings.HasPrefix(out, "/dev/pts/"), "tty output %q", out)

	fi, err := c.Stat(ctx, "/state.txt")
	require.NoError(t, err)
	assert.True(t, fi.Exists)
	assert.Equal(t, int64(len("persisted-data\n")), fi.Size)

	n, err := c.Put(ctx, agent.PutRequest{Path: "/copied/in.txt", Kind: agent.PutFile, Mode: 0o640}, strings.NewReader("copied"))
	require.NoError(t, err)
	assert.Equal(t, int64(6), n)
	res, out = run(agent.ExecRequest{Argv: []string{"cat", "/copied/in.txt"}})
	assert.Equal(t, 0, res.ExitCode)
	assert.Equal(t, "copied", out)
	var got []agent.TreeEntry
	var back []byte
	require.NoError(t, c.ReadTree(ctx, agent.TreeRequest{Path: "/copied"}, func(e agent.TreeEntry, data io.Reader) error {
		got = append(got, e)
		b, err := io.ReadAll(data)
		back = append(back, b...)
		return err
	}))
	require.Len(t, got, 2)
	assert.Equal(t, "in.txt", got[1].Path)
	assert.Equal(t, uint32(0o640), got[1].Mode)
	assert.Equal(t, "copied", string(back))

	require.NoError(t, c.Shutdown(ctx))
	exit := vm.wait(t, 60*time.Second)
	assert.Equal(t, guestconfig.Exit{Code: 3, Message: "exited with code 3"}, exit)
	assert.Contains(t, vm.log(), "got SIGTERM\n")

	fsckClean(t, overlay)
	assert.Equal(t, "persisted-data\n", debugfsCat(t, overlay, "/upper/state.txt"))
	assert.Equal(t, "copied", debugfsCat(t, overlay, "/upper/copied/in.txt"))
}
