package acme_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	hacme "github.com/hsmca/hsmca/acme"
	"golang.org/x/crypto/acme"
)

func newX(e *env) *acme.Client {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return &acme.Client{Key: k, DirectoryURL: e.dir, HTTPClient: e.client}
}

// xOrder runs a full order with x/crypto/acme over http-01.
func xOrder(t *testing.T, e *env, c *acme.Client, names ...string) (*acme.Order, []*x509.Certificate) {
	t.Helper()
	ctx := context.Background()
	o, err := c.AuthorizeOrder(ctx, acme.DomainIDs(names...))
	if err != nil {
		t.Fatalf("order: %v", err)
	}
	for _, u := range o.AuthzURLs {
		z, err := c.GetAuthorization(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		if z.Status == acme.StatusValid {
			continue
		}
		var ch *acme.Challenge
		for _, x := range z.Challenges {
			if x.Type == "http-01" {
				ch = x
			}
		}
		if ch == nil {
			t.Fatal("no http-01 challenge")
		}
		ka, _ := c.HTTP01ChallengeResponse(ch.Token)
		e.chal.setToken(ch.Token, ka)
		if _, err := c.Accept(ctx, ch); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitAuthorization(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	if o, err = c.WaitOrder(ctx, o.URI); err != nil {
		t.Fatal(err)
	}
	der, _, err := c.CreateOrderCert(ctx, o.FinalizeURL, makeCSR(t, names...), true)
	if err != nil {
		t.Fatalf("finalize: %v", err)
	}
	var certs []*x509.Certificate
	for _, d := range der {
		x, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, x)
	}
	e.ca.verify(t, certs[0], certs[1:])
	return o, certs
}

func TestXCrypto(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.TermsOfService = "https://ca.example.test/tos" })
	ctx := context.Background()
	c := newX(e)
	dir, err := c.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if dir.Terms != "https://ca.example.test/tos" || len(dir.Profiles) != 2 {
		t.Fatalf("directory meta: %+v", dir)
	}
	acct, err := c.Register(ctx, &acme.Account{Contact: []string{"mailto:ops@example.test"}}, acme.AcceptTOS)
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	if acct.Status != acme.StatusValid || acct.OrdersURL == "" {
		t.Fatalf("account %+v", acct)
	}
	order, certs := xOrder(t, e, c, "x.example.test")

	t.Run("orders list", func(t *testing.T) {
		r := &rawClient{t: t, e: e, key: c.Key, alg: "ES256", kid: acct.URI}
		resp := r.post(acct.OrdersURL, nil, signOpts{})
		l := decode[struct{ Orders []string }](t, resp)
		if !slices.Contains(l.Orders, order.URI) {
			t.Fatalf("orders list %v lacks %s", l.Orders, order.URI)
		}
		// Another account may not read it.
		other := newRaw(t, e)
		other.register()
		if resp := other.post(acct.OrdersURL, nil, signOpts{}); resp.code != http.StatusForbidden || resp.problemType() != hacme.ProbUnauthorized {
			t.Fatalf("foreign orders list: %d %s", resp.code, resp.body)
		}
	})
	t.Run("ARI", func(t *testing.T) {
		leaf := certs[0]
		id := base64.RawURLEncoding.EncodeToString(leaf.AuthorityKeyId) + "." + base64.RawURLEncoding.EncodeToString(leaf.SerialNumber.Bytes())
		resp, err := e.client.Get(e.base + "renewal-info/" + id)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var ri struct {
			SuggestedWindow struct{ Start, End time.Time } `json:"suggestedWindow"`
		}
		if resp.StatusCode != 200 || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("renewal-info: %d %v", resp.StatusCode, resp.Header)
		}
		if err := jsonDecode(resp.Body, &ri); err != nil {
			t.Fatal(err)
		}
		w := ri.SuggestedWindow
		if !w.Start.After(leaf.NotBefore) || !w.End.After(w.Start) || !w.End.Before(leaf.NotAfter) {
			t.Fatalf("window %v..%v for %v..%v", w.Start, w.End, leaf.NotBefore, leaf.NotAfter)
		}
		// An unknown serial is 404.
		resp2, _ := e.client.Get(e.base + "renewal-info/" + base64.RawURLEncoding.EncodeToString(leaf.AuthorityKeyId) + ".AQID")
		resp2.Body.Close()
		if resp2.StatusCode != 404 {
			t.Fatalf("unknown certID: %d", resp2.StatusCode)
		}
	})
	t.Run("key rollover", func(t *testing.T) {
		oldKey := c.Key
		nk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err := c.AccountKeyRollover(ctx, nk); err != nil {
			t.Fatalf("rollover: %v", err)
		}
		if _, err := c.GetReg(ctx, acct.URI); err != nil {
			t.Fatalf("new key does not work: %v", err)
		}
		old := &acme.Client{Key: oldKey, DirectoryURL: e.dir, HTTPClient: e.client}
		// x/crypto/acme maps accountDoesNotExist to ErrNoAccount.
		if _, err := old.GetReg(ctx, ""); !errors.Is(err, acme.ErrNoAccount) {
			t.Fatalf("old key lookup: %v", err)
		}
		// The new key still orders.
		xOrder(t, e, c, "x2.example.test")
	})
	t.Run("deactivation", func(t *testing.T) {
		if err := c.DeactivateReg(ctx); err != nil {
			t.Fatalf("deactivate: %v", err)
		}
		_, err := c.AuthorizeOrder(ctx, acme.DomainIDs("y.example.test"))
		var ae *acme.Error
		if !errors.As(err, &ae) || ae.ProblemType != hacme.ProbUnauthorized {
			t.Fatalf("order after deactivation: %v", err)
		}
	})
}

