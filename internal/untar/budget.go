package untar

import "io"

// Budget counts bytes against one cap across several readers (all layers of
// an image, or the stream and the files of one archive), so a gzip bomb stops
// at the cap while it streams instead of after it filled the disk.
type Budget struct {
	// Limit is the cap in bytes; 0 or less means none.
	Limit int64
	// Err builds the error returned once the cap is passed (it should name
	// the cap and what raises it).
	Err  func() error
	used int64
}

// Used is the number of bytes counted so far.
func (b *Budget) Used() int64 {
	if b == nil {
		return 0
	}
	return b.used
}

// Reader counts what r yields against b and fails with b.Err() once it goes
// past the cap. A nil or unlimited budget returns r itself.
func (b *Budget) Reader(r io.Reader) io.Reader {
	if b == nil || b.Limit <= 0 {
		return r
	}
	return &budgetReader{r: r, b: b}
}

type budgetReader struct {
	r io.Reader
	b *Budget
}

func (br *budgetReader) Read(p []byte) (int, error) {
	if br.b.used > br.b.Limit {
		return 0, br.b.Err()
	}
	// Read at most one byte past the cap: enough to know it was passed.
	if room := br.b.Limit - br.b.used + 1; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := br.r.Read(p)
	br.b.used += int64(n)
	if br.b.used > br.b.Limit {
		return n, br.b.Err()
	}
	return n, err
}
