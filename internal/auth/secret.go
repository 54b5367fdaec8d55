package auth

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"hypeman/internal/fsutil"
)

// LoadSecret reads the signing secret from path: the file's content with
// surrounding whitespace removed, used as the HMAC key as is (so an operator
// may also write any long random string there). It refuses secrets shorter
// than MinSecretLen and files readable by group or others.
func LoadSecret(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("jwt secret: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("jwt secret %s has mode %04o; it must not be readable by group or others (chmod 600)", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("jwt secret: %w", err)
	}
	s := []byte(strings.TrimSpace(string(b)))
	if len(s) < MinSecretLen {
		return nil, fmt.Errorf("jwt secret %s is too short (%d bytes, need at least %d)", path, len(s), MinSecretLen)
	}
	return s, nil
}

// LoadOrCreateSecret returns the secret in path, creating it first if the
// file does not exist: 32 random bytes, hex-encoded, mode 0600, written to a
// temp file, fsynced and hard-linked into place, so a crash never leaves a
// torn secret and two daemons starting at once agree on one secret (the
// loser of the link race reads the winner's file).
func LoadOrCreateSecret(path string) ([]byte, error) {
	if _, err := os.Stat(path); err == nil {
		return LoadSecret(path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("jwt secret: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("jwt secret: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("jwt secret: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("jwt secret: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	werr := func() error {
		defer f.Close()
		if err := f.Chmod(0o600); err != nil {
			return err
		}
		if _, err := f.WriteString(hex.EncodeToString(raw) + "\n"); err != nil {
			return err
		}
		return f.Sync()
	}()
	if werr != nil {
		return nil, fmt.Errorf("jwt secret: %w", werr)
	}
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("jwt secret: %w", err)
	}
	if err := fsutil.SyncDir(dir); err != nil {
		return nil, err
	}
	return LoadSecret(path)
}
