package qemu

import (
	"slices"
	"strings"
	"testing"

	"hypeman/internal/hypervisor"
)

func fullSpec() LaunchSpec {
	return LaunchSpec{
		Accel:  hypervisor.AccelTCG,
		TSCKHz: 2499998,
		VM: hypervisor.VMConfig{
			ID:         "inst-1",
			Dir:        "/var/lib/hypeman/instances/inst-1",
			KernelPath: "/var/lib/hypeman/system/kernel/current/vmlinux",
			InitrdPath: "/var/lib/hypeman/system/initrd/abc.cpio",
			Cmdline:    "console=ttyS0 panic=-1 quiet",
			MemoryMiB:  512,
			VCPUs:      2,
			Disks: []hypervisor.Disk{
				{Path: "/var/lib/hypeman/images/disks/sha256:ab/root.erofs", ReadOnly: true, Serial: "hm-root"},
				{Path: "/var/lib/hypeman/instances/inst-1/overlay.ext4", Serial: "hm-overlay"},
				{Path: "/var/lib/hypeman/instances/inst-1/config.raw", ReadOnly: true, Serial: "hm-config"},
			},
			AgentSocket: "/var/lib/hypeman/instances/inst-1/agent.sock",
			Net:         &hypervisor.NetConfig{MAC: "02:00:00:00:00:01", TAP: "hm-tap0"},
		},
	}
}

func TestBuildArgsGolden(t *testing.T) {
	got, err := BuildArgs(fullSpec())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-name", "guest=inst-1",
		"-machine", "microvm,accel=tcg,isa-serial=on,rtc=on",
		"-cpu", "max",
		"-m", "512M",
		"-smp", "2",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-msg", "timestamp=on",
		"-kernel", "/var/lib/hypeman/system/kernel/current/vmlinux",
		"-initrd", "/var/lib/hypeman/system/initrd/abc.cpio",
		"-append", "console=ttyS0 panic=-1 quiet tsc_early_khz=2499998",
		"-chardev", "file,id=ser0,path=serial.log,append=on",
		"-serial", "chardev:ser0",
		"-chardev", "socket,id=qmp,path=qmp.sock,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-drive", "if=none,id=disk0,file=/var/lib/hypeman/images/disks/sha256:ab/root.erofs,format=raw,readonly=on",
		"-device", "virtio-blk-device,drive=disk0,serial=hm-root",
		"-drive", "if=none,id=disk1,file=./overlay.ext4,format=raw",
		"-device", "virtio-blk-device,drive=disk1,serial=hm-overlay",
		"-drive", "if=none,id=disk2,file=./config.raw,format=raw,readonly=on",
		"-device", "virtio-blk-device,drive=disk2,serial=hm-config",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=agent.sock,server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=hypeman.agent",
		"-netdev", "tap,id=net0,ifname=hm-tap0,script=no,downscript=no",
		"-device", "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("argv mismatch\n got: %q\nwant: %q", got, want)
	}
}

func TestBuildArgsKVMUserNetNoInitrd(t *testing.T) {
	s := fullSpec()
	s.Accel = hypervisor.AccelKVM
	s.VM.InitrdPath = ""
	s.VM.AgentSocket = ""
	s.VM.Disks = nil
	s.VM.Net = &hypervisor.NetConfig{User: true, HostForwards: []string{"tcp::8080-:80", "tcp:127.0.0.1:2222-:22"}}
	got, err := BuildArgs(s)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(got, " ")
	for _, want := range []string{
		"-machine microvm,accel=kvm,", "-cpu host",
		"-netdev user,id=net0,hostfwd=tcp::8080-:80,hostfwd=tcp:127.0.0.1:2222-:22",
		"-device virtio-net-device,netdev=net0 ",
	} {
		if !strings.Contains(joined+" ", want) {
			t.Errorf("missing %q in %s", want, joined)
		}
	}
	for _, absent := range []string{"-initrd", "virtio-serial", "-drive", "mac="} {
		if strings.Contains(joined, absent) {
			t.Errorf("unexpected %q in %s", absent, joined)
		}
	}
}

