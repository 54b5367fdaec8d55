package health_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"hypeman/internal/health"
)

func TestCheckJSONDefaults(t *testing.T) {
	var c health.Check
	if err := json.Unmarshal([]byte(`{"type":"http","port":8080,"path":"/healthz"}`), &c); err != nil {
		t.Fatal(err)
	}
	want := health.Check{Type: health.HTTP, Port: 8080, Path: "/healthz", Scheme: "http", ExpectedStatus: 200,
		Interval: 10 * time.Second, Timeout: 2 * time.Second, StartPeriod: 30 * time.Second,
		FailureThreshold: 3, SuccessThreshold: 1}
	if !c.Equal(want) {
		t.Fatalf("decoded %+v, want %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(c)
	const wantJSON = `{"type":"http","port":8080,"path":"/healthz","scheme":"http","expected_status":200,"interval":"10s","timeout":"2s","start_period":"30s","failure_threshold":3,"success_threshold":1}`
	if string(b) != wantJSON {
		t.Fatalf("marshal = %s\nwant      %s", b, wantJSON)
	}
	var back health.Check
	if err := json.Unmarshal(b, &back); err != nil || !back.Equal(c) {
		t.Fatalf("round trip %+v %v", back, err)
	}

	// exec: no port/path/status in the output; explicit zero start period kept.
	if err := json.Unmarshal([]byte(`{"type":"exec","command":["pg_isready","-q"],"start_period":"0s","interval":"1m"}`), &c); err != nil {
		t.Fatal(err)
	}
	if c.StartPeriod != 0 || c.Interval != time.Minute || c.ExpectedStatus != 0 || c.Path != "" || c.Validate() != nil {
		t.Fatalf("exec decoded %+v (%v)", c, c.Validate())
	}
	b, _ = json.Marshal(c)
	if strings.Contains(string(b), "port") || strings.Contains(string(b), "path") || !strings.Contains(string(b), `"command":["pg_isready","-q"]`) ||
		!strings.Contains(string(b), `"interval":"1m"`) || !strings.Contains(string(b), `"start_period":"0s"`) {
		t.Fatalf("exec marshal %s", b)
	}
}

// TestCheckReportOnly: report_only round-trips through the persisted
// JSON (omitted when false), counts in Equal and IsZero, and must be a
// boolean on a typed check.
func TestCheckReportOnly(t *testing.T) {
	var c health.Check
	if err := json.Unmarshal([]byte(`{"type":"tcp","port":80,"report_only":true}`), &c); err != nil {
		t.Fatal(err)
	}
	if !c.ReportOnly || c.Validate() != nil {
		t.Fatalf("decoded %+v (%v)", c, c.Validate())
	}
	b, _ := json.Marshal(c)
	if !strings.HasSuffix(string(b), `,"report_only":true}`) {
		t.Fatalf("marshal %s", b)
	}
	var back health.Check
	if err := json.Unmarshal(b, &back); err != nil || !back.Equal(c) {
		t.Fatalf("round trip %+v %v", back, err)
	}
	plain := c
	plain.ReportOnly = false
	if plain.Equal(c) {
		t.Fatal("Equal ignores report_only")
	}
	if b, _ := json.Marshal(plain); strings.Contains(string(b), "report_only") {
		t.Fatalf("report_only false is written: %s", b)
	}
	if (health.Check{ReportOnly: true}).IsZero() {
		t.Fatal("a check with only report_only is zero (would drop the field silently)")
	}
	var fe *health.FieldError
	if err := (health.Check{ReportOnly: true}).Validate(); !errors.As(err, &fe) || fe.Field != "health_check.type" {
		t.Fatalf("report_only without a type: %v", err)
	}
	for in, field := range map[string]string{
		`{"type":"tcp","port":80,"report_only":"yes"}`: "health_check.report_only",
		`{"report_only":true}`:                         "health_check.type",
	} {
		err := json.Unmarshal([]byte(in), &c)
		if !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: err %v, want FieldError on %s", in, err, field)
		}
	}
}

func TestCheckJSONNoneAndErrors(t *testing.T) {
	for _, in := range []string{`null`, `{}`, `{"type":""}`, `{"type":null}`} {
		c := health.DefaultCheck(health.TCP)
		if err := json.Unmarshal([]byte(in), &c); err != nil || !c.IsZero() {
			t.Errorf("%s → %+v, %v; want no check", in, c, err)
		}
	}
	type parent struct {
		C health.Check  `json:"health_check,omitzero"`
		S health.Status `json:"health_status,omitzero"`
	}
	if b, _ := json.Marshal(parent{}); string(b) != `{}` {
		t.Errorf("zero check marshal %s", b)
	}
	for in, field := range map[string]string{
		`{"port":80}`:                            "health_check.type",
		`{"type":"http","port":"80"}`:            "health_check.port",
		`{"type":"http","interval":"often"}`:     "health_check.interval",
		`{"type":"http","timeout":2}`:            "health_check.timeout",
		`{"type":"exec","command":"ls"}`:         "health_check.command",
		`{"type":"http","failure_threshold":""}`: "health_check.failure_threshold",
	} {
		var c health.Check
		err := json.Unmarshal([]byte(in), &c)
		var fe *health.FieldError
		if !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: err %v, want FieldError on %s", in, err, field)
		}
	}
}

