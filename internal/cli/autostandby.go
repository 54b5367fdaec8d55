package cli

import (
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"hypeman/internal/api/client"
)

// autoStandbyFlags are hypeman's auto-standby policy flags (update
// auto-standby): --enabled, --idle-timeout, --ignore-source-cidr,
// --ignore-destination-port.
type autoStandbyFlags struct {
	prefix  string // "auto-standby-" (run) or "" (update auto-standby)
	enabled bool
	idle    string
	cidrs   []string
	ports   []string
}

func (f *autoStandbyFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&f.enabled, f.prefix+"enabled", true, "turn auto-standby on (--enabled=false turns it off; default true when any flag is given)")
	fs.StringVar(&f.idle, f.prefix+"idle-timeout", "", "standby after this long without a qualifying inbound TCP connection (Go duration, e.g. 5m; server default 5m)")
	fs.StringSliceVar(&f.cidrs, f.prefix+"ignore-source-cidr", nil, "client `CIDR` whose connections do not keep the instance awake (repeatable)")
	fs.StringSliceVar(&f.ports, f.prefix+"ignore-destination-port", nil, "guest TCP `PORT` whose connections do not keep the instance awake (repeatable)")
}

// build returns the policy, or nil when no flag was given.
func (f *autoStandbyFlags) build(fs *pflag.FlagSet) (*client.AutoStandbyPolicy, error) {
	if !fs.Changed(f.prefix+"enabled") && !fs.Changed(f.prefix+"idle-timeout") && !fs.Changed(f.prefix+"ignore-source-cidr") && !fs.Changed(f.prefix+"ignore-destination-port") {
		return nil, nil
	}
	p := &client.AutoStandbyPolicy{Enabled: &f.enabled}
	if f.idle != "" {
		if _, err := time.ParseDuration(f.idle); err != nil {
			return nil, fmt.Errorf("--%sidle-timeout %q is not a duration (e.g. 5m, 30s)", f.prefix, f.idle)
		}
		p.IdleTimeout = &f.idle
	}
	if len(f.cidrs) > 0 {
		p.IgnoreSourceCidrs = &f.cidrs
	}
	if len(f.ports) > 0 {
		ports := make([]int, 0, len(f.ports))
		for _, s := range f.ports {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("--%signore-destination-port %q is not a TCP port (1-65535)", f.prefix, s)
			}
			ports = append(ports, n)
		}
		p.IgnoreDestinationPorts = &ports
	}
	return p, nil
}

func (a *app) updateAutoStandbyCommand() *cobra.Command {
	var f autoStandbyFlags
	cmd := &cobra.Command{
		Use:   "auto-standby INSTANCE [--enabled[=false]] [--idle-timeout D] [--ignore-source-cidr CIDR]... [--ignore-destination-port PORT]...",
		Short: "Set an instance's auto-standby policy",
		Long: `Set INSTANCE's auto-standby policy and print its name as given (with
--format json the instance). A Running instance with no qualifying inbound
TCP connection for --idle-timeout is put on standby by the server;
connections from an ignored source CIDR or to an ignored port do not count.
"hypeman auto-standby status" shows where the countdown stands.`,
		Example: `  hypeman update auto-standby web --idle-timeout 10m
  hypeman update auto-standby web --idle-timeout 5m --ignore-destination-port 22 --ignore-source-cidr 10.0.0.0/8
  hypeman update auto-standby web --enabled=false`,
		Args: exactArgs(1, "exactly one instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := f.build(cmd.Flags())
			if err == nil && p == nil {
				err = fmt.Errorf("give at least one auto-standby flag (e.g. --idle-timeout 10m, or --enabled=false)")
			}
			if err != nil {
				return &usageErr{cmd: cmd.CommandPath(), err: err}
			}
			return a.updateInstance(cmd, args[0], client.UpdateInstanceRequest{AutoStandby: p})
		},
	}
	f.register(cmd.Flags())
	return cmd
}

func (a *app) autoStandbyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "auto-standby",
		Aliases: []string{"autostandby"},
		Short:   "Inspect or hold off an instance's auto-standby",
		RunE:    groupRun,
	}
	cmd.AddCommand(a.autoStandbyStatusCommand(), a.autoStandbyHoldCommand())
	return cmd
}

func (a *app) autoStandbyStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status INSTANCE",
		Short: "Show where an instance's auto-standby stands",
		Long: `Show INSTANCE's auto-standby status: whether it is eligible, the qualifying
inbound connections the server sees, and the countdown to standby or the
hold in effect.`,
		Args: exactArgs(1, "exactly one instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.GetAutoStandbyStatusWithResponse(ctx, args[0])
			if done, err := a.listedAsJSON(ctx, r, err); done {
				return err
			}
			a.printAutoStandbyStatus(r.JSON200)
			return nil
		},
	}
}

func (a *app) autoStandbyHoldCommand() *cobra.Command {
	var dur, until string
	cmd := &cobra.Command{
		Use:   "hold INSTANCE [--duration D | --until TIME]",
		Short: "Keep an instance from going to standby for a while",
		Long: `Hold off INSTANCE's auto-standby for --duration (or until --until, an
RFC 3339 time; default: its idle timeout) and restart its idle countdown,
so you can connect without it going to standby under you. Fails with
instance_in_standby when it is on standby: restore it first.`,
		Example: `  hypeman auto-standby hold web --duration 30m
  hypeman auto-standby hold web --until 2030-01-01T00:00:00Z`,
		Args: exactArgs(1, "exactly one instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var body client.HoldAutoStandbyJSONRequestBody
			if dur != "" && until != "" {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("give --duration or --until, not both")}
			}
			if dur != "" {
				body.Duration = &dur
			}
			if until != "" {
				t, err := time.Parse(time.RFC3339, until)
				if err != nil {
					return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("--until %q is not an RFC 3339 time (e.g. 2030-01-01T00:00:00Z)", until)}
				}
				body.HoldUntil = &t
			}
			ctx := cmd.Context()
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.HoldAutoStandbyWithResponse(ctx, args[0], body)
			if done, err := a.listedAsJSON(ctx, r, err); done {
				return err
			}
			a.printAutoStandbyStatus(r.JSON200)
			return nil
		},
	}
	cmd.Flags().StringVar(&dur, "duration", "", "hold for this long (Go duration, e.g. 30m)")
	cmd.Flags().StringVar(&until, "until", "", "hold until this RFC 3339 `TIME`")
	return cmd
}

func (a *app) printAutoStandbyStatus(s *client.AutoStandbyStatus) {
	tw := a.table()
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("STATUS", string(s.Status))
	row("REASON", string(s.Reason))
	row("ENABLED", strconv.FormatBool(s.Enabled))
	row("ELIGIBLE", strconv.FormatBool(s.Eligible))
	row("IDLE TIMEOUT", orDash(deref(s.IdleTimeout)))
	row("CONNECTIONS", strconv.Itoa(s.ActiveInboundConnections))
	row("TRACKING", s.TrackingMode)
	for _, t := range []struct {
		k string
		v *time.Time
	}{{"IDLE SINCE", s.IdleSince}, {"LAST ACTIVITY", s.LastInboundActivityAt}, {"NEXT STANDBY", s.NextStandbyAt}, {"HOLD UNTIL", s.HoldUntil}} {
		if t.v != nil {
			row(t.k, t.v.UTC().Format(time.RFC3339))
		}
	}
	if s.CountdownRemaining != nil {
		row("REMAINING", *s.CountdownRemaining)
	}
	tw.Flush()
}
