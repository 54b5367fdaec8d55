package cli

// Server-side export of images to other registries: `hypeman push --to
// TARGET IMAGE` (POST /pushes) and `hypeman pushes [PUSH_ID]`.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
)

// exportFlags are push's flags for an export (--to).
type exportFlags struct {
	to            string
	detach        bool
	insecure      bool
	username      string
	passwordStdin bool
	token         string
}

func (f *exportFlags) bind(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.to, "to", "", "export IMAGE from the server to this registry reference (e.g. registry.example.com/team/app:1)")
	fl.BoolVarP(&f.detach, "detach", "d", false, "with --to: print the push id and return without waiting")
	fl.BoolVar(&f.insecure, "insecure", false, "with --to: allow plain HTTP to the target registry")
	fl.StringVarP(&f.username, "username", "u", "", "with --to: the target registry's user name")
	fl.BoolVar(&f.passwordStdin, "password-stdin", false, "with --to: read the target registry's password from stdin")
	fl.StringVar(&f.token, "registry-token", "", "with --to: a bearer token for the target registry (HYPEMAN_REGISTRY_TOKEN)")
}

// PushFailedError is an export that ended in status failed.
type PushFailedError struct {
	ID, Target, Message string
}

func (e *PushFailedError) Error() string {
	return fmt.Sprintf("push %s to %s failed: %s", e.ID, e.Target, e.Message)
}

// exportImage asks the server to push image to f.to and, unless detached,
// follows the push until it ends.
func (a *app) exportImage(cmd *cobra.Command, image string, f *exportFlags) error {
	ctx := cmd.Context()
	req := client.CreatePushRequest{Image: image, Target: f.to}
	if f.insecure {
		req.Insecure = &f.insecure
	}
	creds, err := a.exportCredentials(f)
	if err != nil {
		return &usageErr{cmd: cmd.CommandPath(), err: err}
	}
	req.Credentials = creds
	c, err := a.api()
	if err != nil {
		return err
	}
	r, err := c.CreatePushWithResponse(ctx, req)
	if err := a.check(ctx, r, err, http.StatusAccepted); err != nil {
		return err
	}
	p, body := r.JSON202, r.Body
	if f.detach {
		if a.jsonOutput() {
			a.printRaw(body)
		} else {
			fmt.Fprintln(a.stdout, p.Id)
		}
		return nil
	}
	p, body, err = a.followPush(ctx, c, p, body)
	if err != nil {
		var pe *PushFailedError
		if errors.As(err, &pe) && a.jsonOutput() {
			a.printRaw(body)
		}
		if errors.Is(err, context.Canceled) {
			fmt.Fprintf(a.stderr, "Stopped following push %s; the server keeps working on it (hypeman pushes %s).\n", p.Id, p.Id)
		}
		return err
	}
	if a.jsonOutput() {
		a.printRaw(body)
	} else {
		fmt.Fprintf(a.stdout, "%s@%s\n", f.to, p.Digest)
	}
	return nil
}

// exportCredentials builds the request's credentials from the flags: a
// user name with a password on stdin, or a registry token.
func (a *app) exportCredentials(f *exportFlags) (*client.PushCredentials, error) {
	token := f.token
	if token == "" {
		token = a.options.env("HYPEMAN_REGISTRY_TOKEN")
	}
	switch {
	case f.passwordStdin && f.username == "":
		return nil, errors.New("--password-stdin needs --username")
	case token != "" && (f.username != "" || f.passwordStdin):
		return nil, errors.New("give either --registry-token or --username/--password-stdin, not both")
	case token != "":
		return &client.PushCredentials{RegistryToken: &token}, nil
	case f.username == "":
		return nil, nil
	}
	creds := &client.PushCredentials{Username: &f.username}
	if f.passwordStdin {
		b, err := io.ReadAll(io.LimitReader(a.stdin, 16<<10))
		if err != nil {
			return nil, fmt.Errorf("reading the password from stdin: %w", err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		creds.Password = &pw
	}
	return creds, nil
}

// followPush polls a push until it is pushed or failed, showing progress.
func (a *app) followPush(ctx context.Context, c *client.ClientWithResponses, p *client.Push, body []byte) (*client.Push, []byte, error) {
	pr := a.newProgress()
	defer pr.finish()
	for {
		pr.update(pushTransfer(p))
		switch p.Status {
		case client.PushStatusPushed:
			return p, body, nil
		case client.PushStatusFailed:
			return p, body, &PushFailedError{ID: p.Id, Target: p.Target, Message: deref(p.Error)}
		}
		if err := sleep(ctx, a.pollInterval); err != nil {
			return p, body, err
		}
		r, err := c.GetPushWithResponse(ctx, p.Id)
		if err := a.check(ctx, r, err, http.StatusOK); err != nil {
			return p, body, err
		}
		p, body = r.JSON200, r.Body
	}
}

func pushTransfer(p *client.Push) transfer {
	t := transfer{Name: p.Target, Status: string(p.Status), BytesDone: deref(p.Bytes), BytesTotal: deref(p.BytesTotal)}
	switch {
	case p.Status == client.PushStatusQueued && p.QueuePosition != nil:
		t.Detail = []string{fmt.Sprintf("queue position %d", *p.QueuePosition)}
	case p.Status == client.PushStatusPushed:
		t.Detail = []string{shortDigest(p.Digest), humanBytes(deref(p.BytesTotal))}
	}
	return t
}

func (a *app) pushesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "pushes [PUSH_ID]",
		Short: "List image pushes to other registries, or show one",
		Long: `Without an argument, list the server's pushes (hypeman push --to), newest
first, with their status and progress. With PUSH_ID, show that push; a
failed push shows why.`,
		Args: rangeArgs(0, 1, "at most one push id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.api()
			if err != nil {
				return err
			}
			if len(args) == 1 {
				r, err := c.GetPushWithResponse(ctx, args[0])
				if err := a.check(ctx, r, err, http.StatusOK); err != nil {
					return err
				}
				if a.jsonOutput() {
					a.printRaw(r.Body)
					return nil
				}
				p := r.JSON200
				tw := a.table()
				fmt.Fprintf(tw, "ID\t%s\nIMAGE\t%s\nDIGEST\t%s\nTARGET\t%s\nSTATUS\t%s\nPROGRESS\t%s\nCREATED\t%s\n",
					p.Id, p.Image, p.Digest, p.Target, pushStatus(p), pushProgress(p), p.CreatedAt.Local().Format("2006-01-02 15:04:05"))
				if p.Error != nil {
					fmt.Fprintf(tw, "ERROR\t%s\n", *p.Error)
				}
				return tw.Flush()
			}
			r, err := c.ListPushesWithResponse(ctx)
			if done, err := a.listedAsJSON(ctx, r, err); done {
				return err
			}
			tw := a.table()
			fmt.Fprintln(tw, "ID\tIMAGE\tTARGET\tSTATUS\tPROGRESS\tCREATED")
			now := a.now()
			for _, p := range *r.JSON200 {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Id, p.Image, p.Target, pushStatus(&p), pushProgress(&p), age(now, p.CreatedAt))
			}
			return tw.Flush()
		},
	}
}

func pushStatus(p *client.Push) string {
	if p.Status == client.PushStatusQueued && p.QueuePosition != nil {
		return fmt.Sprintf("queued (#%d)", *p.QueuePosition)
	}
	return string(p.Status)
}

func pushProgress(p *client.Push) string {
	total := deref(p.BytesTotal)
	if total <= 0 {
		return "-"
	}
	return fmt.Sprintf("%s / %s", humanBytes(deref(p.Bytes)), humanBytes(total))
}
