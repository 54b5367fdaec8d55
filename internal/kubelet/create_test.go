package kubelet

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
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

func TestVolumeName(t *testing.T) {
	for _, tc := range []struct{ uid, vol, want string }{
		{"3f2a9c1e-8b7d-4e11-9c3d-0a1b2c3d4e5f", "data", "3f2a9c1e-8b7d-data"},
		{"short", "cache", "short-cache"},
	} {
		if got := volumeName(tc.uid, tc.vol); got != tc.want {
			t.Errorf("volumeName(%q, %q) = %q, want %q", tc.uid, tc.vol, got, tc.want)
		}
	}
	long := volumeName("3f2a9c1e-8b7d-4e11", "a-very-long-volume-name-that-goes-past-the-sixty-three-limit")
	if len(long) > 63 || long == volumeName("3f2a9c1e-8b7d-4e11", "a-very-long-volume-name-that-goes-past-the-sixty-three-limiu") {
		t.Errorf("long name %q", long)
	}
}
