package conformance_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"hypeman/internal/cli"
	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil"
	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/upstreamcli"
)

// webImage's own command only sleeps: the instance runs webScript, given
// with `run --cmd`, so an ignored --cmd fails every later step.
var webImage = testimage.Options{
	Entrypoint: []string{"/bin/sh", "-c"},
	Cmd:        []string{`echo "the image's own command ran"; exec sleep 1000000`},
}

// webScript serves /www over HTTP on 8080, prints "booted" once and then
// "tick N" every second: a restored VM continues the count (memory kept)
// without a new "booted"; a fresh boot prints it again.
const webScript = `echo booted; mkdir -p /www && echo hello conformance > /www/index.html
(i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 1; done) &
exec httpd -f -p 8080 -h /www`

// TestUpstreamClients drives one hypemand (bridge networking inside a
// network namespace this test owns) with hypeman's unmodified CLI through
// an instance's whole life, and, alongside, with a program written against
// hypeman's Go SDK (testdata/sdkcheck).
func TestUpstreamClients(t *testing.T) {
	ns := nettest.NewNS(t) // root, and never the host's network
	s := e2e.Start(t, "--network-mode", "bridge", "--network-netns", ns)
	up := upstreamcli.New(t, s.BaseURL, s.Token)
	s.PushImage("conformance/web:v1", testimage.Busybox(t, webImage))

	t.Run("clients", func(t *testing.T) {
		t.Run("sdk", func(t *testing.T) {
			t.Parallel()
			bin := upstreamcli.SDKProgram(t, filepath.Join(testutil.RepoRoot(t), "internal", "conformance", "testdata", "sdkcheck"))
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "conformance/web:v1", "sdk-web")
			cmd.Env = append(os.Environ(), "HYPEMAN_BASE_URL="+s.BaseURL, "HYPEMAN_API_KEY="+s.Token)
			out, err := cmd.CombinedOutput()
			t.Logf("sdkcheck:\n%s", out)
			if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "PASS") {
				t.Fatalf("hypeman's Go SDK against hypemand: %v", err)
			}
		})
		t.Run("cli", func(t *testing.T) {
			t.Parallel()
			f := &flow{t: t, s: s, up: up}
			f.run()
		})
		t.Run("volumes", func(t *testing.T) {
			t.Parallel()
			f := &flow{t: t, s: s, up: up}
			f.volumes()
		})
	})
}

// flow is the CLI walk through one instance's life. Each step needs the
// previous ones, so the first failure ends it.
type flow struct {
	t  *testing.T
	s  *e2e.Server
	up *upstreamcli.CLI
	id string // the instance "web"
}

func (f *flow) step(name string, fn func(t *testing.T)) {
	if !f.t.Run(name, fn) {
		f.t.FailNow()
	}
}

// cli runs hypeman's CLI and fails t unless it exits 0.
func (f *flow) cli(t *testing.T, stdin []byte, args ...string) upstreamcli.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	r := f.up.Run(t, ctx, "", stdin, args...)
	if r.Code != 0 {
		t.Fatalf("hypeman %s: %v\ndaemon log tail:\n%s", strings.Join(args, " "), r, tail(f.s.Logs(), 30))
	}
	return r
}

// json runs hypeman's CLI with --format json and decodes its output.
func (f *flow) json(t *testing.T, out any, args ...string) {
	t.Helper()
	r := f.cli(t, nil, append([]string{"--format", "json"}, args...)...)
	if err := json.Unmarshal([]byte(r.Stdout), out); err != nil {
		t.Fatalf("hypeman --format json %s: not JSON (%v): %q", strings.Join(args, " "), err, r.Stdout)
	}
}

// instance is what the checks read from `hypeman inspect`.
type instance struct {
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	Image      string            `json:"image"`
	State      string            `json:"state"`
	Hypervisor string            `json:"hypervisor"`
	Size       string            `json:"size"`
	Vcpus      int               `json:"vcpus"`
	Tags       map[string]string `json:"tags"`
	Network    struct {
		IP  string `json:"ip"`
		MAC string `json:"mac"`
	} `json:"network"`
	HasSnapshot   bool           `json:"has_snapshot"`
	HealthCheck   map[string]any `json:"health_check"`
	RestartPolicy map[string]any `json:"restart_policy"`
	HealthStatus  struct {
		Status string `json:"status"`
	} `json:"health_status"`
}

