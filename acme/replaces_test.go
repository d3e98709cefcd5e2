package acme_test

import (
	"net/http"
	"testing"

	hacme "github.com/hsmca/hsmca/acme"
)

// RFC 9773 §5: an order may name a certificate in replaces only if it
// shares an identifier with it, and only while no other order replacing
// it is pending, ready, processing or valid (alreadyReplaced, 409).
func TestReplacesChecks(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	a.register()
	leaf := issueFor(t, a, "old.example.test", nil)
	if leaf == nil {
		t.FailNow()
	}
	certID := b64(leaf.AuthorityKeyId) + "." + b64(leaf.SerialNumber.Bytes())
	order := func(names ...string) rawResp {
		var ids []map[string]string
		for _, n := range names {
			ids = append(ids, map[string]string{"type": "dns", "value": n})
		}
		return a.post(e.base+"new-order", map[string]any{"replaces": certID, "identifiers": ids}, signOpts{})
	}
	if r := order("unrelated.example.test"); r.code != http.StatusBadRequest || r.problemType() != hacme.ProbMalformed {
		t.Fatalf("order sharing no identifier: %d %s", r.code, r.body)
	}
	first := order("new.example.test", "OLD.example.test")
	if first.code != http.StatusCreated {
		t.Fatalf("order sharing one identifier: %d %s", first.code, first.body)
	}
	if r := order("old.example.test"); r.code != http.StatusConflict || r.problemType() != hacme.ProbAlreadyReplaced {
		t.Fatalf("second order while the first is pending: %d %s", r.code, r.body)
	}
	// The first order becomes invalid: the certificate may be replaced
	// by another.
	o := decode[orderResp](t, first)
	if r := a.post(o.Authorizations[0], map[string]string{"status": "deactivated"}, signOpts{}); r.code != http.StatusOK {
		t.Fatalf("deactivate: %d %s", r.code, r.body)
	}
	if o := a.waitOrder(first.hdr.Get("Location"), "invalid"); o.Status != "invalid" {
		t.Fatal(o.Status)
	}
	if r := order("old.example.test"); r.code != http.StatusCreated {
		t.Fatalf("order after the first replacing order became invalid: %d %s", r.code, r.body)
	}
}
