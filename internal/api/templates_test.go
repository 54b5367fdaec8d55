package api

import (
	"context"
	"strings"
	"testing"

	"hypeman/internal/auth"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
)

// fakeTemplates promotes and demotes the fake instances; err, when set, is
// returned instead.
type fakeTemplates struct {
	inst *fakeInstances
	err  error
}

func (f *fakeTemplates) set(ref string, from, to state.State, forks int) (*instances.Instance, error) {
	if f.err != nil {
		return nil, f.err
	}
	in, err := f.inst.find(ref)
	if err != nil {
		return nil, err
	}
	if in.State != from {
		return nil, &instances.TransitionError{Action: "promote-template", State: in.State, Allowed: instances.Allowed(in.State)}
	}
	f.inst.mu.Lock()
	in.State, in.ForkCount = to, forks
	f.inst.mu.Unlock()
	return in, nil
}

func (f *fakeTemplates) PromoteTemplate(ctx context.Context, ref string) (*instances.Instance, error) {
	return f.set(ref, state.Standby, state.Template, 0)
}

func (f *fakeTemplates) DemoteTemplate(ctx context.Context, ref string) (*instances.Instance, error) {
	return f.set(ref, state.Template, state.Standby, 0)
}

func TestTemplateRoutes(t *testing.T) {
	ft := &fakeTemplates{}
	e := newTestEnv(t, func(o *Options) { ft.inst = o.Instances.(*fakeInstances); o.Templates = ft })
	addInstance(e, "tpl", state.Standby)
	addInstance(e, "web", state.Running)
	tok := mint(t, auth.InstanceWrite, auth.InstanceRead)

	resp := e.do("POST", "/instances/tpl/promote-template", tok, "")
	var in map[string]any
	jsonBody(t, resp, &in)
	if resp.StatusCode != 200 || in["state"] != "Template" || in["fork_count"] != float64(0) || in["id"] != "idtpl" {
		t.Fatalf("promote: %d %v", resp.StatusCode, in)
	}
	// state=Template lists templates only.
	resp = e.do("GET", "/instances?state=Template", tok, "")
	var list []map[string]any
	jsonBody(t, resp, &list)
	if resp.StatusCode != 200 || len(list) != 1 || list[0]["name"] != "tpl" {
		t.Fatalf("list state=Template: %d %v", resp.StatusCode, list)
	}
	resp = e.do("GET", "/instances/web", tok, "")
	jsonBody(t, resp, &in)
	if in["fork_count"] != float64(0) {
		t.Fatalf("fork_count of a plain instance: %v", in["fork_count"])
	}

	// A state conflict (promote of a Running instance) is a 409.
	resp = e.do("POST", "/instances/web/promote-template", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 409 || code != "invalid_state" {
		t.Fatalf("promote of a Running instance: %d %s", resp.StatusCode, code)
	}
	// Refused because forks exist: 409 invalid_state, the message names them.
	ft.err = &instances.TemplateInUseError{Action: instances.ActionDemote, TemplateID: "idtpl", TemplateName: "tpl",
		Forks: []instances.ForkRef{{ID: "idf1", Name: "f1"}, {ID: "idf2", Name: "f2"}}}
	resp = e.do("POST", "/instances/tpl/demote-template", tok, "")
	code, msg := errBody(t, resp)
	if resp.StatusCode != 409 || code != "invalid_state" || !strings.Contains(msg, "f1 (idf1), f2 (idf2)") || !strings.Contains(msg, "delete them first") {
		t.Fatalf("demote with forks: %d %s %q", resp.StatusCode, code, msg)
	}
	ft.err = nil
	resp = e.do("POST", "/instances/tpl/demote-template", tok, "")
	jsonBody(t, resp, &in)
	if resp.StatusCode != 200 || in["state"] != "Standby" {
		t.Fatalf("demote: %d %v", resp.StatusCode, in)
	}
	resp = e.do("POST", "/instances/nope/promote-template", tok, "")
	if code, _ := errBody(t, resp); resp.StatusCode != 404 || code != "not_found" {
		t.Fatalf("unknown instance: %d %s", resp.StatusCode, code)
	}
	// instance:write is required.
	for _, p := range []string{"promote-template", "demote-template"} {
		resp = e.do("POST", "/instances/tpl/"+p, mint(t, auth.InstanceRead), "")
		if code, _ := errBody(t, resp); resp.StatusCode != 403 || code != "forbidden" {
			t.Errorf("%s with instance:read: %d %s", p, resp.StatusCode, code)
		}
	}
}

func TestTemplateRoutesNotImplemented(t *testing.T) {
	e := newTestEnv(t, nil)
	addInstance(e, "tpl", state.Standby)
	for _, p := range []string{"promote-template", "demote-template"} {
		resp := e.do("POST", "/instances/tpl/"+p, mint(t, auth.InstanceWrite), "")
		if code, _ := errBody(t, resp); resp.StatusCode != 501 || code != "not_implemented" {
			t.Errorf("%s without Templates: %d %s", p, resp.StatusCode, code)
		}
	}
}
