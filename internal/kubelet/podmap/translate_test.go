package podmap

import (
	"context"
	"errors"
	"reflect"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"hypeman/internal/api/client"
)

func mustTranslate(t *testing.T, p *corev1.Pod) *Plan {
	t.Helper()
	plan, err := Translate(context.Background(), p, newResolver(), testOpts)
	if err != nil {
		t.Fatal(err)
	}
	return plan
}

func TestTranslateBasics(t *testing.T) {
	p := testPod()
	c := &p.Spec.Containers[0]
	c.Command = []string{"/bin/server", "--mode=$(MODE)"}
	c.Args = []string{"$(GREETING)", "$$(MODE)", "$(NOPE)"}
	c.Env = []corev1.EnvVar{{Name: "MODE", Value: "fast"}, {Name: "GREETING", Value: "hi-$(MODE)"}}
	plan := mustTranslate(t, p)
	in := plan.Instance
	if in.Name != "ns-web" || in.Image != "registry.local/web:1" {
		t.Fatalf("name %q image %q", in.Name, in.Image)
	}
	if want := []string{"/bin/server", "--mode=fast"}; !reflect.DeepEqual(*in.Entrypoint, want) {
		t.Errorf("entrypoint %q, want %q", *in.Entrypoint, want)
	}
	if want := []string{"hi-fast", "$(MODE)", "$(NOPE)"}; !reflect.DeepEqual(*in.Cmd, want) {
		t.Errorf("cmd %q, want %q", *in.Cmd, want)
	}
	if want := (client.Tags{TagNode: "node-a", TagNamespace: "ns", TagPod: "web", TagUID: "uid-1"}); !reflect.DeepEqual(*in.Tags, want) {
		t.Errorf("tags %v", *in.Tags)
	}
	if in.Size != nil || in.Vcpus != nil || in.OverlaySize != nil || in.HealthCheck != nil {
		t.Errorf("no resources/probe asked, got size %v vcpus %v overlay %v hc %v", in.Size, in.Vcpus, in.OverlaySize, in.HealthCheck)
	}
	if *in.StopTimeout != "30s" {
		t.Errorf("stop_timeout %q", *in.StopTimeout)
	}
	if len(plan.Volumes) != 0 || len(plan.Warnings) != 0 {
		t.Errorf("volumes %v warnings %q", plan.Volumes, plan.Warnings)
	}
}

