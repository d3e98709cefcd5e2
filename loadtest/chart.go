package loadtest

import (
	"fmt"
	"html"
	"io"
	"math"
	"slices"
	"strings"
)

// chartColors are assigned to servers in name order.
var chartColors = []string{"#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"}

// WriteChart draws orders/s against concurrency, one line per server, as
// a self-contained SVG. Points of rounds cut off by the time cap (a server
// that stopped answering) are hollow and labelled. The x axis is categorical (the measured client
// counts, evenly spaced); the y axis starts at zero.
func WriteChart(w io.Writer, title string, sum []PeerSummary) error {
	const (
		width, height            = 720, 420
		left, right, top, bottom = 70, 150, 50, 60
	)
	var clients []int
	var servers []string
	maxY := 0.0
	for _, s := range sum {
		if !slices.Contains(clients, s.Clients) {
			clients = append(clients, s.Clients)
		}
		if !slices.Contains(servers, s.Server) {
			servers = append(servers, s.Server)
		}
		maxY = max(maxY, s.OrdersPerSec)
	}
	slices.Sort(clients)
	slices.Sort(servers)
	if len(clients) == 0 {
		return fmt.Errorf("loadtest: chart: no data")
	}
	yMax := niceCeil(maxY)
	plotW, plotH := float64(width-left-right), float64(height-top-bottom)
	x := func(c int) float64 {
		i := slices.Index(clients, c)
		if len(clients) == 1 {
			return float64(left) + plotW/2
		}
		return float64(left) + plotW*float64(i)/float64(len(clients)-1)
	}
	y := func(v float64) float64 { return float64(top) + plotH*(1-v/yMax) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(title))
	// Grid and y labels.
	for i := 0; i <= 5; i++ {
		v := yMax * float64(i) / 5
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(v), float64(left)+plotW, y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(v)+4, trimFloat(v))
	}
	for _, c := range clients {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%d</text>`+"\n", x(c), float64(top)+plotH+18, c)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">concurrent clients</text>`+"\n", float64(left)+plotW/2, height-14)
	fmt.Fprintf(&b, `<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle">orders/s (median of rounds)</text>`+"\n", float64(top)+plotH/2)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%.1f" stroke="#333"/>`+"\n", left, top, left, float64(top)+plotH)
	fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`+"\n", left, float64(top)+plotH, float64(left)+plotW, float64(top)+plotH)
	for i, srv := range servers {
		col := chartColors[i%len(chartColors)]
		var pts []string
		for _, s := range sum {
			if s.Server == srv {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.Clients), y(s.OrdersPerSec)))
			}
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		for _, s := range sum {
			if s.Server == srv {
				fill, note := col, ""
				if len(s.Stopped) > 0 {
					// A server that stopped answering: hollow point, labelled.
					fill = "white"
					note = fmt.Sprintf(" (stalled after %.0f orders)", s.StalledAfter)
					fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10" fill="%s">stalled after %.0f orders</text>`+"\n",
						x(s.Clients)+6, y(s.OrdersPerSec)-6, col, s.StalledAfter)
				}
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4" fill="%s" stroke="%s" stroke-width="2"><title>%s, %d clients: %.2f orders/s, p99 %.0f ms%s</title></circle>`+"\n",
					x(s.Clients), y(s.OrdersPerSec), fill, col, html.EscapeString(s.Server), s.Clients, s.OrdersPerSec, s.P99ms, note)
			}
		}
		ly := top + 10 + 20*i
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="14" height="4" fill="%s"/>`+"\n", width-right+16, ly, col)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", width-right+36, ly+6, html.EscapeString(srv))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten (at least 1).
func niceCeil(v float64) float64 {
	if v <= 1 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}
