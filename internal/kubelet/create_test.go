package kubelet

import (
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"hypeman/internal/api/client"
	"hypeman/internal/kubelet/podmap"
)

// TestVolumeNamesFollowThePodUID: two pods whose instance names collide
// (the second gets the alternative name) each get their own volumes, named
// from their UIDs; neither waits on a 409.
func TestVolumeNamesFollowThePodUID(t *testing.T) {
	f := newFake(t)
	h := newHarness(t, f)
	a, b := testPod("web"), testPod("web")
	a.Namespace, a.UID = "a", types.UID("3f2a9c1e-8b7d-4e11-9c3d-0a1b2c3d4e5f")
	b.Namespace, b.UID = "b", types.UID("77c0ffee-1234-4abc-8def-001122334455")
	for _, pod := range []*corev1.Pod{a, b} {
		pod.Spec.Volumes = []corev1.Volume{{Name: "data"}}
		if err := h.p.CreatePod(t.Context(), pod); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "both pods running", func() bool {
		n := 0
		for _, ns := range []string{"a", "b"} {
			if pod, err := h.p.GetPod(t.Context(), ns, "web"); err == nil && pod.Status.Phase == corev1.PodRunning {
				n++
			}
		}
		return n == 2
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	names := map[string]bool{}
	for _, v := range f.vols {
		names[v.Name] = true
	}
	if len(f.insts) != 2 || !names["3f2a9c1e-8b7d-data"] || !names["77c0ffee-1234-data"] {
		t.Fatalf("%d instances, volumes %v", len(f.insts), names)
	}
}

// TestUnreachableAtStartKeepsRunningPods: a kubelet starting while
// hypemand is down keeps its running pods Running (not ready, same
// startTime) instead of rewriting them to Pending, and adopts their
// instances once hypemand answers.
func TestUnreachableAtStartKeepsRunningPods(t *testing.T) {
	f := newFake(t)
	pod := testPod("web")
	tags := client.Tags(podmap.Tags(pod, "hn1"))
	f.insts["inst9"] = &client.Instance{Id: "inst9", Name: "web", State: client.Running, Tags: &tags}
	started := metav1.NewTime(time.Now().Add(-time.Hour).Truncate(time.Second))
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &started,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	f.setDown(true)
	h := newHarness(t, f)
	if err := h.p.CreatePod(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	st := h.waitStatus(t, "web", func(corev1.PodStatus) bool { return true })
	if st.Phase != corev1.PodRunning || readyOf(st) != corev1.ConditionFalse || st.StartTime == nil || !st.StartTime.Equal(&started) {
		t.Fatalf("status while hypemand is down: %+v", st)
	}
	f.setDown(false)
	h.waitStatus(t, "web", func(s corev1.PodStatus) bool {
		return s.Phase == corev1.PodRunning && readyOf(s) == corev1.ConditionTrue
	})
	if n := f.count("POST /instances"); n != 0 {
		t.Fatalf("%d creates for a pod whose instance exists", n)
	}
}

// TestInvalidCreateFails: a create hypemand refuses as invalid (400, 422)
// ends the pod Failed with hypemand's message instead of retrying, and
// removes the volumes made for it.
func TestInvalidCreateFails(t *testing.T) {
	for _, status := range []int{400, 422} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			f := newFake(t)
			f.createRefusal = &apiRefusal{status: status, code: "invalid_request", message: "image: \"Bad Ref\" is not a valid reference"}
			h := newHarness(t, f)
			pod := testPod("bad")
			pod.Spec.Volumes = []corev1.Volume{{Name: "data"}}
			if err := h.p.CreatePod(t.Context(), pod); err != nil {
				t.Fatal(err)
			}
			st := h.waitStatus(t, "bad", func(s corev1.PodStatus) bool { return s.Phase != "" })
			if st.Phase != corev1.PodFailed || st.Reason != reasonCreateError || !strings.Contains(st.Message, "not a valid reference") {
				t.Fatalf("status %+v", st)
			}
			if f.volumeCount() != 0 || f.instanceCount() != 0 {
				t.Fatalf("left %d volumes, %d instances", f.volumeCount(), f.instanceCount())
			}
		})
	}
}
