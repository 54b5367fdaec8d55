package guestinit

import (
	"bytes"
	"context"
	"encoding/binary"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hypeman/internal/guest/guestconfig"
)

func TestParseModuleList(t *testing.T) {
	mods, err := ParseModuleList(strings.NewReader(`# load order
/lib/modules/6.1/kernel/drivers/virtio/virtio_ring.ko

  /lib/modules/6.1/kernel/drivers/virtio/virtio.ko  
/lib/modules/6.1/kernel/fs/erofs/erofs.ko.xz
`))
	require.NoError(t, err)
	assert.Equal(t, []string{
		"/lib/modules/6.1/kernel/drivers/virtio/virtio_ring.ko",
		"/lib/modules/6.1/kernel/drivers/virtio/virtio.ko",
		"/lib/modules/6.1/kernel/fs/erofs/erofs.ko.xz",
	}, mods)
	assert.Equal(t, 0, moduleFlags(mods[0]))
	assert.NotEqual(t, 0, moduleFlags(mods[2]))

	_, err = ParseModuleList(strings.NewReader("/ok.ko\nrelative.ko\n"))
	assert.ErrorContains(t, err, "line 2")

	// A missing list is no modules; a missing module is a clear error.
	require.NoError(t, LoadModuleList(filepath.Join(t.TempDir(), "none")))
	err = LoadModules([]string{"/nonexistent/x.ko"})
	var me *ModuleError
	require.ErrorAs(t, err, &me)
	assert.Equal(t, "/nonexistent/x.ko", me.Path)
}

// fakeSysBlock makes <dir>/<dev>/serial files; an empty serial means a
// device without the file (not virtio-blk).
func fakeSysBlock(t *testing.T, dir string, devs map[string]string) {
	t.Helper()
	for dev, serial := range devs {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, dev), 0o755))
		if serial != "" {
			require.NoError(t, os.WriteFile(filepath.Join(dir, dev, "serial"), []byte(serial), 0o444))
		}
	}
}

func TestWaitForDisks(t *testing.T) {
	dir := t.TempDir()
	fakeSysBlock(t, dir, map[string]string{"vda": "hm-config\n", "loop0": "", "vdb": "hm-root"})
	ctx := context.Background()

	// The overlay disk shows up later, as devices probe asynchronously.
	go func() {
		time.Sleep(50 * time.Millisecond)
		fakeSysBlock(t, dir, map[string]string{"vdc": "hm-overlay\x00\x00"})
	}()
	got, err := WaitForDisks(ctx, dir, []string{guestconfig.SerialConfig, guestconfig.SerialRoot, guestconfig.SerialOverlay}, 5*time.Second)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"hm-config": "vda", "hm-root": "vdb", "hm-overlay": "vdc"}, got)

	start := time.Now()
	_, err = WaitForDisks(ctx, dir, []string{"hm-missing"}, 100*time.Millisecond)
	assert.ErrorIs(t, err, ErrDiskNotFound)
	assert.ErrorContains(t, err, "serial hm-missing (present: vda=hm-config, vdb=hm-root, vdc=hm-overlay)")
	assert.Less(t, time.Since(start), 2*time.Second)
}

func TestExitFromStatus(t *testing.T) {
	exited := func(code int) syscall.WaitStatus { return syscall.WaitStatus(code << 8) }
	signaled := func(sig syscall.Signal) syscall.WaitStatus { return syscall.WaitStatus(sig) }
	cases := []struct {
		ws   syscall.WaitStatus
		oom  int64
		want guestconfig.Exit
	}{
		{exited(0), 0, guestconfig.Exit{Code: 0, Message: "exited with code 0"}},
		{exited(3), 0, guestconfig.Exit{Code: 3, Message: "exited with code 3"}},
		{signaled(syscall.SIGKILL), 0, guestconfig.Exit{Code: 137, Message: "killed by signal 9 (SIGKILL)"}},
		{signaled(syscall.SIGTERM), 0, guestconfig.Exit{Code: 143, Message: "killed by signal 15 (SIGTERM)"}},
		{signaled(syscall.SIGKILL), 1, guestconfig.Exit{Code: 137, Message: "out of memory: killed by signal 9 (SIGKILL)"}},
		{exited(1), 2, guestconfig.Exit{Code: 1, Message: "exited with code 1 (out of memory: the kernel killed 2 process(es))"}},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, ExitFromStatus(c.ws, c.oom))
	}
	// The message survives the marker round trip.
	e, ok := guestconfig.ParseExit(guestconfig.FormatExit(ExitFromStatus(signaled(syscall.SIGKILL), 1)))
	require.True(t, ok)
	assert.Equal(t, "out of memory: killed by signal 9 (SIGKILL)", e.Message)
}

func TestParseOOMKills(t *testing.T) {
	n, err := ParseOOMKills(strings.NewReader("nr_free_pages 123\noom_kill 7\nnr_foo 1\n"))
	require.NoError(t, err)
	assert.Equal(t, int64(7), n)
	_, err = ParseOOMKills(strings.NewReader("nr_free_pages 123\n"))
	assert.Error(t, err)
}

