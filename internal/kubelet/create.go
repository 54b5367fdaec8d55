package kubelet

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"hypeman/internal/api/client"
	"hypeman/internal/kubelet/podmap"
)

// Waiting reasons of a pod whose create is retried (kubelet's words).
const (
	reasonConfigError = "CreateContainerConfigError"
	reasonCreateError = "CreateContainerError"
)

// CreatePod makes pod's instance. It is idempotent by pod UID: an instance
// already carrying the UID tag is adopted. What cannot run ends the pod
// Failed (never a partial start); what may pass (a missing ConfigMap,
// hypemand unreachable) leaves it Pending with a Waiting reason and is
// retried with backoff. It returns nil in all those cases: the status says
// what happened, and virtual-kubelet would otherwise fail a
// restartPolicy=Never pod on the first transient error.
func (p *Provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	e := p.pods[key]
	if e != nil && e.pod.UID != pod.UID {
		old := e.pod
		p.mu.Unlock()
		if err := p.DeletePod(ctx, old); err != nil {
			return err
		}
		p.mu.Lock()
		e = p.pods[key]
	}
	if e == nil {
		e = &entry{pod: pod.DeepCopy()}
		p.pods[key] = e
	}
	e.pod, e.orphan, e.deleted = pod.DeepCopy(), false, false
	if e.inst != nil || e.creating || (e.fixed != nil && podmap.Terminal(e.fixed.Phase)) {
		// Known already (adopted by re-sync, or being made): status only.
		p.notify(e)
		p.mu.Unlock()
		return nil
	}
	e.creating = true
	p.mu.Unlock()

	inst, fixed, retry := p.create(ctx, pod)
	if p.recordCreate(ctx, key, e, pod, inst, fixed, retry) {
		// Events of the instance before the index knew it were dropped:
		// read it once now.
		p.instanceEvent(ctx, client.LifecycleEvent{Type: client.StateChange, InstanceId: inst.Id})
	}
	return nil
}

// recordCreate stores an attempt's outcome; true when inst was indexed.
func (p *Provider) recordCreate(ctx context.Context, key string, e *entry, pod *corev1.Pod, inst *client.Instance, fixed *corev1.PodStatus, retry bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	e.creating = false
	if p.pods[key] != e || e.deleted {
		// Deleted while being made: DeletePod found no instance yet.
		if inst != nil {
			go p.removeLeftover(context.WithoutCancel(ctx), inst, pod)
		}
		return false
	}
	e.fixed = fixed
	if inst != nil {
		p.setInstance(key, e, inst)
		e.backoff = 0
	}
	if retry {
		p.scheduleRetry(key, e)
	}
	p.notify(e)
	return inst != nil
}

