package expiry_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"hypeman/internal/expiry"
)

func ptr[T any](v T) *T { return &v }

func TestResolve(t *testing.T) {
	now := t0
	c, err := expiry.Resolve(ptr("90m"), nil, now)
	if err != nil || !c.Set || c.At == nil || !c.At.Equal(now.Add(90*time.Minute)) {
		t.Fatalf("ttl 90m: %+v %v", c, err)
	}
	c, err = expiry.Resolve(ptr("0s"), nil, now)
	if err != nil || !c.Set || c.At != nil {
		t.Fatalf(`ttl "0s" must clear the deadline: %+v %v`, c, err)
	}
	at := now.Add(48 * time.Hour)
	c, err = expiry.Resolve(nil, &at, now)
	if err != nil || !c.Set || !c.At.Equal(at) {
		t.Fatalf("expires_at: %+v %v", c, err)
	}
	c, err = expiry.Resolve(nil, nil, now)
	if err != nil || c.Set {
		t.Fatalf("neither: %+v %v", c, err)
	}
	past := now.Add(-time.Second)
	for _, tc := range []struct {
		name  string
		ttl   *string
		at    *time.Time
		field string
	}{
		{"both", ptr("1h"), &at, "mutually exclusive"},
		{"garbage", ptr("forever"), nil, "ttl"},
		{"negative", ptr("-5m"), nil, "ttl"},
		{"huge", ptr("1000000h"), nil, "ttl"},
		{"past", nil, &past, "expires_at"},
		{"now", nil, &now, "expires_at"},
	} {
		_, err := expiry.Resolve(tc.ttl, tc.at, now)
		if !errors.Is(err, expiry.ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: err %v, want ErrInvalid naming %s", tc.name, err, tc.field)
		}
	}
}
