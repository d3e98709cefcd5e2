package main

import (
	"strings"
	"testing"
)

const sample = `pkg: example
BenchmarkX/a-2   	 10	 200 ns/op	 0.95 ratio	 4.0 overhead-%
BenchmarkX/a-2   	 10	 100 ns/op	 0.85 ratio	 12.0 overhead-%
BenchmarkX/a-2   	 10	 300 ns/op	 0.91 ratio	 9.0 overhead-%
BenchmarkY-2     	 10	 50 ns/op	 64 B/op	 1 allocs/op
`

func TestParseMediansAndMetrics(t *testing.T) {
	res := parse(strings.NewReader(sample))
	x := res["BenchmarkX/a"]
	if x == nil || x.Runs != 3 || x.MedianNs != 200 || x.Package != "example" {
		t.Fatalf("BenchmarkX/a = %+v", x)
	}
	if got := median(x.Metrics["ratio"]); got != 0.91 {
		t.Errorf("median ratio %v, want 0.91", got)
	}
	if y := res["BenchmarkY"]; y == nil || median(y.Metrics["B/op"]) != 64 {
		t.Errorf("BenchmarkY's B/op not read: %+v", y)
	}
}

func TestCheckMetric(t *testing.T) {
	res := parse(strings.NewReader(sample))
	for _, c := range []struct {
		line string
		ok   bool
		met  *bool
	}{
		{"BenchmarkX/a ratio >=0.9 x", true, ptr(true)},   // median 0.91
		{"BenchmarkX/a ratio >=0.95 x", true, ptr(false)}, // median 0.91
		{"BenchmarkX/a overhead-% <=10 x", true, ptr(true)},
		{"BenchmarkX/a overhead-% <=5 x", true, ptr(false)},
		{"BenchmarkX/a ratio - x", true, nil},
		{"BenchmarkX/a missing >=1 x", false, nil},
		{"BenchmarkZ ratio >=1 x", false, nil},
	} {
		m, ok, err := checkMetric(strings.Fields(c.line), res)
		if err != nil {
			t.Fatalf("%q: %v", c.line, err)
		}
		if ok != c.ok {
			t.Fatalf("%q: measured %v, want %v", c.line, ok, c.ok)
		}
		if (m.Met == nil) != (c.met == nil) || (m.Met != nil && *m.Met != *c.met) {
			t.Errorf("%q: met %v, want %v", c.line, m.Met, c.met)
		}
	}
	for _, bad := range []string{"BenchmarkX/a ratio", "BenchmarkX/a ratio =0.9 x", "BenchmarkX/a ratio >=abc x"} {
		if _, _, err := checkMetric(strings.Fields(bad), res); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func ptr(b bool) *bool { return &b }
