package ct

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ctgo "github.com/google/certificate-transparency-go"
	"github.com/google/certificate-transparency-go/client"
	"github.com/google/certificate-transparency-go/jsonclient"
	ctx509 "github.com/google/certificate-transparency-go/x509"
	"github.com/prometheus/client_golang/prometheus"
)

// maxFutureSCT is how far in the future (by our clock) an SCT's timestamp
// may lie. Browsers refuse SCTs from the future, so such an SCT is useless.
const maxFutureSCT = time.Minute

// Options are a Submitter's dependencies; every field may be left zero.
type Options struct {
	// HTTPClient talks to the logs. Nil means a client with a connection
	// pool sized for parallel submissions; the per-attempt timeout (see
	// Config.Timeout) bounds requests.
	HTTPClient *http.Client
	// Clock returns the current time, for checking SCT timestamps. Nil
	// means time.Now.
	Clock func() time.Time
	// Logger receives one warning per failed attempt. Nil discards.
	Logger *slog.Logger
	// Registerer, when set, gets the Submitter's metrics registered (see
	// Collectors).
	Registerer prometheus.Registerer
	// UserAgent is sent to the logs. Empty means "hsmca".
	UserAgent string
}

// Submitter obtains SCTs for precertificates from a fixed set of logs. It
// implements ca.SCTSource and is safe for concurrent use: each GetSCTs call
// submits independently, and concurrent calls share the HTTP connection
// pool, so parallel issuances pipeline their submissions.
type Submitter struct {
	cfg     Config
	logs    []*logClient
	clock   func() time.Time
	logger  *slog.Logger
	metrics *metrics
	// warnedTimeout is set once the Submitter has warned that an explicit
	// Timeout leaves no time to retry within a caller's deadline.
	warnedTimeout atomic.Bool
}

type logClient struct {
	Log
	client   *client.LogClient
	verifier *ctgo.SignatureVerifier
}

