package loadtest

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeRun(t *testing.T, dir, name string, rep Report, rss string) {
	t.Helper()
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if rss != "" {
		if err := os.WriteFile(filepath.Join(dir, name+".rss"), []byte(rss), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPeerSummary(t *testing.T) {
	dir := t.TempDir()
	writeRun(t, dir, "hsmca_c16_r1", Report{Clients: 16, Orders: 300, OrdersPerSec: 30, P99ms: 100, Stopped: "duration"}, "50000\n")
	writeRun(t, dir, "hsmca_c16_r2", Report{Clients: 16, Orders: 100, OrdersPerSec: 10, P99ms: 300, Stopped: "duration"}, "60000")
	writeRun(t, dir, "hsmca_c16_r3", Report{Clients: 16, Orders: 200, OrdersPerSec: 20, P99ms: 200, Stopped: "duration"}, "")
	writeRun(t, dir, "pebble_c16_r1", Report{Clients: 16, Orders: 100, OrdersPerSec: 10, P99ms: 50, Stopped: "duration"}, "20000")
	writeRun(t, dir, "pebble_c16_r2", Report{Clients: 16, Orders: 3, OrdersPerSec: 0.3, P99ms: 50, Unfinished: 16, Stopped: "max-time", LastOrderS: 2}, "20000")
	writeRun(t, dir, "step-ca_c1_r1", Report{Clients: 1, Orders: 10, OrdersPerSec: 5, P99ms: 9, Stopped: "duration"}, "")
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("ignored"), 0o644); err != nil {
		t.Fatal(err)
	}
	runs, err := LoadPeerRuns(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 6 {
		t.Fatalf("%d runs, want 6", len(runs))
	}
	sum := Summarize(runs)
	if len(sum) != 3 {
		t.Fatalf("%d summary rows, want 3: %+v", len(sum), sum)
	}
	// Sorted by clients then server.
	if sum[0].Server != "step-ca" || sum[1].Server != "hsmca" || sum[2].Server != "pebble" {
		t.Fatalf("order: %s %s %s", sum[0].Server, sum[1].Server, sum[2].Server)
	}
	h, p := sum[1], sum[2]
	if h.OrdersPerSec != 20 || h.P99ms != 200 || h.PeakRSSKB != 60000 || h.Rounds != 3 || h.Orders != 600 {
		t.Errorf("hsmca row %+v; want median 20 orders/s, p99 200, rss 60000, 3 rounds, 600 orders", h)
	}
	if p.OrdersPerSec != 5.15 || p.Ratio != 3.88 || p.Unfinished != 16 || len(p.Stopped) != 1 || p.Stopped[0] != "max-time" {
		t.Errorf("pebble row %+v; want median 5.15, ratio 3.88, 16 unfinished, stopped by max-time", p)
	}
	if sum[0].Ratio != 0 {
		t.Errorf("step-ca at 1 client has no hsmca peer, ratio %v", sum[0].Ratio)
	}

	var tb bytes.Buffer
	if err := WriteTable(&tb, sum); err != nil {
		t.Fatal(err)
	}
	if p.StalledAfter != 3 || p.StalledRate != 1.5 {
		t.Errorf("pebble stalled after %v orders at %v/s, want 3 at 1.5/s", p.StalledAfter, p.StalledRate)
	}
	for _, want := range []string{"3.88x", "stopped by max-time: stalled after 3 orders (1.50/s until then)", "58.6"} {
		if !strings.Contains(tb.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, tb.String())
		}
	}

	var svg bytes.Buffer
	if err := WriteChart(&svg, "orders/s <test>", sum); err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(&svg)
	circles := 0
	for {
		tok, err := d.Token()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("SVG is not well-formed XML: %v", err)
			}
			break
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "circle" {
			circles++
		}
	}
	if circles != 3 {
		t.Errorf("%d points in the chart, want 3", circles)
	}
}

func TestLoadPeerRunsErrors(t *testing.T) {
	if _, err := LoadPeerRuns(t.TempDir()); err == nil {
		t.Error("empty dir: no error")
	}
	dir := t.TempDir()
	writeRun(t, dir, "pebble_c4_r1", Report{Clients: 16, OrdersPerSec: 1}, "")
	if _, err := LoadPeerRuns(dir); err == nil || !strings.Contains(err.Error(), "16 clients") {
		t.Errorf("mismatched clients: %v", err)
	}
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[float64]float64{0: 1, 0.5: 1, 3: 5, 10: 10, 11: 20, 47: 50, 51: 100, 230: 500} {
		if got := niceCeil(in); got != want {
			t.Errorf("niceCeil(%v) = %v, want %v", in, got, want)
		}
	}
}

func FuzzParsePeerRun(f *testing.F) {
	f.Add([]byte(`{"clients":16,"orders":10,"orders_per_sec":2.5,"p99_ms":10,"errors":{}}`))
	f.Add([]byte(`{"clients":0}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParsePeerRun("x", b)
		if err != nil {
			return
		}
		if r.Clients < 1 || r.OrdersPerSec < 0 {
			t.Fatalf("accepted %+v", r.Report)
		}
		sum := Summarize([]PeerRun{r})
		if len(sum) != 1 {
			t.Fatalf("summary %+v", sum)
		}
		var b2 bytes.Buffer
		if err := WriteChart(&b2, "t", sum); err != nil {
			t.Fatal(err)
		}
	})
}
