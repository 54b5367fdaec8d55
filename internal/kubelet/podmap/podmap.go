// Package podmap translates between Kubernetes pods and hypeman instances:
// a pod spec becomes a create request plus the volumes it needs, and an
// instance becomes the pod's status. It is pure (no I/O but the Resolver it
// is given) so every rule of the mapping is unit-tested without a cluster,
// and the provider (package kubelet) stays about transport and timing.
//
// # What maps
//
// The table below is the README's "what maps" list; the refused and warned
// rows are the rules table in rules.go (TestRulesDocumented keeps the two
// in step). "Refused" pods end Failed with reason Unsupported and the field
// path; "warned" fields are accepted, not enforced, and reported as pod
// events.
//
//	Pod field                                       | On hypeman
//	------------------------------------------------|--------------------------------------------------------------
//	metadata namespace/name                         | instance name "<namespace>-<name>" (lowercased, [a-z0-9-], ≤ 63;
//	                                                | "-<8 hex of sha256(ns/name)>" appended when changed or shortened)
//	metadata uid, node                              | tags k8s.uid (the identity), k8s.namespace, k8s.pod, k8s.node
//	containers[0].image                             | image, as given
//	containers[0].command / args                    | entrypoint / cmd, with $(VAR) expansion ($$ escapes; unknown stays)
//	containers[0].workingDir                        | working_dir (absolute; cleaned; created in the guest when missing)
//	containers[0].env, envFrom                      | env: envFrom first, then env; configMap/secret refs (optional
//	                                                | honoured), fieldRef metadata.name/namespace/uid/labels['k']/
//	                                                | annotations['k'], spec.nodeName, spec.serviceAccountName,
//	                                                | status.hostIP(s) (node IP), resourceFieldRef (unset limits =
//	                                                | the VM's size/vcpus/overlay); envFrom keys hypemand refuses are
//	                                                | skipped with a warning; a missing non-optional ref is retried
//	containers[0].resources memory                  | size = requests, else limits (MiB-rounded, ≥ 64 MiB); else default
//	containers[0].resources cpu                     | vcpus = ceil(requests, else limits), ≥ 1; else default
//	containers[0].resources ephemeral-storage       | overlay_size = request, else limit
//	spec.resources (pod-level)                      | used when the container sets no resources
//	spec.restartPolicy                              | restart_policy always/on_failure/never, backoff 1s, max 5m,
//	                                                | stable_after 10m
//	spec.terminationGracePeriodSeconds              | stop_timeout (default 30s; clamped to 1s..1h with a warning)
//	containers[0].livenessProbe                     | health_check: httpGet (port number or name, path, scheme),
//	                                                | tcpSocket, exec; period → interval, timeout (≤ interval),
//	                                                | initialDelay → start_period, thresholds; Ready needs healthy
//	containers[0].readinessProbe (without a         | the same health_check with report_only: true (health_status
//	livenessProbe: a mapped readinessProbe)         | is reported, never a restart); Ready needs healthy
//	spec.volumes emptyDir                           | empty volume of sizeLimit (else Options.EmptyDirSize, 1 GiB),
//	                                                | mounted read-write unless the mount is readOnly
//	spec.volumes configMap, secret, downwardAPI,    | read-only volume made from the files kubelet would write
//	projected (configMap, secret, downwardAPI,      | (items, defaultMode/mode, default 0644), ≥ 1 GiB; the
//	serviceAccountToken)                            | kube-api-access-* volume maps; unmounted volumes are ignored
//	spec.readinessGates                             | Ready also needs those conditions True
//	scheduling fields (nodeSelector, affinity,      | used by kube-scheduler, ignored here
//	tolerations, priority, runtimeClassName, …)     |
//
// Refused:
//
//	spec.containers (more than one)                 | a hypeman pod runs one container per VM
//	spec.initContainers                             | same
//	spec.ephemeralContainers                        | same
//	spec.hostNetwork                                | a VM has its own network stack
//	spec.hostPID                                    | a VM has its own kernel
//	spec.hostIPC                                    | a VM has its own kernel
//	spec.os.name (not linux)                        | Linux guests only
//	spec.resourceClaims                             | no dynamic resource allocation
//	spec.hostAliases                                | no /etc/hosts entries at create
//	spec.securityContext.runAsUser, runAsGroup      | the image's user runs the program (also on the container)
//	spec.securityContext.sysctls                    | no guest kernel parameters at create
//	securityContext.privileged                      | needs the host's kernel
//	containers[0].restartPolicy, restartPolicyRules | use the pod's restartPolicy
//	containers[0].ports[].hostPort                  | (and hostIP) the instance has its own IP
//	containers[0].volumeDevices                     | no raw block devices
//	containers[0].volumeMounts[].subPath, subPathExpr | whole volumes only
//	containers[0].volumeMounts[] (a volume mounted twice) | one mount per volume
//	containers[0].volumeMounts[].mountPath (/, under /proc, /sys, /dev, or nested) | separate paths
//	spec.volumes[] other than emptyDir, configMap, secret, downwardAPI, projected (hostPath, persistentVolumeClaim, …) | only these map (when mounted)
//	spec.volumes[].projected.sources[].clusterTrustBundle, podCertificate | not supported
//	containers[0].env[].valueFrom.fieldRef status.podIP, status.podIPs | the IP comes after the env is fixed
//	containers[0].env[].valueFrom.fileKeyRef        | not supported
//	containers[0].livenessProbe (or a mapped readinessProbe): grpc | http, tcp or exec only
//	containers[0].livenessProbe (or a mapped readinessProbe): httpGet.host, httpHeaders; tcpSocket.host | the instance itself, no headers
//
// Warned (accepted, not enforced):
//
//	containers[0].readinessProbe (with a livenessProbe) | not run; Ready follows the liveness check
//	containers[0].startupProbe                      | not run; initialDelaySeconds is the start period
//	containers[0].livenessProbe (or a mapped readinessProbe): httpGet (status 200–399) | hypeman wants exactly 200
//	containers[0].livenessProbe.terminationGracePeriodSeconds | the stop_timeout is used
//	containers[0].lifecycle (postStart, preStop, stopSignal) | not run; SIGTERM then SIGKILL
//	containers[0].imagePullPolicy (Always, Never)   | hypemand pulls what it lacks, reuses what it has
//	containers[0].stdin, tty                        | no terminal; use kubectl exec
//	securityContext.runAsNonRoot                    | the image's user decides
//	securityContext: capabilities, seccompProfile, seLinuxOptions, appArmorProfile, readOnlyRootFilesystem, allowPrivilegeEscalation, procMount, fsGroup, supplementalGroups | the VM boundary isolates instead
//	spec.dnsPolicy (ClusterFirst, None), dnsConfig  | the guest uses hypemand's DNS
//	spec.enableServiceLinks                         | no service env vars (set false to silence)
//	spec.hostname, subdomain, setHostnameAsFQDN     | hypeman names the guest
//	spec.activeDeadlineSeconds                      | not enforced
//	spec.volumes[].emptyDir.medium Memory           | a disk, not RAM
//	containers[0].volumeMounts[] emptyDir at /dev/shm | not mounted; the guest has its own
//	spec.volumes[].projected.sources[].serviceAccountToken.expirationSeconds (other than 3607) | not rotated
//	containers[0].volumeMounts[].mountPropagation   | guest mounts are private
//
// Status (StatusOn documents the rules): phase, container state with exit
// code and message, image = the instance's (a changed spec image is not
// applied), restartCount from restart_status.restarts, pod IP = instance
// IP, the five kubelet conditions; a pod that has run stays Running while
// it restarts; terminal phases never change.
package podmap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"hypeman/internal/api/client"
	"hypeman/internal/units"
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

