package kubelet

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"

	"hypeman/internal/api/client"
	"hypeman/internal/api/execws"
	"hypeman/internal/kubelet/podmap"
)

// Mapper is the pod ↔ instance translation (package podmap's functions;
// tests give a trivial one).
type Mapper interface {
	Translate(ctx context.Context, pod *corev1.Pod, r podmap.Resolver, opts podmap.Options) (*podmap.Plan, error)
	InstanceName(pod *corev1.Pod) string
	// AltInstanceName is used when InstanceName is taken by another pod's
	// instance.
	AltInstanceName(pod *corev1.Pod) string
	Status(pod *corev1.Pod, inst *client.Instance, reachable bool, now time.Time) corev1.PodStatus
	Failed(pod *corev1.Pod, reason, message string, now time.Time) corev1.PodStatus
}

// PodMap is the Mapper of package podmap; NodeIP is the pods' hostIP.
type PodMap struct{ NodeIP string }

func (PodMap) Translate(ctx context.Context, pod *corev1.Pod, r podmap.Resolver, opts podmap.Options) (*podmap.Plan, error) {
	return podmap.Translate(ctx, pod, r, opts)
}
func (PodMap) InstanceName(pod *corev1.Pod) string    { return podmap.InstanceName(pod) }
func (PodMap) AltInstanceName(pod *corev1.Pod) string { return podmap.AltInstanceName(pod) }
func (m PodMap) Status(pod *corev1.Pod, inst *client.Instance, reachable bool, now time.Time) corev1.PodStatus {
	return podmap.StatusOn(pod, inst, reachable, now, m.NodeIP)
}
func (PodMap) Failed(pod *corev1.Pod, reason, message string, now time.Time) corev1.PodStatus {
	return podmap.Failed(pod, reason, message, now)
}

// ProviderConfig configures a Provider.
type ProviderConfig struct {
	NodeName string
	NodeIP   string
	// API is the hypemand client; Dialer opens its exec WebSockets.
	API    *client.ClientWithResponses
	Dialer execws.Dialer
	Mapper Mapper
	// Resolver reads ConfigMaps, Secrets and service account tokens.
	Resolver podmap.Resolver
	// Recorder receives pod events (translation warnings).
	Recorder record.EventRecorder
	// Pods removes a pod object whose deletion was requested once its
	// instance is gone, as kubelet does after the containers stopped; nil
	// leaves it to virtual-kubelet, which waits out the grace period.
	Pods   PodRemover
	Logger *slog.Logger
	// Node is the node object the provider keeps up to date (status).
	Node *corev1.Node
	// MaxPods is the node's pods capacity.
	MaxPods int64
	// HealthInterval is the GET /health period (two misses: unreachable).
	HealthInterval time.Duration
	// ResourcesInterval is the capacity refresh period (default 30s).
	ResourcesInterval time.Duration
	// EmptyDirSize is the size of an emptyDir without sizeLimit (default 1 GiB).
	EmptyDirSize int64
	// RetryMin and RetryMax bound the backoff of a create that failed for a
	// reason that may pass (default 2s and 5m).
	RetryMin, RetryMax time.Duration
	// ReconnectMin and ReconnectMax bound the event stream's reconnect
	// delay (default 500ms and 5s).
	ReconnectMin, ReconnectMax time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// PodRemover deletes a pod object (grace period 0, only if its UID is
// still uid).
type PodRemover interface {
	RemovePod(ctx context.Context, namespace, name string, uid types.UID) error
}

// Provider is the virtual-kubelet provider: PodLifecycleHandler,
// PodNotifier, NodeProvider and the kubelet API handlers.
type Provider struct {
	cfg ProviderConfig
	api *client.ClientWithResponses
	log *slog.Logger
	now func() time.Time

	retries chan string // pod keys whose create is due again
	// stopped is closed when Run's context ends.
	stopped  chan struct{}
	stopOnce sync.Once

	mu        sync.Mutex
	pods      map[string]*entry // by namespace/name
	byInst    map[string]string // instance id → pod key
	removing  map[string]bool   // instance ids being removed in the background
	notifyPod func(*corev1.Pod)
	pending   map[string]*corev1.Pod // statuses notifyLoop delivers
	kick      chan struct{}
	reachable bool
	misses    int
	// refusals counts GET /events refused in a row (refusedStatus the
	// last status, for logging once per status); refused is set once
	// they persist and makes health checks misses.
	refusals      int
	refusedStatus int
	refused       error
	// seq counts setInstance calls; a re-sync applies its listing only to
	// entries not updated since the listing started (see resync).
	seq uint64

	nodeMu     sync.Mutex
	node       *corev1.Node
	notifyNode func(*corev1.Node)
	nodeKick   chan struct{} // a node push is due (nodeLoop)
	resources  *client.Resources
}

// entry is what the provider knows of one pod.
type entry struct {
	pod *corev1.Pod
	// orphan: the pod was reconstructed from an instance's tags (no spec).
	orphan bool
	inst   *client.Instance
	// fixed is a status set by the provider itself (Failed before an
	// instance ran, config error while waiting, final status after
	// delete); nil means podmap.Status of inst.
	fixed *corev1.PodStatus
	// creating: a create is running; retry: when the next one is due.
	creating bool
	backoff  time.Duration
	retry    *time.Timer
	deleted  bool
	// deletedPod is the pod DeletePod was given (deletion timestamp,
	// grace period), kept so a failed removal can be finished later;
	// deleting: a DeletePod is working on it.
	deletedPod *corev1.Pod
	deleting   bool
	// seq is the Provider.seq of the last setInstance.
	seq uint64
}

// NewProvider returns a provider; Run starts its loops.
func NewProvider(cfg ProviderConfig) *Provider {
	if cfg.Mapper == nil {
		cfg.Mapper = PodMap{NodeIP: cfg.NodeIP}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = 2 * time.Second
	}
	if cfg.ResourcesInterval <= 0 {
		cfg.ResourcesInterval = 30 * time.Second
	}
	if cfg.EmptyDirSize <= 0 {
		cfg.EmptyDirSize = 1 << 30
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 2 * time.Second
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 5 * time.Minute
	}
	if cfg.ReconnectMin <= 0 {
		cfg.ReconnectMin = 500 * time.Millisecond
	}
	if cfg.ReconnectMax <= 0 {
		cfg.ReconnectMax = 5 * time.Second
	}
	if cfg.Recorder == nil {
		cfg.Recorder = &record.FakeRecorder{}
	}
	if cfg.Node == nil {
		cfg.Node = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: cfg.NodeName}}
	}
	return &Provider{
		cfg:       cfg,
		api:       cfg.API,
		log:       cfg.Logger,
		now:       cfg.Now,
		retries:   make(chan string, 64),
		stopped:   make(chan struct{}),
		pods:      map[string]*entry{},
		byInst:    map[string]string{},
		removing:  map[string]bool{},
		pending:   map[string]*corev1.Pod{},
		kick:      make(chan struct{}, 1),
		nodeKick:  make(chan struct{}, 1),
		reachable: true,
		node:      cfg.Node.DeepCopy(), // virtual-kubelet reads cfg.Node without our lock
	}
}