// create runs one attempt: it returns the instance, or a status to show
// and whether to try again later.
func (p *Provider) create(ctx context.Context, pod *corev1.Pod) (inst *client.Instance, fixed *corev1.PodStatus, retry bool) {
	log := p.log.With("pod", podKey(pod.Namespace, pod.Name), "uid", pod.UID)
	waiting := func(reason string, err error) (*client.Instance, *corev1.PodStatus, bool) {
		log.Warn("pod create will be retried", "reason", reason, "err", err)
		return nil, waitingStatus(pod, reason, err.Error(), p.now()), true
	}
	failed := func(reason string, err error) (*client.Instance, *corev1.PodStatus, bool) {
		log.Warn("pod cannot run", "reason", reason, "err", err)
		st := p.cfg.Mapper.Failed(pod, reason, err.Error(), p.now())
		return nil, &st, false
	}

	existing, err := p.findByUID(ctx, string(pod.UID))
	var ue *UnreachableError
	switch {
	case errors.As(err, &ue) && pod.Status.Phase == corev1.PodRunning:
		// A pod that has run (its instance likely still does, e.g. after a
		// kubelet restart while hypemand is down) keeps its phase, not
		// ready, until hypemand answers: no Pending, no new startTime.
		log.Warn("hypemand unreachable: keeping the running pod's status until it answers", "err", err)
		st := p.cfg.Mapper.Status(pod, nil, false, p.now())
		return nil, &st, true
	case err != nil:
		return waiting(reasonCreateError, err)
	}
	if existing != nil {
		log.Info("adopting the pod's existing instance", "instance", existing.Id)
		return existing, nil, false
	}

	plan, err := p.cfg.Mapper.Translate(ctx, pod, p.cfg.Resolver, podmap.Options{
		NodeName: p.cfg.NodeName, NodeIP: p.cfg.NodeIP, EmptyDirSize: p.cfg.EmptyDirSize,
	})
	var unsupported *podmap.UnsupportedError
	switch {
	case errors.As(err, &unsupported):
		return failed("Unsupported", err)
	case podmap.IsConfigError(err):
		// A missing non-optional reference: it may appear.
		return waiting(reasonConfigError, err)
	case err != nil:
		// The resolver failing (apiserver, TokenRequest).
		return waiting(reasonCreateError, err)
	}
	for _, w := range plan.Warnings {
		p.cfg.Recorder.Event(pod, corev1.EventTypeWarning, "NotEnforced", w)
	}

	tags := podmap.Tags(pod, p.cfg.NodeName)
	// Volumes of an earlier attempt that died half-way (no instance was
	// made, so nothing uses them).
	if err := p.deleteVolumes(ctx, string(pod.UID)); err != nil {
		return waiting(reasonCreateError, err)
	}
	req := plan.Instance
	if req.Name == "" {
		req.Name = p.cfg.Mapper.InstanceName(pod)
	}
	all := map[string]string{}
	if req.Tags != nil {
		maps.Copy(all, *req.Tags)
	}
	maps.Copy(all, tags)
	t := client.Tags(all)
	req.Tags = &t
	var mounts []client.VolumeMount
	if req.Volumes != nil {
		mounts = append(mounts, *req.Volumes...)
	}
	made := false
	defer func() {
		if !made {
			if err := p.deleteVolumes(context.WithoutCancel(ctx), string(pod.UID)); err != nil {
				log.Warn("cannot remove the volumes of a failed create", "err", err)
			}
		}
	}()
	for _, v := range plan.Volumes {
		id, err := p.createVolume(ctx, string(pod.UID), v, tags)
		if err != nil {
			if isStatus(err, 400) || isStatus(err, 413) {
				return failed("InvalidVolume", err)
			}
			return waiting(reasonCreateError, err)
		}
		ro := v.Mount.ReadOnly
		mounts = append(mounts, client.VolumeMount{VolumeId: id, MountPath: v.Mount.Path, Readonly: &ro})
	}
	if len(mounts) > 0 {
		req.Volumes = &mounts
	}

	inst, err = p.createInstance(ctx, req, string(pod.UID), p.cfg.Mapper.AltInstanceName(pod))
	switch {
	case isCode(err, "insufficient_resources"):
		return failed(outOfReason(err), err)
	case isStatus(err, 400) || isStatus(err, 422):
		// hypemand refused the request itself (an invalid image reference,
		// env, ...): the same request will not pass later.
		return failed(reasonCreateError, err)
	case err != nil:
		return waiting(reasonCreateError, err)
	}
	made = true
	log.Info("instance created", "instance", inst.Id, "name", inst.Name)
	return inst, nil, false
}

// createInstance posts req; a name taken by another instance is replaced
// by alt, a name taken by this pod's own instance (a race with an earlier
// attempt) is adopted.
func (p *Provider) createInstance(ctx context.Context, req client.CreateInstanceRequest, uid, alt string) (*client.Instance, error) {
	for attempt := 0; ; attempt++ {
		r, err := p.api.CreateInstanceWithResponse(ctx, req)
		if err != nil {
			return nil, &UnreachableError{Err: err}
		}
		err = result(r.StatusCode(), r.Body, nil)
		if err == nil {
			return r.JSON201, nil
		}
		if !isStatus(err, 409) || isCode(err, "insufficient_resources") || attempt > 0 || alt == "" || alt == req.Name {
			return nil, err
		}
		if mine, ferr := p.findByUID(ctx, uid); ferr == nil && mine != nil {
			return mine, nil
		}
		g, gerr := p.api.GetInstanceWithResponse(ctx, req.Name)
		if gerr != nil || g.JSON200 == nil {
			return nil, err // the conflict is not a taken name
		}
		req.Name = alt
	}
}

// outOfReason is kubelet's admission reason for a refusal: OutOfcpu,
// OutOfmemory, ... from hypemand's "insufficient <resource>: ..." message.
func outOfReason(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		if rest, ok := strings.CutPrefix(ae.Message, "insufficient "); ok {
			if kind, _, ok := strings.Cut(rest, ":"); ok && kind != "" && !strings.Contains(kind, " ") {
				return "OutOf" + kind
			}
		}
	}
	return "OutOfresources"
}

// findByUID is the instance tagged with the pod UID, if any.
func (p *Provider) findByUID(ctx context.Context, uid string) (*client.Instance, error) {
	tags := client.TagsFilter{podmap.TagUID: uid}
	r, err := p.api.ListInstancesWithResponse(ctx, &client.ListInstancesParams{Tags: &tags})
	if err != nil {
		return nil, &UnreachableError{Err: err}
	}
	if err := result(r.StatusCode(), r.Body, nil); err != nil {
		return nil, err
	}
	if r.JSON200 == nil || len(*r.JSON200) == 0 {
		return nil, nil
	}
	inst := (*r.JSON200)[0]
	return &inst, nil
}