// Translate builds the plan for pod. Errors: *UnsupportedError for what
// cannot map, a wrapped Resolver error for a missing non-optional
// reference (the provider retries those; IsConfigError tells them apart
// from other Resolver failures).
func Translate(ctx context.Context, pod *corev1.Pod, r Resolver, opts Options) (*Plan, error) {
	warnings, err := checkRules(pod)
	if err != nil {
		return nil, err
	}
	c := &pod.Spec.Containers[0]
	sh, w, err := shapeOf(pod)
	if err != nil {
		return nil, err
	}
	warnings = append(warnings, w...)
	o := &objects{ctx: ctx, r: r, ns: pod.Namespace, configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
	env, w, err := buildEnv(o, pod, opts, sh)
	if err != nil {
		return nil, err
	}
	warnings = append(warnings, w...)
	hc, err := healthCheck(c)
	if err != nil {
		return nil, err
	}
	vols, err := volumes(o, pod, opts, sh)
	if err != nil {
		return nil, err
	}
	stop, w := stopTimeout(pod)
	warnings = append(warnings, w...)
	wd, err := workingDir(c)
	if err != nil {
		return nil, err
	}

	tags := client.Tags(Tags(pod, opts.NodeName))
	req := client.CreateInstanceRequest{
		Name:          InstanceName(pod),
		Image:         c.Image,
		Tags:          &tags,
		RestartPolicy: restartPolicy(pod),
		StopTimeout:   &stop,
		HealthCheck:   hc,
		WorkingDir:    wd,
	}
	if len(c.Command) > 0 {
		req.Entrypoint = ptr(expandAll(c.Command, env))
	}
	if len(c.Args) > 0 {
		req.Cmd = ptr(expandAll(c.Args, env))
	}
	if len(env) > 0 {
		req.Env = &env
	}
	if sh.memory > 0 {
		req.Size = ptr(units.FormatSize(sh.memory))
	}
	if sh.vcpus > 0 {
		req.Vcpus = ptr(sh.vcpus)
	}
	if sh.overlay > 0 {
		req.OverlaySize = ptr(units.FormatSize(sh.overlay))
	}
	return &Plan{Instance: req, Volumes: vols, Warnings: warnings}, nil
}

// restartPolicy maps the pod's restartPolicy (default Always) with
// Kubernetes-like pacing: 1s first delay doubling to CrashLoopBackOff's 5m
// cap, a 10m run resetting the series.
func restartPolicy(pod *corev1.Pod) *client.RestartPolicy {
	pol := client.RestartAlways
	switch pod.Spec.RestartPolicy {
	case corev1.RestartPolicyOnFailure:
		pol = client.RestartOnFailure
	case corev1.RestartPolicyNever:
		pol = client.RestartNever
	}
	return &client.RestartPolicy{Policy: &pol, Backoff: ptr("1s"), MaxBackoff: ptr("5m"), StableAfter: ptr("10m")}
}

// stopTimeout maps terminationGracePeriodSeconds (default 30) into
// hypemand's 1s..1h stop_timeout, warning when it had to clamp.
func stopTimeout(pod *corev1.Pod) (string, []string) {
	const field = "spec.terminationGracePeriodSeconds"
	g := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		g = *pod.Spec.TerminationGracePeriodSeconds
	}
	switch {
	case g < 1:
		return "1s", []string{fmt.Sprintf("%s: %d is below hypeman's minimum stop timeout; the program gets 1s between SIGTERM and SIGKILL", field, g)}
	case g > 3600:
		return "1h", []string{fmt.Sprintf("%s: %d is above hypeman's maximum stop timeout; the program gets 1h between SIGTERM and SIGKILL", field, g)}
	}
	return secs(g), nil
}

