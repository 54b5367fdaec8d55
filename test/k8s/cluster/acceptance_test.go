package cluster_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"hypeman/internal/kubelet/podmap"
	"hypeman/test/k8s/cluster"
	"hypeman/test/k8s/k8sbin"
)

// Each hypemand has memory for exactly two pods of podMemory: its
// memory_limit is its whole memory capacity (oversub_memory 1.0), and a pod's
// memory request and limit are equal, so the instance's size is podMemory
// whichever one the mapping uses.
const (
	hostMemory     = "512MB" // hypemand sizes are binary: 512 MiB
	hostMemoryByte = 512 << 20
	podMemory      = "256Mi"
)

// Generous bounds for a shared 2-core host where guests boot under TCG; they
// only bound waits, nothing asserts a duration.
const (
	runTimeout   = 3 * time.Minute
	stateTimeout = time.Minute
)

// TestAcceptance is issue 15's acceptance on one cluster (two hypemand +
// two hypeman-kubelet, a real apiserver and scheduler, real VMs), driven
// with kubectl. The subtests run in order and share pods where that is
// honest: the four pods of "placement" serve "logs and exec" and "node
// down"; "pods" starts from an empty cluster.
func TestAcceptance(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Nodes: 2, MemoryLimit: hostMemory})

	for _, n := range c.Nodes {
		var res struct {
			Memory struct {
				EffectiveLimit int64 `json:"effective_limit"`
			} `json:"memory"`
		}
		if st, body := n.Server.JSON("GET", "/resources", nil, &res); st != 200 || res.Memory.EffectiveLimit != hostMemoryByte {
			t.Fatalf("hypemand %s /resources memory effective_limit = %d (%d %s), want %d", n.Name, res.Memory.EffectiveLimit, st, body, hostMemoryByte)
		}
	}
	c.Eventually(t, stateTimeout, "nodes' allocatable memory from /resources", func() (bool, string) {
		var got []string
		ok := true
		for _, n := range c.Nodes {
			q := c.MustKubectl(t, "get", "node", n.Name, "-o", "jsonpath={.status.allocatable.memory}")
			v, err := resource.ParseQuantity(q)
			ok = ok && err == nil && v.Value() == hostMemoryByte
			got = append(got, n.Name+"="+q)
		}
		return ok, strings.Join(got, " ")
	})

	var spread []string // the four running pods placement leaves
	if !t.Run("placement", func(t *testing.T) { spread = testPlacement(t, c) }) {
		return
	}
	if !t.Run("logs and exec", func(t *testing.T) { testLogsExec(t, c, spread[0]) }) {
		return
	}
	if !t.Run("node down", func(t *testing.T) { testNodeDown(t, c, spread) }) {
		return
	}
	if !t.Run("kubelet crash", func(t *testing.T) { testKubeletCrash(t, c, spread) }) {
		return
	}
	deletePods(t, c, spread...)

	t.Run("pods", func(t *testing.T) {
		t.Run("restart OnFailure", func(t *testing.T) { t.Parallel(); testOnFailure(t, c) })
		t.Run("restart Never", func(t *testing.T) { t.Parallel(); testNever(t, c) })
		t.Run("unmappable", func(t *testing.T) { t.Parallel(); testUnmappable(t, c) })
		t.Run("configmap and secret", func(t *testing.T) { t.Parallel(); testConfigSecret(t, c) })
	})
}

// tickScript prints a greeting, then "tick N" every second.
func tickScript(name string) string {
	return `echo "hello from ` + name + `"; i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 1; done`
}

