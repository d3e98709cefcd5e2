package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/crypto/ocsp"

	"github.com/hsmca/hsmca/ca"
)

func TestSealedIssueActivateSeal(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		name string
		c    *http.Client
		base string
	}{
		{"socket", e.socketClient(), "http://admin"},
		{"mtls", e.client(&e.operator), e.httpsURL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			issue := IssueRequest{CSR: csrPEM(t, "svc.example.internal"), Profile: "server"}
			code, p, h := call(t, tc.c, "POST", tc.base+"/admin/cert/issue", issue, nil)
			if code != http.StatusServiceUnavailable || p.Type != ProbUnavailable || !strings.Contains(p.Detail, "CA awaits quorum (0 of 2)") {
				t.Fatalf("sealed issue: %d %+v", code, p)
			}
			if h.Get("Retry-After") == "" {
				t.Error("sealed 503 without Retry-After")
			}
			// One share: collecting, still 503 with 1 of 2.
			var q QuorumStatus
			if code, p, _ := call(t, tc.c, "POST", tc.base+"/admin/hsm/activate", ActivateRequest{Share: "share-1"}, &q); code != 200 {
				t.Fatalf("activate: %d %v", code, p)
			}
			if q.Presented != 1 || q.Threshold != 2 || q.State != StateCollecting {
				t.Fatalf("after one share: %+v", q)
			}
			code, p, _ = call(t, tc.c, "POST", tc.base+"/admin/cert/issue", issue, nil)
			if code != 503 || !strings.Contains(p.Detail, "(1 of 2)") {
				t.Fatalf("collecting issue: %d %+v", code, p)
			}
			// Duplicate and bad shares get their own codes.
			if code, p, _ := call(t, tc.c, "POST", tc.base+"/admin/hsm/activate", ActivateRequest{Share: "share-1"}, nil); code != http.StatusConflict {
				t.Fatalf("duplicate share: %d %v", code, p)
			}
			if code, p, _ := call(t, tc.c, "POST", tc.base+"/admin/hsm/activate", ActivateRequest{Share: "garbage"}, nil); code != http.StatusUnprocessableEntity || strings.Contains(p.Detail, "garbage") {
				t.Fatalf("bad share: %d %+v", code, p)
			}
			if code, p, _ := call(t, tc.c, "POST", tc.base+"/admin/hsm/activate", ActivateRequest{Share: "share-3"}, &q); code != 200 || !q.Active() {
				t.Fatalf("second share: %d %v %+v", code, p, q)
			}
			var ci CertInfo
			if code, p, _ := call(t, tc.c, "POST", tc.base+"/admin/cert/issue", issue, &ci); code != http.StatusCreated {
				t.Fatalf("issue: %d %+v", code, p)
			}
			leaf := parsePEMCert(t, ci.Certificate)
			inter := x509.NewCertPool()
			inter.AppendCertsFromPEM([]byte(ci.Chain))
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.rootPool, Intermediates: inter, DNSName: "svc.example.internal"}); err != nil {
				t.Fatalf("issued certificate does not verify: %v", err)
			}
			var shown CertInfo
			if code, p, _ := call(t, tc.c, "GET", tc.base+"/admin/cert/show/"+ci.Serial, nil, &shown); code != 200 || shown.Serial != ci.Serial || shown.Certificate != ci.Certificate {
				t.Fatalf("show: %d %v %+v", code, p, shown)
			}
			var list CertList
			if code, p, _ := call(t, tc.c, "GET", tc.base+"/admin/cert/list?profile=server", nil, &list); code != 200 {
				t.Fatalf("list: %d %v", code, p)
			}
			found := false
			for _, c := range list.Certificates {
				found = found || c.Serial == ci.Serial
			}
			if !found {
				t.Fatalf("list does not hold %s: %+v", ci.Serial, list)
			}
			// Seal: the very next request is refused.
			if code, p, _ := call(t, tc.c, "POST", tc.base+"/admin/hsm/seal", nil, &q); code != 200 || q.Active() {
				t.Fatalf("seal: %d %v %+v", code, p, q)
			}
			if code, p, _ := call(t, tc.c, "POST", tc.base+"/admin/cert/issue", issue, nil); code != 503 {
				t.Fatalf("issue after seal: %d %+v", code, p)
			}
		})
	}
}

