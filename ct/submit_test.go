package ct

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hsmca/hsmca/ct/cttest"
)

// The CA declares this interface (package ca); Submitter must satisfy it.
var _ interface {
	GetSCTs(ctx context.Context, chain [][]byte) (scts [][]byte, err error)
} = (*Submitter)(nil)

// quick keeps retries fast; each test sets what it exercises. A test that
// sets its own Deadline and no Timeout gets the derived timeout.
func quick(c Config) Config {
	if c.Backoff == 0 {
		c.Backoff = time.Millisecond
	}
	if c.Deadline == 0 {
		c.Deadline = time.Minute
		if c.Timeout == 0 {
			c.Timeout = 30 * time.Second
		}
	}
	return c
}

func mustNew(t *testing.T, c Config) *Submitter {
	t.Helper()
	s, err := New(quick(c), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestGetSCTsAllLogs(t *testing.T) {
	pki := newTestPKI(t)
	a, b, c := cttest.NewFakeLog(t, cttest.OK), cttest.NewFakeLog(t, cttest.OK), cttest.NewFakeLog(t, cttest.OK)
	b.Ext = []byte{0, 0, 5, 0, 0, 0, 0, 42} // a static-ct-api leaf_index extension
	s := mustNew(t, Config{
		Logs:         []LogConfig{logCfg(a, "a", "op1"), logCfg(b, "b", "op2"), logCfg(c, "c", "op3")},
		MinSCTs:      3,
		MinOperators: 3,
	})
	iss := pki.precert(t, leafTemplate(t, "www.example.test"))
	scts, err := s.GetSCTs(context.Background(), iss.chain())
	if err != nil {
		t.Fatal(err)
	}
	if len(scts) != 3 {
		t.Fatalf("got %d SCTs, want 3", len(scts))
	}
	for i, f := range []*cttest.FakeLog{a, b, c} {
		sct, err := ParseSCT(scts[i])
		if err != nil {
			t.Fatal(err)
		}
		if sct.LogID.KeyID != f.ID {
			t.Errorf("SCT %d is from log %x, want %x (log order)", i, sct.LogID.KeyID[:4], f.ID[:4])
		}
		if !bytes.Equal(sct.Extensions, f.Ext) {
			t.Errorf("SCT %d extensions %x, want %x", i, sct.Extensions, f.Ext)
		}
	}

	final := iss.final(t, scts)
	if err := MatchesPrecert(iss.precert.Raw, final.Raw); err != nil {
		t.Fatalf("final certificate does not match precertificate: %v", err)
	}
	got, err := VerifyEmbedded(final, pki.inter, s.Logs())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].LogName != "a" || got[1].LogName != "b" || got[2].LogName != "c" {
		t.Fatalf("VerifyEmbedded = %+v", got)
	}
	for _, v := range got {
		if d := time.Since(v.Timestamp); d < -time.Minute || d > time.Hour {
			t.Errorf("SCT from %s has timestamp %s", v.LogName, v.Timestamp)
		}
	}
}

func TestGetSCTsFailures(t *testing.T) {
	pki := newTestPKI(t)
	type want struct {
		scts    int
		err     bool
		reasons map[string]Reason // failing log -> reason
		calls   map[string]int    // log -> requests it saw
	}
	cases := []struct {
		name  string
		modes []cttest.Mode // logs l0, l1, ... each its own operator unless ops set
		ops   []string
		cfg   Config
		fail5 int
		want  want
	}{
		{
			name:  "bad signature refused",
			modes: []cttest.Mode{cttest.OK, cttest.BadSig},
			cfg:   Config{MinSCTs: 2, MinOperators: 2},
			want:  want{scts: 1, err: true, reasons: map[string]Reason{"l1": ReasonBadSignature}, calls: map[string]int{"l1": 1}},
		},
		{
			name:  "wrong key refused",
			modes: []cttest.Mode{cttest.OK, cttest.WrongKey},
			cfg:   Config{MinSCTs: 2},
			want:  want{scts: 1, err: true, reasons: map[string]Reason{"l1": ReasonBadSignature}},
		},
		{
			name:  "500s retried then reported",
			modes: []cttest.Mode{cttest.OK, cttest.Fail500},
			fail5: -1,
			cfg:   Config{MinSCTs: 2, Retries: 2},
			want:  want{scts: 1, err: true, reasons: map[string]Reason{"l1": ReasonHTTP5xx}, calls: map[string]int{"l1": 3}},
		},
		{
			name:  "500s retried until success",
			modes: []cttest.Mode{cttest.OK, cttest.Fail500},
			fail5: 2,
			cfg:   Config{MinSCTs: 2, Retries: 2},
			want:  want{scts: 2, calls: map[string]int{"l1": 3}},
		},
		{
			name:  "no retries",
			modes: []cttest.Mode{cttest.Fail500},
			fail5: -1,
			cfg:   Config{Retries: -1},
			want:  want{scts: 0, err: true, reasons: map[string]Reason{"l0": ReasonHTTP5xx}, calls: map[string]int{"l0": 1}},
		},
		{
			name:  "refusal not retried",
			modes: []cttest.Mode{cttest.Refuse},
			cfg:   Config{Retries: 3},
			want:  want{scts: 0, err: true, reasons: map[string]Reason{"l0": ReasonHTTP4xx}, calls: map[string]int{"l0": 1}},
		},
		{
			name:  "timeout",
			modes: []cttest.Mode{cttest.OK, cttest.Hang},
			cfg:   Config{MinSCTs: 2, Timeout: time.Second, Retries: 1},
			want:  want{scts: 1, err: true, reasons: map[string]Reason{"l1": ReasonTimeout}, calls: map[string]int{"l1": 2}},
		},
		{
			name:  "overall deadline",
			modes: []cttest.Mode{cttest.Hang, cttest.Hang},
			cfg:   Config{Deadline: 300 * time.Millisecond, Retries: -1},
			want:  want{scts: 0, err: true, reasons: map[string]Reason{"l0": ReasonDeadline, "l1": ReasonDeadline}},
		},
		{
			name:  "two SCTs but one operator",
			modes: []cttest.Mode{cttest.OK, cttest.OK, cttest.Fail500},
			ops:   []string{"same", "same", "other"},
			fail5: -1,
			cfg:   Config{MinSCTs: 2, MinOperators: 2, Retries: -1},
			want:  want{scts: 2, err: true, reasons: map[string]Reason{"l2": ReasonHTTP5xx}},
		},
		{
			name:  "distinct operators met",
			modes: []cttest.Mode{cttest.OK, cttest.Fail500, cttest.OK},
			ops:   []string{"same", "same", "other"},
			fail5: -1,
			cfg:   Config{MinSCTs: 2, MinOperators: 2, Retries: -1},
			want:  want{scts: 2},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			logs := map[string]*cttest.FakeLog{}
			for i, m := range tc.modes {
				f := cttest.NewFakeLog(t, m)
				f.Fail500Count = tc.fail5
				name := "l" + string(rune('0'+i))
				op := name
				if tc.ops != nil {
					op = tc.ops[i]
				}
				logs[name] = f
				cfg.Logs = append(cfg.Logs, logCfg(f, name, op))
			}
			s := mustNew(t, cfg)
			scts, err := s.GetSCTs(context.Background(), pki.precert(t, leafTemplate(t, "a.example.test")).chain())
			if len(scts) != tc.want.scts {
				t.Errorf("got %d SCTs, want %d", len(scts), tc.want.scts)
			}
			if (err != nil) != tc.want.err {
				t.Fatalf("err = %v, want error: %v", err, tc.want.err)
			}
			if err != nil {
				if !errors.Is(err, ErrPolicy) {
					t.Errorf("errors.Is(err, ErrPolicy) = false for %v", err)
				}
				var pe *PolicyError
				if !errors.As(err, &pe) {
					t.Fatalf("err is %T, want *PolicyError", err)
				}
				if len(pe.Failures) != len(tc.want.reasons) {
					t.Errorf("failures = %v, want %v", pe.Failures, tc.want.reasons)
				}
				for _, f := range pe.Failures {
					if want, ok := tc.want.reasons[f.Log]; !ok || f.Reason != want {
						t.Errorf("log %s failed with %s (%v), want %q", f.Log, f.Reason, f.Err, want)
					}
					if !strings.Contains(err.Error(), "log "+f.Log+": ") {
						t.Errorf("error does not name log %s: %v", f.Log, err)
					}
				}
			}
			for name, n := range tc.want.calls {
				if got := logs[name].Calls(); got != n {
					t.Errorf("log %s saw %d requests, want %d", name, got, n)
				}
			}
		})
	}
}

