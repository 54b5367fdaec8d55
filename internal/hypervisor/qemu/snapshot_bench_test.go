package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
)

// benchCompressions: uncompressed, the fast ends of zstd and lz4, and one
// stronger level of each. zstd 10-19 (klauspost's "best" encoder) is left
// out here: 3-16 s per 65 MB save on our hosts, which
// internal/daemon's BenchmarkStandbyRestore reports.
var benchCompressions = []hypervisor.Compression{
	{}, {Algorithm: "zstd", Level: 1}, {Algorithm: "zstd", Level: 3},
	{Algorithm: "lz4", Level: 0}, {Algorithm: "lz4", Level: 9},
}

// BenchmarkSnapshot measures standby with the counter guest: SaveState time
// (running → snapshot published and synced), Restore→resumed time (snapshot
// checks, QEMU start, state load, cont) and the state size, per storage
// setting (benchCompressions), for an idle 256 MiB and 1 GiB guest and a 1 GiB guest holding
// 256 MiB of random data (incompressible: the worst case for zstd). Each
// guest boots once; every iteration saves the current incarnation, kills it
// and restores it, so later iterations save restored VMs.
//
//	go test -run '^$' -bench Snapshot -benchtime 5x ./internal/hypervisor/qemu
func BenchmarkSnapshot(b *testing.B) {
	d := newTestDriver(b)
	base := b.TempDir()
	initrd := counterInitrd(b, base)
	ctx := context.Background()
	seq := 0
	for _, g := range []struct{ mem, fill int }{{256, 0}, {1024, 0}, {1024, 256}} {
		dir := mkdir(b, filepath.Join(base, fmt.Sprintf("vm-%d-%d", g.mem, g.fill)))
		killOnCleanup(b, dir)
		var vm hypervisor.VM
		boot := func(b *testing.B) {
			extra := ""
			if g.fill > 0 {
				extra = fmt.Sprintf("hmfill=%d", g.fill)
			}
			start := time.Now()
			v, err := d.Launch(ctx, counterVMConfig(b, dir, initrd, g.mem, extra))
			if err != nil {
				b.Fatal(err)
			}
			vm = v
			waitCounter(b, dir, 0, 5*time.Minute)
			b.Logf("mem=%d MiB fill=%d MiB: cold boot to first counter line %v", g.mem, g.fill, time.Since(start).Round(time.Millisecond))
			waitCounter(b, dir, 3, time.Minute)
		}
		for _, c := range benchCompressions {
			name := fmt.Sprintf("mem=%dMiB/fill=%dMiB/comp=%s", g.mem, g.fill, c)
			b.Run(name, func(b *testing.B) {
				b.StopTimer()
				if vm == nil {
					boot(b)
				}
				var saveT, restoreT time.Duration
				var file, stream int64
				for range b.N {
					seq++
					snap := filepath.Join(base, fmt.Sprintf("snap-%d", seq))
					b.StartTimer()
					t0 := time.Now()
					info, err := vm.SaveState(ctx, snap, hypervisor.SaveOptions{Compression: c})
					saveT += time.Since(t0)
					b.StopTimer()
					if err != nil {
						b.Fatal(err)
					}
					file, stream = info.StateBytes, info.StreamBytes
					vm.Kill()
					vm.Close()
					b.StartTimer()
					t1 := time.Now()
					nv, err := d.Restore(ctx, hypervisor.RestoreConfig{Dir: dir, SnapshotDir: snap})
					if err == nil {
						err = nv.Resume(ctx)
					}
					restoreT += time.Since(t1)
					b.StopTimer()
					if err != nil {
						b.Fatal(err)
					}
					vm = nv
					os.RemoveAll(snap)
					l, _ := lastCounter(b, dir)
					waitCounter(b, dir, l.N+2, time.Minute)
				}
				n := float64(b.N)
				b.ReportMetric(float64(saveT.Milliseconds())/n, "save-ms")
				b.ReportMetric(float64(restoreT.Milliseconds())/n, "restore-ms")
				b.ReportMetric(float64(file)/(1<<20), "state-MiB")
				b.ReportMetric(float64(stream)/(1<<20), "stream-MiB")
				b.ReportMetric(float64(g.mem), "guest-MiB")
			})
		}
		if vm != nil {
			vm.Kill()
			vm.Close()
		}
	}
}
