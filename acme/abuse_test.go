package acme_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/http"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	hacme "github.com/hsmca/hsmca/acme"
)

func (c *rawClient) orderCount() int {
	c.t.Helper()
	l := decode[struct{ Orders []string }](c.t, c.post(c.kid+"/orders", nil, signOpts{}))
	return len(l.Orders)
}

// TestProtocolAbuse sends requests real clients never send; each must get
// the right problem type and change nothing.
func TestProtocolAbuse(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.MaxBodyBytes = 8 << 10 })
	a, b := newRaw(t, e), newRaw(t, e)
	a.register()
	b.register()
	orderURL, order := a.newOrder("abuse.example.test")
	newOrderBody := map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "n.example.test"}}}

	check := func(t *testing.T, r rawResp, code int, typ string) {
		t.Helper()
		if r.code != code || r.problemType() != typ {
			t.Fatalf("got %d %s, want %d %s", r.code, r.body, code, typ)
		}
		if ct := r.hdr.Get("Content-Type"); ct != "application/problem+json" {
			t.Fatalf("problem Content-Type %q", ct)
		}
		if r.hdr.Get("Replay-Nonce") == "" {
			t.Fatal("problem answer without a fresh Replay-Nonce")
		}
		if n := a.orderCount(); n != 1 {
			t.Fatalf("account A has %d orders, want 1", n)
		}
	}

	t.Run("replayed nonce", func(t *testing.T) {
		body := a.sign(e.base+"new-order", mustJSON(t, newOrderBody), signOpts{})
		r1 := a.postBody(e.base+"new-order", body)
		if r1.code != http.StatusCreated {
			t.Fatalf("first use: %d %s", r1.code, r1.body)
		}
		r2 := a.postBody(e.base+"new-order", body)
		// The replay must not create an order: A now has 2.
		if r2.code != 400 || r2.problemType() != hacme.ProbBadNonce || r2.hdr.Get("Replay-Nonce") == "" {
			t.Fatalf("replay: %d %s", r2.code, r2.body)
		}
		if n := a.orderCount(); n != 2 {
			t.Fatalf("orders after replay: %d, want 2", n)
		}
		// Put the count back to what the other cases expect by using a new account A.
	})
	// Fresh account for the remaining cases so that counts stay at 1.
	a = newRaw(t, e)
	a.register()
	orderURL, order = a.newOrder("abuse.example.test")

	t.Run("wrong url", func(t *testing.T) {
		r := a.post(e.base+"new-order", newOrderBody, signOpts{url: e.base + "new-account"})
		check(t, r, 403, hacme.ProbUnauthorized)
	})
	t.Run("unknown kid", func(t *testing.T) {
		r := a.post(e.base+"new-order", newOrderBody, signOpts{kid: e.base + "acct/doesnotexist"})
		check(t, r, 400, hacme.ProbAccountDoesNotExist)
	})
	t.Run("jwk where kid is required", func(t *testing.T) {
		r := a.post(e.base+"new-order", newOrderBody, signOpts{jwk: true})
		check(t, r, 400, hacme.ProbMalformed)
	})
	t.Run("kid on newAccount", func(t *testing.T) {
		r := a.post(e.base+"new-account", map[string]any{}, signOpts{})
		check(t, r, 400, hacme.ProbMalformed)
	})
	t.Run("unsupported algorithm", func(t *testing.T) {
		k, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		r := a.post(e.base+"new-order", newOrderBody, signOpts{key: k, alg: jose.ES512})
		check(t, r, 400, hacme.ProbBadSignatureAlgorithm)
		r = a.post(e.base+"new-order", newOrderBody, signOpts{key: k, alg: jose.ES512, jwk: true})
		check(t, r, 400, hacme.ProbBadSignatureAlgorithm)
	})
	t.Run("signed by another account", func(t *testing.T) {
		// A's kid, B's key.
		r := a.post(e.base+"new-order", newOrderBody, signOpts{key: b.key})
		check(t, r, 403, hacme.ProbUnauthorized)
		// B's request to A's account URL.
		r = b.post(a.kid, map[string]any{"contact": []string{"mailto:evil@example.test"}}, signOpts{})
		check(t, r, 403, hacme.ProbUnauthorized)
	})
	t.Run("another account's order", func(t *testing.T) {
		r := b.post(orderURL, nil, signOpts{})
		check(t, r, 403, hacme.ProbUnauthorized)
		r = b.post(order.Authorizations[0], nil, signOpts{})
		check(t, r, 403, hacme.ProbUnauthorized)
	})
	t.Run("finalize before ready", func(t *testing.T) {
		r := a.finalize(order, makeCSR(t, "abuse.example.test"))
		check(t, r, 403, hacme.ProbOrderNotReady)
		if o := decode[orderResp](t, a.post(orderURL, nil, signOpts{})); o.Status != "pending" {
			t.Fatalf("order is %s", o.Status)
		}
	})
	t.Run("oversized body", func(t *testing.T) {
		big := map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": strings.Repeat("a", 9000)}}}
		r := a.post(e.base+"new-order", big, signOpts{})
		check(t, r, 413, hacme.ProbMalformed)
	})
	t.Run("not a JWS", func(t *testing.T) {
		r := a.postBody(e.base+"new-order", []byte(`{"protected":"e30","payload":"","signature":"AA"}`))
		check(t, r, 400, hacme.ProbBadSignatureAlgorithm)
		r = a.postBody(e.base+"new-order", []byte(`not json`))
		check(t, r, 400, hacme.ProbMalformed)
	})
	t.Run("wrong content type", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, e.base+"new-order", bytes.NewReader(a.sign(e.base+"new-order", mustJSON(t, newOrderBody), signOpts{})))
		req.Header.Set("Content-Type", "application/json")
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 415 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("identifiers refused", func(t *testing.T) {
		r := a.post(e.base+"new-order", map[string]any{"identifiers": []map[string]string{
			{"type": "dns", "value": "x.denied.test"}}}, signOpts{})
		check(t, r, 400, hacme.ProbRejectedIdentifier)
		r = a.post(e.base+"new-order", map[string]any{"identifiers": []map[string]string{
			{"type": "dns", "value": "bad_name.example.test"}, {"type": "email", "value": "a@b.test"}}}, signOpts{})
		check(t, r, 400, hacme.ProbRejectedIdentifier)
		p := decode[struct {
			Subproblems []struct {
				Type       string
				Identifier struct{ Type, Value string }
			}
		}](t, r)
		if len(p.Subproblems) != 2 || p.Subproblems[1].Type != hacme.ProbUnsupportedIdentifier || p.Subproblems[0].Identifier.Value != "bad_name.example.test" {
			t.Fatalf("subproblems %+v", p.Subproblems)
		}
		r = a.post(e.base+"new-order", map[string]any{"profile": "nope", "identifiers": []map[string]string{
			{"type": "dns", "value": "ok.example.test"}}}, signOpts{})
		check(t, r, 400, hacme.ProbInvalidProfile)
	})
	t.Run("finalize with other names", func(t *testing.T) {
		a.solveHTTP(orderURL, order)
		r := a.finalize(order, makeCSR(t, "abuse.example.test", "extra.example.test"))
		check(t, r, 400, hacme.ProbBadCSR)
		r = a.finalize(order, makeCSR(t, "other.example.test"))
		check(t, r, 400, hacme.ProbBadCSR)
		// Signed with the account key itself.
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"abuse.example.test"}}, a.key)
		if err != nil {
			t.Fatal(err)
		}
		check(t, a.finalize(order, der), 400, hacme.ProbBadCSR)
		// The right names, but a signature that does not verify (the last
		// byte belongs to the signature's s): the CA does not check it
		// again, so this refusal is the only one.
		der = makeCSR(t, "abuse.example.test")
		der[len(der)-1] ^= 1
		if _, err := x509.ParseCertificateRequest(der); err != nil {
			t.Fatalf("tampered CSR no longer parses: %v", err)
		}
		r = a.finalize(order, der)
		check(t, r, 400, hacme.ProbBadCSR)
		if !strings.Contains(string(r.body), "signature") {
			t.Fatalf("tampered CSR: %s", r.body)
		}
		if o := decode[orderResp](t, a.post(orderURL, nil, signOpts{})); o.Status != "ready" {
			t.Fatalf("order is %s after bad CSRs", o.Status)
		}
	})
	t.Run("wildcard offers only dns-01", func(t *testing.T) {
		c := newRaw(t, e)
		c.register()
		_, o := c.newOrder("*.w.example.test")
		z := decode[authzResp](t, c.post(o.Authorizations[0], nil, signOpts{}))
		if len(z.Challenges) != 1 || z.Challenges[0].Type != "dns-01" {
			t.Fatalf("wildcard challenges %+v", z.Challenges)
		}
	})
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := jsonMarshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
