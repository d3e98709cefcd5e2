package acme_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	hacme "github.com/hsmca/hsmca/acme"
)

func TestRateLimits(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e := newEnvOpts(t, func(c *hacme.Config) {
		c.RateLimits = hacme.RateLimits{AccountRate: 1, AccountBurst: 3, IPRate: 1, IPBurst: 1000, NewOrderRate: -1}
	}, hacme.Options{Clock: clock})
	a := newRaw(t, e)
	a.register()
	limited := 0
	for i := 0; i < 5; i++ {
		r := a.post(a.kid, nil, signOpts{})
		if r.code == http.StatusTooManyRequests {
			if r.problemType() != hacme.ProbRateLimited || r.hdr.Get("Retry-After") == "" {
				t.Fatalf("limited answer: %d %s %v", r.code, r.body, r.hdr)
			}
			// A turned-away request mints no nonce (it would advance the
			// nonce window for everyone).
			if n := r.hdr.Get("Replay-Nonce"); n != "" {
				t.Fatalf("limited answer carries a Replay-Nonce %q", n)
			}
			limited++
		}
	}
	if limited != 2 {
		t.Fatalf("%d of 5 requests limited, want 2 (burst 3, frozen clock)", limited)
	}
	// Time passes: the bucket refills.
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	if r := a.post(a.kid, nil, signOpts{}); r.code != 200 {
		t.Fatalf("after refill: %d %s", r.code, r.body)
	}
	// Another account is not affected.
	b := newRaw(t, e)
	b.register()
	if r := b.post(b.kid, nil, signOpts{}); r.code != 200 {
		t.Fatalf("other account: %d %s", r.code, r.body)
	}
}

func TestIPRateLimit(t *testing.T) {
	e := newEnvOpts(t, func(c *hacme.Config) {
		c.RateLimits = hacme.RateLimits{IPRate: 0.001, IPBurst: 3}
	}, hacme.Options{Clock: func() time.Time { return time.Unix(1e9, 0) }})
	codes := []int{}
	for i := 0; i < 4; i++ {
		resp, err := e.client.Get(e.dir)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	if codes[2] != 200 || codes[3] != http.StatusTooManyRequests {
		t.Fatalf("codes %v", codes)
	}
	// new-nonce, limited too, answers without minting a nonce.
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		req, _ := http.NewRequest(method, e.base+"new-nonce", nil)
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Replay-Nonce") != "" {
			t.Fatalf("%s new-nonce over the limit: %d, Replay-Nonce %q; want 429 and none", method, resp.StatusCode, resp.Header.Get("Replay-Nonce"))
		}
	}
}

func TestRevokeByCertificateKey(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	a.register()
	u, o := a.newOrder("rk.example.test")
	a.solveHTTP(u, o)
	csr, certKey := makeCSRKey(t, "rk.example.test")
	if r := a.finalize(o, csr); r.code != 200 {
		t.Fatalf("finalize: %d %s", r.code, r.body)
	}
	o = a.waitOrder(u, "valid")
	blk, _ := pem.Decode(a.post(o.Certificate, nil, signOpts{}).body)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"certificate": b64(leaf.Raw), "reason": 1}
	// Another account may not revoke it.
	b := newRaw(t, e)
	b.register()
	if r := b.post(e.base+"revoke-cert", body, signOpts{}); r.code != 403 || r.problemType() != hacme.ProbUnauthorized {
		t.Fatalf("foreign revoke: %d %s", r.code, r.body)
	}
	// A jwk that is not the certificate key may not either.
	if r := b.post(e.base+"revoke-cert", body, signOpts{jwk: true}); r.code != 403 {
		t.Fatalf("revoke with a wrong jwk: %d %s", r.code, r.body)
	}
	// Bad reason.
	if r := a.post(e.base+"revoke-cert", map[string]any{"certificate": b64(leaf.Raw), "reason": 7}, signOpts{}); r.problemType() != hacme.ProbBadRevocationReason {
		t.Fatalf("reason 7: %d %s", r.code, r.body)
	}
	if e.ca.isRevoked(leaf.SerialNumber.Text(16)) {
		t.Fatal("revoked by a refused request")
	}
	// The certificate key, with no account at all.
	ck := &rawClient{t: t, e: e, key: certKey, alg: jose.ES256}
	if r := ck.post(e.base+"revoke-cert", body, signOpts{jwk: true}); r.code != 200 {
		t.Fatalf("revoke by certificate key: %d %s", r.code, r.body)
	}
	if !e.ca.isRevoked(leaf.SerialNumber.Text(16)) {
		t.Fatal("CA not asked to revoke")
	}
	if r := a.post(e.base+"revoke-cert", body, signOpts{}); r.problemType() != hacme.ProbAlreadyRevoked {
		t.Fatalf("second revoke: %d %s", r.code, r.body)
	}
}

