package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
	"hypeman/internal/procfs"
)

// benchGroup is how many clones and how many cold-booted VMs
// BenchmarkSharedMemoryClones runs (issue 13 compares 10 with 10).
const benchGroup = 10

// BenchmarkSharedMemoryClones measures what clones of a template cost next
// to cold-booted VMs: a 256 MiB counter guest boots with its RAM in a memory
// file and is saved without it (ExcludeMemory); benchGroup clones are
// restored from it one after the other (each restore→running timed) and
// left running; benchGroup VMs of the same size boot cold, two at a time
// (TCG boots are CPU-bound). Once every guest has printed two more lines
// (idle: one line a second), the summed PSS of each group is read from
// /proc/<pid>/smaps_rollup. Metrics: pss-ratio (clones / cold; issue 13
// wants ≤ 0.35), each group's summed PSS, the template's save time and
// state size, the mean clone restore→running time and the template file's
// allocated size (page cache the clones share; PSS counts only what they
// map). Run it once:
//
//	go test -run '^$' -bench SharedMemoryClones -benchtime 1x ./internal/hypervisor/qemu
func BenchmarkSharedMemoryClones(b *testing.B) {
	d := newTestDriver(b)
	for range b.N {
		benchSharedMemoryOnce(b, d)
	}
}

func benchSharedMemoryOnce(b *testing.B, d *Driver) {
	b.StopTimer()
	base := b.TempDir()
	initrd := counterInitrd(b, base)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	const memMiB = 256
	const idle = "hmperiod=1000000"
	var vms []hypervisor.VM
	var vmMu sync.Mutex
	keep := func(v hypervisor.VM) {
		vmMu.Lock()
		vms = append(vms, v)
		vmMu.Unlock()
	}
	defer func() {
		for _, v := range vms {
			v.Kill()
			v.Close()
		}
	}()

	// Template.
	tdir := mkdir(b, filepath.Join(base, "template"))
	killOnCleanup(b, tdir)
	memFile := filepath.Join(base, "template.mem")
	cfg := counterVMConfig(b, tdir, initrd, memMiB, idle)
	cfg.MemoryFile = memFile
	tv, err := d.Launch(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	keep(tv)
	waitCounter(b, tdir, 2, 5*time.Minute)
	snap := filepath.Join(base, "snap")
	t0 := time.Now()
	info, err := tv.SaveState(ctx, snap, hypervisor.SaveOptions{ExcludeMemory: true})
	saveT := time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	tv.Kill()
	frozen, _ := lastCounter(b, tdir)

	// Clones, one after the other.
	var clonePids []int
	var clonesT time.Duration
	var cloneDirs []string
	for i := range benchGroup {
		dir := mkdir(b, filepath.Join(base, fmt.Sprintf("clone%d", i)))
		killOnCleanup(b, dir)
		t1 := time.Now()
		v, err := d.Restore(ctx, hypervisor.RestoreConfig{ID: filepath.Base(dir), Dir: dir, SnapshotDir: snap, MemoryFile: memFile})
		if err == nil {
			keep(v)
			err = v.Resume(ctx)
		}
		clonesT += time.Since(t1)
		if err != nil {
			b.Fatal(err)
		}
		clonePids = append(clonePids, v.Pid())
		cloneDirs = append(cloneDirs, dir)
	}

	// Cold boots, two at a time.
	var coldPids []int
	var coldDirs []string
	var bootT time.Duration
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	errs := make(chan error, benchGroup)
	var mu sync.Mutex
	for i := range benchGroup {
		dir := mkdir(b, filepath.Join(base, fmt.Sprintf("cold%d", i)))
		killOnCleanup(b, dir)
		cfg := counterVMConfig(b, dir, initrd, memMiB, idle)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			t2 := time.Now()
			v, err := d.Launch(ctx, cfg)
			if err != nil {
				errs <- err
				return
			}
			keep(v)
			if err := waitCounterErr(dir, 0, 5*time.Minute); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			bootT += time.Since(t2)
			coldPids = append(coldPids, v.Pid())
			coldDirs = append(coldDirs, dir)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}

	// Idle: every guest printed two more lines since now.
	all := append(append([]string(nil), cloneDirs...), coldDirs...)
	marks := map[string]int{}
	for _, dir := range all {
		l, _ := lastCounter(b, dir)
		marks[dir] = l.N
	}
	for _, dir := range all {
		waitCounter(b, dir, marks[dir]+2, 2*time.Minute)
	}
	for _, dir := range cloneDirs {
		if l := counterLines(b, dir); l[0].N < frozen.N {
			b.Fatalf("%s: clone restarted its counter (%d < %d)", dir, l[0].N, frozen.N)
		}
	}
	clonePSS, cloneAnon := sumPSS(b, clonePids)
	coldPSS, coldAnon := sumPSS(b, coldPids)
	var allocated int64
	if st, err := os.Stat(memFile); err == nil {
		allocated = st.Sys().(*syscall.Stat_t).Blocks * 512
	}
	ratio := float64(clonePSS) / float64(coldPSS)
	b.Logf("%d clones: PSS %d MiB (anon %d MiB); %d cold: PSS %d MiB (anon %d MiB); ratio %.3f; template save %v, state %d B, file %d MiB allocated; clone restore→running %v; cold boot→first line %v",
		benchGroup, clonePSS>>20, cloneAnon>>20, benchGroup, coldPSS>>20, coldAnon>>20, ratio, saveT.Round(time.Millisecond),
		info.StateBytes, allocated>>20, (clonesT / benchGroup).Round(time.Millisecond), (bootT / benchGroup).Round(time.Millisecond))
	b.ReportMetric(ratio, "pss-ratio")
	b.ReportMetric(float64(clonePSS)/(1<<20), "clones-pss-MiB")
	b.ReportMetric(float64(coldPSS)/(1<<20), "cold-pss-MiB")
	b.ReportMetric(float64(saveT.Milliseconds()), "tmpl-save-ms")
	b.ReportMetric(float64(info.StateBytes)/(1<<10), "tmpl-state-KiB")
	b.ReportMetric(float64(allocated)/(1<<20), "tmpl-file-MiB")
	b.ReportMetric(float64(clonesT.Milliseconds())/benchGroup, "clone-restore-ms")
	b.ReportMetric(float64(bootT.Milliseconds())/benchGroup, "cold-boot-ms")
}

// sumPSS adds up the PSS (and its anonymous part) of pids.
func sumPSS(b *testing.B, pids []int) (pss, anon int64) {
	b.Helper()
	for _, pid := range pids {
		u, err := procfs.ReadMemUsage(pid)
		if err != nil {
			b.Fatal(err)
		}
		pss += u.PSS
		anon += u.PSSAnon
	}
	return pss, anon
}

// waitCounterErr is waitCounter for goroutines (no Fatal).
func waitCounterErr(dir string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(filepath.Join(dir, hypervisor.SerialLogName))
		if err == nil {
			m := counterRE.FindAllSubmatch(b, -1)
			if len(m) > 0 {
				var last int
				fmt.Sscan(string(m[len(m)-1][1]), &last)
				if last >= n {
					return nil
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("guest in %s did not reach counter %d within %v", dir, n, timeout)
}