// profileDeadline is a profile's CT deadline when it sets none
// (ca.CTConfig.Deadline); the CA passes it to GetSCTs as the context's.
const profileDeadline = 10 * time.Second

// TestGetSCTsRetriesHungLogWithDefaults checks that with the default
// timeout, retries and backoff, a log that does not answer its first
// request is asked again, and its answer arrives, within a profile's
// default deadline.
func TestGetSCTsRetriesHungLogWithDefaults(t *testing.T) {
	pki := newTestPKI(t)
	f := cttest.NewFakeLog(t, cttest.OK)
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			// The server notices the client giving up only once the body
			// is read.
			io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
			return
		}
		f.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s, err := New(Config{Logs: []LogConfig{{Name: "slow", URL: srv.URL, PublicKey: f.PublicKeyPEM()}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), profileDeadline)
	defer cancel()
	start := time.Now()
	scts, err := s.GetSCTs(ctx, pki.precert(t, leafTemplate(t, "retry.example.test")).chain())
	if err != nil {
		t.Fatalf("after %s: %v", time.Since(start).Round(time.Millisecond), err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("log saw %d requests, want 2 (one left hanging, one answered)", n)
	}
	if len(scts) != 1 {
		t.Fatalf("got %d SCTs, want 1", len(scts))
	}
	if sct, err := ParseSCT(scts[0]); err != nil || sct.LogID.KeyID != f.ID {
		t.Fatalf("SCT %v, %v: not from the log", sct, err)
	}
}

func TestAttemptTimeout(t *testing.T) {
	f := cttest.NewFakeLog(t, cttest.OK)
	cases := []struct {
		name     string
		cfg      Config
		deadline time.Duration // the caller's; 0 for none
		want     time.Duration
		warn     bool
	}{
		{"default, profile deadline", Config{}, profileDeadline, profileDeadline / 2, false},
		{"default, no caller deadline", Config{}, 0, DefaultTimeout, false},
		{"default, short deadline", Config{Deadline: 3 * time.Second}, 0, 1500 * time.Millisecond, false},
		{"default, no retries", Config{Retries: -1}, 4 * time.Second, 4 * time.Second, false},
		{"explicit", Config{Timeout: 3 * time.Second}, profileDeadline, 3 * time.Second, false},
		{"explicit, caller deadline too short", Config{Timeout: 20 * time.Second}, profileDeadline, 20 * time.Second, true},
		{"explicit, no retries", Config{Timeout: 20 * time.Second, Retries: -1}, profileDeadline, 20 * time.Second, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			cfg := tc.cfg
			cfg.Logs = []LogConfig{logCfg(f, "f", "")}
			s, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			ctx, cancel := context.WithTimeout(ctx, s.cfg.Deadline)
			defer cancel()
			// The derived timeout counts from now, so it may come out a
			// little short of the nominal value.
			if got := s.attemptTimeout(ctx); got > tc.want || got < tc.want-time.Second {
				t.Errorf("timeout %s, want %s", got, tc.want)
			}
			if warned := strings.Contains(logs.String(), "not retried"); warned != tc.warn {
				t.Errorf("warned: %v, want %v (log: %q)", warned, tc.warn, logs.String())
			}
		})
	}
}