func TestAuthzReuseAndDeactivation(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	a.register()
	u, o := a.newOrder("reuse.example.test")
	a.solveHTTP(u, o)
	_, o2 := a.newOrder("reuse.example.test")
	if o2.Status != "ready" || o2.Authorizations[0] != o.Authorizations[0] {
		t.Fatalf("valid authorization not reused: %+v", o2)
	}
	// Another account does not get it.
	b := newRaw(t, e)
	b.register()
	if _, o3 := b.newOrder("reuse.example.test"); o3.Status != "pending" || o3.Authorizations[0] == o.Authorizations[0] {
		t.Fatalf("authorization shared across accounts: %+v", o3)
	}
	r := a.post(o.Authorizations[0], map[string]string{"status": "deactivated"}, signOpts{})
	if z := decode[authzResp](t, r); r.code != 200 || z.Status != "deactivated" {
		t.Fatalf("deactivate: %d %s", r.code, r.body)
	}
	if o := decode[orderResp](t, a.post(u, nil, signOpts{})); o.Status != "invalid" {
		t.Fatalf("order with a deactivated authorization is %s", o.Status)
	}
	if _, o4 := a.newOrder("reuse.example.test"); o4.Status != "pending" || o4.Authorizations[0] == o.Authorizations[0] {
		t.Fatalf("deactivated authorization reused: %+v", o4)
	}
}

func TestAccountUpdate(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	a.register()
	r := a.post(a.kid, map[string]any{"contact": []string{"mailto:new@example.test"}}, signOpts{})
	acct := decode[struct {
		Status  string
		Contact []string
	}](t, r)
	if r.code != 200 || len(acct.Contact) != 1 || acct.Contact[0] != "mailto:new@example.test" {
		t.Fatalf("update: %d %s", r.code, r.body)
	}
	if r := a.post(a.kid, map[string]any{"contact": []string{"tel:+1555"}}, signOpts{}); r.problemType() != hacme.ProbUnsupportedContact {
		t.Fatalf("tel contact: %d %s", r.code, r.body)
	}
	if r := a.post(a.kid, map[string]any{"contact": []string{"mailto:not an address"}}, signOpts{}); r.problemType() != hacme.ProbInvalidContact {
		t.Fatalf("bad contact: %d %s", r.code, r.body)
	}
	// onlyReturnExisting with the same key finds it; with another, not.
	if r := a.post(e.base+"new-account", map[string]any{"onlyReturnExisting": true}, signOpts{jwk: true}); r.code != 200 || r.hdr.Get("Location") != a.kid {
		t.Fatalf("onlyReturnExisting: %d %s", r.code, r.body)
	}
	n := newRaw(t, e)
	if r := n.post(e.base+"new-account", map[string]any{"onlyReturnExisting": true}, signOpts{jwk: true}); r.problemType() != hacme.ProbAccountDoesNotExist {
		t.Fatalf("onlyReturnExisting for a new key: %d %s", r.code, r.body)
	}
	if r := a.post(a.kid, map[string]any{"status": "deactivated"}, signOpts{}); r.code != 200 {
		t.Fatalf("deactivate: %d %s", r.code, r.body)
	}
	if r := a.post(a.kid, nil, signOpts{}); r.problemType() != hacme.ProbUnauthorized {
		t.Fatalf("deactivated account used: %d %s", r.code, r.body)
	}
}

