package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"hypeman/internal/api/client"
	"hypeman/internal/api/sse"
	"hypeman/internal/kubelet/podmap"
)

// ping is one GET /health.
func (p *Provider) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(p.cfg.HealthInterval, time.Second))
	defer cancel()
	r, err := p.api.GetHealthWithResponse(ctx)
	if err != nil {
		return &UnreachableError{Err: err}
	}
	if err := result(r.StatusCode(), r.Body, nil); err != nil {
		return err
	}
	if r.JSON200 != nil && r.JSON200.Status != "ok" && r.JSON200.Status != "" {
		return fmt.Errorf("hypemand health is %q", r.JSON200.Status)
	}
	return nil
}

// healthLoop polls GET /health: two misses in a row make hypemand
// unreachable, one answer reachable again (with a full re-sync).
func (p *Provider) healthLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := p.ping(ctx)
		if ctx.Err() != nil {
			return
		}
		p.healthResult(ctx, err)
	}
}

// healthResult counts one health observation. An event stream hypemand
// keeps refusing makes a good answer a miss.
func (p *Provider) healthResult(ctx context.Context, err error) {
	p.mu.Lock()
	if err == nil && p.refused != nil {
		err = p.refused
	}
	if err == nil {
		p.misses = 0
	} else {
		p.misses++
	}
	misses, was := p.misses, p.reachable
	p.mu.Unlock()
	switch {
	case err == nil && !was:
		// Re-sync first: flipping reachable notifies every pod, which must
		// come from the fresh index, not the one from before the outage.
		p.log.Info("hypemand reachable again: re-syncing")
		if err := p.resync(ctx); err != nil {
			p.log.Warn("re-sync failed", "err", err)
		}
		p.setReachable(ctx, true, "")
		p.refreshResources(ctx)
	case err != nil && was && misses >= 2:
		p.log.Warn("hypemand unreachable", "err", err)
		p.setReachable(ctx, false, err.Error())
	}
}

// setReachable records hypemand's reachability in the node's Ready
// condition and, when it changes, in every pod's status.
func (p *Provider) setReachable(ctx context.Context, ok bool, why string) {
	p.mu.Lock()
	changed := p.reachable != ok
	p.reachable = ok
	if changed {
		for _, e := range p.pods {
			p.notify(e)
		}
	}
	p.mu.Unlock()
	p.updateNode(func(n *corev1.Node) { setReadyCondition(n, ok, why, p.now()) })
}

// resync re-lists this node's instances: known pods get their instance,
// instances of unknown pods become orphan entries (virtual-kubelet deletes
// those whose pod is gone), pods whose instance vanished are told so.
//
// The listing is a snapshot taken before the lock: a create or an event
// that set an entry's instance since then is newer than the listing, so
// such entries are left alone (neither rolled back to the listed state nor
// declared gone because the listing predates their instance).
func (p *Provider) resync(ctx context.Context) error {
	p.mu.Lock()
	since := p.seq
	p.mu.Unlock()
	tags := client.TagsFilter{podmap.TagNode: p.cfg.NodeName}
	r, err := p.api.ListInstancesWithResponse(ctx, &client.ListInstancesParams{Tags: &tags})
	if err != nil {
		return &UnreachableError{Err: err}
	}
	if err := result(r.StatusCode(), r.Body, nil); err != nil {
		return err
	}
	listed := map[string]bool{}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, inst := range deref(r.JSON200) {
		inst := inst
		t := instTags(&inst)
		uid := t[podmap.TagUID]
		if uid == "" || t[podmap.TagNamespace] == "" || t[podmap.TagPod] == "" {
			continue
		}
		key := podKey(t[podmap.TagNamespace], t[podmap.TagPod])
		listed[key] = true
		e := p.pods[key]
		if e != nil && string(e.pod.UID) != uid {
			// The pod was replaced by another of the same name, so the
			// old one is gone from Kubernetes: remove its instance.
			if p.byInst[inst.Id] == "" && !p.removing[inst.Id] {
				p.log.Info("removing the instance of a replaced pod", "instance", inst.Id, "pod", key, "uid", uid)
				p.removing[inst.Id] = true
				go p.removeLeftover(context.WithoutCancel(ctx), &inst, orphanPod(t))
			}
			continue
		}
		if e != nil && e.seq > since {
			continue // updated after the listing began
		}
		if e == nil {
			e = &entry{pod: orphanPod(t), orphan: true}
			p.pods[key] = e
		}
		p.setInstance(key, e, &inst)
		if e.fixed != nil && !podmap.Terminal(e.fixed.Phase) {
			e.fixed = nil
		}
		p.notify(e)
	}
	for key, e := range p.pods {
		if e.inst != nil && !listed[key] && !e.deleted && e.seq <= since {
			p.instanceGone(key, e)
		}
	}
	p.finishDeletes(context.WithoutCancel(ctx))
	return nil
}

// instanceGone handles an instance deleted behind Kubernetes' back. Called
// with p.mu held.
func (p *Provider) instanceGone(key string, e *entry) {
	if e.orphan {
		p.setInstance(key, e, nil)
		delete(p.pods, key)
		return
	}
	st := p.cfg.Mapper.Failed(e.pod, "InstanceDeleted", "the pod's hypeman instance "+e.inst.Id+" was deleted outside Kubernetes", p.now())
	e.fixed = &st
	p.setInstance(key, e, nil)
	p.notify(e)
}

