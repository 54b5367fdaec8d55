package kubelet

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"hypeman/internal/api/client"
)

// setStateSilently changes an instance's state without an event.
func (f *fakeHypemand) setStateSilently(id string, state client.InstanceState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.insts[id].State = state
}

// holdNextGet holds the next GET /instances/{id} after its snapshot;
// closing the returned channel releases it. It returns once armed; held
// gets a value when a request is held.
func (f *fakeHypemand) holdNextGet() (release chan struct{}, held chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.getHold, f.getHeld = make(chan struct{}), make(chan struct{}, 1)
	return f.getHold, f.getHeld
}

func (h *harness) instState(t *testing.T, key string) client.InstanceState {
	t.Helper()
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	e := h.p.pods[key]
	if e == nil || e.inst == nil {
		t.Fatalf("%s has no instance", key)
	}
	return e.inst.State
}

// TestLateReadDoesNotUndoNewerState: an instance read that lands after
// another reader recorded a newer state (CreatePod's refresh vs. the
// event loop) does not roll the pod back.
func TestLateReadDoesNotUndoNewerState(t *testing.T) {
	f := newFake(t)
	h := newIdleHarness(t, f)
	if err := h.p.CreatePod(t.Context(), testPod("web")); err != nil {
		t.Fatal(err)
	}
	f.setStateSilently("inst1", client.Initializing)
	release, held := f.holdNextGet()
	late := make(chan struct{})
	go func() {
		defer close(late)
		h.p.instanceEvent(t.Context(), client.LifecycleEvent{Type: client.StateChange, InstanceId: "inst1"})
	}()
	<-held // that read saw Initializing
	f.setStateSilently("inst1", client.Running)
	h.p.instanceEvent(t.Context(), client.LifecycleEvent{Type: client.StateChange, InstanceId: "inst1", To: "Running"})
	if s := h.instState(t, "default/web"); s != client.Running {
		t.Fatalf("state %s after the newer read", s)
	}
	close(release)
	<-late
	if s := h.instState(t, "default/web"); s != client.Running {
		t.Fatalf("the late read rolled the pod back to %s", s)
	}
	pod, err := h.p.GetPod(t.Context(), "default", "web")
	if err != nil || pod.Status.Phase != corev1.PodRunning {
		t.Fatalf("pod %v (%v)", pod, err)
	}
}

// TestRefusedEventStreamMakesNodeNotReady: an event stream hypemand keeps
// refusing (401: the token expired) makes the node NotReady with a message
// naming the status and the fix, though /health answers; an accepted
// stream makes it Ready again.
func TestRefusedEventStreamMakesNodeNotReady(t *testing.T) {
	f := newFake(t)
	f.eventsRefusal = &apiRefusal{status: 401, code: "unauthorized", message: "token expired"}
	h := newHarness(t, f)
	n := h.waitNode(t, func(n *corev1.Node) bool { s, _ := nodeReady(n); return s == corev1.ConditionFalse })
	msg := readyMessage(n)
	for _, want := range []string{"refused the event stream", "401 unauthorized", "token expired", "HYPEMAN_API_KEY"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("Ready message %q lacks %q", msg, want)
		}
	}
	f.mu.Lock()
	f.eventsRefusal = nil
	f.mu.Unlock()
	h.waitNode(t, func(n *corev1.Node) bool { s, _ := nodeReady(n); return s == corev1.ConditionTrue })
}

func readyMessage(n *corev1.Node) string {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Message
		}
	}
	return ""
}

// TestRetryAfterStopDoesNotBlock: a create retry falling due after Run
// stopped (nobody reads the queue) is dropped instead of blocking its
// timer goroutine forever.
func TestRetryAfterStopDoesNotBlock(t *testing.T) {
	f := newFake(t)
	h := newIdleHarness(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h.p.Run(ctx)
	for len(h.p.retries) < cap(h.p.retries) {
		h.p.retries <- "default/x"
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.p.queueRetry("default/y")
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a retry after Run stopped blocked")
	}
}

// TestRecoveryResyncsBeforeReady: when hypemand answers again, the index
// is re-listed before the pods are made ready again, so no pod is
// notified ready from the state it had before the outage.
func TestRecoveryResyncsBeforeReady(t *testing.T) {
	f := newFake(t)
	h := newIdleHarness(t, f)
	if err := h.p.CreatePod(t.Context(), testPod("web")); err != nil {
		t.Fatal(err)
	}
	h.p.setReachable(t.Context(), false, "test")
	hold := make(chan struct{})
	f.mu.Lock()
	f.listHold, f.listHeld = hold, make(chan struct{}, 1)
	held := f.listHeld
	f.mu.Unlock()
	recovered := make(chan struct{})
	go func() {
		defer close(recovered)
		h.p.healthResult(t.Context(), nil)
	}()
	<-held // the re-list is under way
	h.p.mu.Lock()
	reachable := h.p.reachable
	h.p.mu.Unlock()
	f.mu.Lock()
	f.listHold = nil
	f.mu.Unlock()
	close(hold)
	<-recovered
	if reachable {
		t.Fatal("pods were made ready before the re-list")
	}
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	if !h.p.reachable {
		t.Fatal("not reachable after recovery")
	}
}
