package kubelet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	utilexec "k8s.io/utils/exec"

	"hypeman/internal/api/client"
	"hypeman/internal/api/execws"
	"hypeman/internal/api/sse"
)

// maxTail is hypemand's largest tail: "all lines" for a log request.
const maxTail = 100000

// instanceOf is the id of the running pod's instance.
func (p *Provider) instanceOf(namespace, name, container string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.pods[podKey(namespace, name)]
	if e == nil || e.inst == nil {
		return "", errdefs.NotFoundf("pod %s/%s has no instance on this node", namespace, name)
	}
	if container != "" && !e.orphan && !hasContainer(e.pod, container) {
		return "", errdefs.NotFoundf("pod %s/%s has no container %q", namespace, name, container)
	}
	return e.inst.Id, nil
}

func hasContainer(pod *corev1.Pod, name string) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return true
		}
	}
	return false
}

// GetContainerLogs streams the instance's console log (one log for the
// pod's one container). Tail 0 means all lines; LimitBytes cuts the
// stream. hypemand's log lines carry no time, so Timestamps, SinceSeconds
// and SinceTime are not applied; the log spans restarts, so there is no
// separate previous log (Previous is an error).
func (p *Provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	if opts.Previous {
		return nil, errdefs.InvalidInput("previous container logs are not kept: hypeman keeps one console log per instance, across restarts (omit --previous)")
	}
	id, err := p.instanceOf(namespace, podName, containerName)
	if err != nil {
		return nil, err
	}
	tail := opts.Tail
	if tail <= 0 || tail > maxTail {
		tail = maxTail
	}
	follow := opts.Follow
	ctx, cancel := context.WithCancel(ctx)
	resp, err := p.api.ClientInterface.GetInstanceLogs(ctx, id, &client.GetInstanceLogsParams{Tail: &tail, Follow: &follow})
	if err != nil {
		cancel()
		return nil, &UnreachableError{Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		cancel()
		return nil, result(resp.StatusCode, body, nil)
	}
	pr, pw := io.Pipe()
	go func() {
		defer resp.Body.Close()
		pw.CloseWithError(copyLogLines(pw, resp.Body, int64(opts.LimitBytes)))
	}()
	return &logReader{PipeReader: pr, cancel: cancel}, nil
}

type logReader struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (r *logReader) Close() error {
	r.cancel()
	return r.PipeReader.Close()
}

// copyLogLines writes each log event's line with a newline, at most limit
// bytes (0: no limit).
func copyLogLines(w io.Writer, body io.Reader, limit int64) error {
	written := int64(0)
	err := sse.LogLines(body, func(line string) error {
		b := []byte(line + "\n")
		if limit > 0 && written+int64(len(b)) > limit {
			_, err := w.Write(b[:limit-written])
			if err == nil {
				err = errLogLimit
			}
			return err
		}
		_, err := w.Write(b)
		written += int64(len(b))
		return err
	})
	var se *sse.StreamError
	switch {
	case errors.Is(err, errLogLimit):
		return nil
	case errors.As(err, &se):
		return fmt.Errorf("log stream failed: %w", result(http.StatusInternalServerError, []byte(se.Data), nil))
	}
	return err
}

// errLogLimit ends a log copy that reached its byte limit.
var errLogLimit = errors.New("log byte limit reached")

// RunInContainer runs cmd in the pod's instance through hypemand's exec
// WebSocket. A non-zero exit is a utilexec.CodeExitError so `kubectl exec`
// exits with that code.
func (p *Provider) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach api.AttachIO) error {
	id, err := p.instanceOf(namespace, podName, containerName)
	if err != nil {
		return err
	}
	conn, err := p.cfg.Dialer.Dial(ctx, id)
	if err != nil {
		return fmt.Errorf("exec in %s/%s: %w", namespace, podName, err)
	}
	defer conn.CloseNow()
	start := client.ExecStart{Command: &cmd}
	rw := execws.IO{}
	if attach.TTY() {
		tty := true
		start.Tty = &tty
	}
	if in := attach.Stdin(); in != nil {
		rw.Stdin = in
	}
	if out := attach.Stdout(); out != nil {
		rw.Stdout = out
	}
	if errw := attach.Stderr(); errw != nil {
		rw.Stderr = errw
	}
	if rs := attach.Resize(); rs != nil {
		sizes := make(chan execws.Size)
		rw.Resize = sizes
		done := make(chan struct{})
		defer close(done)
		go func() {
			for {
				select {
				case <-done:
					return
				case s, ok := <-rs:
					if !ok {
						return
					}
					select {
					case sizes <- execws.Size{Rows: s.Height, Cols: s.Width}:
					case <-done:
						return
					}
				}
			}
		}()
	}
	exit, err := execws.Run(ctx, conn, start, rw)
	if err != nil {
		return fmt.Errorf("exec in %s/%s: %w", namespace, podName, err)
	}
	if exit.Error != nil {
		return fmt.Errorf("exec in %s/%s: %s", namespace, podName, *exit.Error)
	}
	if exit.ExitCode != 0 {
		msg := deref(exit.Message)
		if msg == "" {
			msg = fmt.Sprintf("command terminated with exit code %d", exit.ExitCode)
		}
		return utilexec.CodeExitError{Err: errors.New(msg), Code: exit.ExitCode}
	}
	return nil
}

