package ingress_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"hypeman/internal/network/ingress"
	"hypeman/internal/testutil"
)

func TestCaptureHostnameRoutesByLabel(t *testing.T) {
	res := &fakeResolver{}
	res.set("alpha", 80, backend(t, "ALPHA"))
	res.set("beta", 80, backend(t, "BETA"))
	m := newManager(t, t.TempDir(), res, nil)
	p := testutil.FreePort(t)
	ing, err := m.Create(context.Background(), ingress.CreateRequest{Name: "per-instance", Tags: map[string]string{"team": "web"}, Rules: []ingress.Rule{
		{Match: ingress.Match{Hostname: "{instance}.apps.test", Port: p}, Target: ingress.Target{Instance: "{instance}", Port: 80}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if ing.Tags["team"] != "web" {
		t.Fatalf("tags %v", ing.Tags)
	}
	for host, want := range map[string]string{"alpha.apps.test": "ALPHA", "beta.apps.test": "BETA"} {
		if st, body := get(t, p, host, "/"); st != 200 || !strings.HasPrefix(body, want) {
			t.Errorf("%s: %d %q", host, st, body)
		}
	}
	if st, body := get(t, p, "gamma.apps.test", "/"); st != http.StatusBadGateway {
		t.Errorf("unknown label: %d %q", st, body)
	}
	// The pattern occupies the same route as a wildcard over the domain.
	_, err = m.Create(context.Background(), ingress.CreateRequest{Name: "wild", Rules: []ingress.Rule{
		{Match: ingress.Match{Hostname: "*.apps.test", Port: p}, Target: ingress.Target{Instance: "alpha", Port: 80}},
	}})
	if !errors.Is(err, ingress.ErrConflict) {
		t.Fatalf("wildcard over a pattern's domain: %v", err)
	}
}

func TestCaptureValidation(t *testing.T) {
	m := newManager(t, t.TempDir(), &fakeResolver{}, nil)
	p := testutil.FreePort(t)
	bad := []ingress.Rule{
		{Match: ingress.Match{Hostname: "a.{x}.test", Port: p}, Target: ingress.Target{Instance: "a", Port: 80}},
		{Match: ingress.Match{Hostname: "{x}.test", Port: p}, Target: ingress.Target{Instance: "{y}", Port: 80}},
		{Match: ingress.Match{Hostname: "plain.test", Port: p}, Target: ingress.Target{Instance: "{x}", Port: 80}},
		{Match: ingress.Match{Hostname: "{a-b}.test", Port: p}, Target: ingress.Target{Instance: "{a-b}", Port: 80}},
	}
	for i, r := range bad {
		_, err := m.Create(context.Background(), ingress.CreateRequest{Name: fmt.Sprintf("bad%d", i), Rules: []ingress.Rule{r}})
		if !errors.Is(err, ingress.ErrInvalid) {
			t.Errorf("rule %+v: err %v, want ErrInvalid", r, err)
		}
	}
	if _, err := m.Create(context.Background(), ingress.CreateRequest{Name: "badtags", Tags: map[string]string{"a$": "b"},
		Rules: []ingress.Rule{{Match: ingress.Match{Port: p}, Target: ingress.Target{Instance: "a", Port: 80}}}}); !errors.Is(err, ingress.ErrInvalid) {
		t.Errorf("bad tag key accepted: %v", err)
	}
}

func TestRequestHeaderAuth(t *testing.T) {
	res := &fakeResolver{}
	seen := make(chan string, 4)
	srv := backendFunc(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("X-Ingress-Verification")
		fmt.Fprint(w, "ok")
	})
	res.set("app", 80, srv)
	m := newManager(t, t.TempDir(), res, nil)
	p := testutil.FreePort(t)
	secret := strings.Repeat("s", 32)
	if _, err := m.Create(context.Background(), ingress.CreateRequest{Name: "guarded", Rules: []ingress.Rule{
		{Match: ingress.Match{Port: p}, Target: ingress.Target{Instance: "app", Port: 80},
			RequestHeaderAuth: &ingress.HeaderAuth{Header: "x-ingress-verification", Value: secret}},
	}}); err != nil {
		t.Fatal(err)
	}
	do := func(v string) int {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", p), nil)
		if v != "" {
			req.Header.Set("X-Ingress-Verification", v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := do(""); st != http.StatusUnauthorized {
		t.Errorf("no header: %d", st)
	}
	if st := do(secret + "x"); st != http.StatusUnauthorized {
		t.Errorf("wrong value: %d", st)
	}
	if st := do(secret); st != 200 {
		t.Fatalf("right value: %d", st)
	}
	if got := <-seen; got != "" {
		t.Errorf("the guest saw the secret header %q", got)
	}

	for name, ha := range map[string]ingress.HeaderAuth{
		"reserved":  {Header: "Authorization", Value: secret},
		"forwarded": {Header: "X-Forwarded-For", Value: secret},
		"short":     {Header: "X-Verify", Value: "short"},
		"bad name":  {Header: "X Verify", Value: secret},
	} {
		ha := ha
		_, err := m.Create(context.Background(), ingress.CreateRequest{Name: "g-" + strings.ReplaceAll(name, " ", ""), Rules: []ingress.Rule{
			{Match: ingress.Match{Port: testutil.FreePort(t)}, Target: ingress.Target{Instance: "app", Port: 80}, RequestHeaderAuth: &ha},
		}})
		if !errors.Is(err, ingress.ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		}
	}
}
