package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/store"
)

// getNoRedirect GETs url without following redirects.
func getNoRedirect(t testing.TB, url string) (*http.Response, []byte) {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r, b
}

// TestOCSPGetPathAsSent: an OCSP GET whose base64 holds "//" (about one
// request in forty) is answered like the same request by POST, whether
// the slashes are sent as they are (most clients), URL-encoded (RFC 5019
// §5), or after a base URL that ends in "/"; the path is never cleaned
// into a redirect to another request.
func TestOCSPGetPathAsSent(t *testing.T) {
	e := newEnv(t, nil)
	e.activate(e.socketClient(), "http://admin")
	var (
		leaf *x509.Certificate
		req  []byte
		enc  string
	)
	for i := 0; i < 2000 && leaf == nil; i++ {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		cert := e.issueDirect(e.srv.CA(), "server", key, &x509.CertificateRequest{DNSNames: []string{"a.example.internal"}})
		l, err := x509.ParseCertificate(cert.DER)
		if err != nil {
			t.Fatal(err)
		}
		r := ocspRequest(t, l, e.inter)
		if s := base64.StdEncoding.EncodeToString(r); strings.Contains(s, "//") {
			leaf, req, enc = l, r, s
		}
	}
	if leaf == nil {
		t.Fatal("no OCSP request with // in its base64 after 2000 certificates")
	}
	base := leaf.OCSPServer[0]
	for name, u := range map[string]string{
		"as sent":         base + "/" + enc,
		"URL-encoded":     base + "/" + strings.NewReplacer("/", "%2F", "+", "%2B", "=", "%3D").Replace(enc),
		"base URL with /": base + "//" + enc,
	} {
		r, body := getNoRedirect(t, u)
		if r.StatusCode != http.StatusOK {
			t.Errorf("%s: GET %s: %d (Location %q), want 200", name, u, r.StatusCode, r.Header.Get("Location"))
			continue
		}
		resp, err := ocsp.ParseResponseForCert(body, leaf, e.inter)
		if err != nil || resp.Status != ocsp.Good {
			t.Errorf("%s: %v (status %v), want good", name, err, resp)
		}
	}
	// The POST of the same request agrees.
	r, body := postOCSP(t, base, req)
	if resp, err := ocsp.ParseResponseForCert(body, leaf, e.inter); r.StatusCode != 200 || err != nil || resp.Status != ocsp.Good {
		t.Fatalf("POST: %d %v", r.StatusCode, err)
	}
}

// urlEnv is a server whose CA has the given URLs (addr is the HTTP
// listener's address), active, with one certificate issued and a CRL.
type urlEnv struct {
	srv   *Server
	inter *x509.Certificate
	leaf  *x509.Certificate
	http  string
}

