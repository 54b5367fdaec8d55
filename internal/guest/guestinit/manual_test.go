package guestinit

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"hypeman/internal/guest/agent"
	"hypeman/internal/guest/guestconfig"
)

func sh(script string) *guestconfig.Config {
	return &guestconfig.Config{Entrypoint: []string{"/bin/sh", "-c", script}, RootFS: "erofs", Hostname: "m"}
}

func TestManual(t *testing.T) {
	k := newVMKit(t)
	img := buildImage(t, map[string]imageFile{
		"etc/passwd": {data: "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
		"etc/group":  {data: "root:x:0:\nnogroup:x:65534:\n"},
		"noexec":     {data: "x", mode: 0o644},
	})
	one := func(name string, cfg *guestconfig.Config, ovl string, noOverlay bool) (guestconfig.Exit, string) {
		if ovl == "" && !noOverlay {
			ovl = newOverlayDisk(t)
		}
		t0 := time.Now()
		r := k.start(t, cfg, img, ovl)
		e := r.wait(t, 90*time.Second)
		t.Logf("=== %s: wall %s exit %+v\n%s", name, time.Since(t0), e, r.log())
		return e, r.log()
	}
	one("oom", &guestconfig.Config{Cmd: []string{"sh", "-c", "dd if=/dev/zero of=/dev/null bs=150M count=1 & dd if=/dev/zero of=/dev/null bs=150M count=1; wait"}, RootFS: "erofs"}, "", false)
	one("no overlay disk", sh("true"), "", true)
	one("bad user", &guestconfig.Config{Cmd: []string{"id"}, User: "ghost", RootFS: "erofs"}, "", false)
	if true {
		return
	}
	ovl := newOverlayDisk(t)
	one("persist boot 1", sh("cat /p.txt 2>/dev/null; echo boot >> /p.txt; printf 'no newline'"), ovl, false)
	fsckClean(t, ovl)
	one("persist boot 2", sh("cat /p.txt; echo boot >> /p.txt"), ovl, false)
	fsckClean(t, ovl)
	one("127", &guestconfig.Config{Cmd: []string{"nosuch"}, RootFS: "erofs"}, "", false)
	one("126", &guestconfig.Config{Cmd: []string{"/noexec"}, RootFS: "erofs"}, "", false)
	one("user nobody", &guestconfig.Config{Cmd: []string{"sh", "-c", "id; echo $HOME; pwd"}, User: "nobody", RootFS: "erofs"}, "", false)
	one("bad user", &guestconfig.Config{Cmd: []string{"id"}, User: "ghost", RootFS: "erofs"}, "", false)
	one("zombies", sh(`for i in 1 2 3; do (sleep 0.1 &); done; sleep 2; awk '$3=="Z"' /proc/[0-9]*/stat | wc -l; exit 0`), "", false)
	one("oom", sh(`x=$(head -c 400000000 /dev/zero | tr '\0' a); echo survived`), "", false)
	one("no overlay disk", sh("true"), "", true)
}

func TestManualPort(t *testing.T) {
	k := newVMKit(t)
	bin, _ := os.ReadFile("/tmp/guestinit/porttest/porttest")
	img := buildImage(t, map[string]imageFile{"porttest": {data: string(bin), mode: 0o755}})
	for _, mode := range []string{"echo"} {
		cfg := &guestconfig.Config{Cmd: []string{"/porttest", mode}, RootFS: "erofs", SkipGuestAgent: true}
		r := k.start(t, cfg, img, newOverlayDisk(t))
		conn, err := net.Dial("unix", r.agentSock)
		if err != nil {
			t.Fatal(err)
		}
		r.waitFor(t, "HYPEMAN-PROGRAM-START", 30*time.Second)
		time.Sleep(3 * time.Second)
		for i := 0; i < 3; i++ {
			if i > 0 {
				conn, err = net.Dial("unix", r.agentSock)
				if err != nil {
					t.Fatal(err)
				}
				time.Sleep(300 * time.Millisecond)
			}
			conn.Write([]byte(fmt.Sprintf("hello%d", i)))
			b := make([]byte, 100)
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := conn.Read(b)
			t.Logf("host read %q %v", b[:n], err)
			time.Sleep(500 * time.Millisecond)
			conn.Close()
			time.Sleep(1000 * time.Millisecond)
		}
		r.wait(t, 30*time.Second)
		t.Logf("mode %s:\n%s", mode, r.log())
	}
}

func TestManualAgentPort(t *testing.T) {
	k := newVMKit(t)
	bin, _ := os.ReadFile("/tmp/guestinit/agenttest")
	img := buildImage(t, map[string]imageFile{"agenttest": {data: string(bin), mode: 0o755}})
	cfg := &guestconfig.Config{Cmd: []string{"/agenttest"}, RootFS: "erofs", SkipGuestAgent: true}
	r := k.start(t, cfg, img, newOverlayDisk(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		c, err := agent.Dial(ctx, r.agentSock)
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		err = c.Ping(ctx)
		t.Logf("ping %d: %v after %s", i, err, time.Since(t0))
		time.Sleep(time.Second)
		c.Close()
		time.Sleep(2 * time.Second)
	}
	t.Logf("%s", r.log())
}

func TestManualReconnect(t *testing.T) {
	k := newVMKit(t)
	img := buildImage(t, nil)
	r := k.start(t, sh(`echo up; sleep 1000`), img, newOverlayDisk(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dial := func() *agent.Client {
		c, err := agent.Dial(ctx, r.agentSock)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := dial()
	var out bytes.Buffer
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "mount -t debugfs none /sys/kernel/debug; ls -l /proc/1/fd; for f in /proc/1/fdinfo/*; do echo $f; cat $f; done; (for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do grep host_conn /sys/kernel/debug/virtio-ports/vport0p1 >> /tmp/log; if [ $i = 8 ]; then for s in /proc/1/task/*/stack; do echo $s; cat $s; done >> /tmp/log; fi; sleep 0.2; done) > /dev/null 2>&1 &"}}, agent.ExecIO{Stdout: &out})
	t.Logf("%+v %v\n%s", res, err, out.String())
	time.Sleep(500 * time.Millisecond)
	c.Close()
	time.Sleep(2 * time.Second)
	c = dial()
	out.Reset()
	res, err = c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "kill -QUIT 1"}}, agent.ExecIO{Stdout: &out})
	t.Logf("%+v %v\n%s", res, err, out.String())
	time.Sleep(5 * time.Second)
	t.Logf("%s", r.log())
}

