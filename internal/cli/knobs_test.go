package cli

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"hypeman/internal/api"
	"hypeman/internal/auth"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
)

// The 0.3.0 knobs (hotplug memory, disk and network limits, compression of
// saved memory) reach the server under hypeman's CLI flag names.

func TestRunSendsKnobFlags(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, instanceJSON(instID, "web", "Initializing", testNow, ""))
	})
	const base = `"image":"busybox","name":"web"`
	for i, c := range []struct {
		args []string
		body string // the whole create body
	}{
		{[]string{"--hotplug-size", "3GB", "--disk-io", "100MB/s"}, `{"disk_io_bps":"100MB/s","hotplug_size":"3GB",` + base + `}`},
		{[]string{"--bandwidth-down", "1Gbps", "--bandwidth-up", "125MB/s"},
			`{` + base + `,"network":{"bandwidth_download":"1Gbps","bandwidth_upload":"125MB/s"}}`},
		{[]string{"--bandwidth-up", "0"}, `{` + base + `,"network":{"bandwidth_upload":"0"}}`},
		{[]string{"--no-network"}, `{` + base + `,"network":{"enabled":false}}`},
		{[]string{"--snapshot-compression-enabled"}, `{` + base + `,"snapshot_policy":{"compression":{"enabled":true}}}`},
		{[]string{"--snapshot-compression-algorithm", "LZ4", "--snapshot-compression-level", "9"},
			`{` + base + `,"snapshot_policy":{"compression":{"algorithm":"lz4","enabled":true,"level":9}}}`},
		// Level 0 is sent, not taken for "unset" (zstd refuses it: the server's 400).
		{[]string{"--snapshot-compression-level", "0"}, `{` + base + `,"snapshot_policy":{"compression":{"enabled":true,"level":0}}}`},
		{[]string{"--snapshot-compression-enabled=false"}, `{` + base + `,"snapshot_policy":{"compression":{"enabled":false}}}`},
		{[]string{"--snapshot-compression-delay", "30s"}, `{` + base + `,"snapshot_policy":{"standby_compression_delay":"30s"}}`},
		// A policy's delay also serves later standbys that turn compression on.
		{[]string{"--snapshot-compression-enabled=false", "--snapshot-compression-delay", "1m"},
			`{` + base + `,"snapshot_policy":{"compression":{"enabled":false},"standby_compression_delay":"1m"}}`},
		{[]string{"--snapshot-compression-enabled", "--snapshot-compression-algorithm", "zstd", "--snapshot-compression-level", "3", "--snapshot-compression-delay", "2m"},
			`{` + base + `,"snapshot_policy":{"compression":{"algorithm":"zstd","enabled":true,"level":3},"standby_compression_delay":"2m"}}`},
		{nil, `{` + base + `}`},
	} {
		args := append(append([]string{"run", "-d", "--name", "web"}, c.args...), "busybox")
		if res := f.run(args...); res.code != 0 {
			t.Fatalf("%v:\n%v", c.args, res)
		}
		if got := jsonOf(t, mustJSON(t, f.requests("POST", "/instances")[i].Body)); got != c.body {
			t.Errorf("%v:\n got %s\nwant %s", c.args, got, c.body)
		}
	}
}

