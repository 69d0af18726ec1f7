package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"time"
)

// Duration is a time.Duration that reads from JSON either as a Go duration
// string ("1h30m", "90s") or as an integer number of nanoseconds, the two
// forms zot accepts. It writes itself as a Go duration string.
type Duration time.Duration

// errDurationSyntax is what a malformed duration reports; the walker that
// checks the raw document prefixes it with the field path.
var errDurationSyntax = errors.New(`must be a duration string like "1h30m" or an integer number of nanoseconds`)

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d like time.Duration does ("1h0m0s").
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go duration string or an integer number of
// nanoseconds. JSON null leaves d unchanged.
func (d *Duration) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		return nil
	}
	v, err := parseDuration(b)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// parseDuration parses one JSON value (a string or a number) as a Duration.
func parseDuration(b []byte) (Duration, error) {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return 0, errDurationSyntax
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return 0, errDurationSyntax
		}
		return Duration(v), nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return 0, errDurationSyntax
	}
	return Duration(n), nil
}
