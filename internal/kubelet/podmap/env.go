package podmap

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
)

// ConfigError is a missing non-optional ConfigMap, Secret or key that the
// pod refers to. The pod is not broken: the object may appear later, so the
// provider retries (kubelet reports such a container as
// CreateContainerConfigError). Err is the Resolver's error when it said
// not-found (apierrors.IsNotFound sees through ConfigError).
type ConfigError struct {
	Field string // e.g. "spec.containers[0].env[2].valueFrom.configMapKeyRef"
	Err   error
}

func (e *ConfigError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// IsConfigError reports whether err (from Translate) is a missing
// non-optional reference, to be retried rather than failed.
func IsConfigError(err error) bool {
	var ce *ConfigError
	return errors.As(err, &ce)
}

// objects caches what the Resolver returned during one Translate, so a
// ConfigMap referred to by env and a volume is read once and seen the same.
type objects struct {
	ctx        context.Context
	r          Resolver
	ns         string
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
}

// configMap returns the ConfigMap (nil when it is missing and optional).
func (o *objects) configMap(field, name string, optional *bool) (*corev1.ConfigMap, error) {
	return cached(o, o.configMaps, o.r.ConfigMap, field, "configmap", name, optional)
}

// secret returns the Secret (nil when it is missing and optional).
func (o *objects) secret(field, name string, optional *bool) (*corev1.Secret, error) {
	return cached(o, o.secrets, o.r.Secret, field, "secret", name, optional)
}

func cached[T any](o *objects, cache map[string]*T, get func(context.Context, string, string) (*T, error), field, kind, name string, optional *bool) (*T, error) {
	if v, ok := cache[name]; ok {
		return v, nil
	}
	v, err := get(o.ctx, o.ns, name)
	if err != nil {
		return nil, o.missing(field, kind, name, optional, err)
	}
	cache[name] = v
	return v, nil
}

// missing turns a Resolver error into nil (not found, optional), a
// *ConfigError (not found) or a wrapped failure.
func (o *objects) missing(field, kind, name string, optional *bool, err error) error {
	switch {
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("%s: read %s %s/%s: %w", field, kind, o.ns, name, err)
	case optional != nil && *optional:
		return nil
	}
	return &ConfigError{Field: field, Err: err}
}

// missingKey is the error of a non-optional key absent from an existing
// object (nil when optional).
func missingKey(field, kind, ns, name, key string, optional *bool) error {
	if optional != nil && *optional {
		return nil
	}
	return &ConfigError{Field: field, Err: fmt.Errorf("%s %s/%s has no key %q", kind, ns, name, key)}
}

// envKeyOK is hypemand's rule for env names (what it would refuse with 400).
func envKeyOK(k string) bool {
	return k != "" && !strings.ContainsAny(k, "=\x00") && len(k) <= 256
}

// buildEnv resolves the container's environment the way kubelet orders it:
// envFrom sources first, in order, then env entries, each overriding what
// came before; env values expand $(VAR) against the variables defined so
// far. Keys hypemand would refuse (empty, with '=' or NUL) are skipped with
// a warning.
func buildEnv(o *objects, pod *corev1.Pod, opts Options, sh shape) (map[string]string, []string, error) {
	c := &pod.Spec.Containers[0]
	env := map[string]string{}
	var warnings []string
	addFrom := func(field, prefix string, data map[string]string) {
		var bad []string
		for _, k := range sortedKeys(data) {
			if !envKeyOK(prefix + k) {
				bad = append(bad, strconv.Quote(prefix+k))
				continue
			}
			env[prefix+k] = data[k]
		}
		if len(bad) > 0 {
			warnings = append(warnings, fmt.Sprintf("%s: skipped keys that are not valid environment variable names: %s", field, strings.Join(bad, ", ")))
		}
	}
	for i, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			field := fmt.Sprintf("%s.envFrom[%d].configMapRef", ctr, i)
			cm, err := o.configMap(field, ef.ConfigMapRef.Name, ef.ConfigMapRef.Optional)
			if err != nil {
				return nil, nil, err
			}
			if cm != nil {
				addFrom(field, ef.Prefix, cm.Data)
			}
		case ef.SecretRef != nil:
			field := fmt.Sprintf("%s.envFrom[%d].secretRef", ctr, i)
			s, err := o.secret(field, ef.SecretRef.Name, ef.SecretRef.Optional)
			if err != nil {
				return nil, nil, err
			}
			if s != nil {
				addFrom(field, ef.Prefix, bytesToStrings(s.Data))
			}
		}
	}
	for i, e := range c.Env {
		field := fmt.Sprintf("%s.env[%d]", ctr, i)
		if e.Value != "" || e.ValueFrom == nil {
			env[e.Name] = expand(e.Value, env)
			continue
		}
		v, set, err := envSource(o, pod, opts, sh, field+".valueFrom", e.ValueFrom)
		if err != nil {
			return nil, nil, err
		}
		if set {
			env[e.Name] = v
		}
	}
	return env, warnings, nil
}

