// Command benchreport turns `go test -bench` output (several -count runs)
// into medians, ratios against baselines measured in the same run, a JSON
// file and a readable table. `make bench` runs it; see scripts/bench.sh.
//
// Besides ratio pairs, the pairs file may name a metric that a benchmark
// reports itself (b.ReportMetric), with a target: its median over the runs
// is checked against it. Such a line reads
//
//	metric BENCHMARK UNIT TARGET DESCRIPTION
//
// where TARGET is ">=X", "<=X" or "-".
//
// Usage: benchreport -pairs bench/pairs.txt -in raw.txt [-extra k=file.json ...] -json out.json
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// result is the median of one benchmark over its runs.
type result struct {
	Name      string    `json:"name"`
	Package   string    `json:"package"`
	Runs      int       `json:"runs"`
	MedianNs  float64   `json:"median_ns_per_op"`
	OpsPerSec float64   `json:"ops_per_sec"`
	AllNs     []float64 `json:"ns_per_op"`
	// Metrics holds every other "value unit" pair of the benchmark's
	// lines, by unit, one value per run.
	Metrics map[string][]float64 `json:"metrics,omitempty"`
}

// metric is a benchmark's own metric, its median over the runs and its
// target.
type metric struct {
	Benchmark string  `json:"benchmark"`
	Unit      string  `json:"unit"`
	Median    float64 `json:"median"`
	Runs      int     `json:"runs"`
	Target    string  `json:"target,omitempty"`
	Met       *bool   `json:"target_met,omitempty"`
	What      string  `json:"what"`
}

