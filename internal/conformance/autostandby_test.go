package conformance_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"hypeman/internal/cli"
	"hypeman/internal/network/nettest"
	"hypeman/internal/testutil"
	"hypeman/internal/testutil/e2e"
	"hypeman/internal/testutil/testimage"
	"hypeman/internal/testutil/upstreamcli"
)

// autoStandbyStatus is what the checks read from `auto-standby status`.
type autoStandbyStatus struct {
	Supported             bool       `json:"supported"`
	Enabled               bool       `json:"enabled"`
	Eligible              bool       `json:"eligible"`
	Status                string     `json:"status"`
	Reason                string     `json:"reason"`
	IdleTimeout           string     `json:"idle_timeout"`
	LastInboundActivityAt *time.Time `json:"last_inbound_activity_at"`
	HoldUntil             *time.Time `json:"hold_until"`
	TrackingMode          string     `json:"tracking_mode"`
}

// TestUpstreamAutoStandby drives auto-standby with hypeman's unmodified CLI
// (run --auto-standby-*, update auto-standby, auto-standby status) and
// ours for the hold (the upstream CLI has no hold command): a request
// through the ingress counts as activity, a hold delays the standby, an
// idle instance goes to Standby by itself and is restored.
func TestUpstreamAutoStandby(t *testing.T) {
	ns := nettest.NewNS(t)
	s := e2e.Start(t, "--network-mode", "bridge", "--network-netns", ns)
	up := upstreamcli.New(t, s.BaseURL, s.Token)
	s.PushImage("conformance/web:v1", testimage.Busybox(t, webImage))
	f := &flow{t: t, s: s, up: up}
	status := func(t *testing.T) autoStandbyStatus {
		t.Helper()
		var st autoStandbyStatus
		f.json(t, &st, "auto-standby", "status", "asweb")
		return st
	}
	// row is a line of the upstream CLI's status table.
	row := func(k, v string) string { return fmt.Sprintf("%-14s %s", k, v) }
	port := testutil.FreePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)

	f.step("run with a policy", func(t *testing.T) {
		f.cli(t, nil, "run", "--name", "asweb", "--memory", "256MB", "--cpus", "1",
			"--auto-standby-idle-timeout", "1h", "--cmd", webScript, "conformance/web:v1")
		f.wait(t, "asweb", "Running")
		var in struct {
			AutoStandby struct {
				Enabled     bool   `json:"enabled"`
				IdleTimeout string `json:"idle_timeout"`
			} `json:"auto_standby"`
		}
		f.json(t, &in, "inspect", "asweb")
		if !in.AutoStandby.Enabled || in.AutoStandby.IdleTimeout != "1h" {
			t.Fatalf("inspect auto_standby: %+v", in.AutoStandby)
		}
		out := f.cli(t, nil, "auto-standby", "status", "asweb").Stdout
		for _, want := range []string{row("SUPPORTED", "true"), row("ENABLED", "true"), row("IDLE TIMEOUT", "1h0m0s"), row("TRACKING", "conntrack_netlink_v4_tcp")} {
			if !strings.Contains(out, want) {
				t.Errorf("auto-standby status lacks %q:\n%s", want, out)
			}
		}
	})

	f.step("a request through the ingress is inbound activity", func(t *testing.T) {
		f.cli(t, nil, "ingress", "create", "asweb", "--hostname", "asweb.conformance.test", "--port", "8080",
			"--host-port", strconv.Itoa(port), "--name", "asweb-ing")
		// Connections before the controller's first look at a freshly
		// Running instance are its baseline: wait for the countdown.
		for deadline := time.Now().Add(30 * time.Second); status(t).Status != "idle_countdown"; time.Sleep(250 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no idle countdown: %+v", status(t))
			}
		}
		before := time.Now()
		if body := httpGet(t, url, "asweb.conformance.test", 200); body != "hello conformance\n" {
			t.Fatalf("through the ingress: %q", body)
		}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
			st := status(t)
			if st.LastInboundActivityAt != nil && !st.LastInboundActivityAt.Before(before.Add(-time.Second)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the ingress request was not seen as activity: %+v", st)
			}
		}
	})

	f.step("bad policy is refused naming the field", func(t *testing.T) {
		r := up.Run(t, t.Context(), "", nil, "update", "auto-standby", "asweb", "--idle-timeout", "100ms")
		if r.Code == 0 || !strings.Contains(r.Stdout+r.Stderr, "idle_timeout") {
			t.Fatalf("update auto-standby --idle-timeout 100ms: %v", r)
		}
	})

	var holdUntil time.Time
	f.step("hold, then a short idle timeout", func(t *testing.T) {
		f.ours(t, "auto-standby", "hold", "asweb", "--duration", "8s")
		st := status(t)
		if st.HoldUntil == nil || time.Until(*st.HoldUntil) < 5*time.Second {
			t.Fatalf("status after hold: %+v", st)
		}
		holdUntil = *st.HoldUntil
		f.cli(t, nil, "update", "auto-standby", "asweb", "--idle-timeout", "2s")
		if st := status(t); st.IdleTimeout != "2s" || !st.Enabled {
			t.Fatalf("status after update: %+v", st)
		}
	})

	f.step("idle instance goes to standby by itself, after the hold", func(t *testing.T) {
		// Polled, not `wait`: the standby passes through Paused, where
		// wait returns (Paused is a resting state for it).
		for deadline := time.Now().Add(3 * time.Minute); f.inspect(t, "asweb").State != "Standby"; time.Sleep(250 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("not on standby after 3 minutes: %+v", status(t))
			}
		}
		if now := time.Now(); now.Before(holdUntil) {
			t.Fatalf("standby at %s, before the hold ended at %s", now, holdUntil)
		}
		if st := status(t); st.Status != "ineligible" || st.Reason != "instance_not_running" {
			t.Fatalf("status on standby: %+v", st)
		}
		var out, errb bytes.Buffer
		env := map[string]string{"HYPEMAN_BASE_URL": s.BaseURL, "HYPEMAN_API_KEY": s.Token}
		code := cli.Run(t.Context(), []string{"--format", "json", "auto-standby", "hold", "asweb"}, bytes.NewReader(nil), &out, &errb, func(k string) string { return env[k] })
		if code == 0 || !strings.Contains(out.String()+errb.String(), "is on standby: restore it") {
			t.Fatalf("hold on standby: exit %d %s%s", code, out.String(), errb.String())
		}
	})

	f.step("restore and serve again", func(t *testing.T) {
		f.cli(t, nil, "restore", "asweb")
		if body := httpGet(t, url, "asweb.conformance.test", 200); body != "hello conformance\n" {
			t.Fatalf("after restore: %q", body)
		}
		f.cli(t, nil, "update", "auto-standby", "asweb", "--enabled=false")
		var st autoStandbyStatus
		raw := f.cli(t, nil, "--format", "json", "auto-standby", "status", "asweb").Stdout
		if err := json.Unmarshal([]byte(raw), &st); err != nil || st.Status != "disabled" || st.Reason != "policy_disabled" {
			t.Fatalf("status after --enabled=false: %+v (%v)", st, err)
		}
		f.cli(t, nil, "ingress", "delete", "asweb-ing")
		f.cli(t, nil, "rm", "--force", "asweb")
	})
}
