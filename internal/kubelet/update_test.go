package kubelet

import (
	"strings"
	"testing"
)

// drainEvents returns the events recorded so far.
func (h *harness) drainEvents() []string {
	var out []string
	for {
		select {
		case ev := <-h.recorder.Events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

// TestImageChangeIsReported: kubectl set image on a running pod is not
// applied (the VM keeps its image); UpdatePod says so with a Warning event
// ImageChangeIgnored, once per change, and other updates say nothing.
func TestImageChangeIsReported(t *testing.T) {
	f := newFake(t)
	h := newHarness(t, f)
	pod := testPod("web")
	h.runPod(t, pod)
	h.drainEvents()

	labelled := pod.DeepCopy()
	labelled.Labels = map[string]string{"tier": "front"}
	if err := h.p.UpdatePod(t.Context(), labelled); err != nil {
		t.Fatal(err)
	}
	if evs := h.drainEvents(); len(evs) != 0 {
		t.Fatalf("events for a label change: %v", evs)
	}
	changed := labelled.DeepCopy()
	changed.Spec.Containers[0].Image = "alpine:3.20"
	if err := h.p.UpdatePod(t.Context(), changed); err != nil {
		t.Fatal(err)
	}
	evs := h.drainEvents()
	if len(evs) != 1 || !strings.Contains(evs[0], "Warning ImageChangeIgnored") || !strings.Contains(evs[0], "alpine:3.20") {
		t.Fatalf("events %v", evs)
	}
	if err := h.p.UpdatePod(t.Context(), changed); err != nil {
		t.Fatal(err)
	}
	if evs := h.drainEvents(); len(evs) != 0 {
		t.Fatalf("the same change reported again: %v", evs)
	}
}
