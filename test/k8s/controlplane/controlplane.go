// Package controlplane starts a throwaway Kubernetes control plane on loopback
// for tests: etcd, kube-apiserver and kube-scheduler from the binaries
// k8sbin caches, with no kubelet and no controller manager.
//
// Why: the hypeman Kubernetes provider must be tested against a real
// apiserver and a real scheduler (placement, Pending for lack of memory), not
// fakes, yet tests may only use loopback and must clean up what they start.
// Everything lives in one directory the caller owns (data, keys, logs,
// kubeconfigs); every port is a free loopback port; authentication is a
// static token file (an admin in system:masters, the scheduler as
// system:kube-scheduler under RBAC); the apiserver's serving certificate is
// signed by a CA made here, so clients verify TLS. Stop ends the processes it
// started, by PID, newest first.
package controlplane

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options configures Start.
type Options struct {
	// BinDir holds etcd, kube-apiserver and kube-scheduler (k8sbin.Set.Dir).
	BinDir string
	// Dir is an empty directory owned by the caller; everything is written
	// under it. It must outlive Stop.
	Dir string
	// ReadyTimeout bounds each component's wait for health; default 3 minutes
	// (the apiserver needs ~30 s on an idle 2-core host).
	ReadyTimeout time.Duration
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	// Server is the apiserver URL (https://127.0.0.1:PORT).
	Server string
	// Kubeconfig is the path of an admin kubeconfig (system:masters).
	Kubeconfig string
	// CAPEM is the CA that signed the apiserver's serving certificate and the
	// client certificate it presents to kubelets; CAFile holds it. A
	// kubelet (hypeman-kubelet) trusts it as its client CA for logs/exec.
	CAPEM  []byte
	CAFile string
	// AdminToken is the bearer token of the admin user.
	AdminToken string
	// Timings says how long each component took to become healthy.
	Timings Timings
	// Dir is Options.Dir; each component logs to Dir/<component>.log.
	Dir string

	procs []*process
	api   *http.Client // verifies the apiserver against CAPEM
}

// Timings are measured from the component's start to its first healthy answer.
type Timings struct {
	Etcd, APIServer, Scheduler time.Duration
}

// ServiceClusterIPRange is the service range the apiserver is started with.
const ServiceClusterIPRange = "10.96.0.0/24"

