package tier

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The helpers run in a child test process per tier, so the parent sees
// what `go test` would report: skipped, failed or passed, with the message.
func TestHelpersPerTier(t *testing.T) {
	cases := []struct {
		helper, tierVal string
		want            string // "skip", "fail" or "pass"
		msg             string
	}{
		{"vm", "unit", "skip", "boots VMs: skipped in the unit tier"},
		{"vm", "", "pass", ""},
		{"vm", "full", "pass", ""},
		{"missing", "unit", "skip", "no-such-tool-hm not found"},
		{"missing", "", "fail", "no-such-tool-hm not found on this host: run `make setup`"},
		{"file", "unit", "skip", "/nonexistent/hm missing"},
		{"file", "", "fail", "/nonexistent/hm missing"},
		{"root", "unit", "skip", "needs root (testing): skipped in the unit tier"},
		{"vm", "unti", "fail", `HYPEMAN_TEST_TIER="unti": want "unit" or "full"`},
	}
	for _, c := range cases {
		t.Run(c.helper+"/"+c.tierVal, func(t *testing.T) {
			got, out := runChild(t, c.helper, c.tierVal)
			if got != c.want || !strings.Contains(out, c.msg) {
				t.Fatalf("tier %q helper %s: %s, want %s with %q\n%s", c.tierVal, c.helper, got, c.want, c.msg, out)
			}
		})
	}
}

func runChild(t *testing.T, helper, tierVal string) (string, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run", "^TestChild$", "-test.v", "-test.count=1")
	cmd.Env = append(cmd.Environ(), "HYPEMAN_TIER_CHILD="+helper, Env+"="+tierVal)
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	switch {
	case strings.Contains(out, "--- SKIP: TestChild"):
		return "skip", out
	case err != nil || strings.Contains(out, "--- FAIL: TestChild"):
		return "fail", out
	case strings.Contains(out, "--- PASS: TestChild"):
		return "pass", out
	}
	t.Fatalf("child ran no test:\n%s", out)
	return "", ""
}

func TestChild(t *testing.T) {
	switch os.Getenv("HYPEMAN_TIER_CHILD") {
	case "":
		t.Skip("helper process for TestHelpersPerTier")
	case "vm":
		VM(t)
	case "missing":
		Tools(t, "sh", "no-such-tool-hm")
	case "file":
		File(t, "/nonexistent/hm", "test")
	case "root":
		Root(t, "testing")
	}
}
