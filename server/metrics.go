package server

import (
	"crypto"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hsmca/hsmca/ca"
)

// Metrics are the server's Prometheus collectors. Create them once with
// NewMetrics before the CA and the ACME server, because both report into
// them: the CLI wraps issuer signers with CountingSigner and the ACME
// adapter calls ObserveIssuance.
type Metrics struct {
	issuances *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	sigs      *prometheus.CounterVec
	requests  *prometheus.CounterVec
	sealed    prometheus.Gauge
	presented prometheus.Gauge
	threshold prometheus.Gauge
	pruned    *prometheus.CounterVec
}

// NewMetrics registers hsmca's collectors with reg (nil: a private
// registry, for tests).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		issuances: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hsmca_issuances_total",
			Help: "Certificate issuance attempts by source (admin, acme) and outcome (ok, sealed, rejected, error).",
		}, []string{"source", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hsmca_issuance_duration_seconds",
			Help:    "Time to issue one certificate (lint, record, sign, store) by source; successful issuances only.",
			Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5},
		}, []string{"source"}),
		sigs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hsmca_signatures_total",
			Help: "Signatures requested from the HSM module by issuer key and result (ok, sealed, error).",
		}, []string{"key", "result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hsmca_http_requests_total",
			Help: "HTTP requests by listener, route and status code.",
		}, []string{"listener", "route", "code"}),
		sealed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hsmca_sealed",
			Help: "1 while the issuing partition is sealed or collecting shares, 0 while active.",
		}),
		presented: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hsmca_quorum_presented_shares",
			Help: "Valid shares presented to the issuing partition (k of M).",
		}),
		threshold: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hsmca_quorum_threshold",
			Help: "Shares needed to activate the issuing partition (M).",
		}),
		pruned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hsmca_acme_pruned_total",
			Help: "ACME records deleted by the pruner after their retention, by kind (order, authz, cert).",
		}, []string{"kind"}),
	}
	for _, c := range []prometheus.Collector{m.issuances, m.latency, m.sigs, m.requests, m.sealed, m.presented, m.threshold, m.pruned} {
		if err := reg.Register(c); err != nil {
			return nil, errors.New("server: metrics: " + err.Error())
		}
	}
	m.sealed.Set(1)
	return m, nil
}

// ObservePruned adds n records of kind ("order", "authz" or "cert") that
// the ACME pruner deleted.
func (m *Metrics) ObservePruned(kind string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.pruned.WithLabelValues(kind).Add(float64(n))
}

// ObserveIssuance records one issuance attempt from source ("admin" or
// "acme") that took d and ended with err.
func (m *Metrics) ObserveIssuance(source string, d time.Duration, err error) {
	if m == nil {
		return
	}
	outcome := issuanceOutcome(err)
	m.issuances.WithLabelValues(source, outcome).Inc()
	if outcome == "ok" {
		m.latency.WithLabelValues(source).Observe(d.Seconds())
	}
}

func issuanceOutcome(err error) string {
	var (
		bad    *ca.ErrBadCSR
		policy *ca.ErrPolicy
		lint   *ca.ErrLint
	)
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ca.ErrSealed), errors.Is(err, errSealedNow):
		return "sealed"
	case errors.As(err, &bad), errors.As(err, &policy), errors.As(err, &lint),
		errors.Is(err, ca.ErrUnknownProfile), errors.Is(err, ca.ErrUnknownIssuer), errors.Is(err, ca.ErrBadRequest):
		return "rejected"
	}
	return "error"
}

// CountingSigner wraps an issuer key so that every signature is counted
// under key (the issuer name or key label) with its result.
func (m *Metrics) CountingSigner(key string, s crypto.Signer) crypto.Signer {
	if m == nil {
		return s
	}
	return &countingSigner{Signer: s, ok: m.sigs.WithLabelValues(key, "ok"),
		sealed: m.sigs.WithLabelValues(key, "sealed"), failed: m.sigs.WithLabelValues(key, "error")}
}

type countingSigner struct {
	crypto.Signer
	ok, sealed, failed prometheus.Counter
}

func (c *countingSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := c.Signer.Sign(r, digest, opts)
	switch {
	case err == nil:
		c.ok.Inc()
	case errors.Is(err, ca.ErrSealed):
		c.sealed.Inc()
	default:
		c.failed.Inc()
	}
	return sig, err
}

// SyncAudit forwards to the wrapped key (ca.AuditSyncer).
func (c *countingSigner) SyncAudit() error { return ca.SyncAudit(c.Signer) }

// setQuorum updates the seal-state gauges.
func (m *Metrics) setQuorum(q QuorumStatus) {
	if q.Active() {
		m.sealed.Set(0)
	} else {
		m.sealed.Set(1)
	}
	m.presented.Set(float64(q.Presented))
	m.threshold.Set(float64(q.Threshold))
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// instrument counts requests by listener, route and code. Routes are a
// fixed set of names so that the label's cardinality stays bounded.
func (m *Metrics) instrument(listener string, route func(*http.Request) string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		m.requests.WithLabelValues(listener, route(r), strconv.Itoa(code)).Inc()
	})
}