// maxWorkingDir is hypemand's working_dir limit (PATH_MAX).
const maxWorkingDir = 4096

// workingDir maps containers[0].workingDir (nil: the image's WORKDIR).
// hypemand wants an absolute, clean path: an unclean one is cleaned (the
// same directory); a relative one is refused, as there is no runtime to
// resolve it against the image's WORKDIR.
func workingDir(c *corev1.Container) (*string, error) {
	const field = ctr + ".workingDir"
	switch wd := c.WorkingDir; {
	case wd == "":
		return nil, nil
	case !strings.HasPrefix(wd, "/"):
		return nil, &UnsupportedError{Field: field, Reason: fmt.Sprintf("%q is relative; hypeman needs an absolute working directory", wd)}
	case len(wd) > maxWorkingDir:
		return nil, &UnsupportedError{Field: field, Reason: fmt.Sprintf("longer than hypeman's %d bytes", maxWorkingDir)}
	default:
		return ptr(path.Clean(wd)), nil
	}
}

// Tags returns the tags of pod's instance and volumes on node.
func Tags(pod *corev1.Pod, node string) map[string]string {
	return map[string]string{TagNode: node, TagNamespace: pod.Namespace, TagPod: pod.Name, TagUID: string(pod.UID)}
}

// maxNameLen is hypemand's limit on instance and volume names.
const maxNameLen = 63

