package podmap

import (
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"hypeman/internal/api/client"
)

var (
	t0      = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	started = t0.Add(-time.Minute)
	stopped = t0.Add(-time.Second)
)

func inst(state client.InstanceState, mut ...func(*client.Instance)) *client.Instance {
	ip, digest := "10.100.0.7", "sha256:abc"
	i := &client.Instance{Id: "i123", Name: "ns-web", State: state, StartedAt: &started,
		Network: &client.InstanceNetwork{Enabled: true, Ip: &ip}, ImageDigest: &digest}
	for _, m := range mut {
		m(i)
	}
	return i
}

func exited(code *int, msg string) func(*client.Instance) {
	return func(i *client.Instance) { i.ExitCode, i.ExitMessage, i.StoppedAt = code, &msg, &stopped }
}

func restartStatus(restarts int, next *time.Time, blocked client.RestartStatusBlockedReason) func(*client.Instance) {
	return func(i *client.Instance) {
		rs := &client.RestartStatus{Restarts: &restarts, Attempts: ptr(1), NextAttemptAt: next}
		if blocked != "" {
			rs.BlockedReason = &blocked
		}
		i.RestartStatus = rs
	}
}

func health(s client.InstanceHealthStatusStatus) func(*client.Instance) {
	return func(i *client.Instance) { i.HealthStatus = &client.InstanceHealthStatus{Status: s} }
}

func condition(st corev1.PodStatus, t corev1.PodConditionType) corev1.PodCondition {
	for _, c := range st.Conditions {
		if c.Type == t {
			return c
		}
	}
	return corev1.PodCondition{}
}