func TestStandbyAndSnapshotSendCompression(t *testing.T) {
	f := newFake(t)
	f.handle("POST /instances/{id}/standby", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, instanceJSON(instID, r.PathValue("id"), "Standby", testNow, ""))
	})
	f.handle("POST /instances/{id}/snapshots", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, snapshotJSON("s0123456789abcdef", "s", "Standby", r.PathValue("id"), testNow))
	})
	f.handle("GET /instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		st := "Running"
		if r.PathValue("id") == "off" {
			st = "Stopped"
		}
		writeJSON(w, http.StatusOK, instanceJSON(instID, r.PathValue("id"), st, testNow, ""))
	})
	n := 0
	for _, c := range []struct {
		args []string
		body string
	}{
		{[]string{"standby", "web"}, `{}`},
		{[]string{"standby", "--compression-delay", "5m", "web"}, `{"compression_delay":"5m"}`},
		{[]string{"standby", "--compression-algorithm", "lz4", "--compression-level", "4", "--compression-delay", "0s", "web"},
			`{"compression":{"algorithm":"lz4","enabled":true,"level":4},"compression_delay":"0s"}`},
		{[]string{"standby", "--compression-enabled=false", "web"}, `{"compression":{"enabled":false}}`},
		{[]string{"standby", "--compression-enabled", "web"}, `{"compression":{"enabled":true}}`},
	} {
		if res := f.run(c.args...); res.code != 0 || res.stdout != "web\n" {
			t.Fatalf("%v:\n%v", c.args, res)
		}
		if got := jsonOf(t, mustJSON(t, f.requests("POST", "/instances/web/standby")[n].Body)); got != c.body {
			t.Errorf("%v: body %s, want %s", c.args, got, c.body)
		}
		n++
	}
	// Every instance named gets the same body.
	if res := f.run("standby", "--compression-level", "2", "a", "b"); res.code != 0 || res.stdout != "a\nb\n" {
		t.Fatal(res)
	}
	for _, id := range []string{"a", "b"} {
		if got := jsonOf(t, mustJSON(t, f.requests("POST", "/instances/"+id+"/standby")[0].Body)); got != `{"compression":{"enabled":true,"level":2}}` {
			t.Errorf("standby %s: body %s", id, got)
		}
	}

	for i, c := range []struct {
		args []string
		body string
	}{
		{[]string{"--kind", "Standby"}, `{"kind":"Standby"}`},
		{[]string{"--kind", "Standby", "--compression-algorithm", "Zstd", "--compression-level", "19"},
			`{"compression":{"algorithm":"zstd","enabled":true,"level":19},"kind":"Standby"}`},
		{[]string{"--compression-enabled=false"}, `{"compression":{"enabled":false},"kind":"Standby"}`},
		{[]string{"--compression-enabled", "--name", "s1"}, `{"compression":{"enabled":true},"kind":"Standby","name":"s1"}`},
	} {
		args := append(append([]string{"snapshot", "create"}, c.args...), "web")
		if res := f.run(args...); res.code != 0 || res.stdout != "s0123456789abcdef\n" {
			t.Fatalf("%v:\n%v", c.args, res)
		}
		if got := jsonOf(t, mustJSON(t, f.requests("POST", "/instances/web/snapshots")[i].Body)); got != c.body {
			t.Errorf("%v: body %s, want %s", c.args, got, c.body)
		}
	}
	// The default kind of a Stopped instance is Stopped: no memory to
	// compress, so the flag is refused rather than dropped.
	res := f.run("snapshot", "create", "--compression-algorithm", "lz4", "off")
	if res.code != 1 || !strings.Contains(res.stderr, "Error: instance off is Stopped, so its snapshot holds no memory to compress: leave out --compression-algorithm") {
		t.Fatal(res)
	}
	if len(f.requests("POST", "/instances/off/")) != 0 {
		t.Fatal("a snapshot of a Stopped instance was created with compression flags")
	}
}

