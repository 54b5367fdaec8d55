package kubelet

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"

	"hypeman/internal/api/client"
	"hypeman/internal/api/execws"
	"hypeman/internal/kubelet/podmap"
)

// fakeHypemand is an in-memory hypemand speaking the generated client's
// JSON shapes for the endpoints the provider uses.
type fakeHypemand struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	down     bool // every request gets its connection closed
	insts    map[string]*client.Instance
	vols     map[string]*client.Volume
	nextID   int
	calls    []string // "METHOD /path" in order
	stopBody map[string]string
	// stopExit, when set, is the exit code (and message) a stop records.
	stopExit *int
	stopMsg  string
	// createRefusal, when set, refuses instance creates with this status
	// and error.
	createRefusal *apiRefusal
	// eventsRefusal, when set, refuses GET /events with this status and
	// error.
	eventsRefusal *apiRefusal
	// getHold, when set, holds the next GET /instances/{id} after its
	// snapshot is taken until it is closed (one request); getHeld gets a
	// value then.
	getHold, getHeld chan struct{}
	admission        *client.Error // refuse creates with 409 this error
	events           chan client.LifecycleEvent
	eventID          int64
	logLines         []string
	// listHold, when set, holds node-wide listings (filter k8s.node only)
	// after their snapshot is taken, until it is closed; listHeld gets one
	// value per held listing.
	listHold chan struct{}
	listHeld chan struct{}
}

// apiRefusal is an error answer of the fake.
type apiRefusal struct {
	status        int
	code, message string
}

func newFake(t *testing.T) *fakeHypemand {
	f := &fakeHypemand{t: t, insts: map[string]*client.Instance{}, vols: map[string]*client.Volume{},
		stopBody: map[string]string{}, events: make(chan client.LifecycleEvent, 64)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, client.Health{Status: client.Ok}) })
	mux.HandleFunc("GET /resources", f.resources)
	mux.HandleFunc("GET /instances", f.listInstances)
	mux.HandleFunc("POST /instances", f.createInstance)
	mux.HandleFunc("GET /instances/{id}", f.getInstance)
	mux.HandleFunc("DELETE /instances/{id}", f.deleteInstance)
	mux.HandleFunc("POST /instances/{id}/stop", f.stopInstance)
	mux.HandleFunc("GET /instances/{id}/logs", f.logs)
	mux.HandleFunc("GET /volumes", f.listVolumes)
	mux.HandleFunc("POST /volumes", f.createVolume)
	mux.HandleFunc("POST /volumes/from-archive", f.createVolumeFromArchive)
	mux.HandleFunc("DELETE /volumes/{id}", f.deleteVolume)
	mux.HandleFunc("GET /events", f.streamEvents)
	mux.HandleFunc("GET /instances/{id}/exec", f.exec)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		down := f.down
		f.calls = append(f.calls, r.Method+" "+r.URL.Path)
		f.mu.Unlock()
		if down {
			if hj, ok := w.(http.Hijacker); ok {
				c, _, _ := hj.Hijack()
				c.Close()
			}
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		f.srv.CloseClientConnections()
		f.srv.Close()
	})
	return f
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func apiErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, client.Error{Code: code, Message: msg})
}

// tagFilter reads deepObject tags[k]=v query parameters.
func tagFilter(r *http.Request) map[string]string {
	out := map[string]string{}
	for k, v := range r.URL.Query() {
		if strings.HasPrefix(k, "tags[") && strings.HasSuffix(k, "]") {
			out[k[5:len(k)-1]] = v[0]
		}
	}
	return out
}

func matches(tags *client.Tags, filter map[string]string) bool {
	for k, v := range filter {
		if tags == nil || (*tags)[k] != v {
			return false
		}
	}
	return true
}

func (f *fakeHypemand) resources(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	res := client.Resources{
		Cpu:    client.ResourceStatus{Type: "cpu", EffectiveLimit: 8},
		Memory: client.ResourceStatus{Type: "memory", EffectiveLimit: 16 << 30},
		Disk:   client.ResourceStatus{Type: "disk", EffectiveLimit: 100 << 30},
	}
	for _, in := range f.insts {
		cpu, mem, id := 2, int64(1<<30), in.Id
		res.Allocations = append(res.Allocations, client.ResourceAllocation{InstanceId: &id, Cpu: &cpu, MemoryBytes: &mem})
	}
	writeJSON(w, 200, res)
}

func (f *fakeHypemand) listInstances(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	filter := tagFilter(r)
	out := []client.Instance{}
	for _, in := range f.insts {
		if matches(in.Tags, filter) {
			out = append(out, *in)
		}
	}
	hold, held := f.listHold, f.listHeld
	f.mu.Unlock()
	if _, node := filter[podmap.TagNode]; hold != nil && node && len(filter) == 1 {
		held <- struct{}{}
		<-hold
	}
	writeJSON(w, 200, out)
}

