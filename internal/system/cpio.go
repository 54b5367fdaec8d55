package system

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// cpio "newc" (SVR4, no CRC) as the kernel's initramfs unpacker reads it
// (Documentation/driver-api/early-userspace/buffer-format.rst): each entry is
// a 110-byte ASCII header "070701" + 13 fields of 8 hex digits, the NUL
// terminated name, padding to 4 bytes, the data, padding to 4 bytes; the
// archive ends with an entry named "TRAILER!!!".

const (
	cpioMagic   = "070701"
	cpioTrailer = "TRAILER!!!"
	cpioHdrLen  = 110

	modeDir  = 0o040000
	modeReg  = 0o100000
	modeChr  = 0o020000
	modeLink = 0o120000
	modeType = 0o170000
)

// cpioEntry is one archive member. Mode includes the file type bits.
type cpioEntry struct {
	Name      string // no leading "/"
	Mode      uint32
	UID, GID  uint32
	Mtime     uint32
	Data      []byte // file content, or symlink target
	RdevMajor uint32
	RdevMinor uint32
}

// cpioWriter writes a newc archive. Inode numbers are assigned sequentially
// so output depends only on the entries written.
type cpioWriter struct {
	w   *bufio.Writer
	ino uint32
	off int64
}

func newCPIOWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: bufio.NewWriter(w)} }

func (cw *cpioWriter) write(e cpioEntry) error {
	nlink := uint32(1)
	if e.Mode&modeType == modeDir {
		nlink = 2
	}
	ino := uint32(0)
	if e.Name != cpioTrailer {
		cw.ino++
		ino = cw.ino
	}
	fields := []uint32{ino, e.Mode, e.UID, e.GID, nlink, e.Mtime, uint32(len(e.Data)),
		0, 0, e.RdevMajor, e.RdevMinor, uint32(len(e.Name) + 1), 0}
	hdr := make([]byte, 0, cpioHdrLen)
	hdr = append(hdr, cpioMagic...)
	for _, f := range fields {
		hdr = fmt.Appendf(hdr, "%08x", f)
	}
	if err := cw.put(hdr); err != nil {
		return err
	}
	if err := cw.put(append([]byte(e.Name), 0)); err != nil {
		return err
	}
	if err := cw.pad(); err != nil {
		return err
	}
	if err := cw.put(e.Data); err != nil {
		return err
	}
	return cw.pad()
}

// WriteEntry appends one member.
func (cw *cpioWriter) WriteEntry(e cpioEntry) error {
	if e.Name == "" || e.Name == cpioTrailer || e.Name[0] == '/' {
		return fmt.Errorf("cpio: bad entry name %q", e.Name)
	}
	if uint64(len(e.Data)) > 0xffffffff {
		return fmt.Errorf("cpio: %s: too large for newc", e.Name)
	}
	return cw.write(e)
}

// Close writes the trailer and flushes. It does not close the underlying writer.
func (cw *cpioWriter) Close() error {
	if err := cw.write(cpioEntry{Name: cpioTrailer}); err != nil {
		return err
	}
	return cw.w.Flush()
}

func (cw *cpioWriter) put(b []byte) error {
	n, err := cw.w.Write(b)
	cw.off += int64(n)
	return err
}

func (cw *cpioWriter) pad() error {
	if r := cw.off % 4; r != 0 {
		return cw.put(make([]byte, 4-r))
	}
	return nil
}

// readCPIO parses a newc archive up to its trailer (used by tests and for
// inspecting built initrds).
func readCPIO(r io.Reader) ([]cpioEntry, error) {
	br := bufio.NewReader(r)
	var off int64
	read := func(n int64) ([]byte, error) {
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, err
		}
		off += n
		return b, nil
	}
	skipPad := func() error {
		if rem := off % 4; rem != 0 {
			_, err := read(4 - rem)
			return err
		}
		return nil
	}
	var out []cpioEntry
	for {
		hdr, err := read(cpioHdrLen)
		if err != nil {
			return nil, fmt.Errorf("cpio: header at %d: %w", off, err)
		}
		if string(hdr[:6]) != cpioMagic {
			return nil, fmt.Errorf("cpio: bad magic %q at %d", hdr[:6], off-cpioHdrLen)
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return nil, fmt.Errorf("cpio: field %d: %w", i, err)
			}
			f[i] = uint32(v)
		}
		name, err := read(int64(f[11]))
		if err != nil || len(name) == 0 || name[len(name)-1] != 0 {
			return nil, errors.Join(errors.New("cpio: bad name"), err)
		}
		if err := skipPad(); err != nil {
			return nil, err
		}
		data, err := read(int64(f[6]))
		if err != nil {
			return nil, fmt.Errorf("cpio: data of %s: %w", name, err)
		}
		if err := skipPad(); err != nil {
			return nil, err
		}
		e := cpioEntry{Name: string(name[:len(name)-1]), Mode: f[1], UID: f[2], GID: f[3], Mtime: f[5],
			Data: data, RdevMajor: f[9], RdevMinor: f[10]}
		if e.Name == cpioTrailer {
			return out, nil
		}
		out = append(out, e)
	}
}