// testPlacement: four pods that each take half a host spread 2+2 and run
// with their instances' IPs; a fifth stays Pending for lack of memory until
// one is deleted, whose instance then goes. Returns the four running pods.
func testPlacement(t *testing.T, c *cluster.Cluster) []string {
	names := []string{"spread-0", "spread-1", "spread-2", "spread-3"}
	for _, n := range names {
		c.Apply(t, cluster.WithMemory(c.NewPod(n, tickScript(n)), podMemory))
	}
	perNode := map[string]int{}
	for _, n := range names {
		p := waitRunning(t, c, n)
		perNode[p.Spec.NodeName]++
		checkInstance(t, c, p)
	}
	for _, n := range c.Nodes {
		if perNode[n.Name] != 2 {
			t.Fatalf("pods per node = %v, want 2 on each of the two nodes", perNode)
		}
	}

	c.Apply(t, cluster.WithMemory(c.NewPod("spread-4", tickScript("spread-4")), podMemory))
	c.Eventually(t, stateTimeout, "spread-4 unschedulable for lack of memory", func() (bool, string) {
		p := c.MustPod(t, "spread-4")
		if p.Spec.NodeName != "" {
			t.Fatalf("spread-4 was bound to %s although both nodes are full", p.Spec.NodeName)
		}
		cond := cluster.Condition(p, corev1.PodScheduled)
		return p.Status.Phase == corev1.PodPending && cond != nil && cond.Status == corev1.ConditionFalse &&
			strings.Contains(cond.Message, "Insufficient memory"), podState(p)
	})

	deletePods(t, c, "spread-0")
	p := waitRunning(t, c, "spread-4")
	checkInstance(t, c, p)
	return []string{"spread-1", "spread-2", "spread-3", "spread-4"}
}

// testLogsExec: logs (all, --tail, -f) and exec travel apiserver → kubelet.
func testLogsExec(t *testing.T, c *cluster.Cluster, pod string) {
	tick := regexp.MustCompile(`^tick (\d+)$`)
	lastTick := func(out string) int {
		n := 0
		for _, l := range strings.Split(out, "\n") {
			if m := tick.FindStringSubmatch(strings.TrimSpace(l)); m != nil {
				n, _ = strconv.Atoi(m[1])
			}
		}
		return n
	}
	var logs string
	c.Eventually(t, stateTimeout, "kubectl logs "+pod+" shows the greeting and two ticks", func() (bool, string) {
		r, err := c.Kubectl(t.Context(), "", "logs", pod)
		logs = r.Stdout
		return err == nil && r.ExitCode == 0 && strings.Contains(logs, "hello from "+pod) && lastTick(logs) >= 2,
			fmt.Sprintf("exit %d %v: %s%s", r.ExitCode, err, r.Stdout, r.Stderr)
	})

	tail := strings.TrimSpace(c.MustKubectl(t, "logs", "--tail", "1", pod))
	if strings.Contains(tail, "\n") || !tick.MatchString(tail) {
		t.Errorf("kubectl logs --tail 1 = %q, want one line \"tick N\"", tail)
	}

	// -f: a tick numbered past the last one logged before the follow began
	// was written after it began.
	before := lastTick(c.MustKubectl(t, "logs", pod))
	ctx, cancel := context.WithTimeout(t.Context(), stateTimeout)
	defer cancel()
	follow := exec.CommandContext(ctx, c.Bins.Path(k8sbin.Kubectl), "--kubeconfig", c.CP.Kubeconfig, "logs", "-f", pod)
	out, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	follow.Stderr = &stderr
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	got, seen := false, []string{}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		seen = append(seen, line)
		if m := tick.FindStringSubmatch(line); m != nil {
			if n, _ := strconv.Atoi(m[1]); n > before {
				got = true
				break
			}
		}
	}
	cancel()
	follow.Wait()
	if !got {
		t.Errorf("kubectl logs -f %s: no tick after %d within %s (ctx %v); got %q, stderr %s", pod, before, stateTimeout, ctx.Err(), seen, stderr.String())
	}

	r, err := c.Kubectl(t.Context(), "", "exec", pod, "--", "sh", "-c", "echo $((40+2)); exit 3")
	if err != nil {
		t.Fatalf("kubectl exec: %v", err)
	}
	if strings.TrimSpace(r.Stdout) != "42" || r.ExitCode != 3 {
		t.Errorf("kubectl exec %s -- sh -c 'echo $((40+2)); exit 3' = stdout %q, exit %d (stderr %q), want \"42\" and exit 3",
			pod, r.Stdout, r.ExitCode, r.Stderr)
	}
	// -i: stdin reaches the program and its end is an EOF there; stderr
	// stays stderr.
	r, err = c.Kubectl(t.Context(), "line one\nline two\n", "exec", "-i", pod, "--", "sh", "-c", "wc -l; echo oops >&2")
	if err != nil {
		t.Fatalf("kubectl exec -i: %v", err)
	}
	if strings.TrimSpace(r.Stdout) != "2" || strings.TrimSpace(r.Stderr) != "oops" || r.ExitCode != 0 {
		t.Errorf("kubectl exec -i %s -- sh -c 'wc -l; echo oops >&2' with two lines in = stdout %q, stderr %q, exit %d; want \"2\", \"oops\", 0",
			pod, r.Stdout, r.Stderr, r.ExitCode)
	}
	// -it from a terminal (script(1), from Debian's essential bsdutils,
	// gives kubectl one): the program runs on a TTY and its exit code
	// still comes back.
	ctx, cancel = context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	line := c.Bins.Path(k8sbin.Kubectl) + " --kubeconfig " + c.CP.Kubeconfig + " exec -it " + pod + " -- sh -c 'tty; exit 4'"
	tout, err := exec.CommandContext(ctx, "script", "-qec", line, "/dev/null").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 || !strings.Contains(string(tout), "/dev/pts/") {
		t.Errorf("kubectl exec -it %s -- sh -c 'tty; exit 4' in a terminal = %q (%v), want a /dev/pts/ name and exit 4", pod, tout, err)
	}
}