func (f *flow) inspect(t *testing.T, ref string) instance {
	t.Helper()
	var in instance
	f.json(t, &in, "inspect", ref)
	return in
}

// wait blocks in `hypeman wait` until ref is in st.
func (f *flow) wait(t *testing.T, ref, st string) {
	t.Helper()
	var w struct {
		State    string `json:"state"`
		TimedOut bool   `json:"timed_out"`
	}
	f.json(t, &w, "wait", "--state", st, "--timeout", "180s", ref)
	if w.State != st || w.TimedOut {
		t.Fatalf("wait --state %s %s: %+v", st, ref, w)
	}
}

var tickLine = regexp.MustCompile(`^tick (\d+)$`)

// lastTick is the highest "tick N" in the last lines of ref's log (-1: none).
func (f *flow) lastTick(t *testing.T, ref string) int {
	t.Helper()
	last := -1
	for _, l := range strings.Split(f.cli(t, nil, "logs", "--tail", "5", ref).Stdout, "\n") {
		if m := tickLine.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			last = max(last, n)
		}
	}
	return last
}

// boots counts the "booted" lines in ref's whole log: how many times the
// image's program started fresh.
func (f *flow) boots(t *testing.T, ref string) int {
	t.Helper()
	n := 0
	for _, l := range strings.Split(f.cli(t, nil, "logs", "--tail", "100000", ref).Stdout, "\n") {
		if l == "booted" {
			n++
		}
	}
	return n
}

