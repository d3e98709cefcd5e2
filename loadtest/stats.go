package loadtest

import (
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Percentile returns the p-th percentile (0 < p <= 100) of samples by the
// nearest-rank method: the smallest sample such that at least p percent of
// the samples are less than or equal to it. It returns 0 for no samples. The
// input is not modified.
func Percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 || p <= 0 || math.IsNaN(p) {
		return 0
	}
	if p > 100 {
		p = 100
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	if rank < 1 {
		rank = 1
	}
	return s[rank-1]
}

// Report is the result of one load run. Its JSON form is what
// `hsmca loadtest acme --json` prints; the keys orders, orders_per_sec,
// p50_ms, p90_ms, p99_ms, errors and client_cpu_s are stable.
type Report struct {
	URL           string  `json:"url"`
	Clients       int     `json:"clients"`
	Challenge     string  `json:"challenge"`
	KeyType       string  `json:"key_type"`
	NamesPerOrder int     `json:"names_per_order"`
	Orders        int     `json:"orders"`        // orders that ended with a downloaded certificate
	FailedOrders  int     `json:"failed_orders"` // orders that ended in an error
	Unfinished    int     `json:"unfinished"`    // orders cut off by --max-time or cancellation
	WallS         float64 `json:"wall_s"`        // from the first newOrder to the last order's end (or the cap)
	// LastOrderS is when the last order ended, from the first newOrder. It
	// equals WallS unless the run was cut off; then Orders/LastOrderS is
	// the rate before the server stopped answering.
	LastOrderS   float64 `json:"last_order_s"`
	OrdersPerSec float64 `json:"orders_per_sec"` // Orders / WallS
	P50ms        float64 `json:"p50_ms"`
	P90ms        float64 `json:"p90_ms"`
	P99ms        float64 `json:"p99_ms"`
	MaxMs        float64 `json:"max_ms"`
	MeanMs       float64 `json:"mean_ms"`
	// Errors counts failures by ACME problem type (RFC 8555 §6.7), or by a
	// "client:..." label for failures that carried no problem document.
	Errors    map[string]int `json:"errors"`
	Accounts  int            `json:"accounts"`
	AccountsS float64        `json:"accounts_s"` // time to register every account
	Requests  int64          `json:"requests"`   // HTTP requests sent to the server
	// RetryAfter counts the waits the server imposed with Retry-After
	// (instead of the --poll interval) and RetryAfterS their total length,
	// summed over all clients.
	RetryAfter  int64   `json:"retry_after_waits"`
	RetryAfterS float64 `json:"retry_after_s"`
	// Retried counts requests the server refused with 429 or 503 and a
	// Retry-After, by problem type; the client waited and repeated them
	// (at most 30 times per request), so they are not failures unless they
	// also appear in Errors.
	Retried    map[string]int `json:"retried"`
	ClientCPUs float64        `json:"client_cpu_s"`
	// Stopped says why the run ended: "orders", "duration", "max-time" or
	// "canceled".
	Stopped string `json:"stopped"`
	// FirstError is the text of the first failure, to help diagnose a run.
	FirstError string `json:"first_error,omitempty"`
}

// fill computes the latency fields from samples.
func (r *Report) fill(lat []time.Duration) {
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
	r.P50ms = ms(Percentile(lat, 50))
	r.P90ms = ms(Percentile(lat, 90))
	r.P99ms = ms(Percentile(lat, 99))
	r.MaxMs = ms(Percentile(lat, 100))
	if len(lat) > 0 {
		var sum time.Duration
		for _, d := range lat {
			sum += d
		}
		r.MeanMs = ms(sum / time.Duration(len(lat)))
	}
	if r.WallS > 0 {
		r.OrdersPerSec = math.Round(float64(r.Orders)/r.WallS*100) / 100
	}
}

// WriteText writes r as a short human-readable report.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "loadtest: %s\n", r.URL)
	fmt.Fprintf(&b, "  clients %d, challenge %s, key %s, %d name(s) per order\n", r.Clients, r.Challenge, r.KeyType, r.NamesPerOrder)
	fmt.Fprintf(&b, "  accounts   %d registered in %.2fs\n", r.Accounts, r.AccountsS)
	fmt.Fprintf(&b, "  orders     %d ok, %d failed, %d unfinished in %.2fs (stopped by %s)\n", r.Orders, r.FailedOrders, r.Unfinished, r.WallS, r.Stopped)
	fmt.Fprintf(&b, "  throughput %.2f orders/s\n", r.OrdersPerSec)
	fmt.Fprintf(&b, "  latency    p50 %.1fms  p90 %.1fms  p99 %.1fms  max %.1fms  mean %.1fms\n", r.P50ms, r.P90ms, r.P99ms, r.MaxMs, r.MeanMs)
	fmt.Fprintf(&b, "  requests   %d (%d Retry-After waits, %.1fs in all)\n", r.Requests, r.RetryAfter, r.RetryAfterS)
	fmt.Fprintf(&b, "  client cpu %.2fs\n", r.ClientCPUs)
	if len(r.Retried) > 0 {
		b.WriteString("  retried after 429/503\n")
		writeCounts(&b, r.Retried)
	}
	if len(r.Errors) == 0 {
		b.WriteString("  errors     none\n")
	} else {
		b.WriteString("  errors\n")
		writeCounts(&b, r.Errors)
		if r.FirstError != "" {
			fmt.Fprintf(&b, "  first error: %s\n", r.FirstError)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeCounts writes one "count  key" line per entry, sorted by key.
func writeCounts(b *strings.Builder, m map[string]int) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(b, "    %6d  %s\n", m[k], k)
	}
}