func TestValidationFailure(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	a.register()
	for _, typ := range []string{"http-01", "dns-01", "tls-alpn-01"} {
		t.Run(typ, func(t *testing.T) {
			u, o := a.newOrder("fail-" + typ + ".example.test")
			z := decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{}))
			for _, ch := range z.Challenges {
				if ch.Type != typ {
					continue
				}
				if typ == "http-01" {
					e.chal.setToken(ch.Token, "wrong")
				}
				r := a.post(ch.URL, map[string]any{}, signOpts{})
				if r.code != 200 {
					t.Fatalf("challenge: %d %s", r.code, r.body)
				}
			}
			var zr struct {
				Status     string
				Challenges []struct {
					Type  string
					Error *struct{ Type string }
				}
			}
			waitFor(t, "invalid authorization", func() bool {
				zr = decode[struct {
					Status     string
					Challenges []struct {
						Type  string
						Error *struct{ Type string }
					}
				}](t, a.post(o.Authorizations[0], nil, signOpts{}))
				return zr.Status != "pending"
			})
			if zr.Status != "invalid" {
				t.Fatalf("authz %s", zr.Status)
			}
			var errType string
			for _, c := range zr.Challenges {
				if c.Type == typ && c.Error != nil {
					errType = c.Error.Type
				}
			}
			want := map[string]string{"http-01": hacme.ProbIncorrectResponse, "dns-01": hacme.ProbDNS, "tls-alpn-01": hacme.ProbTLS}[typ]
			if errType != want {
				t.Fatalf("challenge error %q, want %q", errType, want)
			}
			if o := decode[orderResp](t, a.post(u, nil, signOpts{})); o.Status != "invalid" {
				t.Fatalf("order %s", o.Status)
			}
		})
	}
}

// TestSlowCA: a CA slower than FinalizeWait gets the order stored as
// processing with Retry-After; it becomes valid in the background.
func TestSlowCA(t *testing.T) {
	e := newEnvOpts(t, func(c *hacme.Config) { c.FinalizeWait = 50 * time.Millisecond }, hacme.Options{})
	e.ca.hold = make(chan struct{})
	a := newRaw(t, e)
	a.register()
	u, o := a.newOrder("slow.example.test")
	a.solveHTTP(u, o)
	r := a.finalize(o, makeCSR(t, "slow.example.test"))
	if r.code != 200 || decode[orderResp](t, r).Status != "processing" || r.hdr.Get("Retry-After") == "" {
		t.Fatalf("slow finalize: %d %s %v", r.code, r.body, r.hdr)
	}
	po := decode[orderResp](t, a.post(u, nil, signOpts{}))
	if po.Status != "processing" {
		t.Fatalf("order %s", po.Status)
	}
	if w, _ := e.st.ListWork(t.Context(), hacme.WorkFinalize); len(w) != 1 {
		t.Fatalf("processing order has no work record: %v", w)
	}
	// A second finalize is refused while processing.
	if r := a.finalize(o, makeCSR(t, "slow.example.test")); r.problemType() != hacme.ProbOrderNotReady {
		t.Fatalf("second finalize: %d %s", r.code, r.body)
	}
	close(e.ca.hold)
	a.waitOrder(u, "valid")
	if w, _ := e.st.ListWork(t.Context(), hacme.WorkFinalize); len(w) != 0 {
		t.Fatalf("work record left: %v", w)
	}
	if n := e.ca.issued.Load(); n != 1 {
		t.Fatalf("CA issued %d certificates", n)
	}
}