// testNodeDown: SIGKILL one hypemand (its VMs keep running): its node and
// its pods go not-ready, the other node's pods stay as they were; a new
// hypemand on the same data dir brings the node and pods back without a
// second instance for any pod.
func testNodeDown(t *testing.T, c *cluster.Cluster, pods []string) {
	byNode := map[string][]string{}
	for _, name := range pods {
		p := c.MustPod(t, name)
		byNode[p.Spec.NodeName] = append(byNode[p.Spec.NodeName], name)
	}
	down, up := c.Nodes[0], c.Nodes[1]
	if len(byNode[down.Name]) == 0 || len(byNode[up.Name]) == 0 {
		t.Fatalf("pods by node = %v, want pods on both", byNode)
	}
	restarts := map[string]int32{}
	for _, name := range byNode[up.Name] {
		restarts[name] = cluster.RestartCount(c.MustPod(t, name))
	}

	down.Server.Kill()
	// Whatever happens next, a hypemand must run at cleanup to delete the
	// VMs the killed one left running.
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			down.Server.Restart()
		}
	})
	c.Eventually(t, stateTimeout, "node "+down.Name+" Ready=False after its hypemand died", func() (bool, string) {
		st := c.NodeReady(t, down.Name)
		return st == corev1.ConditionFalse, "Ready=" + string(st)
	})
	for _, name := range byNode[down.Name] {
		c.Eventually(t, stateTimeout, name+" not ready while its hypemand is down", func() (bool, string) {
			p := c.MustPod(t, name)
			if p.Status.Phase != corev1.PodRunning {
				t.Fatalf("%s phase %s while its node is unreachable, want it unchanged (Running)", name, p.Status.Phase)
			}
			cond := cluster.Condition(p, corev1.PodReady)
			return cond != nil && cond.Status == corev1.ConditionFalse, podState(p)
		})
	}
	if st := c.NodeReady(t, up.Name); st != corev1.ConditionTrue {
		t.Errorf("node %s Ready=%s while only %s is down", up.Name, st, down.Name)
	}
	for _, name := range byNode[up.Name] {
		p := c.MustPod(t, name)
		if !cluster.Ready(p) || p.Status.Phase != corev1.PodRunning || cluster.RestartCount(p) != restarts[name] {
			t.Errorf("%s on the healthy node changed: %s (restartCount was %d)", name, podState(p), restarts[name])
		}
	}

	down.Server.Restart()
	restarted = true
	c.Eventually(t, stateTimeout, "node "+down.Name+" Ready again", func() (bool, string) {
		st := c.NodeReady(t, down.Name)
		return st == corev1.ConditionTrue, "Ready=" + string(st)
	})
	uids := map[string]string{}
	for _, name := range byNode[down.Name] {
		c.Eventually(t, stateTimeout, name+" ready again", func() (bool, string) {
			p := c.MustPod(t, name)
			uids[string(p.UID)] = name
			return cluster.Ready(p) && p.Status.Phase == corev1.PodRunning, podState(p)
		})
	}
	all := down.Instances(t, nil)
	seen := map[string]int{}
	for _, in := range all {
		seen[in.Tags[podmap.TagUID]]++
	}
	for uid, name := range uids {
		if seen[uid] != 1 {
			t.Errorf("%s (uid %s) has %d instances on %s after the re-sync, want 1", name, uid, seen[uid], down.Name)
		}
	}
	if len(all) != len(uids) {
		t.Errorf("%s has %d instances for %d pods: %+v", down.Name, len(all), len(uids), all)
	}
}

