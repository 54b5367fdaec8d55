package kubelet

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"hypeman/internal/api/client"
	"hypeman/internal/kubelet/podmap"
)

// KubeletVersion is what the node reports as its kubelet version: the
// Kubernetes API it was built against, then ours.
func KubeletVersion(ours string) string { return "v1.37.2-hypeman-" + ours }

// NodeSpec describes how the node registers.
type NodeSpec struct {
	Name    string
	IP      string
	Port    int32
	Taint   *corev1.Taint // nil: none
	Version string        // our version
	MaxPods int64
}

// SetupNode fills n (virtual-kubelet's node object) with the labels, taint,
// addresses, endpoint, system info and conditions of a hypeman node.
func SetupNode(n *corev1.Node, s NodeSpec, now time.Time) {
	n.Name = s.Name
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	for k, v := range map[string]string{
		"type":                             "virtual-kubelet",
		"kubernetes.io/role":               "agent",
		"kubernetes.io/os":                 "linux",
		"kubernetes.io/arch":               "amd64",
		"kubernetes.io/hostname":           s.Name,
		"node.kubernetes.io/instance-type": "hypeman",
	} {
		n.Labels[k] = v
	}
	n.Spec.Taints = nil
	if s.Taint != nil {
		n.Spec.Taints = []corev1.Taint{*s.Taint}
	}
	n.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: s.IP},
		{Type: corev1.NodeHostName, Address: s.Name},
	}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = s.Port
	n.Status.NodeInfo = corev1.NodeSystemInfo{
		OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: KubeletVersion(s.Version),
		OSImage: "hypeman microVMs", ContainerRuntimeVersion: "hypeman://" + s.Version,
	}
	pods := *resource.NewQuantity(s.MaxPods, resource.DecimalSI)
	n.Status.Capacity = corev1.ResourceList{corev1.ResourcePods: pods}
	n.Status.Allocatable = corev1.ResourceList{corev1.ResourcePods: pods}
	t := metav1.Time{Time: now}
	n.Status.Conditions = []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "Starting", Message: "waiting for hypemand", LastHeartbeatTime: t, LastTransitionTime: t},
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", LastHeartbeatTime: t, LastTransitionTime: t},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", LastHeartbeatTime: t, LastTransitionTime: t},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", LastHeartbeatTime: t, LastTransitionTime: t},
		{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: "RouteCreated", Message: "hypemand networks its instances", LastHeartbeatTime: t, LastTransitionTime: t},
	}
}

// setReadyCondition sets the node's Ready condition.
func setReadyCondition(n *corev1.Node, ok bool, why string, now time.Time) {
	c := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "hypemand is healthy"}
	if !ok {
		c.Status, c.Reason, c.Message = corev1.ConditionFalse, "HypemanUnreachable", why
		if why == "" {
			c.Message = "hypemand does not answer"
		}
	}
	t := metav1.Time{Time: now}
	c.LastHeartbeatTime = t
	for i := range n.Status.Conditions {
		old := &n.Status.Conditions[i]
		if old.Type == corev1.NodeReady {
			c.LastTransitionTime = old.LastTransitionTime
			if old.Status != c.Status {
				c.LastTransitionTime = t
			}
			*old = c
			return
		}
	}
	c.LastTransitionTime = t
	n.Status.Conditions = append(n.Status.Conditions, c)
}

// Ping reports this process alive. hypemand's health is the Ready
// condition (see the package doc): a failing Ping would stop
// virtual-kubelet from writing any node status, NotReady included.
func (p *Provider) Ping(ctx context.Context) error { return ctx.Err() }

// NotifyNodeStatus registers virtual-kubelet's node status callback;
// nodeLoop delivers the current node to it.
func (p *Provider) NotifyNodeStatus(_ context.Context, cb func(*corev1.Node)) {
	p.nodeMu.Lock()
	p.notifyNode = cb
	p.nodeMu.Unlock()
	p.kickNode()
}

// Node is a copy of the node object as the provider last set it.
func (p *Provider) Node() *corev1.Node {
	p.nodeMu.Lock()
	defer p.nodeMu.Unlock()
	return p.node.DeepCopy()
}