func TestManualStopTimeout(t *testing.T) {
	k := newVMKit(t)
	img := buildImage(t, nil)
	cfg := sh(`trap '' TERM; echo ignoring; while :; do sleep 1; done`)
	cfg.StopTimeoutSeconds = 2
	r := k.start(t, cfg, img, newOverlayDisk(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := agent.Dial(ctx, r.agentSock)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "ignoring", 30*time.Second)
	// Reconnect test: drop the session mid-exec, dial again.
	go c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "echo $$ > /tmp/pid; sleep 100"}}, agent.ExecIO{})
	time.Sleep(time.Second)
	c.Close()
	t0 := time.Now()
	c, err = agent.Dial(ctx, r.agentSock)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("reconnect ping after %s", time.Since(t0))
	var out bytes.Buffer
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "p=$(cat /tmp/pid); test -d /proc/$p && echo alive $p || echo dead $p"}}, agent.ExecIO{Stdout: &out})
	t.Logf("after reconnect: %+v %v %q", res, err, out.String())
	// Second concurrent connection is not accepted by QEMU until the first closes.
	conn2, err := net.DialTimeout("unix", r.agentSock, time.Second)
	t.Logf("second dial: err=%v", err)
	if conn2 != nil {
		conn2.Close()
	}
	t0 = time.Now()
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	e := r.wait(t, 60*time.Second)
	t.Logf("stop took %s; exit %+v\n%s", time.Since(t0), e, r.log())
	_ = os.Remove
	_ = strings.Contains
}