func TestStatus(t *testing.T) {
	next := t0.Add(40 * time.Second)
	liveness := func(p *corev1.Pod) {
		p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(80)}}}
	}
	readiness := func(p *corev1.Pod) {
		p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(80)}}}
	}
	hasRun := func(p *corev1.Pod) { p.Status.Phase = corev1.PodRunning }
	policy := func(rp corev1.RestartPolicy) func(*corev1.Pod) {
		return func(p *corev1.Pod) { p.Spec.RestartPolicy = rp }
	}
	cases := []struct {
		name     string
		pod      func(*corev1.Pod)
		inst     *client.Instance
		phase    corev1.PodPhase
		state    string // waiting:<reason> | running | terminated:<exit>:<reason>
		ready    bool
		restarts int32
		last     int32 // lastState exit code, -1 none
		msg      string
	}{
		{"not created", nil, nil, corev1.PodPending, "waiting:ContainerCreating", false, 0, -1, ""},
		{"created", nil, inst(client.Created), corev1.PodPending, "waiting:ContainerCreating", false, 0, -1, ""},
		{"initializing", nil, inst(client.Initializing), corev1.PodPending, "waiting:ContainerCreating", false, 0, -1, ""},
		{"initializing after running (a restart)", hasRun, inst(client.Initializing), corev1.PodRunning, "waiting:ContainerCreating", false, 0, -1, "container is restarting"},
		{"created after running", hasRun, inst(client.Created), corev1.PodRunning, "waiting:ContainerCreating", false, 0, -1, "container is restarting"},
		{"initializing with restarts", nil, inst(client.Initializing, restartStatus(2, nil, "")), corev1.PodRunning, "waiting:ContainerCreating", false, 2, -1, "container is restarting"},
		{"running", nil, inst(client.Running, restartStatus(2, nil, "")), corev1.PodRunning, "running", true, 2, -1, ""},
		{"running, liveness starting", liveness, inst(client.Running, health(client.HealthStarting)), corev1.PodRunning, "running", false, 0, -1, "health check is starting"},
		{"running, liveness healthy", liveness, inst(client.Running, health(client.HealthHealthy)), corev1.PodRunning, "running", true, 0, -1, ""},
		{"running, readiness starting", readiness, inst(client.Running, health(client.HealthStarting)), corev1.PodRunning, "running", false, 0, -1, "health check is starting"},
		{"running, readiness unhealthy", readiness, inst(client.Running, health(client.HealthUnhealthy)), corev1.PodRunning, "running", false, 0, -1, "health check is unhealthy"},
		{"running, readiness no status yet", readiness, inst(client.Running), corev1.PodRunning, "running", false, 0, -1, "health check is unknown"},
		{"running, readiness healthy", readiness, inst(client.Running, health(client.HealthHealthy)), corev1.PodRunning, "running", true, 0, -1, ""},
		{"paused", nil, inst(client.Paused), corev1.PodRunning, "running", false, 0, -1, "instance is Paused"},
		{"standby", nil, inst(client.Standby), corev1.PodRunning, "running", false, 0, -1, "instance is Standby"},
		{"shutdown before the exit is recorded", policy(corev1.RestartPolicyNever), inst(client.Shutdown), corev1.PodRunning, "running", false, 0, -1, "instance is Shutdown"},
		{"never, exit 0", policy(corev1.RestartPolicyNever), inst(client.Stopped, exited(ptr(0), "exited with code 0")), corev1.PodSucceeded, "terminated:0:Completed", false, 0, -1, ""},
		{"never, exit 3", policy(corev1.RestartPolicyNever), inst(client.Stopped, exited(ptr(3), "exited with code 3")), corev1.PodFailed, "terminated:3:Error", false, 0, -1, ""},
		{"never, shutdown with exit", policy(corev1.RestartPolicyNever), inst(client.Shutdown, exited(ptr(1), "exited with code 1")), corev1.PodFailed, "terminated:1:Error", false, 0, -1, ""},
		{"never, vm crashed", policy(corev1.RestartPolicyNever), inst(client.Stopped, exited(nil, "VM crashed")), corev1.PodFailed, "terminated:137:Error", false, 0, -1, ""},
		{"onfailure, exit 0", policy(corev1.RestartPolicyOnFailure), inst(client.Stopped, exited(ptr(0), "exited with code 0")), corev1.PodSucceeded, "terminated:0:Completed", false, 0, -1, ""},
		{"onfailure, exit 1 restarting", policy(corev1.RestartPolicyOnFailure), inst(client.Stopped, exited(ptr(1), "exited with code 1"), restartStatus(3, &next, "")), corev1.PodRunning, "waiting:CrashLoopBackOff", false, 3, 1, "next attempt at 2026-01-02T03:04:45Z (in 40s)"},
		{"always, exit 0 restarting", nil, inst(client.Stopped, exited(ptr(0), "exited with code 0"), restartStatus(1, &next, "")), corev1.PodRunning, "waiting:CrashLoopBackOff", false, 1, 0, ""},
		{"always, max attempts", nil, inst(client.Stopped, exited(ptr(2), "exited with code 2"), restartStatus(5, nil, client.BlockedMaxAttemptsExceeded)), corev1.PodFailed, "terminated:2:Error", false, 5, -1, ""},
		{"always, stopped for deletion", nil, inst(client.Stopped, exited(ptr(143), "killed by signal 15 (SIGTERM)"), restartStatus(0, nil, client.BlockedManualStop)), corev1.PodFailed, "terminated:143:Error", false, 0, -1, ""},
		{"stopped before any run", policy(corev1.RestartPolicyNever), inst(client.Stopped), corev1.PodPending, "waiting:ContainerCreating", false, 0, -1, ""},
		{"unknown", nil, inst(client.Unknown, func(i *client.Instance) { i.StateError = ptr("metadata unreadable") }), corev1.PodPending, "waiting:ContainerCreating", false, 0, -1, "metadata unreadable"},
		{"restarts fall back to attempts", nil, inst(client.Running, func(i *client.Instance) { i.RestartStatus = &client.RestartStatus{Attempts: ptr(4)} }), corev1.PodRunning, "running", true, 4, -1, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := testPod()
			if tc.pod != nil {
				tc.pod(p)
			}
			st := StatusOn(p, tc.inst, true, t0, "192.0.2.1")
			if st.Phase != tc.phase {
				t.Errorf("phase %s, want %s", st.Phase, tc.phase)
			}
			if len(st.ContainerStatuses) != 1 {
				t.Fatalf("container statuses %v", st.ContainerStatuses)
			}
			cs := st.ContainerStatuses[0]
			if got := stateString(cs.State); got != tc.state {
				t.Errorf("state %s, want %s", got, tc.state)
			}
			if cs.Name != "main" || cs.Image != "registry.local/web:1" || cs.Ready != tc.ready || cs.RestartCount != tc.restarts {
				t.Errorf("container status %+v, want ready %v restarts %d", cs, tc.ready, tc.restarts)
			}
			if cs.Started == nil || *cs.Started != (cs.State.Running != nil) {
				t.Errorf("started %v", cs.Started)
			}
			if lt := cs.LastTerminationState.Terminated; (lt == nil) != (tc.last < 0) || lt != nil && lt.ExitCode != tc.last {
				t.Errorf("lastState %+v, want exit %d", cs.LastTerminationState, tc.last)
			}
			ready := condition(st, corev1.PodReady)
			if (ready.Status == corev1.ConditionTrue) != tc.ready || (condition(st, corev1.ContainersReady).Status == corev1.ConditionTrue) != tc.ready {
				t.Errorf("Ready %+v, want %v", ready, tc.ready)
			}
			if !strings.Contains(ready.Message+cs.State.String(), tc.msg) {
				t.Errorf("message %q / state %s lacks %q", ready.Message, cs.State.String(), tc.msg)
			}
			if Terminal(st.Phase) && ready.Reason != reasonCompleted {
				t.Errorf("terminal Ready reason %q", ready.Reason)
			}
			for _, ct := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
				if condition(st, ct).Type == "" {
					t.Errorf("condition %s missing", ct)
				}
			}
			if st.HostIP != "192.0.2.1" || st.StartTime == nil || !st.StartTime.Time.Equal(t0) {
				t.Errorf("hostIP %q startTime %v", st.HostIP, st.StartTime)
			}
			if tc.inst != nil && (st.PodIP != "10.100.0.7" || len(st.PodIPs) != 1 || cs.ContainerID != "hypeman://i123" || cs.ImageID != "sha256:abc") {
				t.Errorf("podIP %q podIPs %v containerID %q imageID %q", st.PodIP, st.PodIPs, cs.ContainerID, cs.ImageID)
			}
			if term := cs.State.Terminated; term != nil && (!term.FinishedAt.Time.Equal(stopped) || !term.StartedAt.Time.Equal(started) || term.Message == "") {
				t.Errorf("terminated %+v", term)
			}
		})
	}
}