// Run runs the provider's loops (health, events, capacity, create
// retries) until ctx ends. Call Start first so the index is filled before
// virtual-kubelet asks for pods.
func (p *Provider) Run(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { p.stopOnce.Do(func() { close(p.stopped) }) })
	defer stop()
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){p.notifyLoop, p.nodeLoop, p.healthLoop, p.eventLoop, p.resourcesLoop, p.retryLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	wg.Wait()
}

// Start fills the index from hypemand and the node status from its health
// and resources (an unreachable hypemand is not an error: the node starts
// NotReady).
func (p *Provider) Start(ctx context.Context) {
	if err := p.ping(ctx); err != nil {
		p.log.Warn("hypemand unreachable at start", "err", err)
		p.setReachable(ctx, false, err.Error())
		return
	}
	p.setReachable(ctx, true, "")
	if err := p.resync(ctx); err != nil {
		p.log.Warn("initial re-sync failed", "err", err)
	}
	p.refreshResources(ctx)
}

func podKey(namespace, name string) string { return namespace + "/" + name }

// podWithStatus is a copy of e's pod with its current status. Called with
// p.mu held.
func (p *Provider) podWithStatus(e *entry) *corev1.Pod {
	pod := e.pod.DeepCopy()
	if e.orphan {
		// No spec to translate: enough for virtual-kubelet to delete it.
		pod.Status = corev1.PodStatus{Phase: corev1.PodUnknown}
		if e.inst != nil && e.inst.State == client.Running {
			pod.Status.Phase = corev1.PodRunning
		}
		return pod
	}
	if e.fixed != nil {
		pod.Status = *e.fixed.DeepCopy()
	} else {
		pod.Status = p.cfg.Mapper.Status(e.pod, e.inst, p.reachable, p.now())
		// The next status builds on this one: podmap keeps transition
		// times, the start time and, above all, a terminal phase from the
		// pod's previous status (and an unreachable hypemand keeps the
		// phase it last reported).
		e.pod.Status = *pod.Status.DeepCopy()
	}
	return pod
}