// testOnFailure: a program that fails is restarted by hypemand's policy;
// restartCount counts it and the pod never ends.
func testOnFailure(t *testing.T, c *cluster.Cluster) {
	pod := c.NewPod("onfailure", `echo run; sleep 2; exit 1`)
	pod.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
	c.Apply(t, cluster.WithMemory(pod, podMemory))
	for _, want := range []int32{1, 2} {
		c.Eventually(t, runTimeout, fmt.Sprintf("onfailure restartCount >= %d", want), func() (bool, string) {
			p := c.MustPod(t, "onfailure")
			if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
				t.Fatalf("onfailure ended (%s) under restartPolicy OnFailure", podState(p))
			}
			return cluster.RestartCount(p) >= want, podState(p)
		})
	}
	deletePods(t, c, "onfailure")
}

// testNever: a program that fails under restartPolicy Never ends the pod
// Failed with the exit code.
func testNever(t *testing.T, c *cluster.Cluster) {
	pod := c.NewPod("never", `echo bye; exit 1`)
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	c.Apply(t, cluster.WithMemory(pod, podMemory))
	var p *corev1.Pod
	c.Eventually(t, runTimeout, "never Failed", func() (bool, string) {
		p = c.MustPod(t, "never")
		return p.Status.Phase == corev1.PodFailed, podState(p)
	})
	if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Terminated == nil ||
		p.Status.ContainerStatuses[0].State.Terminated.ExitCode != 1 || p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("never: containerStatuses = %+v, want one terminated with exitCode 1 and no restart", p.Status.ContainerStatuses)
	}
	deletePods(t, c, "never")
}

// testUnmappable: pods hypeman cannot run as asked end Failed naming the
// field, and no instance is made for them.
func testUnmappable(t *testing.T, c *cluster.Cluster) {
	two := c.NewPod("two-containers", "sleep 3600")
	two.Spec.Containers = append(two.Spec.Containers, corev1.Container{Name: "side", Image: c.Image, Command: []string{"sleep", "3600"}})
	hostNet := c.NewPod("host-network", "sleep 3600")
	hostNet.Spec.HostNetwork = true
	c.Apply(t, two, hostNet)
	for name, field := range map[string]string{"two-containers": "spec.containers", "host-network": "hostNetwork"} {
		var p *corev1.Pod
		c.Eventually(t, stateTimeout, name+" Failed", func() (bool, string) {
			p = c.MustPod(t, name)
			return p.Status.Phase == corev1.PodFailed, podState(p)
		})
		if p.Status.Reason == "" || !strings.Contains(p.Status.Message, field) {
			t.Errorf("%s: reason %q message %q, want a reason and a message naming %s", name, p.Status.Reason, p.Status.Message, field)
		}
		for _, n := range c.Nodes {
			if list := n.Instances(t, map[string]string{podmap.TagUID: string(p.UID)}); len(list) != 0 {
				t.Errorf("%s: %s made instances %+v for a pod it cannot run", name, n.Name, list)
			}
		}
	}
	deletePods(t, c, "two-containers", "host-network")
}

