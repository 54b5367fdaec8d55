package ingress

import (
	"errors"
	"testing"
)

func TestNormalize(t *testing.T) {
	rules, err := normalize(CreateRequest{Name: "web-1", Rules: []Rule{
		{Match: Match{Hostname: " App.Example.COM. "}, Target: Target{Instance: "a", Port: 80}},
		{Match: Match{Hostname: "*.Example.com", Port: 8443}, Target: Target{Instance: "b", Port: 8080}},
		{Match: Match{Port: 8443}, Target: Target{Instance: "c", Port: 1}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if rules[0].Match != (Match{Hostname: "app.example.com", Port: 80}) || rules[1].Match.Hostname != "*.example.com" || rules[2].Match.Hostname != "" {
		t.Fatalf("normalized %+v", rules)
	}
	ok := Rule{Match: Match{Port: 8000}, Target: Target{Instance: "a", Port: 80}}
	bad := map[string]CreateRequest{
		"no name":        {Rules: []Rule{ok}},
		"upper name":     {Name: "Web", Rules: []Rule{ok}},
		"dash name":      {Name: "web-", Rules: []Rule{ok}},
		"no rules":       {Name: "w"},
		"port":           {Name: "w", Rules: []Rule{{Match: Match{Port: 70000}, Target: ok.Target}}},
		"target port":    {Name: "w", Rules: []Rule{{Match: ok.Match, Target: Target{Instance: "a"}}}},
		"no instance":    {Name: "w", Rules: []Rule{{Match: ok.Match, Target: Target{Port: 80}}}},
		"mid wildcard":   {Name: "w", Rules: []Rule{{Match: Match{Hostname: "a.*.com", Port: 1}, Target: ok.Target}}},
		"bare wildcard":  {Name: "w", Rules: []Rule{{Match: Match{Hostname: "*", Port: 1}, Target: ok.Target}}},
		"partial label":  {Name: "w", Rules: []Rule{{Match: Match{Hostname: "a*.com", Port: 1}, Target: ok.Target}}},
		"bad label":      {Name: "w", Rules: []Rule{{Match: Match{Hostname: "-a.com", Port: 1}, Target: ok.Target}}},
		"underscore":     {Name: "w", Rules: []Rule{{Match: Match{Hostname: "a_b.com", Port: 1}, Target: ok.Target}}},
		"duplicate rule": {Name: "w", Rules: []Rule{ok, {Match: Match{Port: 8000}, Target: Target{Instance: "b", Port: 1}}}},
	}
	for name, req := range bad {
		if _, err := normalize(req); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: want ErrInvalid, got %v", name, err)
		}
	}
}

func TestRouteLookup(t *testing.T) {
	tbl := buildTable([]*Ingress{{Rules: []Rule{
		{Match: Match{Hostname: "a.test", Port: 1}, Target: Target{Instance: "exact"}},
		{Match: Match{Hostname: "*.test", Port: 1}, Target: Target{Instance: "wild"}},
		{Match: Match{Port: 1}, Target: Target{Instance: "any"}},
		{Match: Match{Hostname: "only.test", Port: 2}, Target: Target{Instance: "only"}},
	}}})
	for _, c := range []struct {
		port int
		host string
		want string
	}{
		{1, "a.test", "exact"}, {1, "b.test", "wild"}, {1, "x.b.test", "any"}, {1, "test", "any"},
		{1, "other", "any"}, {2, "only.test", "only"}, {2, "a.test", ""}, {3, "a.test", ""},
	} {
		r, ok := tbl.lookup(c.port, c.host)
		if got := r.Target.Instance; ok != (c.want != "") || got != c.want {
			t.Errorf("lookup(%d, %q) = %q, %v; want %q", c.port, c.host, got, ok, c.want)
		}
	}
	for in, want := range map[string]string{"A.Test:8080": "a.test", "a.test.": "a.test", "[::1]:80": "::1", "a.test": "a.test"} {
		if got := requestHost(in); got != want {
			t.Errorf("requestHost(%q) = %q, want %q", in, got, want)
		}
	}
}