func stateString(s corev1.ContainerState) string {
	switch {
	case s.Waiting != nil:
		return "waiting:" + s.Waiting.Reason
	case s.Running != nil:
		return "running"
	case s.Terminated != nil:
		return "terminated:" + strconv.Itoa(int(s.Terminated.ExitCode)) + ":" + s.Terminated.Reason
	}
	return "none"
}

func TestStatusTerminalIsFinal(t *testing.T) {
	p := testPod()
	p.Spec.RestartPolicy = corev1.RestartPolicyNever
	done := StatusOn(p, inst(client.Stopped, exited(ptr(0), "exited with code 0")), true, t0, "")
	if done.Phase != corev1.PodSucceeded {
		t.Fatalf("phase %s", done.Phase)
	}
	p.Status = done
	for _, i := range []*client.Instance{inst(client.Running), nil, inst(client.Stopped, exited(ptr(1), "x"))} {
		if st := StatusOn(p, i, true, t0.Add(time.Hour), ""); st.Phase != corev1.PodSucceeded || st.ContainerStatuses[0].State.Terminated == nil {
			t.Errorf("terminal status changed to %s", st.Phase)
		}
	}
	if st := Status(p, inst(client.Running), false, t0); st.Phase != corev1.PodSucceeded {
		t.Errorf("unreachable changed a terminal status: %s", st.Phase)
	}
	if st := Failed(p, "Unsupported", "x", t0); st.Phase != corev1.PodSucceeded {
		t.Errorf("Failed overrode Succeeded")
	}
}

func TestStatusUnreachable(t *testing.T) {
	p := testPod()
	p.Status = StatusOn(p, inst(client.Running), true, t0, "192.0.2.1")
	if condition(p.Status, corev1.PodReady).Status != corev1.ConditionTrue {
		t.Fatal("not ready while running")
	}
	st := Status(p, nil, false, t0.Add(time.Minute))
	ready := condition(st, corev1.PodReady)
	if st.Phase != corev1.PodRunning || st.PodIP != "10.100.0.7" || st.HostIP != "192.0.2.1" || st.ContainerStatuses[0].State.Running == nil {
		t.Errorf("the rest of the status must be kept: %+v", st)
	}
	if ready.Status != corev1.ConditionFalse || ready.Reason != ReasonNodeUnreachable || ready.Message != MessageUnreachable || !ready.LastTransitionTime.Time.Equal(t0.Add(time.Minute)) {
		t.Errorf("Ready %+v", ready)
	}
	if cr := condition(st, corev1.ContainersReady); cr.Status != corev1.ConditionFalse || st.ContainerStatuses[0].Ready {
		t.Errorf("ContainersReady %+v, container ready %v", cr, st.ContainerStatuses[0].Ready)
	}
	// Back: ready again, with a new transition time.
	p.Status = st
	back := Status(p, inst(client.Running), true, t0.Add(2*time.Minute))
	if r := condition(back, corev1.PodReady); r.Status != corev1.ConditionTrue || !r.LastTransitionTime.Time.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("Ready after reconnect %+v", r)
	}
}