func TestKnobUsageErrors(t *testing.T) {
	f := newFake(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--no-network", "--bandwidth-down", "1Gbps", "busybox"}, "--bandwidth-down limits the network: it cannot be combined with --no-network"},
		{[]string{"run", "--bandwidth-up", "1Gbps", "--no-network", "busybox"}, "--bandwidth-up limits the network: it cannot be combined with --no-network"},
		{[]string{"run", "--snapshot-compression-algorithm", "gzip", "busybox"}, `invalid --snapshot-compression-algorithm "gzip": use zstd or lz4`},
		{[]string{"run", "--snapshot-compression-enabled=false", "--snapshot-compression-level", "3", "busybox"},
			"--snapshot-compression-level has no effect with --snapshot-compression-enabled=false"},
		{[]string{"run", "--snapshot-compression-enabled=false", "--snapshot-compression-algorithm", "lz4", "busybox"},
			"--snapshot-compression-algorithm has no effect with --snapshot-compression-enabled=false"},
		{[]string{"run", "--snapshot-compression-delay", "30", "busybox"}, `invalid --snapshot-compression-delay "30": want a duration`},
		{[]string{"run", "--snapshot-compression-level", "high", "busybox"}, `invalid argument "high" for "--snapshot-compression-level"`},
		{[]string{"standby", "--compression-enabled=false", "--compression-delay", "1m", "web"}, "--compression-delay has no effect with --compression-enabled=false"},
		{[]string{"standby", "--compression-algorithm", "brotli", "web"}, `invalid --compression-algorithm "brotli": use zstd or lz4`},
		{[]string{"standby", "--compression-delay", "soon", "web"}, `invalid --compression-delay "soon": want a duration`},
		{[]string{"standby", "--compression-level", "3"}, `"hypeman standby" needs at least one instance`},
		{[]string{"snapshot", "create", "--kind", "Stopped", "--compression-level", "3", "web"}, "--compression-level has no effect with --kind Stopped"},
		{[]string{"snapshot", "create", "--compression-enabled=false", "--compression-algorithm", "lz4", "web"},
			"--compression-algorithm has no effect with --compression-enabled=false"},
		{[]string{"snapshot", "create", "--compression-delay", "1m", "web"}, "unknown flag: --compression-delay"},
	} {
		res := f.run(tc.args...)
		if res.code != 1 || !strings.Contains(res.stderr, tc.want) || !strings.Contains(res.stderr, "--help' for usage") {
			t.Errorf("%v: want %q\n%v", tc.args, tc.want, res)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.reqs); n != 0 {
		t.Errorf("%d requests sent for invalid command lines", n)
	}
}

// With --format json, run (waiting or detached), standby and snapshot
// create print the server's objects with the knob fields as sent.
func TestKnobFieldsInJSONOutput(t *testing.T) {
	knobs := `"hotplug_size":"3GB","disk_io_bps":"100MB/s",` +
		`"network":{"enabled":true,"name":"default","ip":"10.100.0.2","mac":"02:00:0a:64:00:02","bandwidth_download":"1Gbps","bandwidth_upload":"500Mbps"},` +
		`"snapshot_policy":{"compression":{"enabled":true,"algorithm":"lz4","level":0},"standby_compression_delay":"30s"}`
	f := newFake(t)
	f.handle("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, instanceJSON(instID, "web", "Initializing", testNow, knobs))
	})
	f.handle("GET /instances/{id}/wait", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, `{"state":"Running","state_error":null,"timed_out":false,"reached":"Running"}`)
	})
	f.handle("GET /instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, instanceJSON(instID, "web", "Running", testNow, knobs))
	})
	f.handle("POST /instances/{id}/standby", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, instanceJSON(instID, "web", "Standby", testNow, knobs))
	})
	snap := strings.TrimSuffix(snapshotJSON("s0123456789abcdef", "s", "Standby", "web", testNow), "}") +
		`,"compression_state":"compressed","compression":{"enabled":true,"algorithm":"zstd","level":6},"compressed_size_bytes":1000,"uncompressed_size_bytes":4000}`
	f.handle("POST /instances/{id}/snapshots", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, snap)
	})
	runArgs := []string{"--hotplug-size", "3GB", "--disk-io", "100MB/s", "--bandwidth-down", "1Gbps", "--bandwidth-up", "500Mbps",
		"--snapshot-compression-algorithm", "lz4", "--snapshot-compression-delay", "30s", "busybox"}
	for _, args := range [][]string{
		append([]string{"--format", "json", "run"}, runArgs...),
		append([]string{"--format", "json", "run", "-d"}, runArgs...),
		{"--format", "json", "standby", "--compression-delay", "1m", "web"},
	} {
		res := f.run(args...)
		if res.code != 0 {
			t.Fatalf("%v:\n%v", args, res)
		}
		out := mustJSON(t, res.stdout)
		net, _ := out["network"].(map[string]any)
		if out["hotplug_size"] != "3GB" || out["disk_io_bps"] != "100MB/s" || net["bandwidth_download"] != "1Gbps" || net["bandwidth_upload"] != "500Mbps" ||
			jsonOf(t, out["snapshot_policy"]) != `{"compression":{"algorithm":"lz4","enabled":true,"level":0},"standby_compression_delay":"30s"}` {
			t.Errorf("%v: knob fields missing from %s", args, res.stdout)
		}
	}
	res := f.run("--format", "json", "snapshot", "create", "--compression-level", "6", "web")
	if out := mustJSON(t, res.stdout); res.code != 0 || jsonOf(t, out["compression"]) != `{"algorithm":"zstd","enabled":true,"level":6}` ||
		out["compression_state"] != "compressed" || out["compressed_size_bytes"] != float64(1000) {
		t.Fatal(res)
	}
}

// knobRecorder is the manager behind the knob contract test: it records
// what the real API server decoded from the CLI's bodies and answers with
// the settings in force, as the manager does.
type knobRecorder struct {
	recordingInstances
	api.Lifecycle
	api.Snapshots

	standbys []instances.StandbyParams
	snaps    []instances.SnapshotParams
}

func (k *knobRecorder) Standby(ctx context.Context, ref string, p instances.StandbyParams) (*instances.Instance, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.standbys = append(k.standbys, p)
	return &instances.Instance{ID: "i-" + ref, Name: ref, State: state.Standby, HasSnapshot: true}, nil
}

func (k *knobRecorder) CreateSnapshot(ctx context.Context, ref string, p instances.SnapshotParams) (*instances.Snapshot, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.snaps = append(k.snaps, p)
	sn := &instances.Snapshot{ID: "s-1", Name: p.Name, Kind: p.Kind, SourceInstanceID: "i-" + ref, SourceInstanceName: ref,
		CreatedAt: testNow, CompressionState: instances.CompressionStateCompressed}
	if p.Compression != nil {
		sn.Compression = *p.Compression
	}
	return sn, nil
}

