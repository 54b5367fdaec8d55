package controlplane_test

import (
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"hypeman/internal/testutil/tier"
	"hypeman/test/k8s/controlplane"
	"hypeman/test/k8s/k8sbin"
)

// TestStartListNamespaces starts a control plane, lists its namespaces with
// the cached kubectl through the admin kubeconfig, checks the scheduler's
// RBAC identity works, that the scheduler handles a pod, and checks Stop leaves none of its processes behind.
func TestStartListNamespaces(t *testing.T) {
	if tier.IsUnit(t) {
		t.Skipf("builds (once, minutes) and runs etcd, kube-apiserver and kube-scheduler: skipped in the unit tier (%s=%s); `make test` runs it", tier.Env, tier.Unit)
	}
	ctx := t.Context()
	// Builds the binaries when they are not cached yet (many minutes on a
	// small host; `go run ./cmd/k8sbins` does it ahead of time).
	bins, err := k8sbin.Ensure(ctx, k8sbin.Options{Log: t.Output()})
	if err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.Start(ctx, controlplane.Options{BinDir: bins.Dir, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	pids := cp.PIDs()
	t.Cleanup(cp.Stop)
	t.Logf("healthy after: etcd %s, kube-apiserver %s, kube-scheduler %s",
		cp.Timings.Etcd.Round(time.Millisecond), cp.Timings.APIServer.Round(time.Millisecond),
		cp.Timings.Scheduler.Round(time.Millisecond))
	if len(pids) != 3 {
		t.Fatalf("PIDs() = %v, want etcd, kube-apiserver and kube-scheduler", pids)
	}

	out := kubectl(t, ctx, bins, cp, "get", "namespaces", "-o", "name")
	for _, ns := range []string{"namespace/default", "namespace/kube-system"} {
		if !strings.Contains(out, ns) {
			t.Errorf("kubectl get namespaces = %q, want it to list %s", out, ns)
		}
	}
	// The scheduler authenticates with its own token; RBAC must let it watch pods.
	out = kubectl(t, ctx, bins, cp, "auth", "can-i", "watch", "pods", "--as", "system:kube-scheduler")
	if strings.TrimSpace(out) != "yes" {
		t.Errorf("kube-scheduler can watch pods = %q, want yes", out)
	}

	// A pod is admitted (the default ServiceAccount exists) and the scheduler
	// marks it unschedulable: it runs, is authorised, and there are no nodes.
	apply := exec.CommandContext(ctx, bins.Path(k8sbin.Kubectl), "--kubeconfig", cp.Kubeconfig, "apply", "-f", "-")
	apply.Stdin = strings.NewReader(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"probe"},
		"spec":{"containers":[{"name":"c","image":"example.invalid/none"}]}}`)
	if out, err := apply.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply pod: %v\n%s", err, out)
	}
	var reason string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		reason = kubectl(t, ctx, bins, cp, "get", "pod", "probe", "-o",
			`jsonpath={.status.conditions[?(@.type=="PodScheduled")].reason}`)
		if reason != "" {
			break
		}
	}
	if reason != "Unschedulable" {
		t.Errorf("pod PodScheduled reason = %q, want Unschedulable (from kube-scheduler)", reason)
	}

	cp.Stop()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("process %d still runs after Stop", pid)
		}
	}
}

func kubectl(t *testing.T, ctx context.Context, bins k8sbin.Set, cp *controlplane.ControlPlane, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, bins.Path(k8sbin.Kubectl), append([]string{"--kubeconfig", cp.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
