package cli

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"hypeman/internal/api/client"
)

// Restart policy and health check flags. `run` and `update` share them
// with different names (run: --restart, --restart-backoff, --health-http,
// --health-interval…; update: --policy, --backoff, --http, --interval…), so
// each set is a struct that registers its flags under a prefix and builds
// the request object from the flags that were actually given: a flag left
// out is not sent, and the server fills in its default.
//
// The health command flag (--health-cmd / --cmd) is split into argv by a
// small shell-like splitter (quotes and backslashes, no expansion) and run
// without a shell, because many images have none. Unquoted shell operators
// (| & ; < > $ …) are refused with a hint to write `sh -c '…'` explicitly.

// restartFlags are a restart policy's flags.
type restartFlags struct {
	policyName string // the flag naming the policy ("restart" or "policy")
	prefix     string // prefix of the other flags ("restart-" or "")

	policy, backoff, maxBackoff, stableAfter string
	maxAttempts                              int
}

func (r *restartFlags) flag(name string) string { return r.prefix + name }

func (r *restartFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&r.policy, r.policyName, "", "restart `POLICY`: never, on_failure (also on-failure) or always")
	fl.IntVar(&r.maxAttempts, r.flag("max-attempts"), 0, "consecutive restarts allowed before giving up: `N` (server default 0 = unlimited)")
	fl.StringVar(&r.backoff, r.flag("backoff"), "", "delay before the first restart, a `DURATION` such as 5s (server default 5s; doubles per attempt)")
	fl.StringVar(&r.maxBackoff, r.flag("max-backoff"), "", "cap of the doubling delay, a `DURATION` (server default 5m; equal to the backoff for a fixed delay)")
	fl.StringVar(&r.stableAfter, r.flag("stable-after"), "", "a run this long (`DURATION`) resets the attempt count (server default 10m)")
}

