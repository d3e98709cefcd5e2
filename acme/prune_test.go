package acme_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/acme"

	hacme "github.com/hsmca/hsmca/acme"
)

// TestPrune runs real orders, moves the server's clock past the retention
// and checks what a pruning pass deletes and what keeps working: the
// certificate of a pruned order is still downloaded, answered by
// renewalInfo and revoked until its link goes, after it expired.
func TestPrune(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	e := newEnvOpts(t, func(c *hacme.Config) {
		c.OrderLifetime = time.Hour
		c.AuthzLifetime = 3 * time.Hour
		c.Retention = time.Hour
	}, hacme.Options{Clock: clock})
	ctx := context.Background()
	c := newX(e)
	acct, err := c.Register(ctx, &acme.Account{}, acme.AcceptTOS)
	if err != nil {
		t.Fatal(err)
	}
	done, certs := xOrder(t, e, c, "p.example.test") // the leaf is valid 12h
	pending, err := c.AuthorizeOrder(ctx, acme.DomainIDs("never.example.test"))
	if err != nil {
		t.Fatal(err)
	}
	acctID := lastPath(acct.URI)

	// Inside the retention nothing goes.
	advance(time.Hour + 59*time.Minute)
	if st, err := e.srv.Prune(ctx); err != nil || st.Orders+st.Authzs+st.Certs != 0 || !st.Complete {
		t.Fatalf("pass within retention: %+v %v", st, err)
	}
	// Orders expired (1h) more than the retention (1h) ago; the pending
	// order's authorization too; the valid one (3h) not yet.
	advance(30 * time.Minute)
	st, err := e.srv.Prune(ctx)
	if err != nil || st.Orders != 2 || st.Authzs != 1 || st.Certs != 0 {
		t.Fatalf("pass: %+v %v, want 2 orders and 1 authorization", st, err)
	}
	for _, u := range []string{done.URI, pending.URI} {
		var ae *acme.Error
		if _, err := c.GetOrder(ctx, u); !errors.As(err, &ae) || ae.StatusCode != 404 {
			t.Errorf("pruned order %s: %v, want 404", lastPath(u), err)
		}
	}
	if ids, _, err := e.st.ListOrders(ctx, acctID, "", 10); err != nil || len(ids) != 0 {
		t.Errorf("orders list still names %v (%v)", ids, err)
	}
	if _, err := c.GetAuthorization(ctx, pending.AuthzURLs[0]); err == nil {
		t.Error("pruned pending authorization still served")
	}
	if z, err := c.GetAuthorization(ctx, done.AuthzURLs[0]); err != nil || z.Status != acme.StatusValid {
		t.Errorf("valid authorization inside its lifetime: %v %v", z, err)
	}

	// The certificate outlives its order.
	certURL := e.base + "cert/" + certs[0].SerialNumber.Text(16)
	der, err := c.FetchCert(ctx, certURL, true)
	if err != nil || !bytes.Equal(der[0], certs[0].Raw) {
		t.Fatalf("download after the order was pruned: %v", err)
	}
	leaf := certs[0]
	ari := e.base + "renewal-info/" + base64.RawURLEncoding.EncodeToString(leaf.AuthorityKeyId) + "." + base64.RawURLEncoding.EncodeToString(leaf.SerialNumber.Bytes())
	if resp, err := e.client.Get(ari); err != nil || resp.StatusCode != 200 {
		t.Fatalf("renewalInfo after the order was pruned: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if err := c.RevokeCert(ctx, nil, leaf.Raw, acme.CRLReasonCessationOfOperation); err != nil {
		t.Fatalf("revoke after the order was pruned: %v", err)
	}

	// Once the certificate has expired more than the retention ago, its
	// link goes too (the CA keeps its own record), and so does the
	// authorization.
	advance(leaf.NotAfter.Sub(clock()) + time.Hour + time.Minute)
	if st, err := e.srv.Prune(ctx); err != nil || st.Certs != 1 || st.Authzs != 1 {
		t.Fatalf("late pass: %+v %v, want the certificate link and the authorization", st, err)
	}
	var ae *acme.Error
	if _, err := c.FetchCert(ctx, certURL, true); !errors.As(err, &ae) || ae.StatusCode != 404 {
		t.Errorf("download of a pruned link: %v, want 404", err)
	}
}

func TestPruneConfig(t *testing.T) {
	e := newEnv(t, nil)
	_, err := hacme.New(hacme.Config{BaseURL: "https://ca.example.test/acme/", PruneInterval: -time.Minute}, e.ca, e.st, hacme.Options{})
	if err == nil || !strings.Contains(err.Error(), "prune_interval") {
		t.Fatalf("negative prune_interval: %v, want an error that names it", err)
	}
	// The default retention (168h): a record that expired 167h ago stays,
	// one that expired 169h ago goes.
	ctx := context.Background()
	now := time.Now()
	if err := e.st.CreateOrder(ctx, &hacme.Order{ID: "keep", AccountID: "a", Status: hacme.StatusInvalid, Expires: now.Add(-167 * time.Hour)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.st.CreateOrder(ctx, &hacme.Order{ID: "drop", AccountID: "a", Status: hacme.StatusInvalid, Expires: now.Add(-169 * time.Hour)}, nil); err != nil {
		t.Fatal(err)
	}
	if st, err := e.srv.Prune(ctx); err != nil || st.Orders != 1 {
		t.Fatalf("default retention pass: %+v %v", st, err)
	}
	if _, err := e.st.GetOrder(ctx, "keep"); err != nil {
		t.Fatalf("order within the default retention: %v", err)
	}
	// Negative retention keeps everything.
	e2 := newEnv(t, func(c *hacme.Config) { c.Retention = -1 })
	if err := e2.st.CreateOrder(ctx, &hacme.Order{ID: "old", AccountID: "a", Status: hacme.StatusInvalid, Expires: now.Add(-1000 * time.Hour)}, nil); err != nil {
		t.Fatal(err)
	}
	if st, err := e2.srv.Prune(ctx); err != nil || st.Orders != 0 {
		t.Fatalf("negative retention pruned: %+v %v", st, err)
	}
}