// envSource resolves one valueFrom (set false: an optional reference is
// missing, the variable stays as it was).
func envSource(o *objects, pod *corev1.Pod, opts Options, sh shape, field string, vf *corev1.EnvVarSource) (string, bool, error) {
	switch {
	case vf.FieldRef != nil:
		v, err := fieldValue(pod, opts, field+".fieldRef", vf.FieldRef.FieldPath, true)
		return v, err == nil, err
	case vf.ResourceFieldRef != nil:
		v, err := resourceValue(pod, sh, field+".resourceFieldRef", vf.ResourceFieldRef)
		return v, err == nil, err
	case vf.ConfigMapKeyRef != nil:
		ref := vf.ConfigMapKeyRef
		f := field + ".configMapKeyRef"
		cm, err := o.configMap(f, ref.Name, ref.Optional)
		if err != nil || cm == nil {
			return "", false, err
		}
		if v, ok := cm.Data[ref.Key]; ok {
			return v, true, nil
		}
		return "", false, missingKey(f, "configmap", o.ns, ref.Name, ref.Key, ref.Optional)
	case vf.SecretKeyRef != nil:
		ref := vf.SecretKeyRef
		f := field + ".secretKeyRef"
		s, err := o.secret(f, ref.Name, ref.Optional)
		if err != nil || s == nil {
			return "", false, err
		}
		if v, ok := s.Data[ref.Key]; ok {
			return string(v), true, nil
		}
		return "", false, missingKey(f, "secret", o.ns, ref.Name, ref.Key, ref.Optional)
	}
	return "", false, &UnsupportedError{Field: field, Reason: "names no source hypeman knows (fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef)"}
}

// fieldValue is the downward API's value of fieldPath. status.* and spec.*
// paths are for env only (inEnv); volumes take metadata.* as Kubernetes
// allows, including the whole labels and annotations maps.
func fieldValue(pod *corev1.Pod, opts Options, field, fp string, inEnv bool) (string, error) {
	if k, ok := subscript(fp, "metadata.labels"); ok {
		return pod.Labels[k], nil
	}
	if k, ok := subscript(fp, "metadata.annotations"); ok {
		return pod.Annotations[k], nil
	}
	switch fp {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	}
	if !inEnv {
		switch fp {
		case "metadata.labels":
			return formatMap(pod.Labels), nil
		case "metadata.annotations":
			return formatMap(pod.Annotations), nil
		}
	} else {
		switch fp {
		case "spec.nodeName":
			if pod.Spec.NodeName != "" {
				return pod.Spec.NodeName, nil
			}
			return opts.NodeName, nil
		case "spec.serviceAccountName":
			return pod.Spec.ServiceAccountName, nil
		case "status.hostIP", "status.hostIPs":
			return opts.NodeIP, nil
		}
	}
	return "", &UnsupportedError{Field: field, Reason: fmt.Sprintf("fieldPath %q is not supported here", fp)}
}

// subscript parses "metadata.labels['key']".
func subscript(fp, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(fp, prefix+"['")
	if !ok || !strings.HasSuffix(rest, "']") {
		return "", false
	}
	return strings.TrimSuffix(rest, "']"), true
}

// formatMap renders labels or annotations as a downward API file does:
// one key="value" (Go-quoted) line per entry, sorted by key.
func formatMap(m map[string]string) string {
	lines := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		lines = append(lines, fmt.Sprintf("%s=%q", k, m[k]))
	}
	return strings.Join(lines, "\n")
}

// resourceValue is the downward API's value of a resource field. A limit
// the container does not set is what its VM has (kubelet uses the node's
// allocatable; the VM is this container's node); an unset request is 0.
func resourceValue(pod *corev1.Pod, sh shape, field string, ref *corev1.ResourceFieldSelector) (string, error) {
	c := &pod.Spec.Containers[0]
	if ref.ContainerName != "" && ref.ContainerName != c.Name {
		return "", &UnsupportedError{Field: field + ".containerName", Reason: fmt.Sprintf("names %q, not the pod's container %q", ref.ContainerName, c.Name)}
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	kind, name, _ := strings.Cut(ref.Resource, ".")
	list := c.Resources.Requests
	if kind == "limits" {
		list = c.Resources.Limits
	}
	q, set := list[corev1.ResourceName(name)]
	if !set && kind == "limits" {
		switch corev1.ResourceName(name) {
		case corev1.ResourceCPU:
			q = *resource.NewQuantity(int64(sh.effectiveVcpus()), resource.DecimalSI)
		case corev1.ResourceMemory:
			q = *resource.NewQuantity(sh.effectiveMemory(), resource.BinarySI)
		case corev1.ResourceEphemeralStorage:
			q = *resource.NewQuantity(sh.effectiveOverlay(), resource.BinarySI)
		}
	}
	if kind != "limits" && kind != "requests" {
		return "", &UnsupportedError{Field: field + ".resource", Reason: fmt.Sprintf("%q is not a resource hypeman knows", ref.Resource)}
	}
	switch corev1.ResourceName(name) {
	case corev1.ResourceCPU:
		return strconv.FormatInt(int64(math.Ceil(float64(q.MilliValue())/float64(divisor.MilliValue()))), 10), nil
	case corev1.ResourceMemory, corev1.ResourceEphemeralStorage:
		return strconv.FormatInt(int64(math.Ceil(float64(q.Value())/float64(divisor.Value()))), 10), nil
	}
	return "", &UnsupportedError{Field: field + ".resource", Reason: fmt.Sprintf("%q is not a resource hypeman knows", ref.Resource)}
}

// expand replaces $(NAME) with vars[NAME] as Kubernetes does: $$ is a
// literal $, an unknown name or an unclosed $( stays as written.
func expand(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch next := s[i+1]; {
		case next == '$':
			b.WriteByte('$')
			i++
		case next == '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString("$(")
				i++
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func expandAll(args []string, vars map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expand(a, vars)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func bytesToStrings(m map[string][]byte) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}
