package podmap

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"hypeman/internal/api/client"
)

// Condition reasons and messages of this package.
const (
	ReasonNodeUnreachable = "NodeUnreachable"
	MessageUnreachable    = "hypemand on this node is unreachable"
	reasonNotReady        = "ContainersNotReady"
	reasonCompleted       = "PodCompleted"
	reasonGatesNotReady   = "ReadinessGatesNotReady"
	// unknownExitCode stands for a run that ended without an exit code (VM
	// crash, failed launch), as kubelet reports a container it lost.
	unknownExitCode = 137
	// startErrorExitCode is a container that never started (kubelet's
	// StartError code).
	startErrorExitCode = 128
)

// Status is pod's status given its instance (nil: not created yet).
// reachable reports hypemand reachability: false makes the pod and
// container not ready with reason NodeUnreachable, keeping the rest.
// hostIP is kept from pod.Status; StatusOn sets it.
func Status(pod *corev1.Pod, inst *client.Instance, reachable bool, now time.Time) corev1.PodStatus {
	return StatusOn(pod, inst, reachable, now, "")
}

// StatusOn is Status that also sets status.hostIP and hostIPs to nodeIP
// (Options.NodeIP; "" keeps the pod's).
//
// The mapping: no instance, Created, Initializing → Pending with the
// container Waiting (ContainerCreating), or Running with it so once the pod
// has run (its previous phase Running or a restart count above 0: a
// restart passes through Initializing). Running → Running; Ready when the
// instance is Running, healthy if the pod has a livenessProbe or a
// readinessProbe (whichever is the health check, see mappedProbe), and the
// pod's readiness gates are True. Paused, Standby, Template (and Shutdown
// before the exit is recorded) → Running, not ready, "instance is <state>".
// Stopped/Shutdown → terminal (Succeeded on exit 0, else Failed; container
// Terminated) when no restart will come: restartPolicy Never, OnFailure
// after exit 0, or a restart_status.blocked_reason; otherwise Running with
// the container Waiting in CrashLoopBackOff and lastState the run that
// ended. Unknown keeps the phase, not ready, with state_error as message.
// The container's image is the instance's (what runs), else the spec's. A
// terminal pod.Status is returned unchanged: a pod never leaves Succeeded
// or Failed.
func StatusOn(pod *corev1.Pod, inst *client.Instance, reachable bool, now time.Time, nodeIP string) corev1.PodStatus {
	if Terminal(pod.Status.Phase) {
		return *pod.Status.DeepCopy()
	}
	st := base(pod, now, nodeIP)
	if !reachable {
		if st.Phase == "" {
			st.Phase = corev1.PodPending
		}
		for i := range st.ContainerStatuses {
			st.ContainerStatuses[i].Ready = false
		}
		setCondition(&st, pod, corev1.ContainersReady, false, ReasonNodeUnreachable, MessageUnreachable, now)
		setCondition(&st, pod, corev1.PodReady, false, ReasonNodeUnreachable, MessageUnreachable, now)
		return st
	}
	c := container(pod)
	prev := prevContainer(pod, c.Name)
	cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: prev.ImageID, ContainerID: prev.ContainerID,
		RestartCount: prev.RestartCount, LastTerminationState: prev.LastTerminationState}
	creating := corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}
	var (
		phase   corev1.PodPhase
		ready   bool
		why     string // why not ready
		sandbox bool   // PodReadyToStartContainers: the VM exists
	)
	state := client.InstanceState("")
	if inst != nil {
		state = inst.State
		cs.ContainerID = "hypeman://" + inst.Id
		if inst.Image != "" {
			cs.Image = inst.Image // what runs: a changed spec image is not applied
		}
		if inst.ImageDigest != nil {
			cs.ImageID = *inst.ImageDigest
		}
		cs.RestartCount = restarts(inst, cs.RestartCount)
		if inst.Network != nil && inst.Network.Ip != nil && *inst.Network.Ip != "" {
			st.PodIP, st.PodIPs = *inst.Network.Ip, []corev1.PodIP{{IP: *inst.Network.Ip}}
		}
	}
	exited := inst != nil && (state == client.Stopped || state == client.Shutdown && inst.StoppedAt != nil)
	switch {
	case (inst == nil || state == client.Created || state == client.Initializing) && (st.Phase == corev1.PodRunning || cs.RestartCount > 0):
		// A restart passes through Initializing: a pod that has run stays
		// Running (as with kubelet) with its container waiting.
		phase, cs.State, why = corev1.PodRunning, creating, "container is restarting"
		sandbox = state == client.Initializing
	case inst == nil || state == client.Created || state == client.Initializing:
		phase, cs.State, why = corev1.PodPending, creating, "container is being created"
		sandbox = state == client.Initializing
	case state == client.Running:
		phase, cs.State, sandbox = corev1.PodRunning, running(inst), true
		ready = true
		if p, _, _ := mappedProbe(c); p != nil {
			h := client.InstanceHealthStatusStatus("unknown")
			if inst.HealthStatus != nil {
				h = inst.HealthStatus.Status
			}
			ready, why = h == client.HealthHealthy, "health check is "+string(h)
		}
	case exited && inst.StoppedAt == nil && inst.ExitCode == nil && !blocked(inst):
		// Stopped before any run ended (never booted): nothing to report yet.
		phase, cs.State, why = orPending(st.Phase), creating, "instance is "+string(state)
	case exited:
		term := Terminated(inst)
		if terminalRun(pod, inst) {
			phase = corev1.PodFailed
			if term.ExitCode == 0 {
				phase = corev1.PodSucceeded
			}
			cs.State = corev1.ContainerState{Terminated: term}
			break
		}
		phase, why = corev1.PodRunning, "container is waiting to restart"
		msg := "back-off restarting failed container " + c.Name
		if rs := inst.RestartStatus; rs != nil && rs.NextAttemptAt != nil {
			msg += fmt.Sprintf("; next attempt at %s (in %s)", rs.NextAttemptAt.UTC().Format(time.RFC3339), rs.NextAttemptAt.Sub(now).Round(time.Second))
		}
		cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: msg}}
		cs.LastTerminationState = corev1.ContainerState{Terminated: term}
	case state == client.Unknown:
		phase, cs.State, why = orPending(st.Phase), prev.State, "instance state is unknown"
		if inst.StateError != nil {
			why += ": " + *inst.StateError
		}
	default: // Paused, Standby, Template, Shutdown before its exit is recorded
		phase, cs.State, why = corev1.PodRunning, running(inst), "instance is "+string(state)
		sandbox = state == client.Paused || state == client.Shutdown
	}
	if cs.State.Waiting == nil && cs.State.Running == nil && cs.State.Terminated == nil {
		cs.State = creating
	}
	cs.Ready = ready
	cs.Started = ptr(cs.State.Running != nil)
	st.Phase = phase
	st.ContainerStatuses = []corev1.ContainerStatus{cs}
	setConditions(&st, pod, sandbox, ready, why, now)
	return st
}

