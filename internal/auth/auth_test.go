package auth

import (
	"crypto/rand"
	"crypto/rsa"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef-test")

func TestParseScope(t *testing.T) {
	for _, ok := range []string{"*", "instance:read", "instance:*", "image:delete", "snapshot:write", "snapshot:*"} {
		if _, err := ParseScope(ok); err != nil {
			t.Errorf("ParseScope(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "instance", "instance:", "instances:read", "instance:admin", "*:read", "image:read ", ":read"} {
		if _, err := ParseScope(bad); err == nil {
			t.Errorf("ParseScope(%q) accepted", bad)
		}
	}
	got, err := ParseScopes(" instance:read, image:*,instance:read,, ")
	if err != nil || len(got) != 2 || got[0] != InstanceRead || got[1] != "image:*" {
		t.Fatalf("ParseScopes = %v, %v", got, err)
	}
	if got, err := ParseScopes(""); err != nil || got != nil {
		t.Fatalf("ParseScopes(\"\") = %v, %v", got, err)
	}
}

func TestGrants(t *testing.T) {
	cases := []struct {
		have, want Scope
		ok         bool
	}{
		{All, InstanceWrite, true},
		{"instance:*", InstanceDelete, true},
		{"instance:*", ImageRead, false},
		{InstanceRead, InstanceRead, true},
		{InstanceRead, InstanceWrite, false},
		{InstanceWrite, InstanceRead, false}, // write does not imply read
		{"image:*", "imagex:read", false},
		{"bogus", InstanceRead, false},
	}
	for _, c := range cases {
		if got := c.have.Grants(c.want); got != c.ok {
			t.Errorf("%q grants %q = %v, want %v", c.have, c.want, got, c.ok)
		}
	}
	if (&Principal{UserID: "u"}).Allows(SnapshotDelete) != true {
		t.Error("principal without scopes claim must have full access")
	}
	if (&Principal{UserID: "u", Scopes: []Scope{}}).Allows(InstanceRead) {
		t.Error("empty scopes claim must grant nothing")
	}
	var nilP *Principal
	if nilP.Allows(InstanceRead) {
		t.Error("nil principal allowed")
	}
}

func TestMintVerifyRoundTrip(t *testing.T) {
	v, err := NewVerifier(testSecret, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Mint(testSecret, MintOptions{UserID: "alice", Scopes: []Scope{InstanceRead, "image:*"}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if p.UserID != "alice" || len(p.Scopes) != 2 || !p.Allows(ImageDelete) || p.Allows(InstanceWrite) {
		t.Fatalf("principal = %+v", p)
	}
	full, _ := Mint(testSecret, MintOptions{UserID: "root", TTL: time.Hour})
	p, err = v.Verify(full)
	if err != nil || p.Scopes != nil || !p.Allows(SnapshotWrite) {
		t.Fatalf("full-access token: %+v %v", p, err)
	}
	none, _ := Mint(testSecret, MintOptions{UserID: "nobody", Scopes: []Scope{}, TTL: time.Hour})
	p, err = v.Verify(none)
	if err != nil || p.Scopes == nil || p.Allows(InstanceRead) {
		t.Fatalf("empty-permissions token: %+v %v", p, err)
	}
}

func TestMintRejects(t *testing.T) {
	for name, o := range map[string]MintOptions{
		"no user":   {TTL: time.Hour},
		"zero ttl":  {UserID: "u"},
		"neg ttl":   {UserID: "u", TTL: -time.Second},
		"bad scope": {UserID: "u", TTL: time.Hour, Scopes: []Scope{"instance:root"}},
	} {
		if _, err := Mint(testSecret, o); err == nil {
			t.Errorf("%s: minted", name)
		}
	}
	if _, err := Mint([]byte("short"), MintOptions{UserID: "u", TTL: time.Hour}); err == nil {
		t.Error("short secret accepted")
	}
	if _, err := NewVerifier([]byte("short"), nil); err == nil {
		t.Error("short verifier secret accepted")
	}
}

func TestVerifyRejects(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	v, _ := NewVerifier(testSecret, func() time.Time { return now })
	sign := func(m jwt.SigningMethod, key any, c jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	valid := jwt.MapClaims{"sub": "u", "exp": now.Add(time.Hour).Unix()}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := Mint(testSecret, MintOptions{UserID: "u", TTL: time.Minute, Now: func() time.Time { return now.Add(-time.Hour) }})
	good := sign(jwt.SigningMethodHS256, testSecret, valid)
	tampered := good[:len(good)-2] + "xx"
	cases := map[string]string{
		"empty":        "",
		"garbage":      "not.a.jwt",
		"alg none":     sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid),
		"rs256":        sign(jwt.SigningMethodRS256, rsaKey, valid),
		"hs384":        sign(jwt.SigningMethodHS384, testSecret, valid),
		"other secret": sign(jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), valid),
		"expired":      expired,
		"no exp":       sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "u"}),
		"no sub":       sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"exp": now.Add(time.Hour).Unix()}),
		"tampered":     tampered,
		"future nbf":   sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "u", "exp": now.Add(2 * time.Hour).Unix(), "nbf": now.Add(time.Hour).Unix()}),
	}
	for name, tok := range cases {
		if p, err := v.Verify(tok); err == nil {
			t.Errorf("%s: accepted (%+v)", name, p)
		}
	}
	if _, err := v.Verify(good); err != nil {
		t.Fatalf("control token rejected: %v", err)
	}
}

