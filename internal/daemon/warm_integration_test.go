package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"hypeman/internal/daemon"
	"hypeman/internal/guest/agent"
	"hypeman/internal/guest/guestconfig"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil/testimage"
)

// Warm create on real VMs, one daemon (bridge network in the test's own
// netns) for every step: the first create of a shape boots cold and a
// template is built in the background; the next creates are restored from
// it, each with its own identity, program, overlay and log, and behave as
// cold instances do (exec, cp, exit codes, standby/restore, fork). A
// changed initrd is never served the stale template.
func TestWarmCreate(t *testing.T) {
	nettest.RequireRoot(t)
	ns := nettest.NewNS(t)
	d := newDaemonWith(t, map[string]string{"network_mode": "bridge", "network_netns": ns, "warm_enabled": "true"})
	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/warm", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"sleep 600"},
	}))
	ctx := context.Background()
	// working_dir is not part of the template shape: w2 is served warm and
	// gets its own through the start op.
	workDirs := map[string]string{"w2": "/srv/w2"}
	create := func(name, script string, env map[string]string) *instances.Instance {
		t.Helper()
		t0 := time.Now()
		in, err := d.Instances.Create(ctx, instances.CreateParams{Name: name, Image: ref, Size: "256MB", VCPUs: 1,
			Cmd: []string{script}, Env: env, WorkingDir: workDirs[name]})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		res, err := d.Instances.WaitForState(ctx, in.ID, []state.State{state.Running, state.Stopped}, bootTimeout)
		if err != nil {
			t.Fatalf("wait %s: %v", name, err)
		}
		t.Logf("%s: create→%s in %v", name, res.State, time.Since(t0))
		return mustGet(t, d, in.ID)
	}
	run := func(id string, argv ...string) string {
		t.Helper()
		var out, errb strings.Builder
		res, err := d.Instances.Exec(ctx, id, agent.ExecRequest{Argv: argv}, agent.ExecIO{Stdout: &out, Stderr: &errb})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("exec %v in %s: %v %+v %s", argv, id, err, res, errb.String())
		}
		return strings.TrimSpace(out.String())
	}
	waitTemplates := func(want int) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		if err := d.Instances.WarmPool().WaitIdle(wctx); err != nil {
			t.Fatal(err)
		}
		if got := d.Instances.WarmPool().Status().Templates; got != want {
			t.Fatalf("templates: %d, want %d", got, want)
		}
	}

	cold := create("cold-1", "echo cold-line; sleep 600", nil)
	if cold.StartMode != instances.StartCold || cold.State != state.Running {
		t.Fatalf("first create: %s %s", cold.StartMode, cold.State)
	}
	waitTemplates(1)
	if list, err := d.Instances.List(ctx, instances.ListOptions{}); err != nil || len(list) != 1 {
		t.Fatalf("the template shows as an instance: %d instances (%v)", len(list), err)
	}
	if _, err := d.Instances.Exec(ctx, cold.ID, agent.ExecRequest{Argv: []string{"sh", "-c", "echo cold > /cold-file"}}, agent.ExecIO{}); err != nil {
		t.Fatal(err)
	}

	script := `echo "$NAME-line $FOO in $(pwd)"; sleep 600`
	w1 := create("w1", script, map[string]string{"NAME": "w1", "FOO": "one"})
	w2 := create("w2", script, map[string]string{"NAME": "w2", "FOO": "two"})
	for _, w := range []*instances.Instance{w1, w2} {
		if w.StartMode != instances.StartWarm || w.State != state.Running {
			t.Fatalf("%s: start mode %q, state %s", w.Name, w.StartMode, w.State)
		}
	}

	// Identity: MAC, IP, hostname, RNG, clock.
	if w1.Network == nil || w2.Network == nil || w1.Network.IP == w2.Network.IP || w1.Network.MAC == w2.Network.MAC {
		t.Fatalf("networks %+v %+v", w1.Network, w2.Network)
	}
	seen := map[string]string{}
	for _, w := range []*instances.Instance{w1, w2} {
		if got := run(w.ID, "cat", "/sys/class/net/eth0/address"); got != w.Network.MAC {
			t.Fatalf("%s: guest MAC %q, lease %q", w.Name, got, w.Network.MAC)
		}
		if got := run(w.ID, "sh", "-c", "ip -4 addr show eth0"); !strings.Contains(got, " "+w.Network.IP+"/") {
			t.Fatalf("%s: guest address %q, lease %s", w.Name, got, w.Network.IP)
		}
		if got := run(w.ID, "hostname"); got != w.Name {
			t.Fatalf("%s: hostname %q", w.Name, got)
		}
		rnd := run(w.ID, "sh", "-c", "head -c 32 /dev/urandom | od -An -tx1")
		if other, dup := seen[rnd]; dup {
			t.Fatalf("%s and %s read the same /dev/urandom bytes %s", w.Name, other, rnd)
		}
		seen[rnd] = w.Name
		// The template's clocksource is every clone's: a jiffies clock
		// drifts by seconds (see instances.templateCmdline).
		if got := run(w.ID, "cat", "/sys/devices/system/clocksource/clocksource0/current_clocksource"); got != "tsc" {
			t.Fatalf("%s: clocksource %q", w.Name, got)
		}
		before := time.Now().Unix()
		guest, err := strconv.ParseInt(run(w.ID, "date", "+%s"), 10, 64)
		after := time.Now().Unix()
		if err != nil || guest < before-1 || guest > after+1 {
			t.Fatalf("%s: guest clock %d, host %d..%d (%v)", w.Name, guest, before, after, err)
		}
		// Its own program and env.
		if got := run(w.ID, "sh", "-c", "echo $FOO"); got != map[string]string{"w1": "one", "w2": "two"}[w.Name] {
			t.Fatalf("%s: exec env FOO=%q", w.Name, got)
		}
	}

	// Logs: only the clone's own console output.
	for _, w := range []*instances.Instance{w1, w2} {
		want := map[string]string{"w1": "w1-line one in /", "w2": "w2-line two in /srv/w2"}[w.Name]
		log := waitSerial(t, d, w.ID, want)
		if strings.Contains(log, guestconfig.MarkerAgentReady) || strings.Contains(log, "cold-line") {
			t.Fatalf("%s: the clone's log holds the template's (or another instance's) lines:\n%s", w.Name, log)
		}
		for _, other := range []string{"w1-line", "w2-line"} {
			if !strings.HasPrefix(want, other) && strings.Contains(log, other) {
				t.Fatalf("%s: log holds %q:\n%s", w.Name, other, log)
			}
		}
	}

	// Overlays start empty of the others' writes; cp works.
	run(w1.ID, "sh", "-c", "echo one > /w1-file")
	if _, err := d.Instances.CopyTo(ctx, w2.ID, agent.PutRequest{Path: "/copied", Kind: agent.PutFile}, strings.NewReader("via cp")); err != nil {
		t.Fatal(err)
	}
	if got := run(w2.ID, "cat", "/copied"); got != "via cp" {
		t.Fatalf("cp: %q", got)
	}
	for _, c := range []struct{ id, file string }{{w2.ID, "/w1-file"}, {w1.ID, "/copied"}, {w1.ID, "/cold-file"}, {w2.ID, "/cold-file"}} {
		var out strings.Builder
		res, err := d.Instances.Exec(ctx, c.id, agent.ExecRequest{Argv: []string{"test", "-e", c.file}}, agent.ExecIO{Stdout: &out})
		if err != nil || res.ExitCode == 0 {
			t.Fatalf("%s sees %s (%v, %+v)", c.id, c.file, err, res)
		}
	}

	// Exit codes as for a cold instance.
	w3 := create("w3", "echo bye; exit 7", nil)
	w3 = waitState(t, d, w3.ID, state.Stopped, bootTimeout)
	if w3.StartMode != instances.StartWarm || w3.ExitCode == nil || *w3.ExitCode != 7 {
		t.Fatalf("w3: mode %s exit %v", w3.StartMode, w3.ExitCode)
	}
	// A start after the exit (what a restart policy does) is a cold boot
	// of this instance, running its own program again.
	if _, err := d.Instances.Start(ctx, w3.ID, instances.StartParams{}); err != nil {
		t.Fatal(err)
	}
	w3 = waitState(t, d, w3.ID, state.Stopped, bootTimeout)
	if w3.StartMode != instances.StartCold || w3.ExitCode == nil || *w3.ExitCode != 7 {
		t.Fatalf("w3 restarted: mode %s exit %v", w3.StartMode, w3.ExitCode)
	}

	// Standby/restore and fork.
	if _, err := d.Instances.Standby(ctx, w1.ID, instances.StandbyParams{}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Instances.Restore(ctx, w1.ID); err != nil {
		t.Fatal(err)
	}
	if got := run(w1.ID, "cat", "/w1-file"); got != "one" {
		t.Fatalf("after restore: %q", got)
	}
	f, err := d.Instances.Fork(ctx, w2.ID, instances.ForkParams{Name: "w2-fork", FromRunning: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := run(f.ID, "cat", "/copied"); got != "via cp" {
		t.Fatalf("fork: %q", got)
	}
	if f.Network == nil || f.Network.IP == w2.Network.IP {
		t.Fatalf("fork network %+v", f.Network)
	}

	// A changed initrd: the template is stale, the next create boots cold
	// and a new template is built.
	initrd := d.Initrd
	fi, err := os.OpenFile(initrd, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi.Write(make([]byte, 512)) // zero padding: still a valid initramfs
	fi.Close()
	w4 := create("w4", script, map[string]string{"NAME": "w4"})
	if w4.StartMode != instances.StartCold || w4.State != state.Running {
		t.Fatalf("after an initrd change: %s %s", w4.StartMode, w4.State)
	}
	waitTemplates(1)
	w5 := create("w5", script, map[string]string{"NAME": "w5"})
	if w5.StartMode != instances.StartWarm || w5.State != state.Running {
		t.Fatalf("with the rebuilt template: %s %s", w5.StartMode, w5.State)
	}
	ents, _ := os.ReadDir(d.Config.Paths().TemplatesDir())
	if len(ents) != 1 {
		t.Fatalf("templates dir holds %d entries, want 1 (the stale one deleted)", len(ents))
	}
}

// waitSerial waits for want in an instance's serial log and returns it.
func waitSerial(t *testing.T, d *daemon.Daemon, id, want string) string {
	t.Helper()
	path := filepath.Join(d.Config.Paths().InstanceDir(id), hypervisor.SerialLogName)
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) || time.Now().After(deadline) {
			if !strings.Contains(string(b), want) {
				t.Fatalf("%s: %q not in the log:\n%s", id, want, b)
			}
			return string(b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
