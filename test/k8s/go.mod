// Module k8s is the Kubernetes test harness. It is a module of its own so the
// hypeman module never depends on k8s.io/kubernetes; the pinned control-plane
// sources live in the nested modules under pins/.
module hypeman/test/k8s

go 1.26.0
