package acme_test

import (
	"context"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"

	hacme "github.com/hsmca/hsmca/acme"
	"github.com/hsmca/hsmca/store"
)

// TestSealedCA: while the CA is sealed orders are created and validated,
// finalize answers 503 with the quorum message and Retry-After, and the
// same order finalizes once the CA is available.
func TestSealedCA(t *testing.T) {
	e := newEnv(t, nil)
	e.ca.sealed.Store(true)
	a := newRaw(t, e)
	a.register()
	orderURL, order := a.newOrder("sealed.example.test")
	a.solveHTTP(orderURL, order)
	csr := makeCSR(t, "sealed.example.test")
	r := a.finalize(order, csr)
	if r.code != http.StatusServiceUnavailable || r.problemType() == hacme.ProbServerInternal {
		t.Fatalf("sealed finalize: %d %s", r.code, r.body)
	}
	if !strings.Contains(string(r.body), "CA awaits quorum (1 of 2)") || r.hdr.Get("Retry-After") != "7" {
		t.Fatalf("sealed finalize: %s Retry-After=%q", r.body, r.hdr.Get("Retry-After"))
	}
	if o := decode[orderResp](t, a.post(orderURL, nil, signOpts{})); o.Status != "ready" {
		t.Fatalf("order is %s after a sealed finalize", o.Status)
	}
	e.ca.sealed.Store(false)
	r = a.finalize(order, csr)
	if r.code != http.StatusOK {
		t.Fatalf("finalize after unseal: %d %s", r.code, r.body)
	}
	o := a.waitOrder(orderURL, "valid")
	cr := a.post(o.Certificate, nil, signOpts{})
	if cr.code != 200 || cr.hdr.Get("Content-Type") != "application/pem-certificate-chain" {
		t.Fatalf("download: %d %v", cr.code, cr.hdr)
	}
	if !strings.Contains(strings.Join(cr.hdr.Values("Link"), ","), `/issuer>;rel="up"`) {
		t.Fatalf("no Link rel=up: %v", cr.hdr)
	}
	n := 0
	for rest := cr.body; ; n++ {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
	}
	if n != 2 {
		t.Fatalf("chain has %d certificates, want leaf + intermediate", n)
	}
	// Another account may not download it.
	b := newRaw(t, e)
	b.register()
	if r := b.post(o.Certificate, nil, signOpts{}); r.code != 403 {
		t.Fatalf("foreign download: %d", r.code)
	}
}

// TestRestart: accounts and orders survive a restart; an unused nonce from
// before works exactly once, a used one never; processing orders are
// failed and pending validations resume.
func TestRestart(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	a.register()
	orderURL, order := a.newOrder("restart.example.test")
	unused := a.nonce()
	used := a.nonce()
	if r := a.post(orderURL, nil, signOpts{nonce: used}); r.code != 200 {
		t.Fatalf("POST-as-GET: %d %s", r.code, r.body)
	}
	// A second order that we will leave "processing", and a third whose
	// challenge we leave in flight, by editing the store while stopped.
	procURL, _ := a.newOrder("proc.example.test")
	_, vorder := a.newOrder("val.example.test")
	e.stop()
	st, err := store.Open(e.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	po, err := st.GetOrder(ctx, lastPath(procURL))
	if err != nil {
		t.Fatal(err)
	}
	po.Status = hacme.StatusProcessing
	if err := st.UpdateOrder(ctx, po, hacme.WorkFinalize+po.ID, true); err != nil {
		t.Fatal(err)
	}
	vz, err := st.GetAuthz(ctx, lastPath(vorder.Authorizations[0]))
	if err != nil {
		t.Fatal(err)
	}
	vz.Challenges[0].Status = hacme.StatusProcessing // http-01
	if err := st.UpdateAuthz(ctx, vz, hacme.WorkValidate+vz.ID+"/http-01", true); err != nil {
		t.Fatal(err)
	}
	e.chal.setToken(vz.Token, a.keyAuth(vz.Token))
	st.Close()
	e.start()

	if r := a.post(orderURL, nil, signOpts{nonce: used}); r.problemType() != hacme.ProbBadNonce {
		t.Fatalf("used nonce after restart: %d %s", r.code, r.body)
	}
	r := a.post(orderURL, nil, signOpts{nonce: unused})
	if r.code != 200 {
		t.Fatalf("unused nonce after restart: %d %s", r.code, r.body)
	}
	if o := decode[orderResp](t, r); o.Status != "pending" || len(o.Authorizations) != len(order.Authorizations) {
		t.Fatalf("order after restart: %+v", o)
	}
	if r := a.post(orderURL, nil, signOpts{nonce: unused}); r.problemType() != hacme.ProbBadNonce {
		t.Fatalf("unused nonce reused: %d %s", r.code, r.body)
	}
	if o := decode[orderResp](t, a.post(procURL, nil, signOpts{})); o.Status != "invalid" || o.Error == nil {
		t.Fatalf("processing order after restart: %+v", o)
	}
	waitFor(t, "re-queued validation", func() bool {
		z := decode[authzResp](t, a.post(vorder.Authorizations[0], nil, signOpts{}))
		if z.Status == "invalid" {
			t.Fatalf("re-queued validation failed: %+v", z)
		}
		return z.Status == "valid"
	})
	// After a crash (no clean Close) every earlier nonce is refused.
	n := a.nonce()
	crashed := e.srv
	e.http.Close()
	e.st.Close() // the server is not closed: its window is not saved
	e.http, e.ln = nil, nil
	e.start()
	crashed.Close() // stops its workers; saving its window fails on the closed store
	if r := a.post(orderURL, nil, signOpts{nonce: n}); r.problemType() != hacme.ProbBadNonce {
		t.Fatalf("nonce from before a crash: %d %s", r.code, r.body)
	}
}

func lastPath(u string) string { return u[strings.LastIndex(u, "/")+1:] }
