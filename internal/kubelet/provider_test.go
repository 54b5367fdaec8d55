package kubelet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilexec "k8s.io/utils/exec"

	"hypeman/internal/api/client"
	"hypeman/internal/kubelet/podmap"
)

// TestCreateIsIdempotentByUID: a create makes one tagged instance and
// reports its status; a second CreatePod, and one from a fresh provider
// (a kubelet restart), adopt it instead of making another.
func TestCreateIsIdempotentByUID(t *testing.T) {
	f := newFake(t)
	h := newHarness(t, f)
	pod := testPod("web")
	if err := h.p.CreatePod(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	h.waitStatus(t, "web", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodRunning })
	if f.instanceCount() != 1 {
		t.Fatalf("%d instances", f.instanceCount())
	}
	f.mu.Lock()
	for _, in := range f.insts {
		want := podmap.Tags(pod, "hn1")
		for k, v := range want {
			if (*in.Tags)[k] != v {
				t.Errorf("tag %s = %q, want %q", k, (*in.Tags)[k], v)
			}
		}
	}
	f.mu.Unlock()
	if err := h.p.CreatePod(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	h2 := newHarness(t, f) // a restarted kubelet
	if got, err := h2.p.GetPods(t.Context()); err != nil || len(got) != 1 || got[0].Name != "web" {
		t.Fatalf("re-sync knows %v (%v)", got, err)
	}
	if err := h2.p.CreatePod(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	h2.waitStatus(t, "web", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodRunning })
	if n := f.count("POST /instances"); n != 1 || f.instanceCount() != 1 {
		t.Fatalf("%d creates, %d instances", n, f.instanceCount())
	}
	// Translation warnings became pod events.
	select {
	case ev := <-h.recorder.Events:
		if !strings.Contains(ev, "test warning") {
			t.Fatalf("event %q", ev)
		}
	default:
		t.Fatal("no event for the plan's warning")
	}
}

// TestUnsupportedPodFails: what cannot map ends Failed with the reason,
// and nothing is created.
func TestUnsupportedPodFails(t *testing.T) {
	f := newFake(t)
	h := newHarness(t, f)
	pod := testPod("two")
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "side", Image: "busybox"})
	if err := h.p.CreatePod(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	st := h.waitStatus(t, "two", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodFailed })
	if st.Reason != "Unsupported" || !strings.Contains(st.Message, "spec.containers[1]") {
		t.Fatalf("status %+v", st)
	}
	if n := f.count("POST /instances") + f.count("POST /volumes"); n != 0 {
		t.Fatalf("%d creates for an unsupported pod", n)
	}
}

// TestAdmissionRefusalRemovesVolumes: volumes are made before the
// instance; a 409 insufficient_resources removes them and fails the pod
// OutOfmemory with hypemand's message.
func TestAdmissionRefusalRemovesVolumes(t *testing.T) {
	f := newFake(t)
	f.admission = &client.Error{Code: "insufficient_resources", Message: "insufficient memory: asked 4.0 GiB, 1.0 GiB free of 16.0 GiB"}
	h := newHarness(t, f)
	pod := testPod("big")
	pod.Spec.Volumes = []corev1.Volume{{Name: "scratch"}, {Name: "cache"}}
	if err := h.p.CreatePod(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	st := h.waitStatus(t, "big", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodFailed })
	if st.Reason != "OutOfmemory" || !strings.Contains(st.Message, "insufficient memory") {
		t.Fatalf("status %+v", st)
	}
	if n := f.count("POST /volumes"); n != 2 {
		t.Fatalf("%d volume creates, want 2", n)
	}
	if f.volumeCount() != 0 || f.instanceCount() != 0 {
		t.Fatalf("left %d volumes, %d instances", f.volumeCount(), f.instanceCount())
	}
}

// TestConfigErrorRetries: a missing ConfigMap keeps the pod Pending with
// CreateContainerConfigError; once it exists the retry creates the pod.
func TestConfigErrorRetries(t *testing.T) {
	f := newFake(t)
	h := newHarness(t, f)
	pod := testPod("cfg")
	pod.Annotations = map[string]string{"test/missing": "settings"}
	if err := h.p.CreatePod(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	st := h.waitStatus(t, "cfg", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodPending })
	if len(st.ContainerStatuses) != 1 || st.ContainerStatuses[0].State.Waiting == nil ||
		st.ContainerStatuses[0].State.Waiting.Reason != reasonConfigError {
		t.Fatalf("status %+v", st)
	}
	if f.instanceCount() != 0 {
		t.Fatal("created without its ConfigMap")
	}
	h.resolver.add("default", "settings")
	h.waitStatus(t, "cfg", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodRunning })
	if n := f.count("POST /instances"); n != 1 {
		t.Fatalf("%d creates", n)
	}
}