// AttachToContainer is not supported: a hypeman program's console is its
// log (kubectl logs -f), and its stdin is not attachable.
func (p *Provider) AttachToContainer(context.Context, string, string, string, api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported on hypeman nodes: use kubectl logs -f, or kubectl exec")
}

// PortForward is not supported: pods are reached at their instance IP.
func (p *Provider) PortForward(context.Context, string, string, int32, io.ReadWriteCloser) error {
	return errdefs.InvalidInput("port-forward is not supported on hypeman nodes: reach the pod at its IP")
}

// GetStatsSummary reports CPU time and memory of each pod's VM (GET
// /instances/{id}/stats: the VMM process's CPU time and resident memory).
func (p *Provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	type podInst struct {
		pod *corev1.Pod
		id  string
	}
	p.mu.Lock()
	var list []podInst
	for _, e := range p.pods {
		if e.inst != nil && !e.orphan {
			list = append(list, podInst{e.pod, e.inst.Id})
		}
	}
	p.mu.Unlock()
	now := metav1.Now()
	sum := &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{NodeName: p.cfg.NodeName, StartTime: now}}
	for _, pi := range list {
		r, err := p.api.GetInstanceStatsWithResponse(ctx, pi.id)
		if err != nil {
			return nil, &UnreachableError{Err: err}
		}
		if result(r.StatusCode(), r.Body, nil) != nil || r.JSON200 == nil {
			continue // stopped or gone since
		}
		s := r.JSON200
		nanos := uint64(s.CpuSeconds * 1e9)
		rss := uint64(max(s.MemoryRssBytes, 0))
		cpu := &statsv1alpha1.CPUStats{Time: now, UsageCoreNanoSeconds: &nanos}
		mem := &statsv1alpha1.MemoryStats{Time: now, WorkingSetBytes: &rss, UsageBytes: &rss, RSSBytes: &rss}
		ps := statsv1alpha1.PodStats{
			PodRef: statsv1alpha1.PodReference{Name: pi.pod.Name, Namespace: pi.pod.Namespace, UID: string(pi.pod.UID)},
			CPU:    cpu, Memory: mem, StartTime: now,
		}
		if pi.pod.Status.StartTime != nil {
			ps.StartTime = *pi.pod.Status.StartTime
		}
		for _, c := range pi.pod.Spec.Containers {
			ps.Containers = append(ps.Containers, statsv1alpha1.ContainerStats{Name: c.Name, StartTime: ps.StartTime, CPU: cpu, Memory: mem})
		}
		sum.Pods = append(sum.Pods, ps)
	}
	return sum, nil
}

// GetMetricsResource returns no metrics (the stats summary has them).
func (p *Provider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return []*dto.MetricFamily{}, nil
}
