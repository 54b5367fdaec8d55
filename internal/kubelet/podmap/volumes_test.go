package podmap

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func files(fs ...File) []File { return fs }

func TestVolumes(t *testing.T) {
	mode := func(m int32) *int32 { return &m }
	yes := true
	cases := []struct {
		name  string
		vol   corev1.Volume
		ro    bool // the mount's readOnly
		want  Volume
		token *tokenReq
	}{
		{"emptyDir default size", emptyDir("scratch"), false,
			Volume{Name: "scratch", SizeBytes: 2 << 30, Mount: Mount{Path: "/mnt"}}, nil},
		{"emptyDir sizeLimit read-only mount", corev1.Volume{Name: "s", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: ptr(resource.MustParse("5Gi"))}}}, true,
			Volume{Name: "s", SizeBytes: 5 << 30, Mount: Mount{Path: "/mnt", ReadOnly: true}}, nil},
		{"configMap all keys", corev1.Volume{Name: "c", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "app"}, DefaultMode: mode(0o600)}}}, false,
			Volume{Name: "c", SizeBytes: 1 << 30, Mount: Mount{Path: "/mnt", ReadOnly: true}, Files: files(
				File{"LEVEL", 0o600, []byte("3")}, File{"MODE", 0o600, []byte("prod")}, File{"bad=key", 0o600, []byte("x")},
				File{"blob", 0o600, []byte{0, 1, 2}}, File{"conf.yaml", 0o600, []byte("a: 1\n")})}, nil},
		{"configMap items and modes", corev1.Volume{Name: "c", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "app"},
			Items:                []corev1.KeyToPath{{Key: "conf.yaml", Path: "etc/app.yaml"}, {Key: "MODE", Path: "mode", Mode: mode(0o400)}}}}}, false,
			Volume{Name: "c", SizeBytes: 1 << 30, Mount: Mount{Path: "/mnt", ReadOnly: true}, Files: files(
				File{"etc/app.yaml", 0o644, []byte("a: 1\n")}, File{"mode", 0o400, []byte("prod")})}, nil},
		{"optional configMap missing", corev1.Volume{Name: "c", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Optional: &yes}}}, false,
			Volume{Name: "c", SizeBytes: 1 << 30, Mount: Mount{Path: "/mnt", ReadOnly: true}, Files: []File{}}, nil},
		{"secret", corev1.Volume{Name: "s", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds"}}}, false,
			Volume{Name: "s", SizeBytes: 1 << 30, Mount: Mount{Path: "/mnt", ReadOnly: true}, Files: files(
				File{"PASSWORD", 0o644, []byte("hunter2")}, File{"USER", 0o644, []byte("admin")})}, nil},
		{"downwardAPI", corev1.Volume{Name: "d", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
			{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
			{Path: "annotations", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations"}},
			{Path: "name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}},
			{Path: "mem", ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "main", Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}},
		}}}}, false,
			Volume{Name: "d", SizeBytes: 1 << 30, Mount: Mount{Path: "/mnt", ReadOnly: true}, Files: files(
				File{"annotations", 0o644, []byte(`note="hi \"there\""`)}, File{"labels", 0o644, []byte(`app="web"`)},
				File{"mem", 0o644, []byte("1024")}, File{"name", 0o644, []byte("web")})}, nil},
		{"kube-api-access", kubeAPIAccess(), true,
			Volume{Name: "kube-api-access-abcde", SizeBytes: 1 << 30, Mount: Mount{Path: "/mnt", ReadOnly: true}, Files: files(
				File{"ca.crt", 0o644, []byte("-----BEGIN CERTIFICATE-----\n")}, File{"namespace", 0o644, []byte("ns")},
				File{"token", 0o644, []byte("token-for-default")})}, &tokenReq{"", 3607}},
		{"projected token audience, later source wins", corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "app"}, Items: []corev1.KeyToPath{{Key: "MODE", Path: "token"}}}},
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "vault", Path: "token"}},
		}}}}, false,
			Volume{Name: "p", SizeBytes: 1 << 30, Mount: Mount{Path: "/mnt", ReadOnly: true}, Files: files(File{"token", 0o644, []byte("token-for-default")})}, &tokenReq{"vault", 3607}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := testPod()
			mountVol(p, tc.vol, "/mnt/")
			p.Spec.Containers[0].VolumeMounts[0].ReadOnly = tc.ro
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "unmounted", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}})
			r := newResolver()
			plan, err := Translate(context.Background(), p, r, testOpts)
			if err != nil {
				t.Fatal(err)
			}
			if len(plan.Volumes) != 1 || !reflect.DeepEqual(plan.Volumes[0], tc.want) {
				t.Fatalf("volumes\n got %s\nwant %s", jsonOf(plan.Volumes), jsonOf([]Volume{tc.want}))
			}
			if tc.token != nil && (len(r.tokens) != 1 || r.tokens[0] != *tc.token) {
				t.Errorf("token requests %v, want %v", r.tokens, *tc.token)
			}
			if (plan.Volumes[0].Files == nil) != (tc.vol.EmptyDir != nil) {
				t.Errorf("Files must be nil exactly for emptyDir")
			}
		})
	}
}

// kubeAPIAccess is the volume the ServiceAccount admission plugin adds.
func kubeAPIAccess() corev1.Volume {
	exp, mode := int64(3607), int32(420)
	return corev1.Volume{Name: "kube-api-access-abcde", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: &mode,
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: &exp, Path: "token"}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
		}}}}
}

func TestVolumeMissingReferences(t *testing.T) {
	p := testPod()
	mountVol(p, corev1.Volume{Name: "c", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "app"}, Items: []corev1.KeyToPath{{Key: "nokey", Path: "x"}}}}}, "/cfg")
	mountVol(p, corev1.Volume{Name: "s", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "absent"}}}, "/sec")
	_, err := Translate(context.Background(), p, newResolver(), testOpts)
	if !IsConfigError(err) || err.Error()[:len("spec.volumes[0].configMap.items[0]")] != "spec.volumes[0].configMap.items[0]" {
		t.Fatalf("missing key: %v", err)
	}
	p.Spec.Volumes[0].ConfigMap.Items = nil
	_, err = Translate(context.Background(), p, newResolver(), testOpts)
	if !IsConfigError(err) || fmt.Sprint(err)[:len("spec.volumes[1].secret")] != "spec.volumes[1].secret" {
		t.Fatalf("missing secret: %v", err)
	}
}

func TestFilesSize(t *testing.T) {
	if got := filesSize(nil); got != 1<<30 {
		t.Errorf("empty: %d", got)
	}
	big := []File{{Data: make([]byte, 1<<30)}}
	if got := filesSize(big); got != 2<<30 {
		t.Errorf("1 GiB of data needs room for the filesystem: %d", got)
	}
}

func TestDevShmDropped(t *testing.T) {
	p := testPod()
	mountVol(p, corev1.Volume{Name: "shm", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}, "/dev/shm")
	mountVol(p, emptyDir("data"), "/data")
	plan := mustTranslate(t, p)
	if len(plan.Volumes) != 1 || plan.Volumes[0].Name != "data" || len(plan.Warnings) != 1 {
		t.Fatalf("volumes %s warnings %q", jsonOf(plan.Volumes), plan.Warnings)
	}
}