// Failed is the terminal status of a pod that cannot run (reason is a
// CamelCase word such as "Unsupported" or "OutOfmemory"): phase Failed and
// the container Terminated with that reason (exit code 128, a container
// that never started). A pod already terminal keeps its status.
func Failed(pod *corev1.Pod, reason, message string, now time.Time) corev1.PodStatus {
	if Terminal(pod.Status.Phase) {
		return *pod.Status.DeepCopy()
	}
	st := base(pod, now, "")
	st.Phase, st.Reason, st.Message = corev1.PodFailed, reason, message
	c := container(pod)
	prev := prevContainer(pod, c.Name)
	term := &corev1.ContainerStateTerminated{ExitCode: startErrorExitCode, Reason: reason, Message: message, FinishedAt: metav1.NewTime(now)}
	if prev.State.Running != nil {
		term.StartedAt = prev.State.Running.StartedAt
	}
	image := c.Image
	if prev.Image != "" {
		image = prev.Image // the image that ran, if it did
	}
	st.ContainerStatuses = []corev1.ContainerStatus{{Name: c.Name, Image: image, ImageID: prev.ImageID, ContainerID: prev.ContainerID,
		RestartCount: prev.RestartCount, State: corev1.ContainerState{Terminated: term}, Started: ptr(false)}}
	setConditions(&st, pod, false, false, "", now)
	return st
}

// base is pod.Status with the fields every status sets: startTime (first
// seen), hostIP, observedGeneration.
func base(pod *corev1.Pod, now time.Time, nodeIP string) corev1.PodStatus {
	st := *pod.Status.DeepCopy()
	if st.StartTime == nil {
		st.StartTime = ptr(metav1.NewTime(now))
	}
	if nodeIP != "" {
		st.HostIP, st.HostIPs = nodeIP, []corev1.HostIP{{IP: nodeIP}}
	}
	st.ObservedGeneration = pod.Generation
	return st
}

