package podmap

import (
	"context"
	"errors"
	"go/parser"
	"go/token"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func mountVol(p *corev1.Pod, v corev1.Volume, at string) {
	p.Spec.Volumes = append(p.Spec.Volumes, v)
	p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: v.Name, MountPath: at})
}

func emptyDir(name string) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
}

func TestRulesRefused(t *testing.T) {
	yes := true
	id := int64(1000)
	cases := []struct {
		name  string
		mut   func(p *corev1.Pod)
		field string
	}{
		{"no containers", func(p *corev1.Pod) { p.Spec.Containers = nil }, "spec.containers"},
		{"second container", func(p *corev1.Pod) { p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side"}) }, "spec.containers[1]"},
		{"init container", func(p *corev1.Pod) { p.Spec.InitContainers = []corev1.Container{{Name: "init"}} }, "spec.initContainers[0]"},
		{"ephemeral container", func(p *corev1.Pod) {
			p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "dbg"}}}
		}, "spec.ephemeralContainers[0]"},
		{"hostNetwork", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, "spec.hostNetwork"},
		{"hostPID", func(p *corev1.Pod) { p.Spec.HostPID = true }, "spec.hostPID"},
		{"hostIPC", func(p *corev1.Pod) { p.Spec.HostIPC = true }, "spec.hostIPC"},
		{"windows", func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Windows} }, "spec.os.name"},
		{"resourceClaims", func(p *corev1.Pod) { p.Spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "gpu"}} }, "spec.resourceClaims[0]"},
		{"hostAliases", func(p *corev1.Pod) { p.Spec.HostAliases = []corev1.HostAlias{{IP: "10.0.0.1"}} }, "spec.hostAliases[0]"},
		{"pod runAsUser", func(p *corev1.Pod) { p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: &id} }, "spec.securityContext.runAsUser"},
		{"container runAsGroup", func(p *corev1.Pod) { p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsGroup: &id} }, ctr + ".securityContext.runAsGroup"},
		{"sysctls", func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "net.core.somaxconn", Value: "1024"}}}
		}, "spec.securityContext.sysctls[0]"},
		{"privileged", func(p *corev1.Pod) { p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: &yes} }, ctr + ".securityContext.privileged"},
		{"relative workingDir", func(p *corev1.Pod) { p.Spec.Containers[0].WorkingDir = "app" }, ctr + ".workingDir"},
		{"workingDir too long", func(p *corev1.Pod) { p.Spec.Containers[0].WorkingDir = "/" + strings.Repeat("d", 4096) }, ctr + ".workingDir"},
		{"container restartPolicy", func(p *corev1.Pod) {
			a := corev1.ContainerRestartPolicyAlways
			p.Spec.Containers[0].RestartPolicy = &a
		}, ctr + ".restartPolicy"},
		{"hostPort", func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 80}, {ContainerPort: 81, HostPort: 8081}}
		}, ctr + ".ports[1].hostPort"},
		{"volumeDevices", func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeDevices = []corev1.VolumeDevice{{Name: "d", DevicePath: "/dev/xvda"}}
		}, ctr + ".volumeDevices[0]"},
		{"subPath", func(p *corev1.Pod) {
			mountVol(p, emptyDir("data"), "/data")
			p.Spec.Containers[0].VolumeMounts[0].SubPath = "x"
		}, ctr + ".volumeMounts[0].subPath"},
		{"mounted twice", func(p *corev1.Pod) {
			mountVol(p, emptyDir("data"), "/data")
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "data", MountPath: "/other"})
		}, ctr + ".volumeMounts[1].name"},
		{"mount under /proc", func(p *corev1.Pod) { mountVol(p, emptyDir("data"), "/proc/x") }, ctr + ".volumeMounts[0].mountPath"},
		{"mount at /", func(p *corev1.Pod) { mountVol(p, emptyDir("data"), "/") }, ctr + ".volumeMounts[0].mountPath"},
		{"nested mounts", func(p *corev1.Pod) {
			mountVol(p, emptyDir("a"), "/data")
			mountVol(p, emptyDir("b"), "/data/sub")
		}, ctr + ".volumeMounts[1].mountPath"},
		{"hostPath mounted", func(p *corev1.Pod) {
			mountVol(p, corev1.Volume{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/etc"}}}, "/host")
		}, "spec.volumes[0]"},
		{"pvc mounted", func(p *corev1.Pod) {
			p.Spec.Volumes = append(p.Spec.Volumes, emptyDir("e"))
			mountVol(p, corev1.Volume{Name: "c", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "c"}}}, "/claim")
		}, "spec.volumes[1]"},
		{"clusterTrustBundle", func(p *corev1.Pod) {
			mountVol(p, corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ClusterTrustBundle: &corev1.ClusterTrustBundleProjection{Path: "b"}}}}}}, "/p")
		}, "spec.volumes[0].projected.sources[0].clusterTrustBundle"},
		{"env podIP", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}}
		}, ctr + ".env[1].valueFrom.fieldRef"},
		{"env fileKeyRef", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "F", ValueFrom: &corev1.EnvVarSource{FileKeyRef: &corev1.FileKeySelector{Key: "k"}}}}
		}, ctr + ".env[0].valueFrom.fileKeyRef"},
		{"grpc liveness", func(p *corev1.Pod) {
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9000}}}
		}, ctr + ".livenessProbe.grpc"},
		{"grpc readiness without liveness", func(p *corev1.Pod) {
			p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9000}}}
		}, ctr + ".readinessProbe.grpc"},
		{"readiness httpGet headers without liveness", func(p *corev1.Pod) {
			p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{HTTPHeaders: []corev1.HTTPHeader{{Name: "X", Value: "y"}}, Port: intstr.FromInt32(80)}}}
		}, ctr + ".readinessProbe.httpGet.httpHeaders"},
		{"readiness probe without a handler", func(p *corev1.Pod) {
			p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{}
		}, ctr + ".readinessProbe"},
		{"httpGet host", func(p *corev1.Pod) {
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Host: "example", Port: intstr.FromInt32(80)}}}
		}, ctr + ".livenessProbe.httpGet.host"},
		{"httpGet headers", func(p *corev1.Pod) {
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{HTTPHeaders: []corev1.HTTPHeader{{Name: "X", Value: "y"}}, Port: intstr.FromInt32(80)}}}
		}, ctr + ".livenessProbe.httpGet.httpHeaders"},
		{"tcpSocket host", func(p *corev1.Pod) {
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Host: "h", Port: intstr.FromInt32(80)}}}
		}, ctr + ".livenessProbe.tcpSocket.host"},
		{"named probe port missing", func(p *corev1.Pod) {
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("http")}}}
		}, ctr + ".livenessProbe.tcpSocket.port"},
		{"too much memory", func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("300Gi")}
		}, ctr + ".resources.requests.memory"},
		{"too many cpus", func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("65")}
		}, ctr + ".resources.limits.cpu"},
		{"resourceFieldRef other container", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "M", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "other", Resource: "limits.memory"}}}}
		}, ctr + ".env[0].valueFrom.resourceFieldRef.containerName"},
		{"unknown fieldPath", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.phase"}}}}
		}, ctr + ".env[0].valueFrom.fieldRef"},
		{"item path escapes", func(p *corev1.Pod) {
			mountVol(p, corev1.Volume{Name: "c", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "app"}, Items: []corev1.KeyToPath{{Key: "MODE", Path: "../x"}}}}}, "/cfg")
		}, "spec.volumes[0].configMap.items[0].path"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := testPod()
			tc.mut(p)
			plan, err := Translate(context.Background(), p, newResolver(), testOpts)
			var ue *UnsupportedError
			if !errors.As(err, &ue) {
				t.Fatalf("want *UnsupportedError, got plan %v, err %v", plan, err)
			}
			if ue.Field != tc.field || ue.Reason == "" {
				t.Fatalf("field %q reason %q; want field %q", ue.Field, ue.Reason, tc.field)
			}
		})
	}
}