// hotplug memory = a balloon holding it back; disk_io_bps = one throttle
// group over the writable disks only.
func TestBuildArgsBalloonAndDiskThrottle(t *testing.T) {
	s := fullSpec()
	s.VM.MemoryMiB = 4096
	s.VM.BalloonMiB = 3072
	s.VM.DiskIOBps = 2 << 20
	s.VM.Disks = append(s.VM.Disks, hypervisor.Disk{Path: s.VM.Dir + "/data.ext4", Serial: "hm-data"})
	got, err := BuildArgs(s)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"disk0": "if=none,id=disk0,file=/var/lib/hypeman/images/disks/sha256:ab/root.erofs,format=raw,readonly=on",
		"disk1": "if=none,id=disk1,file=./overlay.ext4,format=raw,throttling.bps-total=2097152,throttling.group=hm-io",
		"disk2": "if=none,id=disk2,file=./config.raw,format=raw,readonly=on",
		"disk3": "if=none,id=disk3,file=./data.ext4,format=raw,throttling.bps-total=2097152,throttling.group=hm-io",
	}
	for i := 0; i+1 < len(got); i++ {
		if got[i] == "-drive" {
			id, _ := optValue(got[i+1], "id")
			if got[i+1] != want[id] {
				t.Errorf("drive %s = %q, want %q", id, got[i+1], want[id])
			}
			delete(want, id)
		}
	}
	if len(want) > 0 {
		t.Errorf("drives missing: %v", want)
	}
	if i := slices.Index(got, "-m"); i < 0 || got[i+1] != "4096M" {
		t.Errorf("-m: %q", got)
	}
	if got[len(got)-2] != "-device" || got[len(got)-1] != "virtio-balloon-device" {
		t.Errorf("balloon device missing at the end: %q", got[len(got)-4:])
	}
	if i := slices.Index(got, "-append"); i < 0 || got[i+1] != "console=ttyS0 panic=-1 quiet init_on_alloc=0 swiotlb=noforce tsc_early_khz=2499998" {
		t.Errorf("cmdline: %q", got[i+1])
	}

	// Without them: no balloon, no throttling, cmdline untouched.
	plain, err := BuildArgs(fullSpec())
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(plain, " ")
	for _, absent := range []string{"balloon", "throttling", "init_on_alloc", "swiotlb"} {
		if strings.Contains(joined, absent) {
			t.Errorf("unexpected %q in %s", absent, joined)
		}
	}
	// A command line that already chooses keeps its choice; small VMs
	// without a balloon get nothing.
	if got := memoryCmdline("a init_on_alloc=1 swiotlb=force", 8192, 512); got != "a init_on_alloc=1 swiotlb=force" {
		t.Errorf("memoryCmdline = %q", got)
	}
	if got := memoryCmdline("a", 8192, 0); got != "a swiotlb=noforce" {
		t.Errorf("memoryCmdline big, no balloon = %q", got)
	}
	if got := memoryCmdline("a", 3072, 0); got != "a" {
		t.Errorf("memoryCmdline 3 GiB = %q", got)
	}
}

func TestBuildArgsLongDirUsesRelativeSockets(t *testing.T) {
	s := fullSpec()
	dir := "/tmp/" + strings.Repeat("x", 150) + "/inst"
	s.VM.Dir = dir
	s.VM.AgentSocket = dir + "/agent.sock"
	s.VM.Disks = []hypervisor.Disk{{Path: dir + "/disks/over,lay.ext4", Serial: "hm-overlay"}}
	got, err := BuildArgs(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range got {
		if strings.Contains(a, dir) {
			t.Errorf("argument still contains the long dir: %q", a)
		}
	}
	joined := strings.Join(got, " ")
	for _, want := range []string{"path=agent.sock,", "path=qmp.sock,", "file=disks/over,,lay.ext4,"} {
		if !strings.Contains(joined, want) {
			t.Errorf("missing %q in %s", want, joined)
		}
	}
}

func TestBuildArgsAgentSocketOutsideDir(t *testing.T) {
	s := fullSpec()
	s.VM.AgentSocket = "/run/hypeman/a.sock"
	got, err := BuildArgs(s)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, "socket,id=agent,path=/run/hypeman/a.sock,server=on,wait=off") {
		t.Fatalf("agent chardev not absolute: %q", got)
	}
	s.VM.AgentSocket = "/run/" + strings.Repeat("s", 120) + "/a.sock"
	if _, err := BuildArgs(s); err == nil || !strings.Contains(err.Error(), "agent socket") {
		t.Fatalf("long outside socket: err = %v", err)
	}
}

