package kubelet

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"hypeman/internal/api/client"
	"hypeman/internal/kubelet/podmap"
)

// DeletePod stops the pod's instance gracefully (SIGTERM, then SIGKILL
// after the pod's grace period, capped by the instance's stop_timeout),
// deletes it and the pod's volumes, and reports the final status (the exit
// of the run the stop ended). A pod or instance already gone is done; it
// may be called more than once, and a removal that failed (hypemand
// unreachable) is finished by the next re-sync (see finishDeletes).
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	e := p.pods[key]
	if e != nil && e.pod.UID != pod.UID && pod.UID != "" {
		e = nil // a newer pod of the same name: not this one's
	}
	var inst *client.Instance
	if e != nil {
		e.deleted, e.deleting = true, true
		e.deletedPod = pod.DeepCopy()
		if e.retry != nil {
			e.retry.Stop()
		}
		inst = e.inst
	}
	p.mu.Unlock()
	if e != nil {
		defer func() {
			p.mu.Lock()
			e.deleting = false
			p.mu.Unlock()
		}()
	}

	uid := string(pod.UID)
	if inst == nil && uid != "" {
		// Not in the index (a restart, or never seen): ask hypemand.
		found, err := p.findByUID(ctx, uid)
		if err != nil {
			return fmt.Errorf("delete pod %s: %w", key, err)
		}
		inst = found
	}
	if inst != nil {
		stopped, err := p.stopInstance(ctx, inst, grace(pod))
		if err != nil {
			return fmt.Errorf("delete pod %s: %w", key, err)
		}
		if stopped != nil {
			// The stop's answer carries the exit of the run it ended: the
			// final status is built from it, not from an older state.
			p.mu.Lock()
			if e != nil && p.pods[key] == e && (e.inst == nil || e.inst.Id == stopped.Id) {
				p.setInstance(key, e, stopped)
			}
			p.mu.Unlock()
		}
		if err := p.deleteInstance(ctx, inst.Id); err != nil {
			return fmt.Errorf("delete pod %s: %w", key, err)
		}
	}
	if uid != "" {
		if err := p.deleteVolumes(ctx, uid); err != nil {
			return fmt.Errorf("delete pod %s: volumes: %w", key, err)
		}
	}

	p.mu.Lock()
	if e != nil && p.pods[key] == e {
		final := terminatedStatus(p.podWithStatus(e), e.inst, p.now())
		e.fixed = &final
		p.setInstance(key, e, nil)
		p.notify(e)
		delete(p.pods, key)
	}
	p.mu.Unlock()
	// Nothing of the pod runs any more: finish the deletion Kubernetes
	// asked for now instead of after the whole grace period (virtual-kubelet
	// only re-checks a deleted pod when that period ends, because status
	// changes do not re-queue it).
	if pod.DeletionTimestamp != nil && uid != "" && p.cfg.Pods != nil {
		if err := p.cfg.Pods.RemovePod(ctx, pod.Namespace, pod.Name, pod.UID); err != nil {
			p.log.Warn("cannot remove the deleted pod's object; virtual-kubelet will after its grace period", "pod", key, "err", err)
		}
	}
	return nil
}

// finishDeletes retries, in the background, the deletions that failed
// (hypemand was unreachable and virtual-kubelet gave up): entries marked
// deleted that no DeletePod is working on. Called with p.mu held, by
// resync, so once hypemand answers again.
func (p *Provider) finishDeletes(ctx context.Context) {
	for key, e := range p.pods {
		if !e.deleted || e.deleting || e.deletedPod == nil {
			continue
		}
		e.deleting = true // until DeletePod takes over
		pod := e.deletedPod
		p.log.Info("finishing the deletion of a pod", "pod", key, "uid", pod.UID)
		go func() {
			if err := p.DeletePod(ctx, pod); err != nil {
				p.log.Warn("cannot finish the deletion of a pod; next re-sync retries", "pod", key, "err", err)
			}
		}()
	}
}

// removeInstance stops inst (when it runs) within grace, then deletes it.
func (p *Provider) removeInstance(ctx context.Context, inst *client.Instance, grace time.Duration) error {
	if _, err := p.stopInstance(ctx, inst, grace); err != nil {
		return err
	}
	return p.deleteInstance(ctx, inst.Id)
}

// stopInstance stops inst (when it runs) within grace and returns
// hypemand's answer (the stopped instance, with the exit of its run), nil
// when there was nothing to stop.
func (p *Provider) stopInstance(ctx context.Context, inst *client.Instance, grace time.Duration) (*client.Instance, error) {
	switch inst.State {
	case client.Stopped, client.Standby, client.Created, client.Unknown, client.Template:
		return nil, nil
	}
	if st := parseDuration(deref(inst.StopTimeout)); st > 0 && grace > st {
		grace = st
	}
	timeout := fmt.Sprintf("%ds", int(grace/time.Second))
	r, err := p.api.StopInstanceWithResponse(ctx, inst.Id, client.StopInstanceRequest{Timeout: &timeout})
	if err != nil {
		return nil, &UnreachableError{Err: err}
	}
	if err := result(r.StatusCode(), r.Body, nil); err != nil {
		if isStatus(err, 404) || isStatus(err, 409) {
			return nil, nil // gone, or not running any more
		}
		return nil, fmt.Errorf("stop instance %s: %w", inst.Id, err)
	}
	return r.JSON200, nil
}

