package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK          = 0
	exitError       = 1
	exitTimeout     = 2 // wait: the timeout passed first
	exitInterrupted = 130
)

// DefaultBaseURL is used when HYPEMAN_BASE_URL is not set.
const DefaultBaseURL = "http://127.0.0.1:8080"

// Run executes the hypeman command line args (without the program name) and
// returns the process exit code. env looks up environment variables
// (os.Getenv in the real binary); nil means an empty environment.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, env func(string) string) int {
	return run(ctx, args, defaultOptions(stdin, stdout, stderr, env))
}

// options are Run's inputs plus the knobs tests turn.
type options struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	env            func(string) string

	httpClient     *http.Client
	transport      http.RoundTripper // for push (registry client); nil = default
	now            func() time.Time
	loc            *time.Location
	rand           *rand.Rand
	pollInterval   time.Duration // image status polling
	reconnectMin   time.Duration // events: first reconnect delay
	reconnectMax   time.Duration
	progressTTY    bool // draw a redrawn progress bar on stderr
	termWidth      int
	maxServerWait  time.Duration // longest wait the server accepts per request
	importPatience time.Duration // push: how long to wait for the image to appear
}

func defaultOptions(stdin io.Reader, stdout, stderr io.Writer, env func(string) string) options {
	if env == nil {
		env = func(string) string { return "" }
	}
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	tty, width := terminal(stderr, env)
	return options{
		stdin: stdin, stdout: stdout, stderr: stderr, env: env,
		httpClient:     &http.Client{}, // no overall timeout: waits and streams are long
		now:            time.Now,
		loc:            time.Local,
		rand:           rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		pollInterval:   200 * time.Millisecond,
		reconnectMin:   250 * time.Millisecond,
		reconnectMax:   5 * time.Second,
		progressTTY:    tty,
		termWidth:      width,
		maxServerWait:  5 * time.Minute,
		importPatience: 5 * time.Second,
	}
}

// app is one invocation's state.
type app struct {
	options
	format  string // "" (human) or "json"
	baseURL string // flag override of HYPEMAN_BASE_URL
}

// exitErr ends the command with a specific code. A nil err prints nothing
// (the command already explained itself).
type exitErr struct {
	code int
	err  error
}

func (e *exitErr) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitErr) Unwrap() error { return e.err }

// usageErr is a command-line mistake: the message is followed by a pointer
// to --help.
type usageErr struct {
	cmd string
	err error
}

func (e *usageErr) Error() string { return e.err.Error() }
func (e *usageErr) Unwrap() error { return e.err }

// errReported means the failure was already printed (per-item errors of
// stop/start/rm): exit 1 without another message.
var errReported = errors.New("failed")

func run(ctx context.Context, args []string, o options) int {
	a := &app{options: o}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(o.stdin)
	root.SetOut(o.stdout)
	root.SetErr(o.stderr)
	err := root.ExecuteContext(ctx)
	return a.exitCode(ctx, err)
}

func (a *app) exitCode(ctx context.Context, err error) int {
	if err == nil {
		return exitOK
	}
	var ee *exitErr
	if errors.As(err, &ee) {
		if ee.err != nil && !errors.Is(ee.err, errReported) {
			fmt.Fprintln(a.stderr, "Error:", ee.err)
		}
		return ee.code
	}
	if errors.Is(err, errReported) {
		return exitError
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		fmt.Fprintln(a.stderr, "Interrupted.")
		return exitInterrupted
	}
	fmt.Fprintln(a.stderr, "Error:", err)
	var ue *usageErr
	if errors.As(err, &ue) {
		fmt.Fprintf(a.stderr, "Run '%s --help' for usage.\n", ue.cmd)
	} else if strings.HasPrefix(err.Error(), "unknown command") {
		fmt.Fprintln(a.stderr, "Run 'hypeman --help' for usage.")
	}
	return exitError
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "hypeman",
		Short: "Run OCI images as virtual machines",
		Long: `hypeman talks to a hypemand server, which runs OCI container images as
virtual machines.

Environment:
  HYPEMAN_BASE_URL   server URL (default ` + DefaultBaseURL + `)
  HYPEMAN_API_KEY    API token (mint one with hypeman-token)`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch a.format {
			case "", "table", "text":
				a.format = ""
			case "json":
			default:
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("invalid --format %q: use json, or omit it for human-readable output", a.format)}
			}
			return nil
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageErr{cmd: cmd.CommandPath(), err: err}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&a.format, "format", "", "output format: json (the API's JSON), or omit for human-readable output")
	pf.StringVar(&a.baseURL, "base-url", "", "server `URL` (overrides HYPEMAN_BASE_URL)")
	root.AddCommand(
		a.pullCommand(), a.imagesCommand(), a.rmiCommand(), a.pushCommand(), a.pushesCommand(),
		a.runCommand(), a.psCommand(), a.inspectCommand(), a.logsCommand(),
		a.stopCommand(), a.startCommand(), a.rmCommand(),
		a.waitCommand(), a.eventsCommand(), a.versionCommand(),
		a.standbyCommand(), a.restoreCommand(), a.pauseCommand(), a.resumeCommand(),
		a.forkCommand(), a.snapshotCommand(), a.execCommand(), a.cpCommand(), a.ingressCommand(), a.volumeCommand(),
		a.updateCommand(), a.resourcesCommand(), a.templateCommand(), a.autoStandbyCommand(),
	)
	return root
}

// --- argument validators that produce usage errors ---

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("%q needs %s", cmd.CommandPath(), what)}
		}
		return nil
	}
}

func minArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("%q needs %s", cmd.CommandPath(), what)}
		}
		return nil
	}
}

func rangeArgs(lo, hi int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < lo || len(args) > hi {
			return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("%q needs %s", cmd.CommandPath(), what)}
		}
		return nil
	}
}

// --- output helpers ---

func (a *app) jsonOutput() bool { return a.format == "json" }

// printRaw writes an API body as received, newline-terminated.
func (a *app) printRaw(body []byte) {
	b := strings.TrimRight(string(body), "\n")
	fmt.Fprintln(a.stdout, b)
}

// printPretty writes an API body indented.
func (a *app) printPretty(body []byte) error {
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("server sent invalid JSON: %w", err)
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintln(a.stdout, string(out))
	return nil
}

func (a *app) table() *tabwriter.Writer {
	return tabwriter.NewWriter(a.stdout, 0, 0, 3, ' ', 0)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// terminal reports whether w is a terminal that can show a redrawn progress
// line, and its width.
func terminal(w io.Writer, env func(string) string) (bool, int) {
	f, ok := w.(*os.File)
	if !ok || env("TERM") == "dumb" {
		return false, 80
	}
	return isTerminal(f)
}