func TestCheckValidate(t *testing.T) {
	cases := []struct {
		name  string
		c     func() health.Check
		field string
	}{
		{"none", func() health.Check { return health.Check{} }, ""},
		{"http ok", func() health.Check { c := health.DefaultCheck(health.HTTP); c.Port = 80; return c }, ""},
		{"tcp ok", func() health.Check { c := health.DefaultCheck(health.TCP); c.Port = 5432; return c }, ""},
		{"exec ok", func() health.Check { c := health.DefaultCheck(health.Exec); c.Command = []string{"true"}; return c }, ""},
		{"timeout == interval", func() health.Check {
			c := health.DefaultCheck(health.TCP)
			c.Port, c.Timeout = 1, c.Interval
			return c
		}, ""},
		{"no type", func() health.Check { return health.Check{Port: 80} }, "health_check.type"},
		{"bad type", func() health.Check { c := health.DefaultCheck("grpc"); c.Port = 1; return c }, "health_check.type"},
		{"http no port", func() health.Check { return health.DefaultCheck(health.HTTP) }, "health_check.http.port"},
		{"port too big", func() health.Check { c := health.DefaultCheck(health.TCP); c.Port = 70000; return c }, "health_check.tcp.port"},
		{"path without slash", func() health.Check {
			c := health.DefaultCheck(health.HTTP)
			c.Port, c.Path = 80, "healthz"
			return c
		}, "health_check.http.path"},
		{"status 42", func() health.Check {
			c := health.DefaultCheck(health.HTTP)
			c.Port, c.ExpectedStatus = 80, 42
			return c
		}, "health_check.http.expected_status"},
		{"tcp with path", func() health.Check {
			c := health.DefaultCheck(health.TCP)
			c.Port, c.Path = 80, "/x"
			return c
		}, "health_check.http"},
		{"tcp with command", func() health.Check {
			c := health.DefaultCheck(health.TCP)
			c.Port, c.Command = 80, []string{"x"}
			return c
		}, "health_check.exec"},
		{"exec no command", func() health.Check { return health.DefaultCheck(health.Exec) }, "health_check.exec.command"},
		{"exec empty argv0", func() health.Check { c := health.DefaultCheck(health.Exec); c.Command = []string{" "}; return c }, "health_check.exec.command"},
		{"exec with port", func() health.Check {
			c := health.DefaultCheck(health.Exec)
			c.Command, c.Port = []string{"true"}, 80
			return c
		}, "health_check.http"},
		{"interval too short", func() health.Check {
			c := health.DefaultCheck(health.TCP)
			c.Port, c.Interval, c.Timeout = 1, 500*time.Millisecond, 100*time.Millisecond
			return c
		}, "health_check.interval"},
		{"zero timeout", func() health.Check { c := health.DefaultCheck(health.TCP); c.Port, c.Timeout = 1, 0; return c }, "health_check.timeout"},
		{"timeout > interval", func() health.Check {
			c := health.DefaultCheck(health.TCP)
			c.Port, c.Timeout = 1, 11*time.Second
			return c
		}, "health_check.timeout"},
		{"negative start period", func() health.Check {
			c := health.DefaultCheck(health.TCP)
			c.Port, c.StartPeriod = 1, -time.Second
			return c
		}, "health_check.start_period"},
		{"zero failure threshold", func() health.Check {
			c := health.DefaultCheck(health.TCP)
			c.Port, c.FailureThreshold = 1, 0
			return c
		}, "health_check.failure_threshold"},
		{"zero success threshold", func() health.Check {
			c := health.DefaultCheck(health.TCP)
			c.Port, c.SuccessThreshold = 1, 0
			return c
		}, "health_check.success_threshold"},
	}
	for _, tc := range cases {
		err := tc.c().Validate()
		if tc.field == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		var fe *health.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, health.ErrInvalid) {
			t.Errorf("%s: err %v, want FieldError on %s", tc.name, err, tc.field)
		}
	}
}
