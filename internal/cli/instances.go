package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"hypeman/internal/api/client"
	"hypeman/internal/api/sse"
)

// knownStates are the API's instance states, for case-insensitive flags.
var knownStates = []client.InstanceState{
	client.Created, client.Initializing, client.Running, client.Paused,
	client.Shutdown, client.Stopped, client.Standby, client.Unknown,
}

// canonicalState maps "running" to "Running"; unknown words pass through
// (the server rejects them with its own message).
func canonicalState(s string) string {
	for _, k := range knownStates {
		if strings.EqualFold(s, string(k)) {
			return string(k)
		}
	}
	return s
}

// removableStates can be deleted without -f: no VM is running.
func removable(s client.InstanceState) bool {
	return s == client.Stopped || s == client.Standby || s == client.Template
}

// --- run ---

type runFlags struct {
	name       string
	size       string
	vcpus      int
	overlay    string
	env        []string
	entrypoint []string
	tags       []string
	skipAgent  bool
	detach     bool
	timeout    time.Duration
	noNetwork  bool
	restart    restartFlags
	health     healthFlags
	autoStdby  autoStandbyFlags
	volumes    []string
	ttl        string
	stopTO     string
	workdir    string

	hotplug, diskIO, bandwidthDown, bandwidthUp string
	compression                                 compressionFlags
}