// TestDeleteStopsWithGraceThenDeletes: delete sends stop with the pod's
// grace period, then DELETE, removes the pod's volumes and reports every
// container terminated.
func TestDeleteStopsWithGraceThenDeletes(t *testing.T) {
	f := newFake(t)
	h := newHarness(t, f)
	pod := testPod("del")
	pod.Spec.Volumes = []corev1.Volume{{Name: "data"}}
	if err := h.p.CreatePod(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	h.waitStatus(t, "del", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodRunning })
	grace := int64(7)
	pod.DeletionGracePeriodSeconds = &grace
	pod.DeletionTimestamp = &metav1.Time{Time: time.Now().Add(7 * time.Second)}
	if err := h.p.DeletePod(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	// The VM is gone: the pod object goes now, not after the grace period.
	if got := h.removed.list(); !slices.Equal(got, []string{"default/del/" + string(pod.UID)}) {
		t.Fatalf("pod objects removed: %v", got)
	}
	calls := f.callsMatching("")
	var order []string
	for _, c := range calls {
		if strings.HasPrefix(c, "POST /instances/inst") || strings.HasPrefix(c, "DELETE /instances/") {
			order = append(order, c[:strings.Index(c, " ")]+" "+c[strings.LastIndex(c, "/"):])
		}
	}
	if strings.Join(order, ",") != "POST /stop,DELETE /inst2" && strings.Join(order, ",") != "POST /stop,DELETE /inst1" {
		t.Fatalf("calls %v", calls)
	}
	f.mu.Lock()
	body := ""
	for _, b := range f.stopBody {
		body = b
	}
	f.mu.Unlock()
	if body != `{"timeout":"7s"}` {
		t.Fatalf("stop body %q", body)
	}
	if f.instanceCount() != 0 || f.volumeCount() != 0 {
		t.Fatalf("left %d instances, %d volumes", f.instanceCount(), f.volumeCount())
	}
	st := h.waitStatus(t, "del", func(s corev1.PodStatus) bool {
		return len(s.ContainerStatuses) == 1 && s.ContainerStatuses[0].State.Terminated != nil
	})
	if readyOf(st) != corev1.ConditionFalse {
		t.Fatalf("status %+v", st)
	}
	// Deleting again is fine (virtual-kubelet may call it more than once).
	if err := h.p.DeletePod(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	if _, err := h.p.GetPod(t.Context(), "default", "del"); err == nil {
		t.Fatal("deleted pod still known")
	}
}

// TestEventStreamNotifiesStatus: a lifecycle event of a pod's instance
// makes the provider read it and push the pod's new status (no polling).
func TestEventStreamNotifiesStatus(t *testing.T) {
	f := newFake(t)
	h := newHarness(t, f)
	if err := h.p.CreatePod(t.Context(), testPod("ev")); err != nil {
		t.Fatal(err)
	}
	h.waitStatus(t, "ev", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodRunning })
	// The stream is up (and its connect-time re-list done, so what follows
	// comes through the stream).
	waitFor(t, "the event stream", func() bool {
		calls := f.callsMatching("GET /")
		for i, c := range calls {
			if c == "GET /events" {
				return slices.Contains(calls[i:], "GET /instances")
			}
		}
		return false
	})
	lists := f.count("GET /instances")
	gets := f.count("GET /instances/inst1")
	f.setState("inst1", client.Stopped, 1)
	st := h.waitStatus(t, "ev", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodFailed })
	if st.Message != "Stopped" {
		t.Fatalf("status %+v", st)
	}
	waitFor(t, "the instance read after its event", func() bool { return f.count("GET /instances/inst1") > gets })
	if f.count("GET /instances") != lists {
		t.Fatal("the status came from a re-list, not the event")
	}
	// Deleted behind Kubernetes' back: the pod is told.
	f.mu.Lock()
	delete(f.insts, "inst1")
	f.emit("inst1", "Stopped", "")
	f.mu.Unlock()
	st = h.waitStatus(t, "ev", func(s corev1.PodStatus) bool { return s.Reason == "InstanceDeleted" })
	if st.Phase != corev1.PodFailed {
		t.Fatalf("status %+v", st)
	}
}

