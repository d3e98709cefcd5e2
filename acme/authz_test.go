package acme_test

import (
	"net/http"
	"testing"
	"time"

	hacme "github.com/hsmca/hsmca/acme"
)

// Deactivating an account's newest valid authorization for a name leaves
// an older valid one in force: revokeCert by an account that controls
// the name accepts it (RFC 8555 §7.6), and, once reuse is on, a new order
// reuses it.
func TestOlderValidAuthzAfterNewerDeactivated(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.AuthzReuse = -1 })
	a := newRaw(t, e)
	a.register()
	leaf := issueFor(t, a, "older.example.test", nil)
	if leaf == nil {
		t.FailNow()
	}
	b := newRaw(t, e)
	b.register()
	u1, o1 := b.newOrder("older.example.test")
	b.solveHTTP(u1, o1)
	u2, o2 := b.newOrder("older.example.test")
	b.solveHTTP(u2, o2)
	older, newer := o1.Authorizations[0], o2.Authorizations[0]
	if older == newer {
		t.Fatal("authorization reused with authz_reuse off")
	}
	if r := b.post(newer, map[string]string{"status": "deactivated"}, signOpts{}); r.code != http.StatusOK {
		t.Fatalf("deactivate: %d %s", r.code, r.body)
	}
	if z := decode[authzResp](t, b.post(older, nil, signOpts{})); z.Status != "valid" {
		t.Fatalf("older authorization is %s", z.Status)
	}

	e.cfg.AuthzReuse = time.Hour
	e.restart()
	_, o3 := b.newOrder("older.example.test")
	if o3.Status != "ready" || o3.Authorizations[0] != older {
		t.Fatalf("new order %s with %v; want ready, reusing %s", o3.Status, o3.Authorizations, older)
	}
	r := b.post(e.base+"revoke-cert", map[string]any{"certificate": b64(leaf.Raw), "reason": 4}, signOpts{})
	if r.code != http.StatusOK {
		t.Fatalf("revoke by an account holding %s for the name: %d %s", older, r.code, r.body)
	}
}
