package kubelet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vkslog "github.com/virtual-kubelet/virtual-kubelet/log/slog"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"hypeman/internal/api/client"
	"hypeman/internal/api/execws"
)

// Config is the command line of hypeman-kubelet.
type Config struct {
	Kubeconfig     string
	NodeName       string
	Server         string // hypemand base URL
	Token          string // hypemand API token
	Listen         string // kubelet API address
	NodeIP         string
	ClientCAFile   string
	TLSCertFile    string
	TLSKeyFile     string
	Taint          string // KEY=VALUE:EFFECT, "" = none
	MaxPods        int64
	HealthInterval time.Duration
	Version        string // ours, for the node's kubelet version
	Logger         *slog.Logger
}

// DefaultTaint keeps ordinary pods off hypeman nodes.
const DefaultTaint = "virtual-kubelet.io/provider=hypeman:NoSchedule"

// ParseTaint parses KEY=VALUE:EFFECT (or KEY:EFFECT); "" is no taint.
func ParseTaint(s string) (*corev1.Taint, error) {
	if s == "" {
		return nil, nil
	}
	kv, effect, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("invalid taint %q: want KEY=VALUE:EFFECT", s)
	}
	key, value, _ := strings.Cut(kv, "=")
	switch e := corev1.TaintEffect(effect); e {
	case corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
		if key == "" {
			return nil, fmt.Errorf("invalid taint %q: empty key", s)
		}
		return &corev1.Taint{Key: key, Value: value, Effect: e}, nil
	default:
		return nil, fmt.Errorf("invalid taint effect %q: use NoSchedule, PreferNoSchedule or NoExecute", effect)
	}
}

// Run registers the node and serves it until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx = vklog.WithLogger(ctx, vkslog.FromSlog(log.With("component", "virtual-kubelet")))
	taint, err := ParseTaint(cfg.Taint)
	if err != nil {
		return err
	}
	_, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("invalid --listen %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 || port > 65535 {
		return fmt.Errorf("invalid --listen %q: port must be 1-65535", cfg.Listen)
	}
	if cfg.ClientCAFile == "" {
		return errors.New("--client-ca-file is required (the CA of the client certificates the apiserver presents for logs and exec)")
	}

	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}

	api, err := client.NewClientWithResponses(strings.TrimRight(cfg.Server, "/"), client.WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
		if cfg.Token != "" {
			req.Header.Set("Authorization", "Bearer "+cfg.Token)
		}
		req.Header.Set("User-Agent", "hypeman-kubelet/"+cfg.Version)
		return nil
	}))
	if err != nil {
		return fmt.Errorf("hypemand client for %s: %w", cfg.Server, err)
	}

	cert, err := servingCert(cfg)
	if err != nil {
		return err
	}
	auth, err := nodeutil.WebhookAuth(kube, cfg.NodeName, func(c *nodeutil.WebhookAuthConfig) error {
		ca, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", cfg.ClientCAFile)
		if err != nil {
			return fmt.Errorf("--client-ca-file: %w", err)
		}
		c.AuthnConfig.ClientCertificateCAContentProvider = ca
		return nil
	})
	if err != nil {
		return fmt.Errorf("kubelet API auth: %w", err)
	}

	broadcaster := record.NewBroadcaster()
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events(metav1.NamespaceAll)})
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "hypeman-kubelet", Host: cfg.NodeName})

	mux := http.NewServeMux()
	var provider *Provider
	n, err := nodeutil.NewNode(cfg.NodeName, func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		SetupNode(pc.Node, NodeSpec{Name: cfg.NodeName, IP: cfg.NodeIP, Port: int32(port), Taint: taint, Version: cfg.Version, MaxPods: cfg.MaxPods}, time.Now())
		provider = NewProvider(ProviderConfig{
			NodeName: cfg.NodeName, NodeIP: cfg.NodeIP, API: api,
			Dialer:   execws.Dialer{BaseURL: cfg.Server, Token: cfg.Token, UserAgent: "hypeman-kubelet/" + cfg.Version},
			Resolver: &resolver{configMaps: pc.ConfigMaps, secrets: pc.Secrets, kube: kube},
			Recorder: recorder, Pods: podRemover{kube}, Logger: log, Node: pc.Node, MaxPods: cfg.MaxPods, HealthInterval: cfg.HealthInterval,
		})
		return provider, provider, nil
	},
		nodeutil.WithClient(kube),
		nodeutil.WithTLSConfig(func(c *tls.Config) error {
			c.Certificates = []tls.Certificate{cert}
			return nil
		}),
		nodeutil.AttachProviderRoutes(mux),
		func(c *nodeutil.NodeConfig) error {
			c.HTTPListenAddr = cfg.Listen
			c.Handler = nodeutil.WithAuth(auth, mux)
			c.EventRecorder = recorder
			// A delete waits for a graceful stop: more workers than
			// virtual-kubelet's default (the core count) keep other pods
			// moving meanwhile.
			c.NumWorkers = 16
			c.SkipDownwardAPIResolution = true // podmap resolves env itself
			return nil
		},
	)
	if err != nil {
		return fmt.Errorf("virtual-kubelet node: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	provider.Start(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		provider.Run(ctx)
	}()
	defer func() { cancel(); <-done }()
	log.Info("hypeman-kubelet starting", "node", cfg.NodeName, "server", cfg.Server, "listen", cfg.Listen, "node_ip", cfg.NodeIP)
	err = n.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// podRemover deletes pod objects through the API (grace period 0, UID
// precondition: a pod re-created under the same name is left alone).
type podRemover struct{ kube kubernetes.Interface }

func (r podRemover) RemovePod(ctx context.Context, namespace, name string, uid types.UID) error {
	zero := int64(0)
	err := r.kube.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // gone already, or another pod now has the name
	}
	return err
}

// resolver reads a pod's references through virtual-kubelet's informer
// listers and the TokenRequest API.
type resolver struct {
	configMaps corev1listers.ConfigMapLister
	secrets    corev1listers.SecretLister
	kube       kubernetes.Interface
}

func (r *resolver) ConfigMap(_ context.Context, namespace, name string) (*corev1.ConfigMap, error) {
	return r.configMaps.ConfigMaps(namespace).Get(name)
}

func (r *resolver) Secret(_ context.Context, namespace, name string) (*corev1.Secret, error) {
	return r.secrets.Secrets(namespace).Get(name)
}

func (r *resolver) ServiceAccountToken(ctx context.Context, pod *corev1.Pod, audience string, expirationSeconds int64) (string, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if audience != "" {
		req.Spec.Audiences = []string{audience}
	}
	if expirationSeconds > 0 {
		req.Spec.ExpirationSeconds = &expirationSeconds
	}
	tr, err := r.kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	return tr.Status.Token, nil
}
