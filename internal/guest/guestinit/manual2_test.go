package guestinit

import (
	"testing"
	"time"

	"hypeman/internal/guest/guestconfig"
)

func TestManualPCI(t *testing.T) {
	k := newVMKit(t)
	img := buildImage(t, nil)
	for _, extra := range []string{" loglevel=7"} {
		k.cmdline = "console=ttyS0 panic=-1 rdinit=/init" + extra
		t0 := time.Now()
		r := k.start(t, &guestconfig.Config{Cmd: []string{"sh", "-c", "cat /proc/uptime"}, RootFS: "erofs"}, img, newOverlayDisk(t))
		e := r.wait(t, 60*time.Second)
		t.Logf("%q wall %s %+v\n%s", extra, time.Since(t0), e, r.log())
	}
}