func TestOrderValidityAndProfile(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.AllowValidityRequest = true })
	a := newRaw(t, e)
	a.register()
	nb := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	na := nb.Add(24 * time.Hour)
	r := a.post(e.base+"new-order", map[string]any{"profile": "short", "notBefore": nb.Format(time.RFC3339), "notAfter": na.Format(time.RFC3339),
		"identifiers": []map[string]string{{"type": "dns", "value": "v.example.test"}}}, signOpts{})
	o := decode[struct{ Profile, NotBefore, NotAfter string }](t, r)
	if r.code != 201 || o.Profile != "short" || o.NotBefore != nb.Format(time.RFC3339) || o.NotAfter != na.Format(time.RFC3339) {
		t.Fatalf("order %d %s", r.code, r.body)
	}
	r = a.post(e.base+"new-order", map[string]any{"notBefore": na.Format(time.RFC3339), "notAfter": nb.Format(time.RFC3339),
		"identifiers": []map[string]string{{"type": "dns", "value": "v.example.test"}}}, signOpts{})
	if r.problemType() != hacme.ProbMalformed {
		t.Fatalf("reversed validity: %d %s", r.code, r.body)
	}
	// Default profile when none is named.
	_, o2 := a.newOrder("w.example.test")
	_ = o2
	r = a.post(e.base+"new-order", map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "w2.example.test"}}}, signOpts{})
	if p := decode[struct{ Profile string }](t, r); p.Profile != "server" {
		t.Fatalf("default profile %q", p.Profile)
	}
}

func TestNewNonceEndpoint(t *testing.T) {
	e := newEnv(t, nil)
	for _, m := range []string{http.MethodHead, http.MethodGet} {
		req, _ := http.NewRequest(m, e.base+"new-nonce", nil)
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := 200
		if m == http.MethodGet {
			want = 204
		}
		if resp.StatusCode != want || resp.Header.Get("Replay-Nonce") == "" || resp.Header.Get("Cache-Control") != "no-store" {
			t.Fatalf("%s new-nonce: %d %v", m, resp.StatusCode, resp.Header)
		}
	}
	resp, err := e.client.Get(e.base + "no-such-thing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("unknown path: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestKeyChangeRefusals(t *testing.T) {
	e := newEnv(t, nil)
	a, b := newRaw(t, e), newRaw(t, e)
	a.register()
	b.register()
	url := e.base + "key-change"
	inner := func(newKey crypto.Signer, account string, oldKey crypto.PublicKey) json.RawMessage {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: newKey}, &jose.SignerOptions{EmbedJWK: true,
			ExtraHeaders: map[jose.HeaderKey]any{"url": url}})
		if err != nil {
			t.Fatal(err)
		}
		old, _ := json.Marshal(jose.JSONWebKey{Key: oldKey})
		p, _ := json.Marshal(map[string]any{"account": account, "oldKey": json.RawMessage(old)})
		j, err := s.Sign(p)
		if err != nil {
			t.Fatal(err)
		}
		return json.RawMessage(j.FullSerialize())
	}
	nk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// oldKey is not the account's key.
	if r := a.post(url, inner(nk, a.kid, b.key.Public()), signOpts{}); r.problemType() != hacme.ProbUnauthorized {
		t.Fatalf("wrong oldKey: %d %s", r.code, r.body)
	}
	// account is not the signer's.
	if r := a.post(url, inner(nk, b.kid, a.key.Public()), signOpts{}); r.problemType() != hacme.ProbUnauthorized {
		t.Fatalf("wrong account: %d %s", r.code, r.body)
	}
	// The new key belongs to another account.
	r := a.post(url, inner(b.key, a.kid, a.key.Public()), signOpts{})
	if r.code != http.StatusConflict || r.hdr.Get("Location") != b.kid {
		t.Fatalf("taken key: %d %s %v", r.code, r.body, r.hdr)
	}
	// Nothing changed: the old key still works, the new one is unknown.
	if r := a.post(a.kid, nil, signOpts{}); r.code != 200 {
		t.Fatalf("old key after refusals: %d %s", r.code, r.body)
	}
	if r := a.post(a.kid, nil, signOpts{key: nk}); r.code == 200 {
		t.Fatal("new key accepted without a rollover")
	}
	// The real rollover works.
	if r := a.post(url, inner(nk, a.kid, a.key.Public()), signOpts{}); r.code != 200 {
		t.Fatalf("rollover: %d %s", r.code, r.body)
	}
	if r := a.post(a.kid, nil, signOpts{key: nk}); r.code != 200 {
		t.Fatalf("new key after rollover: %d %s", r.code, r.body)
	}
	if r := a.post(a.kid, nil, signOpts{}); r.problemType() != hacme.ProbUnauthorized {
		t.Fatalf("old key after rollover: %d %s", r.code, r.body)
	}
}

