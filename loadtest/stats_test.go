package loadtest

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = ms(100 - i) // 100..1, reversed to check sorting
	}
	for _, tc := range []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample p50", []time.Duration{ms(7)}, 50, ms(7)},
		{"one sample p99", []time.Duration{ms(7)}, 99, ms(7)},
		{"p0 is zero", []time.Duration{ms(7)}, 0, 0},
		{"two samples p50", []time.Duration{ms(2), ms(1)}, 50, ms(1)},
		{"two samples p51", []time.Duration{ms(2), ms(1)}, 51, ms(2)},
		{"hundred p50", hundred, 50, ms(50)},
		{"hundred p90", hundred, 90, ms(90)},
		{"hundred p99", hundred, 99, ms(99)},
		{"hundred p100", hundred, 100, ms(100)},
		{"above 100 clamps", hundred, 150, ms(100)},
		{"ten p99 is max", []time.Duration{ms(1), ms(2), ms(3), ms(4), ms(5), ms(6), ms(7), ms(8), ms(9), ms(10)}, 99, ms(10)},
		{"ten p90", []time.Duration{ms(10), ms(9), ms(8), ms(7), ms(6), ms(5), ms(4), ms(3), ms(2), ms(1)}, 90, ms(9)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percentile(tc.samples, tc.p); got != tc.want {
				t.Errorf("Percentile(p%v) = %v, want %v", tc.p, got, tc.want)
			}
		})
	}
	// The input is left alone.
	if hundred[0] != ms(100) {
		t.Error("Percentile sorted its input")
	}
}

func TestReportFill(t *testing.T) {
	r := &Report{Orders: 4, WallS: 2}
	r.fill([]time.Duration{ms(10), ms(20), ms(30), ms(40)})
	if r.OrdersPerSec != 2 {
		t.Errorf("orders/s = %v, want 2", r.OrdersPerSec)
	}
	if r.P50ms != 20 || r.P90ms != 40 || r.P99ms != 40 || r.MaxMs != 40 || r.MeanMs != 25 {
		t.Errorf("p50 %v p90 %v p99 %v max %v mean %v; want 20 40 40 40 25", r.P50ms, r.P90ms, r.P99ms, r.MaxMs, r.MeanMs)
	}
	r = &Report{}
	r.fill(nil)
	if r.OrdersPerSec != 0 || r.P99ms != 0 {
		t.Errorf("empty run: orders/s %v p99 %v, want 0", r.OrdersPerSec, r.P99ms)
	}
}

func TestReportText(t *testing.T) {
	r := &Report{URL: "https://127.0.0.1:14000/dir", Clients: 3, Orders: 10, OrdersPerSec: 5,
		Errors: map[string]int{"urn:ietf:params:acme:error:badNonce": 2, "client:transport": 1}, FirstError: "boom"}
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"clients 3", "10 ok", "5.00 orders/s", "2  urn:ietf:params:acme:error:badNonce", "1  client:transport", "first error: boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q:\n%s", want, out)
		}
	}
	// Sorted by problem type.
	if strings.Index(out, "client:transport") > strings.Index(out, "urn:ietf") {
		t.Errorf("errors not sorted:\n%s", out)
	}
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(js, []byte(`"orders":10`)) || !bytes.Contains(js, []byte(`"client_cpu_s":0`)) {
		t.Errorf("JSON keys: %s", js)
	}
}