// updateNode changes the node object and has nodeLoop push it.
func (p *Provider) updateNode(change func(*corev1.Node)) {
	p.nodeMu.Lock()
	change(p.node)
	p.nodeMu.Unlock()
	p.kickNode()
}

func (p *Provider) kickNode() {
	select {
	case p.nodeKick <- struct{}{}:
	default: // a push is due already; it will carry this change
	}
}

// nodeLoop pushes the node to virtual-kubelet after changes, outside any
// lock: virtual-kubelet's callback is a blocking send to its control loop,
// which must not stall the health and event loops. Changes made while a
// push waits coalesce (the next push carries the latest node); a push
// still blocked when ctx ends is abandoned so Run returns.
func (p *Provider) nodeLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.nodeKick:
		}
		p.nodeMu.Lock()
		cb, n := p.notifyNode, p.node.DeepCopy()
		p.nodeMu.Unlock()
		if cb == nil {
			continue // NotifyNodeStatus kicks again
		}
		pushed := make(chan struct{})
		go func() {
			defer close(pushed)
			cb(n)
		}()
		select {
		case <-pushed:
		case <-ctx.Done():
			return
		}
	}
}

// resourcesLoop refreshes capacity every ResourcesInterval.
func (p *Provider) resourcesLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.ResourcesInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.refreshResources(ctx)
		}
	}
}

// refreshResources sets capacity and allocatable from GET /resources:
// capacity is hypemand's effective limit, allocatable what is left after
// the instances not made by this kubelet.
func (p *Provider) refreshResources(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r, err := p.api.GetResourcesWithResponse(ctx)
	if err != nil {
		p.log.Debug("cannot read resources", "err", err)
		return
	}
	if err := result(r.StatusCode(), r.Body, nil); err != nil || r.JSON200 == nil {
		p.log.Warn("cannot read resources", "err", err)
		return
	}
	res := r.JSON200
	// Instances of this node: by tag (the allocation lists name and id).
	ours := map[string]bool{}
	tags := client.TagsFilter{podmap.TagNode: p.cfg.NodeName}
	if l, err := p.api.ListInstancesWithResponse(ctx, &client.ListInstancesParams{Tags: &tags}); err == nil && l.JSON200 != nil {
		for _, in := range *l.JSON200 {
			ours[in.Id] = true
		}
	} else {
		p.log.Warn("cannot list this node's instances for allocatable", "err", err)
		return
	}
	capacity, allocatable := nodeResources(res, ours, p.cfg.MaxPods)
	p.updateNode(func(n *corev1.Node) {
		n.Status.Capacity = capacity
		n.Status.Allocatable = allocatable
	})
}

// nodeResources computes capacity and allocatable.
func nodeResources(res *client.Resources, ours map[string]bool, maxPods int64) (capacity, allocatable corev1.ResourceList) {
	var cpu, mem, disk int64
	for _, a := range res.Allocations {
		if ours[deref(a.InstanceId)] {
			continue
		}
		cpu += int64(deref(a.Cpu))
		mem += deref(a.MemoryBytes)
		disk += deref(a.DiskBytes)
	}
	pods := *resource.NewQuantity(maxPods, resource.DecimalSI)
	capacity = corev1.ResourceList{
		corev1.ResourceCPU:              *resource.NewQuantity(res.Cpu.EffectiveLimit, resource.DecimalSI),
		corev1.ResourceMemory:           *resource.NewQuantity(res.Memory.EffectiveLimit, resource.BinarySI),
		corev1.ResourceEphemeralStorage: *resource.NewQuantity(res.Disk.EffectiveLimit, resource.BinarySI),
		corev1.ResourcePods:             pods,
	}
	allocatable = corev1.ResourceList{
		corev1.ResourceCPU:              *resource.NewQuantity(max(res.Cpu.EffectiveLimit-cpu, 0), resource.DecimalSI),
		corev1.ResourceMemory:           *resource.NewQuantity(max(res.Memory.EffectiveLimit-mem, 0), resource.BinarySI),
		corev1.ResourceEphemeralStorage: *resource.NewQuantity(max(res.Disk.EffectiveLimit-disk, 0), resource.BinarySI),
		corev1.ResourcePods:             pods,
	}
	return capacity, allocatable
}