// New resolves the logs of cfg (reading key files and the log list),
// validates the policy against them and returns a Submitter.
func New(cfg Config, opts Options) (*Submitter, error) {
	logs, err := LoadLogs(cfg)
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if cfg.MinSCTs > len(logs) {
		return nil, fmt.Errorf("ct: min_scts is %d but only %d logs are configured", cfg.MinSCTs, len(logs))
	}
	if ops := countOperators(logs); cfg.MinOperators > ops {
		return nil, fmt.Errorf("ct: min_operators is %d but the configured logs have %d distinct operators", cfg.MinOperators, ops)
	}
	hc := opts.HTTPClient
	if hc == nil {
		tr, ok := http.DefaultTransport.(*http.Transport)
		if ok {
			tr = tr.Clone()
		} else {
			tr = &http.Transport{Proxy: http.ProxyFromEnvironment}
		}
		tr.MaxIdleConnsPerHost = 64
		hc = &http.Client{Transport: tr}
	}
	hc = limitClient(hc)
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ua := opts.UserAgent
	if ua == "" {
		ua = "hsmca"
	}
	s := &Submitter{cfg: cfg, clock: opts.Clock, logger: logger, metrics: newMetrics()}
	if s.clock == nil {
		s.clock = time.Now
	}
	for _, l := range logs {
		c, err := client.New(l.URL, hc, jsonclient.Options{Logger: slogPrintf{logger}, UserAgent: ua})
		if err != nil {
			return nil, fmt.Errorf("ct: log %s: %w", l.Name, err)
		}
		v, err := ctgo.NewSignatureVerifier(l.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("ct: log %s: %w", l.Name, err)
		}
		s.logs = append(s.logs, &logClient{Log: l, client: c, verifier: v})
	}
	if opts.Registerer != nil {
		for _, c := range s.Collectors() {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("ct: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Logs returns the logs the Submitter submits to, in order. Pass them to
// VerifyEmbedded to check certificates issued with this Submitter.
func (s *Submitter) Logs() []Log {
	out := make([]Log, len(s.logs))
	for i, l := range s.logs {
		out[i] = l.Log
	}
	return out
}

// result is what one log's submission produced.
type result struct {
	idx  int
	sct  []byte
	fail *LogError
	dur  time.Duration
}

// MinSCTs is how many verified SCTs the submitter collects before it stops
// (its policy's minimum); the CA refuses a profile that asks for more.
func (s *Submitter) MinSCTs() int { return s.cfg.MinSCTs }

// maxSCTExtensions bounds the CtExtensions of an SCT accepted from a log
// (RFC 6962 defines none; RFC 9162 §4.7's leaf_index extension is 8 bytes).
const maxSCTExtensions = 512

// GetSCTs submits the precertificate chain (chain[0] the precertificate
// DER, then its issuer chain) to every log with add-pre-chain (RFC 6962
// section 4.1), in parallel, and returns the TLS-serialised SCTs that
// verified against their log's key, in log order.
//
// It returns as soon as the policy (MinSCTs from MinOperators distinct
// operators) is met, cancelling slower submissions, or when every log has
// answered or failed, or at Config.Deadline or ctx's end. If the policy is
// not met the error is a *PolicyError (errors.Is(err, ErrPolicy)) that names
// each log's failure, and scts still holds the SCTs that did arrive.
func (s *Submitter) GetSCTs(ctx context.Context, chain [][]byte) ([][]byte, error) {
	entry, notAfter, err := precertEntry(chain)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Deadline)
	defer cancel()
	timeout := s.attemptTimeout(ctx)
	asn1Chain := make([]ctgo.ASN1Cert, len(chain))
	for i, c := range chain {
		asn1Chain[i] = ctgo.ASN1Cert{Data: c}
	}

	results := make(chan result, len(s.logs))
	var wg sync.WaitGroup
	var skipped []*LogError
	for i, l := range s.logs {
		if !l.accepts(notAfter) {
			skipped = append(skipped, &LogError{Log: l.Name, URL: l.URL, Reason: ReasonNotAccepted,
				Err: fmt.Errorf("does not accept certificates expiring at %s", notAfter.UTC().Format(time.RFC3339))})
			s.metrics.failed.WithLabelValues(l.Name, string(ReasonNotAccepted)).Inc()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			sct, fail := s.submit(ctx, l, timeout, asn1Chain, entry)
			results <- result{idx: i, sct: sct, fail: fail, dur: time.Since(start)}
		}()
	}
	go func() { wg.Wait(); close(results) }()

	got := make([][]byte, len(s.logs))
	gotOps := make(map[string]bool)
	n := 0
	var failures []*LogError
	met := false
	for r := range results {
		l := s.logs[r.idx]
		if r.fail == nil {
			got[r.idx] = r.sct
			n++
			gotOps[l.Operator] = true
			s.metrics.obtained.WithLabelValues(l.Name).Inc()
			s.metrics.latency.WithLabelValues(l.Name, "ok").Observe(r.dur.Seconds())
		} else if met && r.fail.Reason == ReasonCanceled {
			// Abandoned because the policy was already met: not a failure.
		} else {
			failures = append(failures, r.fail)
			s.metrics.failed.WithLabelValues(l.Name, string(r.fail.Reason)).Inc()
			s.metrics.latency.WithLabelValues(l.Name, "fail").Observe(r.dur.Seconds())
		}
		if !met && n >= s.cfg.MinSCTs && len(gotOps) >= s.cfg.MinOperators {
			met = true
			cancel()
		}
	}
	scts := make([][]byte, 0, n)
	for _, b := range got {
		if b != nil {
			scts = append(scts, b)
		}
	}
	if met {
		return scts, nil
	}
	failures = append(skipped, failures...)
	sortFailures(failures, s.logs)
	return scts, &PolicyError{SCTs: n, Operators: len(gotOps), MinSCTs: s.cfg.MinSCTs, MinOperators: s.cfg.MinOperators, Failures: failures}
}

// precertEntry parses the chain and builds the precertificate log entry
// (issuer key hash and TBSCertificate without poison) that SCTs sign.
func precertEntry(chain [][]byte) (*ctgo.MerkleTreeLeaf, time.Time, error) {
	if len(chain) < 2 {
		return nil, time.Time{}, errors.New("ct: the chain needs the precertificate and its issuer")
	}
	// The entry needs the precertificate and its issuer, and the issuer's
	// issuer only when the precertificate was signed by a precertificate
	// signing certificate (RFC 6962 section 3.1); the log checks the rest.
	n := 2
	var certs []*ctx509.Certificate
	for i := 0; i < n && i < len(chain); i++ {
		c, err := parseCT(chain[i])
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("ct: chain[%d]: %w", i, err)
		}
		certs = append(certs, c)
		if i == 1 && ctgo.IsPreIssuer(c) {
			n = 3
		}
	}
	if !certs[0].IsPrecertificate() {
		return nil, time.Time{}, errors.New("ct: chain[0] is not a precertificate (no critical poison extension)")
	}
	leaf, err := ctgo.MerkleTreeLeafFromChain(certs, ctgo.PrecertLogEntryType, 0)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("ct: precertificate entry: %w", err)
	}
	return leaf, certs[0].NotAfter, nil
}

// attemptTimeout returns the per-attempt timeout for a submission bounded
// by ctx (which has the Submitter's Deadline or an earlier one of the
// caller's). A zero Config.Timeout is derived from the time left: half of
// it when retries are on, so that a log that does not answer has time for
// another attempt, all of it otherwise, and never more than DefaultTimeout.
func (s *Submitter) attemptTimeout(ctx context.Context) time.Duration {
	left := s.cfg.Deadline
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	if s.cfg.Timeout > 0 {
		// Validate keeps Timeout below Deadline, but a caller's deadline
		// (a profile's ct.deadline) may be shorter still.
		if s.cfg.Retries > 0 && s.cfg.Timeout >= left && s.warnedTimeout.CompareAndSwap(false, true) {
			s.logger.Warn("ct: the per-attempt timeout is not shorter than the submission's deadline, so a log that times out is not retried; shorten ct.timeout or leave it unset",
				"timeout", s.cfg.Timeout, "deadline", left.Round(time.Millisecond))
		}
		return s.cfg.Timeout
	}
	if s.cfg.Retries > 0 {
		left /= 2
	}
	return max(min(left, DefaultTimeout), 0)
}

// submit runs one log's attempts, each bounded by timeout, and returns its
// verified, serialised SCT.
func (s *Submitter) submit(ctx context.Context, l *logClient, timeout time.Duration, chain []ctgo.ASN1Cert, entry *ctgo.MerkleTreeLeaf) ([]byte, *LogError) {
	backoff := s.cfg.Backoff
	var last *LogError
	for attempt := 1; attempt <= 1+s.cfg.Retries; attempt++ {
		sct, fail, retryAfter := s.attempt(ctx, l, timeout, chain, entry)
		if fail == nil {
			return sct, nil
		}
		fail.Attempts = attempt
		last = fail
		s.logger.Warn("ct: submission failed", "log", l.Name, "attempt", attempt, "reason", string(fail.Reason), "err", fail.Err)
		if !fail.Reason.retryable() || attempt > s.cfg.Retries {
			break
		}
		wait := max(backoff, retryAfter)
		backoff *= 2
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			last.Err = fmt.Errorf("%w; no time left to retry", last.Err)
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, s.ctxFailure(ctx, l, attempt, last)
		case <-t.C:
		}
	}
	return nil, last
}