func (f *fakeHypemand) find(ref string) *client.Instance {
	if in := f.insts[ref]; in != nil {
		return in
	}
	for _, in := range f.insts {
		if in.Name == ref {
			return in
		}
	}
	return nil
}

func (f *fakeHypemand) createInstance(w http.ResponseWriter, r *http.Request) {
	var req client.CreateInstanceRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		apiErr(w, 400, "invalid_request", err.Error())
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if rf := f.createRefusal; rf != nil {
		apiErr(w, rf.status, rf.code, rf.message)
		return
	}
	if f.admission != nil {
		writeJSON(w, 409, f.admission)
		return
	}
	if f.find(req.Name) != nil {
		apiErr(w, 409, "conflict", "instance name "+req.Name+" is taken")
		return
	}
	for _, m := range deref(req.Volumes) {
		if f.vols[m.VolumeId] == nil {
			apiErr(w, 404, "not_found", "volume not found: "+m.VolumeId)
			return
		}
	}
	f.nextID++
	id := fmt.Sprintf("inst%d", f.nextID)
	now := time.Now()
	in := &client.Instance{Id: id, Name: req.Name, Image: req.Image, State: client.Running, Tags: req.Tags,
		Volumes: req.Volumes, StopTimeout: req.StopTimeout, CreatedAt: now, StartedAt: &now}
	f.insts[id] = in
	f.emit(id, "", "Running")
	writeJSON(w, 201, in)
}

// emit queues a lifecycle event. Called with f.mu held.
func (f *fakeHypemand) emit(id, from, to string) {
	f.eventID++
	typ := client.StateChange
	if to == "" {
		typ = client.Deleted
	}
	select {
	case f.events <- client.LifecycleEvent{Id: f.eventID, Type: typ, InstanceId: id, From: from, To: to, At: time.Now()}:
	default:
	}
}

// setState changes an instance's state and emits the event.
func (f *fakeHypemand) setState(id string, state client.InstanceState, exit int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := f.insts[id]
	from := in.State
	in.State = state
	in.ExitCode = &exit
	f.emit(id, string(from), string(state))
}

func (f *fakeHypemand) getInstance(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	in := f.find(r.PathValue("id"))
	if in == nil {
		f.mu.Unlock()
		apiErr(w, 404, "not_found", "instance not found")
		return
	}
	snap := *in
	hold, held := f.getHold, f.getHeld
	f.getHold = nil
	f.mu.Unlock()
	if hold != nil {
		held <- struct{}{}
		<-hold
	}
	writeJSON(w, 200, snap)
}

func (f *fakeHypemand) stopInstance(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	in := f.find(r.PathValue("id"))
	if in == nil {
		apiErr(w, 404, "not_found", "instance not found")
		return
	}
	f.stopBody[in.Id] = string(body)
	in.State = client.Stopped
	if f.stopExit != nil {
		code, msg, now := *f.stopExit, f.stopMsg, time.Now()
		in.ExitCode, in.ExitMessage, in.StoppedAt = &code, &msg, &now
	}
	writeJSON(w, 200, in)
}

func (f *fakeHypemand) deleteInstance(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := f.find(r.PathValue("id"))
	if in == nil {
		apiErr(w, 404, "not_found", "instance not found")
		return
	}
	delete(f.insts, in.Id)
	f.emit(in.Id, string(in.State), "")
	w.WriteHeader(204)
}

func (f *fakeHypemand) logs(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	lines := f.logLines
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/event-stream")
	for _, l := range lines {
		b, _ := json.Marshal(l)
		fmt.Fprintf(w, "data: %s\n\n", b)
	}
}

func (f *fakeHypemand) listVolumes(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	filter := tagFilter(r)
	out := []client.Volume{}
	for _, v := range f.vols {
		if matches(v.Tags, filter) {
			out = append(out, *v)
		}
	}
	writeJSON(w, 200, out)
}

func (f *fakeHypemand) addVolume(w http.ResponseWriter, name string, size int, tags *client.Tags) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, v := range f.vols {
		if v.Name == name {
			apiErr(w, 409, "conflict", "volume name taken")
			return
		}
	}
	f.nextID++
	v := &client.Volume{Id: fmt.Sprintf("vol%d", f.nextID), Name: name, SizeGb: size, Tags: tags, CreatedAt: time.Now()}
	f.vols[v.Id] = v
	writeJSON(w, 201, v)
}

func (f *fakeHypemand) createVolume(w http.ResponseWriter, r *http.Request) {
	var req client.CreateVolumeRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		apiErr(w, 400, "invalid_request", err.Error())
		return
	}
	f.addVolume(w, req.Name, req.SizeGb, req.Tags)
}

