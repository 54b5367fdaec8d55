// Command hypeman-token mints an API token signed with a hypemand data
// directory's secret:
//
//	hypeman-token --data-dir /var/lib/hypeman -scopes instance:read,image:* -duration 1h -user-id ci
//
// Without -scopes the token has full access (no permissions claim). The
// secret is read, never created: a token signed with a secret the daemon
// does not use would be useless, so a missing secret is an error telling the
// user to start hypemand once (which creates it) or to pass --secret-file.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"time"

	"hypeman/internal/auth"
	"hypeman/internal/paths"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "hypeman-token:", err)
		}
		os.Exit(2)
	}
}

func defaultDataDir() string {
	if d := os.Getenv("HYPEMAN_DATA_DIR"); d != "" {
		return d
	}
	return "/var/lib/hypeman"
}

func defaultUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "hypeman"
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("hypeman-token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", defaultDataDir(), "hypemand data directory whose jwt-secret signs the token (env HYPEMAN_DATA_DIR)")
	secretFile := fs.String("secret-file", "", "read the secret from this file instead of <data-dir>/jwt-secret")
	scopes := fs.String("scopes", "", "comma-separated scopes (instance:read|write|delete, image:..., snapshot:..., <resource>:*, *); empty = full access")
	duration := fs.Duration("duration", 24*time.Hour, "token lifetime")
	userID := fs.String("user-id", defaultUser(), "subject (sub) of the token")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: hypeman-token [--data-dir DIR | --secret-file FILE] [-scopes a,b] [-duration 1h] [-user-id X]\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	sc, err := auth.ParseScopes(*scopes)
	if err != nil {
		return err
	}
	path := *secretFile
	if path == "" {
		path = paths.New(*dataDir).JWTSecret()
	}
	secret, err := auth.LoadSecret(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w (start hypemand once with this data dir to create it, or pass --secret-file)", err)
		}
		return err
	}
	tok, err := auth.Mint(secret, auth.MintOptions{UserID: *userID, Scopes: sc, TTL: *duration})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}
