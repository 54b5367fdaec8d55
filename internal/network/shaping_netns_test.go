package network_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"hypeman/internal/network"
	"hypeman/internal/network/nettest"
)

// tcQdisc is the subset of `tc -j qdisc show` we check.
type tcQdisc struct {
	Kind    string `json:"kind"`
	Root    bool   `json:"root"`
	Options struct {
		Rate int64 `json:"rate"` // bytes/s
	} `json:"options"`
}

func qdiscs(t *testing.T, ns, dev string) map[string]tcQdisc {
	t.Helper()
	var qs []tcQdisc
	if err := json.Unmarshal([]byte(nettest.Run(t, ns, "tc", "-j", "qdisc", "show", "dev", dev)), &qs); err != nil {
		t.Fatal(err)
	}
	out := map[string]tcQdisc{}
	for _, q := range qs {
		out[q.Kind] = q
	}
	return out
}

// CreateTAP installs exactly the limits asked for (tbf on the TAP for
// download; ingress → ifb → tbf for upload), re-applying replaces them, and
// the ifb goes with the TAP.
func TestCreateTAPShapesBandwidth(t *testing.T) {
	t.Parallel()
	ns := nettest.NewNS(t)
	m := newBridgeManager(t, ns, t.TempDir())
	ctx := context.Background()
	l, err := m.Allocate(ctx, "inst-shaped")
	if err != nil {
		t.Fatal(err)
	}
	ifb := "hb" + strings.TrimPrefix(l.TAP, "hm")

	if err := m.CreateTAP(ctx, l, network.Bandwidth{Download: 2 << 20, Upload: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	q := qdiscs(t, ns, l.TAP)
	if q["tbf"].Options.Rate != 2<<20 || !q["tbf"].Root {
		t.Fatalf("TAP download shaping: %+v", q)
	}
	if _, ok := q["ingress"]; !ok {
		t.Fatalf("TAP has no ingress qdisc: %+v", q)
	}
	filters := nettest.Run(t, ns, "tc", "filter", "show", "dev", l.TAP, "parent", "ffff:")
	if !strings.Contains(filters, "Egress Redirect to device "+ifb) {
		t.Fatalf("no redirect to %s:\n%s", ifb, filters)
	}
	if q := qdiscs(t, ns, ifb); q["tbf"].Options.Rate != 1<<20 {
		t.Fatalf("ifb upload shaping: %+v", q)
	}
	if ls := links(t, ns); !hasFlag(ls[ifb], "UP") || ls[ifb].LinkInfo.InfoKind != "ifb" {
		t.Fatalf("ifb %s: %+v", ifb, ls[ifb])
	}

	// Re-applied (daemon re-adopting a live VM) with other limits: the old
	// ones are gone, not stacked.
	if err := m.CreateTAP(ctx, l, network.Bandwidth{Download: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	q = qdiscs(t, ns, l.TAP)
	if q["tbf"].Options.Rate != 1<<20 {
		t.Fatalf("after re-apply: %+v", q)
	}
	if _, ok := q["ingress"]; ok {
		t.Fatal("upload limit removed but the ingress redirect stayed")
	}
	if _, ok := links(t, ns)[ifb]; ok {
		t.Fatal("upload limit removed but the ifb stayed")
	}
	if err := m.CreateTAP(ctx, l, network.Bandwidth{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := qdiscs(t, ns, l.TAP)["tbf"]; ok {
		t.Fatal("limits removed but tbf stayed")
	}

	// DeleteTAP takes the ifb along; Prune removes an orphan ifb.
	if err := m.CreateTAP(ctx, l, network.Bandwidth{Upload: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteTAP(ctx, l); err != nil {
		t.Fatal(err)
	}
	ls := links(t, ns)
	if _, ok := ls[ifb]; ok {
		t.Fatal("DeleteTAP left the ifb")
	}
	nettest.Run(t, ns, "ip", "link", "add", "hb0a64fffe", "type", "ifb")
	nettest.Run(t, ns, "ip", "link", "add", "hbkeepme01", "type", "ifb") // not ours by name
	if _, err := m.Prune(ctx, func(string) bool { return true }); err != nil {
		t.Fatal(err)
	}
	ls = links(t, ns)
	if _, ok := ls["hb0a64fffe"]; ok {
		t.Fatal("orphan ifb not pruned")
	}
	if _, ok := ls["hbkeepme01"]; !ok {
		t.Fatal("Prune deleted an ifb not named like ours")
	}
}

func TestCreateTAPRefusesLimitsWithoutTAP(t *testing.T) {
	m, err := network.New(context.Background(), network.Config{Mode: network.ModeUser, StateDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	l, err := m.Allocate(context.Background(), "inst-u")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTAP(context.Background(), l, network.Bandwidth{}); err != nil {
		t.Fatalf("no limits in user mode: %v", err)
	}
	if err := m.CreateTAP(context.Background(), l, network.Bandwidth{Download: 1 << 20}); err == nil || !strings.Contains(err.Error(), "bridge") {
		t.Fatalf("limits in user mode: %v", err)
	}
}