// TestContractKnobs runs the new flags through the real API server: its
// spec validation accepts the bodies, its conversion hands the manager the
// intended settings, and its field errors reach the user.
func TestContractKnobs(t *testing.T) {
	rec := &knobRecorder{}
	target := startContractAPI(t, api.Options{Instances: rec, Lifecycle: rec, Snapshots: rec, Images: noImages{}}, auth.SnapshotWrite)

	res := contractRun(t, target, nil, "--format", "json", "run", "-d", "--name", "web", "--hotplug-size", "3GB", "--disk-io", "100MB/s",
		"--bandwidth-down", "1Gbps", "--bandwidth-up", "125MB/s", "--snapshot-compression-algorithm", "lz4", "--snapshot-compression-level", "4",
		"--snapshot-compression-delay", "30s", "busybox")
	if res.code != 0 {
		t.Fatal(res)
	}
	p := rec.created[0]
	lz4 := hypervisor.Compression{Algorithm: hypervisor.CompressionLZ4, Level: 4}
	if p.HotplugSize != "3GB" || p.DiskIOBps != "100MB/s" || p.BandwidthDownload != "1Gbps" || p.BandwidthUpload != "125MB/s" || p.NetworkEnabled != nil ||
		p.SnapshotPolicy == nil || p.SnapshotPolicy.Compression == nil || *p.SnapshotPolicy.Compression != lz4 || p.SnapshotPolicy.StandbyCompressionDelay != 30*time.Second {
		t.Fatalf("create params: %+v (policy %+v)", p, p.SnapshotPolicy)
	}
	out := mustJSON(t, res.stdout)
	if out["hotplug_size"] != "3GB" || out["disk_io_bps"] != "100MB/s" ||
		jsonOf(t, out["network"]) != `{"bandwidth_download":"1Gbps","bandwidth_upload":"125MB/s","enabled":true,"name":"default"}` ||
		jsonOf(t, out["snapshot_policy"]) != `{"compression":{"algorithm":"lz4","enabled":true,"level":4},"standby_compression_delay":"30s"}` {
		t.Fatalf("run --format json: %s", res.stdout)
	}

	res = contractRun(t, target, nil, "standby", "--compression-level", "7", "--compression-delay", "2m", "web")
	if res.code != 0 || res.stdout != "web\n" {
		t.Fatal(res)
	}
	zstd7 := hypervisor.Compression{Algorithm: hypervisor.CompressionZstd, Level: 7}
	if s := rec.standbys[0]; s.Compression == nil || *s.Compression != zstd7 || s.CompressionDelay == nil || *s.CompressionDelay != 2*time.Minute {
		t.Fatalf("standby params: %+v", s)
	}
	res = contractRun(t, target, nil, "standby", "web")
	if s := rec.standbys[1]; res.code != 0 || s.Compression != nil || s.CompressionDelay != nil {
		t.Fatalf("plain standby params: %+v\n%v", s, res)
	}
	res = contractRun(t, target, nil, "standby", "--compression-enabled=false", "web")
	if s := rec.standbys[2]; res.code != 0 || s.Compression == nil || s.Compression.Enabled() {
		t.Fatalf("standby without compression: %+v\n%v", s, res)
	}

	res = contractRun(t, target, nil, "--format", "json", "snapshot", "create", "--kind", "standby", "--compression-algorithm", "lz4", "web")
	if res.code != 0 || len(rec.snaps) != 1 || rec.snaps[0].Compression == nil || *rec.snaps[0].Compression != (hypervisor.Compression{Algorithm: hypervisor.CompressionLZ4}) ||
		jsonOf(t, mustJSON(t, res.stdout)["compression"]) != `{"algorithm":"lz4","enabled":true,"level":0}` {
		t.Fatalf("snapshot params %+v\n%v", rec.snaps, res)
	}

	// Ranges are the server's: its errors name the field.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"standby", "--compression-level", "0", "web"}, "Error: web: invalid compression.level: 0 is out of range: zstd levels are 1-19"},
		{[]string{"snapshot", "create", "--kind", "Standby", "--compression-algorithm", "lz4", "--compression-level", "12", "web"},
			"Error: invalid compression.level: 12 is out of range: lz4 levels are 0-9"},
		{[]string{"run", "-d", "--name", "x", "--snapshot-compression-level", "20", "busybox"}, "snapshot_policy.compression.level: number must be at most 19"},
	} {
		res := contractRun(t, target, nil, tc.args...)
		if res.code != 1 || !strings.Contains(res.stderr, tc.want) {
			t.Errorf("%v: want %q\n%v", tc.args, tc.want, res)
		}
	}
}
