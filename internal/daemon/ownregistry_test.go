package daemon

import (
	"os"
	"testing"
)

func TestOwnRegistry(t *testing.T) {
	own := ownRegistry("127.0.0.1:8080")
	hostname, _ := os.Hostname()
	yes := []string{"127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080", "127.0.0.2:8080"}
	if hostname != "" {
		yes = append(yes, hostname+":8080")
	}
	for _, h := range yes {
		if !own(h) {
			t.Errorf("%s: not recognized as the daemon's own registry", h)
		}
	}
	for _, h := range []string{"127.0.0.1:8081", "registry.example.com:8080", "192.0.2.7:8080", "localhost", "docker.io", "127.0.0.1"} {
		if own(h) {
			t.Errorf("%s: taken for the daemon's own registry", h)
		}
	}
	if ownRegistry("127.0.0.1:0") != nil || ownRegistry("nonsense") != nil {
		t.Error("an unknown port must not match anything")
	}
}