func TestConsoleLine(t *testing.T) {
	var buf bytes.Buffer
	c := NewConsole(&buf)
	c.Line(guestconfig.MarkerProgramStart)
	_, _ = c.Write([]byte("partial output"))
	c.Line(guestconfig.FormatExit(guestconfig.Exit{Code: 1, Message: "exited with code 1"}))
	_, _ = c.Write([]byte("full line\n"))
	c.Line("next")
	assert.Equal(t, "HYPEMAN-PROGRAM-START\npartial output\nHYPEMAN-EXIT code=1 message=\"exited with code 1\"\nfull line\nnext\n", buf.String())
}

func TestKmsgWriter(t *testing.T) {
	var buf bytes.Buffer
	n, err := kmsgWriter{w: &buf}.Write([]byte("level=INFO msg=x\n"))
	require.NoError(t, err)
	assert.Equal(t, len("level=INFO msg=x\n"), n)
	assert.Equal(t, "<6>hypeman-init: level=INFO msg=x\n", buf.String())
}

func TestEtcFiles(t *testing.T) {
	assert.Equal(t, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tweb-1\n", HostsFile("web-1", ""))
	assert.Equal(t, "nameserver 10.0.0.1\nnameserver 1.1.1.1\n", ResolvConf([]string{"10.0.0.1", "1.1.1.1"}))

	n := &guestconfig.Network{Address: "10.100.0.7/16", DNS: []string{"10.100.0.1"}}
	assert.Equal(t, map[string]string{
		"hostname":    "web-1\n",
		"hosts":       "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.100.0.7\tweb-1\n",
		"resolv.conf": "nameserver 10.100.0.1\n",
	}, EtcFiles("web-1", n))
	// No hostname: the image's hosts; no DNS: the image's resolv.conf.
	assert.Equal(t, map[string]string{"resolv.conf": "nameserver 10.100.0.1\n"}, EtcFiles("", n))
	assert.Equal(t, []string{"hostname", "hosts"}, slices.Sorted(maps.Keys(EtcFiles("web-1", &guestconfig.Network{Address: "10.0.0.2/24"}))))
	assert.Empty(t, EtcFiles("", nil))
}

func TestEnsureDir(t *testing.T) {
	root := t.TempDir()
	require.NoError(t, os.Symlink("/real", filepath.Join(root, "tmp")))
	// A symlinked /tmp is followed inside the root, not on the host.
	require.NoError(t, ensureDir(root, "/tmp", os.ModeSticky|0o777))
	fi, err := os.Stat(filepath.Join(root, "real"))
	require.NoError(t, err)
	assert.Equal(t, os.ModeSticky|0o777, fi.Mode()&(os.ModeSticky|os.ModePerm))
	// An existing dir keeps its mode.
	require.NoError(t, os.Mkdir(filepath.Join(root, "keep"), 0o700))
	require.NoError(t, ensureDir(root, "/keep", 0o755))
	fi, _ = os.Stat(filepath.Join(root, "keep"))
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
}

func inputEvent(typ, code uint16, value int32) []byte {
	b := make([]byte, inputEventLen)
	binary.LittleEndian.PutUint16(b[16:], typ)
	binary.LittleEndian.PutUint16(b[18:], code)
	binary.LittleEndian.PutUint32(b[20:], uint32(value))
	return b
}

func TestPowerButton(t *testing.T) {
	sys := t.TempDir()
	for dev, name := range map[string]string{"event0": "AT Translated Set 2 keyboard\n", "event1": "Power Button\n", "mouse0": "Power Button\n"} {
		require.NoError(t, os.MkdirAll(filepath.Join(sys, dev, "device"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(sys, dev, "device", "name"), []byte(name), 0o644))
	}
	assert.Equal(t, []string{"/dev/input/event1"}, FindPowerButtons(sys, "/dev/input"))
	assert.Empty(t, FindPowerButtons(filepath.Join(sys, "missing"), "/dev/input"))

	var stream bytes.Buffer
	stream.Write(inputEvent(evKey, keyPower, 0))      // release
	stream.Write(inputEvent(evKey, 30, 1))            // another key
	stream.Write(inputEvent(0, 0, 0))                 // EV_SYN
	stream.Write(inputEvent(evKey, keyPower, 1))      // press
	stream.Write(inputEvent(evKey, keyPower, 1)[:10]) // torn tail: ignored
	presses := 0
	watchPowerButton(&stream, func() { presses++ })
	assert.Equal(t, 1, presses)
}

func TestVolumeSerials(t *testing.T) {
	got := volumeSerials([]guestconfig.VolumeMount{
		{Serial: "hm-vol0", MountPath: "/a"},
		{Serial: "hm-vol1", MountPath: "/b", ReadOnly: true, Overlay: true, OverlaySerial: "hm-vol1-ov"},
	})
	assert.Equal(t, []string{"hm-vol0", "hm-vol1", "hm-vol1-ov"}, got)
	assert.Empty(t, volumeSerials(nil))
}
