package daemon_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"hypeman/internal/guest/agent"
	"hypeman/internal/hypervisor"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/testutil/testimage"
)

// standbyBenchCases are the storage settings BenchmarkStandbyRestore
// compares: uncompressed, both ends of zstd's and lz4's level ranges, and
// zstd 19 delayed (the standby saves uncompressed; compress-s is the time
// until the background job has compressed the state).
var standbyBenchCases = []struct {
	name  string
	c     hypervisor.Compression
	delay time.Duration
}{
	{name: "none"},
	{name: "zstd-1", c: hypervisor.Compression{Algorithm: "zstd", Level: 1}},
	{name: "zstd-19", c: hypervisor.Compression{Algorithm: "zstd", Level: 19}},
	{name: "lz4-0", c: hypervisor.Compression{Algorithm: "lz4", Level: 0}},
	{name: "lz4-9", c: hypervisor.Compression{Algorithm: "lz4", Level: 9}},
	{name: "zstd-19-delayed", c: hypervisor.Compression{Algorithm: "zstd", Level: 19}, delay: time.Millisecond},
}

// BenchmarkStandbyRestore reports, for the same image and per storage
// setting (standbyBenchCases): cold create→Running, standby time,
// restore→Running time, the restore/cold ratio (goal ≤ 0.25) and the
// snapshot's size relative to guest memory.
func BenchmarkStandbyRestore(b *testing.B) {
	d := newDaemonB(b)
	ref := testimage.Push(b, testimage.Registry(b), "bench/counter", testimage.Busybox(b, counterImage(b)))
	ctx := context.Background()
	if _, err := d.Images.Pull(ctx, ref); err != nil {
		b.Fatal(err)
	}
	seq := 0
	for _, bc := range standbyBenchCases {
		b.Run("comp="+bc.name, func(b *testing.B) {
			const mem = 512 << 20
			var cold, standby, compress, restore time.Duration
			var stateBytes int64
			for i := 0; i < b.N; i++ {
				seq++
				t0 := time.Now()
				in, err := d.Instances.Create(ctx, instances.CreateParams{Name: fmt.Sprintf("s%d", seq), Image: ref, Size: "512MB", VCPUs: 1})
				if err != nil {
					b.Fatal(err)
				}
				waitRunning(b, d.Instances, in.ID)
				cold += time.Since(t0)
				time.Sleep(time.Second) // let the program run a little

				t1 := time.Now()
				c, delay := bc.c, bc.delay
				sb, err := d.Instances.Standby(ctx, in.ID, instances.StandbyParams{Compression: &c, CompressionDelay: &delay})
				if err != nil {
					b.Fatal(err)
				}
				standby += time.Since(t1)
				if delay > 0 {
					t2 := time.Now()
					for sb.StandbyCompression.State == instances.CompressionStateCompressing {
						time.Sleep(20 * time.Millisecond)
						if sb, err = d.Instances.Get(ctx, in.ID); err != nil {
							b.Fatal(err)
						}
					}
					compress += time.Since(t2)
				}
				if sc := sb.StandbyCompression; sc == nil || sc.Compression != c {
					b.Fatalf("standby compression %+v, want %s", sc, c)
				}
				stateBytes += dirBytes(filepath.Join(d.Config.Paths().InstanceDir(in.ID), "standby"))

				t3 := time.Now()
				if _, err := d.Instances.Restore(ctx, in.ID); err != nil {
					b.Fatal(err)
				}
				waitRunning(b, d.Instances, in.ID)
				restore += time.Since(t3)
				if err := d.Instances.Delete(ctx, in.ID); err != nil {
					b.Fatal(err)
				}
			}
			n := float64(b.N)
			b.ReportMetric(cold.Seconds()/n, "cold-s")
			b.ReportMetric(standby.Seconds()/n, "standby-s")
			if bc.delay > 0 {
				b.ReportMetric(compress.Seconds()/n, "compress-s")
			}
			b.ReportMetric(restore.Seconds()/n, "restore-s")
			b.ReportMetric(restore.Seconds()/cold.Seconds(), "restore/cold")
			b.ReportMetric(float64(stateBytes)/n/(1<<20), "snapshot-MiB")
			b.ReportMetric(float64(stateBytes)/n/float64(mem), "snapshot/memory")
		})
	}
}

func waitRunning(b testing.TB, m *instances.Manager, id string) {
	res, err := m.WaitForState(context.Background(), id, []state.State{state.Running}, 2*time.Minute)
	if err != nil || res.State != state.Running {
		b.Fatalf("wait running: %v %+v", err, res)
	}
}

// dirBytes sums allocated bytes under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// BenchmarkExecAndCopy reports the guest agent's exec round trip (echo)
// median and p99, and cp throughput for a 50 MB file into and out of the
// guest.
func BenchmarkExecAndCopy(b *testing.B) {
	d := newDaemonB(b)
	ref := testimage.Push(b, testimage.Registry(b), "bench/idle", testimage.Busybox(b, testimage.Options{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"exec sleep 3600"},
	}))
	ctx := context.Background()
	in, err := d.Instances.Create(ctx, instances.CreateParams{Name: "exec", Image: ref, Size: "512MB", VCPUs: 1})
	if err != nil {
		b.Fatal(err)
	}
	waitRunning(b, d.Instances, in.ID)
	// Exec latency.
	const execs = 50
	lat := make([]time.Duration, 0, execs)
	for range execs {
		var out bytes.Buffer
		t0 := time.Now()
		res, err := d.Instances.Exec(ctx, in.ID, agent.ExecRequest{Argv: []string{"echo", "hi"}}, agent.ExecIO{Stdout: &out})
		lat = append(lat, time.Since(t0))
		if err != nil || res.ExitCode != 0 || out.String() != "hi\n" {
			b.Fatalf("exec: %v %+v %q", err, res, out.String())
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })

	// cp 50 MB in and out.
	const size = 50 << 20
	payload := make([]byte, size)
	rand.Read(payload)
	b.ResetTimer()
	var in_, out_ time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := d.Instances.CopyTo(ctx, in.ID, agent.PutRequest{Path: "/tmp/big.bin", Kind: agent.PutFile}, bytes.NewReader(payload)); err != nil {
			b.Fatal(err)
		}
		in_ += time.Since(t0)
		t1 := time.Now()
		var got bytes.Buffer
		if err := d.Instances.CopyFrom(ctx, in.ID, agent.TreeRequest{Path: "/tmp/big.bin"}, func(_ agent.TreeEntry, data io.Reader) error {
			_, err := io.Copy(&got, data)
			return err
		}); err != nil {
			b.Fatal(err)
		}
		out_ += time.Since(t1)
		if !bytes.Equal(got.Bytes(), payload) {
			b.Fatal("cp round trip changed the file")
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(size/(1<<20)/(in_.Seconds()/n), "cp-in-MB/s")
	b.ReportMetric(size/(1<<20)/(out_.Seconds()/n), "cp-out-MB/s")
	// Reported after ResetTimer (which discards earlier metrics).
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "exec-p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "exec-p99-ms")
}
