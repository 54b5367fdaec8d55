package podmap

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"hypeman/internal/api/client"
	"hypeman/internal/durations"
)

// Kubernetes' probe defaults (the apiserver fills them in; a pod built in
// code may leave them zero).
const (
	probePeriod  = 10
	probeTimeout = 1
	probeFailure = 3
	probeSuccess = 1
)

// mappedProbe is the probe that becomes the instance's health check: the
// livenessProbe, else the readinessProbe as a report-only check (hypemand
// reports its verdict in health_status but never restarts for it, as the
// kubelet never restarts for readiness). field is its path; p is nil when
// the container has neither.
func mappedProbe(c *corev1.Container) (p *corev1.Probe, field string, reportOnly bool) {
	switch {
	case c.LivenessProbe != nil:
		return c.LivenessProbe, ctr + ".livenessProbe", false
	case c.ReadinessProbe != nil:
		return c.ReadinessProbe, ctr + ".readinessProbe", true
	}
	return nil, "", false
}

// healthCheck maps the container's mappedProbe (grpc, host and headers are
// refused by the rules table first): httpGet → http, tcpSocket → tcp, exec
// → exec; periodSeconds → interval, timeoutSeconds → timeout (at most
// interval), initialDelaySeconds → start_period, thresholds as they are;
// a readinessProbe gives report_only.
func healthCheck(c *corev1.Container) (*client.HealthCheck, error) {
	p, field, reportOnly := mappedProbe(c)
	if p == nil {
		return nil, nil
	}
	period := orDefault(int64(p.PeriodSeconds), probePeriod)
	timeout := min(orDefault(int64(p.TimeoutSeconds), probeTimeout), period)
	hc := &client.HealthCheck{
		Interval:         ptr(secs(period)),
		Timeout:          ptr(secs(timeout)),
		StartPeriod:      ptr(secs(int64(p.InitialDelaySeconds))),
		FailureThreshold: ptr(int(orDefault(int64(p.FailureThreshold), probeFailure))),
		SuccessThreshold: ptr(int(orDefault(int64(p.SuccessThreshold), probeSuccess))),
	}
	if reportOnly {
		hc.ReportOnly = ptr(true)
	}
	switch {
	case p.HTTPGet != nil:
		port, err := probePort(c, field+".httpGet.port", p.HTTPGet.Port)
		if err != nil {
			return nil, err
		}
		path := p.HTTPGet.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		h := &client.HealthCheckHTTP{Port: port, Path: &path}
		if p.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			h.Scheme = ptr(client.Https)
		}
		hc.Type, hc.Http = ptr(client.HealthCheckHTTPType), h
	case p.TCPSocket != nil:
		port, err := probePort(c, field+".tcpSocket.port", p.TCPSocket.Port)
		if err != nil {
			return nil, err
		}
		hc.Type, hc.Tcp = ptr(client.HealthCheckTCPType), &client.HealthCheckTCP{Port: port}
	case p.Exec != nil && len(p.Exec.Command) > 0:
		hc.Type, hc.Exec = ptr(client.HealthCheckExecType), &client.HealthCheckExec{Command: p.Exec.Command}
	default:
		return nil, &UnsupportedError{Field: field, Reason: "needs httpGet, tcpSocket or exec (with a command)"}
	}
	return hc, nil
}

// probePort resolves a port number or the name of a container port.
func probePort(c *corev1.Container, field string, p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		if p.IntVal < 1 || p.IntVal > 65535 {
			return 0, &UnsupportedError{Field: field, Reason: fmt.Sprintf("%d is not a port (1-65535)", p.IntVal)}
		}
		return int(p.IntVal), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, &UnsupportedError{Field: field, Reason: fmt.Sprintf("names port %q, which the container does not declare", p.StrVal)}
}

func secs(n int64) string { return durations.Format(time.Duration(n) * time.Second) }

func ptr[T any](v T) *T { return &v }