func TestStatusKeepsTransitionTimesAndForeignConditions(t *testing.T) {
	p := testPod()
	p.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: "example.com/lb"}}
	p.Status = StatusOn(p, inst(client.Running), true, t0, "")
	if r := condition(p.Status, corev1.PodReady); r.Status != corev1.ConditionFalse || r.Reason != reasonGatesNotReady {
		t.Fatalf("Ready with an unmet gate: %+v", r)
	}
	if cr := condition(p.Status, corev1.ContainersReady); cr.Status != corev1.ConditionTrue {
		t.Fatalf("ContainersReady %+v", cr)
	}
	p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: "example.com/lb", Status: corev1.ConditionTrue})
	later := t0.Add(time.Hour)
	st := StatusOn(p, inst(client.Running), true, later, "")
	if r := condition(st, corev1.PodReady); r.Status != corev1.ConditionTrue || !r.LastTransitionTime.Time.Equal(later) {
		t.Errorf("Ready once the gate is True: %+v", r)
	}
	for _, ct := range []corev1.PodConditionType{corev1.PodScheduled, corev1.ContainersReady, corev1.PodReadyToStartContainers} {
		if c := condition(st, ct); !c.LastTransitionTime.Time.Equal(t0) {
			t.Errorf("%s transition time moved to %v though its status did not change", ct, c.LastTransitionTime)
		}
	}
	if condition(st, "example.com/lb").Status != corev1.ConditionTrue {
		t.Errorf("a readiness gate condition was dropped")
	}
	if !st.StartTime.Time.Equal(t0) {
		t.Errorf("startTime moved: %v", st.StartTime)
	}
}

func TestStatusLastStateAfterRestart(t *testing.T) {
	p := testPod()
	next := t0.Add(time.Second)
	p.Status = Status(p, inst(client.Stopped, exited(ptr(1), "exited with code 1"), restartStatus(1, &next, "")), true, t0)
	st := Status(p, inst(client.Running, restartStatus(1, nil, "")), true, t0.Add(2*time.Second))
	cs := st.ContainerStatuses[0]
	if cs.State.Running == nil || cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != 1 || cs.RestartCount != 1 {
		t.Errorf("after a restart: %+v", cs)
	}
}

func TestFailed(t *testing.T) {
	p := testPod()
	st := Failed(p, "Unsupported", "spec.hostNetwork: a VM has its own network stack", t0)
	if st.Phase != corev1.PodFailed || st.Reason != "Unsupported" || !strings.Contains(st.Message, "hostNetwork") {
		t.Fatalf("%+v", st)
	}
	term := st.ContainerStatuses[0].State.Terminated
	if term == nil || term.Reason != "Unsupported" || term.ExitCode != 128 || !term.FinishedAt.Time.Equal(t0) {
		t.Errorf("container %+v", st.ContainerStatuses[0])
	}
	if r := condition(st, corev1.PodReady); r.Status != corev1.ConditionFalse || r.Reason != reasonCompleted {
		t.Errorf("Ready %+v", r)
	}
	if st.StartTime == nil {
		t.Errorf("no startTime")
	}
}

// TestStatusImageIsTheInstances: the container status reports the image
// the instance runs, not a spec image changed since (kubectl set image is
// not applied to a running VM).
func TestStatusImageIsTheInstances(t *testing.T) {
	p := testPod()
	p.Spec.Containers[0].Image = "registry.local/web:2"
	running := inst(client.Running, func(i *client.Instance) { i.Image = "registry.local/web:1" })
	st := StatusOn(p, running, true, t0, "")
	if got := st.ContainerStatuses[0].Image; got != "registry.local/web:1" {
		t.Fatalf("image %q, want the instance's", got)
	}
	p.Status = st
	if got := Failed(p, "InstanceDeleted", "x", t0).ContainerStatuses[0].Image; got != "registry.local/web:1" {
		t.Fatalf("failed image %q, want the one that ran", got)
	}
	if got := StatusOn(testPod(), nil, true, t0, "").ContainerStatuses[0].Image; got != "registry.local/web:1" {
		t.Fatalf("image before an instance %q, want the spec's", got)
	}
}