// build returns the policy to send, or nil when no restart flag was given.
func (r *restartFlags) build(fl *pflag.FlagSet) (*client.RestartPolicy, error) {
	others := []string{r.flag("max-attempts"), r.flag("backoff"), r.flag("max-backoff"), r.flag("stable-after")}
	if !fl.Changed(r.policyName) {
		for _, n := range others {
			if fl.Changed(n) {
				return nil, fmt.Errorf("--%s needs --%s on_failure or always", n, r.policyName)
			}
		}
		return nil, nil
	}
	var kind client.RestartPolicyPolicy
	switch strings.ToLower(strings.TrimSpace(r.policy)) {
	case "never":
		kind = client.RestartNever
	case "on_failure", "on-failure":
		kind = client.RestartOnFailure
	case "always":
		kind = client.RestartAlways
	default:
		return nil, fmt.Errorf("invalid --%s %q: use never, on_failure or always", r.policyName, r.policy)
	}
	out := &client.RestartPolicy{Policy: &kind}
	if kind == client.RestartNever {
		for _, n := range others {
			if fl.Changed(n) {
				return nil, fmt.Errorf("--%s has no effect with --%s never", n, r.policyName)
			}
		}
		return out, nil
	}
	if fl.Changed(r.flag("max-attempts")) {
		if r.maxAttempts < 0 {
			return nil, fmt.Errorf("--%s must be 0 (unlimited) or more", r.flag("max-attempts"))
		}
		out.MaxAttempts = ptr(r.maxAttempts)
	}
	var err error
	for _, d := range []struct {
		name string
		val  string
		dst  **string
	}{
		{r.flag("backoff"), r.backoff, &out.Backoff},
		{r.flag("max-backoff"), r.maxBackoff, &out.MaxBackoff},
		{r.flag("stable-after"), r.stableAfter, &out.StableAfter},
	} {
		if *d.dst, err = durationFlag(fl, d.name, d.val); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// durationFlag returns the flag's value if it was given, checked locally
// so a typo is a usage error rather than a round trip (the server checks
// the ranges).
func durationFlag(fl *pflag.FlagSet, name, val string) (*string, error) {
	if !fl.Changed(name) {
		return nil, nil
	}
	v := strings.TrimSpace(val)
	if _, err := time.ParseDuration(v); err != nil {
		return nil, fmt.Errorf("invalid --%s %q: want a duration such as 500ms, 10s, 1m30s", name, val)
	}
	return &v, nil
}

// healthFlags are a health check's flags.
type healthFlags struct {
	prefix   string // "health-" (run) or "" (update health-check)
	withNone bool   // offer --none (update only)

	http, tcp, cmd                 string
	none, reportOnly               bool
	interval, timeout, startPeriod string
	retries, expectedStatus        int
}

func (h *healthFlags) flag(name string) string { return h.prefix + name }

func (h *healthFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&h.http, h.flag("http"), "", "HTTP check: GET `[HOST]:PORT/PATH` in the instance must succeed, e.g. :8080/healthz (HOST, if given, must be localhost)")
	fl.StringVar(&h.tcp, h.flag("tcp"), "", "TCP check: `[HOST]:PORT` in the instance must accept a connection, e.g. :5432")
	fl.StringVar(&h.cmd, h.flag("cmd"), "", "exec check: `\"CMD ARGS\"` run in the instance must exit 0; split like a shell would, but run without one (write \"sh -c '…'\" for pipes)")
	if h.withNone {
		fl.BoolVar(&h.none, "none", false, "remove the health check")
	}
	fl.StringVar(&h.interval, h.flag("interval"), "", "time between checks, a `DURATION` of at least 1s (server default 10s)")
	fl.StringVar(&h.timeout, h.flag("timeout"), "", "time one check may take, a `DURATION` not above the interval (server default 2s)")
	fl.StringVar(&h.startPeriod, h.flag("start-period"), "", "grace `DURATION` after boot in which failures do not count (server default 30s)")
	fl.IntVar(&h.retries, h.flag("retries"), 0, "consecutive failures that make the instance unhealthy: `N` (server default 3)")
	fl.IntVar(&h.expectedStatus, h.flag("expected-status"), 0, "HTTP status the HTTP check wants: `CODE` (server default 200)")
	fl.BoolVar(&h.reportOnly, h.flag("report-only"), false, "only report health_status: an unhealthy instance is never restarted for it (a readiness check)")
}

// build returns the check to send: nil when no health flag was given, an
// empty check for --none.
func (h *healthFlags) build(fl *pflag.FlagSet) (*client.HealthCheck, error) {
	kinds := []string{h.flag("http"), h.flag("tcp"), h.flag("cmd")}
	if h.withNone {
		kinds = append(kinds, "none")
	}
	modifiers := []string{h.flag("interval"), h.flag("timeout"), h.flag("start-period"), h.flag("retries"), h.flag("expected-status"), h.flag("report-only")}
	var given []string
	for _, k := range kinds {
		if fl.Changed(k) {
			given = append(given, "--"+k)
		}
	}
	if len(given) > 1 {
		return nil, fmt.Errorf("%s cannot be combined: give one health check", strings.Join(given, " and "))
	}
	if len(given) == 0 || h.none {
		for _, n := range modifiers {
			if fl.Changed(n) {
				if h.none {
					return nil, fmt.Errorf("--%s cannot be combined with --none", n)
				}
				return nil, fmt.Errorf("--%s needs a health check (--%s, --%s or --%s)", n, kinds[0], kinds[1], kinds[2])
			}
		}
		if h.none {
			return &client.HealthCheck{Type: ptr(client.HealthCheckNone)}, nil
		}
		return nil, nil
	}
	out := &client.HealthCheck{}
	switch {
	case fl.Changed(h.flag("http")):
		port, path, err := parseHTTPTarget(h.http)
		if err != nil {
			return nil, fmt.Errorf("invalid --%s %q: %w", h.flag("http"), h.http, err)
		}
		out.Type, out.Http = ptr(client.HealthCheckHTTPType), &client.HealthCheckHTTP{Port: port}
		if path != "" {
			out.Http.Path = &path
		}
		if fl.Changed(h.flag("expected-status")) {
			if h.expectedStatus < 100 || h.expectedStatus > 599 {
				return nil, fmt.Errorf("--%s must be an HTTP status between 100 and 599", h.flag("expected-status"))
			}
			out.Http.ExpectedStatus = ptr(h.expectedStatus)
		}
	case fl.Changed(h.flag("tcp")):
		port, err := parseTCPTarget(h.tcp)
		if err != nil {
			return nil, fmt.Errorf("invalid --%s %q: %w", h.flag("tcp"), h.tcp, err)
		}
		out.Type, out.Tcp = ptr(client.HealthCheckTCPType), &client.HealthCheckTCP{Port: port}
	default:
		argv, err := splitCommand(h.cmd)
		if err != nil {
			return nil, fmt.Errorf("invalid --%s %q: %w", h.flag("cmd"), h.cmd, err)
		}
		out.Type, out.Exec = ptr(client.HealthCheckExecType), &client.HealthCheckExec{Command: argv}
	}
	if fl.Changed(h.flag("expected-status")) && out.Http == nil {
		return nil, fmt.Errorf("--%s only applies to --%s", h.flag("expected-status"), h.flag("http"))
	}
	if fl.Changed(h.flag("retries")) {
		if h.retries < 1 {
			return nil, fmt.Errorf("--%s must be at least 1", h.flag("retries"))
		}
		out.FailureThreshold = ptr(h.retries)
	}
	if h.reportOnly {
		out.ReportOnly = ptr(true)
	}
	var err error
	for _, d := range []struct {
		name string
		val  string
		dst  **string
	}{
		{h.flag("interval"), h.interval, &out.Interval},
		{h.flag("timeout"), h.timeout, &out.Timeout},
		{h.flag("start-period"), h.startPeriod, &out.StartPeriod},
	} {
		if *d.dst, err = durationFlag(fl, d.name, d.val); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// parseHTTPTarget parses [http://][HOST]:PORT[/PATH]. The check always
// probes the instance, so HOST may only name it from the inside
// (localhost); PATH is "" when absent (the server's default, /).
func parseHTTPTarget(s string) (int, string, error) {
	rest := strings.TrimSpace(s)
	if len(rest) >= 8 && strings.EqualFold(rest[:8], "https://") {
		return 0, "", fmt.Errorf("HTTPS is not supported; the check speaks plain HTTP")
	}
	if len(rest) >= 7 && strings.EqualFold(rest[:7], "http://") {
		rest = rest[7:]
	}
	hostPort, path := rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		hostPort, path = rest[:i], rest[i:]
	}
	port, err := parsePortTarget(hostPort, "[HOST]:PORT/PATH, e.g. :8080/healthz")
	if err != nil {
		return 0, "", err
	}
	if strings.ContainsAny(path, " \t\r\n") {
		return 0, "", fmt.Errorf("the path must not contain whitespace")
	}
	return port, path, nil
}

// parseTCPTarget parses [HOST]:PORT (or a bare PORT).
func parseTCPTarget(s string) (int, error) {
	return parsePortTarget(strings.TrimSpace(s), "[HOST]:PORT, e.g. :5432")
}

func parsePortTarget(hostPort, want string) (int, error) {
	host, portStr := "", hostPort
	if strings.Contains(hostPort, ":") {
		var err error
		if host, portStr, err = net.SplitHostPort(hostPort); err != nil {
			return 0, fmt.Errorf("want %s", want)
		}
	}
	switch strings.ToLower(host) {
	case "", "localhost", "127.0.0.1", "::1":
	default:
		return 0, fmt.Errorf("the check always targets the instance itself: leave HOST out (want %s)", want)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return 0, fmt.Errorf("want a port between 1 and 65535 (%s)", want)
	}
	return port, nil
}

// splitCommand splits a command line into words like a POSIX shell does
// for quoting only: whitespace separates words, '…' is literal, "…" is
// literal except for \" \\ \$ \`, and a backslash outside quotes escapes the
// next character. Nothing is expanded; unquoted operators and expansions
// are refused, since no shell will run them.
func splitCommand(s string) ([]string, error) {
	var (
		words   []string
		cur     strings.Builder
		inWord  bool
		rs      = []rune(s)
		shellOp = "|&;<>()$`"
	)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\\':
			inWord = true
			if i+1 < len(rs) {
				i++
				cur.WriteRune(rs[i])
			}
		case c == '\'':
			inWord = true
			j := i + 1
			for j < len(rs) && rs[j] != '\'' {
				j++
			}
			if j == len(rs) {
				return nil, fmt.Errorf("unterminated single quote")
			}
			cur.WriteString(string(rs[i+1 : j]))
			i = j
		case c == '"':
			inWord = true
			j := i + 1
			for ; j < len(rs) && rs[j] != '"'; j++ {
				switch {
				case rs[j] == '\\' && j+1 < len(rs) && strings.ContainsRune("\"\\$`", rs[j+1]):
					j++
				case rs[j] == '$' || rs[j] == '`':
					return nil, fmt.Errorf("%q needs a shell, and the check runs without one: write \"sh -c '…'\" to use one", rs[j])
				}
				cur.WriteRune(rs[j])
			}
			if j == len(rs) {
				return nil, fmt.Errorf("unterminated double quote")
			}
			i = j
		case strings.ContainsRune(shellOp, c):
			return nil, fmt.Errorf("%q needs a shell, and the check runs without one: write \"sh -c '…'\" to use one", c)
		default:
			inWord = true
			cur.WriteRune(c)
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 || strings.TrimSpace(words[0]) == "" {
		return nil, fmt.Errorf("no command")
	}
	return words, nil
}

// healthColumn is ps's HEALTH cell: the health status of an instance with
// a check, "-" without one.
func healthColumn(in client.Instance) string {
	if in.HealthCheck == nil || in.HealthStatus == nil {
		return "-"
	}
	return string(in.HealthStatus.Status)
}

// --- update ---

func (a *app) updateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "update",
		Short: "Change an instance's restart policy or health check",
		Long: `Update changes settings of an existing instance in any state; they apply
at once. Each subcommand replaces that setting as a whole: options left out
take the server's defaults, not the instance's current values.`,
		RunE: groupRun,
	}
	cmd.AddCommand(a.updateRestartCommand(), a.updateHealthCommand(), a.updateAutoStandbyCommand())
	return cmd
}