// ctxFailure describes a submission cut short by the overall context.
func (s *Submitter) ctxFailure(ctx context.Context, l *logClient, attempts int, last *LogError) *LogError {
	f := &LogError{Log: l.Name, URL: l.URL, Attempts: attempts, Reason: ReasonCanceled, Err: ctx.Err()}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		f.Reason = ReasonDeadline
		f.Err = fmt.Errorf("overall deadline reached")
	}
	if last != nil {
		f.Err = fmt.Errorf("%w (last attempt: %v)", f.Err, last.Err)
	}
	return f
}

// attempt makes one add-pre-chain request, bounded by timeout. It returns
// the serialised SCT, or a failure and the log's Retry-After (zero if none).
func (s *Submitter) attempt(ctx context.Context, l *logClient, timeout time.Duration, chain []ctgo.ASN1Cert, entry *ctgo.MerkleTreeLeaf) ([]byte, *LogError, time.Duration) {
	fail := func(r Reason, err error) *LogError {
		return &LogError{Log: l.Name, URL: l.URL, Reason: r, Err: err}
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req := ctgo.AddChainRequest{Chain: make([][]byte, len(chain))}
	for i, c := range chain {
		req.Chain[i] = c.Data
	}
	var resp ctgo.AddChainResponse
	httpRsp, body, err := l.client.PostAndParse(actx, ctgo.AddPreChainPath, &req, &resp)
	if err != nil {
		if ctx.Err() != nil {
			return nil, s.ctxFailure(ctx, l, 0, nil), 0
		}
		if errors.Is(err, context.DeadlineExceeded) || actx.Err() != nil {
			return nil, fail(ReasonTimeout, fmt.Errorf("no answer within %s", timeout.Round(time.Millisecond))), 0
		}
		var rspErr jsonclient.RspError
		if errors.Is(err, errResponseTooLarge) {
			return nil, fail(ReasonBadResponse, errResponseTooLarge), 0
		}
		if errors.As(err, &rspErr) {
			return nil, fail(ReasonBadResponse, fmt.Errorf("malformed response: %v", rspErr.Err)), 0
		}
		return nil, fail(ReasonNetwork, err), 0
	}
	switch code := httpRsp.StatusCode; {
	case code == http.StatusOK:
	case code == http.StatusTooManyRequests:
		return nil, fail(ReasonHTTP429, httpError(httpRsp, body)), retryAfter(httpRsp, s.clock())
	case code >= 500:
		return nil, fail(ReasonHTTP5xx, httpError(httpRsp, body)), retryAfter(httpRsp, s.clock())
	default:
		return nil, fail(ReasonHTTP4xx, httpError(httpRsp, body)), 0
	}
	sct, err := resp.ToSignedCertificateTimestamp()
	if err != nil {
		return nil, fail(ReasonBadResponse, fmt.Errorf("malformed SCT: %v", err)), 0
	}
	if sct.SCTVersion != ctgo.V1 {
		return nil, fail(ReasonBadResponse, fmt.Errorf("SCT version %d, want 1", sct.SCTVersion)), 0
	}
	if sct.LogID.KeyID != l.ID {
		return nil, fail(ReasonBadSignature, fmt.Errorf("SCT names log ID %x..., want %s...", sct.LogID.KeyID[:4], shortID(l.ID))), 0
	}
	// SCT extensions go into every certificate as they are, and the SCT
	// list extension holds at most 64 KiB: a log sending large ones would
	// bloat certificates or make the list too long to embed at all.
	if len(sct.Extensions) > maxSCTExtensions {
		return nil, fail(ReasonBadResponse, fmt.Errorf("SCT extensions of %d bytes (at most %d accepted)", len(sct.Extensions), maxSCTExtensions)), 0
	}
	leaf := *entry
	te := *entry.TimestampedEntry
	te.Timestamp = sct.Timestamp
	te.Extensions = sct.Extensions
	leaf.TimestampedEntry = &te
	if err := l.verifier.VerifySCTSignature(*sct, ctgo.LogEntry{Leaf: leaf}); err != nil {
		return nil, fail(ReasonBadSignature, fmt.Errorf("SCT signature does not verify: %v", err)), 0
	}
	if ts := ctgo.TimestampToTime(sct.Timestamp); ts.After(s.clock().Add(maxFutureSCT)) {
		return nil, fail(ReasonBadResponse, fmt.Errorf("SCT timestamp %s is in the future", ts.UTC().Format(time.RFC3339))), 0
	}
	b, err := serializeSCT(sct)
	if err != nil {
		return nil, fail(ReasonBadResponse, err), 0
	}
	return b, nil, 0
}

// httpError describes a non-200 answer with a short, printable excerpt of
// the body (logs explain refusals there).
func httpError(r *http.Response, body []byte) error {
	const max = 200
	msg := strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, string(body))
	msg = strings.TrimSpace(msg)
	if len(msg) > max {
		msg = msg[:max] + "..."
	}
	if msg == "" {
		return fmt.Errorf("HTTP %d", r.StatusCode)
	}
	return fmt.Errorf("HTTP %d: %s", r.StatusCode, msg)
}

// retryAfter reads a Retry-After header (seconds or HTTP date).
func retryAfter(r *http.Response, now time.Time) time.Duration {
	v := r.Header.Get("Retry-After")
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs > 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

func countOperators(logs []Log) int {
	ops := make(map[string]bool)
	for _, l := range logs {
		ops[l.Operator] = true
	}
	return len(ops)
}

// slogPrintf adapts a slog.Logger to jsonclient's Printf logger.
type slogPrintf struct{ l *slog.Logger }

func (p slogPrintf) Printf(format string, args ...any) {
	p.l.Debug("ct: " + fmt.Sprintf(format, args...))
}