// eventLoop follows GET /events, resuming with Last-Event-ID, and re-syncs
// on connect and on a reset event. Failing to reconnect counts as a missed
// health check, and so does a stream hypemand keeps refusing (a 401 of an
// expired token): without events the pods' statuses would silently stop.
func (p *Provider) eventLoop(ctx context.Context) {
	var lastID string
	delay := p.cfg.ReconnectMin
	for ctx.Err() == nil {
		err := p.followEvents(ctx, &lastID)
		if ctx.Err() != nil {
			return
		}
		var (
			ue *UnreachableError
			sr *StreamRefusedError
		)
		switch {
		case errors.As(err, &ue):
			p.log.Debug("event stream ended", "err", err)
			p.healthResult(ctx, err)
		case errors.As(err, &sr):
			p.streamRefused(ctx, sr)
		default:
			p.log.Debug("event stream ended", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, p.cfg.ReconnectMax)
		if err == nil {
			delay = p.cfg.ReconnectMin
		}
	}
}

// StreamRefusedError is hypemand answering GET /events with an error.
type StreamRefusedError struct{ Err *APIError }

func (e *StreamRefusedError) Error() string {
	msg := fmt.Sprintf("hypemand refused the event stream: %d %s", e.Err.Status, strings.ToLower(http.StatusText(e.Err.Status)))
	if e.Err.Message != "" {
		msg += ": " + e.Err.Message
	}
	if e.Err.Status == http.StatusUnauthorized || e.Err.Status == http.StatusForbidden {
		msg += ": check HYPEMAN_API_KEY"
	}
	return msg
}

func (e *StreamRefusedError) Unwrap() error { return e.Err }

// streamRefused records one refusal of the event stream: logged at warn
// once per distinct status; from the second in a row it counts as
// hypemand unreachable (healthResult) until a stream is accepted.
func (p *Provider) streamRefused(ctx context.Context, err *StreamRefusedError) {
	p.mu.Lock()
	p.refusals++
	persists := p.refusals >= 2
	if persists {
		p.refused = err
	}
	first := p.refusedStatus != err.Err.Status
	p.refusedStatus = err.Err.Status
	p.mu.Unlock()
	if first {
		p.log.Warn("hypemand refused the event stream", "err", err)
	} else {
		p.log.Debug("hypemand refused the event stream", "err", err)
	}
	if persists {
		p.healthResult(ctx, err)
	}
}

// streamAccepted clears the refusals of the event stream.
func (p *Provider) streamAccepted() {
	p.mu.Lock()
	p.refusals, p.refused, p.refusedStatus = 0, nil, 0
	p.mu.Unlock()
}

// followEvents reads one connection of the event stream.
func (p *Provider) followEvents(ctx context.Context, lastID *string) error {
	var params client.StreamEventsParams
	if *lastID != "" {
		id := client.LastEventID(*lastID)
		params.LastEventID = &id
	}
	resp, err := p.api.ClientInterface.StreamEvents(ctx, &params)
	if err != nil {
		return &UnreachableError{Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		var ae *APIError
		if errors.As(result(resp.StatusCode, body, nil), &ae) {
			return &StreamRefusedError{Err: ae}
		}
		return fmt.Errorf("event stream: status %d", resp.StatusCode)
	}
	p.streamAccepted()
	// Connected: whatever happened while disconnected is re-read.
	if err := p.resync(ctx); err != nil {
		p.log.Warn("re-sync failed", "err", err)
	}
	rd := sse.NewReader(resp.Body)
	rd.SetLastEventID(*lastID)
	for {
		ev, err := rd.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		*lastID = rd.LastEventID()
		switch ev.Type {
		case "reset":
			p.log.Info("events were missed: re-syncing")
			if err := p.resync(ctx); err != nil {
				p.log.Warn("re-sync failed", "err", err)
			}
		case string(client.StateChange), string(client.Deleted):
			var le client.LifecycleEvent
			if err := json.Unmarshal([]byte(ev.Data), &le); err != nil {
				p.log.Warn("skipping an event that is not a lifecycle event", "err", err)
				continue
			}
			p.instanceEvent(ctx, le)
		}
	}
}

// instanceEvent refreshes the pod of the event's instance, if it is ours.
func (p *Provider) instanceEvent(ctx context.Context, le client.LifecycleEvent) {
	// A read is applied only if the entry did not change while it was on
	// the way (seq): a state recorded meanwhile by another reader (an
	// event, a re-sync) may be newer than this answer. Reading again then
	// gets an answer newer than that change.
	for range 3 {
		if p.refreshInstance(ctx, le) {
			return
		}
	}
	p.log.Debug("instance kept changing while read; the next event refreshes it", "instance", le.InstanceId)
}

// refreshInstance reads the event's instance and records it; false when
// the entry changed while the read was on the way (nothing recorded).
func (p *Provider) refreshInstance(ctx context.Context, le client.LifecycleEvent) bool {
	p.mu.Lock()
	key, ok := p.byInst[le.InstanceId]
	was := p.pods[key]
	var seq uint64
	if was != nil {
		seq = was.seq
	}
	p.mu.Unlock()
	if !ok || was == nil {
		return true
	}
	var inst *client.Instance
	gone := le.Type == client.Deleted
	if !gone {
		r, err := p.api.GetInstanceWithResponse(ctx, le.InstanceId)
		if err != nil {
			p.log.Warn("cannot read an instance after its event", "instance", le.InstanceId, "err", err)
			return true
		}
		err = result(r.StatusCode(), r.Body, nil)
		switch {
		case isStatus(err, 404):
			gone = true
		case err != nil:
			p.log.Warn("cannot read an instance after its event", "instance", le.InstanceId, "err", err)
			return true
		default:
			inst = r.JSON200
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.pods[key]
	if e == nil || e.inst == nil || e.inst.Id != le.InstanceId {
		return true // no longer this instance's pod
	}
	if e != was || e.seq != seq {
		return false
	}
	if gone {
		if !e.deleted {
			p.instanceGone(key, e)
		}
		return true
	}
	p.setInstance(key, e, inst)
	p.notify(e)
	return true
}
