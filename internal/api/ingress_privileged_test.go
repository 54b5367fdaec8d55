package api

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"hypeman/internal/auth"
	"hypeman/internal/network/ingress"
)

// An instance:write token cannot open a privileged host port (ssh, DNS...)
// through an ingress: the real manager's refusal is a 400 naming the field
// and the daemon setting that would allow it.
func TestIngressPrivilegedPortIs400(t *testing.T) {
	im, err := ingress.New(context.Background(), ingress.Config{StateDir: t.TempDir()},
		ingress.ResolverFunc(func(context.Context, string, int) (string, error) { return "", fmt.Errorf("no") }), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	e := newTestEnv(t, func(o *Options) { o.Ingresses = im })
	for _, port := range []int{1, 22, 53} {
		body := fmt.Sprintf(`{"name":"p%d","rules":[{"match":{"port":%d},"target":{"instance":"web","port":80}}]}`, port, port)
		resp := e.do("POST", "/ingresses", mint(t, auth.InstanceWrite), body)
		code, msg := errBody(t, resp)
		if resp.StatusCode != 400 || code != CodeInvalidRequest || !strings.Contains(msg, "rules[0].match.port") ||
			!strings.Contains(msg, ingress.PrivilegedPortsSetting) {
			t.Errorf("port %d: %d %s %q", port, resp.StatusCode, code, msg)
		}
	}
	if list, _ := im.List(context.Background()); len(list) != 0 {
		t.Fatalf("refused ingresses were created: %+v", list)
	}
}