func TestRulesWarned(t *testing.T) {
	yes := true
	cases := []struct {
		name  string
		mut   func(p *corev1.Pod)
		field string // the warning starts with "<field>: "
	}{
		{"readinessProbe beside a livenessProbe", func(p *corev1.Pod) {
			// Not mapped, so its grpc handler is not refused either.
			p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 1}}}
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
		}, ctr + ".readinessProbe"},
		{"http readiness 2xx-3xx", func(p *corev1.Pod) {
			p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(80)}}}
		}, ctr + ".readinessProbe.httpGet"},
		{"startupProbe", func(p *corev1.Pod) {
			p.Spec.Containers[0].StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
		}, ctr + ".startupProbe"},
		{"http liveness 2xx-3xx", func(p *corev1.Pod) {
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(80)}}}
		}, ctr + ".livenessProbe.httpGet"},
		{"preStop", func(p *corev1.Pod) {
			p.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"x"}}}}
		}, ctr + ".lifecycle.preStop"},
		{"imagePullPolicy Always", func(p *corev1.Pod) { p.Spec.Containers[0].ImagePullPolicy = corev1.PullAlways }, ctr + ".imagePullPolicy"},
		{"tty", func(p *corev1.Pod) { p.Spec.Containers[0].TTY = true }, ctr + ".tty"},
		{"runAsNonRoot", func(p *corev1.Pod) { p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: &yes} }, "spec.securityContext.runAsNonRoot"},
		{"capabilities.drop", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
		}, ctr + ".securityContext.capabilities.drop"},
		{"seccomp", func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
		}, "spec.securityContext.seccompProfile"},
		{"readOnlyRootFilesystem", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{ReadOnlyRootFilesystem: &yes}
		}, ctr + ".securityContext.readOnlyRootFilesystem"},
		{"fsGroup", func(p *corev1.Pod) {
			g := int64(2000)
			p.Spec.SecurityContext = &corev1.PodSecurityContext{FSGroup: &g}
		}, "spec.securityContext.fsGroup"},
		{"dnsPolicy ClusterFirst", func(p *corev1.Pod) { p.Spec.DNSPolicy = corev1.DNSClusterFirst }, "spec.dnsPolicy"},
		{"dnsConfig", func(p *corev1.Pod) { p.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"1.1.1.1"}} }, "spec.dnsConfig"},
		{"enableServiceLinks default", func(p *corev1.Pod) { p.Spec.EnableServiceLinks = nil }, "spec.enableServiceLinks"},
		{"hostname", func(p *corev1.Pod) { p.Spec.Hostname = "h" }, "spec.hostname"},
		{"activeDeadlineSeconds", func(p *corev1.Pod) { d := int64(5); p.Spec.ActiveDeadlineSeconds = &d }, "spec.activeDeadlineSeconds"},
		{"emptyDir Memory", func(p *corev1.Pod) {
			mountVol(p, corev1.Volume{Name: "m", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}, "/cache")
		}, "spec.volumes[0].emptyDir.medium"},
		{"emptyDir at /dev/shm", func(p *corev1.Pod) {
			mountVol(p, corev1.Volume{Name: "shm", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}, "/dev/shm")
		}, ctr + ".volumeMounts[0]"},
		{"mountPropagation", func(p *corev1.Pod) {
			mountVol(p, emptyDir("d"), "/d")
			mp := corev1.MountPropagationHostToContainer
			p.Spec.Containers[0].VolumeMounts[0].MountPropagation = &mp
		}, ctr + ".volumeMounts[0].mountPropagation"},
		{"short-lived token", func(p *corev1.Pod) {
			exp := int64(600)
			mountVol(p, corev1.Volume{Name: "t", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: &exp}}}}}}, "/t")
		}, "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds"},
		{"grace clamped", func(p *corev1.Pod) { g := int64(0); p.Spec.TerminationGracePeriodSeconds = &g }, "spec.terminationGracePeriodSeconds"},
		{"memory limit above request", func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources = corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}
		}, ctr + ".resources.limits.memory"},
		{"cpu limit above vcpus", func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources = corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")},
				Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")}}
		}, ctr + ".resources.limits.cpu"},
		{"memory below minimum", func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("16Mi")}
		}, ctr + ".resources.requests.memory"},
		{"invalid envFrom key", func(p *corev1.Pod) {
			p.Spec.Containers[0].EnvFrom = []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app"}}}}
		}, ctr + ".envFrom[0].configMapRef"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base, err := Translate(context.Background(), testPod(), newResolver(), testOpts)
			if err != nil || len(base.Warnings) != 0 {
				t.Fatalf("base pod: %v, warnings %q", err, base.Warnings)
			}
			p := testPod()
			tc.mut(p)
			plan, err := Translate(context.Background(), p, newResolver(), testOpts)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, w := range plan.Warnings {
				found = found || strings.HasPrefix(w, tc.field+": ")
			}
			if !found {
				t.Fatalf("no warning for %s in %q", tc.field, plan.Warnings)
			}
		})
	}
}

// TestRulesDocumented keeps the package doc's table (copied into the
// README) in step with the rules table.
func TestRulesDocumented(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "podmap.go", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	doc := f.Doc.Text()
	for _, r := range rules {
		if !strings.Contains(doc, r.field) {
			t.Errorf("rule %q is missing from the package doc table", r.field)
		}
	}
	refused, warned := doc[strings.Index(doc, "Refused:"):strings.Index(doc, "Warned")], doc[strings.Index(doc, "Warned"):]
	for _, r := range rules {
		in := refused
		if r.verdict == warn {
			in = warned
		}
		if !strings.Contains(in, r.field) {
			t.Errorf("rule %q is documented under the wrong heading", r.field)
		}
	}
}
