package qemu

import (
	"testing"

	"go.uber.org/goleak"
)

// Every launched VM is killed and every handle closed by the tests, so no
// goroutine (cmd.Wait reaper, pidfd watch, QMP reader) may survive them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
