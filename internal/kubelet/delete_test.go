package kubelet

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestDeleteReportsTheStopsExit: the final status of a pod deleted while
// running is the exit of the run the stop ended (hypemand's stop answer),
// and without a known exit the container was killed (Failed, 137), never
// Succeeded.
func TestDeleteReportsTheStopsExit(t *testing.T) {
	cases := []struct {
		name   string
		exit   *int
		msg    string
		phase  corev1.PodPhase
		code   int32
		reason string
		inMsg  string
	}{
		{"no exit known", nil, "", corev1.PodFailed, 137, "Error", msgKilledByDeletion},
		{"killed by SIGTERM", ptrTo(143), "killed by signal 15 (SIGTERM)", corev1.PodFailed, 143, "Error", "SIGTERM"},
		{"exited cleanly on SIGTERM", ptrTo(0), "exited with code 0", corev1.PodSucceeded, 0, "Completed", "exited with code 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t)
			f.stopExit, f.stopMsg = tc.exit, tc.msg
			h := newHarness(t, f)
			pod := testPod("job")
			pod.Spec.RestartPolicy = corev1.RestartPolicyNever
			h.runPod(t, pod)
			pod.DeletionTimestamp = &metav1.Time{Time: time.Now()}
			if err := h.p.DeletePod(t.Context(), pod); err != nil {
				t.Fatal(err)
			}
			st := h.waitStatus(t, "job", func(s corev1.PodStatus) bool {
				return len(s.ContainerStatuses) == 1 && s.ContainerStatuses[0].State.Terminated != nil
			})
			term := st.ContainerStatuses[0].State.Terminated
			if st.Phase != tc.phase || term.ExitCode != tc.code || term.Reason != tc.reason || !strings.Contains(term.Message, tc.inMsg) {
				t.Fatalf("phase %s, terminated %+v; want %s exit %d %s %q", st.Phase, term, tc.phase, tc.code, tc.reason, tc.inMsg)
			}
		})
	}
}

// TestTerminatedStatus: the final status rules without a provider.
func TestTerminatedStatus(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	started := metav1.NewTime(now.Add(-time.Minute))
	pod := testPod("x")
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{
		Name: "main", Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}},
	}}}
	st := terminatedStatus(pod, nil, now)
	term := st.ContainerStatuses[0].State.Terminated
	if st.Phase != corev1.PodFailed || term == nil || term.ExitCode != 137 || term.Message != msgKilledByDeletion ||
		!term.StartedAt.Equal(&started) || !term.FinishedAt.Time.Equal(now) || st.ContainerStatuses[0].Ready {
		t.Fatalf("running, no exit: %s %+v", st.Phase, st.ContainerStatuses[0])
	}
	// A pod that never ran (waiting) is not "killed".
	pod.Status = corev1.PodStatus{Phase: corev1.PodPending}
	st = terminatedStatus(pod, nil, now)
	if term := st.ContainerStatuses[0].State.Terminated; st.Phase != corev1.PodFailed || term.ExitCode != 137 || term.Message != msgDeletedBeforeRun {
		t.Fatalf("pending: %s %+v", st.Phase, term)
	}
	// A terminal phase stays.
	pod.Status = corev1.PodStatus{Phase: corev1.PodSucceeded}
	if st := terminatedStatus(pod, nil, now); st.Phase != corev1.PodSucceeded {
		t.Fatalf("terminal phase changed to %s", st.Phase)
	}
}

func ptrTo[T any](v T) *T { return &v }

// TestFailedDeleteFinishesWhenHypemandIsBack: a delete that failed while
// hypemand was down (virtual-kubelet gives up after its retries) is
// finished by the re-sync once hypemand answers: instance and volumes
// removed, the pod object removed, the pod forgotten.
func TestFailedDeleteFinishesWhenHypemandIsBack(t *testing.T) {
	f := newFake(t)
	h := newHarness(t, f)
	pod := testPod("gone")
	pod.Spec.Volumes = []corev1.Volume{{Name: "data"}}
	h.runPod(t, pod)
	f.setDown(true)
	pod.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	if err := h.p.DeletePod(t.Context(), pod); err == nil {
		t.Fatal("delete succeeded with hypemand down")
	}
	if f.instanceCount() != 1 {
		t.Fatal("the instance went while hypemand was down")
	}
	f.setDown(false)
	waitFor(t, "the deletion finished", func() bool {
		_, err := h.p.GetPod(t.Context(), "default", "gone")
		return f.instanceCount() == 0 && f.volumeCount() == 0 && len(h.removed.list()) == 1 && err != nil
	})
	if got := h.removed.list(); got[0] != "default/gone/"+string(pod.UID) {
		t.Fatalf("removed %v", got)
	}
}