func (a *app) updateRestartCommand() *cobra.Command {
	r := restartFlags{policyName: "policy"}
	cmd := &cobra.Command{
		Use:   "restart-policy INSTANCE --policy never|on_failure|always [--max-attempts N] [--backoff D] [--max-backoff D] [--stable-after D]",
		Short: "Set when an instance is restarted by itself",
		Long: `Set INSTANCE's restart policy and print its name as given (with --format
json the instance). on_failure restarts after a non-zero exit, a crash or a
failed health check; always also after exit code 0; never turns restarts
off. The delay starts at --backoff and doubles per consecutive attempt up
to --max-backoff. Changing the policy resets the attempt count; an instance
stopped through the API stays down until started.`,
		Example: `  hypeman update restart-policy web --policy on_failure --max-attempts 5
  hypeman update restart-policy web --policy always --backoff 10s --max-backoff 10s
  hypeman update restart-policy web --policy never`,
		Args: exactArgs(1, "exactly one instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("policy") {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("--policy is required")}
			}
			p, err := r.build(cmd.Flags())
			if err != nil {
				return &usageErr{cmd: cmd.CommandPath(), err: err}
			}
			return a.updateInstance(cmd, args[0], client.UpdateInstanceRequest{RestartPolicy: p})
		},
	}
	r.register(cmd.Flags())
	return cmd
}

