package cluster

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NewPod is a pod for a hypeman node in namespace default: the contract's
// toleration and nodeSelector, one container "app" running script with
// /bin/sh -c in the cluster's test image, restartPolicy Always and no
// resources. Tests adjust the returned pod before Apply.
func (c *Cluster) NewPod(name, script string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:    "app",
				Image:   c.Image,
				Command: []string{"/bin/sh", "-c", script},
			}},
			RestartPolicy: corev1.RestartPolicyAlways,
			NodeSelector:  map[string]string{NodeLabelK: NodeLabelV},
			Tolerations: []corev1.Toleration{{
				Key: TaintKey, Operator: corev1.TolerationOpEqual, Value: TaintValue, Effect: corev1.TaintEffectNoSchedule,
			}},
		},
	}
}

// WithMemory sets the first container's memory request and limit to q
// (e.g. "256Mi") and returns pod.
func WithMemory(pod *corev1.Pod, q string) *corev1.Pod {
	m := corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(q)}
	pod.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: m, Limits: m.DeepCopy()}
	return pod
}

// Condition is pod's condition of type ct (nil when absent).
func Condition(pod *corev1.Pod, ct corev1.PodConditionType) *corev1.PodCondition {
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == ct {
			return &pod.Status.Conditions[i]
		}
	}
	return nil
}

// Ready reports whether pod's Ready condition is True.
func Ready(pod *corev1.Pod) bool {
	c := Condition(pod, corev1.PodReady)
	return c != nil && c.Status == corev1.ConditionTrue
}

// RestartCount is the first container's restartCount (0 without status).
func RestartCount(pod *corev1.Pod) int32 {
	if len(pod.Status.ContainerStatuses) == 0 {
		return 0
	}
	return pod.Status.ContainerStatuses[0].RestartCount
}
