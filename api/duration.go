package api

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Duration is a time.Duration that reads and writes as a Go duration string
// ("10m", "1h30m") in JSON and YAML. A bare number is taken as seconds.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes d as a string such as "1m30s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON accepts "10m" style strings and plain numbers of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case string:
		if x == "" {
			*d = 0
			return nil
		}
		p, err := time.ParseDuration(x)
		if err != nil {
			return fmt.Errorf("invalid duration %q (want e.g. \"30s\", \"10m\")", x)
		}
		*d = Duration(p)
	case float64:
		ns := x * float64(time.Second)
		// Converting an out-of-range float to an integer gives an arbitrary
		// value (a huge timeout came out negative); refuse it instead.
		if ns >= math.MaxInt64 || ns < math.MinInt64 {
			return fmt.Errorf("invalid duration %s: out of range", string(b))
		}
		*d = Duration(ns)
	default:
		return fmt.Errorf("invalid duration %s (want e.g. \"30s\", \"10m\")", string(b))
	}
	return nil
}
