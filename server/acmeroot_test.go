package server

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/store"
)

// endpointServer builds a server for a CA with urls and the ACME prefix
// acmePrefix, whose ACME handler answers "acme here".
func endpointServer(t *testing.T, urls ca.URLs, acmePrefix string) (*Server, error) {
	t.Helper()
	_, inter, _, interKey := newCAPair(t, "hsmca")
	st, err := store.Open(filepath.Join(t.TempDir(), "ca.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c, err := ca.New(ca.Config{Issuers: []ca.IssuerConfig{{Name: "issuing-1", Certificate: "unused.pem"}}, URLs: urls},
		[]ca.Issuer{{Name: "issuing-1", Cert: inter, Signer: interKey}}, st, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return New(Config{HTTPAddr: "127.0.0.1:0", ACMEPrefix: acmePrefix, CRLInterval: -1}, Deps{CA: c, Quorum: newFakeQuorum(), Store: &pinger{},
		ACME: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "acme here") })})
}

// TestACMEAtRootWithEndpoints: with ACME at the root (acme.base_url
// https://acme.example/), an OCSP, CRL or AIA URL without a path would take
// ACME's requests, so the configuration is refused; endpoints with paths
// leave every ACME request to ACME.
func TestACMEAtRootWithEndpoints(t *testing.T) {
	for name, urls := range map[string]ca.URLs{
		"ocsp at the root": {OCSP: "http://ocsp.example", CRLBase: "http://h/crl", AIABase: "http://h/aia"},
		"crl at the root":  {OCSP: "http://h/ocsp", CRLBase: "http://crl.example", AIABase: "http://h/aia"},
		"aia at the root":  {OCSP: "http://h/ocsp", CRLBase: "http://h/crl", AIABase: "http://aia.example/"},
	} {
		if _, err := endpointServer(t, urls, "/"); err == nil || !strings.Contains(err.Error(), "ACME is served at the root") {
			t.Errorf("%s: New = %v, want a refusal", name, err)
		}
	}
	s, err := endpointServer(t, ca.URLs{OCSP: "http://h/ocsp", CRLBase: "http://h/crl", AIABase: "http://h/aia"}, "/")
	if err != nil {
		t.Fatal(err)
	}
	h := s.httpsHandler()
	for _, req := range []*http.Request{
		httptest.NewRequest("GET", "/directory", nil),
		httptest.NewRequest("HEAD", "/new-nonce", nil),
		httptest.NewRequest("POST", "/new-account", nil),
		httptest.NewRequest("POST", "/order/abc", nil),
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Body.String() != "acme here" {
			t.Errorf("%s %s: %d %q, want the ACME handler", req.Method, req.URL.Path, w.Code, w.Body.String())
		}
	}
}

// TestUncleanEndpointPathRefused: a CRL, AIA or OCSP URL whose path has
// "..", "." or "//" segments is refused at New with the clean form, not a
// mux panic at Start.
func TestUncleanEndpointPathRefused(t *testing.T) {
	for _, urls := range []ca.URLs{
		{CRLBase: "http://h/pki/../crl"},
		{AIABase: "http://h/pki//aia"},
		{OCSP: "http://h/./ocsp"},
	} {
		if _, err := endpointServer(t, urls, ""); err == nil || !strings.Contains(err.Error(), "is not clean") {
			t.Errorf("%+v: New = %v, want a refusal", urls, err)
		}
	}
}
