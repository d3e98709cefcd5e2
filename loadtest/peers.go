package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// PeerRun is one load run against one server in a peer comparison
// (scripts/bench-peers.sh).
type PeerRun struct {
	Server string `json:"server"`
	Round  int    `json:"round"`
	*Report
	// PeakRSSKB is the server's peak resident set (VmHWM) in KiB, 0 when
	// it was not measured.
	PeakRSSKB int64 `json:"peak_rss_kb"`
}

// PeerSummary aggregates the rounds of one server at one concurrency.
type PeerSummary struct {
	Server       string  `json:"server"`
	Clients      int     `json:"clients"`
	Rounds       int     `json:"rounds"`
	OrdersPerSec float64 `json:"orders_per_sec"` // median over rounds
	P99ms        float64 `json:"p99_ms"`         // median over rounds
	PeakRSSKB    int64   `json:"peak_rss_kb"`    // largest over rounds
	Orders       int     `json:"orders"`         // sum over rounds
	Failed       int     `json:"failed_orders"`  // sum over rounds
	Unfinished   int     `json:"unfinished"`     // sum over rounds
	// Stopped lists why rounds ended other than by duration or orders
	// (e.g. "max-time" when a server stopped answering).
	Stopped []string `json:"stopped,omitempty"`
	// StalledAfter and StalledRate describe cut-off rounds (median over
	// them): orders completed before the server stopped answering, and
	// their rate up to the last completed order.
	StalledAfter float64 `json:"stalled_after_orders,omitempty"`
	StalledRate  float64 `json:"stalled_orders_per_sec_before,omitempty"`
	// Ratio is hsmca's orders/s divided by this server's at the same
	// concurrency; 0 when either is missing or zero.
	Ratio float64 `json:"ratio_hsmca_over_this,omitempty"`
}

// PeerResults is the content of bench/peers.json.
type PeerResults struct {
	Generated time.Time     `json:"generated"`
	Command   string        `json:"command,omitempty"`
	Machine   string        `json:"machine,omitempty"`
	Summary   []PeerSummary `json:"summary"`
	Runs      []PeerRun     `json:"runs"`
}

// runFile matches the files bench-peers.sh writes: SERVER_cCLIENTS_rROUND.json.
var runFile = regexp.MustCompile(`^([a-z0-9-]+)_c([0-9]+)_r([0-9]+)\.json$`)

// LoadPeerRuns reads every SERVER_cN_rR.json report in dir, with the
// server's VmHWM from SERVER_cN_rR.rss (a number of KiB) when present.
func LoadPeerRuns(dir string) ([]PeerRun, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("loadtest: runs: %w", err)
	}
	var runs []PeerRun
	for _, e := range ents {
		m := runFile.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("loadtest: runs: %w", err)
		}
		r, err := ParsePeerRun(m[1], b)
		if err != nil {
			return nil, fmt.Errorf("loadtest: %s: %w", e.Name(), err)
		}
		r.Round, _ = strconv.Atoi(m[3])
		if n, _ := strconv.Atoi(m[2]); n != r.Clients {
			return nil, fmt.Errorf("loadtest: %s: report says %d clients", e.Name(), r.Clients)
		}
		if rss, err := os.ReadFile(filepath.Join(dir, strings.TrimSuffix(e.Name(), ".json")+".rss")); err == nil {
			r.PeakRSSKB, _ = strconv.ParseInt(strings.TrimSpace(string(rss)), 10, 64)
		}
		runs = append(runs, r)
	}
	if len(runs) == 0 {
		return nil, fmt.Errorf("loadtest: no SERVER_cN_rR.json reports in %s", dir)
	}
	return runs, nil
}

// ParsePeerRun decodes one --json report of server.
func ParsePeerRun(server string, b []byte) (PeerRun, error) {
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return PeerRun{}, fmt.Errorf("loadtest: report: %w", err)
	}
	if rep.Clients < 1 || rep.Orders < 0 || math.IsNaN(rep.OrdersPerSec) || math.IsInf(rep.OrdersPerSec, 0) || rep.OrdersPerSec < 0 {
		return PeerRun{}, fmt.Errorf("loadtest: report has no sensible clients, orders or orders_per_sec")
	}
	return PeerRun{Server: server, Report: &rep}, nil
}