func (f *fakeHypemand) createVolumeFromArchive(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	tags := client.Tags(tagFilter(r))
	var size int
	fmt.Sscan(r.URL.Query().Get("size_gb"), &size)
	f.addVolume(w, r.URL.Query().Get("name"), size, &tags)
}

func (f *fakeHypemand) deleteVolume(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.vols[r.PathValue("id")] == nil {
		apiErr(w, 404, "not_found", "volume not found")
		return
	}
	delete(f.vols, r.PathValue("id"))
	w.WriteHeader(204)
}

func (f *fakeHypemand) streamEvents(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	rf := f.eventsRefusal
	f.mu.Unlock()
	if rf != nil {
		apiErr(w, rf.status, rf.code, rf.message)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	w.(http.Flusher).Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case ev := <-f.events:
			b, _ := json.Marshal(ev)
			fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.Id, ev.Type, b)
			w.(http.Flusher).Flush()
		}
	}
}

// exec answers every command with "<stdin>|<command>" on stdout, "warn" on
// stderr and exit code 3.
func (f *fakeHypemand) exec(w http.ResponseWriter, r *http.Request) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	ctx := r.Context()
	_, data, err := conn.Read(ctx)
	if err != nil {
		return
	}
	var start client.ExecStart
	json.Unmarshal(data, &start)
	var in []byte
	for {
		typ, d, err := conn.Read(ctx)
		if err != nil {
			return
		}
		if typ == websocket.MessageBinary {
			if len(d) == 0 {
				break
			}
			in = append(in, d...)
		}
	}
	out := string(in) + "|" + strings.Join(deref(start.Command), " ")
	conn.Write(ctx, websocket.MessageBinary, append([]byte{execws.StreamStdout}, out...))
	conn.Write(ctx, websocket.MessageBinary, append([]byte{execws.StreamStderr}, "warn"...))
	conn.Write(ctx, websocket.MessageText, []byte(`{"exitCode":3,"message":"exited with code 3"}`))
	conn.Close(websocket.StatusNormalClosure, "")
}

func (f *fakeHypemand) count(call string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == call {
			n++
		}
	}
	return n
}

func (f *fakeHypemand) callsMatching(prefix string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if strings.HasPrefix(c, prefix) {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeHypemand) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
	if down {
		f.srv.CloseClientConnections()
	}
}

func (f *fakeHypemand) instanceCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.insts)
}

func (f *fakeHypemand) volumeCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.vols)
}

// testMapper is a trivial translation (the real rules are podmap's): one
// container, an emptyDir per volume, a pod annotated "test/missing" has a
// missing ConfigMap; status is the instance state and reachability.
type testMapper struct{}

func (testMapper) Translate(ctx context.Context, pod *corev1.Pod, r podmap.Resolver, opts podmap.Options) (*podmap.Plan, error) {
	if len(pod.Spec.Containers) != 1 {
		return nil, &podmap.UnsupportedError{Field: "spec.containers[1]", Reason: "one container per pod"}
	}
	if name := pod.Annotations["test/missing"]; name != "" {
		if _, err := r.ConfigMap(ctx, pod.Namespace, name); err != nil {
			return nil, &podmap.ConfigError{Field: "metadata.annotations", Err: err}
		}
	}
	plan := &podmap.Plan{Instance: client.CreateInstanceRequest{Name: pod.Name, Image: pod.Spec.Containers[0].Image}}
	for _, v := range pod.Spec.Volumes {
		plan.Volumes = append(plan.Volumes, podmap.Volume{Name: v.Name, SizeBytes: 1, Mount: podmap.Mount{Path: "/" + v.Name}})
	}
	plan.Warnings = []string{"test warning"}
	return plan, nil
}

func (testMapper) InstanceName(pod *corev1.Pod) string    { return pod.Name }
func (testMapper) AltInstanceName(pod *corev1.Pod) string { return pod.Name + "-alt" }

func (testMapper) Status(pod *corev1.Pod, inst *client.Instance, reachable bool, now time.Time) corev1.PodStatus {
	if !reachable && pod.Status.Phase != "" {
		// As podmap: the last status is kept, not ready.
		st := *pod.Status.DeepCopy()
		st.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
		return st
	}
	st := corev1.PodStatus{Phase: corev1.PodPending}
	ready := corev1.ConditionFalse
	if inst != nil {
		switch inst.State {
		case client.Running:
			st.Phase = corev1.PodRunning
			if reachable {
				ready = corev1.ConditionTrue
			}
		case client.Stopped:
			st.Phase = corev1.PodFailed
			if inst.ExitCode != nil && *inst.ExitCode == 0 {
				st.Phase = corev1.PodSucceeded
			}
		}
		st.Message = string(inst.State)
	}
	st.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}}
	return st
}

