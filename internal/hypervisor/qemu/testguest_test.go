package qemu

// A throwaway guest for the snapshot tests: an initrd whose /init is a
// busybox shell script that prints a counter, its uptime and its NIC's MAC on
// the serial console several times a second (as fast as it can with
// hmchatty=1 on the kernel command line; hmperiod=MICROSECONDS slows it
// down, for benchmarks of idle guests). The counter lives only in the
// guest's memory, so after a restore it continues only if the memory came
// back. Booting it under TCG takes ~3 s.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"hypeman/internal/hypervisor"
	"hypeman/internal/system"
)

const counterInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod "$m"; done
if [ -n "$hmfill" ]; then dd if=/dev/urandom of=/fill bs=1M count="$hmfill" 2>/dev/null; fi
i=0
while :; do
  read up idle < /proc/uptime
  mac=none
  [ -e /sys/class/net/eth0/address ] && read mac < /sys/class/net/eth0/address
  echo "HM-COUNT $i up=$up mac=$mac"
  i=$((i+1))
  [ -n "$hmchatty" ] || usleep "${hmperiod:-100000}"
done
`

// counterInitrd writes the counter guest's initrd into dir and returns its
// path. modules (with their dependencies, from the test kernel's module
// tree) are loaded before the counter starts: e.g. virtio_mmio and
// virtio_net so the guest sees its NIC.
func counterInitrd(t testing.TB, dir string, modules ...string) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static is needed for the test guest: %v", err)
	}
	var buf bytes.Buffer
	cw := &newcWriter{w: &buf}
	cw.dir("bin")
	cw.dir("dev")
	cw.node("dev/console", 0o20600, 5, 1)
	cw.dir("proc")
	cw.dir("sys")
	cw.file("bin/busybox", 0o755, bb)
	cw.file("init", 0o755, []byte(counterInit))
	var list strings.Builder
	if len(modules) > 0 {
		kdir := filepath.Dir(testKernel(t))
		k, err := system.LoadKernel(kdir)
		if err != nil || k.ModuleTree() == "" {
			t.Fatalf("test kernel %s has no module tree (need %v): %v", kdir, modules, err)
		}
		ix, err := system.ReadModuleIndex(k.ModuleTree())
		if err != nil {
			t.Fatal(err)
		}
		mods, err := ix.Resolve(modules)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range mods {
			data, err := ix.ReadModule(context.Background(), m)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("m%02d-%s.ko", i, m.Name)
			cw.file(name, 0o644, data)
			list.WriteString("/" + name + "\n")
		}
	}
	cw.file("modules.list", 0o644, []byte(list.String()))
	cw.trailer()
	p := filepath.Join(dir, "counter-initrd.cpio")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// newcWriter writes a minimal "070701" (newc) cpio archive.
type newcWriter struct {
	w   *bytes.Buffer
	ino int
}

func (c *newcWriter) entry(name string, mode uint32, rmaj, rmin int, data []byte) {
	c.ino++
	fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	c.w.WriteString(name + "\x00")
	c.pad()
	c.w.Write(data)
	c.pad()
}

func (c *newcWriter) pad() {
	for c.w.Len()%4 != 0 {
		c.w.WriteByte(0)
	}
}

func (c *newcWriter) dir(name string)                           { c.entry(name, 0o40755, 0, 0, nil) }
func (c *newcWriter) node(name string, mode uint32, ma, mi int) { c.entry(name, mode, ma, mi, nil) }
func (c *newcWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, 0o100000|perm, 0, 0, data)
}
func (c *newcWriter) trailer() { c.entry("TRAILER!!!", 0, 0, 0, nil) }

// counterLine is one line of the guest's output.
type counterLine struct {
	N      int
	Uptime float64
	MAC    string
}

var counterRE = regexp.MustCompile(`HM-COUNT (\d+) up=([0-9.]+) mac=(\S+)`)

// counterLines parses every counter line in dir's serial log.
func counterLines(t testing.TB, dir string) []counterLine {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, hypervisor.SerialLogName))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []counterLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		m := counterRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		up, _ := strconv.ParseFloat(m[2], 64)
		out = append(out, counterLine{N: n, Uptime: up, MAC: m[3]})
	}
	return out
}

// lastCounter returns the last counter line (ok false if none yet).
func lastCounter(t testing.TB, dir string) (counterLine, bool) {
	l := counterLines(t, dir)
	if len(l) == 0 {
		return counterLine{}, false
	}
	return l[len(l)-1], true
}

// waitCounter waits until the guest in dir printed a counter >= n.
func waitCounter(t testing.TB, dir string, n int, timeout time.Duration) counterLine {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if l, ok := lastCounter(t, dir); ok && l.N >= n {
			return l
		}
		if time.Now().After(deadline) {
			l, _ := lastCounter(t, dir)
			t.Fatalf("guest in %s did not reach counter %d within %v (last %+v); serial tail:\n%s", dir, n, timeout, l,
				logTail(filepath.Join(dir, hypervisor.SerialLogName), 15))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// counterVMConfig describes the counter guest in dir.
func counterVMConfig(t testing.TB, dir, initrd string, memMiB int, extraCmdline string) hypervisor.VMConfig {
	return hypervisor.VMConfig{
		ID:         "snap-" + filepath.Base(dir),
		Dir:        dir,
		KernelPath: testKernel(t),
		InitrdPath: initrd,
		Cmdline:    strings.TrimSpace("console=ttyS0 panic=-1 quiet " + extraCmdline),
		MemoryMiB:  memMiB,
		VCPUs:      1,
	}
}
