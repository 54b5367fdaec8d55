package auth

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Errors callers branch on; both mean 401.
var (
	// ErrNoToken: the request carries no credentials.
	ErrNoToken = errors.New("missing bearer token")
	// ErrInvalidToken: the token is malformed, badly signed, uses another
	// algorithm or is expired. It is wrapped with the reason.
	ErrInvalidToken = errors.New("invalid token")
)

// MinSecretLen is the shortest HS256 secret accepted (bytes).
const MinSecretLen = 32

// claims is the JWT payload. Permissions is a pointer so an absent claim
// (full access) differs from an empty one (no access).
type claims struct {
	jwt.RegisteredClaims
	Permissions *[]string `json:"permissions,omitempty"`
}

// MintOptions describe a token.
type MintOptions struct {
	// UserID becomes the subject (sub). Required.
	UserID string
	// Scopes become the permissions claim. nil omits the claim (full
	// access); a non-nil empty slice grants nothing.
	Scopes []Scope
	// TTL is the lifetime (exp = now + TTL). Required, positive.
	TTL time.Duration
	// Now defaults to time.Now.
	Now func() time.Time
}

// Mint returns a signed HS256 token.
func Mint(secret []byte, o MintOptions) (string, error) {
	if len(secret) < MinSecretLen {
		return "", fmt.Errorf("secret too short: %d bytes, need at least %d", len(secret), MinSecretLen)
	}
	if strings.TrimSpace(o.UserID) == "" {
		return "", errors.New("user id is required")
	}
	if o.TTL <= 0 {
		return "", fmt.Errorf("token lifetime must be positive, got %s", o.TTL)
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	t := now()
	c := claims{RegisteredClaims: jwt.RegisteredClaims{
		Subject:   o.UserID,
		IssuedAt:  jwt.NewNumericDate(t),
		ExpiresAt: jwt.NewNumericDate(t.Add(o.TTL)),
	}}
	if o.Scopes != nil {
		perms := make([]string, len(o.Scopes))
		for i, s := range o.Scopes {
			if _, err := ParseScope(string(s)); err != nil {
				return "", err
			}
			perms[i] = string(s)
		}
		c.Permissions = &perms
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
}

// Verifier checks tokens signed with one secret.
type Verifier struct {
	secret []byte
	parser *jwt.Parser
}

// NewVerifier returns a verifier for secret. now may be nil (time.Now).
func NewVerifier(secret []byte, now func() time.Time) (*Verifier, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("secret too short: %d bytes, need at least %d", len(secret), MinSecretLen)
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
	}
	if now != nil {
		opts = append(opts, jwt.WithTimeFunc(now))
	}
	return &Verifier{secret: append([]byte(nil), secret...), parser: jwt.NewParser(opts...)}, nil
}

// Verify parses and checks token: HS256 signature with our secret, exp
// present and in the future, a subject. Failures wrap ErrInvalidToken.
func (v *Verifier) Verify(token string) (*Principal, error) {
	if token == "" {
		return nil, ErrNoToken
	}
	var c claims
	_, err := v.parser.ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		if t.Method != jwt.SigningMethodHS256 {
			return nil, fmt.Errorf("unexpected signing method %v", t.Header["alg"])
		}
		return v.secret, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if c.Subject == "" {
		return nil, fmt.Errorf("%w: no subject", ErrInvalidToken)
	}
	p := &Principal{UserID: c.Subject}
	if c.Permissions != nil {
		p.Scopes = make([]Scope, 0, len(*c.Permissions))
		for _, s := range *c.Permissions {
			p.Scopes = append(p.Scopes, Scope(s))
		}
	}
	return p, nil
}

// TokenFromRequest extracts the token from "Authorization: Bearer <token>",
// or, when allowBasic is set (the OCI registry, whose clients only speak
// Basic), from the password of "Authorization: Basic" (any username). It
// returns ErrNoToken when there is none.
func TokenFromRequest(r *http.Request, allowBasic bool) (string, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", ErrNoToken
	}
	scheme, rest, _ := strings.Cut(h, " ")
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		if tok := strings.TrimSpace(rest); tok != "" {
			return tok, nil
		}
	case allowBasic && strings.EqualFold(scheme, "Basic"):
		if _, pass, ok := r.BasicAuth(); ok && pass != "" {
			return pass, nil
		}
		return "", fmt.Errorf("%w: malformed basic credentials", ErrInvalidToken)
	}
	return "", fmt.Errorf("%w: unsupported authorization scheme", ErrInvalidToken)
}