func TestAdminAuthentication(t *testing.T) {
	e := newEnv(t, nil)
	// Certificates made while active: a revoked operator, a client-profile
	// certificate, and one from another CA.
	e.q.active = true
	revoked := e.clientCert(e.srv.CA(), "operator", "mallory")
	if _, err := e.srv.CA().Revoke(context.Background(), ca.SerialString(revoked.Leaf.SerialNumber), ca.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	client := e.clientCert(e.srv.CA(), "client", "bob")
	e.q.active = false
	_, otherInter, _, otherKey := newCAPair(t, "other")
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	foreign := mkCert(t, &x509.Certificate{SerialNumber: big.NewInt(99), Subject: pkix.Name{CommonName: "eve"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, otherInter, k.Public(), otherKey)
	foreignTLS := tls.Certificate{Certificate: [][]byte{foreign.Raw, otherInter.Raw}, PrivateKey: k}

	url := e.httpsURL + "/admin/hsm/status"
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		want int // 0: refused, by the TLS handshake or with 401/403
	}{
		{"no certificate", nil, http.StatusUnauthorized},
		{"another CA", &foreignTLS, 0},
		{"revoked operator", &revoked, http.StatusForbidden},
		{"client profile", &client, http.StatusForbidden},
		{"operator", &e.operator, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.client(tc.cert).Get(url)
			if tc.want == 0 {
				// Go's client sends no certificate that does not chain
				// to the CAs the server names; others fail the handshake.
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
						t.Fatalf("status %d, want a refusal", resp.StatusCode)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	// ACME stays open to clients without certificates.
	resp, err := e.client(nil).Get(e.httpsURL + "/acme/directory")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "acme here" {
		t.Fatalf("acme: %d %q", resp.StatusCode, b)
	}
	// The admin API is not on the plain-HTTP listener.
	resp, err = http.Get(e.httpURL + "/admin/hsm/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("admin on plain HTTP: %d", resp.StatusCode)
	}
}

func TestAdminSocket(t *testing.T) {
	e := newEnv(t, nil)
	fi, err := os.Stat(e.sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a 0600 socket", fi.Mode())
	}
	// A second server on the same socket is refused while the first lives.
	if _, err := listenSocket(e.sock); err == nil || !strings.Contains(err.Error(), "another hsmca server") {
		t.Fatalf("second listener: %v", err)
	}
	// A stale socket file (nobody listening) is replaced.
	stale := e.dir + "/stale.sock"
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln2, err := listenSocket(stale)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	ln2.Close()
	// Anything but a socket at the path is left alone: a mistyped
	// admin_socket must not delete the store or a share.
	notSock := e.dir + "/ca.db.copy"
	if err := os.WriteFile(notSock, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ln, err := listenSocket(notSock); err == nil {
		ln.Close()
		t.Fatal("listened on a path that held a regular file")
	}
	if b, err := os.ReadFile(notSock); err != nil || string(b) != "precious" {
		t.Fatalf("the file at the socket path was changed: %q, %v", b, err)
	}
}

// ocspRequest builds a DER request for leaf.
func ocspRequest(t testing.TB, leaf, issuer *x509.Certificate) []byte {
	t.Helper()
	der, err := ocsp.CreateRequest(leaf, issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func postOCSP(t testing.TB, url string, der []byte) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/ocsp-request", bytes.NewReader(der))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestOCSPAndCRL(t *testing.T) {
	e := newEnv(t, nil)
	sc := e.socketClient()
	e.activate(sc, "http://admin")
	var ci CertInfo
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/issue", IssueRequest{CSR: csrPEM(t, "a.example.internal"), Profile: "server"}, &ci); code != 201 {
		t.Fatalf("issue: %d %v", code, p)
	}
	leaf := parsePEMCert(t, ci.Certificate)
	if len(leaf.OCSPServer) != 1 || len(leaf.CRLDistributionPoints) != 1 || len(leaf.IssuingCertificateURL) != 1 {
		t.Fatalf("leaf URLs: ocsp %v crl %v aia %v", leaf.OCSPServer, leaf.CRLDistributionPoints, leaf.IssuingCertificateURL)
	}
	req := ocspRequest(t, leaf, e.inter)

	check := func(name string, resp *http.Response, body []byte, want int) *ocsp.Response {
		t.Helper()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/ocsp-response" {
			t.Fatalf("%s: %d %s", name, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		r, err := ocsp.ParseResponseForCert(body, leaf, e.inter)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Status != want {
			t.Fatalf("%s: status %d, want %d", name, r.Status, want)
		}
		if cc := resp.Header.Get("Cache-Control"); !strings.Contains(cc, "max-age=") {
			t.Errorf("%s: Cache-Control %q", name, cc)
		}
		return r
	}
	resp, body := postOCSP(t, leaf.OCSPServer[0], req)
	check("POST good", resp, body, ocsp.Good)
	getURL := leaf.OCSPServer[0] + "/" + base64.StdEncoding.EncodeToString(req)
	r, err := http.Get(getURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(r.Body)
	r.Body.Close()
	check("GET good", r, body, ocsp.Good)

	// Revoke: OCSP says revoked with the reason, the CRL at the URL in the
	// certificate lists the serial.
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/revoke", RevokeRequest{Serial: ci.Serial, Reason: "keyCompromise"}, nil); code != 200 {
		t.Fatalf("revoke: %d %v", code, p)
	}
	resp, body = postOCSP(t, leaf.OCSPServer[0], req)
	rr := check("POST revoked", resp, body, ocsp.Revoked)
	if rr.RevocationReason != ocsp.KeyCompromise {
		t.Fatalf("revocation reason %d", rr.RevocationReason)
	}
	var crl *x509.RevocationList
	deadline := time.Now().Add(20 * time.Second)
	for crl == nil || len(crl.RevokedCertificateEntries) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no CRL listing the revoked serial appeared")
		}
		r, err := http.Get(leaf.CRLDistributionPoints[0])
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode == 200 {
			if crl, err = x509.ParseRevocationList(b); err != nil {
				t.Fatal(err)
			}
			if err := crl.CheckSignatureFrom(e.inter); err != nil {
				t.Fatal(err)
			}
			if r.Header.Get("Content-Type") != "application/pkix-crl" {
				t.Errorf("CRL content type %q", r.Header.Get("Content-Type"))
			}
		} else {
			time.Sleep(20 * time.Millisecond) // polling the background CRL job
		}
	}
	if crl.RevokedCertificateEntries[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 || crl.RevokedCertificateEntries[0].ReasonCode != ocsp.KeyCompromise {
		t.Fatalf("CRL entries: %+v", crl.RevokedCertificateEntries)
	}

	// AIA serves the issuer.
	r, err = http.Get(leaf.IssuingCertificateURL[0])
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if !bytes.Equal(b, e.inter.Raw) {
		t.Fatalf("AIA: %d, %d bytes", r.StatusCode, len(b))
	}

	// Sealed: the last signed answers keep being served.
	if code, _, _ := call(t, sc, "POST", "http://admin/admin/hsm/seal", nil, nil); code != 200 {
		t.Fatal("seal failed")
	}
	resp, body = postOCSP(t, leaf.OCSPServer[0], req)
	check("sealed POST revoked", resp, body, ocsp.Revoked)
	r, err = http.Get(leaf.CRLDistributionPoints[0])
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != 200 {
		t.Fatalf("sealed CRL: %d", r.StatusCode)
	}
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/crl/generate", CRLRequest{}, nil); code != 503 || !strings.Contains(p.Detail, "CA awaits quorum") {
		t.Fatalf("sealed crl generate: %d %+v", code, p)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxBodyBytes = 4096 })
	sc := e.socketClient()
	big := bytes.Repeat([]byte{'a'}, 10_000)
	for _, tc := range []struct {
		name, method, url, ctype string
		body                     []byte
		want                     int
	}{
		{"ocsp garbage POST", "POST", e.httpURL + "/ocsp", "application/ocsp-request", []byte("not der"), 400},
		{"ocsp garbage GET", "GET", e.httpURL + "/ocsp/MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA", "", nil, 400},
		{"ocsp not base64", "GET", e.httpURL + "/ocsp/!!!!", "", nil, 400},
		{"ocsp empty GET", "GET", e.httpURL + "/ocsp", "", nil, 400},
		{"ocsp oversized", "POST", e.httpURL + "/ocsp", "application/ocsp-request", big, 413},
		{"ocsp wrong type", "POST", e.httpURL + "/ocsp", "text/plain", []byte("x"), 415},
		{"ocsp wrong method", "PUT", e.httpURL + "/ocsp", "", nil, 405},
		{"unknown path", "GET", e.httpURL + "/nope", "", nil, 404},
		{"unknown crl", "GET", e.httpURL + "/crl/nope.crl", "", nil, 404},
		{"crl before first", "GET", e.httpURL + "/crl/issuing-1.crl", "", nil, 404},
		{"unknown aia", "GET", e.httpURL + "/aia/nope.crt", "", nil, 404},
		{"admin oversized", "POST", "http://admin/admin/cert/issue", "application/json", append([]byte(`{"csr":"`), append(big, `"}`...)...), 413},
		{"admin bad json", "POST", "http://admin/admin/cert/issue", "application/json", []byte(`{"csr":`), 400},
		{"admin unknown field", "POST", "http://admin/admin/cert/issue", "application/json", []byte(`{"csr":"x","evil":1}`), 400},
		{"admin bad csr", "POST", "http://admin/admin/cert/issue", "application/json", []byte(`{"csr":"x","profile":"server"}`), 400},
		{"admin unknown route", "GET", "http://admin/admin/nope", "", nil, 404},
		{"admin wrong method", "GET", "http://admin/admin/cert/issue", "", nil, 405},
		{"admin bad serial", "GET", "http://admin/admin/cert/show/zz", "", nil, 400},
		{"admin unknown serial", "GET", "http://admin/admin/cert/show/abcdef", "", nil, 404},
		{"admin bad limit", "GET", "http://admin/admin/cert/list?limit=0", "", nil, 400},
		{"admin bad reason", "POST", "http://admin/admin/cert/revoke", "application/json", []byte(`{"serial":"ab","reason":"bored"}`), 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := http.DefaultClient
			if strings.HasPrefix(tc.url, "http://admin") {
				c = sc
			}
			req, _ := http.NewRequest(tc.method, tc.url, bytes.NewReader(tc.body))
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	// Still serving.
	if code, _, _ := call(t, http.DefaultClient, "GET", e.httpURL+"/healthz", nil, nil); code != 200 {
		t.Fatalf("healthz after abuse: %d", code)
	}
}

func TestSlowClient(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ReadHeaderTimeout = 300 * time.Millisecond })
	conn, err := net.Dial("tcp", e.srv.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n") // never finishes the header
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server kept a slow client's connection open")
	}
	if len(b) > 0 && !strings.HasPrefix(string(b), "HTTP/1.1 408") {
		t.Fatalf("slow client got %q", b)
	}
	// An oversized header block is refused with 431.
	conn2, err := net.Dial("tcp", e.srv.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	io.WriteString(conn2, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 200<<10)+"\r\n\r\n")
	conn2.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, _ := bufio.NewReader(conn2).ReadString('\n')
	if !strings.Contains(line, "431") {
		t.Fatalf("oversized header: %q", line)
	}
	if code, _, _ := call(t, http.DefaultClient, "GET", e.httpURL+"/healthz", nil, nil); code != 200 {
		t.Fatalf("healthz after slow client: %d", code)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	e := newEnv(t, nil)
	var h Health
	if code, _, _ := call(t, http.DefaultClient, "GET", e.httpURL+"/healthz", nil, &h); code != 200 || !h.Sealed || h.Quorum.Threshold != 2 || h.Store != "ok" {
		t.Fatalf("healthz: %d %+v", code, h)
	}
	sc := e.socketClient()
	e.activate(sc, "http://admin")
	if code, _, _ := call(t, http.DefaultClient, "GET", e.httpURL+"/healthz", nil, &h); code != 200 || h.Sealed || h.Quorum.State != StateActive {
		t.Fatalf("healthz active: %d %+v", code, h)
	}
	var ci CertInfo
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/issue", IssueRequest{CSR: csrPEM(t, "m.example.internal"), Profile: "server"}, &ci); code != 201 {
		t.Fatalf("issue: %d %v", code, p)
	}
	e.ping.err = errors.New("store: disk on fire")
	resp, err := http.Get(e.httpURL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("healthz with failing store: %d", resp.StatusCode)
	}
	e.ping.err = nil
	resp, err = http.Get(e.httpURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`hsmca_issuances_total{outcome="ok",source="admin"} 1`,
		`hsmca_issuance_duration_seconds_count{source="admin"} 1`,
		`hsmca_sealed 0`,
		`hsmca_http_requests_total{code="503",listener="http",route="GET /healthz"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestReloadSwapsCA(t *testing.T) {
	e := newEnv(t, nil)
	old := e.srv.CA()
	cfg := old.Config()
	cfg.Policy.DeniedDNSSuffixes = []string{"denied.internal"}
	next, err := ca.New(cfg, []ca.Issuer{{Name: "issuing-1", Cert: e.inter, Chain: []*x509.Certificate{e.root},
		Signer: gateSigner{Signer: e.interKey, q: e.q}}}, e.st, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.srv.d.Reload = func() (Reloaded, error) { return Reloaded{CA: next}, nil }
	if err := e.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	sc := e.socketClient()
	e.activate(sc, "http://admin")
	code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/issue", IssueRequest{CSR: csrPEM(t, "x.denied.internal"), Profile: "server"}, nil)
	if code != http.StatusForbidden || p.Type != ProbPolicy {
		t.Fatalf("issue after reload: %d %+v", code, p)
	}
	e.srv.d.Reload = func() (Reloaded, error) { return Reloaded{}, errors.New("config: bad") }
	if err := e.srv.Reload(); err == nil || e.srv.CA() != next {
		t.Fatalf("failed reload: %v", err)
	}
}

// getStatus asks for the quorum status over c and reports the HTTP status
// (0 if the handshake failed) and whether the request went over a
// connection that was already open.
func getStatus(t *testing.T, c *http.Client, base string) (code int, reused bool) {
	t.Helper()
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", base+"/admin/hsm/status", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, reused
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body) // lets the connection be reused
	return resp.StatusCode, reused
}

// TestReloadOperatorRoots: a reload whose operator roots no longer include
// the CA of a client certificate refuses that certificate at once, on the
// connection it keeps alive and on new ones; a failed reload keeps the
// roots in force, and a reload can trust the CA again.
func TestReloadOperatorRoots(t *testing.T) {
	e := newEnv(t, nil) // operator roots: the issuer chain (CA A)
	otherRoot, _, _, _ := newCAPair(t, "other")
	reloadRoots := func(roots ...*x509.Certificate) error {
		e.srv.d.Reload = func() (Reloaded, error) { return Reloaded{CA: e.srv.CA(), OperatorRoots: roots}, nil }
		return e.srv.Reload()
	}

	alice := e.client(&e.operator)
	if code, _ := getStatus(t, alice, e.httpsURL); code != http.StatusOK {
		t.Fatalf("before reload: status %d", code)
	}
	if err := reloadRoots(otherRoot); err != nil {
		t.Fatal(err)
	}
	code, reused := getStatus(t, alice, e.httpsURL)
	if !reused {
		t.Fatal("the client opened a new connection; the test needs the kept-alive one")
	}
	if code != http.StatusForbidden {
		t.Fatalf("kept-alive connection after the reload dropped its CA: status %d, want 403", code)
	}
	// A new connection: Go's client sends no certificate the server's
	// roots do not name (401); any other refusal fails the handshake (0).
	if code, _ := getStatus(t, e.client(&e.operator), e.httpsURL); code != 0 && code != http.StatusUnauthorized {
		t.Fatalf("new connection after the reload dropped its CA: status %d", code)
	}

	e.srv.d.Reload = func() (Reloaded, error) { return Reloaded{}, errors.New("config: server.operator_ca: no certificate") }
	if err := e.srv.Reload(); err == nil {
		t.Fatal("failed reload reported success")
	}
	if code, _ := getStatus(t, e.client(&e.operator), e.httpsURL); code == http.StatusOK {
		t.Fatal("a failed reload restored the dropped CA")
	}

	if err := reloadRoots(e.root); err != nil {
		t.Fatal(err)
	}
	if code, _ := getStatus(t, e.client(&e.operator), e.httpsURL); code != http.StatusOK {
		t.Fatalf("after trusting CA A again: status %d", code)
	}
}

func TestShutdownSealsAndRemovesSocket(t *testing.T) {
	e := newEnv(t, nil)
	e.activate(e.socketClient(), "http://admin")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if e.q.isActive() {
		t.Fatal("still active after shutdown")
	}
	if _, err := os.Stat(e.sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	if _, err := http.Get(e.httpURL + "/healthz"); err == nil {
		t.Fatal("still serving after shutdown")
	}
}

func TestCountingSignerAndOutcomes(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	q := newFakeQuorum()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s := m.CountingSigner("issuing-1", gateSigner{Signer: k, q: q})
	digest := make([]byte, 32)
	if _, err := s.Sign(rand.Reader, digest, crypto.SHA256); !errors.Is(err, ca.ErrSealed) {
		t.Fatalf("sealed sign: %v", err)
	}
	q.active = true
	if _, err := s.Sign(rand.Reader, digest, crypto.SHA256); err != nil {
		t.Fatal(err)
	}
	for _, result := range []string{"ok", "sealed"} {
		var mm dto.Metric
		if err := m.sigs.WithLabelValues("issuing-1", result).Write(&mm); err != nil {
			t.Fatal(err)
		}
		if got := mm.GetCounter().GetValue(); got != 1 {
			t.Errorf("%s signatures: %v, want 1", result, got)
		}
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{fmt.Errorf("x: %w", ca.ErrSealed), "sealed"},
		{&ca.ErrPolicy{Name: "a", Reason: "no"}, "rejected"},
		{&ca.ErrBadCSR{Rule: "sig"}, "rejected"},
		{errors.New("disk"), "error"},
	} {
		if got := issuanceOutcome(tc.err); got != tc.want {
			t.Errorf("outcome(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

// An operator certificate that expired while its connection stayed open
// is refused at the next request, not only at the next handshake.
func TestCheckOperatorRefusesExpiredLeaf(t *testing.T) {
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		NotBefore:    time.Now().Add(-2 * time.Hour),
		NotAfter:     time.Now().Add(-time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	r := httptest.NewRequest(http.MethodGet, "/admin/status", nil)
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}, VerifiedChains: [][]*x509.Certificate{{leaf}}}
	err := (&Server{}).checkOperator(r)
	if err == nil || !strings.Contains(err.Error(), "not valid now") {
		t.Fatalf("expired operator certificate: %v", err)
	}
}

// TestReloadsApplyInOrder: two reloads that overlap (a SIGHUP while the
// previous one still reads the configuration) apply one after the other,
// so the configuration read last is the one in force. Before reloads were
// serialized, a slow first reload could store its older CA over the one a
// later reload had already installed.
func TestReloadsApplyInOrder(t *testing.T) {
	e := newEnv(t, nil)
	older, newer := e.srv.CA(), e.srv.CA()
	cfg := older.Config()
	var err error
	if newer, err = ca.New(cfg, []ca.Issuer{{Name: "issuing-1", Cert: e.inter, Chain: []*x509.Certificate{e.root},
		Signer: gateSigner{Signer: e.interKey, q: e.q}}}, e.st, ca.Options{}); err != nil {
		t.Fatal(err)
	}
	firstReading := make(chan struct{})
	releaseFirst := make(chan struct{})
	var calls atomic.Int32
	e.srv.d.Reload = func() (Reloaded, error) {
		if calls.Add(1) == 1 {
			close(firstReading)
			<-releaseFirst // the first reload is slow to read its configuration
			return Reloaded{CA: older}, nil
		}
		return Reloaded{CA: newer}, nil
	}
	first := make(chan error, 1)
	go func() { first <- e.srv.Reload() }()
	<-firstReading
	second := make(chan error, 1)
	go func() { second <- e.srv.Reload() }()
	// Give the second reload time to overtake the first if nothing stops it.
	select {
	case err := <-second:
		t.Fatalf("the second reload finished (%v) while the first was still reading its configuration", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(releaseFirst)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if e.srv.CA() != newer {
		t.Fatal("the configuration read first is in force after a later reload")
	}
}

// TestAdminUnrevoke: POST /admin/cert/unrevoke takes a certificate off
// certificateHold and OCSP answers good again at once; a certificate that
// is not on hold, or revoked for another reason, is 409 and stays as it
// was; an unknown serial is 404.
func TestAdminUnrevoke(t *testing.T) {
	e := newEnv(t, nil)
	sc := e.socketClient()
	e.activate(sc, "http://admin")
	var ci CertInfo
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/issue", IssueRequest{CSR: csrPEM(t, "hold.example.internal"), Profile: "server"}, &ci); code != 201 {
		t.Fatalf("issue: %d %v", code, p)
	}
	leaf := parsePEMCert(t, ci.Certificate)
	req := ocspRequest(t, leaf, e.inter)
	ocspStatus := func() int {
		t.Helper()
		resp, body := postOCSP(t, leaf.OCSPServer[0], req)
		r, err := ocsp.ParseResponseForCert(body, leaf, e.inter)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("OCSP: %d %v", resp.StatusCode, err)
		}
		return r.Status
	}
	unrevoke := func(serial string, want int) CertInfo {
		t.Helper()
		var got CertInfo
		if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/unrevoke", UnrevokeRequest{Serial: serial}, &got); code != want {
			t.Fatalf("unrevoke %s: %d %v, want %d", serial, code, p, want)
		}
		return got
	}
	unrevoke(ci.Serial, http.StatusConflict) // valid, not on hold
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/revoke", RevokeRequest{Serial: ci.Serial, Reason: "certificateHold"}, nil); code != 200 {
		t.Fatalf("hold: %d %v", code, p)
	}
	if s := ocspStatus(); s != ocsp.Revoked {
		t.Fatalf("OCSP on hold: %d", s)
	}
	if got := unrevoke(ci.Serial, http.StatusOK); got.Status != string(ca.StatusValid) {
		t.Fatalf("after unrevoke: status %q", got.Status)
	}
	if s := ocspStatus(); s != ocsp.Good {
		t.Fatalf("OCSP after unrevoke: %d, want good", s)
	}
	if code, p, _ := call(t, sc, "POST", "http://admin/admin/cert/revoke", RevokeRequest{Serial: ci.Serial, Reason: "superseded"}, nil); code != 200 {
		t.Fatalf("revoke: %d %v", code, p)
	}
	unrevoke(ci.Serial, http.StatusConflict)
	if s := ocspStatus(); s != ocsp.Revoked {
		t.Fatalf("OCSP after a refused unrevoke: %d, want revoked", s)
	}
	unrevoke("abcdef0123", http.StatusNotFound)
}