// testConfigSecret: env from a ConfigMap key and a Secret key, and a
// ConfigMap volume, reach the program.
func testConfigSecret(t *testing.T, c *cluster.Cluster) {
	c.Apply(t,
		&corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}, ObjectMeta: metav1.ObjectMeta{Name: "app-config", Namespace: "default"},
			Data: map[string]string{"greeting": "hello-from-configmap", "motd.txt": "from-a-volume"}},
		&corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}, ObjectMeta: metav1.ObjectMeta{Name: "app-secret", Namespace: "default"},
			StringData: map[string]string{"password": "s3cret-value"}})
	pod := c.NewPod("config", `echo "greeting=$GREETING password=$PASSWORD motd=$(cat /etc/app/motd.txt)"; sleep 3600`)
	ref := func(name string) corev1.LocalObjectReference { return corev1.LocalObjectReference{Name: name} }
	pod.Spec.Containers[0].Env = []corev1.EnvVar{
		{Name: "GREETING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: ref("app-config"), Key: "greeting"}}},
		{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: ref("app-secret"), Key: "password"}}},
	}
	pod.Spec.Volumes = []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: ref("app-config")}}}}
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "config", MountPath: "/etc/app", ReadOnly: true}}
	c.Apply(t, cluster.WithMemory(pod, podMemory))

	want := "greeting=hello-from-configmap password=s3cret-value motd=from-a-volume"
	c.Eventually(t, runTimeout, "config pod prints its ConfigMap and Secret values", func() (bool, string) {
		r, err := c.Kubectl(t.Context(), "", "logs", "config")
		return err == nil && r.ExitCode == 0 && strings.Contains(r.Stdout, want),
			fmt.Sprintf("logs exit %d: %s%s; pod %s", r.ExitCode, r.Stdout, r.Stderr, podState(c.MustPod(t, "config")))
	})
	deletePods(t, c, "config")
}

// waitRunning waits until pod name is Running and Ready with an IP.
func waitRunning(t *testing.T, c *cluster.Cluster, name string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	c.Eventually(t, runTimeout, name+" Running and Ready with a pod IP", func() (bool, string) {
		p = c.MustPod(t, name)
		return p.Status.Phase == corev1.PodRunning && cluster.Ready(p) && p.Status.PodIP != "", podState(p)
	})
	if cond := cluster.Condition(p, corev1.PodReady); cond != nil {
		// For the record (second resolution, not asserted): created → Ready.
		t.Logf("%s on %s: created → Ready in %s", name, p.Spec.NodeName, cond.LastTransitionTime.Sub(p.CreationTimestamp.Time))
	}
	return p
}

// checkInstance: pod's node's hypemand has exactly one instance for it, and
// its IP is the pod's.
func checkInstance(t *testing.T, c *cluster.Cluster, p *corev1.Pod) {
	t.Helper()
	n := c.Node(p.Spec.NodeName)
	if n == nil {
		t.Fatalf("%s is on node %q, not a hypeman node", p.Name, p.Spec.NodeName)
	}
	list := n.Instances(t, map[string]string{podmap.TagUID: string(p.UID)})
	if len(list) != 1 {
		t.Fatalf("%s: %d instances with its uid on %s, want 1: %+v", p.Name, len(list), n.Name, list)
	}
	if list[0].Network.IP == "" || list[0].Network.IP != p.Status.PodIP {
		t.Errorf("%s: podIP %q, instance %s network.ip %q", p.Name, p.Status.PodIP, list[0].Name, list[0].Network.IP)
	}
}

// deletePods deletes pods with kubectl (waiting until they are gone) and
// then until no hypemand has an instance for them.
func deletePods(t *testing.T, c *cluster.Cluster, names ...string) {
	t.Helper()
	uids := map[string]string{}
	for _, name := range names {
		if p := c.Pod(t, name); p != nil {
			uids[name] = string(p.UID)
		}
	}
	c.Delete(t, names...)
	for name, uid := range uids {
		c.Eventually(t, stateTimeout, "instance of deleted pod "+name+" gone", func() (bool, string) {
			var left []string
			for _, n := range c.Nodes {
				for _, in := range n.Instances(t, map[string]string{podmap.TagUID: uid}) {
					left = append(left, n.Name+"/"+in.Name+" ("+in.State+")")
				}
			}
			return len(left) == 0, strings.Join(left, ", ")
		})
	}
}