// createVolume makes one plan volume and returns its id.
func (p *Provider) createVolume(ctx context.Context, uid string, v podmap.Volume, podTags map[string]string) (string, error) {
	tags := maps.Clone(podTags)
	tags[podmap.TagVolume] = v.Name
	name := podmap.VolumeName(uid, v.Name)
	sizeGB := int((v.SizeBytes + (1<<30 - 1)) >> 30)
	if sizeGB < 1 {
		sizeGB = 1
	}
	tf := client.Tags(tags)
	if v.Files == nil {
		r, err := p.api.CreateVolumeWithResponse(ctx, client.CreateVolumeRequest{Name: name, SizeGb: sizeGB, Tags: &tf})
		if err != nil {
			return "", &UnreachableError{Err: err}
		}
		if err := result(r.StatusCode(), r.Body, nil); err != nil {
			return "", fmt.Errorf("volume %s: %w", v.Name, err)
		}
		return r.JSON201.Id, nil
	}
	archive, err := tarGz(v.Files)
	if err != nil {
		return "", fmt.Errorf("volume %s: %w", v.Name, err)
	}
	r, err := p.api.CreateVolumeFromArchiveWithBodyWithResponse(ctx,
		&client.CreateVolumeFromArchiveParams{Name: name, SizeGb: sizeGB, Tags: &tf}, "application/gzip", bytes.NewReader(archive))
	if err != nil {
		return "", &UnreachableError{Err: err}
	}
	if err := result(r.StatusCode(), r.Body, nil); err != nil {
		return "", fmt.Errorf("volume %s: %w", v.Name, err)
	}
	return r.JSON201.Id, nil
}

// tarGz packs files (paths relative, clean) with their parent directories.
func tarGz(files []podmap.File) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	dirs := map[string]bool{}
	mtime := time.Unix(0, 0)
	for _, f := range files {
		parts := strings.Split(f.Path, "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/")
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime}); err != nil {
				return nil, err
			}
		}
		mode := f.Mode & 0o7777
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.Path, Mode: mode, Size: int64(len(f.Data)), ModTime: mtime}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// deleteVolumes removes every volume tagged with the pod UID on this node.
func (p *Provider) deleteVolumes(ctx context.Context, uid string) error {
	tags := client.TagsFilter{podmap.TagUID: uid, podmap.TagNode: p.cfg.NodeName}
	r, err := p.api.ListVolumesWithResponse(ctx, &client.ListVolumesParams{Tags: &tags})
	if err != nil {
		return &UnreachableError{Err: err}
	}
	if err := result(r.StatusCode(), r.Body, nil); err != nil {
		if isStatus(err, 501) {
			return nil // no volumes on this hypemand
		}
		return err
	}
	var errs []error
	for _, v := range deref(r.JSON200) {
		d, err := p.api.DeleteVolumeWithResponse(ctx, v.Id)
		if err != nil {
			errs = append(errs, &UnreachableError{Err: err})
			continue
		}
		if err := result(d.StatusCode(), d.Body, nil); err != nil && !isStatus(err, 404) {
			errs = append(errs, fmt.Errorf("volume %s: %w", v.Name, err))
		}
	}
	return errors.Join(errs...)
}

// waitingStatus is a Pending pod whose container waits with reason.
func waitingStatus(pod *corev1.Pod, reason, message string, now time.Time) *corev1.PodStatus {
	st := &corev1.PodStatus{
		Phase:     corev1.PodPending,
		StartTime: &metav1.Time{Time: now},
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
			{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady"},
			{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady"},
		},
	}
	for _, c := range pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}},
		})
	}
	return st
}

// scheduleRetry arms e's next create attempt. Called with p.mu held.
func (p *Provider) scheduleRetry(key string, e *entry) {
	if e.backoff == 0 {
		e.backoff = p.cfg.RetryMin
	} else {
		e.backoff = min(2*e.backoff, p.cfg.RetryMax)
	}
	if e.retry != nil {
		e.retry.Stop()
	}
	e.retry = time.AfterFunc(e.backoff, func() { p.queueRetry(key) })
}

// queueRetry hands key to retryLoop; once Run has stopped, nobody takes
// it and it is dropped.
func (p *Provider) queueRetry(key string) {
	select {
	case p.retries <- key:
	case <-p.stopped:
	}
}

// retryLoop runs due create attempts.
func (p *Provider) retryLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case key := <-p.retries:
			p.mu.Lock()
			e := p.pods[key]
			if e == nil || e.deleted || e.inst != nil || e.creating || e.fixed == nil || podmap.Terminal(e.fixed.Phase) {
				p.mu.Unlock()
				continue
			}
			pod := e.pod.DeepCopy()
			e.fixed = nil // CreatePod makes a new attempt
			p.mu.Unlock()
			_ = p.CreatePod(ctx, pod)
		}
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
