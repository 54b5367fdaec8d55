package cli

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"hypeman/internal/api/client"
)

// transfer is what one progress line shows.
type transfer struct {
	Name        string
	Status      string
	BytesDone   int64
	BytesTotal  int64
	LayersDone  int
	LayersTotal int
	Detail      []string // shown instead of the bar and counters (e.g. the digest when ready)
}

func imageTransfer(img *client.Image) transfer {
	t := transfer{Name: img.Name, Status: string(img.Status)}
	if p := img.Progress; p != nil {
		t.BytesDone, t.BytesTotal = p.BytesDone, p.BytesTotal
		t.LayersDone, t.LayersTotal = p.LayersDone, p.LayersTotal
	}
	switch img.Status {
	case client.ImageStatusReady:
		if d := img.Digest; d != "" {
			t.Detail = append(t.Detail, shortDigest(d))
		}
		if n := deref(img.SizeBytes); n > 0 {
			t.Detail = append(t.Detail, humanBytes(n))
		}
	case client.ImageStatusFailed:
		if e := deref(img.Error); e != "" {
			t.Detail = append(t.Detail, e)
		}
	}
	return t
}

// renderBar draws [=====>     ] of the given inner width.
func renderBar(done, total int64, width int) string {
	if width < 1 {
		width = 1
	}
	filled := 0
	if total > 0 {
		done = min(max(done, 0), total)
		filled = int(int64(width) * done / total)
	}
	var b strings.Builder
	b.WriteByte('[')
	switch {
	case filled >= width:
		b.WriteString(strings.Repeat("=", width))
	case filled > 0:
		b.WriteString(strings.Repeat("=", filled-1))
		b.WriteByte('>')
		b.WriteString(strings.Repeat(" ", width-filled))
	default:
		b.WriteString(strings.Repeat(" ", width))
	}
	b.WriteByte(']')
	return b.String()
}

// renderProgress draws one progress line that fits in width columns:
// "NAME  STATUS  [====>    ]  3.2 MB / 7.1 MB  layers 1/2". The bar and the
// byte counters appear only once the total is known; parts are dropped
// (bar first) and the name shortened when the line is too wide.
func renderProgress(t transfer, width int) string {
	status := fmt.Sprintf("%-10s", t.Status)
	var tail []string
	bar := false
	if len(t.Detail) > 0 {
		tail = append(tail, t.Detail...)
	} else {
		if t.BytesTotal > 0 {
			bar = true
			tail = append(tail, fmt.Sprintf("%s / %s", humanBytes(t.BytesDone), humanBytes(t.BytesTotal)))
		}
		if t.LayersTotal > 0 {
			tail = append(tail, fmt.Sprintf("layers %d/%d", t.LayersDone, t.LayersTotal))
		}
	}
	rest := strings.Join(tail, "  ")
	nameW := utf8.RuneCountInString(t.Name)
	fixed := 2 + len(status) // "  STATUS"
	if rest != "" {
		fixed += 2 + utf8.RuneCountInString(rest)
	}
	barW := 0
	if bar {
		barW = min(30, width-nameW-fixed-4) // "  [" + "]"
		if barW < 10 {
			barW = 0
		}
	}
	used := fixed
	if barW > 0 {
		used += barW + 4
	}
	name := t.Name
	if nameW+used > width {
		name = truncate(t.Name, max(width-used, 12))
	}
	var b strings.Builder
	b.WriteString(name)
	b.WriteString("  ")
	b.WriteString(status)
	if barW > 0 {
		b.WriteString("  ")
		b.WriteString(renderBar(t.BytesDone, t.BytesTotal, barW))
	}
	if rest != "" {
		b.WriteString("  ")
		b.WriteString(rest)
	}
	return strings.TrimRight(b.String(), " ")
}

// truncate shortens s to n runes, ending in "…".
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// progress shows the state of a transfer on stderr.
type progress interface {
	update(t transfer)
	// finish ends the display (the last update stays visible).
	finish()
}

func (a *app) newProgress() progress {
	if a.progressTTY {
		return &ttyProgress{w: a.stderr, width: max(a.termWidth-1, 20)}
	}
	return &plainProgress{w: a.stderr}
}

// ttyProgress redraws one line in place.
type ttyProgress struct {
	w     io.Writer
	width int
	last  string
	drawn bool
}

func (p *ttyProgress) update(t transfer) {
	line := renderProgress(t, p.width)
	if line == p.last {
		return
	}
	p.last, p.drawn = line, true
	fmt.Fprintf(p.w, "\r\x1b[K%s", line)
}

func (p *ttyProgress) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// plainProgress prints a line when the status or the layer count changes,
// for logs and pipes.
type plainProgress struct {
	w      io.Writer
	status string
	layers int
	shown  bool
}

func (p *plainProgress) update(t transfer) {
	if p.shown && t.Status == p.status && t.LayersDone == p.layers {
		return
	}
	p.shown, p.status, p.layers = true, t.Status, t.LayersDone
	line := t.Name + ": " + t.Status
	var extra []string
	switch {
	case len(t.Detail) > 0:
		extra = append(extra, t.Detail...)
	default:
		if t.LayersTotal > 0 {
			extra = append(extra, fmt.Sprintf("layers %d/%d", t.LayersDone, t.LayersTotal))
		}
		if t.BytesTotal > 0 {
			extra = append(extra, humanBytes(t.BytesTotal))
		}
	}
	if len(extra) > 0 {
		line += " (" + strings.Join(extra, ", ") + ")"
	}
	fmt.Fprintln(p.w, line)
}

func (p *plainProgress) finish() {}
