package acme_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"

	hacme "github.com/hsmca/hsmca/acme"
)

var errInjected = errors.New("test: injected store failure")

// flakyStore fails chosen writes of the real store the way a failed commit
// does: with an error, and nothing written. Each counter is the number of
// such writes still to fail; a negative one fails them all.
type flakyStore struct {
	hacme.Store
	validAuthz atomic.Int32 // UpdateAuthz storing a valid authorization
	finish     atomic.Int32 // FinishOrder
	// FinishOrder calls that commit and then report an error anyway (an
	// error after the commit), and writes that took a valid order back
	// out of valid.
	finishCommitted atomic.Int32
	leftValid       atomic.Int32
	invalidOrder    atomic.Int32 // UpdateOrder storing an invalid order
	// UpdateAuthz recording a failed attempt of the pool (a processing
	// challenge with 2 or more attempts made)
	failedAttempt atomic.Int32
}

func failNext(n *atomic.Int32) bool {
	for {
		v := n.Load()
		if v == 0 {
			return false
		}
		if v < 0 || n.CompareAndSwap(v, v-1) {
			return true
		}
	}
}

func (f *flakyStore) UpdateAuthz(ctx context.Context, a *hacme.Authz, work string, add bool) error {
	if a.Status == hacme.StatusValid && failNext(&f.validAuthz) {
		return errInjected
	}
	for _, c := range a.Challenges {
		if c.Status == hacme.StatusProcessing && c.Attempts >= 2 && failNext(&f.failedAttempt) {
			return errInjected
		}
	}
	return f.Store.UpdateAuthz(ctx, a, work, add)
}

func (f *flakyStore) FinishOrder(ctx context.Context, o *hacme.Order, c *hacme.Cert) error {
	if failNext(&f.finish) {
		return errInjected
	}
	if err := f.Store.FinishOrder(ctx, o, c); err != nil {
		return err
	}
	if failNext(&f.finishCommitted) {
		return errInjected
	}
	return nil
}

func (f *flakyStore) UpdateOrder(ctx context.Context, o *hacme.Order, work string, add bool) error {
	if o.Status != hacme.StatusValid {
		if cur, err := f.Store.GetOrder(ctx, o.ID); err == nil && cur.Status == hacme.StatusValid {
			f.leftValid.Add(1)
		}
	}
	if o.Status == hacme.StatusInvalid && failNext(&f.invalidOrder) {
		return errInjected
	}
	return f.Store.UpdateOrder(ctx, o, work, add)
}

// flakyEnv is an env whose store is wrapped in a flakyStore.
func flakyEnv(t *testing.T, mod func(*hacme.Config)) (*env, *flakyStore) {
	t.Helper()
	f := &flakyStore{}
	e := newEnvWrap(t, mod, hacme.Options{}, func(st hacme.Store) hacme.Store { f.Store = st; return f })
	return e, f
}

// A store error while a validation records its outcome does not leave the
// challenge processing until a restart: the write is retried in the
// background, and if the store keeps failing the challenge ends invalid
// with serverInternal. Either way the work record is gone.
func TestValidationStoreErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fails    int32 // writes of the valid authorization that fail
		want     string
		wantProb string
	}{
		// The inline attempt's write fails, so the pool validates again;
		// its write fails once more, then the retry stores it.
		{"store recovers", 2, "valid", ""},
		{"store keeps failing", -1, "invalid", hacme.ProbServerInternal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, f := flakyEnv(t, nil)
			f.validAuthz.Store(tc.fails)
			a := newRaw(t, e)
			a.register()
			_, o := a.newOrder("flaky.example.test")
			z := decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{}))
			for _, ch := range z.Challenges {
				if ch.Type != "http-01" {
					continue
				}
				e.chal.setToken(ch.Token, a.keyAuth(ch.Token))
				if r := a.post(ch.URL, map[string]any{}, signOpts{}); r.code != http.StatusOK {
					t.Fatalf("challenge: %d %s", r.code, r.body)
				}
			}
			type authz struct {
				Status     string
				Challenges []struct {
					Type  string
					Error *struct{ Type string }
				}
			}
			var got authz
			waitFor(t, "the validation to settle", func() bool {
				got = decode[authz](t, a.post(o.Authorizations[0], nil, signOpts{}))
				return got.Status != "pending"
			})
			if got.Status != tc.want {
				t.Fatalf("authorization %s, want %s", got.Status, tc.want)
			}
			for _, c := range got.Challenges {
				if c.Type == "http-01" && tc.wantProb != "" && (c.Error == nil || c.Error.Type != tc.wantProb) {
					t.Fatalf("challenge error %+v, want %s", c.Error, tc.wantProb)
				}
			}
			if w, err := e.st.ListWork(t.Context(), hacme.WorkValidate); err != nil || len(w) != 0 {
				t.Fatalf("validation work left: %v %v", w, err)
			}
		})
	}
}