func TestInstanceName(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	long := strings.Repeat("x", 70)
	cases := []struct {
		ns, name string
		want     string // exact, or prefix when it ends with '*'
	}{
		{"default", "web-0", "default-web-0"},
		{"default", "web.v2", "default-web-v2-*"},
		{"Team", "Web", "team-web-*"},
		{"ns", long, "ns-" + strings.Repeat("x", 51) + "-*"},
		{"ns", "a-", "ns-a-*"},
	}
	for _, tc := range cases {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: tc.ns, Name: tc.name}}
		got := InstanceName(p)
		if !re.MatchString(got) || len(got) > 63 {
			t.Errorf("%s/%s: %q is not a valid instance name", tc.ns, tc.name, got)
		}
		if prefix, ok := strings.CutSuffix(tc.want, "*"); ok {
			if !strings.HasPrefix(got, prefix) || len(got) != len(prefix)+8 {
				t.Errorf("%s/%s: %q, want %s<8 hex>", tc.ns, tc.name, got, prefix)
			}
		} else if got != tc.want {
			t.Errorf("%s/%s: %q, want %q", tc.ns, tc.name, got, tc.want)
		}
		if InstanceName(p) != got {
			t.Errorf("not stable")
		}
	}
	a := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a.b"}}
	b := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a-b"}}
	if InstanceName(a) == InstanceName(b) {
		t.Errorf("ns/a.b and ns/a-b share %q", InstanceName(a))
	}
	// The plain form is ambiguous; AltInstanceName tells such pods apart.
	c := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns-a", Name: "b"}}
	d := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a-b"}}
	if InstanceName(c) != InstanceName(d) || AltInstanceName(c) == AltInstanceName(d) || !re.MatchString(AltInstanceName(c)) {
		t.Errorf("alt names %q %q", AltInstanceName(c), AltInstanceName(d))
	}
	if AltInstanceName(a) != InstanceName(a) {
		t.Errorf("an already suffixed name gets a second suffix: %q", AltInstanceName(a))
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "1", "B": "two"}
	cases := map[string]string{
		"$(A)":         "1",
		"x$(A)y$(B)z":  "x1ytwoz",
		"$$(A)":        "$(A)",
		"$$$(A)":       "$1",
		"$(C)":         "$(C)",
		"$(A":          "$(A",
		"$A":           "$A",
		"cost: 5$":     "cost: 5$",
		"$()":          "$()",
		"no refs here": "no refs here",
	}
	for in, want := range cases {
		if got := expand(in, vars); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEnv(t *testing.T) {
	no, yes := false, true
	p := testPod()
	c := &p.Spec.Containers[0]
	c.EnvFrom = []corev1.EnvFromSource{
		{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app"}}},
		{Prefix: "DB_", SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}}},
		{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Optional: &yes}},
	}
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	resEnv := func(name, res, div string) corev1.EnvVar {
		sel := &corev1.ResourceFieldSelector{Resource: res}
		if div != "" {
			sel.Divisor = resource.MustParse(div)
		}
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: sel}}
	}
	c.Resources = corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi"), corev1.ResourceCPU: resource.MustParse("250m")}}
	c.Env = []corev1.EnvVar{
		{Name: "MODE", Value: "override-$(LEVEL)"}, // env overrides envFrom, and expands from it
		{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "PASSWORD"}}},
		{Name: "LVL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "app"}, Key: "LEVEL", Optional: &no}}},
		{Name: "LEVEL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "app"}, Key: "missing", Optional: &yes}}},
		{Name: "OPT", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nosecret"}, Key: "k", Optional: &yes}}},
		fieldEnv("POD", "metadata.name"), fieldEnv("NS", "metadata.namespace"), fieldEnv("UID", "metadata.uid"),
		fieldEnv("APP", "metadata.labels['app']"), fieldEnv("NOTE", "metadata.annotations['note']"),
		fieldEnv("NODE", "spec.nodeName"), fieldEnv("SA", "spec.serviceAccountName"),
		fieldEnv("HOST", "status.hostIP"), fieldEnv("HOSTS", "status.hostIPs"),
		resEnv("MEM_REQ", "requests.memory", "1Mi"), resEnv("MEM_LIM", "limits.memory", ""),
		resEnv("CPU_REQ", "requests.cpu", "1m"), resEnv("CPU_REQ_CORES", "requests.cpu", ""),
		resEnv("CPU_LIM", "limits.cpu", ""), resEnv("DISK_LIM", "limits.ephemeral-storage", "1Gi"),
		{Name: "EMPTY"},
		{Name: "LATER", Value: "$(EMPTY)-$(UNDEFINED)"},
	}
	plan := mustTranslate(t, p)
	want := map[string]string{
		"MODE": "override-3", "LEVEL": "3", "conf.yaml": "a: 1\n", "DB_PASSWORD": "hunter2", "DB_USER": "admin",
		"PW": "hunter2", "LVL": "3",
		"POD": "web", "NS": "ns", "UID": "uid-1", "APP": "web", "NOTE": `hi "there"`, "NODE": "node-a", "SA": "default",
		"HOST": "127.0.0.1", "HOSTS": "127.0.0.1",
		"MEM_REQ": "512", "MEM_LIM": "536870912", // no limit: the VM's size
		"CPU_REQ": "250", "CPU_REQ_CORES": "1", "CPU_LIM": "1", // no limit: the VM's vcpus
		"DISK_LIM": "10", // no limit: hypemand's default overlay
		"EMPTY":    "", "LATER": "-$(UNDEFINED)",
	}
	if got := *plan.Instance.Env; !reflect.DeepEqual(got, want) {
		t.Errorf("env:\n got %v\nwant %v", got, want)
	}
	if len(plan.Warnings) != 1 || !strings.Contains(plan.Warnings[0], `"bad=key"`) {
		t.Errorf("warnings %q, want one naming the skipped key", plan.Warnings)
	}
}

func TestEnvMissingReferences(t *testing.T) {
	yes := false
	cases := []struct {
		name   string
		env    corev1.EnvVar
		from   *corev1.EnvFromSource
		config bool // IsConfigError (retry) rather than another failure
		field  string
	}{
		{"configmap missing", corev1.EnvVar{Name: "X", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Key: "k"}}}, nil, true, ctr + ".env[0].valueFrom.configMapKeyRef"},
		{"secret key missing", corev1.EnvVar{Name: "X", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "nokey", Optional: &yes}}}, nil, true, ctr + ".env[0].valueFrom.secretKeyRef"},
		{"envFrom secret missing", corev1.EnvVar{}, &corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}}}, true, ctr + ".envFrom[0].secretRef"},
		{"apiserver failure", corev1.EnvVar{Name: "X", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "flaky"}, Key: "k"}}}, nil, false, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := testPod()
			if tc.from != nil {
				p.Spec.Containers[0].EnvFrom = []corev1.EnvFromSource{*tc.from}
			} else {
				p.Spec.Containers[0].Env = []corev1.EnvVar{tc.env}
			}
			r := newResolver()
			r.fail["flaky"] = true
			_, err := Translate(context.Background(), p, r, testOpts)
			if err == nil || IsConfigError(err) != tc.config {
				t.Fatalf("err %v, IsConfigError %v, want %v", err, IsConfigError(err), tc.config)
			}
			var ue *UnsupportedError
			if errors.As(err, &ue) {
				t.Fatalf("a missing reference is not Unsupported: %v", err)
			}
			if tc.config && !strings.HasPrefix(err.Error(), tc.field+": ") {
				t.Errorf("error %q does not name %s", err, tc.field)
			}
			if tc.name == "configmap missing" && !apierrors.IsNotFound(err) {
				t.Errorf("the Resolver's NotFound is not wrapped: %v", err)
			}
		})
	}
}

