// Package podmap translates between Kubernetes pods and hypeman instances:
// a pod spec becomes a create request plus the volumes it needs, and an
// instance becomes the pod's status. It is pure (no I/O but the Resolver it
// is given) so every rule of the mapping is unit-tested without a cluster,
// and the provider (package kubelet) stays about transport and timing.
//
// CONTRACT SCAFFOLD (lead): the signatures below are what package kubelet
// codes against; the bodies are filled by the podmap work.
package podmap

import (
	"context"
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"

	"hypeman/internal/api/client"
)

// Tag keys every instance and volume made for a pod carries. Values use the
// Tags alphabet (`A-Za-z0-9 _.:/=+@-`), which pod UIDs, namespaces and names
// (DNS labels/subdomains) already satisfy.
const (
	TagNode      = "k8s.node"      // the virtual node (hypeman-kubelet --node-name)
	TagNamespace = "k8s.namespace" // pod namespace
	TagPod       = "k8s.pod"       // pod name
	TagUID       = "k8s.uid"       // pod UID: the identity used to find a pod's instance
	TagVolume    = "k8s.volume"    // on volumes: the pod volume's name
)

// Resolver reads the objects a pod refers to. Not-found errors are the
// client-go ones (apierrors.IsNotFound) so optional references can be told
// apart from failures.
type Resolver interface {
	ConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error)
	Secret(ctx context.Context, namespace, name string) (*corev1.Secret, error)
	// ServiceAccountToken returns a token bound to pod for a projected
	// serviceAccountToken volume source.
	ServiceAccountToken(ctx context.Context, pod *corev1.Pod, audience string, expirationSeconds int64) (string, error)
}

// Options are the node-wide inputs of the translation.
type Options struct {
	NodeName string
	// NodeIP is the node's address (status.hostIP, and the downward API's status.hostIP).
	NodeIP string
	// EmptyDirSize is the size of an emptyDir without sizeLimit (bytes).
	EmptyDirSize int64
}

// Plan is everything needed to run one pod.
type Plan struct {
	// Instance is the create request without Volumes: the provider creates
	// Plan.Volumes first and appends one client.VolumeMount per Mount.
	Instance client.CreateInstanceRequest
	Volumes  []Volume
	// Warnings are accepted-but-not-enforced fields, for pod events.
	Warnings []string
}

// Volume is one hypeman volume a pod needs.
type Volume struct {
	// Name is the pod's volume name (spec.volumes[].name).
	Name string
	// SizeBytes is the volume size (rounded up to whole GB by the provider).
	SizeBytes int64
	// Files is nil for an empty writable volume (emptyDir) and the content of
	// a read-only files volume (configMap, secret, projected, downwardAPI),
	// created from an archive of them.
	Files []File
	// Mount is where the container mounts it.
	Mount Mount
}

// File is one file of a files volume.
type File struct {
	Path string // relative, clean, no ".."
	Mode int64  // permission bits
	Data []byte
}

// Mount is a volume's place in the guest.
type Mount struct {
	Path     string
	ReadOnly bool
}

// UnsupportedError says which field of a pod cannot run on hypeman and why;
// the pod ends Failed with Reason and this message instead of starting
// partially.
type UnsupportedError struct {
	Field  string // e.g. "spec.containers[1]"
	Reason string
}

func (e *UnsupportedError) Error() string { return e.Field + ": " + e.Reason }

// ErrNotBuilt marks the scaffold (removed when podmap is filled in).
var ErrNotBuilt = errors.New("podmap: not built yet")

// Translate builds the plan for pod. Errors: *UnsupportedError for what
// cannot map, a wrapped Resolver error for a missing non-optional
// reference (the provider retries those).
func Translate(ctx context.Context, pod *corev1.Pod, r Resolver, opts Options) (*Plan, error) {
	return nil, ErrNotBuilt
}

// Tags returns the tags of pod's instance and volumes on node.
func Tags(pod *corev1.Pod, node string) map[string]string {
	return map[string]string{TagNode: node, TagNamespace: pod.Namespace, TagPod: pod.Name, TagUID: string(pod.UID)}
}

// InstanceName is the hypeman name for pod (valid, at most 63 characters,
// stable for a pod).
func InstanceName(pod *corev1.Pod) string { return "" }

// Status is pod's status given its instance (nil: not created yet).
// healthy reports hypemand reachability: false makes the pod and container
// not ready with reason NodeUnreachable-like wording, keeping the rest.
func Status(pod *corev1.Pod, inst *client.Instance, reachable bool, now time.Time) corev1.PodStatus {
	return corev1.PodStatus{}
}

// Failed is the terminal status of a pod that cannot run (reason is a
// CamelCase word such as "Unsupported" or "OutOfmemory").
func Failed(pod *corev1.Pod, reason, message string, now time.Time) corev1.PodStatus {
	return corev1.PodStatus{Phase: corev1.PodFailed, Reason: reason, Message: message}
}