func (a *app) runCommand() *cobra.Command {
	f := runFlags{
		restart: restartFlags{policyName: "restart", prefix: "restart-"}, health: healthFlags{prefix: "health-"},
		autoStdby: autoStandbyFlags{prefix: "auto-standby-"},
		compression: compressionFlags{prefix: "snapshot-compression-", policy: true, fallback: "the server's",
			delayUsage: "standbys save uncompressed and compress after `DURATION`, e.g. 30s (default 0: while saving)"},
	}
	cmd := &cobra.Command{
		Use:   "run [flags] IMAGE [COMMAND [ARG...]]",
		Short: "Create and start an instance",
		Long: `Run creates an instance of IMAGE (the server pulls it when needed) and
boots it. COMMAND and its ARGs replace the image's cmd; --entrypoint
replaces its entrypoint. Flags must come before IMAGE.

By default run waits until the program is Running and prints the instance
ID (with --format json the instance). If the instance stops instead, run
prints its exit code and last log lines and exits 1. With --detach it
prints the ID as soon as the VM is created.

--restart on_failure or always makes hypeman boot the instance again when
its program exits (non-zero only, or any way) or its VM dies, waiting
--restart-backoff, doubled per consecutive attempt up to
--restart-max-backoff. A health check (--health-http, --health-tcp or
--health-cmd) marks the instance unhealthy after --health-retries
consecutive failures; with a restart policy it is then restarted, unless
--health-report-only makes it a readiness check that only reports.
"hypeman update" changes both later.`,
		Example: `  hypeman run --name web -m 512MB -e PORT=8080 nginx:alpine
  hypeman run --restart on_failure --restart-max-attempts 5 --health-http :8080/healthz web:v2
  hypeman run --restart always --health-cmd "pg_isready -q" --health-interval 5s postgres:16
  hypeman run --hotplug-size 3GB --disk-io 100MB/s --bandwidth-down 1Gbps --bandwidth-up 500Mbps web:v2
  hypeman run --snapshot-compression-algorithm lz4 --snapshot-compression-delay 30s web:v2
  hypeman run --volume data:/data --volume models:/models:ro:overlay=1GB app:v1
  hypeman run -d busybox:latest sh -c 'while true; do date; sleep 1; done'
  hypeman run --entrypoint /bin/sh alpine:3.20 -c 'echo hello'`,
		Args: minArgs(1, "an image"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runInstance(cmd, f, args[0], args[1:])
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false) // flags after IMAGE belong to the program
	fl.StringVar(&f.name, "name", "", "instance `NAME` (lowercase letters, digits, dashes; default: generated, e.g. brave-otter-0427)")
	fl.StringVarP(&f.size, "memory", "m", "", "guest memory `SIZE`, e.g. 512MB (server default 1GB)")
	fl.StringVar(&f.size, "size", "", "same as --memory `SIZE`")
	fl.IntVar(&f.vcpus, "cpus", 0, "virtual CPUs: `N` (server default 2)")
	fl.IntVar(&f.vcpus, "vcpus", 0, "same as --cpus `N`")
	fl.StringVar(&f.overlay, "overlay-size", "", "`SIZE` of the writable disk, e.g. 2GB (server default 10GB)")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable `KEY=VALUE` (KEY alone copies it from your environment); repeatable")
	fl.StringArrayVar(&f.entrypoint, "entrypoint", nil, "replace the image's entrypoint with `WORD`; repeat for more words (drops the image's cmd)")
	fl.StringArrayVar(&f.tags, "tag", nil, "attach a tag `KEY=VALUE`; repeatable")
	fl.BoolVar(&f.skipAgent, "skip-guest-agent", false, "report Running without waiting for the guest agent")
	fl.BoolVarP(&f.detach, "detach", "d", false, "do not wait for Running; print the ID once the VM is created")
	fl.DurationVar(&f.timeout, "timeout", 5*time.Minute, "how long to wait for Running")
	fl.StringVar(&f.hotplug, "hotplug-size", "", "extra memory `SIZE` the guest can grow into at run time, e.g. 3GB (default none)")
	fl.StringVar(&f.diskIO, "disk-io", "", "disk I/O limit `RATE`, e.g. 100MB/s or 800Mbps (default unlimited)")
	fl.BoolVar(&f.noNetwork, "no-network", false, "give the instance no network interface")
	fl.StringVar(&f.bandwidthDown, "bandwidth-down", "", "download (host → instance) limit `RATE`, e.g. 1Gbps or 125MB/s (default unlimited)")
	fl.StringVar(&f.bandwidthUp, "bandwidth-up", "", "upload (instance → host) limit `RATE`, e.g. 500Mbps (default unlimited)")
	fl.StringArrayVar(&f.volumes, "volume", nil, "attach a volume: `"+volumeSpecUsage+"`; repeatable")
	fl.StringVar(&f.ttl, "ttl", "", "delete the instance automatically after `DURATION`, e.g. 24h (default never)")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working `DIR` of the program, an absolute path (default: the image's WORKDIR)")
	fl.StringVar(&f.stopTO, "stop-timeout", "", "time the program has between SIGTERM and SIGKILL when the instance is stopped (`DURATION`, 1s to 1h; server default 10s)")
	f.compression.register(fl)
	f.restart.register(fl)
	f.health.register(fl)
	f.autoStdby.register(fl)
	return cmd
}

// network returns the network object to send (nil: the server default).
func (f *runFlags) network(fl *pflag.FlagSet) (*client.CreateInstanceNetwork, error) {
	var n client.CreateInstanceNetwork
	for _, b := range []struct {
		name string
		dst  **string
		val  string
	}{{"bandwidth-down", &n.BandwidthDownload, f.bandwidthDown}, {"bandwidth-up", &n.BandwidthUpload, f.bandwidthUp}} {
		if !fl.Changed(b.name) {
			continue
		}
		if f.noNetwork {
			return nil, fmt.Errorf("--%s limits the network: it cannot be combined with --no-network", b.name)
		}
		*b.dst = ptr(b.val)
	}
	if f.noNetwork {
		n.Enabled = ptr(false)
	}
	if n == (client.CreateInstanceNetwork{}) {
		return nil, nil
	}
	return &n, nil
}

// snapshotPolicy returns the snapshot policy to send (nil: the server
// default).
func (f *runFlags) snapshotPolicy(fl *pflag.FlagSet) (*client.SnapshotPolicy, error) {
	comp, delay, err := f.compression.build(fl)
	if err != nil || (comp == nil && delay == nil) {
		return nil, err
	}
	return &client.SnapshotPolicy{Compression: comp, StandbyCompressionDelay: delay}, nil
}

// parseKV parses KEY=VALUE items. With lookup, a bare KEY takes its value
// from lookup (and must be set there).
func parseKV(items []string, flag string, lookup func(string) string) (map[string]string, error) {
	if len(items) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(items))
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		if k == "" {
			return nil, fmt.Errorf("invalid %s %q: want KEY=VALUE", flag, it)
		}
		if !ok {
			if lookup == nil {
				return nil, fmt.Errorf("invalid %s %q: want KEY=VALUE", flag, it)
			}
			v = lookup(k)
			if v == "" {
				return nil, fmt.Errorf("%s %s: %s is not set in your environment", flag, k, k)
			}
		}
		out[k] = v
	}
	return out, nil
}

