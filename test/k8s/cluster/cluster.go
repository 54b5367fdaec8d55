// Package cluster runs a whole hypeman Kubernetes cluster for tests: a
// control plane on loopback (package controlplane), N hypemand each in its
// own network namespace, one hypeman-kubelet beside each, and an in-process
// registry with the test image, and drives it the way a user does — with
// kubectl.
//
// Why a package: the acceptance test of issue 15 needs all of it, and every
// later Kubernetes test will too; the wiring (who trusts which CA, which
// kubeconfig the kubelets get, what must exist before a pod can be admitted,
// in which order things stop) is easy to get subtly wrong, so it lives in one
// place. The kubelets authenticate with a ServiceAccount bound to
// deploy/kubernetes/hypeman-kubelet-rbac.yaml, joined with the same kubectl
// commands the README gives, so the documented RBAC is what the test runs.
// Everything started is stopped by PID in t.Cleanup (kubelets first, then
// hypemand with its VMs, then the control plane); on failure the cleanup
// prints pods, nodes, describe output and every kubelet's log.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil"
	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/tier"
	"hypeman/test/k8s/controlplane"
	"hypeman/test/k8s/k8sbin"
)

// Options shape the cluster.
type Options struct {
	// Nodes is the number of hypemand + hypeman-kubelet pairs; default 2.
	Nodes int
	// MemoryLimit is each hypemand's memory_limit (its whole memory
	// capacity, e.g. "512MB"); required, so placement is deterministic.
	MemoryLimit string
	// HealthInterval is each kubelet's --health-interval; default 1s.
	HealthInterval time.Duration
}

// Cluster is a running cluster.
type Cluster struct {
	Bins  k8sbin.Set
	CP    *controlplane.ControlPlane
	Nodes []*Node
	// Image is the reference of the test image (busybox) in the registry
	// the hypemands pull from.
	Image string
	// KubeletKubeconfig is the kubeconfig the kubelets use (the
	// hypeman-kubelet ServiceAccount's token).
	KubeletKubeconfig string
	// Dir holds the kubelets' kubeconfig and logs.
	Dir string
}

// Node is one hypemand and its kubelet.
type Node struct {
	Name    string
	NetNS   string
	Server  *e2e.Server
	Kubelet *Process
}

// TaintKey etc. are the contract's default taint, which pods must tolerate.
const (
	TaintKey    = "virtual-kubelet.io/provider"
	TaintValue  = "hypeman"
	NodeLabelK  = "type"
	NodeLabelV  = "virtual-kubelet"
	ServiceAcct = "hypeman-kubelet"
)

// Start builds and starts the cluster and waits until every node is Ready.
// It skips in the unit tier and needs root (network namespaces) otherwise.
func Start(t *testing.T, opts Options) *Cluster {
	t.Helper()
	tier.VM(t)
	nettest.RequireRoot(t)
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.HealthInterval == 0 {
		opts.HealthInterval = time.Second
	}
	if opts.MemoryLimit == "" {
		t.Fatal("cluster: Options.MemoryLimit is required")
	}
	ctx := t.Context()
	c := &Cluster{Dir: t.TempDir()}

	var err error
	// Minutes on a host whose cache is empty (`make k8s-bins` does it ahead).
	if c.Bins, err = k8sbin.Ensure(ctx, k8sbin.Options{Log: t.Output()}); err != nil {
		t.Fatal(err)
	}
	if c.CP, err = controlplane.Start(ctx, controlplane.Options{BinDir: c.Bins.Dir, Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CP.Stop)

	// The root-CA publisher of kube-controller-manager (not run here) puts
	// this ConfigMap in every namespace; projected service-account volumes
	// read it.
	c.MustKubectl(t, "create", "configmap", "kube-root-ca.crt", "--from-file=ca.crt="+c.CP.CAFile)
	c.KubeletKubeconfig = c.joinKubeconfig(t)

	reg := testimage.Registry(t)
	c.Image = testimage.Push(t, reg, "k8s/busybox:v1", testimage.Busybox(t, testimage.Options{}))

	kubelet := e2e.KubeletBinary(t)
	for i := range opts.Nodes {
		n := &Node{Name: "hypeman-" + string(rune('a'+i))}
		n.NetNS = nettest.NewNS(t)
		n.Server = e2e.Start(t, "--network-mode", "bridge", "--network-netns", n.NetNS, "--memory-limit", opts.MemoryLimit)
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		port := testutil.FreePort(t)
		n.Kubelet = startProcess(t, filepath.Join(c.Dir, "kubelet-"+n.Name+".log"), kubelet,
			[]string{"HYPEMAN_API_KEY=" + n.Server.Token},
			"--kubeconfig", c.KubeletKubeconfig,
			"--node-name", n.Name,
			"--server", n.Server.BaseURL,
			"--listen", "127.0.0.1:"+strconv.Itoa(port),
			"--node-ip", "127.0.0.1",
			"--client-ca-file", c.CP.CAFile,
			"--health-interval", opts.HealthInterval.String(),
			"--log-level", "debug")
	}
	// Registered last, so it runs first: the cluster is still up to be
	// described.
	t.Cleanup(func() {
		if t.Failed() {
			c.Dump(t)
		}
	})
	for _, n := range c.Nodes {
		c.Eventually(t, 2*time.Minute, "node "+n.Name+" Ready", func() (bool, string) {
			if err := n.Kubelet.Exited(); err != nil {
				t.Fatalf("hypeman-kubelet for %s %v; its log:\n%s",
					n.Name, err, n.Kubelet.Logs())
			}
			return c.NodeReady(t, n.Name) == corev1.ConditionTrue, c.nodeState(t, n.Name)
		})
	}
	return c
}

// joinKubeconfig applies the kubelet RBAC manifest and writes a kubeconfig
// holding a token of its ServiceAccount, with the commands README "Many
// hosts" gives.
func (c *Cluster) joinKubeconfig(t *testing.T) string {
	t.Helper()
	c.MustKubectl(t, "apply", "-f", filepath.Join(testutil.RepoRoot(t), "deploy", "kubernetes", "hypeman-kubelet-rbac.yaml"))
	token := strings.TrimSpace(c.MustKubectl(t, "create", "token", ServiceAcct, "-n", "kube-system", "--duration", "2h"))
	kc := filepath.Join(c.Dir, "kubelet.kubeconfig")
	for _, args := range [][]string{
		{"config", "set-cluster", "hypeman", "--server", c.CP.Server, "--certificate-authority", c.CP.CAFile, "--embed-certs"},
		{"config", "set-credentials", ServiceAcct, "--token", token},
		{"config", "set-context", "hypeman", "--cluster", "hypeman", "--user", ServiceAcct},
		{"config", "use-context", "hypeman"},
	} {
		if out, err := exec.Command(c.Bins.Path(k8sbin.Kubectl), append(args, "--kubeconfig", kc)...).CombinedOutput(); err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args[:2], " "), err, out)
		}
	}
	return kc
}

