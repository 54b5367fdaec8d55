package podmap

import (
	"context"
	"errors"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// fakeResolver serves ConfigMaps and Secrets from maps; absent ones are
// client-go NotFound errors, names in fail give a non-NotFound error.
type fakeResolver struct {
	cms     map[string]*corev1.ConfigMap
	secrets map[string]*corev1.Secret
	fail    map[string]bool
	tokens  []tokenReq
}

type tokenReq struct {
	audience string
	exp      int64
}

func (f *fakeResolver) ConfigMap(_ context.Context, ns, name string) (*corev1.ConfigMap, error) {
	if f.fail[name] {
		return nil, errors.New("apiserver timeout")
	}
	if cm, ok := f.cms[ns+"/"+name]; ok {
		return cm, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, name)
}

func (f *fakeResolver) Secret(_ context.Context, ns, name string) (*corev1.Secret, error) {
	if f.fail[name] {
		return nil, errors.New("apiserver timeout")
	}
	if s, ok := f.secrets[ns+"/"+name]; ok {
		return s, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
}

func (f *fakeResolver) ServiceAccountToken(_ context.Context, pod *corev1.Pod, audience string, exp int64) (string, error) {
	f.tokens = append(f.tokens, tokenReq{audience, exp})
	return "token-for-" + pod.Spec.ServiceAccountName, nil
}

func newResolver() *fakeResolver {
	return &fakeResolver{
		cms: map[string]*corev1.ConfigMap{
			"ns/app":              {Data: map[string]string{"MODE": "prod", "LEVEL": "3", "bad=key": "x", "conf.yaml": "a: 1\n"}, BinaryData: map[string][]byte{"blob": {0, 1, 2}}},
			"ns/kube-root-ca.crt": {Data: map[string]string{"ca.crt": "-----BEGIN CERTIFICATE-----\n"}},
		},
		secrets: map[string]*corev1.Secret{
			"ns/creds": {Data: map[string][]byte{"PASSWORD": []byte("hunter2"), "USER": []byte("admin")}},
		},
		fail: map[string]bool{},
	}
}

// testPod is a minimal runnable pod as the apiserver would store it
// (defaults applied where they matter).
func testPod() *corev1.Pod {
	grace := int64(30)
	links := false
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "uid-1", Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"note": "hi \"there\""}},
		Spec: corev1.PodSpec{
			NodeName:                      "node-a",
			ServiceAccountName:            "default",
			RestartPolicy:                 corev1.RestartPolicyAlways,
			TerminationGracePeriodSeconds: &grace,
			DNSPolicy:                     corev1.DNSDefault,
			EnableServiceLinks:            &links,
			Containers: []corev1.Container{{
				Name:            "main",
				Image:           "registry.local/web:1",
				ImagePullPolicy: corev1.PullIfNotPresent,
			}},
		},
	}
}

var testOpts = Options{NodeName: "node-a", NodeIP: "127.0.0.1", EmptyDirSize: 2 << 30}