func (a *app) runInstance(cmd *cobra.Command, f runFlags, image string, command []string) error {
	ctx := cmd.Context()
	usage := func(err error) error { return &usageErr{cmd: cmd.CommandPath(), err: err} }
	req := client.CreateInstanceRequest{Image: image}
	if f.name != "" {
		if err := checkName(f.name); err != nil {
			return usage(err)
		}
	}
	env, err := parseKV(f.env, "--env", a.env)
	if err != nil {
		return usage(err)
	}
	tags, err := parseKV(f.tags, "--tag", nil)
	if err != nil {
		return usage(err)
	}
	if env != nil {
		req.Env = &env
	}
	if tags != nil {
		t := client.Tags(tags)
		req.Tags = &t
	}
	if f.size != "" {
		req.Size = &f.size
	}
	if f.overlay != "" {
		req.OverlaySize = &f.overlay
	}
	if cmd.Flags().Changed("cpus") || cmd.Flags().Changed("vcpus") {
		if f.vcpus < 1 {
			return usage(fmt.Errorf("--cpus must be at least 1"))
		}
		req.Vcpus = &f.vcpus
	}
	if len(f.entrypoint) > 0 {
		req.Entrypoint = &f.entrypoint
	}
	if f.ttl != "" {
		req.Ttl = &f.ttl
	}
	if f.stopTO != "" {
		req.StopTimeout = &f.stopTO
	}
	if f.workdir != "" {
		req.WorkingDir = &f.workdir
	}
	if len(command) > 0 {
		req.Cmd = &command
	}
	if f.skipAgent {
		req.SkipGuestAgent = &f.skipAgent
	}
	if f.timeout <= 0 {
		return usage(fmt.Errorf("--timeout must be positive"))
	}
	if cmd.Flags().Changed("hotplug-size") {
		req.HotplugSize = &f.hotplug
	}
	if cmd.Flags().Changed("disk-io") {
		req.DiskIoBps = &f.diskIO
	}
	if req.Network, err = f.network(cmd.Flags()); err != nil {
		return usage(err)
	}
	if req.SnapshotPolicy, err = f.snapshotPolicy(cmd.Flags()); err != nil {
		return usage(err)
	}
	if req.RestartPolicy, err = f.restart.build(cmd.Flags()); err != nil {
		return usage(err)
	}
	if req.HealthCheck, err = f.health.build(cmd.Flags()); err != nil {
		return usage(err)
	}
	if req.AutoStandby, err = f.autoStdby.build(cmd.Flags()); err != nil {
		return usage(err)
	}
	if req.Volumes, err = volumeMounts(f.volumes); err != nil {
		return usage(err)
	}

	c, err := a.api()
	if err != nil {
		return err
	}
	var created *client.CreateInstanceResponse
	for attempt := 0; ; attempt++ {
		req.Name = f.name
		if req.Name == "" {
			req.Name = generateName(a.rand)
		}
		r, err := c.CreateInstanceWithResponse(ctx, req)
		err = a.check(ctx, r, err, http.StatusCreated)
		var ae *APIError
		if f.name == "" && attempt < 3 && errors.As(err, &ae) && ae.Code == "conflict" {
			continue // the generated name is taken: draw another
		}
		if err != nil {
			return err
		}
		created = r
		break
	}
	in := created.JSON201
	if f.detach {
		if a.jsonOutput() {
			a.printRaw(created.Body)
		} else {
			fmt.Fprintln(a.stdout, in.Id)
		}
		return nil
	}

	w, _, err := a.waitState(ctx, c, in.Id, []string{string(client.Running)}, f.timeout)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintf(a.stderr, "Stopped waiting; instance %s (%s) keeps going.\n", in.Name, shortID(in.Id))
		}
		return err
	}
	if w.State == client.Running {
		if a.jsonOutput() {
			r, err := c.GetInstanceWithResponse(ctx, in.Id)
			if err := a.check(ctx, r, err, http.StatusOK); err != nil {
				return err
			}
			a.printRaw(r.Body)
		} else {
			fmt.Fprintln(a.stdout, in.Id)
		}
		return nil
	}
	if w.TimedOut {
		return fmt.Errorf("instance %s is still %s after %s; follow it with: hypeman logs -f %s", in.Name, w.State, f.timeout, in.Name)
	}
	if w.State == client.Unknown {
		return fmt.Errorf("instance %s is in state Unknown: %s", in.Name, orDash(deref(w.StateError)))
	}
	// It ended up somewhere else (usually Stopped: the program exited).
	detail := ""
	if r, err := c.GetInstanceWithResponse(ctx, in.Id); a.check(ctx, r, err, http.StatusOK) == nil {
		detail = ": " + exitInfo(r.JSON200)
		if a.jsonOutput() {
			a.printRaw(r.Body)
		}
	}
	a.printLogTail(ctx, c, in.Id, 20)
	return fmt.Errorf("instance %s is %s instead of Running%s", in.Name, w.State, detail)
}

