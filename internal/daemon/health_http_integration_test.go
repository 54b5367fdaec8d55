package daemon_test

import (
	"context"
	"testing"
	"time"

	"hypeman/internal/health"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/network/nettest"
	"hypeman/internal/restart"
	"hypeman/internal/testutil/testimage"
)

// A VM whose HTTP health endpoint starts failing is restarted and becomes
// healthy again (the check reaches the guest's IP inside this test's netns).
func TestHealthEndpointFailureRestarts(t *testing.T) {
	t.Parallel()
	nettest.RequireRoot(t)
	ns := nettest.NewNS(t)
	d := newDaemonWith(t, map[string]string{"network_mode": "bridge", "network_netns": ns})
	// First boot: /healthz disappears after a few seconds. Later boots keep it.
	ref := testimage.Push(t, testimage.Registry(t), "test/webhealth", testimage.Busybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd: []string{"mkdir -p /www && echo ok > /www/healthz; if [ ! -f /data/once ]; then mkdir -p /data; touch /data/once; sync; " +
			"(sleep 6; rm -f /www/healthz; echo endpoint-broken) & fi; exec httpd -f -p 8080 -h /www"},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "webhealth", Image: ref, Size: "256MB", VCPUs: 1,
		RestartPolicy: &restart.Policy{Policy: restart.OnFailure, Backoff: time.Second, MaxBackoff: time.Second, StableAfter: 10 * time.Minute},
		HealthCheck: &health.Check{Type: health.HTTP, Port: 8080, Path: "/healthz", ExpectedStatus: 200,
			Interval: time.Second, Timeout: time.Second, FailureThreshold: 2, SuccessThreshold: 1}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "healthy", 90*time.Second, func() bool {
		g := mustGet(t, d, in.ID)
		return g.HealthStatus != nil && g.HealthStatus.Status == health.Healthy
	})
	waitFor(t, "unhealthy, restarted, healthy again", 2*time.Minute, func() bool {
		g := mustGet(t, d, in.ID)
		return boots(t, d, in.ID) == 2 && g.State == state.Running && g.HealthStatus != nil && g.HealthStatus.Status == health.Healthy
	})
	if g := mustGet(t, d, in.ID); g.RestartStatus == nil || g.RestartStatus.LastReason != restart.ReasonHealthCheck {
		t.Fatalf("restart status %+v", g.RestartStatus)
	}
}