// TestHTTP01Redirects: a redirect on the http-01 port is followed; one to
// another port is not.
func TestHTTP01Redirects(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.ValidationRetries = -1 })
	a := newRaw(t, e)
	a.register()
	for _, tc := range []struct {
		name, to string
		want     string
	}{
		{"same port", "http://redir-ok.example.test:%d/moved/%s", "valid"},
		{"other port", "http://redir-bad.example.test:1/moved/%s", "invalid"},
		// The name policy refuses the redirect's host (the fake CA denies
		// *.denied.test): the validator does not go there.
		{"host outside the name policy", "http://x.denied.test:%d/moved/%s", "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := "redir-ok.example.test"
			if tc.want == "invalid" {
				host = "redir-bad" + strings.ReplaceAll(tc.name, " ", "-") + ".example.test"
			}
			u, o := a.newOrder(host)
			z := decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{}))
			for _, ch := range z.Challenges {
				if ch.Type != "http-01" {
					continue
				}
				to := fmt.Sprintf(tc.to, ch.Token)
				if strings.Count(tc.to, "%") == 2 {
					to = fmt.Sprintf(tc.to, e.chal.httpPort, ch.Token)
				}
				e.chal.setToken(ch.Token, a.keyAuth(ch.Token))
				e.chal.setRedirect("/.well-known/acme-challenge/"+ch.Token, to)
				a.post(ch.URL, map[string]any{}, signOpts{})
			}
			var st string
			waitFor(t, "authorization settled", func() bool {
				st = decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{})).Status
				return st != "pending"
			})
			if st != tc.want {
				t.Fatalf("authorization %s, want %s", st, tc.want)
			}
			_ = u
		})
	}
}

// TestFinalizeAlwaysAsync: with a negative finalize_wait finalize answers
// processing with Retry-After even for a fast CA, and the order becomes
// valid in the background.
func TestFinalizeAlwaysAsync(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.FinalizeWait = -1 })
	e.ca.hold = make(chan struct{})
	a := newRaw(t, e)
	a.register()
	u, o := a.newOrder("async.example.test")
	a.solveHTTP(u, o)
	r := a.finalize(o, makeCSR(t, "async.example.test"))
	if decode[orderResp](t, r).Status != "processing" || r.hdr.Get("Retry-After") == "" {
		t.Fatalf("finalize: %d %s %v", r.code, r.body, r.hdr)
	}
	close(e.ca.hold)
	a.waitOrder(u, "valid")
}

// RFC 8555 §7.6: an account other than the issuing one may revoke a
// certificate once it holds valid authorizations for every identifier in
// it, and not before.
func TestRevokeByAccountAuthorizedForAllNames(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	a.register()
	leaf := issueFor(t, a, "shared.example.test", nil)
	if leaf == nil {
		t.FailNow()
	}
	body := map[string]any{"certificate": b64(leaf.Raw), "reason": 4}
	b := newRaw(t, e)
	b.register()
	if r := b.post(e.base+"revoke-cert", body, signOpts{}); r.code != 403 || r.problemType() != hacme.ProbUnauthorized {
		t.Fatalf("revoke by an account without authorizations: %d %s", r.code, r.body)
	}
	// B validates the name (an order it never finalizes).
	u, o := b.newOrder("shared.example.test")
	b.solveHTTP(u, o)
	b.waitOrder(u, "ready")
	if r := b.post(e.base+"revoke-cert", body, signOpts{}); r.code != 200 {
		t.Fatalf("revoke by an account authorized for every name: %d %s", r.code, r.body)
	}
	if r := a.post(e.base+"revoke-cert", body, signOpts{}); r.code != 400 || r.problemType() != hacme.ProbAlreadyRevoked {
		t.Fatalf("second revoke: %d %s", r.code, r.body)
	}
}

