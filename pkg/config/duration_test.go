package config

import (
	"encoding/json"
	"testing"
	"time"
)

func TestDurationUnmarshal(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{`"1h30m"`, 90 * time.Minute, false},
		{`"90s"`, 90 * time.Second, false},
		{`"0"`, 0, false},
		{`"-5m"`, -5 * time.Minute, false},
		{`3600000000000`, time.Hour, false},
		{`0`, 0, false},
		{`null`, 7, false}, // unchanged
		{`"1 hour"`, 0, true},
		{`"100"`, 0, true}, // a string needs a unit, as in Go
		{`""`, 0, true},
		{`1.5`, 0, true},
		{`true`, 0, true},
		{`[]`, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			d := Duration(7)
			err := json.Unmarshal([]byte(tt.in), &d)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Unmarshal(%s) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if err == nil && d.Std() != tt.want {
				t.Errorf("Unmarshal(%s) = %v, want %v", tt.in, d.Std(), tt.want)
			}
		})
	}
}

func TestDurationRoundTrip(t *testing.T) {
	t.Parallel()
	for _, d := range []Duration{0, Duration(time.Second), Duration(90 * time.Minute), Duration(1)} {
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		var back Duration
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("Unmarshal(%s): %v", b, err)
		}
		if back != d {
			t.Errorf("round trip of %v via %s = %v", d, b, back)
		}
	}
	if got := Duration(90 * time.Minute).String(); got != "1h30m0s" {
		t.Errorf("String() = %q", got)
	}
}

// TestDurationInConfig checks both forms through Parse, in JSON and YAML,
// and that a bad duration is reported with its path.
func TestDurationInConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, format, doc string
		want              time.Duration
		wantErr           string
	}{
		{"json string", "json", `{"storage":{"gcDelay":"1h30m"}}`, 90 * time.Minute, ""},
		{"json nanoseconds", "json", `{"storage":{"gcDelay":1800000000000}}`, 30 * time.Minute, ""},
		{"yaml string", "yaml", "storage:\n  gcDelay: 45m\n", 45 * time.Minute, ""},
		{"yaml nanoseconds", "yaml", "storage:\n  gcDelay: 60000000000\n", time.Minute, ""},
		{"bad", "json", `{"storage":{"gcDelay":"soon"}}`, 0, `storage.gcDelay: must be a duration`},
		{"bad in list", "yaml", "extensions:\n  sync:\n    registries:\n      - urls: [http://x]\n        pollInterval: 1y\n",
			0, `extensions.sync.registries[0].pollInterval: must be a duration`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, _, err := Parse([]byte(tt.doc), tt.format)
			if tt.wantErr != "" {
				wantErrContaining(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Storage.GCDelay.Std(); got != tt.want {
				t.Errorf("gcDelay = %v, want %v", got, tt.want)
			}
		})
	}
}
