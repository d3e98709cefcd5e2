package acme_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

// rawClient speaks ACME by hand so tests can send what real clients never
// would.
type rawClient struct {
	t   testing.TB
	e   *env
	key crypto.Signer
	alg jose.SignatureAlgorithm
	kid string
	// next is the Replay-Nonce of the last answer, used by the next request.
	next string
}

func newRaw(t testing.TB, e *env) *rawClient {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return &rawClient{t: t, e: e, key: k, alg: jose.ES256}
}

func (c *rawClient) nonce() string {
	c.t.Helper()
	if n := c.next; n != "" {
		c.next = ""
		return n
	}
	resp, err := c.e.client.Head(c.e.base + "new-nonce")
	if err != nil {
		c.t.Fatal(err)
	}
	resp.Body.Close()
	n := resp.Header.Get("Replay-Nonce")
	if n == "" {
		c.t.Fatal("no nonce")
	}
	return n
}

type signOpts struct {
	nonce  string // "" = fresh
	url    string // "" = the target URL
	jwk    bool   // embed jwk instead of kid
	kid    string // override kid
	key    crypto.Signer
	alg    jose.SignatureAlgorithm
	noSign bool
}

func (c *rawClient) sign(url string, payload []byte, o signOpts) []byte {
	c.t.Helper()
	if o.nonce == "" {
		o.nonce = c.nonce()
	}
	if o.url == "" {
		o.url = url
	}
	key := c.key
	if o.key != nil {
		key = o.key
	}
	alg := c.alg
	if o.alg != "" {
		alg = o.alg
	}
	hdr := map[jose.HeaderKey]any{"nonce": o.nonce, "url": o.url}
	if !o.jwk {
		kid := c.kid
		if o.kid != "" {
			kid = o.kid
		}
		hdr["kid"] = kid
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, &jose.SignerOptions{EmbedJWK: o.jwk, ExtraHeaders: hdr})
	if err != nil {
		c.t.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		c.t.Fatal(err)
	}
	return []byte(jws.FullSerialize())
}

type rawResp struct {
	code int
	hdr  http.Header
	body []byte
}

func (r rawResp) problemType() string {
	var p struct {
		Type string `json:"type"`
	}
	json.Unmarshal(r.body, &p)
	return p.Type
}

func (c *rawClient) postBody(url string, body []byte) rawResp {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/jose+json")
	requests.Add(1)
	resp, err := c.e.client.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	c.next = resp.Header.Get("Replay-Nonce")
	return rawResp{resp.StatusCode, resp.Header, b}
}

// post signs payload (nil: POST-as-GET) and posts it.
func (c *rawClient) post(url string, payload any, o signOpts) rawResp {
	c.t.Helper()
	var p []byte
	if payload != nil {
		var err error
		if p, err = json.Marshal(payload); err != nil {
			c.t.Fatal(err)
		}
	}
	return c.postBody(url, c.sign(url, p, o))
}

// register creates the account and remembers its kid.
func (c *rawClient) register() {
	c.t.Helper()
	r := c.post(c.e.base+"new-account", map[string]any{"termsOfServiceAgreed": true}, signOpts{jwk: true})
	if r.code != http.StatusCreated {
		c.t.Fatalf("new-account: %d %s", r.code, r.body)
	}
	c.kid = r.hdr.Get("Location")
}

func decode[T any](t testing.TB, r rawResp) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("decode %d %s: %v", r.code, r.body, err)
	}
	return v
}

type orderResp struct {
	Status         string   `json:"status"`
	Authorizations []string `json:"authorizations"`
	Finalize       string   `json:"finalize"`
	Certificate    string   `json:"certificate"`
	Error          *struct {
		Type   string `json:"type"`
		Detail string `json:"detail"`
	} `json:"error"`
}

type authzResp struct {
	Status     string `json:"status"`
	Challenges []struct {
		Type   string `json:"type"`
		URL    string `json:"url"`
		Token  string `json:"token"`
		Status string `json:"status"`
	} `json:"challenges"`
}

func (c *rawClient) keyAuth(token string) string {
	c.t.Helper()
	jwk := jose.JSONWebKey{Key: c.key.Public()}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		c.t.Fatal(err)
	}
	return token + "." + b64(tp)
}

// newOrder creates an order for DNS names and returns its URL and body.
func (c *rawClient) newOrder(names ...string) (string, orderResp) {
	c.t.Helper()
	var ids []map[string]string
	for _, n := range names {
		ids = append(ids, map[string]string{"type": "dns", "value": n})
	}
	r := c.post(c.e.base+"new-order", map[string]any{"identifiers": ids}, signOpts{})
	if r.code != http.StatusCreated {
		c.t.Fatalf("new-order: %d %s", r.code, r.body)
	}
	return r.hdr.Get("Location"), decode[orderResp](c.t, r)
}

// solveHTTP answers the http-01 challenge of every pending authorization
// and waits until the order is ready.
func (c *rawClient) solveHTTP(orderURL string, o orderResp) {
	c.t.Helper()
	for _, az := range o.Authorizations {
		a := decode[authzResp](c.t, c.post(az, nil, signOpts{}))
		if a.Status == "valid" {
			continue
		}
		for _, ch := range a.Challenges {
			if ch.Type != "http-01" {
				continue
			}
			c.e.chal.setToken(ch.Token, c.keyAuth(ch.Token))
			if r := c.post(ch.URL, map[string]any{}, signOpts{}); r.code != http.StatusOK {
				c.t.Fatalf("challenge: %d %s", r.code, r.body)
			}
		}
	}
	c.waitOrder(orderURL, "ready")
}

func (c *rawClient) waitOrder(orderURL, want string) orderResp {
	c.t.Helper()
	var o orderResp
	waitFor(c.t, "order "+want, func() bool {
		o = decode[orderResp](c.t, c.post(orderURL, nil, signOpts{}))
		if o.Status == "invalid" && want != "invalid" {
			c.t.Fatalf("order became invalid: %+v", o.Error)
		}
		return o.Status == want
	})
	return o
}

func (c *rawClient) finalize(o orderResp, csr []byte) rawResp {
	c.t.Helper()
	return c.post(o.Finalize, map[string]string{"csr": b64(csr)}, signOpts{})
}

// requests counts POSTs sent by raw clients (for the benchmarks).
var requests atomic.Int64