// A validation that is retried (its first attempt failed) and succeeds only
// after the authorization expired leaves the authorization expired, its
// challenge invalid: it does not become valid with a fresh lifetime.
func TestQueuedValidationAfterExpiry(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e := newEnvOpts(t, func(c *hacme.Config) { c.ValidationRetryDelay = 300 * time.Millisecond }, hacme.Options{Clock: clock})
	a := newRaw(t, e)
	a.register()
	_, o := a.newOrder("late.example.test")
	az := decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{}))
	var chURL, token string
	for _, c := range az.Challenges {
		if c.Type == "http-01" {
			chURL, token = c.URL, c.Token
		}
	}
	if chURL == "" {
		t.Fatal("no http-01 challenge")
	}
	// The first attempt runs inline and fails: nothing is published yet.
	if r := a.post(chURL, map[string]any{}, signOpts{}); r.code != http.StatusOK {
		t.Fatalf("challenge: %d %s", r.code, r.body)
	}
	// Before the retry: the authorization expires, then the answer appears.
	mu.Lock()
	now = now.Add(30 * 24 * time.Hour)
	mu.Unlock()
	e.chal.setToken(token, a.keyAuth(token))
	var got authzResp
	waitFor(t, "the retried validation to settle", func() bool {
		got = decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{}))
		for _, c := range got.Challenges {
			if c.Type == "http-01" {
				return c.Status != "processing" && c.Status != "pending"
			}
		}
		return got.Status == "valid"
	})
	if got.Status != "expired" {
		t.Fatalf("authorization after a validation that completed past its expiry: %s, want expired", got.Status)
	}
}

// The http-01 body is the key authorization, optionally followed by
// whitespace, and nothing else (RFC 8555 §8.3): trailing junk after a run
// of whitespace, or leading whitespace, does not pass.
func TestHTTP01BodyExact(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.ValidationRetries = 0 })
	a := newRaw(t, e)
	a.register()
	for i, tc := range []struct {
		body func(ka string) string
		want string
	}{
		{func(ka string) string { return ka + "\r\n" }, "valid"},
		{func(ka string) string { return ka + strings.Repeat(" ", 1024) + "GARBAGE" }, "invalid"},
		{func(ka string) string { return ka + strings.Repeat("\n", 4096) }, "invalid"},
		{func(ka string) string { return " " + ka }, "invalid"},
	} {
		_, o := a.newOrder(fmt.Sprintf("body%d.example.test", i))
		z := decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{}))
		for _, ch := range z.Challenges {
			if ch.Type != "http-01" {
				continue
			}
			e.chal.setToken(ch.Token, tc.body(a.keyAuth(ch.Token)))
			a.post(ch.URL, map[string]any{}, signOpts{})
		}
		var st string
		waitFor(t, "authorization settled", func() bool {
			st = decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{})).Status
			return st == "valid" || st == "invalid"
		})
		if st != tc.want {
			t.Errorf("case %d: authorization %s, want %s", i, st, tc.want)
		}
	}
}

// A tls-alpn-01 certificate that names the identifier and anything else
// (here an email address) does not validate: RFC 8737 §3 asks for the
// identifier and no other subjectAltName entry.
func TestTLSALPN01ExtraSAN(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.ValidationRetries = 0 })
	a := newRaw(t, e)
	a.register()
	for i, extra := range []bool{false, true} {
		name := fmt.Sprintf("alpn%d.example.test", i)
		_, o := a.newOrder(name)
		z := decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{}))
		for _, ch := range z.Challenges {
			if ch.Type != "tls-alpn-01" {
				continue
			}
			sum := sha256.Sum256([]byte(a.keyAuth(ch.Token)))
			val, _ := asn1.Marshal(sum[:])
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			tpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
				DNSNames:        []string{name},
				ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 31}, Critical: true, Value: val}}}
			if extra {
				tpl.EmailAddresses = []string{"someone@example.test"}
			}
			der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &k.PublicKey, k)
			if err != nil {
				t.Fatal(err)
			}
			e.chal.setCert(name, &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k})
			a.post(ch.URL, map[string]any{}, signOpts{})
		}
		var st string
		waitFor(t, "authorization settled", func() bool {
			st = decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{})).Status
			return st == "valid" || st == "invalid"
		})
		if want := map[bool]string{false: "valid", true: "invalid"}[extra]; st != want {
			t.Errorf("extra SAN %v: authorization %s, want %s", extra, st, want)
		}
	}
}