// TestGetSCTsStopsWhenPolicyMet checks that a hung log does not hold up an
// issuance whose policy is already met, and that its request is cancelled.
func TestGetSCTsStopsWhenPolicyMet(t *testing.T) {
	pki := newTestPKI(t)
	ok, hung := cttest.NewFakeLog(t, cttest.OK), cttest.NewFakeLog(t, cttest.Hang)
	ok.After = hung
	s := mustNew(t, Config{Logs: []LogConfig{logCfg(hung, "hung", "x"), logCfg(ok, "ok", "y")}})
	scts, err := s.GetSCTs(context.Background(), pki.precert(t, leafTemplate(t, "b.example.test")).chain())
	if err != nil {
		t.Fatal(err)
	}
	if len(scts) != 1 {
		t.Fatalf("got %d SCTs, want 1", len(scts))
	}
	deadline := time.Now().Add(10 * time.Second)
	for hung.Canceled() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the hung log's request was not cancelled")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestGetSCTsCallerCancel(t *testing.T) {
	pki := newTestPKI(t)
	hung := cttest.NewFakeLog(t, cttest.Hang)
	s := mustNew(t, Config{Logs: []LogConfig{logCfg(hung, "hung", "")}})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		deadline := time.Now().Add(10 * time.Second)
		for hung.Calls() == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	_, err := s.GetSCTs(ctx, pki.precert(t, leafTemplate(t, "c.example.test")).chain())
	var pe *PolicyError
	if !errors.As(err, &pe) || len(pe.Failures) != 1 || pe.Failures[0].Reason != ReasonCanceled {
		t.Fatalf("err = %v, want one canceled failure", err)
	}
}