// tickAbove waits until ref's log shows a tick above n (the program runs
// on from where it was) and returns it.
func (f *flow) tickAbove(t *testing.T, ref string, n int) int {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		got := f.lastTick(t, ref)
		if got > n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no tick above %d in a minute (last %d)", ref, n, got)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func (f *flow) run() {
	f.step("run", func(t *testing.T) {
		r := f.cli(t, nil, "run", "--name", "web", "--memory", "256MB", "--cpus", "1",
			"--tag", "suite=conformance", "--tag", "role=web", "--cmd", webScript, "conformance/web:v1")
		f.id = strings.TrimSpace(r.Stdout)
		if f.id == "" || strings.Contains(f.id, "\n") {
			t.Fatalf("run printed %q, want the instance id", r.Stdout)
		}
		f.wait(t, "web", "Running")
	})

	f.step("ps and inspect", func(t *testing.T) {
		if got := strings.TrimSpace(f.cli(t, nil, "ps", "-q", "--tag", "role=web").Stdout); got != f.id {
			t.Errorf("ps -q --tag role=web: %q, want %q", got, f.id)
		}
		if got := strings.TrimSpace(f.cli(t, nil, "ps", "-a", "-q", "--tag", "role=db").Stdout); got != "" {
			t.Errorf("ps -a -q --tag role=db: %q, want nothing", got)
		}
		table := f.cli(t, nil, "ps").Stdout
		if !strings.Contains(table, "web") || !strings.Contains(table, "Running") {
			t.Errorf("ps table lacks the instance:\n%s", table)
		}
		in := f.inspect(t, "web")
		if in.ID != f.id || in.Name != "web" || in.Image != "conformance/web:v1" || in.State != "Running" ||
			in.Hypervisor != "qemu-microvm" || in.Size != "256MB" || in.Vcpus != 1 ||
			in.Tags["suite"] != "conformance" || in.Tags["role"] != "web" {
			t.Errorf("inspect: %+v", in)
		}
		if net.ParseIP(in.Network.IP) == nil || in.Network.MAC == "" {
			t.Errorf("inspect: no guest address on the bridge: %+v", in.Network)
		}
	})

	f.step("resources", func(t *testing.T) {
		// hypeman's table and JSON of GET /resources, then a dry-run reclaim
		// (web, created with hypeman's default hotplug memory, is the one
		// guest with a balloon; a dry run applies nothing).
		table := f.cli(t, nil, "resources").Stdout
		for _, want := range []string{"RESOURCE", "memory", "ALLOCATIONS:", "web"} {
			if !strings.Contains(table, want) {
				t.Errorf("hypeman resources lacks %q:\n%s", want, table)
			}
		}
		var res struct {
			Memory struct {
				Capacity  int64 `json:"capacity"`
				Allocated int64 `json:"allocated"`
			} `json:"memory"`
			Allocations []struct {
				InstanceID  string `json:"instance_id"`
				MemoryBytes int64  `json:"memory_bytes"`
				Cpu         int    `json:"cpu"`
			} `json:"allocations"`
		}
		f.json(t, &res, "resources")
		// The SDK check runs beside this flow: add up, find web (hypeman's
		// run adds hotplug memory by default: size + hotplug_size is held).
		var sum int64
		found := false
		for _, a := range res.Allocations {
			sum += a.MemoryBytes
			found = found || (a.InstanceID == f.id && a.MemoryBytes >= 256<<20 && a.Cpu == 1)
		}
		if res.Memory.Capacity <= 0 || res.Memory.Allocated != sum || !found {
			t.Errorf("resources: %+v", res)
		}
		r := f.cli(t, nil, "resources", "reclaim-memory", "--reclaim-bytes", "64MB", "--dry-run")
		// One action per ballooned guest: web, and whatever the flows
		// beside this one run.
		actions := regexp.MustCompile(`(?m)^Actions: +([1-9]\d*)$`)
		if !strings.Contains(r.Stdout, "Requested reclaim: 67108864 bytes") || !strings.Contains(r.Stdout, "Applied reclaim:   0 bytes") ||
			!actions.MatchString(r.Stdout) {
			t.Errorf("reclaim-memory --dry-run: %q", r.Stdout)
		}
		f.ours(t, "resources")
	})

	f.step("logs", func(t *testing.T) {
		first := f.tickAbove(t, "web", 2)
		if b := f.boots(t, "web"); b != 1 {
			t.Fatalf("%d \"booted\" lines in the whole log, want 1", b)
		}
		// Follow: a tick written after the stream opened arrives.
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		sc, stop := f.up.Follow(t, ctx, "logs", "-f", "--tail", "1", "web")
		defer stop()
		for sc.Scan() {
			m := tickLine.FindStringSubmatch(sc.Text())
			if m == nil {
				continue // httpd or init lines
			}
			if n, _ := strconv.Atoi(m[1]); n > first {
				return
			}
		}
		t.Fatalf("logs -f ended without a new tick after %d: %v %s", first, sc.Err(), stop())
	})

	f.step("exec", func(t *testing.T) {
		if r := f.cli(t, nil, "exec", "-T", "web", "--", "cat", "/www/index.html"); r.Stdout != "hello conformance\n" {
			t.Errorf("exec cat: %q", r.Stdout)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if r := f.up.Run(t, ctx, "", nil, "exec", "-T", "web", "--", "sh", "-c", "echo to-stderr >&2; exit 7"); r.Code != 7 || !strings.Contains(r.Stdout+r.Stderr, "to-stderr") {
			t.Errorf("exec exit 7: %v", r)
		}
		if r := f.cli(t, []byte("abcdef"), "exec", "-T", "web", "--", "head", "-c", "4"); r.Stdout != "abcd" {
			t.Errorf("exec with stdin: %q", r.Stdout)
		}
		if r := f.up.Run(t, ctx, "", nil, "exec", "-T", "--timeout", "2", "web", "--", "sleep", "60"); r.Code == 0 {
			t.Errorf("exec --timeout 2 of sleep 60 succeeded: %v", r)
		}
	})

	f.step("cp", func(t *testing.T) {
		local := t.TempDir()
		data := make([]byte, 300<<10)
		rand.Read(data)
		tree := filepath.Join(local, "tree")
		os.MkdirAll(filepath.Join(tree, "sub"), 0o755)
		os.WriteFile(filepath.Join(local, "blob.bin"), data, 0o644)
		os.WriteFile(filepath.Join(tree, "a.txt"), []byte("alpha\n"), 0o644)
		os.WriteFile(filepath.Join(tree, "sub", "b.bin"), data[:1000], 0o600)

		f.cli(t, nil, "cp", filepath.Join(local, "blob.bin"), "web:/tmp/blob.bin")
		f.cli(t, nil, "cp", tree, "web:/tmp/tree")
		if r := f.cli(t, nil, "exec", "-T", "web", "--", "cat", "/tmp/tree/a.txt"); r.Stdout != "alpha\n" {
			t.Errorf("uploaded dir, a.txt in the guest: %q", r.Stdout)
		}
		f.cli(t, nil, "cp", "web:/tmp/blob.bin", filepath.Join(local, "blob.back"))
		f.cli(t, nil, "cp", "web:/tmp/tree", filepath.Join(local, "tree.back"))
		for _, c := range []struct{ got, want string }{
			{"blob.back", "blob.bin"}, {"tree.back/a.txt", "tree/a.txt"}, {"tree.back/sub/b.bin", "tree/sub/b.bin"},
		} {
			g, err1 := os.ReadFile(filepath.Join(local, c.got))
			w, err2 := os.ReadFile(filepath.Join(local, c.want))
			if err1 != nil || err2 != nil || !bytes.Equal(g, w) {
				t.Errorf("cp round trip %s: %d bytes (%v), want %d (%v)", c.got, len(g), err1, len(w), err2)
			}
		}
	})

	f.step("stats", func(t *testing.T) {
		var st struct {
			InstanceID     string  `json:"instance_id"`
			InstanceName   string  `json:"instance_name"`
			CPUSeconds     float64 `json:"cpu_seconds"`
			MemoryRSSBytes int64   `json:"memory_rss_bytes"`
			AllocatedVcpus int     `json:"allocated_vcpus"`
			AllocatedMem   int64   `json:"allocated_memory_bytes"`
			NetworkRxBytes int64   `json:"network_rx_bytes"`
		}
		f.json(t, &st, "stats", "web")
		if st.InstanceID != f.id || st.InstanceName != "web" || st.CPUSeconds <= 0 || st.MemoryRSSBytes <= 0 ||
			st.AllocatedVcpus != 1 || st.AllocatedMem < 256<<20 {
			t.Errorf("stats: %+v", st)
		}
	})

	f.step("ingress", func(t *testing.T) {
		port := testutil.FreePort(t)
		r := f.cli(t, nil, "ingress", "create", "web", "--hostname", "web.conformance.test", "--port", "8080",
			"--host-port", strconv.Itoa(port), "--name", "web-ing", "--tag", "suite=conformance")
		if strings.TrimSpace(r.Stdout) == "" {
			t.Fatalf("ingress create printed no id: %v", r)
		}
		url := fmt.Sprintf("http://127.0.0.1:%d/", port)
		if body := httpGet(t, url, "web.conformance.test", 200); body != "hello conformance\n" {
			t.Errorf("through the ingress: %q", body)
		}
		httpGet(t, url, "other.test", 404)
		if ls := f.cli(t, nil, "ingress", "list").Stdout; !strings.Contains(ls, "web-ing") {
			t.Errorf("ingress list lacks web-ing:\n%s", ls)
		}
		f.cli(t, nil, "ingress", "delete", "web-ing")
		if ls := f.cli(t, nil, "ingress", "list", "-q").Stdout; strings.TrimSpace(ls) != "" {
			t.Errorf("ingress list after delete: %q", ls)
		}
	})

	f.step("health check and restart policy", func(t *testing.T) {
		// hypeman's CLI (c1fce09) has no command for these and its SDK
		// (v0.19.0) no field (inspect drops them): set them with our CLI
		// and read hypeman 0.3.0's nested shape from the API itself.
		f.ours(t, "update", "health-check", "web", "--http", ":8080/", "--interval", "1s")
		f.ours(t, "update", "restart-policy", "web", "--policy", "on_failure", "--max-attempts", "3")
		deadline := time.Now().Add(time.Minute)
		for {
			var in instance
			if st, body := f.s.JSON("GET", "/instances/web", nil, &in); st != 200 {
				t.Fatalf("GET /instances/web: %d %s", st, body)
			}
			hc, _ := in.HealthCheck["http"].(map[string]any)
			if in.HealthCheck["type"] != "http" || hc["port"] != float64(8080) || hc["path"] != "/" ||
				in.RestartPolicy["policy"] != "on_failure" || in.RestartPolicy["max_attempts"] != float64(3) {
				t.Fatalf("inspect after update: health_check %v restart_policy %v", in.HealthCheck, in.RestartPolicy)
			}
			if in.HealthStatus.Status == "healthy" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("health status %q after a minute, want healthy", in.HealthStatus.Status)
			}
			time.Sleep(500 * time.Millisecond)
		}
		f.ours(t, "update", "health-check", "web", "--none")
	})

	snapTick := -1
	f.step("snapshot create and list", func(t *testing.T) {
		var sn struct {
			ID               string `json:"id"`
			Name             string `json:"name"`
			Kind             string `json:"kind"`
			SourceInstanceID string `json:"source_instance_id"`
		}
		snapTick = f.lastTick(t, "web")
		f.json(t, &sn, "snapshot", "create", "--kind", "Standby", "--name", "web-snap", "--tag", "suite=conformance", "web")
		if sn.ID == "" || sn.Name != "web-snap" || sn.Kind != "Standby" || sn.SourceInstanceID != f.id {
			t.Fatalf("snapshot create: %+v", sn)
		}
		if in := f.inspect(t, "web"); in.State != "Running" {
			t.Errorf("after a Standby snapshot of a running instance: %s, want Running", in.State)
		}
		if got := strings.TrimSpace(f.cli(t, nil, "snapshot", "list", "-q", "--kind", "Standby", "--tag", "suite=conformance").Stdout); got != sn.ID {
			t.Errorf("snapshot list --kind Standby: %q, want %q", got, sn.ID)
		}
		if got := strings.TrimSpace(f.cli(t, nil, "snapshot", "list", "-q", "--kind", "Stopped").Stdout); got != "" {
			t.Errorf("snapshot list --kind Stopped: %q, want nothing", got)
		}
	})

	f.step("stop and start with another command", func(t *testing.T) {
		f.cli(t, nil, "stop", "web")
		if in := f.inspect(t, "web"); in.State != "Stopped" {
			t.Fatalf("after stop: %s", in.State)
		}
		f.cli(t, nil, "start", "--entrypoint", "/bin/sh", "--cmd", "-c",
			"--cmd", "echo started with another command; exec httpd -f -p 8080 -h /www", "web")
		f.wait(t, "web", "Running")
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(f.cli(t, nil, "logs", "--tail", "20", "web").Stdout, "started with another command") {
			if time.Now().After(deadline) {
				t.Fatal("the program given to start never ran")
			}
			time.Sleep(300 * time.Millisecond)
		}
		// The overlay disk kept what the first program wrote.
		if r := f.cli(t, nil, "exec", "-T", "web", "--", "cat", "/www/index.html"); r.Stdout != "hello conformance\n" {
			t.Errorf("after restart, /www/index.html: %q", r.Stdout)
		}
	})

	f.step("snapshot restore", func(t *testing.T) {
		f.cli(t, nil, "stop", "web")
		boots := f.boots(t, "web")
		var in instance
		f.json(t, &in, "snapshot", "restore", "--target-state", "Running", "web", "web-snap")
		f.wait(t, "web", "Running")
		// The ticker is back, counting on from where the snapshot was
		// taken: memory came back, the program did not start over.
		f.tickAbove(t, "web", snapTick)
		if got := f.boots(t, "web"); got != boots {
			t.Fatalf("the program started fresh (%d boots, %d before the restore), want it resumed from the snapshot", got, boots)
		}
	})

	f.step("standby and restore", func(t *testing.T) {
		before, boots := f.lastTick(t, "web"), f.boots(t, "web")
		f.cli(t, nil, "standby", "web")
		if in := f.inspect(t, "web"); in.State != "Standby" || !in.HasSnapshot {
			t.Fatalf("after standby: %s has_snapshot %v", in.State, in.HasSnapshot)
		}
		f.cli(t, nil, "restore", "web")
		f.wait(t, "web", "Running")
		f.tickAbove(t, "web", before)
		if got := f.boots(t, "web"); got != boots {
			t.Fatalf("the program started fresh after restore (%d boots, %d before standby)", got, boots)
		}
	})

	f.step("fork of a standby instance", func(t *testing.T) {
		f.cli(t, nil, "standby", "web")
		var fk instance
		f.json(t, &fk, "fork", "web", "web-fork")
		if fk.Name != "web-fork" || fk.ID == f.id || fk.State != "Standby" {
			t.Fatalf("fork of a Standby instance: %+v, want a new instance in Standby", fk)
		}
		f.cli(t, nil, "restore", "web-fork")
		f.wait(t, "web-fork", "Running")
		if r := f.cli(t, nil, "exec", "-T", "web-fork", "--", "cat", "/www/index.html"); r.Stdout != "hello conformance\n" {
			t.Errorf("fork's disk: %q", r.Stdout)
		}
		if a, b := f.inspect(t, "web"), f.inspect(t, "web-fork"); a.Network.IP == b.Network.IP && a.Network.IP != "" {
			t.Errorf("fork shares the source's address %s", a.Network.IP)
		}
		if in := f.inspect(t, "web"); in.State != "Standby" {
			t.Errorf("source after the fork: %s, want Standby", in.State)
		}
	})

	f.step("errors", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		// The CLI resolves instance names itself (listing them)...
		r := f.up.Run(t, ctx, "", nil, "inspect", "no-such-instance")
		if r.Code == 0 || !strings.Contains(r.Stdout+r.Stderr, "no-such-instance") {
			t.Errorf("inspect of a missing instance: %v", r)
		}
		// ...and shows the server's {code, message} where it asks directly.
		var e struct{ Code, Message string }
		r = f.up.Run(t, ctx, "", nil, "snapshot", "get", "no-such-snapshot")
		if err := json.Unmarshal([]byte(r.Stdout), &e); r.Code == 0 || err != nil || e.Code != "not_found" || !strings.Contains(e.Message, "no-such-snapshot") {
			t.Errorf("get of a missing snapshot: %v", r)
		}
		r = f.up.Run(t, ctx, "", nil, "run", "--name", "bad", "--memory", "lots", "conformance/web:v1")
		if r.Code == 0 || !strings.Contains(r.Stdout+r.Stderr, "invalid_request") || !strings.Contains(r.Stdout+r.Stderr, "size") {
			t.Errorf("run with a bad --memory: %v", r)
		}
	})

	f.step("rm", func(t *testing.T) {
		f.cli(t, nil, "rm", "--force", "web", "web-fork")
		if got := strings.TrimSpace(f.cli(t, nil, "ps", "-a", "-q", "--tag", "suite=conformance").Stdout); got != "" {
			t.Errorf("ps -a after rm: %q", got)
		}
		f.cli(t, nil, "snapshot", "delete", "web-snap")
	})
}

// ours runs our CLI in-process against the same daemon.
func (f *flow) ours(t *testing.T, args ...string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := map[string]string{"HYPEMAN_BASE_URL": f.s.BaseURL, "HYPEMAN_API_KEY": f.s.Token}
	if code := cli.Run(t.Context(), args, bytes.NewReader(nil), &out, &errb, func(k string) string { return env[k] }); code != 0 {
		t.Fatalf("our hypeman %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	}
}

// httpGet GETs url with the Host header, retrying briefly until the
// status is want, and returns the body.
func httpGet(t *testing.T, url, host string, want int) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var last string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		req, _ := http.NewRequest("GET", url, nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			last = err.Error()
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == want {
			return string(b)
		}
		last = fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	t.Fatalf("GET %s (Host %s): %s, want %d", url, host, last, want)
	return ""
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
