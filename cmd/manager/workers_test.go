package main

import "testing"

// TestParseWorkers: --workers takes controller=N for known controllers
// only, N at least 1.
func TestParseWorkers(t *testing.T) {
	got, err := parseWorkers("enrollment=8, claim=6")
	if err != nil || len(got) != 2 || got["enrollment"] != 8 || got["claim"] != 6 {
		t.Fatalf("parseWorkers: %v, %v", got, err)
	}
	if got, err := parseWorkers(""); err != nil || len(got) != 0 {
		t.Fatalf("empty: %v, %v", got, err)
	}
	for _, bad := range []string{"enrollment", "enrollment=x", "enrollment=0", "nosuch=2", "claim=-1"} {
		if _, err := parseWorkers(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