// TestUnreachableMarksNodeAndPods: two missed health checks make the node
// NotReady (HypemanUnreachable) and every pod not ready; hypemand back
// makes the node Ready and re-syncs without creating anything.
func TestUnreachableMarksNodeAndPods(t *testing.T) {
	f := newFake(t)
	h := newHarness(t, f)
	h.waitNode(t, func(n *corev1.Node) bool { s, _ := nodeReady(n); return s == corev1.ConditionTrue })
	for _, name := range []string{"a", "b"} {
		if err := h.p.CreatePod(t.Context(), testPod(name)); err != nil {
			t.Fatal(err)
		}
		h.waitStatus(t, name, func(s corev1.PodStatus) bool { return readyOf(s) == corev1.ConditionTrue })
	}
	f.setDown(true)
	n := h.waitNode(t, func(n *corev1.Node) bool { s, _ := nodeReady(n); return s == corev1.ConditionFalse })
	if _, reason := nodeReady(n); reason != "HypemanUnreachable" {
		t.Fatalf("reason %q", reason)
	}
	for _, name := range []string{"a", "b"} {
		st := h.waitStatus(t, name, func(s corev1.PodStatus) bool { return readyOf(s) == corev1.ConditionFalse })
		if st.Phase != corev1.PodRunning {
			t.Fatalf("phase changed: %+v", st)
		}
	}
	listsBefore := f.count("GET /instances")
	f.setDown(false)
	h.waitNode(t, func(n *corev1.Node) bool { s, _ := nodeReady(n); return s == corev1.ConditionTrue })
	for _, name := range []string{"a", "b"} {
		h.waitStatus(t, name, func(s corev1.PodStatus) bool { return readyOf(s) == corev1.ConditionTrue })
	}
	waitFor(t, "a re-list", func() bool { return f.count("GET /instances") > listsBefore })
	if n := f.count("POST /instances"); n != 2 || f.instanceCount() != 2 {
		t.Fatalf("%d creates, %d instances after recovery", n, f.instanceCount())
	}
}

// TestNodeResources: capacity is hypemand's effective limit, allocatable
// excludes only instances not made by this kubelet.
func TestNodeResources(t *testing.T) {
	f := newFake(t)
	f.insts["other"] = &client.Instance{Id: "other", Name: "other", State: client.Running}
	h := newHarness(t, f)
	if err := h.p.CreatePod(t.Context(), testPod("mine")); err != nil {
		t.Fatal(err)
	}
	h.waitStatus(t, "mine", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodRunning })
	h.p.refreshResources(t.Context())
	n := h.p.Node()
	check := func(list corev1.ResourceList, name corev1.ResourceName, want string) {
		t.Helper()
		q := list[name]
		if q.Cmp(resource.MustParse(want)) != 0 {
			t.Errorf("%s = %s, want %s", name, q.String(), want)
		}
	}
	check(n.Status.Capacity, corev1.ResourceCPU, "8")
	check(n.Status.Capacity, corev1.ResourceMemory, "16Gi")
	check(n.Status.Capacity, corev1.ResourcePods, "10")
	check(n.Status.Allocatable, corev1.ResourceCPU, "6")
	check(n.Status.Allocatable, corev1.ResourceMemory, "15Gi")
	if n.Labels["type"] != "virtual-kubelet" || n.Status.NodeInfo.KubeletVersion != "v1.37.2-hypeman-test" ||
		n.Status.DaemonEndpoints.KubeletEndpoint.Port != 10250 {
		t.Fatalf("node %+v", n.ObjectMeta.Labels)
	}
}

// TestLogs: the log SSE becomes plain lines; LimitBytes cuts; Previous is
// refused.
func TestLogs(t *testing.T) {
	f := newFake(t)
	f.logLines = []string{"one", "two", "three"}
	h := newHarness(t, f)
	if err := h.p.CreatePod(t.Context(), testPod("lg")); err != nil {
		t.Fatal(err)
	}
	h.waitStatus(t, "lg", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodRunning })
	read := func(opts api.ContainerLogOpts) string {
		rc, err := h.p.GetContainerLogs(context.Background(), "default", "lg", "main", opts)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read(api.ContainerLogOpts{}); got != "one\ntwo\nthree\n" {
		t.Fatalf("logs %q", got)
	}
	if got := read(api.ContainerLogOpts{LimitBytes: 6}); got != "one\ntw" {
		t.Fatalf("limited logs %q", got)
	}
	if _, err := h.p.GetContainerLogs(t.Context(), "default", "lg", "main", api.ContainerLogOpts{Previous: true}); err == nil {
		t.Fatal("previous logs accepted")
	}
	if _, err := h.p.GetContainerLogs(t.Context(), "default", "lg", "nope", api.ContainerLogOpts{}); err == nil {
		t.Fatal("unknown container accepted")
	}
}