func (testMapper) Failed(pod *corev1.Pod, reason, message string, now time.Time) corev1.PodStatus {
	return corev1.PodStatus{Phase: corev1.PodFailed, Reason: reason, Message: message}
}

// testResolver knows no ConfigMap unless added.
type testResolver struct {
	mu  sync.Mutex
	cms map[string]bool
}

func (r *testResolver) ConfigMap(_ context.Context, ns, name string) (*corev1.ConfigMap, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.cms[ns+"/"+name] {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, name)
	}
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, nil
}

func (r *testResolver) add(ns, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cms[ns+"/"+name] = true
}

func (r *testResolver) Secret(_ context.Context, ns, name string) (*corev1.Secret, error) {
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
}

func (r *testResolver) ServiceAccountToken(context.Context, *corev1.Pod, string, int64) (string, error) {
	return "token", nil
}

// harness is a provider against a fake hypemand, with its notifications.
type harness struct {
	f        *fakeHypemand
	p        *Provider
	resolver *testResolver
	recorder *record.FakeRecorder
	statuses chan *corev1.Pod
	nodes    chan *corev1.Node
	removed  *removals
}

func newHarness(t *testing.T, f *fakeHypemand) *harness {
	t.Helper()
	h := newIdleHarness(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	h.p.Start(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.p.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return h
}

// newIdleHarness is a harness whose provider is neither started nor run
// (no loops: the test drives it).
func newIdleHarness(t *testing.T, f *fakeHypemand) *harness {
	t.Helper()
	api, err := client.NewClientWithResponses(f.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{f: f, resolver: &testResolver{cms: map[string]bool{}}, recorder: record.NewFakeRecorder(10000), removed: &removals{},
		statuses: make(chan *corev1.Pod, 1000), nodes: make(chan *corev1.Node, 1000)}
	node := &corev1.Node{}
	SetupNode(node, NodeSpec{Name: "hn1", IP: "10.0.0.1", Port: 10250, Version: "test", MaxPods: 10}, time.Now())
	h.p = NewProvider(ProviderConfig{
		NodeName: "hn1", NodeIP: "10.0.0.1", API: api, Dialer: execws.Dialer{BaseURL: f.srv.URL},
		Mapper: testMapper{}, Resolver: h.resolver, Recorder: h.recorder, Pods: h.removed,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Node: node, MaxPods: 10,
		HealthInterval: 20 * time.Millisecond, ResourcesInterval: time.Hour,
		RetryMin: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond,
	})
	h.p.NotifyPods(t.Context(), func(p *corev1.Pod) { h.statuses <- p })
	h.p.NotifyNodeStatus(t.Context(), func(n *corev1.Node) { h.nodes <- n })
	return h
}

// removals records RemovePod calls ("namespace/name/uid").
type removals struct {
	mu    sync.Mutex
	calls []string
}

func (r *removals) RemovePod(_ context.Context, namespace, name string, uid types.UID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, namespace+"/"+name+"/"+string(uid))
	return nil
}

func (r *removals) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// runPod creates pod and waits for it to run.
func (h *harness) runPod(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	if err := h.p.CreatePod(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	h.waitStatus(t, pod.Name, func(s corev1.PodStatus) bool { return s.Phase == corev1.PodRunning })
}

// waitStatus waits for a notified status of pod name that satisfies ok.
func (h *harness) waitStatus(t *testing.T, name string, ok func(corev1.PodStatus) bool) corev1.PodStatus {
	t.Helper()
	deadline := time.After(10 * time.Second)
	var last *corev1.PodStatus
	for {
		select {
		case p := <-h.statuses:
			if p.Name != name {
				continue
			}
			last = &p.Status
			if ok(p.Status) {
				return p.Status
			}
		case <-deadline:
			t.Fatalf("no matching status for %s; last %+v", name, last)
		}
	}
}

// waitNode waits for a pushed node that satisfies ok.
func (h *harness) waitNode(t *testing.T, ok func(*corev1.Node) bool) *corev1.Node {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case n := <-h.nodes:
			if ok(n) {
				return n
			}
		case <-deadline:
			t.Fatalf("no matching node status; now %+v", h.p.Node().Status.Conditions)
		}
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-0000-" + name)},
		Spec:       corev1.PodSpec{NodeName: "hn1", Containers: []corev1.Container{{Name: "main", Image: "alpine"}}},
	}
}

func readyOf(st corev1.PodStatus) corev1.ConditionStatus {
	for _, c := range st.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status
		}
	}
	return ""
}

func nodeReady(n *corev1.Node) (corev1.ConditionStatus, string) {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status, c.Reason
		}
	}
	return "", ""
}
