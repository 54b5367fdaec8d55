package podmap

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"hypeman/internal/units"
)

// hypemand's create defaults and ranges (openapi.yaml CreateInstanceRequest;
// internal/instances validate.go). The defaults are what a VM gets when the
// pod asks for nothing, so the downward API reports them as its limits.
const (
	serverDefaultMemory  = 1 << 30
	serverDefaultVcpus   = 2
	serverDefaultOverlay = 10 << 30
	minMemory            = 64 << 20
	maxMemory            = 256 << 30
	maxVcpus             = 64
	minOverlay           = 16 << 20
	maxOverlay           = 4 << 40
	mib                  = 1 << 20
	gib                  = 1 << 30
)

// shape is the VM a pod asks for; zero fields take hypemand's defaults.
type shape struct {
	memory  int64 // bytes
	vcpus   int
	overlay int64 // bytes
}

func (s shape) effectiveMemory() int64 { return orDefault(s.memory, serverDefaultMemory) }
func (s shape) effectiveOverlay() int64 {
	return orDefault(s.overlay, serverDefaultOverlay)
}
func (s shape) effectiveVcpus() int { return int(orDefault(int64(s.vcpus), serverDefaultVcpus)) }

func orDefault(v, def int64) int64 {
	if v == 0 {
		return def
	}
	return v
}

// pick returns requests[name], else limits[name], else nil.
func pick(r corev1.ResourceRequirements, name corev1.ResourceName) (*resource.Quantity, string) {
	if q, ok := r.Requests[name]; ok && !q.IsZero() {
		return &q, "requests." + string(name)
	}
	if q, ok := r.Limits[name]; ok && !q.IsZero() {
		return &q, "limits." + string(name)
	}
	return nil, ""
}

// shapeOf maps resources: memory = requests.memory, else limits.memory
// (rounded up to MiB, raised to hypemand's 64 MiB minimum); vcpus =
// ceil(requests.cpu, else limits.cpu); ephemeral-storage request, else
// limit = overlay size. A pod-level spec.resources is used when the
// container sets none.
func shapeOf(pod *corev1.Pod) (shape, []string, error) {
	res := pod.Spec.Containers[0].Resources
	base := ctr + ".resources."
	if len(res.Requests) == 0 && len(res.Limits) == 0 && pod.Spec.Resources != nil {
		res, base = *pod.Spec.Resources, "spec.resources."
	}
	var sh shape
	var warnings []string
	if q, f := pick(res, corev1.ResourceMemory); q != nil {
		b := roundUp(q.Value(), mib)
		switch {
		case b > maxMemory:
			return sh, nil, &UnsupportedError{Field: base + f, Reason: fmt.Sprintf("%s is more than hypeman's maximum VM memory (%s)", q, units.FormatSize(maxMemory))}
		case b < minMemory:
			warnings = append(warnings, fmt.Sprintf("%s%s: %s is below hypeman's minimum VM memory; the VM gets %s", base, f, q, units.FormatSize(minMemory)))
			b = minMemory
		}
		sh.memory = b
		if lim, ok := res.Limits[corev1.ResourceMemory]; ok && lim.Value() > b {
			warnings = append(warnings, fmt.Sprintf("%slimits.memory: %s is not available to the program; the VM has exactly %s (requests.memory)", base, &lim, units.FormatSize(b)))
		}
	}
	if q, f := pick(res, corev1.ResourceCPU); q != nil {
		n := (q.MilliValue() + 999) / 1000
		if n > maxVcpus {
			return sh, nil, &UnsupportedError{Field: base + f, Reason: fmt.Sprintf("%s is more than hypeman's maximum of %d vCPUs", q, maxVcpus)}
		}
		sh.vcpus = int(max(n, 1))
		if lim, ok := res.Limits[corev1.ResourceCPU]; ok && lim.MilliValue() > int64(sh.vcpus)*1000 {
			warnings = append(warnings, fmt.Sprintf("%slimits.cpu: %s is more than the %d vCPU(s) the VM gets (vcpus follow requests.cpu)", base, &lim, sh.vcpus))
		}
	}
	if q, f := pick(res, corev1.ResourceEphemeralStorage); q != nil {
		b := max(roundUp(q.Value(), mib), minOverlay)
		if b > maxOverlay {
			return sh, nil, &UnsupportedError{Field: base + f, Reason: fmt.Sprintf("%s is more than hypeman's maximum writable disk (%s)", q, units.FormatSize(maxOverlay))}
		}
		sh.overlay = b
	}
	return sh, warnings, nil
}

func roundUp(n, unit int64) int64 { return (n + unit - 1) / unit * unit }
