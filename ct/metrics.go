package ct

import "github.com/prometheus/client_golang/prometheus"

// metrics are a Submitter's Prometheus collectors, labelled by log name
// (a small, configured set).
type metrics struct {
	obtained *prometheus.CounterVec
	failed   *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics() *metrics {
	return &metrics{
		obtained: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hsmca_ct_scts_obtained_total",
			Help: "Verified SCTs obtained from each CT log.",
		}, []string{"log"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hsmca_ct_scts_failed_total",
			Help: "Submissions to a CT log that yielded no usable SCT, by reason.",
		}, []string{"log", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hsmca_ct_submission_duration_seconds",
			Help:    "Time to obtain an SCT from a CT log, retries included, by result (ok or fail).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2, 4, 8, 16, 32},
		}, []string{"log", "result"}),
	}
}

// Collectors returns the Submitter's metrics for registration with a
// Prometheus registry: hsmca_ct_scts_obtained_total{log},
// hsmca_ct_scts_failed_total{log,reason} and
// hsmca_ct_submission_duration_seconds{log,result}.
func (s *Submitter) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.metrics.obtained, s.metrics.failed, s.metrics.latency}
}
