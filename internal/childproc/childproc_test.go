package childproc

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary act as a "daemon": it starts a helper
// through CommandContext and a plain exec.Command child, prints both pids
// and waits to be killed.
const helperEnv = "CHILDPROC_TEST_DAEMON"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		helper := CommandContext(context.Background(), "sleep", "1000")
		plain := exec.Command("sleep", "1000")
		if err := helper.Start(); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		if err := plain.Start(); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println(helper.Process.Pid, plain.Process.Pid)
		helper.Wait() // blocks until this process is killed
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	// A zombie is dead for our purpose (its parent is gone, init reaps it).
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !containsState(string(b), 'Z')
}

func containsState(stat string, s byte) bool {
	for i := len(stat) - 1; i > 0; i-- {
		if stat[i] == ')' && i+2 < len(stat) {
			return stat[i+2] == s
		}
	}
	return false
}

// A helper started through CommandContext dies with the daemon that
// started it (kill -9); a child started the plain way survives (which is
// what happened to mkfs.erofs before).
func TestHelperDiesWithParent(t *testing.T) {
	daemon := exec.Command(os.Args[0], "-test.run=^$")
	daemon.Env = append(os.Environ(), helperEnv+"=1")
	out, err := daemon.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	var helper, plain int
	line, err := bufio.NewReader(out).ReadString('\n')
	if _, serr := fmt.Sscan(line, &helper, &plain); err != nil || serr != nil {
		daemon.Process.Kill()
		daemon.Wait()
		t.Fatalf("daemon said %q: %v %v", line, err, serr)
	}
	t.Cleanup(func() { syscall.Kill(plain, syscall.SIGKILL) })
	if !alive(helper) || !alive(plain) {
		t.Fatal("children not running")
	}
	daemon.Process.Signal(syscall.SIGKILL)
	daemon.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for alive(helper) {
		if time.Now().After(deadline) {
			t.Fatalf("helper %d outlived its killed parent", helper)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !alive(plain) {
		t.Fatal("control: the plain child died too, the test proves nothing")
	}
}