func newURLEnv(t *testing.T, urls func(addr string) ca.URLs) *urlEnv {
	t.Helper()
	q := newFakeQuorum()
	root, inter, _, interKey := newCAPair(t, "hsmca")
	st, err := store.Open(filepath.Join(t.TempDir(), "ca.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	addr := freeAddr(t)
	c, err := ca.New(ca.Config{Issuers: []ca.IssuerConfig{{Name: "issuing-1", Certificate: "unused.pem"}}, URLs: urls(addr)},
		[]ca.Issuer{{Name: "issuing-1", Cert: inter, Chain: []*x509.Certificate{root}, Signer: gateSigner{Signer: interKey, q: q}}}, st, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{HTTPAddr: addr, CRLInterval: -1}, Deps{CA: c, Quorum: q, Store: &pinger{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	q.active = true
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := (&testEnv{t: t}).issueDirect(c, "server", key, &x509.CertificateRequest{DNSNames: []string{"a.example.internal"}})
	leaf, err := x509.ParseCertificate(cert.DER)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GenerateCRL(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	return &urlEnv{srv: srv, inter: inter, leaf: leaf, http: "http://" + addr}
}

// TestEndpointsAtCertificateURLs: whatever path ca.urls give (none at
// all, the same one for several endpoints, a trailing slash), the OCSP,
// CRL and AIA URLs written into a certificate are the ones served, and
// the fixed routes stay where they are.
func TestEndpointsAtCertificateURLs(t *testing.T) {
	for _, tc := range []struct {
		name string
		urls func(h string) ca.URLs
	}{
		{"OCSP without path", func(h string) ca.URLs {
			return ca.URLs{OCSP: "http://" + h, CRLBase: "http://" + h + "/crl", AIABase: "http://" + h + "/aia"}
		}},
		{"OCSP root with slash", func(h string) ca.URLs {
			return ca.URLs{OCSP: "http://" + h + "/", CRLBase: "http://" + h + "/crl", AIABase: "http://" + h + "/aia"}
		}},
		{"CRL without path", func(h string) ca.URLs {
			return ca.URLs{OCSP: "http://" + h + "/ocsp", CRLBase: "http://" + h, AIABase: "http://" + h + "/aia"}
		}},
		{"AIA without path", func(h string) ca.URLs {
			return ca.URLs{OCSP: "http://" + h + "/ocsp", CRLBase: "http://" + h + "/crl", AIABase: "http://" + h}
		}},
		{"none has a path", func(h string) ca.URLs {
			return ca.URLs{OCSP: "http://" + h, CRLBase: "http://" + h, AIABase: "http://" + h}
		}},
		{"one path for all", func(h string) ca.URLs {
			return ca.URLs{OCSP: "http://" + h + "/pki", CRLBase: "http://" + h + "/pki", AIABase: "http://" + h + "/pki/"}
		}},
		{"OCSP with trailing slash", func(h string) ca.URLs {
			return ca.URLs{OCSP: "http://" + h + "/ocsp/", CRLBase: "http://" + h + "/a/b/crl", AIABase: "http://" + h + "/aia"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newURLEnv(t, tc.urls)
			leaf := e.leaf
			if len(leaf.OCSPServer) != 1 || len(leaf.CRLDistributionPoints) != 1 || len(leaf.IssuingCertificateURL) != 1 {
				t.Fatalf("leaf URLs: ocsp %v crl %v aia %v", leaf.OCSPServer, leaf.CRLDistributionPoints, leaf.IssuingCertificateURL)
			}
			req := ocspRequest(t, leaf, e.inter)
			ocspURL := leaf.OCSPServer[0]
			r, body := postOCSP(t, ocspURL, req)
			if resp, err := ocsp.ParseResponseForCert(body, leaf, e.inter); r.StatusCode != 200 || err != nil || resp.Status != ocsp.Good {
				t.Errorf("OCSP POST to %s: %d %v", ocspURL, r.StatusCode, err)
			}
			getURL := strings.TrimSuffix(ocspURL, "/") + "/" + base64.StdEncoding.EncodeToString(req)
			r, body = getNoRedirect(t, getURL)
			if resp, err := ocsp.ParseResponseForCert(body, leaf, e.inter); r.StatusCode != 200 || err != nil || resp.Status != ocsp.Good {
				t.Errorf("OCSP GET %s: %d %v", getURL, r.StatusCode, err)
			}
			r, body = getNoRedirect(t, leaf.CRLDistributionPoints[0])
			if r.StatusCode != 200 {
				t.Errorf("CRL at %s: %d", leaf.CRLDistributionPoints[0], r.StatusCode)
			} else if rl, err := x509.ParseRevocationList(body); err != nil || rl.CheckSignatureFrom(e.inter) != nil {
				t.Errorf("CRL at %s: %v", leaf.CRLDistributionPoints[0], err)
			}
			r, body = getNoRedirect(t, leaf.IssuingCertificateURL[0])
			if r.StatusCode != 200 || !bytes.Equal(body, e.inter.Raw) {
				t.Errorf("AIA at %s: %d, %d bytes", leaf.IssuingCertificateURL[0], r.StatusCode, len(body))
			}
			for _, p := range []string{"/healthz", "/metrics"} {
				if r, _ := getNoRedirect(t, e.http+p); r.StatusCode != 200 {
					t.Errorf("%s: %d", p, r.StatusCode)
				}
			}
			// A CRL or certificate of an unknown issuer is 404 however the
			// paths are shared.
			for _, u := range []string{leaf.CRLDistributionPoints[0], leaf.IssuingCertificateURL[0]} {
				u = strings.Replace(u, "issuing-1", "nope", 1)
				if r, _ := getNoRedirect(t, u); r.StatusCode != http.StatusNotFound {
					t.Errorf("%s: %d, want 404", u, r.StatusCode)
				}
			}
		})
	}
}

// TestEndpointPathsRefused: CA URLs whose endpoints could not be served
// where they say are refused when the server is made.
func TestEndpointPathsRefused(t *testing.T) {
	_, inter, _, interKey := newCAPair(t, "hsmca")
	st, err := store.Open(filepath.Join(t.TempDir(), "ca.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, tc := range []struct {
		name string
		urls ca.URLs
		want string
	}{
		{"OCSP on healthz", ca.URLs{OCSP: "http://h/healthz"}, "/healthz"},
		{"CRL under admin", ca.URLs{CRLBase: "http://h/admin/crl"}, "/admin"},
		{"AIA under ACME", ca.URLs{AIABase: "http://h/acme"}, "/acme"},
		{"OCSP on metrics", ca.URLs{OCSP: "http://h/metrics/"}, "/metrics"},
		{"query", ca.URLs{OCSP: "http://h/ocsp?x=1"}, "query"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ca.New(ca.Config{Issuers: []ca.IssuerConfig{{Name: "issuing-1", Certificate: "unused.pem"}}, URLs: tc.urls},
				[]ca.Issuer{{Name: "issuing-1", Cert: inter, Signer: interKey}}, st, ca.Options{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = New(Config{HTTPAddr: "127.0.0.1:0"}, Deps{CA: c, Quorum: newFakeQuorum(), Store: &pinger{}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// TestCRLRegenerationPastSealedIssuer: an issuer whose partition this
// server never activates fails its CRL at every regeneration; the issuers
// after it still get theirs.
func TestCRLRegenerationPastSealedIssuer(t *testing.T) {
	dir := t.TempDir()
	q := newFakeQuorum()
	other := newFakeQuorum() // another partition, never activated here
	root, inter, _, interKey := newCAPair(t, "hsmca")
	_, inter2, _, inter2Key := newCAPair(t, "old")
	st, err := store.Open(filepath.Join(dir, "ca.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	httpAddr := freeAddr(t)
	c, err := ca.New(ca.Config{
		// "a-old" sorts, and is listed, before the default issuer.
		Issuers:       []ca.IssuerConfig{{Name: "a-old", Certificate: "unused.pem"}, {Name: "issuing-1", Certificate: "unused.pem"}},
		DefaultIssuer: "issuing-1",
		URLs:          ca.URLs{CRLBase: "http://" + httpAddr + "/crl", AIABase: "http://" + httpAddr + "/aia", OCSP: "http://" + httpAddr + "/ocsp"},
	}, []ca.Issuer{
		{Name: "a-old", Cert: inter2, Signer: gateSigner{Signer: inter2Key, q: other}},
		{Name: "issuing-1", Cert: inter, Chain: []*x509.Certificate{root}, Signer: gateSigner{Signer: interKey, q: q}},
	}, st, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "admin.sock")
	srv, err := New(Config{HTTPAddr: httpAddr, AdminSocket: sock, CRLInterval: -1}, Deps{CA: c, Quorum: q, Store: &pinger{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	e := &testEnv{t: t, sock: sock, q: q}
	sc := e.socketClient()
	e.activate(sc, "http://admin")
	var ci CertInfo
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/issue", IssueRequest{CSR: csrPEM(t, "a.example.internal"), Profile: "server"}, &ci); code != 201 {
		t.Fatalf("issue: %d %v", code, p)
	}
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/revoke", RevokeRequest{Serial: ci.Serial, Reason: "keyCompromise"}, nil); code != 200 {
		t.Fatalf("revoke: %d %v", code, p)
	}
	// The revocation kicks the background regeneration.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, b := getNoRedirect(t, "http://"+httpAddr+"/crl/issuing-1.crl")
		if r.StatusCode == 200 {
			if rl, err := x509.ParseRevocationList(b); err == nil && len(rl.RevokedCertificateEntries) == 1 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s after the revocation, /crl/issuing-1.crl: %d with no entry; the sealed issuer a-old stopped the regeneration", r.StatusCode)
		}
		time.Sleep(20 * time.Millisecond) // polling the background CRL job
	}
	// Generating every CRL reports the sealed one and still makes the other.
	crls, err := srv.generateCRLs(context.Background(), "")
	if err == nil || !strings.Contains(err.Error(), "a-old") {
		t.Errorf("generateCRLs: %v, want the a-old failure", err)
	}
	if len(crls) != 1 || crls[0].Issuer != "issuing-1" {
		t.Errorf("generateCRLs made %+v, want issuing-1's", crls)
	}
	// The admin API answers such a request with the CRLs it made, the
	// failures and the default issuer, not an error; one naming only the
	// sealed issuer gets that issuer's problem.
	var info CRLInfo
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/crl/generate", CRLRequest{}, &info); code != 200 {
		t.Fatalf("generate every CRL with one issuer sealed: %d %v", code, p)
	}
	if len(info.CRLs) != 1 || info.CRLs[0].Issuer != "issuing-1" || info.DefaultIssuer != "issuing-1" ||
		len(info.Failed) != 1 || info.Failed[0].Issuer != "a-old" || !strings.Contains(info.Failed[0].Reason, "a-old is in a sealed partition") {
		t.Fatalf("answer %+v, want issuing-1's CRL, the default issuer and a-old's failure", info)
	}
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/crl/generate", CRLRequest{Issuer: "a-old"}, nil); code != 503 {
		t.Fatalf("generate the sealed issuer's CRL: %d %v, want 503", code, p)
	}
}

// TestCRLRevalidationAfterUnhold: a CRL that takes a certificate off hold
// keeps the previous CRL's thisUpdate; a client revalidating with
// If-Modified-Since must still get it, and one with the old ETag too.
func TestCRLRevalidationAfterUnhold(t *testing.T) {
	e := newEnv(t, nil)
	sc := e.socketClient()
	e.activate(sc, "http://admin")
	var ci CertInfo
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/issue", IssueRequest{CSR: csrPEM(t, "hold.example.internal"), Profile: "server"}, &ci); code != 201 {
		t.Fatalf("issue: %d %v", code, p)
	}
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/revoke", RevokeRequest{Serial: ci.Serial, Reason: "certificateHold"}, nil); code != 200 {
		t.Fatalf("hold: %d %v", code, p)
	}
	var first, second CRLInfo
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/crl/generate", CRLRequest{}, &first); code != 200 {
		t.Fatalf("crl: %d %v", code, p)
	}
	crlURL := e.httpURL + "/crl/issuing-1.crl"
	r, _ := getNoRedirect(t, crlURL)
	etag := r.Header.Get("ETag")
	if etag == "" {
		t.Fatal("CRL without ETag")
	}
	// What a client sends back: Last-Modified if there is one, else the
	// CRL's thisUpdate.
	ims := r.Header.Get("Last-Modified")
	if ims == "" {
		ims = first.CRLs[0].ThisUpdate.UTC().Format(http.TimeFormat)
	}
	revalidate := func(h, v string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", crlURL, nil)
		req.Header.Set(h, v)
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if code := revalidate("If-None-Match", etag); code != http.StatusNotModified {
		t.Errorf("If-None-Match with the current ETag: %d, want 304", code)
	}
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/unrevoke", UnrevokeRequest{Serial: ci.Serial}, nil); code != 200 {
		t.Fatalf("unrevoke: %d %v", code, p)
	}
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/crl/generate", CRLRequest{}, &second); code != 200 {
		t.Fatalf("crl: %d %v", code, p)
	}
	t.Logf("CRL %s → %s, thisUpdate %s → %s, %d → %d entries", first.CRLs[0].Number, second.CRLs[0].Number,
		first.CRLs[0].ThisUpdate, second.CRLs[0].ThisUpdate, first.CRLs[0].Entries, second.CRLs[0].Entries)
	if code := revalidate("If-Modified-Since", ims); code != http.StatusOK {
		t.Errorf("If-Modified-Since %s after the CRL changed: %d, want 200", ims, code)
	}
	if code := revalidate("If-None-Match", etag); code != http.StatusOK {
		t.Errorf("If-None-Match %s after the CRL changed: %d, want 200", etag, code)
	}
}
