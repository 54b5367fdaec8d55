package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
	"hypeman/internal/api/sse"
)

// --- logs ---

func (a *app) logsCommand() *cobra.Command {
	var (
		follow bool
		tail   int
		source string
	)
	cmd := &cobra.Command{
		Use:   "logs [-f] [--tail N] [--source app|vmm|hypeman] INSTANCE",
		Short: "Print an instance's logs",
		Long: `Print the last lines of an instance's log and, with -f, keep printing new
lines until the VM is gone or you interrupt.

Sources: app is the program's console output (default), vmm the VMM
process's own output, hypeman what the server did to the instance.`,
		Example: `  hypeman logs web
  hypeman logs -f --tail 0 web
  hypeman logs --source hypeman web`,
		Args: exactArgs(1, "exactly one instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			switch source {
			case "app", "vmm", "hypeman":
			default:
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("invalid --source %q: use app, vmm or hypeman", source)}
			}
			if tail < 0 {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("--tail must be 0 or more")}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			src := client.GetInstanceLogsParamsSource(source)
			resp, err := c.GetInstanceLogs(ctx, args[0], &client.GetInstanceLogsParams{Tail: &tail, Follow: &follow, Source: &src})
			resp, err = a.streamResponse(ctx, resp, err)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			err = a.copyLogs(resp.Body)
			if ctx.Err() != nil && follow {
				return nil // interrupting a follow is the normal way to end it
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	fl.IntVarP(&tail, "tail", "n", 100, "number of existing lines to print first")
	fl.StringVar(&source, "source", "app", "log source: app, vmm or hypeman")
	return cmd
}

// copyLogs prints each log event's line. An "error" event (the server's
// {code, message}) ends the stream with that error.
func (a *app) copyLogs(body io.Reader) error {
	err := sse.LogLines(body, func(line string) error {
		_, err := fmt.Fprintln(a.stdout, line)
		return err
	})
	var se *sse.StreamError
	if errors.As(err, &se) {
		return fmt.Errorf("log stream failed: %w", a.apiError(http.StatusInternalServerError, []byte(se.Data)))
	}
	return err
}

// --- events ---

func (a *app) eventsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "events [INSTANCE]",
		Short: "Follow lifecycle events",
		Long: `Print lifecycle events (state changes, deletions) as they happen, of all
instances or of one, until interrupted: one line per event (time,
instance, from → to, reason), or the event JSON per line with --format json.

A dropped connection is resumed where it left off (Last-Event-ID); when
the server could not replay what was missed, a notice is printed on stderr.
Following one instance ends when it is deleted.`,
		Example: `  hypeman events
  hypeman events web --format json`,
		Args: rangeArgs(0, 1, "at most one instance"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref := ""
			if len(args) == 1 {
				ref = args[0]
			}
			return a.followEvents(cmd.Context(), ref)
		},
	}
	return cmd
}

// errStreamEnded means the server ended an instance's stream after its
// deleted event: nothing more will come.
var errStreamEnded = errors.New("stream ended")

func (a *app) followEvents(ctx context.Context, ref string) error {
	c, err := a.api()
	if err != nil {
		return err
	}
	names := newNameCache(c)
	if !a.jsonOutput() {
		names.prime(ctx)
	}
	var lastID string
	delay := a.reconnectMin
	connected := false
	for {
		var lid *string
		if lastID != "" {
			lid = &lastID
		}
		var resp *http.Response
		if ref == "" {
			resp, err = c.StreamEvents(ctx, &client.StreamEventsParams{LastEventID: lid})
		} else {
			resp, err = c.StreamInstanceEvents(ctx, ref, &client.StreamInstanceEventsParams{LastEventID: lid})
		}
		resp, err = a.streamResponse(ctx, resp, err)
		var ce *ConnError
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && connected && errors.As(err, &ce):
			// The server went away (restarting?): keep trying.
			if sleep(ctx, delay) != nil {
				return nil
			}
			delay = min(2*delay, a.reconnectMax)
			continue
		case err != nil:
			return err
		}
		if connected {
			fmt.Fprintln(a.stderr, "Reconnected.")
		}
		connected = true
		delay = a.reconnectMin
		err = a.printEvents(ctx, resp.Body, &lastID, names, ref != "")
		resp.Body.Close()
		switch {
		case ctx.Err() != nil, errors.Is(err, errStreamEnded):
			return nil
		case err != nil && !isDisconnect(err):
			return err
		}
		fmt.Fprintln(a.stderr, "Event stream interrupted; reconnecting…")
		if sleep(ctx, delay) != nil {
			return nil
		}
	}
}