func TestResources(t *testing.T) {
	rl := func(kv ...string) corev1.ResourceList {
		l := corev1.ResourceList{}
		for i := 0; i < len(kv); i += 2 {
			l[corev1.ResourceName(kv[i])] = resource.MustParse(kv[i+1])
		}
		return l
	}
	cases := []struct {
		name                string
		req, lim            corev1.ResourceList
		size, overlay       string
		vcpus               int
		podLevelRequestsMem string
	}{
		{"requests win", rl("memory", "256Mi", "cpu", "1500m", "ephemeral-storage", "2Gi"), rl("memory", "256Mi", "cpu", "2", "ephemeral-storage", "4Gi"), "256MB", "2GB", 2, ""},
		{"limits when no requests", nil, rl("memory", "1Gi", "cpu", "3", "ephemeral-storage", "5Gi"), "1GB", "5GB", 3, ""},
		{"decimal memory rounds up to MiB", rl("memory", "300M"), nil, "287MB", "", 0, ""},
		{"cpu below one core", rl("cpu", "100m"), nil, "", "", 1, ""},
		{"below minimum memory", rl("memory", "1Mi"), nil, "64MB", "", 0, ""},
		{"pod-level resources", nil, nil, "768MB", "", 0, "768Mi"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := testPod()
			p.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: tc.req, Limits: tc.lim}
			if tc.podLevelRequestsMem != "" {
				p.Spec.Resources = &corev1.ResourceRequirements{Requests: rl("memory", tc.podLevelRequestsMem)}
			}
			in := mustTranslate(t, p).Instance
			if got := deref(in.Size); got != tc.size {
				t.Errorf("size %q, want %q", got, tc.size)
			}
			if got := deref(in.OverlaySize); got != tc.overlay {
				t.Errorf("overlay %q, want %q", got, tc.overlay)
			}
			if got := deref(in.Vcpus); got != tc.vcpus {
				t.Errorf("vcpus %d, want %d", got, tc.vcpus)
			}
		})
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func TestRestartPolicyAndStopTimeout(t *testing.T) {
	for pol, want := range map[corev1.RestartPolicy]client.RestartPolicyPolicy{
		corev1.RestartPolicyAlways: client.RestartAlways, corev1.RestartPolicyOnFailure: client.RestartOnFailure,
		corev1.RestartPolicyNever: client.RestartNever, "": client.RestartAlways,
	} {
		p := testPod()
		p.Spec.RestartPolicy = pol
		rp := mustTranslate(t, p).Instance.RestartPolicy
		if *rp.Policy != want || *rp.Backoff != "1s" || *rp.MaxBackoff != "5m" || *rp.StableAfter != "10m" {
			t.Errorf("%q: %+v", pol, rp)
		}
	}
	for grace, want := range map[int64]string{-1: "1s", 0: "1s", 1: "1s", 45: "45s", 90: "1m30s", 3600: "1h", 7200: "1h"} {
		p := testPod()
		p.Spec.TerminationGracePeriodSeconds = &grace
		plan := mustTranslate(t, p)
		if *plan.Instance.StopTimeout != want {
			t.Errorf("grace %d: stop_timeout %q, want %q", grace, *plan.Instance.StopTimeout, want)
		}
		if clamped := grace < 1 || grace > 3600; clamped != (len(plan.Warnings) == 1) {
			t.Errorf("grace %d: warnings %q", grace, plan.Warnings)
		}
	}
	p := testPod()
	p.Spec.TerminationGracePeriodSeconds = nil
	if got := *mustTranslate(t, p).Instance.StopTimeout; got != "30s" {
		t.Errorf("default grace: %q", got)
	}
}