// Node returns the node named name (nil if none).
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Result is one finished kubectl run.
type Result struct {
	Stdout, Stderr string
	ExitCode       int
}

// Kubectl runs kubectl as the cluster admin with stdin (may be empty); an
// error means it could not run at all (a non-zero exit is in Result).
func (c *Cluster) Kubectl(ctx context.Context, stdin string, args ...string) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Bins.Path(k8sbin.Kubectl), append([]string{"--kubeconfig", c.CP.Kubeconfig}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := Result{Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		r.ExitCode = ee.ExitCode()
		err = nil
	}
	return r, err
}

// MustKubectl is Kubectl that fails t unless kubectl exits 0; it returns stdout.
func (c *Cluster) MustKubectl(t testing.TB, args ...string) string {
	t.Helper()
	return c.MustKubectlIn(t, "", args...)
}

// MustKubectlIn is MustKubectl with stdin.
func (c *Cluster) MustKubectlIn(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	r, err := c.Kubectl(t.Context(), stdin, args...)
	if err == nil && r.ExitCode != 0 {
		err = fmt.Errorf("exit %d", r.ExitCode)
	}
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// Apply applies objects (marshalled to JSON, one kubectl apply each).
func (c *Cluster) Apply(t testing.TB, objs ...any) {
	t.Helper()
	for _, o := range objs {
		b, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		c.MustKubectlIn(t, string(b), "apply", "-f", "-")
	}
}

// Pod reads pod name in namespace default (nil when it does not exist).
func (c *Cluster) Pod(t testing.TB, name string) *corev1.Pod {
	t.Helper()
	var p corev1.Pod
	if !c.get(t, "pod", name, &p) {
		return nil
	}
	return &p
}

// get decodes `kubectl get KIND NAME -o json` into out; false when the
// object does not exist, and any other failure fails t.
func (c *Cluster) get(t testing.TB, kind, name string, out any) bool {
	t.Helper()
	r, err := c.Kubectl(t.Context(), "", "get", kind, name, "-o", "json")
	if err == nil && r.ExitCode != 0 {
		if strings.Contains(r.Stderr, "NotFound") {
			return false
		}
		err = fmt.Errorf("exit %d: %s", r.ExitCode, r.Stderr)
	}
	if err == nil {
		err = json.Unmarshal([]byte(r.Stdout), out)
	}
	if err != nil {
		t.Fatalf("kubectl get %s %s: %v", kind, name, err)
	}
	return true
}

// MustPod is Pod that fails t when the pod is missing.
func (c *Cluster) MustPod(t testing.TB, name string) *corev1.Pod {
	t.Helper()
	p := c.Pod(t, name)
	if p == nil {
		t.Fatalf("pod %s does not exist", name)
	}
	return p
}

// Delete deletes pods and waits (bounded) until they are gone.
func (c *Cluster) Delete(t testing.TB, names ...string) {
	t.Helper()
	if len(names) == 0 {
		return
	}
	c.MustKubectl(t, append([]string{"delete", "pod", "--wait", "--timeout", "90s"}, names...)...)
}

// NodeReady is the status of node name's Ready condition ("" when the node
// or the condition is missing).
func (c *Cluster) NodeReady(t testing.TB, name string) corev1.ConditionStatus {
	t.Helper()
	n := c.node(t, name)
	if n == nil {
		return ""
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status
		}
	}
	return ""
}