// hypemanName makes s a valid hypemand name (lowercase letters, digits and
// dashes, at most 63, no dash at either end): other characters become
// dashes. A name that had to change (or be cut) gets "-" and 8 hex digits
// of sha256(key) appended, so distinct inputs keep distinct names;
// fallback prefixes the hash when nothing of s is left.
func hypemanName(s, key, fallback string) string {
	name := strings.Trim(strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, s), "-")
	if name == s && len(name) <= maxNameLen && name != "" {
		return name
	}
	return withHash(name, key, fallback)
}

// withHash appends "-" and 8 hex digits of sha256(key) to name (cut to
// fit), unless name already ends with them.
func withHash(name, key, fallback string) string {
	sum := sha256.Sum256([]byte(key))
	suffix := hex.EncodeToString(sum[:4])
	if strings.HasSuffix(name, "-"+suffix) {
		return name
	}
	if len(name) > maxNameLen-len(suffix)-1 {
		name = name[:maxNameLen-len(suffix)-1]
	}
	name = strings.TrimRight(name, "-")
	if name == "" {
		return fallback + "-" + suffix
	}
	return name + "-" + suffix
}

// InstanceName is the hypeman name for pod (valid, at most 63 characters,
// stable for a pod): "<namespace>-<name>" lowercased with characters
// outside [a-z0-9-] turned into '-'. When that is not the plain
// "<namespace>-<name>" (changed or shortened), "-" and 8 hex digits of
// sha256("<namespace>/<name>") are appended so distinct pods keep distinct
// names.
func InstanceName(pod *corev1.Pod) string {
	return hypemanName(pod.Namespace+"-"+pod.Name, podHashKey(pod), "pod")
}

// AltInstanceName is InstanceName with the hash suffix always appended.
// "<namespace>-<name>" is ambiguous (namespace "a-b" pod "c" and namespace
// "a" pod "b-c" both give "a-b-c"); the provider uses this name when the
// plain one is taken by an instance of another pod (another k8s.uid tag).
func AltInstanceName(pod *corev1.Pod) string {
	return withHash(InstanceName(pod), podHashKey(pod), "pod")
}

func podHashKey(pod *corev1.Pod) string { return pod.Namespace + "/" + pod.Name }

// VolumeName is the hypeman name of the volume made for the pod volume vol
// of the pod with UID uid: "<first 13 characters of the UID>-<vol>", made
// valid like InstanceName (hashed when changed or cut). It comes from the
// UID, not the instance name, so pods whose instance names collide never
// collide on volume names.
func VolumeName(uid, vol string) string {
	s := uid[:min(len(uid), 13)] + "-" + vol
	return hypemanName(s, s, "k8s")
}
