package cli

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

func (a *app) ingressCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "ingress",
		Aliases: []string{"ingresses"},
		Short:   "Publish instance ports on host ports",
		Long: `An ingress routes HTTP requests arriving on a host port (optionally only
those for one Host name) to a port of an instance, through a reverse proxy
in hypemand.`,
		RunE: groupRun,
	}
	cmd.AddCommand(a.ingressCreateCommand(), a.ingressListCommand(), a.ingressGetCommand(), a.ingressRmCommand())
	return cmd
}

// parseRule parses [HOSTNAME:]PORT=INSTANCE:PORT, or HOSTNAME=INSTANCE:PORT
// (host port 80).
func parseRule(s string) (client.IngressRule, error) {
	var r client.IngressRule
	bad := func(why string) (client.IngressRule, error) {
		return r, fmt.Errorf("invalid --rule %q: %s (want [HOSTNAME:]PORT=INSTANCE:PORT)", s, why)
	}
	match, target, ok := strings.Cut(s, "=")
	if !ok {
		return bad("no '='")
	}
	inst, tport, ok := cutLast(target, ":")
	if !ok || inst == "" {
		return bad("the target needs INSTANCE:PORT")
	}
	p, err := parsePort(tport)
	if err != nil {
		return bad("target " + err.Error())
	}
	r.Target = client.IngressTarget{Instance: inst, Port: p}
	host, mport, hasPort := cutLast(match, ":")
	if !hasPort {
		if _, err := strconv.Atoi(match); err == nil {
			host, mport, hasPort = "", match, true
		} else {
			host = match
		}
	}
	if host != "" {
		r.Match.Hostname = &host
	}
	if hasPort {
		p, err := parsePort(mport)
		if err != nil {
			return bad("host " + err.Error())
		}
		r.Match.Port = &p
	}
	if host == "" && !hasPort {
		return bad("give a host port, a hostname, or both")
	}
	return r, nil
}

func cutLast(s, sep string) (string, string, bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return p, nil
}

// ruleString is the inverse of parseRule, for tables.
func ruleString(r client.IngressRule) string {
	m := ""
	if h := deref(r.Match.Hostname); h != "" {
		m = h
	}
	if r.Match.Port != nil {
		if m != "" {
			m += ":"
		}
		m += strconv.Itoa(*r.Match.Port)
	}
	return fmt.Sprintf("%s=%s:%d", m, r.Target.Instance, r.Target.Port)
}

func (a *app) ingressCreateCommand() *cobra.Command {
	var rules []string
	cmd := &cobra.Command{
		Use:   "create NAME --rule [HOSTNAME:]PORT=INSTANCE:PORT [--rule ...]",
		Short: "Create an ingress",
		Long: `Create ingress NAME and print its ID (with --format json the ingress).
Each --rule sends requests for HOSTNAME (any host when omitted;
*.example.com matches one label) arriving on host PORT (default 80) to
PORT of INSTANCE. The instance is looked up per request, so it may be
created later.`,
		Example: `  hypeman ingress create web --rule 8080=web:80
  hypeman ingress create site --rule app.example.com:80=web:8080 --rule api.example.com=api:3000`,
		Args: exactArgs(1, "exactly one name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			usage := func(err error) error { return &usageErr{cmd: cmd.CommandPath(), err: err} }
			if err := checkNameOf("ingress", args[0]); err != nil {
				return usage(err)
			}
			if len(rules) == 0 {
				return usage(fmt.Errorf("at least one --rule is required"))
			}
			req := client.CreateIngressRequest{Name: args[0]}
			for _, s := range rules {
				r, err := parseRule(s)
				if err != nil {
					return usage(err)
				}
				req.Rules = append(req.Rules, r)
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.CreateIngressWithResponse(ctx, req)
			if err := a.check(ctx, r, err, http.StatusCreated); err != nil {
				return err
			}
			a.printCreated(r.JSON201.Id, r.Body)
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&rules, "rule", nil, "route `[HOSTNAME:]PORT=INSTANCE:PORT`; repeatable")
	return cmd
}

func (a *app) ingressListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List ingresses",
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := a.api()
			if err != nil {
				return err
			}
			r, err := c.ListIngressesWithResponse(ctx, nil)
			if done, err := a.listedAsJSON(ctx, r, err); done {
				return err
			}
			tw := a.table()
			fmt.Fprintln(tw, "ID\tNAME\tRULES\tCREATED")
			now := a.now()
			for _, ing := range *r.JSON200 {
				rs := make([]string, len(ing.Rules))
				for i, rule := range ing.Rules {
					rs[i] = ruleString(rule)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", shortID(ing.Id), ing.Name, strings.Join(rs, ", "), age(now, ing.CreatedAt))
			}
			return tw.Flush()
		},
	}
}

func (a *app) ingressGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get INGRESS",
		Aliases: []string{"inspect"},
		Short:   "Show an ingress as JSON",
		Args:    exactArgs(1, "exactly one ingress"),
		RunE:    a.showRun(byRef((*client.ClientWithResponses).GetIngressWithResponse)),
	}
}

func (a *app) ingressRmCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rm INGRESS...",
		Aliases: []string{"delete"},
		Short:   "Delete ingresses (their host ports are released)",
		Args:    minArgs(1, "at least one ingress"),
		RunE:    a.eachRun(byRef((*client.ClientWithResponses).DeleteIngressWithResponse), http.StatusNoContent),
	}
}
