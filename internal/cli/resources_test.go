package cli

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
)

const resourcesBody = `{
 "cpu":{"type":"cpu","capacity":2,"effective_limit":8,"allocated":3,"available":5,"oversub_ratio":4,"source":"detected"},
 "memory":{"type":"memory","capacity":25275351040,"effective_limit":25275351040,"allocated":1342177280,"available":23933173760,"oversub_ratio":1,"source":"detected"},
 "disk":{"type":"disk","capacity":270582939648,"effective_limit":270582939648,"allocated":11811160064,"available":258771779584,"oversub_ratio":1,"source":"detected"},
 "network":{"type":"network","capacity":1250000000,"effective_limit":2500000000,"allocated":125000000,"available":2375000000,"oversub_ratio":2,"source":"default"},
 "disk_io":{"type":"disk_io","capacity":1073741824,"effective_limit":2147483648,"allocated":0,"available":2147483648,"oversub_ratio":2,"source":"default"},
 "disk_breakdown":{"images_bytes":2019328,"oci_cache_bytes":0,"volumes_bytes":0,"overlays_bytes":1048576,"snapshots_bytes":67108864},
 "allocations":[
  {"instance_id":"i1","instance_name":"web","cpu":2,"memory_bytes":1073741824,"disk_bytes":10737418240,"network_download_bps":125000000,"network_upload_bps":0,"disk_io_bps":0},
  {"instance_id":"i2","instance_name":"idle","cpu":0,"memory_bytes":0,"disk_bytes":1073741824,"network_download_bps":0,"network_upload_bps":0,"disk_io_bps":0}]}`

func TestResourcesTable(t *testing.T) {
	f := newFake(t)
	f.handle("GET /resources", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, resourcesBody) })
	res := f.run("resources")
	if res.code != 0 {
		t.Fatal(res)
	}
	for _, want := range []string{
		"RESOURCE   CAPACITY    EFFECTIVE   ALLOCATED   AVAILABLE   OVERSUB   SOURCE",
		"cpu        2           8           3           5           4.0x      detected",
		"memory     23.5 GB     23.5 GB     1.2 GB      22.3 GB     1.0x      detected",
		"network    10.0 Gbps   20.0 Gbps   1.0 Gbps    19.0 Gbps   2.0x      default",
		"disk_io    1.0 GB/s",
		"  Snapshots: 64.0 MB",
		"web        2     1.0 GB   10.0 GB   -          1.0 Gbps   -",
		"idle       0     0 B      1.0 GB    -",
	} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("missing %q in\n%s", want, res.stdout)
		}
	}
	if res := f.run("--format", "json", "resources"); res.code != 0 || !strings.Contains(res.stdout, `"snapshots_bytes":67108864`) {
		t.Errorf("json: %v", res)
	}
}

func TestReclaimMemoryCommand(t *testing.T) {
	f := newFake(t)
	f.handle("POST /resources/memory/reclaim", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, `{"requested_reclaim_bytes":536870912,"planned_reclaim_bytes":536870912,"applied_reclaim_bytes":520093696,
 "hold_until":"2026-01-02T03:04:05Z","host_available_bytes":8589934592,"host_pressure_state":"healthy",
 "actions":[{"instance_id":"i1","instance_name":"web","hypervisor":"qemu","assigned_memory_bytes":2147483648,"protected_floor_bytes":1073741824,
  "previous_target_guest_memory_bytes":2147483648,"planned_target_guest_memory_bytes":1610612736,"target_guest_memory_bytes":1610612736,
  "applied_reclaim_bytes":520093696,"status":"partial"}]}`)
	})
	res := f.run("resources", "reclaim-memory", "--reclaim-bytes", "512MB", "--hold-for", "10m", "--reason", "pack")
	if res.code != 0 {
		t.Fatal(res)
	}
	for _, want := range []string{"Requested reclaim: 512.0 MB", "Applied reclaim:   496.0 MB", "Host available:    8.0 GB (healthy)", "Held until:",
		"web        2.0 GB     1.0 GB   2.0 GB   1.5 GB   496.0 MB    partial"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("missing %q in\n%s", want, res.stdout)
		}
	}
	reqs := f.requests("POST", "/resources/memory/reclaim")
	want := map[string]any{"reclaim_bytes": float64(512 << 20), "hold_for": "10m", "reason": "pack"}
	if got := mustJSON(t, reqs[0].Body); !reflect.DeepEqual(got, want) {
		t.Fatalf("body %v", got)
	}
	f.run("resources", "reclaim-memory", "--reclaim-bytes", "1048576", "--dry-run")
	if got := mustJSON(t, f.requests("POST", "/resources/memory/reclaim")[1].Body); !reflect.DeepEqual(got, map[string]any{"reclaim_bytes": float64(1 << 20), "dry_run": true}) {
		t.Fatalf("dry run body %v", got)
	}
	for _, bad := range [][]string{{}, {"--reclaim-bytes", "lots"}, {"--reclaim-bytes", "0"}} {
		res := f.run(append([]string{"resources", "reclaim-memory"}, bad...)...)
		if res.code != 1 || !strings.Contains(res.stderr, "reclaim-bytes") || !strings.Contains(res.stderr, "--help") {
			t.Errorf("%v: %v", bad, res)
		}
	}
	if n := len(f.requests("POST", "/resources/memory/reclaim")); n != 2 {
		t.Errorf("bad flags reached the server: %d requests", n)
	}
}