// podState is a one-line summary of pod for failure messages.
func podState(p *corev1.Pod) string {
	var conds []string
	for _, c := range p.Status.Conditions {
		conds = append(conds, fmt.Sprintf("%s=%s(%s %s)", c.Type, c.Status, c.Reason, c.Message))
	}
	var cs []string
	for _, s := range p.Status.ContainerStatuses {
		st := "waiting"
		switch {
		case s.State.Running != nil:
			st = "running"
		case s.State.Terminated != nil:
			st = fmt.Sprintf("terminated(exit %d %s %s)", s.State.Terminated.ExitCode, s.State.Terminated.Reason, s.State.Terminated.Message)
		case s.State.Waiting != nil:
			st = fmt.Sprintf("waiting(%s %s)", s.State.Waiting.Reason, s.State.Waiting.Message)
		}
		cs = append(cs, fmt.Sprintf("%s %s restarts=%d ready=%v", s.Name, st, s.RestartCount, s.Ready))
	}
	return fmt.Sprintf("%s node=%q phase=%s reason=%q message=%q podIP=%q conditions=[%s] containers=[%s]",
		p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.Reason, p.Status.Message, p.Status.PodIP,
		strings.Join(conds, " "), strings.Join(cs, "; "))
}

// testKubeletCrash: SIGKILL one hypeman-kubelet and start it again (its
// index is in memory only): the node comes back Ready, its pods keep running
// with the same instances (adopted by pod UID, none made twice, none
// restarted).
func testKubeletCrash(t *testing.T, c *cluster.Cluster, pods []string) {
	n := c.Nodes[0]
	type was struct {
		instance string
		restarts int32
	}
	before := map[string]was{}
	for _, name := range pods {
		p := c.MustPod(t, name)
		if p.Spec.NodeName != n.Name {
			continue
		}
		list := n.Instances(t, map[string]string{podmap.TagUID: string(p.UID)})
		if len(list) != 1 {
			t.Fatalf("%s: %d instances before the crash", name, len(list))
		}
		before[name] = was{list[0].ID, cluster.RestartCount(p)}
	}
	if len(before) == 0 {
		t.Fatalf("no pod of %v on %s", pods, n.Name)
	}
	total := len(n.Instances(t, nil))
	crashed := time.Now().Truncate(time.Second) // heartbeats have second resolution
	n.Kubelet.Crash()
	c.Eventually(t, stateTimeout, "node "+n.Name+" Ready, reported by the restarted kubelet", func() (bool, string) {
		if err := n.Kubelet.Exited(); err != nil {
			t.Fatalf("the restarted kubelet %v; its log:\n%s", err, n.Kubelet.Logs())
		}
		out := c.MustKubectl(t, "get", "node", n.Name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}`)
		status, beat, _ := strings.Cut(out, " ")
		at, err := time.Parse(time.RFC3339, beat)
		return status == "True" && err == nil && !at.Before(crashed), out
	})
	// Prove the new kubelet serves these pods (logs go through it), then
	// that nothing was recreated or restarted.
	for name, w := range before {
		c.Eventually(t, stateTimeout, name+" logs through the new kubelet", func() (bool, string) {
			r, err := c.Kubectl(t.Context(), "", "logs", "--tail", "1", name)
			return err == nil && r.ExitCode == 0 && strings.Contains(r.Stdout, "tick"), r.Stdout + r.Stderr
		})
		p := c.MustPod(t, name)
		list := n.Instances(t, map[string]string{podmap.TagUID: string(p.UID)})
		if len(list) != 1 || list[0].ID != w.instance || !cluster.Ready(p) || cluster.RestartCount(p) != w.restarts {
			t.Errorf("%s after the kubelet crash: instances %+v (was %s), %s (restartCount was %d)", name, list, w.instance, podState(p), w.restarts)
		}
	}
	if got := len(n.Instances(t, nil)); got != total {
		t.Errorf("%s has %d instances after the kubelet crash, %d before", n.Name, got, total)
	}
}