func TestBuildArgsValidation(t *testing.T) {
	cases := map[string]func(*LaunchSpec){
		"accelerator":             func(s *LaunchSpec) { s.Accel = hypervisor.AccelAuto },
		"dir":                     func(s *LaunchSpec) { s.VM.Dir = "rel/dir" },
		"kernel path is required": func(s *LaunchSpec) { s.VM.KernelPath = "" },
		"initrd":                  func(s *LaunchSpec) { s.VM.InitrdPath = "initrd.cpio" },
		"memory":                  func(s *LaunchSpec) { s.VM.MemoryMiB = 0 },
		"vcpus":                   func(s *LaunchSpec) { s.VM.VCPUs = 0 },
		"serial":                  func(s *LaunchSpec) { s.VM.Disks[0].Serial = strings.Repeat("s", 21) },
		"disk 1":                  func(s *LaunchSpec) { s.VM.Disks[1].Path = "" },
		"exactly one":             func(s *LaunchSpec) { s.VM.Net = &hypervisor.NetConfig{TAP: "t", User: true} },
		"invalid MAC":             func(s *LaunchSpec) { s.VM.Net.MAC = "02:00:00:00:00" },
		"host forwards":           func(s *LaunchSpec) { s.VM.Net.HostForwards = []string{"tcp::1-:1"} },
		"newline":                 func(s *LaunchSpec) { s.VM.Cmdline = "a\nb" },
		"balloon":                 func(s *LaunchSpec) { s.VM.BalloonMiB = s.VM.MemoryMiB - 8 },
		"disk I/O limit":          func(s *LaunchSpec) { s.VM.DiskIOBps = -1 },
		"memory file":             func(s *LaunchSpec) { s.VM.MemoryFile = "mem.raw" },
		"memory file and balloon": func(s *LaunchSpec) { s.VM.MemoryFile, s.VM.BalloonMiB = s.VM.Dir+"/mem.raw", 128 },
	}
	for want, mutate := range cases {
		s := fullSpec()
		mutate(&s)
		_, err := BuildArgs(s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v", want, err)
		}
	}
}

func TestKernelCmdline(t *testing.T) {
	cases := []struct {
		in   string
		khz  int
		want string
	}{
		{"console=ttyS0", 2499998, "console=ttyS0 tsc_early_khz=2499998"},
		{"  console=ttyS0  ", 0, "console=ttyS0"},
		{"console=ttyS0 tsc_early_khz=1000000", 2499998, "console=ttyS0 tsc_early_khz=1000000"},
		{"", 3000000, "tsc_early_khz=3000000"},
	}
	for _, c := range cases {
		if got := KernelCmdline(c.in, c.khz); got != c.want {
			t.Errorf("KernelCmdline(%q, %d) = %q, want %q", c.in, c.khz, got, c.want)
		}
	}
}

func TestRelAndEscape(t *testing.T) {
	if got := rel("/a/b", "/a/b/c/d"); got != "c/d" {
		t.Errorf("rel inside = %q", got)
	}
	if got := rel("/a/b", "/a/bc/d"); got != "/a/bc/d" {
		t.Errorf("rel sibling = %q", got)
	}
	if got := rel("/a/b", "/x"); got != "/x" {
		t.Errorf("rel outside = %q", got)
	}
	if got := driveFile("nbd:x"); got != "./nbd:x" {
		t.Errorf("driveFile = %q", got)
	}
	if got := escapeOpt("a,b,,c"); got != "a,,b,,,,c" {
		t.Errorf("escapeOpt = %q", got)
	}
}

// A memory file becomes the machine's RAM backend, mapped shared; a path
// inside the instance dir is relative, commas are escaped.
func TestBuildArgsMemoryFile(t *testing.T) {
	for _, c := range []struct{ file, want string }{
		{"/var/lib/hypeman/instances/inst-1/mem.raw", "memory-backend-file,id=hm-ram,size=512M,mem-path=mem.raw,share=on"},
		{"/srv/templates/a,b/mem", "memory-backend-file,id=hm-ram,size=512M,mem-path=/srv/templates/a,,b/mem,share=on"},
	} {
		s := fullSpec()
		s.VM.MemoryFile = c.file
		got, err := BuildArgs(s)
		if err != nil {
			t.Fatal(err)
		}
		j := strings.Join(got, " ")
		if !strings.Contains(j, "-machine microvm,accel=tcg,isa-serial=on,rtc=on,memory-backend=hm-ram -cpu max -m 512M -object "+c.want+" ") {
			t.Errorf("%s: argv %s", c.file, j)
		}
		if p, ok := sharedMemoryFile(append([]string{"qemu"}, got...)); !ok || p != strings.TrimPrefix(c.file, s.VM.Dir+"/") {
			t.Errorf("%s: sharedMemoryFile = %q %v", c.file, p, ok)
		}
	}
	got, _ := BuildArgs(fullSpec())
	if j := strings.Join(got, " "); strings.Contains(j, "memory-backend") {
		t.Errorf("no memory file, yet: %s", j)
	}
}
