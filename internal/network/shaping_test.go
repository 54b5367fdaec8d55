package network

import "testing"

func TestShapingScript(t *testing.T) {
	got := shapingScript("hm0a640002", Bandwidth{Download: 2 << 20, Upload: 125_000_000})
	want := "qdisc replace dev hm0a640002 root tbf rate 16777216bit burst 41943 latency 50ms\n" +
		"qdisc add dev hm0a640002 handle ffff: ingress\n" +
		"filter add dev hm0a640002 parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev hb0a640002\n" +
		"qdisc replace dev hb0a640002 root tbf rate 1000000000bit burst 2500000 latency 50ms\n"
	if got != want {
		t.Fatalf("script:\n%s\nwant:\n%s", got, want)
	}
	// One direction only: nothing for the other.
	down := shapingScript("hm0a640002", Bandwidth{Download: 125_000})
	if down != "qdisc replace dev hm0a640002 root tbf rate 1000000bit burst 16384 latency 50ms\n" {
		t.Fatalf("download only: %q", down)
	}
	up := shapingScript("hm0a640002", Bandwidth{Upload: 125_000})
	if up != "qdisc add dev hm0a640002 handle ffff: ingress\n"+
		"filter add dev hm0a640002 parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev hb0a640002\n"+
		"qdisc replace dev hb0a640002 root tbf rate 1000000bit burst 16384 latency 50ms\n" {
		t.Fatalf("upload only: %q", up)
	}
	if shapingScript("hm0a640002", Bandwidth{}) != "" {
		t.Fatal("no limits must render nothing")
	}
	if r := shapingReset("hm0a640002"); r != "qdisc del dev hm0a640002 root\nqdisc del dev hm0a640002 ingress\n" {
		t.Fatalf("reset: %q", r)
	}
}

func TestIFBNames(t *testing.T) {
	if n := ifbName("hm0a640002"); n != "hb0a640002" || !isIFBName(n) {
		t.Fatalf("ifbName = %q", n)
	}
	for _, s := range []string{"hm0a640002", "hb", "hbkeepme01", "hb0a6400021", "ifb0"} {
		if isIFBName(s) {
			t.Errorf("%q named like ours", s)
		}
	}
	// The bucket holds at least one full-size packet, else ~20 ms of traffic.
	if tbfBurst(1000) != 16<<10 || tbfBurst(125_000_000) != 2_500_000 {
		t.Fatalf("tbfBurst = %d, %d", tbfBurst(1000), tbfBurst(125_000_000))
	}
}
