package kubelet

import (
	"testing"

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