func TestHealthCheck(t *testing.T) {
	probe := func(h corev1.ProbeHandler) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: h, PeriodSeconds: 5, TimeoutSeconds: 9, InitialDelaySeconds: 7, FailureThreshold: 4, SuccessThreshold: 1}
	}
	cases := []struct {
		name  string
		probe *corev1.Probe
		want  client.HealthCheck
	}{
		{"http named port https", probe(corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "healthz", Port: intstr.FromString("web"), Scheme: corev1.URISchemeHTTPS}}),
			client.HealthCheck{Type: ptr(client.HealthCheckHTTPType), Http: &client.HealthCheckHTTP{Port: 8080, Path: ptr("/healthz"), Scheme: ptr(client.Https)},
				Interval: ptr("5s"), Timeout: ptr("5s"), StartPeriod: ptr("7s"), FailureThreshold: ptr(4), SuccessThreshold: ptr(1)}},
		{"tcp", probe(corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(5432)}}),
			client.HealthCheck{Type: ptr(client.HealthCheckTCPType), Tcp: &client.HealthCheckTCP{Port: 5432},
				Interval: ptr("5s"), Timeout: ptr("5s"), StartPeriod: ptr("7s"), FailureThreshold: ptr(4), SuccessThreshold: ptr(1)}},
		{"exec with Kubernetes defaults", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"pg_isready"}}}},
			client.HealthCheck{Type: ptr(client.HealthCheckExecType), Exec: &client.HealthCheckExec{Command: []string{"pg_isready"}},
				Interval: ptr("10s"), Timeout: ptr("1s"), StartPeriod: ptr("0s"), FailureThreshold: ptr(3), SuccessThreshold: ptr(1)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := testPod()
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "web", ContainerPort: 8080}}
			p.Spec.Containers[0].LivenessProbe = tc.probe
			got := mustTranslate(t, p).Instance.HealthCheck
			if got == nil || !reflect.DeepEqual(*got, tc.want) {
				t.Fatalf("health check\n got %s\nwant %s", jsonOf(got), jsonOf(&tc.want))
			}
		})
	}
	// A readinessProbe alone becomes the same check, report-only: hypemand
	// reports it and never restarts for it (as the kubelet for readiness).
	exec := func(cmd string) *corev1.Probe {
		return probe(corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{cmd}}})
	}
	p := testPod()
	p.Spec.Containers[0].ReadinessProbe = exec("ready")
	want := client.HealthCheck{Type: ptr(client.HealthCheckExecType), Exec: &client.HealthCheckExec{Command: []string{"ready"}},
		Interval: ptr("5s"), Timeout: ptr("5s"), StartPeriod: ptr("7s"), FailureThreshold: ptr(4), SuccessThreshold: ptr(1), ReportOnly: ptr(true)}
	if got := mustTranslate(t, p).Instance.HealthCheck; got == nil || !reflect.DeepEqual(*got, want) {
		t.Errorf("readinessProbe alone\n got %s\nwant %s", jsonOf(got), jsonOf(&want))
	}
	// Both: the liveness probe is the check (restarts on failure); the
	// readiness probe is only a warning.
	p.Spec.Containers[0].LivenessProbe = exec("alive")
	plan := mustTranslate(t, p)
	want.Exec.Command, want.ReportOnly = []string{"alive"}, nil
	if got := plan.Instance.HealthCheck; got == nil || !reflect.DeepEqual(*got, want) {
		t.Errorf("liveness and readiness\n got %s\nwant %s", jsonOf(got), jsonOf(&want))
	}
	if len(plan.Warnings) != 1 || !strings.HasPrefix(plan.Warnings[0], ctr+".readinessProbe: not run; Ready follows the liveness check") {
		t.Errorf("warnings %q", plan.Warnings)
	}
}