// Start starts etcd, the apiserver and the scheduler and returns once each is
// healthy. On error, whatever was started has been stopped.
func Start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	if opts.BinDir == "" || opts.Dir == "" {
		return nil, errors.New("controlplane: Options.BinDir and Options.Dir are required")
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 3 * time.Minute
	}
	cp := &ControlPlane{Dir: opts.Dir}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	etcdPort, peerPort, apiPort, schedPort := ports[0], ports[1], ports[2], ports[3]

	pki, err := writePKI(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("controlplane: keys: %w", err)
	}
	cp.CAPEM, cp.CAFile = pki.caPEM, pki.caFile
	cp.AdminToken = randomToken()
	schedToken := randomToken()
	tokens := filepath.Join(opts.Dir, "tokens.csv")
	// token,user,uid,"group,..."
	tokenCSV := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n%s,system:kube-scheduler,system:kube-scheduler\n",
		cp.AdminToken, schedToken)
	if err := os.WriteFile(tokens, []byte(tokenCSV), 0o600); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	cp.Server = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	cp.Kubeconfig = filepath.Join(opts.Dir, "admin.kubeconfig")
	if err := writeKubeconfig(cp.Kubeconfig, cp.Server, cp.CAPEM, "admin", cp.AdminToken); err != nil {
		return nil, err
	}
	schedKubeconfig := filepath.Join(opts.Dir, "scheduler.kubeconfig")
	if err := writeKubeconfig(schedKubeconfig, cp.Server, cp.CAPEM, "system:kube-scheduler", schedToken); err != nil {
		return nil, err
	}

	// etcd. Its data is disposable, so it skips fsync to spare the shared disk.
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	etcd, err := cp.start(opts, "etcd",
		"--name", "default",
		"--data-dir", filepath.Join(opts.Dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL,
		"--unsafe-no-fsync")
	if err != nil {
		return nil, err
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	if cp.Timings.Etcd, err = waitHealthy(ctx, etcd, opts.ReadyTimeout, func(ctx context.Context) error {
		return get(ctx, plain, etcdURL+"/health", "", `"health":"true"`)
	}); err != nil {
		return nil, err
	}

	// kube-apiserver. --endpoint-reconciler-type none: the default reconciler
	// refuses a loopback advertise address. TaintNodesByCondition is off: it
	// taints every new node node.kubernetes.io/not-ready:NoSchedule, and only
	// the controller manager's node lifecycle controller (not run here)
	// lifts it once the node is Ready, so no pod would ever be scheduled.
	api, err := cp.start(opts, "kube-apiserver",
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(apiPort),
		"--endpoint-reconciler-type", "none",
		"--tls-cert-file", pki.certFile, "--tls-private-key-file", pki.keyFile,
		"--service-account-key-file", pki.saPubFile,
		"--service-account-signing-key-file", pki.saKeyFile,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--token-auth-file", tokens,
		"--authorization-mode", "RBAC",
		"--disable-admission-plugins", "TaintNodesByCondition",
		"--service-cluster-ip-range", ServiceClusterIPRange,
		"--kubelet-client-certificate", pki.kubeletClientCert, "--kubelet-client-key", pki.kubeletClientKey,
		"--kubelet-preferred-address-types", "InternalIP",
		"--cert-dir", filepath.Join(opts.Dir, "apiserver-certs"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.CAPEM)
	cp.api = &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if cp.Timings.APIServer, err = waitHealthy(ctx, api, opts.ReadyTimeout, func(ctx context.Context) error {
		return get(ctx, cp.api, cp.Server+"/readyz", cp.AdminToken, "ok")
	}); err != nil {
		return nil, err
	}
	if err := cp.EnsureNamespace(ctx, "default"); err != nil {
		return nil, err
	}

	// kube-scheduler. Its own serving certificate is self-signed, so the
	// health check skips verification (loopback, liveness only).
	sched, err := cp.start(opts, "kube-scheduler",
		"--kubeconfig", schedKubeconfig,
		"--authentication-kubeconfig", schedKubeconfig,
		"--authorization-kubeconfig", schedKubeconfig,
		"--leader-elect=false",
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(schedPort),
		"--cert-dir", filepath.Join(opts.Dir, "scheduler-certs"))
	if err != nil {
		return nil, err
	}
	insecure := &http.Client{Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	schedURL := "https://127.0.0.1:" + strconv.Itoa(schedPort) + "/healthz"
	if cp.Timings.Scheduler, err = waitHealthy(ctx, sched, opts.ReadyTimeout, func(ctx context.Context) error {
		return get(ctx, insecure, schedURL, "", "ok")
	}); err != nil {
		return nil, err
	}
	return cp, nil
}

// EnsureNamespace creates namespace ns (when missing) and its "default"
// ServiceAccount. There is no controller manager to create that account, and
// the ServiceAccount admission plugin refuses pods in a namespace without it.
func (cp *ControlPlane) EnsureNamespace(ctx context.Context, ns string) error {
	if err := cp.create(ctx, "/api/v1/namespaces",
		fmt.Sprintf(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":%q}}`, ns)); err != nil {
		return err
	}
	return cp.create(ctx, "/api/v1/namespaces/"+ns+"/serviceaccounts",
		`{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default"}}`)
}

// create POSTs an object as the admin; an existing object is not an error.
func (cp *ControlPlane) create(ctx context.Context, path, body string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cp.Server+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+cp.AdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := cp.api.Do(req)
	if err != nil {
		return fmt.Errorf("controlplane: POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusConflict {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return fmt.Errorf("controlplane: POST %s: %s: %s", path, resp.Status, b)
}

// PIDs are the process ids of the running components, oldest first.
func (cp *ControlPlane) PIDs() []int {
	var pids []int
	for _, p := range cp.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	return pids
}

// Stop ends every component, newest first: SIGTERM, then SIGKILL after 15 s.
// It returns once all have exited; calling it again is a no-op.
func (cp *ControlPlane) Stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		cp.procs[i].stop(15 * time.Second)
	}
	cp.procs = nil
}

// process is one started component.
type process struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed when it exited
}

func (cp *ControlPlane) start(opts Options, name string, args ...string) (*process, error) {
	logPath := filepath.Join(opts.Dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	cmd := exec.Command(filepath.Join(opts.BinDir, name), args...)
	cmd.Dir = opts.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test binary dies without Stop, the kernel ends the component.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("controlplane: start %s: %w", name, err)
	}
	p := &process{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	cp.procs = append(cp.procs, p)
	return p, nil
}

func (p *process) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// exitError describes a component that exited while being waited for, with
// the end of its log.
func (p *process) exitError() error {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return fmt.Errorf("controlplane: %s exited (%v); end of %s:\n%s", p.name, p.cmd.ProcessState, p.log, b)
}

// waitHealthy polls check until it succeeds, p exits, or timeout passes, and
// returns the time since p started.
func waitHealthy(ctx context.Context, p *process, timeout time.Duration, check func(context.Context) error) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = check(ctx); last == nil {
			return time.Since(start), nil
		}
		select {
		case <-p.done:
			return 0, p.exitError()
		case <-ctx.Done():
			return 0, fmt.Errorf("controlplane: %s not healthy after %s (last: %v); see %s", p.name, time.Since(start).Round(time.Second), last, p.log)
		case <-tick.C:
		}
	}
}

// get succeeds when url answers 200 with a body containing want.
func get(ctx context.Context, c *http.Client, url, token, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(want)) {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// freePorts returns n distinct free loopback ports. They are released before
// use, so another process could take one first; the component then fails to
// start and Start reports it.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("controlplane: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// writeKubeconfig writes a kubeconfig with one cluster, one token user and
// one current context.
func writeKubeconfig(path, server string, caPEM []byte, user, token string) error {
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %q
  user:
    token: %s
contexts:
- name: test
  context:
    cluster: test
    user: %q
current-context: test
`, server, base64.StdEncoding.EncodeToString(caPEM), user, token, user)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("controlplane: kubeconfig: %w", err)
	}
	return nil
}
