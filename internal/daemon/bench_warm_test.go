package daemon_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"hypeman/internal/daemon"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/testutil/testimage"
)

// BenchmarkWarmCreate measures, in one run on one image (issue 13):
// cold create→Running, warm create→Running (from the template the cold
// create caused) and their ratio (target ≤ 0.15), then the summed PSS of
// 10 idle warm clones and of 10 idle cold instances (ratio target ≤ 0.35).
func BenchmarkWarmCreate(b *testing.B) {
	d := newDaemonWith(b, map[string]string{"warm_enabled": "true", "oversub_cpu": "16", "oversub_memory": "4"})
	host := testimage.Registry(b)
	ref := testimage.Push(b, host, "bench/warm", testimage.Busybox(b, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo up; sleep 3600"},
	}))
	ctx := context.Background()
	if _, err := d.Images.Pull(ctx, ref); err != nil {
		b.Fatal(err)
	}
	n := 0
	create := func(wantMode string) (*instances.Instance, time.Duration) {
		n++
		start := time.Now()
		in, err := d.Instances.Create(ctx, instances.CreateParams{Name: fmt.Sprintf("w%d", n), Image: ref, Size: "256MB", VCPUs: 1})
		if err != nil {
			b.Fatal(err)
		}
		res, err := d.Instances.WaitForState(ctx, in.ID, []state.State{state.Running}, 5*time.Minute)
		if err != nil || res.State != state.Running {
			b.Fatalf("wait: %v %+v", err, res)
		}
		took := time.Since(start)
		in, err = d.Instances.Get(ctx, in.ID)
		if err != nil {
			b.Fatal(err)
		}
		if in.StartMode != wantMode {
			b.Fatalf("%s started %s, want %s", in.Name, in.StartMode, wantMode)
		}
		return in, took
	}
	waitPool := func() {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		if err := d.Instances.WarmPool().WaitIdle(wctx); err != nil {
			b.Fatal(err)
		}
	}
	deleteAll := func(ins []*instances.Instance) {
		for _, in := range ins {
			if err := d.Instances.Delete(ctx, in.ID); err != nil {
				b.Fatal(err)
			}
		}
	}
	var cold, warm time.Duration
	for i := 0; i < b.N; i++ {
		c, t := create(instances.StartCold)
		cold += t
		waitPool()
		w, t := create(instances.StartWarm)
		warm += t
		deleteAll([]*instances.Instance{c, w})
	}
	b.ReportMetric(cold.Seconds()/float64(b.N), "cold-s")
	b.ReportMetric(warm.Seconds()/float64(b.N), "warm-s")
	b.ReportMetric(float64(warm)/float64(cold), "warm/cold")

	// Memory: 10 idle instances each way, one set at a time, same shape.
	// Cold ones are warm creates stopped and started again (a start is
	// always a cold boot of the instance), so the pool cannot serve them.
	const count = 10
	warmPSS := idlePSS(b, d, count, func() *instances.Instance { in, _ := create(instances.StartWarm); return in })
	coldPSS := idlePSS(b, d, count, func() *instances.Instance {
		in, _ := create(instances.StartWarm)
		if _, err := d.Instances.Stop(ctx, in.ID, instances.StopParams{}); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Instances.Start(ctx, in.ID, instances.StartParams{}); err != nil {
			b.Fatal(err)
		}
		res, err := d.Instances.WaitForState(ctx, in.ID, []state.State{state.Running}, 5*time.Minute)
		if err != nil || res.State != state.Running {
			b.Fatalf("wait: %v %+v", err, res)
		}
		if got, _ := d.Instances.Get(ctx, in.ID); got.StartMode != instances.StartCold {
			b.Fatalf("restart started %s", got.StartMode)
		}
		return in
	})
	b.ReportMetric(float64(warmPSS)/(1<<20), "warm10-PSS-MiB")
	b.ReportMetric(float64(coldPSS)/(1<<20), "cold10-PSS-MiB")
	b.ReportMetric(float64(warmPSS)/float64(coldPSS), "PSS-warm/cold")
}

// idlePSS starts count instances with start, lets them idle, sums the PSS
// of their VMM processes and deletes them.
func idlePSS(b *testing.B, d *daemon.Daemon, count int, start func() *instances.Instance) int64 {
	ctx := context.Background()
	var ins []*instances.Instance
	for i := 0; i < count; i++ {
		ins = append(ins, start())
	}
	time.Sleep(5 * time.Second) // idle: boot-time page cache and timers settle
	var total int64
	for _, in := range ins {
		got, err := d.Instances.Get(ctx, in.ID)
		if err != nil || got.Pid == 0 {
			b.Fatalf("%s: no VMM pid (%v)", in.Name, err)
		}
		pss, err := readPSS(got.Pid)
		if err != nil {
			b.Fatal(err)
		}
		total += pss
	}
	for _, in := range ins {
		if err := d.Instances.Delete(ctx, in.ID); err != nil {
			b.Fatal(err)
		}
	}
	return total
}

// readPSS is a process's proportional set size in bytes
// (/proc/PID/smaps_rollup).
func readPSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("pid %d: no Pss in smaps_rollup", pid)
}
