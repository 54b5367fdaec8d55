package cli

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a command leaves goroutines behind (the
// push progress reader, event reconnect loops, SSE readers). Idle
// keep-alive connections of the shared HTTP transport are not leaks.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}