func (a *app) updateHealthCommand() *cobra.Command {
	h := healthFlags{withNone: true}
	cmd := &cobra.Command{
		Use:   "health-check INSTANCE (--http [HOST]:PORT/PATH | --tcp [HOST]:PORT | --cmd \"CMD ARGS\" | --none) [--interval D] [--timeout D] [--start-period D] [--retries N]",
		Short: "Set or remove an instance's health check",
		Long: `Set INSTANCE's health check (or remove it with --none) and print its name
as given (with --format json the instance). A running instance is checked
from now on, starting over in "starting"; with restart policy on_failure or
always an unhealthy instance is restarted. "hypeman inspect" shows
health_status.`,
		Example: `  hypeman update health-check web --http :8080/healthz --interval 5s --retries 2
  hypeman update health-check db --tcp :5432
  hypeman update health-check db --cmd "pg_isready -q"
  hypeman update health-check web --none`,
		Args: exactArgs(1, "exactly one instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := h.build(cmd.Flags())
			if err == nil && c == nil {
				err = fmt.Errorf("give a check (--http, --tcp or --cmd) or --none")
			}
			if err != nil {
				return &usageErr{cmd: cmd.CommandPath(), err: err}
			}
			return a.updateInstance(cmd, args[0], client.UpdateInstanceRequest{HealthCheck: c})
		},
	}
	h.register(cmd.Flags())
	return cmd
}

// updateInstance sends the PATCH and prints the reference (or the instance).
func (a *app) updateInstance(cmd *cobra.Command, ref string, body client.UpdateInstanceRequest) error {
	ctx := cmd.Context()
	c, err := a.api()
	if err != nil {
		return err
	}
	r, err := c.UpdateInstanceWithResponse(ctx, ref, body)
	if err := a.check(ctx, r, err, http.StatusOK); err != nil {
		return err
	}
	if a.jsonOutput() {
		a.printRaw(r.Body)
	} else {
		fmt.Fprintln(a.stdout, ref)
	}
	return nil
}