// deleteInstance deletes the instance id (gone already is fine).
func (p *Provider) deleteInstance(ctx context.Context, id string) error {
	r, err := p.api.DeleteInstanceWithResponse(ctx, id)
	if err != nil {
		return &UnreachableError{Err: err}
	}
	if err := result(r.StatusCode(), r.Body, nil); err != nil && !isStatus(err, 404) {
		return fmt.Errorf("delete instance %s: %w", id, err)
	}
	return nil
}

// removeLeftover deletes an instance made for a pod deleted meanwhile (or
// replaced under its name), and the pod's volumes.
func (p *Provider) removeLeftover(ctx context.Context, inst *client.Instance, pod *corev1.Pod) {
	defer func() {
		p.mu.Lock()
		delete(p.removing, inst.Id)
		p.mu.Unlock()
	}()
	if err := p.removeInstance(ctx, inst, grace(pod)); err != nil {
		p.log.Warn("cannot remove the instance of a deleted pod", "instance", inst.Id, "err", err)
	}
	if err := p.deleteVolumes(ctx, string(pod.UID)); err != nil {
		p.log.Warn("cannot remove the volumes of a deleted pod", "pod", podKey(pod.Namespace, pod.Name), "err", err)
	}
}

// grace is the pod's deletion grace period (spec's when not being deleted).
func grace(pod *corev1.Pod) time.Duration {
	s := int64(corev1.DefaultTerminationGracePeriodSeconds)
	switch {
	case pod.DeletionGracePeriodSeconds != nil:
		s = *pod.DeletionGracePeriodSeconds
	case pod.Spec.TerminationGracePeriodSeconds != nil:
		s = *pod.Spec.TerminationGracePeriodSeconds
	}
	return time.Duration(max(s, 0)) * time.Second
}

func parseDuration(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0
	}
	return d
}

// Messages of a container ended by its pod's deletion without a known exit.
const (
	msgKilledByDeletion  = "killed by the pod's deletion"
	msgDeletedBeforeRun  = "the pod was deleted before its container ran"
	exitKilledByDeletion = 137 // SIGKILL, as kubelet reports a container it killed
)

// terminatedStatus is pod's last status with every container terminated
// (what virtual-kubelet expects after a delete). inst is the pod's
// instance as last seen (after its stop): when it exited, its exit code
// is the container's (Succeeded on 0, as kubelet reports a program that
// exited cleanly on SIGTERM); without a known exit the container was
// killed: Failed, exit 137. A terminal phase is kept.
func terminatedStatus(pod *corev1.Pod, inst *client.Instance, now time.Time) corev1.PodStatus {
	st := *pod.Status.DeepCopy()
	for i := range st.Conditions {
		if st.Conditions[i].Type == corev1.PodReady || st.Conditions[i].Type == corev1.ContainersReady {
			st.Conditions[i].Status = corev1.ConditionFalse
		}
	}
	exit := knownExit(inst)
	end := func(prev corev1.ContainerState) *corev1.ContainerStateTerminated {
		if exit != nil {
			t := exit.DeepCopy()
			if t.FinishedAt.IsZero() {
				t.FinishedAt = metav1.Time{Time: now}
			}
			if t.StartedAt.IsZero() && prev.Running != nil {
				t.StartedAt = prev.Running.StartedAt
			}
			return t
		}
		t := &corev1.ContainerStateTerminated{ExitCode: exitKilledByDeletion, Reason: "Error", Message: msgDeletedBeforeRun, FinishedAt: metav1.Time{Time: now}}
		switch {
		case prev.Running != nil:
			t.StartedAt, t.Message = prev.Running.StartedAt, msgKilledByDeletion
		case inst != nil && inst.StartedAt != nil:
			t.StartedAt, t.Message = metav1.Time{Time: *inst.StartedAt}, msgKilledByDeletion
		}
		return t
	}
	names := map[string]bool{}
	allZero := true
	notStarted := false
	for i := range st.ContainerStatuses {
		cs := &st.ContainerStatuses[i]
		names[cs.Name] = true
		cs.Ready = false
		cs.Started = &notStarted
		if cs.State.Terminated == nil {
			cs.State = corev1.ContainerState{Terminated: end(cs.State)}
		}
		allZero = allZero && cs.State.Terminated.ExitCode == 0
	}
	for _, c := range pod.Spec.Containers {
		if !names[c.Name] {
			t := end(corev1.ContainerState{})
			allZero = allZero && t.ExitCode == 0
			st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image, State: corev1.ContainerState{Terminated: t}, Started: &notStarted,
			})
		}
	}
	if !podmap.Terminal(st.Phase) {
		st.Phase = corev1.PodFailed
		if allZero && len(st.ContainerStatuses) > 0 {
			st.Phase = corev1.PodSucceeded
		}
	}
	return st
}

// knownExit is the ended run of inst, nil when inst did not exit (or its
// exit code is unknown).
func knownExit(inst *client.Instance) *corev1.ContainerStateTerminated {
	if inst == nil || inst.ExitCode == nil || (inst.State != client.Stopped && inst.State != client.Shutdown) {
		return nil
	}
	return podmap.Terminated(inst)
}
