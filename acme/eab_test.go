package acme_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	hacme "github.com/hsmca/hsmca/acme"
	"golang.org/x/crypto/acme"
)

// eabFor returns an x/crypto/acme binding for a new EAB key.
func eabFor(t *testing.T, e *env) *acme.ExternalAccountBinding {
	t.Helper()
	kid, hmacKey, err := hacme.CreateEAB(context.Background(), e.st, "team-a")
	if err != nil {
		t.Fatal(err)
	}
	key, err := base64.RawURLEncoding.DecodeString(hmacKey)
	if err != nil {
		t.Fatal(err)
	}
	return &acme.ExternalAccountBinding{KID: kid, Key: key}
}

// An EAB key binds one account: a second account key presenting it is
// refused, and the binding still names the first account.
func TestEABKeyBindsOneAccount(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.ExternalAccountRequired = true })
	ctx := context.Background()
	eab := eabFor(t, e)
	first, err := newX(e).Register(ctx, &acme.Account{ExternalAccountBinding: eab}, acme.AcceptTOS)
	if err != nil {
		t.Fatalf("first account: %v", err)
	}
	_, err = newX(e).Register(ctx, &acme.Account{ExternalAccountBinding: eab}, acme.AcceptTOS)
	var ae *acme.Error
	if !errors.As(err, &ae) || ae.StatusCode != 403 || ae.ProblemType != hacme.ProbUnauthorized {
		t.Fatalf("second account with the same EAB key: %v", err)
	}
	list, err := hacme.ListEAB(ctx, e.st)
	if err != nil || len(list) != 1 || first.URI != e.base+"acct/"+list[0].AccountID {
		t.Fatalf("EAB keys %+v (%v); first account %s", list, err, first.URI)
	}
}

// gateCreateAccount holds each CreateAccount until n of them have
// arrived, so that n registrations have all passed the server's own
// look at the EAB key before any of them writes.
type gateCreateAccount struct {
	hacme.Store
	n       int32
	arrived atomic.Int32
	all     chan struct{}
	timeout atomic.Bool
}

func (g *gateCreateAccount) CreateAccount(ctx context.Context, a *hacme.Account) error {
	if g.arrived.Add(1) == g.n {
		close(g.all)
	}
	select {
	case <-g.all:
	case <-time.After(10 * time.Second):
		g.timeout.Store(true)
	}
	return g.Store.CreateAccount(ctx, a)
}

// Registrations racing with one EAB key: exactly one account is created.
func TestEABConcurrentRegistrations(t *testing.T) {
	const n = 4
	g := &gateCreateAccount{n: n, all: make(chan struct{})}
	e := newEnvWrap(t, func(c *hacme.Config) { c.ExternalAccountRequired = true }, hacme.Options{},
		func(st hacme.Store) hacme.Store { g.Store = st; return g })
	// Connections the racing clients dialled but did not use would hold
	// up the server's shutdown for 5 s.
	t.Cleanup(e.client.CloseIdleConnections)
	ctx := context.Background()
	eab := eabFor(t, e)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = newX(e).Register(ctx, &acme.Account{ExternalAccountBinding: eab}, acme.AcceptTOS)
		}()
	}
	wg.Wait()
	if g.timeout.Load() {
		t.Fatal("the registrations did not all reach the store")
	}
	created := 0
	for _, err := range errs {
		var ae *acme.Error
		switch {
		case err == nil:
			created++
		case !errors.As(err, &ae) || ae.ProblemType != hacme.ProbUnauthorized:
			t.Errorf("refused registration: %v; want unauthorized", err)
		}
	}
	if created != 1 {
		t.Fatalf("%d accounts created with one EAB key; want 1", created)
	}
}

// The binding's own JWS is held to the same rules as the request's: crit
// or b64 other than true make it malformed (and the same binding without
// them is accepted).
func TestEABCritAndB64(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.ExternalAccountRequired = true })
	for name, extra := range map[string]map[string]any{
		"crit":      {"crit": []string{"urn:example:x"}, "urn:example:x": 1},
		"b64 false": {"b64": false},
		"neither":   nil,
	} {
		t.Run(name, func(t *testing.T) {
			eab := eabFor(t, e)
			a := newRaw(t, e)
			url := e.base + "new-account"
			jwk, err := (&jose.JSONWebKey{Key: a.key.Public()}).MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			h := map[string]any{"alg": "HS256", "kid": eab.KID, "url": url}
			for k, v := range extra {
				h[k] = v
			}
			hb, _ := json.Marshal(h)
			mac := hmac.New(sha256.New, eab.Key)
			mac.Write([]byte(b64(hb) + "." + b64(jwk)))
			binding := map[string]string{"protected": b64(hb), "payload": b64(jwk), "signature": b64(mac.Sum(nil))}
			payload, _ := json.Marshal(map[string]any{"termsOfServiceAgreed": true, "externalAccountBinding": binding})
			r := a.postBody(url, signHeader(t, a, url, nil, payload))
			switch {
			case extra == nil && r.code != http.StatusCreated:
				t.Fatalf("plain binding: %d %s; want 201", r.code, r.body)
			case extra != nil && (r.code != http.StatusBadRequest || r.problemType() != hacme.ProbMalformed):
				t.Fatalf("%d %s; want 400 malformed", r.code, r.body)
			}
		})
	}
}