func TestTokenFromRequest(t *testing.T) {
	req := func(h string) *http.Request {
		r, _ := http.NewRequest("GET", "/", nil)
		if h != "" {
			r.Header.Set("Authorization", h)
		}
		return r
	}
	if tok, err := TokenFromRequest(req("Bearer abc"), false); err != nil || tok != "abc" {
		t.Errorf("bearer: %q %v", tok, err)
	}
	if tok, err := TokenFromRequest(req("bearer  abc "), false); err != nil || tok != "abc" {
		t.Errorf("lowercase bearer: %q %v", tok, err)
	}
	if _, err := TokenFromRequest(req(""), false); err != ErrNoToken {
		t.Errorf("missing: %v", err)
	}
	basic := req("")
	basic.SetBasicAuth("anyone", "tok123")
	if _, err := TokenFromRequest(basic, false); err == nil {
		t.Error("basic accepted where only bearer is allowed")
	}
	if tok, err := TokenFromRequest(basic, true); err != nil || tok != "tok123" {
		t.Errorf("basic: %q %v", tok, err)
	}
	if _, err := TokenFromRequest(req("Basic !!!"), true); err == nil {
		t.Error("malformed basic accepted")
	}
	if _, err := TokenFromRequest(req("Bearer"), false); err == nil {
		t.Error("empty bearer accepted")
	}
	if _, err := TokenFromRequest(req("Token abc"), true); err == nil {
		t.Error("unknown scheme accepted")
	}
}

func TestLoadOrCreateSecret(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "jwt-secret")
	s1, err := LoadOrCreateSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(s1) != 64 || strings.Trim(string(s1), "0123456789abcdef") != "" {
		t.Fatalf("secret %q is not 32 hex-encoded bytes", s1)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode: %v %v", st.Mode(), err)
	}
	s2, err := LoadOrCreateSecret(path)
	if err != nil || string(s2) != string(s1) {
		t.Fatalf("second load changed the secret: %q vs %q (%v)", s2, s1, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("temp files left behind: %v", ents)
	}
	// A world-readable secret is refused.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateSecret(path); err == nil {
		t.Fatal("0644 secret accepted")
	}
	// A too-short secret is refused.
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	if _, err := LoadSecret(short); err == nil {
		t.Fatal("short secret accepted")
	}
}

func TestLoadOrCreateSecretConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jwt-secret")
	const n = 16
	got := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := LoadOrCreateSecret(path)
			got[i], errs[i] = string(s), err
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || got[i] != got[0] {
			t.Fatalf("racer %d: %q %v (first %q)", i, got[i], errs[i], got[0])
		}
	}
}
