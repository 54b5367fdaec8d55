// Package kubelet is hypeman-kubelet: a virtual-kubelet provider that makes
// one hypemand a Kubernetes node. It owns the transport and timing of that
// job — registering the node (labels, taint, capacity from GET /resources,
// Ready from GET /health, leases), turning pod create/delete calls into
// hypemand API calls (volumes first, then the instance), keeping an
// in-memory index of pod ↔ instance rebuilt from instance tags, following
// hypemand's event stream to push pod status, and serving the kubelet API
// (logs, exec) by relaying to hypemand's log SSE and exec WebSocket.
//
// Why it is shaped this way:
//   - What a pod means as an instance, and what an instance means as pod
//     status, is package podmap's (pure, unit-tested rules); this package
//     reaches it through the small Mapper interface so its own tests use a
//     trivial mapping and stay about calls, retries and ordering.
//   - hypemand is reached only through its public API (the generated client
//     in internal/api/client, internal/api/sse, internal/api/execws): a
//     hypeman-kubelet can run on another machine than its hypemand, and the
//     API stays the one contract.
//   - Identity lives in hypemand, not here: every instance and volume made
//     for a pod carries podmap.Tags, the pod UID tag is the key, so create is
//     idempotent (an existing instance is adopted) and a restart of either
//     process re-syncs from GET /instances?tags[k8s.node]=<node>. Nothing is
//     persisted by this process.
//   - Status is pushed (virtual-kubelet's PodNotifier) from one goroutine
//     reading GET /events; there is no per-pod polling loop. A reset event
//     or a reconnect re-lists.
//   - hypemand's reachability is a node condition, not virtual-kubelet's
//     Ping: Ping failing would stop virtual-kubelet from writing node status
//     at all, so Ping only reports this process alive and the health loop
//     turns two missed GET /health into Ready=False (HypemanUnreachable) and
//     not-ready pods.
package kubelet