// Summarize groups runs by server and concurrency (medians over rounds)
// and computes hsmca's ratio against every other server.
func Summarize(runs []PeerRun) []PeerSummary {
	type key struct {
		server  string
		clients int
	}
	groups := map[key][]PeerRun{}
	for _, r := range runs {
		k := key{r.Server, r.Clients}
		groups[k] = append(groups[k], r)
	}
	var out []PeerSummary
	for k, rs := range groups {
		s := PeerSummary{Server: k.server, Clients: k.clients, Rounds: len(rs)}
		var ops, p99, stallN, stallRate []float64
		for _, r := range rs {
			if r.Stopped == "max-time" || r.Stopped == "canceled" {
				stallN = append(stallN, float64(r.Orders))
				if r.LastOrderS > 0 {
					stallRate = append(stallRate, float64(r.Orders)/r.LastOrderS)
				} else {
					stallRate = append(stallRate, 0)
				}
			}
			ops = append(ops, r.OrdersPerSec)
			p99 = append(p99, r.P99ms)
			s.PeakRSSKB = max(s.PeakRSSKB, r.PeakRSSKB)
			s.Orders += r.Orders
			s.Failed += r.FailedOrders
			s.Unfinished += r.Unfinished
			if r.Stopped != "duration" && r.Stopped != "orders" && !slices.Contains(s.Stopped, r.Stopped) {
				s.Stopped = append(s.Stopped, r.Stopped)
			}
		}
		s.OrdersPerSec = median(ops)
		s.P99ms = median(p99)
		s.StalledAfter = median(stallN)
		s.StalledRate = math.Round(median(stallRate)*100) / 100
		out = append(out, s)
	}
	for i := range out {
		if out[i].Server == "hsmca" {
			continue
		}
		for _, h := range out {
			if h.Server == "hsmca" && h.Clients == out[i].Clients && out[i].OrdersPerSec > 0 {
				out[i].Ratio = math.Round(h.OrdersPerSec/out[i].OrdersPerSec*100) / 100
			}
		}
	}
	slices.SortFunc(out, func(a, b PeerSummary) int {
		if a.Clients != b.Clients {
			return a.Clients - b.Clients
		}
		return strings.Compare(a.Server, b.Server)
	})
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// WriteTable prints the summary as a table.
func WriteTable(w io.Writer, sum []PeerSummary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "server\tclients\trounds\torders/s\tp99 ms\tpeak RSS MiB\tfailed\tunfinished\thsmca/this\tnote\t")
	for _, s := range sum {
		ratio := "-"
		if s.Ratio > 0 {
			ratio = fmt.Sprintf("%.2fx", s.Ratio)
		}
		rss := "-"
		if s.PeakRSSKB > 0 {
			rss = fmt.Sprintf("%.1f", float64(s.PeakRSSKB)/1024)
		}
		note := ""
		if len(s.Stopped) > 0 {
			note = fmt.Sprintf("stopped by %s: stalled after %.0f orders (%.2f/s until then)", strings.Join(s.Stopped, ","), s.StalledAfter, s.StalledRate)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%.1f\t%s\t%d\t%d\t%s\t%s\t\n",
			s.Server, s.Clients, s.Rounds, s.OrdersPerSec, s.P99ms, rss, s.Failed, s.Unfinished, ratio, note)
	}
	return tw.Flush()
}

// WritePeerResults reads the runs in runsDir, writes bench/peers.json-style
// results to outJSON (0644; it holds no secret) and the chart to outSVG
// (either may be empty to skip it), and prints the table to w.
func WritePeerResults(runsDir, outJSON, outSVG, command, machine string, w io.Writer) error {
	runs, err := LoadPeerRuns(runsDir)
	if err != nil {
		return err
	}
	res := PeerResults{Generated: time.Now().UTC().Truncate(time.Second), Command: command, Machine: machine, Summary: Summarize(runs), Runs: runs}
	slices.SortFunc(res.Runs, func(a, b PeerRun) int {
		if a.Clients != b.Clients {
			return a.Clients - b.Clients
		}
		if a.Round != b.Round {
			return a.Round - b.Round
		}
		return strings.Compare(a.Server, b.Server)
	})
	if outJSON != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return fmt.Errorf("loadtest: results: %w", err)
		}
		if err := os.WriteFile(outJSON, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("loadtest: results: %w", err)
		}
	}
	if outSVG != "" {
		var sb strings.Builder
		if err := WriteChart(&sb, "ACME orders/s vs concurrent clients ("+machine+")", res.Summary); err != nil {
			return err
		}
		if err := os.WriteFile(outSVG, []byte(sb.String()), 0o644); err != nil {
			return fmt.Errorf("loadtest: chart: %w", err)
		}
	}
	return WriteTable(w, res.Summary)
}
