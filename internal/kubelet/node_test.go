package kubelet

import (
	"context"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestNodePushDoesNotBlockUpdates: virtual-kubelet's node callback is a
// blocking send; while it blocks, node changes (the health loop's) return
// at once, the next push carries the latest node, and Run returns when its
// context ends even with a push stuck.
func TestNodePushDoesNotBlockUpdates(t *testing.T) {
	f := newFake(t)
	h := newIdleHarness(t, f)
	pushes := make(chan *corev1.Node) // nobody reads until the test does
	h.p.NotifyNodeStatus(t.Context(), func(n *corev1.Node) { pushes <- n })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		h.p.Run(ctx)
	}()

	updated := make(chan struct{})
	go func() {
		defer close(updated)
		for i := 1; i <= 3; i++ {
			h.p.updateNode(func(n *corev1.Node) { n.Labels["gen"] = strconv.Itoa(i) })
			h.p.setReachable(ctx, i%2 == 0, "test")
		}
	}()
	select {
	case <-updated:
	case <-time.After(10 * time.Second):
		t.Fatal("node updates blocked on virtual-kubelet's callback")
	}
	// The pushes after the blocked one carry the latest node.
	var last *corev1.Node
	for last == nil || last.Labels["gen"] != "3" {
		select {
		case last = <-pushes:
		case <-time.After(10 * time.Second):
			t.Fatalf("no push of the latest node; last %v", last.Labels)
		}
	}
	if s, _ := nodeReady(last); s != corev1.ConditionFalse {
		t.Fatalf("latest push Ready=%s, want False", s)
	}
	// A push stuck at shutdown does not keep Run from returning.
	h.p.updateNode(func(n *corev1.Node) { n.Labels["gen"] = "4" })
	cancel()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return with a node push stuck")
	}
}
