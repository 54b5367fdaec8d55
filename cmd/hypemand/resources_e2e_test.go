package main_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
)

type resourceStatus struct {
	Capacity  int64 `json:"capacity"`
	Allocated int64 `json:"allocated"`
	Available int64 `json:"available"`
}

type resourcesBody struct {
	Memory      resourceStatus `json:"memory"`
	Cpu         resourceStatus `json:"cpu"`
	Allocations []struct {
		InstanceName string `json:"instance_name"`
		Cpu          int64  `json:"cpu"`
		MemoryBytes  int64  `json:"memory_bytes"`
		DiskBytes    int64  `json:"disk_bytes"`
	} `json:"allocations"`
}

func decodeResources(t *testing.T, s *e2e.Server) resourcesBody {
	t.Helper()
	var r resourcesBody
	if st, body := s.JSON("GET", "/resources", nil, &r); st != 200 {
		t.Fatalf("GET /resources: %d %s", st, body)
	}
	return r
}

// Issue 12 admission with real VMs through HTTP: the host's memory is set
// to 768 MB (memory_limit) so the numbers are deterministic. Three 256 MB
// instances fill it; a fourth is refused 409 with the numbers; after a
// delete the next create fits; parallel creates racing for one free slot
// give exactly one 201; GET /resources allocations add up.
func TestAdmissionThroughHTTP(t *testing.T) {
	t.Parallel()
	s := e2e.Start(t, "--memory-limit", "768MB")
	pushImage(t, s, "apps/idle:v1", testimage.Options{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"sleep 3600"}})
	create := func(name string) (int, []byte) {
		return s.Do("POST", "/instances", map[string]any{"name": name, "image": "apps/idle:v1", "size": "256MB", "vcpus": 1,
			"overlay_size": "1GB", "skip_guest_agent": true})
	}
	ids := map[string]string{}
	for _, n := range []string{"a", "b", "c"} {
		st, body := create("fill-" + n)
		if st != http.StatusCreated {
			t.Fatalf("create fill-%s: %d %s", n, st, body)
		}
		var in instance
		json.Unmarshal(body, &in)
		ids[n] = in.ID
	}
	st, body := create("fill-d")
	var e struct{ Code, Message string }
	json.Unmarshal(body, &e)
	if st != http.StatusConflict || e.Code != "insufficient_resources" ||
		!strings.Contains(e.Message, "memory: asked 256.0 MiB, 0.0 MiB free of 768.0 MiB") || !strings.Contains(e.Message, "oversub_memory") {
		t.Fatalf("4th create: %d %s", st, body)
	}
	if st, _ := s.Do("GET", "/instances/fill-d", nil); st != http.StatusNotFound {
		t.Errorf("refused create left an instance: %d", st)
	}
	r := decodeResources(t, s)
	if r.Memory.Capacity != 768<<20 || r.Memory.Allocated != 768<<20 || r.Memory.Available != 0 || len(r.Allocations) != 3 {
		t.Fatalf("resources when full: %+v", r)
	}
	var mem, cpu int64
	for _, a := range r.Allocations {
		mem += a.MemoryBytes
		cpu += a.Cpu
		if a.DiskBytes != 1<<30 {
			t.Errorf("%s disk %d, want its 1GB overlay", a.InstanceName, a.DiskBytes)
		}
	}
	if mem != r.Memory.Allocated || cpu != r.Cpu.Allocated || cpu != 3 {
		t.Errorf("allocations add up to %d bytes, %d cpu; status says %d, %d", mem, cpu, r.Memory.Allocated, r.Cpu.Allocated)
	}

	if st, body := s.Do("DELETE", "/instances/fill-a", nil); st != http.StatusNoContent {
		t.Fatalf("delete: %d %s", st, body)
	}
	if st, body := create("fill-d"); st != http.StatusCreated {
		t.Fatalf("create after a delete: %d %s", st, body)
	}

	// One slot free, four creates racing for it.
	if st, body := s.Do("DELETE", "/instances/fill-b", nil); st != http.StatusNoContent {
		t.Fatalf("delete: %d %s", st, body)
	}
	var wg sync.WaitGroup
	codes := make([]int, 4)
	bodies := make([][]byte, 4)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], bodies[i], _ = s.TryDo("POST", "/instances", map[string]any{"name": fmt.Sprintf("race-%d", i), "image": "apps/idle:v1",
				"size": "256MB", "vcpus": 1, "overlay_size": "1GB", "skip_guest_agent": true})
		}()
	}
	wg.Wait()
	won := 0
	for i, c := range codes {
		switch c {
		case http.StatusCreated:
			won++
		case http.StatusConflict:
			if !strings.Contains(string(bodies[i]), "insufficient_resources") {
				t.Errorf("race %d: %s", i, bodies[i])
			}
		default:
			t.Errorf("race %d: %d %s", i, c, bodies[i])
		}
	}
	if won != 1 {
		t.Fatalf("%d of 4 racing creates got the last slot, want 1 (%v)", won, codes)
	}
	r = decodeResources(t, s)
	if r.Memory.Allocated != 768<<20 || len(r.Allocations) != 3 {
		t.Fatalf("after the race: %+v", r)
	}
	// A stopped instance holds no memory: stopping one makes room.
	if st, body := s.Do("POST", "/instances/fill-c/stop", nil); st != 200 {
		t.Fatalf("stop: %d %s", st, body)
	}
	r = decodeResources(t, s)
	if r.Memory.Allocated != 512<<20 {
		t.Fatalf("after a stop: memory allocated %d", r.Memory.Allocated)
	}
	if st, body := create("after-stop"); st != http.StatusCreated {
		t.Fatalf("create after a stop: %d %s", st, body)
	}
	st, body = s.Do("POST", "/instances/fill-c/start", nil)
	if st != http.StatusConflict || !strings.Contains(string(body), "insufficient_resources") {
		t.Fatalf("start on a full host: %d %s", st, body)
	}

	// A new daemon (after kill -9) seeds the ledger from the VMs it
	// re-adopts: still full.
	s.Kill()
	s.Restart()
	r = decodeResources(t, s)
	if r.Memory.Allocated != 768<<20 || len(r.Allocations) != 4 {
		t.Fatalf("after a daemon restart: %+v", r)
	}
	if st, body := create("after-restart"); st != http.StatusConflict {
		t.Fatalf("create after a daemon restart: %d %s", st, body)
	}
}
