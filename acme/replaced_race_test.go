package acme_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"sync"
	"testing"
	"time"

	hacme "github.com/hsmca/hsmca/acme"
)

// holdReplaced holds the store write that marks a certificate replaced
// until the test releases it.
type holdReplaced struct {
	hacme.Store
	entered, release chan struct{}
	once             sync.Once
}

func (h *holdReplaced) UpdateCert(ctx context.Context, c *hacme.Cert) error {
	if c.Replaced {
		h.once.Do(func() { close(h.entered); <-h.release })
	}
	return h.Store.UpdateCert(ctx, c)
}

// issueFor runs a whole order for name (with extra newOrder fields) and
// returns the certificate.
func issueFor(t *testing.T, a *rawClient, name string, extra map[string]any) *x509.Certificate {
	t.Helper()
	payload := map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": name}}}
	for k, v := range extra {
		payload[k] = v
	}
	r := a.post(a.e.base+"new-order", payload, signOpts{})
	if r.code != 201 {
		t.Errorf("new-order: %d %s", r.code, r.body)
		return nil
	}
	u, o := r.hdr.Get("Location"), decode[orderResp](t, r)
	a.solveHTTP(u, o)
	if r := a.finalize(o, makeCSR(t, name)); r.code != 200 {
		t.Errorf("finalize: %d %s", r.code, r.body)
		return nil
	}
	o = a.waitOrder(u, "valid")
	blk, _ := pem.Decode(a.post(o.Certificate, nil, signOpts{}).body)
	if blk == nil {
		t.Error("certificate download is not PEM")
		return nil
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Error(err)
		return nil
	}
	return leaf
}

// A renewal that marks the old certificate replaced while the old one is
// being revoked: both facts must survive. The two read-modify-writes of
// the certificate record used to run under different locks, so the
// "replaced" write could put back the record as it was before the
// revocation (ACME store: not revoked; renewal info and a second
// revoke-cert then disagree with the CA).
func TestRevokeWhileMarkingReplaced(t *testing.T) {
	e := newEnv(t, nil)
	h := &holdReplaced{entered: make(chan struct{}), release: make(chan struct{})}
	e.wrap = func(st hacme.Store) hacme.Store { h.Store = st; return h }
	e.restart()
	a := newRaw(t, e)
	a.register()
	old := issueFor(t, a, "replaced.example.test", nil)
	if old == nil {
		t.FailNow()
	}
	certID := base64.RawURLEncoding.EncodeToString(old.AuthorityKeyId) + "." + base64.RawURLEncoding.EncodeToString(old.SerialNumber.Bytes())
	// The renewal runs on its own client (the same account, its own
	// nonces) and stops just before writing "replaced".
	b := newRaw(t, e)
	b.key, b.kid = a.key, a.kid
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		issueFor(t, b, "replaced.example.test", map[string]any{"replaces": certID})
	}()
	<-h.entered
	revoked := make(chan rawResp, 1)
	go func() {
		revoked <- a.post(e.base+"revoke-cert", map[string]any{"certificate": b64(old.Raw)}, signOpts{})
	}()
	// Without a shared lock the revocation completes meanwhile; with one
	// it waits for the renewal's write. Either way, release it then.
	var r rawResp
	select {
	case r = <-revoked:
		close(h.release)
	case <-time.After(500 * time.Millisecond):
		close(h.release)
		r = <-revoked
	}
	<-renewed
	if r.code != 200 {
		t.Fatalf("revoke-cert: %d %s", r.code, r.body)
	}
	c, err := e.st.GetCert(context.Background(), old.SerialNumber.Text(16))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Revoked || !c.Replaced {
		t.Fatalf("old certificate: revoked %v, replaced %v; want both", c.Revoked, c.Replaced)
	}
}
