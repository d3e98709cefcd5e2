package acme_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	hacme "github.com/hsmca/hsmca/acme"
)

// signHeader signs payload with a's ES256 key under the protected header
// hdr (to which it adds alg, nonce, url and the jwk), in the flattened
// serialization, so that tests can send header members go-jose would
// process itself.
func signHeader(t *testing.T, a *rawClient, url string, hdr map[string]any, payload []byte) []byte {
	t.Helper()
	k := a.key.(*ecdsa.PrivateKey)
	jwk, err := (&jose.JSONWebKey{Key: k.Public()}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	h := map[string]any{"alg": "ES256", "nonce": a.nonce(), "url": url, "jwk": json.RawMessage(jwk)}
	for n, v := range hdr {
		h[n] = v
	}
	hb, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	signed := b64(hb) + "." + b64(payload)
	sum := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, k, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	body, _ := json.Marshal(map[string]string{"protected": b64(hb), "payload": b64(payload), "signature": b64(sig)})
	return body
}

// RFC 7515 §4.1.11 and RFC 7797: a JWS with crit (the server supports no
// extension) or with b64 other than true is malformed; b64 true alone
// changes nothing.
func TestJWSCritAndB64(t *testing.T) {
	cases := []struct {
		name string
		hdr  map[string]any
		ok   bool
	}{
		{"crit names an extension", map[string]any{"crit": []string{"urn:example:must-understand"}, "urn:example:must-understand": true}, false},
		{"crit b64 with b64 false", map[string]any{"crit": []string{"b64"}, "b64": false}, false},
		{"b64 false", map[string]any{"b64": false}, false},
		{"b64 not a boolean", map[string]any{"b64": "true"}, false},
		{"crit null", map[string]any{"crit": nil}, false},
		{"b64 true", map[string]any{"b64": true}, true},
	}
	e := newEnv(t, nil)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := newRaw(t, e)
			url := e.base + "new-account"
			r := a.postBody(url, signHeader(t, a, url, c.hdr, []byte(`{"termsOfServiceAgreed":true}`)))
			switch {
			case c.ok && r.code != http.StatusCreated:
				t.Fatalf("refused: %d %s", r.code, r.body)
			case !c.ok && (r.code != http.StatusBadRequest || r.problemType() != hacme.ProbMalformed):
				t.Fatalf("%d %s; want 400 malformed", r.code, r.body)
			}
		})
	}
}

// badSignatureAlgorithm lists the accepted algorithms (RFC 8555 §6.2).
func TestBadSignatureAlgorithmListsAlgorithms(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	k, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	r := a.post(e.base+"new-account", map[string]any{"termsOfServiceAgreed": true}, signOpts{key: k, alg: jose.ES512, jwk: true})
	p := decode[struct {
		Type       string
		Algorithms []string
	}](t, r)
	if r.code != http.StatusBadRequest || p.Type != hacme.ProbBadSignatureAlgorithm {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if want := []string{"ES256", "ES384", "RS256", "EdDSA"}; !slices.Equal(p.Algorithms, want) {
		t.Fatalf("algorithms %q, want %q", p.Algorithms, want)
	}
}

// RFC 8555 §7.3.6: every request from a deactivated account gets 401
// unauthorized (requests signed by another account's key stay 403).
func TestDeactivatedAccountGets401(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	a.register()
	if r := a.post(a.kid, map[string]any{"status": "deactivated"}, signOpts{}); r.code != http.StatusOK {
		t.Fatalf("deactivate: %d %s", r.code, r.body)
	}
	for name, send := range map[string]func() rawResp{
		"account": func() rawResp { return a.post(a.kid, nil, signOpts{}) },
		"new-order": func() rawResp {
			return a.post(e.base+"new-order", map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "d.example.test"}}}, signOpts{})
		},
		"new-account": func() rawResp {
			return a.post(e.base+"new-account", map[string]any{"onlyReturnExisting": true}, signOpts{jwk: true})
		},
	} {
		if r := send(); r.code != http.StatusUnauthorized || r.problemType() != hacme.ProbUnauthorized {
			t.Errorf("%s: %d %s; want 401 unauthorized", name, r.code, r.body)
		}
	}
	b := newRaw(t, e)
	b.register()
	if r := b.post(a.kid, nil, signOpts{kid: a.kid}); r.code != http.StatusForbidden || r.problemType() != hacme.ProbUnauthorized {
		t.Fatalf("another account's key: %d %s; want 403 unauthorized", r.code, r.body)
	}
}
