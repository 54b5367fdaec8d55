// Command hypeman is the command line client of hypemand: pull and push
// images, run instances as VMs, follow their logs and lifecycle events.
// Configuration comes from HYPEMAN_BASE_URL and HYPEMAN_API_KEY. All logic
// lives in internal/cli (callable in-process for tests); this is the
// process wrapper: signals become context cancellation, the result becomes
// the exit status.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"hypeman/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