// A store error while the pool records a failed attempt (the count that
// a restart resumes from) is retried like any other outcome: the next
// attempt follows once the count is stored, so the budget holds; if the
// store keeps failing the challenge ends invalid with serverInternal.
func TestValidationFailedAttemptStoreErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fails    int32 // writes of a failed attempt that fail
		attempts int32
		wantProb string
	}{
		{"store recovers", 2, 3, hacme.ProbUnauthorized},
		{"store keeps failing", -1, 2, hacme.ProbServerInternal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := &flakyStore{}
			f.failedAttempt.Store(tc.fails)
			tgt := &scriptedTarget{answer: func(int32, *http.Request) (int, error) { return http.StatusNotFound, nil }}
			e := newEnvWrap(t, func(c *hacme.Config) { c.ValidationRetries = 2 },
				hacme.Options{HTTPClient: &http.Client{Transport: tgt}},
				func(st hacme.Store) hacme.Store { f.Store = st; return f })
			a := newRaw(t, e)
			a.register()
			authz := startHTTP01(t, e, a, tgt, "flaky-attempt.example.test", nil)
			got := waitSettled(t, a, authz)
			if got.Status != "invalid" {
				t.Fatalf("authorization %s, want invalid", got.Status)
			}
			for _, c := range got.Challenges {
				if c.Type == "http-01" && (c.Error == nil || c.Error.Type != tc.wantProb) {
					t.Fatalf("challenge error %+v, want %s", c.Error, tc.wantProb)
				}
			}
			if n := tgt.n.Load(); n != tc.attempts {
				t.Fatalf("%d attempts, want %d", n, tc.attempts)
			}
			if w, err := e.st.ListWork(t.Context(), hacme.WorkValidate); err != nil || len(w) != 0 {
				t.Fatalf("validation work left: %v %v", w, err)
			}
		})
	}
}

// A store error while finalize records the certificate does not lose the
// certificate, issue a second one, or leave the order processing until a
// restart: the write is retried in the background; if the store keeps
// refusing the certificate the order ends invalid with serverInternal.
func TestFinalizeStoreErrors(t *testing.T) {
	for _, tc := range []struct {
		name         string
		finalizeWait int   // -1: always in the background; 0: the default
		finish       int32 // FinishOrder calls that fail
		invalidOrder int32 // writes of the invalid order that fail
		want         string
		wantProb     string
	}{
		{"in the background, store recovers", -1, 2, 0, "valid", ""},
		{"in the background, store keeps failing", -1, -1, 2, "invalid", hacme.ProbServerInternal},
		{"in the request, store recovers", 0, 2, 0, "valid", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, f := flakyEnv(t, func(c *hacme.Config) {
				if tc.finalizeWait < 0 {
					c.FinalizeWait = -1
				}
			})
			f.finish.Store(tc.finish)
			f.invalidOrder.Store(tc.invalidOrder)
			a := newRaw(t, e)
			a.register()
			u, o := a.newOrder("flaky.example.test")
			a.solveHTTP(u, o)
			r := a.finalize(o, makeCSR(t, "flaky.example.test"))
			if r.code != http.StatusOK {
				t.Fatalf("finalize: %d %s", r.code, r.body)
			}
			if st := decode[orderResp](t, r).Status; st != "processing" && st != "valid" {
				t.Fatalf("finalize answered %s", st)
			}
			var got orderResp
			waitFor(t, "the order to settle", func() bool {
				got = decode[orderResp](t, a.post(u, nil, signOpts{}))
				return got.Status == "valid" || got.Status == "invalid"
			})
			if got.Status != tc.want {
				t.Fatalf("order %s (%+v), want %s", got.Status, got.Error, tc.want)
			}
			if tc.wantProb != "" && (got.Error == nil || got.Error.Type != tc.wantProb) {
				t.Fatalf("order error %+v, want %s", got.Error, tc.wantProb)
			}
			if got.Status == "valid" {
				if r := a.post(got.Certificate, nil, signOpts{}); r.code != http.StatusOK {
					t.Fatalf("certificate: %d %s", r.code, r.body)
				}
			}
			if n := e.ca.issued.Load(); n != 1 {
				t.Fatalf("the CA issued %d certificates, want 1", n)
			}
			if w, err := e.st.ListWork(t.Context(), hacme.WorkFinalize); err != nil || len(w) != 0 {
				t.Fatalf("finalize work left: %v %v", w, err)
			}
		})
	}
}

// A FinishOrder that committed and then reported an error leaves the order
// valid: finalize notices that the certificate is stored and neither
// writes the order back to processing nor retries the write.
func TestFinalizeStoreErrorAfterCommit(t *testing.T) {
	e, f := flakyEnv(t, nil)
	f.finishCommitted.Store(1)
	a := newRaw(t, e)
	a.register()
	u, o := a.newOrder("committed.example.test")
	a.solveHTTP(u, o)
	r := a.finalize(o, makeCSR(t, "committed.example.test"))
	if r.code != http.StatusOK {
		t.Fatalf("finalize: %d %s", r.code, r.body)
	}
	if st := decode[orderResp](t, r).Status; st != "valid" {
		t.Fatalf("finalize answered %s, want valid: the certificate was stored", st)
	}
	if n := f.leftValid.Load(); n != 0 {
		t.Fatalf("%d order writes took the valid order out of valid", n)
	}
	got := decode[orderResp](t, a.post(u, nil, signOpts{}))
	if got.Status != "valid" || got.Certificate == "" {
		t.Fatalf("order %s, certificate %q; want valid with a certificate", got.Status, got.Certificate)
	}
	if n := e.ca.issued.Load(); n != 1 {
		t.Fatalf("the CA issued %d certificates, want 1", n)
	}
}