// exitInfo describes how the program's last run ended.
func exitInfo(in *client.Instance) string {
	if in.ExitCode == nil {
		if m := deref(in.ExitMessage); m != "" {
			return m
		}
		return "exit status unknown"
	}
	s := fmt.Sprintf("exit code %d", *in.ExitCode)
	if m := deref(in.ExitMessage); m != "" {
		s += " (" + m + ")"
	}
	return s
}

// printLogTail copies the last n app log lines to stderr, best effort.
func (a *app) printLogTail(ctx context.Context, c *client.ClientWithResponses, id string, n int) {
	resp, err := c.GetInstanceLogs(ctx, id, &client.GetInstanceLogsParams{Tail: &n})
	resp, err = a.streamResponse(ctx, resp, err)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	rd := sse.NewReader(resp.Body)
	header := false
	for {
		ev, err := rd.Next()
		if err != nil || ev.Type != "message" {
			return
		}
		if !header {
			fmt.Fprintln(a.stderr, "--- last log lines ---")
			header = true
		}
		fmt.Fprintln(a.stderr, ev.Data)
	}
}

// waitState calls the wait endpoint until a target is reached, the
// instance settles elsewhere, or timeout passes, splitting long timeouts
// into requests the server accepts. It returns the last response.
func (a *app) waitState(ctx context.Context, c *client.ClientWithResponses, id string, states []string, timeout time.Duration) (*client.WaitForStateResponse, []byte, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		chunk := waitChunk(left, a.maxServerWait)
		r, err := c.WaitForInstanceStateWithResponse(ctx, id, &client.WaitForInstanceStateParams{
			State: states, Timeout: ptr(chunk.String()),
		})
		if err := a.check(ctx, r, err, http.StatusOK); err != nil {
			return nil, nil, err
		}
		w := r.JSON200
		// Ask again only when this request was capped below what was left.
		if !w.TimedOut || chunk >= left || time.Until(deadline) <= 0 {
			return w, r.Body, nil
		}
	}
}

// --- wait ---

