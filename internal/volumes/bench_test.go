package volumes

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"hypeman/internal/testutil/tier"
)

// BenchmarkCreateEmpty measures an empty volume create (sparse file +
// mkfs.ext4 with lazy init + volume.json) at a few sizes.
func BenchmarkCreateEmpty(b *testing.B) {
	tier.Tools(b, "mkfs.ext4")
	for _, gb := range []int{1, 100, 1024} {
		b.Run(fmt.Sprintf("%dGB", gb), func(b *testing.B) {
			s, err := New(Config{Dir: filepath.Join(b.TempDir(), "v"), MaxSizeGB: 1024})
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; b.Loop(); i++ {
				v, err := s.Create(context.Background(), CreateParams{Name: fmt.Sprintf("v%d", i), SizeGB: gb})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				s.Delete(context.Background(), v.ID)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkGzipBomb measures how long a 1 GiB gzip bomb takes to be
// stopped by a 100 MiB cap (extract only, no mkfs).
func BenchmarkGzipBomb(b *testing.B) {
	tier.Root(b, "extraction gives files their owners (chown)")
	bomb := gzipBomb(b, 1<<30)
	for b.Loop() {
		if _, err := extract(context.Background(), b.TempDir(), bytes.NewReader(bomb), 100<<20, 1); err == nil {
			b.Fatal("bomb extracted")
		}
	}
}