func TestParseTaint(t *testing.T) {
	tn, err := ParseTaint(DefaultTaint)
	if err != nil || tn.Key != "virtual-kubelet.io/provider" || tn.Value != "hypeman" || tn.Effect != corev1.TaintEffectNoSchedule {
		t.Fatalf("%+v %v", tn, err)
	}
	if tn, err := ParseTaint(""); tn != nil || err != nil {
		t.Fatal("empty taint")
	}
	if _, err := ParseTaint("a=b:Sometimes"); err == nil {
		t.Fatal("bad effect accepted")
	}
}

type attachIO struct {
	stdin          io.Reader
	stdout, stderr *bytes.Buffer
}

type nopCloser struct{ *bytes.Buffer }

func (nopCloser) Close() error { return nil }

func (a attachIO) Stdin() io.Reader            { return a.stdin }
func (a attachIO) Stdout() io.WriteCloser      { return nopCloser{a.stdout} }
func (a attachIO) Stderr() io.WriteCloser      { return nopCloser{a.stderr} }
func (a attachIO) TTY() bool                   { return false }
func (a attachIO) Resize() <-chan api.TermSize { return nil }

// TestExecExitCode: kubectl exec's command runs over hypemand's exec
// WebSocket; a non-zero exit is a CodeExitError with that code (what makes
// kubectl exit with it).
func TestExecExitCode(t *testing.T) {
	f := newFake(t)
	h := newHarness(t, f)
	if err := h.p.CreatePod(t.Context(), testPod("ex")); err != nil {
		t.Fatal(err)
	}
	h.waitStatus(t, "ex", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodRunning })
	rw := attachIO{stdin: strings.NewReader("in"), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	err := h.p.RunInContainer(t.Context(), "default", "ex", "main", []string{"sh", "-c", "exit 3"}, rw)
	var ce utilexec.CodeExitError
	if !errors.As(err, &ce) || ce.Code != 3 {
		t.Fatalf("err %#v", err)
	}
	if rw.stdout.String() != "in|sh -c exit 3" || rw.stderr.String() != "warn" {
		t.Fatalf("stdout %q stderr %q", rw.stdout, rw.stderr)
	}
	if err := h.p.RunInContainer(t.Context(), "default", "nope", "main", []string{"true"}, rw); err == nil {
		t.Fatal("exec in an unknown pod")
	}
}

// TestNameTakenUsesAltName: a name taken by an instance of something else
// (no matching pod UID) makes the create use the alternative name.
func TestNameTakenUsesAltName(t *testing.T) {
	f := newFake(t)
	f.insts["x"] = &client.Instance{Id: "x", Name: "clash", State: client.Running}
	h := newHarness(t, f)
	if err := h.p.CreatePod(t.Context(), testPod("clash")); err != nil {
		t.Fatal(err)
	}
	h.waitStatus(t, "clash", func(s corev1.PodStatus) bool { return s.Phase == corev1.PodRunning })
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.find("clash-alt") == nil || len(f.insts) != 2 {
		t.Fatalf("instances %v", f.insts)
	}
}

// TestResyncDoesNotUndoANewerCreate: a re-sync whose listing was taken
// before a pod's instance existed neither declares that instance gone (a
// terminal Failed) nor rolls the entry back to the listing.
func TestResyncDoesNotUndoANewerCreate(t *testing.T) {
	f := newFake(t)
	h := newHarness(t, f)
	hold := make(chan struct{})
	f.mu.Lock()
	f.listHold, f.listHeld = hold, make(chan struct{}, 1)
	held := f.listHeld
	f.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- h.p.resync(t.Context()) }()
	<-held // the listing (no instance yet) is taken
	if err := h.p.CreatePod(t.Context(), testPod("late")); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.listHold = nil
	f.mu.Unlock()
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	h.p.mu.Lock()
	e := h.p.pods["default/late"]
	gone := e == nil || e.inst == nil || (e.fixed != nil && e.fixed.Phase == corev1.PodFailed)
	h.p.mu.Unlock()
	if gone {
		t.Fatalf("the re-sync undid the create: entry %+v", e)
	}
}