func (a *app) waitCommand() *cobra.Command {
	var (
		states  []string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "wait INSTANCE --state STATE [--state STATE...] [--timeout 2m]",
		Short: "Wait until an instance reaches a state",
		Long: `Wait blocks until INSTANCE reaches one of the given states and prints
the state it is in when the wait ends.

It ends early when the instance settles in a state it will not leave by
itself (Stopped, Standby, Shutdown, Paused, Unknown) that was not asked
for, unless a restart is pending.

Exit status: 0 when a requested state was reached, 1 when the wait ended
in another state (or on an error), 2 when the timeout passed.`,
		Example: `  hypeman wait web --state Running
  hypeman wait job-1 --state Stopped --timeout 10m
  hypeman wait web --state Running --state Stopped`,
		Args: exactArgs(1, "exactly one instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if len(states) == 0 {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("--state is required")}
			}
			if timeout <= 0 {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("--timeout must be positive")}
			}
			targets := make([]string, len(states))
			for i, s := range states {
				targets[i] = canonicalState(s)
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			w, body, err := a.waitState(ctx, c, args[0], targets, timeout)
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				a.printRaw(body)
			} else {
				fmt.Fprintln(a.stdout, w.State)
			}
			switch {
			case slices.Contains(targets, string(w.State)):
				return nil
			case w.TimedOut:
				if !a.jsonOutput() {
					fmt.Fprintf(a.stderr, "Timed out after %s waiting for %s (state: %s).\n", timeout, strings.Join(targets, " or "), w.State)
				}
				return &exitErr{code: exitTimeout}
			default:
				if !a.jsonOutput() {
					msg := fmt.Sprintf("Instance is %s, not %s", w.State, strings.Join(targets, " or "))
					if se := deref(w.StateError); se != "" {
						msg += ": " + se
					}
					fmt.Fprintln(a.stderr, msg+".")
				}
				return &exitErr{code: exitError}
			}
		},
	}
	cmd.Flags().StringArrayVar(&states, "state", nil, "`STATE` to wait for (Created, Initializing, Running, Paused, Shutdown, Stopped, Standby, Template); repeatable: any of them")
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "give up after this long (exit status 2)")
	return cmd
}

// --- ps ---

