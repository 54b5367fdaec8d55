package tags

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	ok := []map[string]string{nil, {}, {"team": "backend", "env": ""}, {"a b_c.d:e/f=g+h@i-j": "x:y/z"}}
	for _, m := range ok {
		if err := Validate("tags", m); err != nil {
			t.Errorf("Validate(%v) = %v", m, err)
		}
	}
	many := map[string]string{}
	for i := range MaxTags + 1 {
		many[strings.Repeat("k", i+1)] = "v"
	}
	bad := map[string]struct {
		m     map[string]string
		field string
	}{
		"empty key":      {map[string]string{"": "v"}, "tags"},
		"long key":       {map[string]string{strings.Repeat("k", MaxKeyLen+1): "v"}, "tags"},
		"key charset":    {map[string]string{"a$b": "v"}, "tags"},
		"long value":     {map[string]string{"k": strings.Repeat("v", MaxValueLen+1)}, "tags[k]"},
		"value charset":  {map[string]string{"k": "a\nb"}, "tags[k]"},
		"too many":       {many, "tags"},
		"non-ascii char": {map[string]string{"k": "é"}, "tags[k]"},
	}
	for name, tc := range bad {
		err := Validate("tags", tc.m)
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%s: err = %v, want *FieldError", name, err)
			continue
		}
		if fe.Field != tc.field {
			t.Errorf("%s: field %q, want %q", name, fe.Field, tc.field)
		}
	}
}

func TestMatch(t *testing.T) {
	have := map[string]string{"team": "backend", "env": "prod"}
	cases := []struct {
		want map[string]string
		ok   bool
	}{
		{nil, true},
		{map[string]string{"team": "backend"}, true},
		{map[string]string{"team": "backend", "env": "prod"}, true},
		{map[string]string{"team": "frontend"}, false},
		{map[string]string{"team": "backend", "region": "eu"}, false},
		{map[string]string{"env": ""}, false},
	}
	for _, c := range cases {
		if got := Match(have, c.want); got != c.ok {
			t.Errorf("Match(%v) = %v, want %v", c.want, got, c.ok)
		}
	}
	if !Match(nil, nil) || Match(nil, map[string]string{"a": "b"}) {
		t.Error("nil set")
	}
}
