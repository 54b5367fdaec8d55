package network_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"hypeman/internal/network"
	"hypeman/internal/network/nettest"
)

func benchManager(b *testing.B) *network.Manager {
	ns := nettest.NewNS(b)
	m, err := network.New(context.Background(), network.Config{Mode: network.ModeBridge, NetNS: ns, StateDir: b.TempDir()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}

// BenchmarkNewBridge is a daemon start on a fresh namespace: bridge,
// address, ip_forward, nft ruleset, TAP probe.
func BenchmarkNewBridge(b *testing.B) {
	var total time.Duration
	for range b.N {
		ns := nettest.NewNS(b)
		start := time.Now()
		m, err := network.New(context.Background(), network.Config{Mode: network.ModeBridge, NetNS: ns, StateDir: b.TempDir()}, nil)
		total += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs/new")
}

// BenchmarkSetupAgain is the idempotent re-run of Setup.
func BenchmarkSetupAgain(b *testing.B) {
	m := benchManager(b)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		if err := m.Setup(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreateDeleteTAP measures CreateTAP and DeleteTAP separately.
func BenchmarkCreateDeleteTAP(b *testing.B) {
	m := benchManager(b)
	ctx := context.Background()
	l, err := m.Allocate(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	var create, del time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if err := m.CreateTAP(ctx, l, network.Bandwidth{}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := m.DeleteTAP(ctx, l); err != nil {
			b.Fatal(err)
		}
		create += t1.Sub(t0)
		del += time.Since(t1)
	}
	b.ReportMetric(float64(create.Microseconds())/float64(b.N), "µs/create")
	b.ReportMetric(float64(del.Microseconds())/float64(b.N), "µs/delete")
}

// BenchmarkAllocateRelease is a lease round trip (two atomic, fsynced
// writes of leases.json) with no TAP.
func BenchmarkAllocateRelease(b *testing.B) {
	m := benchManager(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("i%d", i)
		if _, err := m.Allocate(ctx, id); err != nil {
			b.Fatal(err)
		}
		if err := m.Release(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}
