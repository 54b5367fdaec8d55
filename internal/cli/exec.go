package cli

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"hypeman/internal/api/client"
	"hypeman/internal/api/execws"
)

type execFlags struct {
	interactive bool
	tty         bool
	env         []string
	workdir     string
	user        string
	timeout     time.Duration
}

func (a *app) execCommand() *cobra.Command {
	var f execFlags
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] [flags] INSTANCE [--] COMMAND [ARG...]",
		Short: "Run a command in a running instance",
		Long: `Exec runs COMMAND in INSTANCE through the guest agent and streams its
output. With -i your standard input is sent to the command; without it the
command's input is empty. With -t the command gets a terminal; when your
input is a terminal too it is switched to raw mode for the session and
window size changes follow you.

Exit status: the command's exit code (126/127 when it could not be
executed, 128+N when signal N killed it, 124 when --timeout killed it); 1
when the command could not be started (the instance is not Running, no
guest agent, ...); 130 when you interrupt (the command is killed).`,
		Example: `  hypeman exec web -- ls -l /
  hypeman exec -it web sh
  echo hi | hypeman exec -i -e GREETING=x web -- sh -c 'cat; echo $GREETING'`,
		Args: minArgs(2, "an instance and a command"),
		RunE: func(cmd *cobra.Command, args []string) error {
			command := args[1:]
			if command[0] == "--" {
				command = command[1:]
			}
			if len(command) == 0 || command[0] == "" {
				return &usageErr{cmd: cmd.CommandPath(), err: fmt.Errorf("%q needs a command", cmd.CommandPath())}
			}
			return a.execInstance(cmd, f, args[0], command)
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false) // flags after INSTANCE belong to the command
	fl.BoolVarP(&f.interactive, "interactive", "i", false, "send your standard input to the command")
	fl.BoolVarP(&f.tty, "tty", "t", false, "give the command a terminal")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable `KEY=VALUE` (KEY alone copies it from your environment); repeatable")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working `DIR` of the command (default: the instance's)")
	fl.StringVarP(&f.user, "user", "u", "", "run as `USER` (name or uid[:gid]; default: the instance's)")
	fl.DurationVar(&f.timeout, "timeout", 0, "kill the command after this long (whole seconds; 0 = never)")
	return cmd
}

func (a *app) execInstance(cmd *cobra.Command, f execFlags, instance string, command []string) error {
	ctx := cmd.Context()
	usage := func(err error) error { return &usageErr{cmd: cmd.CommandPath(), err: err} }
	env, err := parseKV(f.env, "--env", a.env)
	if err != nil {
		return usage(err)
	}
	if f.timeout < 0 || f.timeout%time.Second != 0 {
		return usage(fmt.Errorf("--timeout must be a whole number of seconds, 0 or more"))
	}
	// execws sets our own framing extension (separate_stderr): a stream
	// byte on every output frame, so stderr stays stderr.
	start := client.ExecStart{Command: &command}
	if f.tty {
		start.Tty = &f.tty
	}
	if env != nil {
		start.Env = &env
	}
	if f.workdir != "" {
		start.Cwd = &f.workdir
	}
	if f.user != "" {
		start.User = &f.user
	}
	if f.timeout > 0 {
		start.Timeout = ptr(int(f.timeout / time.Second))
	}
	// A terminal on our side: its size goes with the request, and with -i
	// it is put in raw mode so every key reaches the remote terminal.
	termFd, isTerm := -1, false
	if f.tty {
		termFd, isTerm = terminalFd(a.stdin)
		if isTerm {
			if rows, cols, ok := windowSize(termFd); ok {
				r, c := int(rows), int(cols)
				start.Rows, start.Cols = &r, &c
			}
		}
	}

	conn, err := a.dialWS(ctx, instance, "exec")
	if err != nil {
		return err
	}
	defer conn.CloseNow()

	rw := execws.IO{Stdout: a.stdout, Stderr: a.stderr}
	if isTerm && f.interactive {
		restore, err := makeRaw(termFd)
		if err != nil {
			return fmt.Errorf("cannot put the terminal in raw mode: %w", err)
		}
		defer restore()
	}
	if f.interactive {
		rw.Stdin = a.stdin
	}
	if isTerm {
		done := make(chan struct{})
		defer close(done)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		sizes := make(chan execws.Size, 1)
		rw.Resize = sizes
		go followWindowSize(termFd, winch, sizes, done)
	}
	exit, err := execws.Run(ctx, conn, start, rw)
	if err != nil {
		return err
	}
	if exit.Error != nil || exit.Code != nil {
		return &APIError{Code: deref(exit.Code), Message: deref(exit.Error)}
	}
	if deref(exit.TimedOut) {
		fmt.Fprintf(a.stderr, "hypeman exec: %s\n", deref(exit.Message))
	}
	if exit.ExitCode == 0 {
		return nil
	}
	return &exitErr{code: exit.ExitCode}
}

// followWindowSize turns every SIGWINCH into the terminal's new size until
// done.
func followWindowSize(fd int, winch <-chan os.Signal, sizes chan<- execws.Size, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case <-winch:
			rows, cols, ok := windowSize(fd)
			if !ok {
				continue
			}
			select {
			case sizes <- execws.Size{Rows: rows, Cols: cols}:
			case <-done:
				return
			}
		}
	}
}