func (a *app) psCommand() *cobra.Command {
	var all, quiet bool
	var tagArgs []string
	cmd := &cobra.Command{
		Use:   "ps [-a] [-q] [--tag KEY=VALUE]...",
		Short: "List instances",
		Long: `List instances, newest first. Without -a, Stopped instances are left out
(like docker ps). --tag keeps the instances carrying every tag given.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			tags, err := parseKV(tagArgs, "--tag", nil)
			if err != nil {
				return &usageErr{cmd: cmd.CommandPath(), err: err}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			var params client.ListInstancesParams
			if tags != nil {
				t := client.TagsFilter(tags)
				params.Tags = &t
			}
			r, err := c.ListInstancesWithResponse(ctx, &params)
			if err := a.check(ctx, r, err, http.StatusOK); err != nil {
				return err
			}
			list := *r.JSON200
			var raws []json.RawMessage
			if err := json.Unmarshal(r.Body, &raws); err != nil || len(raws) != len(list) {
				return fmt.Errorf("server sent an instance list that does not match the API")
			}
			keep := make([]int, 0, len(list))
			for i, in := range list {
				if all || in.State != client.Stopped {
					keep = append(keep, i)
				}
			}
			if a.jsonOutput() {
				out := make([]json.RawMessage, 0, len(keep))
				for _, i := range keep {
					out = append(out, raws[i])
				}
				b, err := json.Marshal(out)
				if err != nil {
					return err
				}
				a.printRaw(b)
				return nil
			}
			slices.Reverse(keep) // the server lists oldest first
			if quiet {
				for _, i := range keep {
					fmt.Fprintln(a.stdout, list[i].Id)
				}
				return nil
			}
			// HEALTH appears only when a listed instance has a check.
			showHealth := slices.ContainsFunc(keep, func(i int) bool { return list[i].HealthCheck != nil })
			tw := a.table()
			if showHealth {
				fmt.Fprintln(tw, "ID\tNAME\tIMAGE\tSTATE\tHEALTH\tCREATED")
			} else {
				fmt.Fprintln(tw, "ID\tNAME\tIMAGE\tSTATE\tCREATED")
			}
			now := a.now()
			for _, i := range keep {
				in := list[i]
				if showHealth {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", shortID(in.Id), in.Name, in.Image, stateColumn(in), healthColumn(in), age(now, in.CreatedAt))
				} else {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", shortID(in.Id), in.Name, in.Image, stateColumn(in), age(now, in.CreatedAt))
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "include Stopped instances")
	cmd.Flags().StringArrayVar(&tagArgs, "tag", nil, "only instances tagged `KEY=VALUE`; repeatable (all must match)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print full IDs only")
	return cmd
}

// --- inspect ---

func (a *app) inspectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect INSTANCE",
		Short: "Show an instance as JSON",
		Long:  "Print the instance object (by ID, name or unique ID prefix) as indented JSON.",
		Args:  exactArgs(1, "exactly one instance"),
		RunE:  a.showRun(byRef((*client.ClientWithResponses).GetInstanceWithResponse)),
	}
}

// --- stop, start, rm ---

// lifecycleCommand builds stop, start, standby, restore, pause and resume:
// one POST per instance.
func (a *app) lifecycleCommand(verb, short, long string, call refCall) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " INSTANCE...",
		Short: short,
		Long:  long,
		Args:  minArgs(1, "at least one instance"),
		RunE:  a.eachRun(call, http.StatusOK),
	}
}

func (a *app) stopCommand() *cobra.Command {
	var timeout string
	cmd := a.lifecycleCommand("stop", "Stop instances gracefully",
		`Stop each instance gracefully (the program gets SIGTERM, then the VM is
powered off) and print its name as given. With --format json each stopped
instance is printed, one per line. The program has the instance's
stop timeout (run --stop-timeout) to exit; --timeout shortens it.`,
		func(ctx context.Context, c *client.ClientWithResponses, ref string) (response, error) {
			var body client.StopInstanceRequest
			if timeout != "" {
				body.Timeout = &timeout
			}
			return c.StopInstanceWithResponse(ctx, ref, body)
		})
	cmd.Flags().StringVar(&timeout, "timeout", "", "time the program has between SIGTERM and SIGKILL for this stop (`DURATION`, 0s kills at once; default the instance's stop timeout)")
	return cmd
}

func (a *app) startCommand() *cobra.Command {
	var entrypoint, command []string
	cmd := a.lifecycleCommand("start", "Start stopped instances",
		`Boot each Stopped instance again and print its name as given. With
--format json each instance is printed, one per line. Use
"hypeman wait INSTANCE --state Running" to wait for the program.
--entrypoint and --cmd (repeat for each argument) replace what the
instance runs, for this and later starts.`,
		func(ctx context.Context, c *client.ClientWithResponses, ref string) (response, error) {
			var body client.StartInstanceRequest
			if len(entrypoint) > 0 {
				body.Entrypoint = &entrypoint
			}
			if len(command) > 0 {
				body.Cmd = &command
			}
			return c.StartInstanceWithResponse(ctx, ref, body)
		})
	cmd.Flags().StringArrayVar(&entrypoint, "entrypoint", nil, "entrypoint `ARG` to run instead of the image's; repeat for each argument")
	cmd.Flags().StringArrayVar(&command, "cmd", nil, "command `ARG` to run instead of the instance's; repeat for each argument")
	return cmd
}

func (a *app) rmCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [-f] INSTANCE...",
		Short: "Delete instances",
		Long: `Delete instances and their disks. An instance whose VM is running (any
state but Stopped, Standby or Template) is refused unless -f is given, which stops
and deletes it.`,
		Args: minArgs(1, "at least one instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.api()
			if err != nil {
				return err
			}
			return a.each(ctx, args, func(ref string) error {
				if !force {
					r, err := c.GetInstanceWithResponse(ctx, ref)
					if err := a.check(ctx, r, err, http.StatusOK); err != nil {
						return err
					}
					if in := r.JSON200; !removable(in.State) {
						return fmt.Errorf("cannot remove instance %s: it is %s; stop it first or use rm -f", in.Name, in.State)
					}
				}
				r, err := c.DeleteInstanceWithResponse(ctx, ref)
				if err := a.check(ctx, r, err, http.StatusNoContent); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, ref)
				return nil
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "delete even if the instance is running (it is stopped first)")
	return cmd
}