// notify queues e's status for virtual-kubelet. Called with p.mu held;
// the callback may block, so notifyLoop calls it outside the lock, latest
// status per pod first-come (a newer status replaces a queued one).
func (p *Provider) notify(e *entry) {
	if e.orphan {
		return
	}
	p.pending[podKey(e.pod.Namespace, e.pod.Name)] = p.podWithStatus(e)
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// notifyLoop delivers queued statuses.
func (p *Provider) notifyLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		p.mu.Lock()
		cb := p.notifyPod
		if cb == nil {
			p.mu.Unlock()
			continue
		}
		batch := p.pending
		p.pending = map[string]*corev1.Pod{}
		p.mu.Unlock()
		keys := make([]string, 0, len(batch))
		for k := range batch {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			cb(batch[k])
		}
	}
}

// NotifyPods registers virtual-kubelet's status callback.
func (p *Provider) NotifyPods(_ context.Context, cb func(*corev1.Pod)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.notifyPod = cb
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// GetPod returns the pod as the provider knows it (with status).
func (p *Provider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.pods[podKey(namespace, name)]
	if e == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	return p.podWithStatus(e), nil
}

// GetPodStatus returns the pod's status.
func (p *Provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods returns every pod the provider knows, including those
// reconstructed from instances whose pod is gone (virtual-kubelet then
// deletes them).
func (p *Provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := make([]string, 0, len(p.pods))
	for k := range p.pods {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*corev1.Pod, 0, len(keys))
	for _, k := range keys {
		out = append(out, p.podWithStatus(p.pods[k]))
	}
	return out, nil
}

// UpdatePod: Kubernetes lets only a few fields of a running pod change
// (image, activeDeadlineSeconds, tolerations, labels/annotations); none of
// them is applied to a running VM (a changed image gets a Warning event
// ImageChangeIgnored; the status keeps reporting the image that runs). It
// adopts the pod when the provider only knew it from tags, and replaces
// the instance when the pod was recreated under the same name.
func (p *Provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	e := p.pods[podKey(pod.Namespace, pod.Name)]
	switch {
	case e == nil:
		p.mu.Unlock()
		return p.CreatePod(ctx, pod)
	case e.pod.UID != pod.UID:
		old := e.pod
		p.mu.Unlock()
		p.log.Info("pod recreated under the same name: replacing its instance", "pod", podKey(pod.Namespace, pod.Name), "old_uid", old.UID, "uid", pod.UID)
		if err := p.DeletePod(ctx, old); err != nil {
			return err
		}
		return p.CreatePod(ctx, pod)
	case e.orphan:
		e.pod, e.orphan = pod.DeepCopy(), false
		p.notify(e)
	default:
		p.log.Debug("pod update not applied (a running VM keeps its spec)", "pod", podKey(pod.Namespace, pod.Name))
		if img := podImage(pod); e.inst != nil && e.inst.Image != "" && img != e.inst.Image && img != podImage(e.pod) {
			p.cfg.Recorder.Eventf(pod, corev1.EventTypeWarning, "ImageChangeIgnored",
				"image %s is not applied: the VM keeps running %s; delete the pod to run the new image", img, e.inst.Image)
		}
		e.pod = pod.DeepCopy()
	}
	p.mu.Unlock()
	return nil
}

// podImage is the image of pod's (only) container.
func podImage(pod *corev1.Pod) string {
	if len(pod.Spec.Containers) == 0 {
		return ""
	}
	return pod.Spec.Containers[0].Image
}

// orphanPod is the minimal pod of an instance whose pod the provider has
// not seen: enough for virtual-kubelet to look it up and delete it.
func orphanPod(tags map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Namespace: tags[podmap.TagNamespace],
		Name:      tags[podmap.TagPod],
		UID:       types.UID(tags[podmap.TagUID]),
	}}
}

func instTags(inst *client.Instance) map[string]string {
	if inst == nil || inst.Tags == nil {
		return nil
	}
	return *inst.Tags
}

// setInstance records inst as e's instance. Called with p.mu held.
func (p *Provider) setInstance(key string, e *entry, inst *client.Instance) {
	if e.inst != nil && (inst == nil || e.inst.Id != inst.Id) {
		delete(p.byInst, e.inst.Id)
	}
	e.inst = inst
	if inst != nil {
		p.byInst[inst.Id] = key
	}
	p.seq++
	e.seq = p.seq
}