func TestXCryptoEAB(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.ExternalAccountRequired = true })
	ctx := context.Background()
	c := newX(e)
	_, err := c.Register(ctx, &acme.Account{}, acme.AcceptTOS)
	var ae *acme.Error
	if !errors.As(err, &ae) || ae.ProblemType != hacme.ProbExternalAccountReq {
		t.Fatalf("register without EAB: %v", err)
	}
	kid, hmacKey, err := hacme.CreateEAB(ctx, e.st, "team-a")
	if err != nil {
		t.Fatal(err)
	}
	key, err := base64.RawURLEncoding.DecodeString(hmacKey)
	if err != nil || len(key) != 32 {
		t.Fatalf("hmac key %q: %v", hmacKey, err)
	}
	// A wrong key is refused.
	_, err = c.Register(ctx, &acme.Account{ExternalAccountBinding: &acme.ExternalAccountBinding{KID: kid, Key: make([]byte, 32)}}, acme.AcceptTOS)
	if !errors.As(err, &ae) || ae.ProblemType != hacme.ProbUnauthorized {
		t.Fatalf("register with a wrong MAC: %v", err)
	}
	acct, err := c.Register(ctx, &acme.Account{ExternalAccountBinding: &acme.ExternalAccountBinding{KID: kid, Key: key}}, acme.AcceptTOS)
	if err != nil {
		t.Fatalf("register with EAB: %v", err)
	}
	list, err := hacme.ListEAB(ctx, e.st)
	if err != nil || len(list) != 1 || list[0].KeyID != kid || list[0].Label != "team-a" || list[0].AccountID == "" {
		t.Fatalf("list: %v %+v", err, list)
	}
	if acct.URI != e.base+"acct/"+list[0].AccountID {
		t.Fatalf("bound account %s vs %s", list[0].AccountID, acct.URI)
	}
	if err := hacme.RevokeEAB(ctx, e.st, kid); err != nil {
		t.Fatal(err)
	}
	c2 := newX(e)
	_, err = c2.Register(ctx, &acme.Account{ExternalAccountBinding: &acme.ExternalAccountBinding{KID: kid, Key: key}}, acme.AcceptTOS)
	if !errors.As(err, &ae) || ae.ProblemType != hacme.ProbUnauthorized {
		t.Fatalf("register with a revoked EAB: %v", err)
	}
	if err := hacme.RevokeEAB(ctx, e.st, "nope"); err == nil {
		t.Fatal("revoking an unknown key succeeded")
	}
}
