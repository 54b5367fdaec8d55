package main

import (
	"bytes"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"hypeman/internal/auth"
	"hypeman/internal/paths"
)

func TestMintsVerifiableToken(t *testing.T) {
	dir := t.TempDir()
	secret, err := auth.LoadOrCreateSecret(paths.New(dir).JWTSecret())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run([]string{"--data-dir", dir, "-scopes", "instance:read,image:*", "-duration", "1h", "-user-id", "ci"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	v, _ := auth.NewVerifier(secret, nil)
	p, err := v.Verify(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	if p.UserID != "ci" || !p.Allows(auth.ImageDelete) || p.Allows(auth.InstanceWrite) {
		t.Fatalf("principal %+v", p)
	}

	out.Reset()
	if err := run([]string{"-secret-file", paths.New(dir).JWTSecret()}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	p, err = v.Verify(strings.TrimSpace(out.String()))
	if err != nil || p.Scopes != nil {
		t.Fatalf("full-access token: %+v %v", p, err)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	var errOut bytes.Buffer
	err := run([]string{"--data-dir", filepath.Join(dir, "nope")}, io.Discard, &errOut)
	if err == nil || !strings.Contains(err.Error(), "start hypemand once") {
		t.Fatalf("missing secret: %v", err)
	}
	if _, err := auth.LoadOrCreateSecret(paths.New(dir).JWTSecret()); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--data-dir", dir, "-scopes", "instance:root"},
		{"--data-dir", dir, "-duration", "0s"},
		{"--data-dir", dir, "-user-id", ""},
		{"--data-dir", dir, "extra"},
		{"--bogus"},
	} {
		if err := run(args, io.Discard, io.Discard); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}