// ratio compares a benchmark to its baseline.
type ratio struct {
	Subject  string  `json:"subject"`
	Baseline string  `json:"baseline"`
	Ratio    float64 `json:"throughput_ratio"` // subject ops/s ÷ baseline ops/s
	Target   float64 `json:"target,omitempty"`
	Met      *bool   `json:"target_met,omitempty"`
	What     string  `json:"what"`
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+([0-9.]+) ns/op`)

func parse(r io.Reader) map[string]*result {
	out := map[string]*result{}
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "pkg: ") {
			pkg = strings.TrimPrefix(line, "pkg: ")
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		ns, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			continue
		}
		key := m[1]
		res := out[key]
		if res == nil {
			res = &result{Name: key, Package: pkg}
			out[key] = res
		}
		res.AllNs = append(res.AllNs, ns)
		// The fields after "N ns/op" are "value unit" pairs.
		f := strings.Fields(line)
		for i := 4; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil || f[i+1] == "ns/op" {
				continue
			}
			if res.Metrics == nil {
				res.Metrics = map[string][]float64{}
			}
			res.Metrics[f[i+1]] = append(res.Metrics[f[i+1]], v)
		}
	}
	for _, r := range out {
		r.Runs = len(r.AllNs)
		r.MedianNs = median(r.AllNs)
		if r.MedianNs > 0 {
			r.OpsPerSec = 1e9 / r.MedianNs
		}
	}
	return out
}

// median is the middle value of xs (the mean of the two middle ones for
// an even count); xs is not changed.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// checkMetric reads a "metric BENCHMARK UNIT TARGET DESCRIPTION" line's
// fields (without "metric") against results; ok is false when the run did
// not measure it.
func checkMetric(f []string, results map[string]*result) (m metric, ok bool, err error) {
	if len(f) < 4 {
		return metric{}, false, fmt.Errorf("pairs: bad metric line %q", strings.Join(f, " "))
	}
	m = metric{Benchmark: f[0], Unit: f[1], What: strings.Join(f[3:], " ")}
	r := results[f[0]]
	if r == nil || len(r.Metrics[f[1]]) == 0 {
		return m, false, nil
	}
	m.Median, m.Runs = median(r.Metrics[f[1]]), len(r.Metrics[f[1]])
	if t := f[2]; t != "-" {
		op, num := t[:min(2, len(t))], t[min(2, len(t)):]
		x, perr := strconv.ParseFloat(num, 64)
		if perr != nil || (op != ">=" && op != "<=") {
			return m, false, fmt.Errorf("pairs: metric target %q is not >=X, <=X or -", t)
		}
		met := m.Median >= x
		if op == "<=" {
			met = m.Median <= x
		}
		m.Target, m.Met = t, &met
	}
	return m, true, nil
}

func main() {
	pairsPath := flag.String("pairs", "bench/pairs.txt", "pairs file: SUBJECT BASELINE TARGET DESCRIPTION per line")
	in := flag.String("in", "-", "go test -bench output")
	jsonOut := flag.String("json", "bench/results.json", "JSON output")
	var extras multi
	flag.Var(&extras, "extra", "NAME=FILE.json to embed (repeatable), e.g. the loadtest result")
	flag.Parse()

	var r io.Reader = os.Stdin
	if *in != "-" {
		f, err := os.Open(*in)
		if err != nil {
			fatal(err)
		}
		defer f.Close()
		r = f
	}
	results := parse(r)
	var ratios []ratio
	var metrics []metric
	pf, err := os.ReadFile(*pairsPath)
	if err != nil {
		fatal(err)
	}
	for _, line := range strings.Split(string(pf), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if f[0] == "metric" {
			m, ok, err := checkMetric(f[1:], results)
			if err != nil {
				fatal(err)
			}
			if !ok {
				fmt.Fprintf(os.Stderr, "benchreport: metric %s of %s not measured in this run\n", m.Unit, m.Benchmark)
				continue
			}
			metrics = append(metrics, m)
			continue
		}
		if len(f) < 4 {
			fatal(fmt.Errorf("pairs: bad line %q", line))
		}
		s, b := results[f[0]], results[f[1]]
		if s == nil || b == nil || s.OpsPerSec == 0 || b.OpsPerSec == 0 {
			fmt.Fprintf(os.Stderr, "benchreport: pair %s / %s not measured in this run\n", f[0], f[1])
			continue
		}
		rt := ratio{Subject: f[0], Baseline: f[1], Ratio: s.OpsPerSec / b.OpsPerSec, What: strings.Join(f[3:], " ")}
		if t, err := strconv.ParseFloat(f[2], 64); err == nil && t > 0 {
			met := rt.Ratio >= t
			rt.Target, rt.Met = t, &met
		}
		ratios = append(ratios, rt)
	}
	names := make([]string, 0, len(results))
	for n := range results {
		names = append(names, n)
	}
	sort.Strings(names)
	doc := map[string]any{"ratios": ratios, "metrics": metrics}
	list := make([]*result, 0, len(names))
	for _, n := range names {
		list = append(list, results[n])
	}
	doc["benchmarks"] = list
	for _, e := range extras {
		k, path, ok := strings.Cut(e, "=")
		if !ok {
			fatal(fmt.Errorf("-extra wants NAME=FILE"))
		}
		b, err := os.ReadFile(path)
		if err != nil {
			fatal(err)
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			fatal(fmt.Errorf("%s: %w", path, err))
		}
		doc[k] = v
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		fatal(err)
	}
	if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
		fatal(err)
	}

	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BENCHMARK\tRUNS\tMEDIAN\tOPS/S")
	for _, n := range names {
		r := results[n]
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\n", n, r.Runs, human(r.MedianNs), r.OpsPerSec)
	}
	tw.Flush()
	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RATIO (ops/s vs same-run baseline)\tVALUE\tTARGET\tWHAT")
	for _, rt := range ratios {
		fmt.Fprintf(tw, "%s / %s\t%.3f\t%s\t%s\n", rt.Subject, rt.Baseline, rt.Ratio, verdict(fmt.Sprintf(">= %.2f", rt.Target), rt.Met), rt.What)
	}
	tw.Flush()
	if len(metrics) == 0 {
		return
	}
	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC (median over runs)\tVALUE\tTARGET\tWHAT")
	for _, m := range metrics {
		fmt.Fprintf(tw, "%s %s\t%.3f\t%s\t%s\n", m.Benchmark, m.Unit, m.Median, verdict(m.Target, m.Met), m.What)
	}
	tw.Flush()
}

// verdict is a table's TARGET column: "-" without a target, else the
// target and whether it was met.
func verdict(target string, met *bool) string {
	if met == nil {
		return "-"
	}
	if *met {
		return target + " (met)"
	}
	return target + " (NOT met)"
}

func human(ns float64) string {
	switch {
	case ns >= 1e6:
		return fmt.Sprintf("%.2f ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.1f µs", ns/1e3)
	}
	return fmt.Sprintf("%.0f ns", ns)
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchreport:", err)
	os.Exit(1)
}
