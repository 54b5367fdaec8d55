package kubelet

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"hypeman/internal/api/client"
)

// DeletePod stops the pod's instance gracefully (SIGTERM, then SIGKILL
// after the pod's grace period, capped by the instance's stop_timeout),
// deletes it and the pod's volumes, and reports the final status. A pod or
// instance already gone is done; it may be called more than once.
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	e := p.pods[key]
	if e != nil && e.pod.UID != pod.UID && pod.UID != "" {
		e = nil // a newer pod of the same name: not this one's
	}
	var inst *client.Instance
	if e != nil {
		e.deleted = true
		if e.retry != nil {
			e.retry.Stop()
		}
		inst = e.inst
	}
	p.mu.Unlock()

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
		if err := p.removeInstance(ctx, inst, grace(pod)); err != nil {
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
		final := terminatedStatus(p.podWithStatus(e), p.now())
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

// removeInstance stops inst (when it runs) within grace, then deletes it.
func (p *Provider) removeInstance(ctx context.Context, inst *client.Instance, grace time.Duration) error {
	switch inst.State {
	case client.Stopped, client.Standby, client.Created, client.Unknown, client.Template:
	default:
		if st := parseDuration(deref(inst.StopTimeout)); st > 0 && grace > st {
			grace = st
		}
		timeout := fmt.Sprintf("%ds", int(grace/time.Second))
		r, err := p.api.StopInstanceWithResponse(ctx, inst.Id, client.StopInstanceRequest{Timeout: &timeout})
		if err != nil {
			return &UnreachableError{Err: err}
		}
		if err := result(r.StatusCode(), r.Body, nil); err != nil && !isStatus(err, 404) && !isStatus(err, 409) {
			return fmt.Errorf("stop instance %s: %w", inst.Id, err)
		}
	}
	r, err := p.api.DeleteInstanceWithResponse(ctx, inst.Id)
	if err != nil {
		return &UnreachableError{Err: err}
	}
	if err := result(r.StatusCode(), r.Body, nil); err != nil && !isStatus(err, 404) {
		return fmt.Errorf("delete instance %s: %w", inst.Id, err)
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

// terminatedStatus is pod's last status with every container terminated
// (what virtual-kubelet expects after a delete).
func terminatedStatus(pod *corev1.Pod, now time.Time) corev1.PodStatus {
	st := *pod.Status.DeepCopy()
	if st.Phase != corev1.PodFailed && st.Phase != corev1.PodSucceeded {
		st.Phase = corev1.PodSucceeded
	}
	for i := range st.Conditions {
		if st.Conditions[i].Type == corev1.PodReady || st.Conditions[i].Type == corev1.ContainersReady {
			st.Conditions[i].Status = corev1.ConditionFalse
		}
	}
	names := map[string]bool{}
	for i := range st.ContainerStatuses {
		cs := &st.ContainerStatuses[i]
		names[cs.Name] = true
		cs.Ready = false
		if cs.State.Terminated == nil {
			started := metav1.Time{}
			if cs.State.Running != nil {
				started = cs.State.Running.StartedAt
			}
			cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				Reason: "Completed", Message: "pod deleted", StartedAt: started, FinishedAt: metav1.Time{Time: now},
			}}
		}
	}
	for _, c := range pod.Spec.Containers {
		if !names[c.Name] {
			st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image,
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed", Message: "pod deleted", FinishedAt: metav1.Time{Time: now}}},
			})
		}
	}
	return st
}
