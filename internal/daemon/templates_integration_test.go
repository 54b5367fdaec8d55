package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"hypeman/internal/api"
	"hypeman/internal/auth"
	"hypeman/internal/cli"
	"hypeman/internal/daemon"
	"hypeman/internal/instances"
	"hypeman/internal/instances/state"
	"hypeman/internal/testutil/testimage"
)

// cliFunc runs the hypeman CLI in-process; apiFunc sends one request and
// returns the status and the error body's code and message.
type (
	cliFunc func(args ...string) (code int, stdout, stderr string)
	apiFunc func(method, path string) (status int, code, message string)
)

// serveAPI serves the daemon's API on loopback (as hypemand wires it, for
// the parts a template flow uses) and returns a runner of the hypeman CLI
// against it and a raw requester.
func serveAPI(t *testing.T, d *daemon.Daemon) (cliFunc, apiFunc) {
	t.Helper()
	secret := []byte("templates-test-secret-0123456789abcdef")
	srv, err := api.NewServer(api.Options{
		Instances: d.Instances, Images: d.Images, Waiter: d.Instances, Lifecycle: d.Instances,
		Templates: d.Instances, Snapshots: d.Instances, Events: d.Events, Secret: secret,
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { hs.Close(); srv.Close() })
	tok, err := auth.Mint(secret, auth.MintOptions{UserID: "t", TTL: time.Hour,
		Scopes: []auth.Scope{auth.InstanceRead, auth.InstanceWrite, auth.InstanceDelete}})
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"HYPEMAN_BASE_URL": hs.URL, "HYPEMAN_API_KEY": tok}
	runCLI := func(args ...string) (int, string, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		var out, errb bytes.Buffer
		code := cli.Run(ctx, args, strings.NewReader(""), &out, &errb, func(k string) string { return env[k] })
		return code, out.String(), errb.String()
	}
	do := func(method, path string) (int, string, string) {
		req, _ := http.NewRequest(method, hs.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e struct{ Code, Message string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e.Code, e.Message
	}
	return runCLI, do
}

// The explicit template flow on real VMs, through hypeman's CLI and the
// API: promote a Standby instance, fork it three times into Running forks
// (each continues the template's memory), restore and delete of the
// template refused with 409 naming the forks, forks deleted, demote,
// restore continues the template's own program.
func TestTemplatePromoteForkRefuseDemoteRestore(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	hypeman, do := serveAPI(t, d)
	run := func(args ...string) string {
		t.Helper()
		code, out, errOut := hypeman(args...)
		if code != 0 {
			t.Fatalf("hypeman %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
		return out
	}
	inspect := func(ref string) (in struct {
		ID        string `json:"id"`
		State     string `json:"state"`
		ForkCount *int   `json:"fork_count"`
	}) {
		t.Helper()
		if err := json.Unmarshal([]byte(run("inspect", ref)), &in); err != nil {
			t.Fatal(err)
		}
		return in
	}

	host := testimage.Registry(t)
	ref := testimage.Push(t, host, "test/counter", testimage.Busybox(t, counterImage(t)))
	ctx := context.Background()
	tpl, err := d.Instances.Create(ctx, instances.CreateParams{Name: "tpl", Image: ref, Size: "256MB", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, d, tpl.ID, state.Running, bootTimeout)
	waitCountAbove(t, d, tpl.ID, 3)
	run("standby", "tpl")
	atStandby, _ := lastCount(t, d, tpl.ID)
	offset := len(serialLog(t, d, tpl.ID))

	run("template", "promote", "tpl")
	if in := inspect("tpl"); in.State != "Template" || in.ForkCount == nil || *in.ForkCount != 0 {
		t.Fatalf("after promote: %+v", in)
	}
	forks := []string{"w1", "w2", "w3"}
	ids := map[string]string{}
	for _, name := range forks {
		ids[name] = strings.TrimSpace(run("fork", "--target-state", "Running", "tpl", name))
		if in := inspect(name); in.State != "Running" {
			t.Fatalf("fork %s: %+v", name, in)
		}
		// Each fork continues the template's memory: its counter goes on
		// from where the template stopped.
		waitCountAbove(t, d, ids[name], atStandby+1)
		if c := countsAfter(t, d, ids[name], 0); c[0] != atStandby+1 {
			t.Fatalf("fork %s started at %d, template stopped at %d", name, c[0], atStandby)
		}
	}
	if in := inspect("tpl"); in.State != "Template" || *in.ForkCount != 3 {
		t.Fatalf("template after 3 forks: %+v", in)
	}
	if out := run("ps"); !strings.Contains(out, "Template (3 forks)") {
		t.Fatalf("ps:\n%s", out)
	}
	if out := run("template", "ls", "-q"); out != tpl.ID+"\n" {
		t.Fatalf("template ls -q: %q", out)
	}

	// Restore, delete, demote and start of the template: 409 naming every
	// fork, through the API and the CLI.
	namesForks := func(what, msg string) {
		t.Helper()
		for _, name := range forks {
			if !strings.Contains(msg, name+" ("+ids[name]+")") {
				t.Errorf("%s: the refusal does not name fork %s: %s", what, name, msg)
			}
		}
		if !strings.Contains(msg, "delete them first") {
			t.Errorf("%s: the refusal does not say what to do: %s", what, msg)
		}
	}
	for _, r := range [][2]string{{"POST", "/instances/tpl/restore"}, {"DELETE", "/instances/tpl"},
		{"POST", "/instances/tpl/demote-template"}, {"POST", "/instances/tpl/start"}} {
		status, code, msg := do(r[0], r[1])
		if status != 409 || code != "invalid_state" {
			t.Fatalf("%s %s on a template with forks: %d %s %s", r[0], r[1], status, code, msg)
		}
		namesForks(r[0]+" "+r[1], msg)
	}
	for _, args := range [][]string{{"restore", "tpl"}, {"rm", "tpl"}, {"template", "demote", "tpl"}} {
		code, out, errOut := hypeman(args...)
		if code == 0 {
			t.Fatalf("hypeman %v on a template with forks succeeded: %s", args, out)
		}
		namesForks("hypeman "+strings.Join(args, " "), errOut)
	}
	if in := inspect("tpl"); in.State != "Template" || *in.ForkCount != 3 {
		t.Fatalf("template after the refusals: %+v", in)
	}

	// Delete the forks, demote, restore: the template's own program
	// continues from its standby.
	run(append([]string{"rm", "-f"}, forks...)...)
	if in := inspect("tpl"); in.State != "Template" || *in.ForkCount != 0 {
		t.Fatalf("template after its forks were deleted: %+v", in)
	}
	run("template", "demote", "tpl")
	if in := inspect("tpl"); in.State != "Standby" {
		t.Fatalf("after demote: %+v", in)
	}
	run("restore", "tpl")
	waitNewCounts(t, d, tpl.ID, offset)
	if c := countsAfter(t, d, tpl.ID, offset); c[0] != atStandby+1 {
		t.Fatalf("template restored at %d, stopped at %d", c[0], atStandby)
	}
	if in := inspect("tpl"); in.State != "Running" || *in.ForkCount != 0 {
		t.Fatalf("after restore: %+v", in)
	}
}
