package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"hypeman/internal/api/client"
)

func TestRenderBar(t *testing.T) {
	for _, tc := range []struct {
		done, total int64
		width       int
		want        string
	}{
		{0, 100, 10, "[          ]"},
		{50, 100, 10, "[====>     ]"},
		{100, 100, 10, "[==========]"},
		{150, 100, 10, "[==========]"},
		{-5, 100, 4, "[    ]"},
		{5, 0, 4, "[    ]"},
		{10, 100, 10, "[>         ]"},
	} {
		if got := renderBar(tc.done, tc.total, tc.width); got != tc.want {
			t.Errorf("renderBar(%d, %d, %d) = %q, want %q", tc.done, tc.total, tc.width, got, tc.want)
		}
	}
}

func TestRenderProgress(t *testing.T) {
	pulling := transfer{Name: "docker.io/library/alpine:3.20", Status: "pulling", BytesDone: 3_200_000, BytesTotal: 7_100_000, LayersDone: 1, LayersTotal: 2}
	got := renderProgress(pulling, 100)
	for _, want := range []string{"docker.io/library/alpine:3.20", "pulling", "[", ">", "3.2 MB / 7.1 MB", "layers 1/2"} {
		if !strings.Contains(got, want) {
			t.Errorf("line %q lacks %q", got, want)
		}
	}
	if n := utf8.RuneCountInString(got); n > 100 {
		t.Errorf("line is %d wide, limit 100: %q", n, got)
	}
	// Narrow terminal: the bar goes first, then the name is shortened.
	narrow := renderProgress(pulling, 60)
	if strings.Contains(narrow, "[") || utf8.RuneCountInString(narrow) > 60 || !strings.Contains(narrow, "3.2 MB / 7.1 MB") {
		t.Errorf("narrow line %q", narrow)
	}
	long := pulling
	long.Name = strings.Repeat("registry.example.com/", 5) + "app:v1"
	l := renderProgress(long, 80)
	if utf8.RuneCountInString(l) > 80 || !strings.Contains(l, "…") {
		t.Errorf("long name line %q (%d wide)", l, utf8.RuneCountInString(l))
	}
	// Before the total is known: no bar, no byte counters.
	if got := renderProgress(transfer{Name: "x", Status: "pending"}, 80); got != "x  pending" {
		t.Errorf("pending line %q", got)
	}
	// Ready shows the digest and size instead of counters.
	digest, size := "sha256:0123456789abcdef0123", int64(12_300_000)
	ready := imageTransfer(&client.Image{Name: "x", Status: client.ImageStatusReady, Digest: digest, SizeBytes: &size})
	if got := renderProgress(ready, 80); got != "x  ready       sha256:0123456789ab  12.3 MB" {
		t.Errorf("ready line %q", got)
	}
}

func TestProgressSinks(t *testing.T) {
	steps := []transfer{
		{Name: "img", Status: "pending"},
		{Name: "img", Status: "pulling", BytesTotal: 1000, LayersTotal: 2},
		{Name: "img", Status: "pulling", BytesDone: 500, BytesTotal: 1000, LayersTotal: 2},
		{Name: "img", Status: "pulling", BytesDone: 900, BytesTotal: 1000, LayersDone: 1, LayersTotal: 2},
		{Name: "img", Status: "converting", BytesDone: 1000, BytesTotal: 1000, LayersDone: 2, LayersTotal: 2},
		{Name: "img", Status: "ready", Detail: []string{"sha256:abc"}},
	}
	var plain bytes.Buffer
	p := &plainProgress{w: &plain}
	for _, s := range steps {
		p.update(s)
	}
	p.finish()
	want := "img: pending\n" +
		"img: pulling (layers 0/2, 1.0 kB)\n" +
		"img: pulling (layers 1/2, 1.0 kB)\n" +
		"img: converting (layers 2/2, 1.0 kB)\n" +
		"img: ready (sha256:abc)\n"
	if plain.String() != want {
		t.Errorf("plain progress:\n%s\nwant:\n%s", plain.String(), want)
	}

	var tty bytes.Buffer
	tp := &ttyProgress{w: &tty, width: 80}
	for _, s := range steps {
		tp.update(s)
		tp.update(s) // unchanged lines are not redrawn
	}
	tp.finish()
	out := tty.String()
	if n := strings.Count(out, "\r\x1b[K"); n != len(steps) {
		t.Errorf("%d redraws, want %d: %q", n, len(steps), out)
	}
	if !strings.HasSuffix(out, "img  ready       sha256:abc\n") || strings.Count(out, "\n") != 1 {
		t.Errorf("tty output should end with the final line and one newline: %q", out)
	}
}

func TestFormatHelpers(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 999: "999 B", 1000: "1.0 kB", 1500: "1.5 kB", 7_100_000: "7.1 MB", 999_960: "1.0 MB", 1_100_000_000: "1.1 GB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	now := testNow
	for d, want := range map[time.Duration]string{
		0: "just now", 5 * time.Second: "5 seconds ago", time.Minute: "1 minute ago",
		90 * time.Minute: "1 hour ago", 3 * time.Hour: "3 hours ago", 72 * time.Hour: "3 days ago",
		21 * 24 * time.Hour: "3 weeks ago", 90 * 24 * time.Hour: "3 months ago",
	} {
		if got := age(now, now.Add(-d)); got != want {
			t.Errorf("age(%v) = %q, want %q", d, got, want)
		}
	}
	if shortID("0123456789abcdef") != "0123456789ab" || shortID("abc") != "abc" {
		t.Error("shortID")
	}
	if shortDigest("sha256:0123456789abcdef") != "sha256:0123456789ab" {
		t.Error("shortDigest")
	}
}