func TestWorkingDir(t *testing.T) {
	for in, want := range map[string]string{"/app": "/app", "/srv//app/./x/": "/srv/app/x", "/": "/", "/a/../b": "/b"} {
		p := testPod()
		p.Spec.Containers[0].WorkingDir = in
		plan := mustTranslate(t, p)
		if got := plan.Instance.WorkingDir; got == nil || *got != want || len(plan.Warnings) != 0 {
			t.Errorf("workingDir %q: working_dir %v (warnings %q), want %q", in, got, plan.Warnings, want)
		}
	}
	if got := mustTranslate(t, testPod()).Instance.WorkingDir; got != nil {
		t.Errorf("no workingDir: working_dir %q sent (want the image's)", *got)
	}
}

func TestVolumeName(t *testing.T) {
	for _, tc := range []struct{ uid, vol, want string }{
		{"3f2a9c1e-8b7d-4e11-9c3d-0a1b2c3d4e5f", "data", "3f2a9c1e-8b7d-data"},
		{"short", "cache", "short-cache"},
	} {
		if got := VolumeName(tc.uid, tc.vol); got != tc.want {
			t.Errorf("VolumeName(%q, %q) = %q, want %q", tc.uid, tc.vol, got, tc.want)
		}
	}
	long := VolumeName("3f2a9c1e-8b7d-4e11", "a-very-long-volume-name-that-goes-past-the-sixty-three-limit")
	if len(long) > 63 || long == VolumeName("3f2a9c1e-8b7d-4e11", "a-very-long-volume-name-that-goes-past-the-sixty-three-limiu") {
		t.Errorf("long name %q", long)
	}
}

// The name rule itself, on inputs that need changing: lowercase, only
// [a-z0-9-], at most 63, stable, distinct for distinct inputs.
func TestVolumeNameMadeValid(t *testing.T) {
	long := strings.Repeat("x", 70)
	for _, vol := range []string{"web-data", "Web_Data", long} {
		got := VolumeName("u", vol)
		if len(got) > 63 || got != strings.ToLower(got) || strings.ContainsAny(got, "_") {
			t.Errorf("VolumeName(u, %q) = %q", vol, got)
		}
	}
	if VolumeName("u", "web-data") != "u-web-data" || VolumeName("u", long) == VolumeName("u", long+"y") || VolumeName("u", long) != VolumeName("u", long) {
		t.Error("names not stable/distinct")
	}
}