func (c *Cluster) node(t testing.TB, name string) *corev1.Node {
	t.Helper()
	var n corev1.Node
	if !c.get(t, "node", name, &n) {
		return nil
	}
	return &n
}

func (c *Cluster) nodeState(t testing.TB, name string) string {
	n := c.node(t, name)
	if n == nil {
		return "node not registered"
	}
	var parts []string
	for _, cond := range n.Status.Conditions {
		parts = append(parts, fmt.Sprintf("%s=%s (%s)", cond.Type, cond.Status, cond.Message))
	}
	return strings.Join(parts, ", ")
}

// Instance is what the tests read of a hypemand instance.
type Instance struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	State   string            `json:"state"`
	Tags    map[string]string `json:"tags"`
	Network struct {
		IP string `json:"ip"`
	} `json:"network"`
}

// Instances lists node n's instances, filtered by tags (may be nil).
func (n *Node) Instances(t testing.TB, tags map[string]string) []Instance {
	t.Helper()
	q := url.Values{}
	for k, v := range tags {
		q.Set("tags["+k+"]", v)
	}
	path := "/instances"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	st, body, err := n.Server.TryDo("GET", path, nil)
	if err != nil || st != 200 {
		t.Fatalf("hypemand %s: GET %s: %d %v %s", n.Name, path, st, err, body)
	}
	var list []Instance
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("hypemand %s: GET %s: %v: %s", n.Name, path, err, body)
	}
	return list
}

// Eventually polls cond every 500 ms until it returns true, failing t after
// timeout with what and cond's last description of the state.
func (c *Cluster) Eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s; last state: %s", what, timeout, state)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Dump logs what a failure needs: pods and nodes (wide, described), each
// kubelet's log and the end of the scheduler's and apiserver's logs. hypemand's output is
// printed by package e2e's own cleanup.
func (c *Cluster) Dump(t testing.TB) {
	ctx := context.WithoutCancel(t.Context())
	for _, args := range [][]string{
		{"get", "nodes", "-o", "wide"},
		{"get", "pods", "-o", "wide"},
		{"describe", "pods"},
		{"describe", "nodes"},
		{"get", "events", "--sort-by", ".lastTimestamp"},
	} {
		r, err := c.Kubectl(ctx, "", args...)
		t.Logf("kubectl %s (%v, exit %d):\n%s%s", strings.Join(args, " "), err, r.ExitCode, r.Stdout, r.Stderr)
	}
	for _, n := range c.Nodes {
		if n.Kubelet != nil {
			t.Logf("hypeman-kubelet %s log:\n%s", n.Name, n.Kubelet.Logs())
		}
	}
	for _, name := range []string{"kube-scheduler", "kube-apiserver"} {
		t.Logf("end of %s.log:\n%s", name, tail(filepath.Join(c.CP.Dir, name+".log"), 4<<10))
	}
}

// tail is the last n bytes of file path (or why it cannot be read).
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = append([]byte("...\n"), b[len(b)-n:]...)
	}
	return string(b)
}

// Process is a started helper process (a kubelet), logging to a file.
type Process struct {
	t    testing.TB
	bin  string
	env  []string
	args []string
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// startProcess starts bin with args and extra environment; t.Cleanup stops
// it by PID (SIGTERM, then SIGKILL after 15 s). Pdeathsig ends it if the
// test binary dies first.
func startProcess(t testing.TB, logPath, bin string, env []string, args ...string) *Process {
	t.Helper()
	p := &Process{t: t, bin: bin, env: env, args: args, log: logPath}
	p.start()
	t.Cleanup(func() {
		cmd, done := p.current()
		select {
		case <-done:
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return p
}

// start runs the process once more, appending to its log.
func (p *Process) start() {
	p.t.Helper()
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		p.t.Fatalf("start %s: %v", p.bin, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
}

func (p *Process) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// Crash SIGKILLs the process (no graceful shutdown) and starts it again
// with the same arguments.
func (p *Process) Crash() {
	p.t.Helper()
	cmd, done := p.current()
	cmd.Process.Kill()
	<-done
	p.start()
}

// Exited is nil while the process runs, else how it ended.
func (p *Process) Exited() error {
	cmd, done := p.current()
	select {
	case <-done:
		return fmt.Errorf("exited (%v)", cmd.ProcessState)
	default:
		return nil
	}
}

// Logs is the process's output so far (the last 64 KB).
func (p *Process) Logs() string { return tail(p.log, 64<<10) }