// isDisconnect tells a dropped stream from a failure to parse or print.
func isDisconnect(err error) bool {
	var pe *printError
	return !errors.As(err, &pe)
}

// printError is a failure to write our own output (e.g. a closed pipe).
type printError struct{ err error }

func (e *printError) Error() string { return e.err.Error() }
func (e *printError) Unwrap() error { return e.err }

// printEvents prints events until the stream ends. It returns io.EOF or the
// read error when the connection ends, errStreamEnded after a deleted event
// on an instance stream, or a *printError.
func (a *app) printEvents(ctx context.Context, body io.Reader, lastID *string, names *nameCache, single bool) error {
	rd := sse.NewReader(body)
	rd.SetLastEventID(*lastID)
	for {
		ev, err := rd.Next()
		if err != nil {
			return err
		}
		*lastID = rd.LastEventID()
		switch ev.Type {
		case "reset":
			var r struct {
				Reason string `json:"reason"`
			}
			_ = json.Unmarshal([]byte(ev.Data), &r)
			fmt.Fprintf(a.stderr, "Some events were missed (%s); current states: hypeman ps -a\n", orDash(r.Reason))
			continue
		case string(client.StateChange), string(client.Deleted):
		default:
			continue // an event type this CLI does not know
		}
		var le client.LifecycleEvent
		if err := json.Unmarshal([]byte(ev.Data), &le); err != nil {
			fmt.Fprintf(a.stderr, "Skipping an event that is not a lifecycle event: %v\n", err)
			continue
		}
		var line string
		if a.jsonOutput() {
			line = ev.Data
		} else {
			line = a.formatEvent(le, names.name(ctx, le.InstanceId))
		}
		if _, err := fmt.Fprintln(a.stdout, line); err != nil {
			return &printError{err}
		}
		if le.Type == client.Deleted && single {
			return errStreamEnded
		}
	}
}

// formatEvent renders "TIME  NAME (ID)  FROM → TO  REASON".
func (a *app) formatEvent(le client.LifecycleEvent, name string) string {
	who := shortID(le.InstanceId)
	if name != "" {
		who = name + " (" + who + ")"
	}
	to := le.To
	if le.Type == client.Deleted {
		to = "deleted"
	}
	from := le.From
	if from == "" {
		from = "new"
	}
	line := fmt.Sprintf("%s  %s  %s → %s", le.At.In(a.loc).Format("2006-01-02T15:04:05.000Z07:00"), who, from, orDash(to))
	if le.Reason != "" {
		line += "  " + le.Reason
	}
	return line
}

// nameCache maps instance IDs to names for event lines: primed with one
// list, then one lookup per unknown ID (deleted instances stay unnamed).
type nameCache struct {
	c     *client.ClientWithResponses
	names map[string]string
}

func newNameCache(c *client.ClientWithResponses) *nameCache {
	return &nameCache{c: c, names: map[string]string{}}
}

func (n *nameCache) prime(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := n.c.ListInstancesWithResponse(ctx, nil)
	if err != nil || r.JSON200 == nil {
		return
	}
	for _, in := range *r.JSON200 {
		n.names[in.Id] = in.Name
	}
}

func (n *nameCache) name(ctx context.Context, id string) string {
	if v, ok := n.names[id]; ok {
		return v
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	name := ""
	if r, err := n.c.GetInstanceWithResponse(ctx, id); err == nil && r.JSON200 != nil {
		name = r.JSON200.Name
	}
	n.names[id] = name
	return name
}
