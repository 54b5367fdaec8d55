package images

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"hypeman/internal/fsutil"
	"hypeman/internal/testutil/testimage"
)

// BenchmarkConvert100MB measures the whole conversion of a ~100 MB image
// (≈5,000 files, half incompressible) served by an in-process registry:
// pull + verify + flatten + mkfs, once per disk format (and once without
// the OCI cache). Besides ns/op it reports the two phases, the disk size
// and what the OCI cache keeps.
func BenchmarkConvert100MB(b *testing.B) {
	host := startRegistry(b, nil)
	img := testimage.Large(b, 100<<20)
	ref := testimage.Push(b, host, "bench/large:latest", img)

	for _, tc := range []struct {
		name    string
		format  DiskFormat
		staging string
		noCache bool // without the OCI cache's tee (what keeping layers costs)
	}{
		{"erofs", DiskErofs, "", false},
		{"erofs-no-oci-cache", DiskErofs, "", true},
		{"ext4", DiskExt4, "", false},
		{"erofs-tmpfs-staging", DiskErofs, "/dev/shm", false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			staging := ""
			if tc.staging != "" {
				staging = mkTempIn(b, tc.staging)
			}
			var fetch, mkfs time.Duration
			var diskBytes, contentBytes, cacheBytes int64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dir := b.TempDir()
				s := newTestStore(b, Config{Dir: dir, DiskFormat: tc.format, StagingDir: staging, DisableOCICache: tc.noCache})
				b.StartTimer()
				im, err := s.Pull(ctxT(b), ref)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				var rec diskRecord
				if err := fsutil.ReadJSON(filepath.Join(filepath.Dir(im.DiskPath), "image.json"), &rec); err != nil {
					b.Fatal(err)
				}
				fetch += time.Duration(rec.Stats.FetchMillis) * time.Millisecond
				mkfs += time.Duration(rec.Stats.MkfsMillis) * time.Millisecond
				diskBytes, contentBytes, cacheBytes = rec.SizeBytes, rec.Stats.ContentBytes, s.OCICacheBytes()
				s.Close()
				os.RemoveAll(dir)
				b.StartTimer()
			}
			b.ReportMetric(float64(fetch.Milliseconds())/float64(b.N), "fetch+flatten-ms/op")
			b.ReportMetric(float64(mkfs.Milliseconds())/float64(b.N), "mkfs-ms/op")
			b.ReportMetric(float64(diskBytes)/1e6, "disk-MB")
			b.ReportMetric(float64(contentBytes)/1e6, "content-MB")
			b.ReportMetric(float64(cacheBytes)/1e6, "oci-cache-MB")
		})
	}
}

// mkTempIn makes a temporary directory under base, removed after the test.
func mkTempIn(tb testing.TB, base string) string {
	tb.Helper()
	d, err := os.MkdirTemp(base, "hypeman-images-bench-")
	if err != nil {
		tb.Fatalf("staging dir in %s: %v", base, err)
	}
	tb.Cleanup(func() { os.RemoveAll(d) })
	return d
}
