package acme_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"

	hacme "github.com/hsmca/hsmca/acme"
)

// Once an account's key verifies through a precomputed table (after 16
// requests), a request under its kid signed by another key, or with one
// bit of its own signature changed, is still refused, and its own requests
// still pass.
func TestAccountKeyTableStillRefusesForgeries(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	a.register()
	b := newRaw(t, e)
	b.register()
	for i := range 20 {
		if r := a.post(a.kid, nil, signOpts{}); r.code != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, r.code, r.body)
		}
	}
	r := a.post(a.kid, nil, signOpts{key: b.key})
	if r.code != http.StatusForbidden || r.problemType() != hacme.ProbUnauthorized {
		t.Fatalf("A's kid, B's key: %d %s", r.code, r.body)
	}
	body := a.sign(a.kid, nil, signOpts{})
	var jws map[string]string
	if err := json.Unmarshal(body, &jws); err != nil {
		t.Fatal(err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(jws["signature"])
	if err != nil {
		t.Fatal(err)
	}
	sig[40] ^= 0x01
	jws["signature"] = base64.RawURLEncoding.EncodeToString(sig)
	forged, _ := json.Marshal(jws)
	if r := a.postBody(a.kid, forged); r.code != http.StatusForbidden || r.problemType() != hacme.ProbUnauthorized {
		t.Fatalf("flipped signature bit: %d %s", r.code, r.body)
	}
	if r := a.post(a.kid, nil, signOpts{}); r.code != http.StatusOK {
		t.Fatalf("A's own request after the forgeries: %d %s", r.code, r.body)
	}
}