func TestGetSCTsBadInput(t *testing.T) {
	pki := newTestPKI(t)
	f := cttest.NewFakeLog(t, cttest.OK)
	s := mustNew(t, Config{Logs: []LogConfig{logCfg(f, "f", "")}})
	notPre := mustCreate(t, leafTemplate(t, "d.example.test"), pki.inter, newKey(t).Public(), pki.interKey)
	cases := []struct {
		name  string
		chain [][]byte
		want  string
	}{
		{"empty", nil, "needs the precertificate and its issuer"},
		{"no issuer", [][]byte{pki.precert(t, leafTemplate(t, "e.example.test")).precert.Raw}, "needs the precertificate and its issuer"},
		{"not a precertificate", [][]byte{notPre.Raw, pki.inter.Raw}, "not a precertificate"},
		{"garbage", [][]byte{{1, 2, 3}, pki.inter.Raw}, "chain[0]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.GetSCTs(context.Background(), tc.chain)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "ct: ") {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if n := f.Calls(); n != 0 {
		t.Errorf("log saw %d requests for bad input", n)
	}
}

func TestGetSCTsTemporalInterval(t *testing.T) {
	pki := newTestPKI(t)
	f := cttest.NewFakeLog(t, cttest.OK)
	end := time.Now().Add(24 * time.Hour) // the leaf expires in 90 days
	list := logListJSON(t, []listEntry{{op: "op", desc: "shard-2026", url: f.URL, pub: f.Key.Public(), start: end.Add(-48 * time.Hour), end: end}})
	path := t.TempDir() + "/list.json"
	writeFile(t, path, list)
	s := mustNew(t, Config{LogList: path})
	_, err := s.GetSCTs(context.Background(), pki.precert(t, leafTemplate(t, "f.example.test")).chain())
	var pe *PolicyError
	if !errors.As(err, &pe) || len(pe.Failures) != 1 || pe.Failures[0].Reason != ReasonNotAccepted || pe.Failures[0].Log != "shard-2026" {
		t.Fatalf("err = %v, want shard-2026 not_accepted", err)
	}
	if f.Calls() != 0 {
		t.Error("a log outside its temporal interval was submitted to")
	}
}

func TestMetrics(t *testing.T) {
	pki := newTestPKI(t)
	good, bad := cttest.NewFakeLog(t, cttest.OK), cttest.NewFakeLog(t, cttest.BadSig)
	reg := prometheus.NewPedanticRegistry()
	s, err := New(quick(Config{Logs: []LogConfig{logCfg(good, "good", "a"), logCfg(bad, "bad", "b")}, MinSCTs: 2}),
		Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := s.GetSCTs(context.Background(), pki.precert(t, leafTemplate(t, "m.example.test")).chain()); err == nil {
			t.Fatal("policy met with a bad log")
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName() + labels(m)
			switch {
			case m.Counter != nil:
				got[key] = m.Counter.GetValue()
			case m.Histogram != nil:
				got[key] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	want := map[string]float64{
		"hsmca_ct_scts_obtained_total{log=good}":                    2,
		"hsmca_ct_scts_failed_total{log=bad,reason=bad_signature}":  2,
		"hsmca_ct_submission_duration_seconds{log=good,result=ok}":  2,
		"hsmca_ct_submission_duration_seconds{log=bad,result=fail}": 2,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	if _, err := New(quick(Config{Logs: []LogConfig{logCfg(good, "good", "a")}}), Options{Registerer: reg}); err == nil {
		t.Error("registering the metrics twice in one registry succeeded")
	}
}

func labels(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func TestGetSCTsRetryAfterAndResponses(t *testing.T) {
	pki := newTestPKI(t)
	chain := func() [][]byte { return pki.precert(t, leafTemplate(t, "r.example.test")).chain() }
	failure := func(t *testing.T, err error) *LogError {
		t.Helper()
		var pe *PolicyError
		if !errors.As(err, &pe) || len(pe.Failures) != 1 {
			t.Fatalf("err = %v, want one failure", err)
		}
		return pe.Failures[0]
	}

	t.Run("429 honoured then success", func(t *testing.T) {
		f := cttest.NewFakeLog(t, cttest.TooMany)
		f.RetryAfter = "1"
		s := mustNew(t, Config{Logs: []LogConfig{logCfg(f, "f", "")}})
		scts, err := s.GetSCTs(context.Background(), chain())
		if err != nil || len(scts) != 1 || f.Calls() != 2 {
			t.Fatalf("scts %d, err %v, calls %d", len(scts), err, f.Calls())
		}
	})
	t.Run("Retry-After beyond the deadline", func(t *testing.T) {
		f := cttest.NewFakeLog(t, cttest.TooMany)
		f.RetryAfter = "3600"
		s := mustNew(t, Config{Logs: []LogConfig{logCfg(f, "f", "")}, Deadline: 10 * time.Second})
		_, err := s.GetSCTs(context.Background(), chain())
		fl := failure(t, err)
		if fl.Reason != ReasonHTTP429 || !strings.Contains(fl.Err.Error(), "no time left to retry") || f.Calls() != 1 {
			t.Fatalf("failure %v, calls %d", fl, f.Calls())
		}
	})
	t.Run("garbage answer", func(t *testing.T) {
		f := cttest.NewFakeLog(t, cttest.Garbage)
		s := mustNew(t, Config{Logs: []LogConfig{logCfg(f, "f", "")}, Retries: 3})
		_, err := s.GetSCTs(context.Background(), chain())
		if fl := failure(t, err); fl.Reason != ReasonBadResponse || f.Calls() != 1 {
			t.Fatalf("failure %v, calls %d", fl, f.Calls())
		}
	})
	t.Run("oversized answer", func(t *testing.T) {
		f := cttest.NewFakeLog(t, cttest.Huge)
		s := mustNew(t, Config{Logs: []LogConfig{logCfg(f, "f", "")}, Retries: 3})
		_, err := s.GetSCTs(context.Background(), chain())
		if fl := failure(t, err); fl.Reason != ReasonBadResponse || !strings.Contains(fl.Err.Error(), "64 KiB") || f.Calls() != 1 {
			t.Fatalf("failure %v, calls %d", fl, f.Calls())
		}
	})
	t.Run("SCT from the future", func(t *testing.T) {
		f := cttest.NewFakeLog(t, cttest.OK)
		s, err := New(quick(Config{Logs: []LogConfig{logCfg(f, "f", "")}}), Options{Clock: func() time.Time { return time.Now().Add(-time.Hour) }})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.GetSCTs(context.Background(), chain())
		if fl := failure(t, err); fl.Reason != ReasonBadResponse || !strings.Contains(fl.Err.Error(), "in the future") {
			t.Fatalf("failure %v", fl)
		}
	})
	t.Run("connection refused", func(t *testing.T) {
		f := cttest.NewFakeLog(t, cttest.OK)
		cfg := logCfg(f, "f", "")
		f.Close()
		s := mustNew(t, Config{Logs: []LogConfig{cfg}, Retries: 1})
		_, err := s.GetSCTs(context.Background(), chain())
		if fl := failure(t, err); fl.Reason != ReasonNetwork || fl.Attempts != 2 {
			t.Fatalf("failure %v", fl)
		}
	})
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	cases := map[string]time.Duration{
		"":                              0,
		"7":                             7 * time.Second,
		"-3":                            0,
		"soon":                          0,
		"Thu, 26 Nov 2026 12:00:30 GMT": 30 * time.Second,
		"Thu, 26 Nov 2026 11:00:00 GMT": 0,
	}
	for v, want := range cases {
		r := &http.Response{Header: http.Header{}}
		if v != "" {
			r.Header.Set("Retry-After", v)
		}
		if got := retryAfter(r, now); got != want {
			t.Errorf("Retry-After %q = %v, want %v", v, got, want)
		}
	}
}

// An SCT whose extensions are larger than any log has a use for is refused
// like a bad response: it would go into every certificate as it is, and a
// few of them make the SCT list too long to embed at all.
func TestGetSCTsRefusesLargeExtensions(t *testing.T) {
	pki := newTestPKI(t)
	big := cttest.NewFakeLog(t, cttest.OK)
	big.Ext = bytes.Repeat([]byte{0xee}, 4096)
	small := cttest.NewFakeLog(t, cttest.OK)
	small.Ext = []byte{0, 1, 2, 3, 4, 5, 6, 7}
	s := mustNew(t, Config{MinSCTs: 2, Retries: -1, Logs: []LogConfig{logCfg(big, "big", "a"), logCfg(small, "small", "b")}})
	scts, err := s.GetSCTs(context.Background(), pki.precert(t, leafTemplate(t, "x.example.test")).chain())
	if len(scts) != 1 {
		t.Fatalf("got %d SCTs, want only the small log's", len(scts))
	}
	var pe *PolicyError
	if !errors.As(err, &pe) || len(pe.Failures) != 1 || pe.Failures[0].Log != "big" || pe.Failures[0].Reason != ReasonBadResponse {
		t.Fatalf("err %v, want the big log's SCT refused as a bad response", err)
	}
}