// setConditions sets the kubelet-owned conditions; others (readiness
// gates, DisruptionTarget, …) are kept.
func setConditions(st *corev1.PodStatus, pod *corev1.Pod, sandbox, ready bool, why string, now time.Time) {
	name := container(pod).Name
	setCondition(st, pod, corev1.PodScheduled, true, "", "", now)
	setCondition(st, pod, corev1.PodReadyToStartContainers, sandbox, "", "", now)
	setCondition(st, pod, corev1.PodInitialized, true, "", "", now)
	reason, msg := "", ""
	switch {
	case Terminal(st.Phase):
		reason = reasonCompleted
	case !ready:
		reason, msg = reasonNotReady, fmt.Sprintf("containers with unready status: [%s]", name)
		if why != "" {
			msg += " (" + why + ")"
		}
	}
	setCondition(st, pod, corev1.ContainersReady, ready, reason, msg, now)
	if ready {
		for _, g := range pod.Spec.ReadinessGates {
			if !conditionTrue(st, g.ConditionType) {
				ready, reason, msg = false, reasonGatesNotReady, fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist or is not True", g.ConditionType)
				break
			}
		}
	}
	setCondition(st, pod, corev1.PodReady, ready, reason, msg, now)
}

// setCondition sets one condition, keeping lastTransitionTime when the
// status did not change.
func setCondition(st *corev1.PodStatus, pod *corev1.Pod, t corev1.PodConditionType, ok bool, reason, msg string, now time.Time) {
	status := corev1.ConditionFalse
	if ok {
		status = corev1.ConditionTrue
	}
	c := corev1.PodCondition{Type: t, Status: status, Reason: reason, Message: msg, LastTransitionTime: metav1.NewTime(now), ObservedGeneration: pod.Generation}
	for i := range st.Conditions {
		if st.Conditions[i].Type != t {
			continue
		}
		if st.Conditions[i].Status == status {
			c.LastTransitionTime = st.Conditions[i].LastTransitionTime
		}
		st.Conditions[i] = c
		return
	}
	st.Conditions = append(st.Conditions, c)
}

func conditionTrue(st *corev1.PodStatus, t corev1.PodConditionType) bool {
	for _, c := range st.Conditions {
		if c.Type == t {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Terminal reports a phase a pod never leaves (Succeeded, Failed).
func Terminal(p corev1.PodPhase) bool { return p == corev1.PodSucceeded || p == corev1.PodFailed }

func orPending(p corev1.PodPhase) corev1.PodPhase {
	if p == "" {
		return corev1.PodPending
	}
	return p
}

// container is the pod's (only) container; an empty one for a pod without
// containers, which Translate refused.
func container(pod *corev1.Pod) *corev1.Container {
	if len(pod.Spec.Containers) == 0 {
		return &corev1.Container{}
	}
	return &pod.Spec.Containers[0]
}

func prevContainer(pod *corev1.Pod, name string) corev1.ContainerStatus {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == name {
			return *cs.DeepCopy()
		}
	}
	return corev1.ContainerStatus{}
}

// restarts is restart_status.restarts (whole life), else attempts, never
// below what was reported before.
func restarts(inst *client.Instance, prev int32) int32 {
	n := prev
	if rs := inst.RestartStatus; rs != nil {
		switch {
		case rs.Restarts != nil:
			n = int32(*rs.Restarts)
		case rs.Attempts != nil:
			n = max(n, int32(*rs.Attempts))
		}
	}
	return n
}

func blocked(inst *client.Instance) bool {
	return inst.RestartStatus != nil && inst.RestartStatus.BlockedReason != nil && *inst.RestartStatus.BlockedReason != ""
}

// terminalRun reports that no restart will follow the run that ended,
// decided from the pod's restartPolicy (as kubelet would) or hypemand's
// blocked_reason (a manual stop, max attempts).
func terminalRun(pod *corev1.Pod, inst *client.Instance) bool {
	if blocked(inst) {
		return true
	}
	switch pod.Spec.RestartPolicy {
	case corev1.RestartPolicyNever:
		return true
	case corev1.RestartPolicyOnFailure:
		return inst.ExitCode != nil && *inst.ExitCode == 0
	}
	return false
}

func running(inst *client.Instance) corev1.ContainerState {
	r := &corev1.ContainerStateRunning{}
	if inst.StartedAt != nil {
		r.StartedAt = metav1.NewTime(*inst.StartedAt)
	}
	return corev1.ContainerState{Running: r}
}

// Terminated describes the run of inst that ended (exit code 137, reason
// Error when hypemand recorded no exit code).
func Terminated(inst *client.Instance) *corev1.ContainerStateTerminated {
	t := &corev1.ContainerStateTerminated{ExitCode: unknownExitCode, Reason: "Error", ContainerID: "hypeman://" + inst.Id}
	if inst.ExitCode != nil {
		t.ExitCode = int32(*inst.ExitCode)
		if t.ExitCode == 0 {
			t.Reason = "Completed"
		}
	}
	if inst.ExitMessage != nil {
		t.Message = *inst.ExitMessage
	}
	if inst.StartedAt != nil {
		t.StartedAt = metav1.NewTime(*inst.StartedAt)
	}
	if inst.StoppedAt != nil {
		t.FinishedAt = metav1.NewTime(*inst.StoppedAt)
	}
	return t
}
