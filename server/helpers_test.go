package server

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/store"
)

// fakeQuorum stands in for an hsm partition (the real one is exercised by
// the CLI's end-to-end tests): 2 of 3 shares named share-1..share-3, with
// the module's error contract (refused, duplicate).
type fakeQuorum struct {
	mu        sync.Mutex
	presented map[string]bool
	active    bool
}

func newFakeQuorum() *fakeQuorum { return &fakeQuorum{presented: map[string]bool{}} }

func (q *fakeQuorum) statusLocked() QuorumStatus {
	st := QuorumStatus{Partition: "issuing", State: StateSealed, Presented: len(q.presented), Threshold: 2, Shares: 3}
	switch {
	case q.active:
		st.State, st.Presented = StateActive, 2
	case len(q.presented) > 0:
		st.State = StateCollecting
	}
	return st
}

func (q *fakeQuorum) Status() (QuorumStatus, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.statusLocked(), nil
}

func (q *fakeQuorum) AddShare(b []byte) (QuorumStatus, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := strings.TrimSpace(string(b))
	switch s {
	case "share-1", "share-2", "share-3":
	default:
		return q.statusLocked(), fmt.Errorf("%w: hsm: share 0 rejected: checksum mismatch", ErrShareRefused)
	}
	if q.active {
		return q.statusLocked(), nil
	}
	if q.presented[s] {
		return q.statusLocked(), fmt.Errorf("%w: hsm: share already presented", ErrShareDuplicate)
	}
	q.presented[s] = true
	if len(q.presented) >= 2 {
		q.active = true
		q.presented = map[string]bool{}
	}
	return q.statusLocked(), nil
}

func (q *fakeQuorum) Seal() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.active = false
	q.presented = map[string]bool{}
	return nil
}

func (q *fakeQuorum) isActive() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.active
}

// gateSigner fails with ca.ErrSealed while the quorum is not active, as the
// CLI's wrapped HSM signer does.
type gateSigner struct {
	crypto.Signer
	q *fakeQuorum
}

func (g gateSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	if !g.q.isActive() {
		return nil, fmt.Errorf("%w: hsm: partition is sealed", ca.ErrSealed)
	}
	return g.Signer.Sign(r, d, o)
}

type pinger struct{ err error }

func (p *pinger) Ping() error { return p.err }

// testEnv is a server on loopback with a test PKI.
type testEnv struct {
	t                 testing.TB
	dir               string
	srv               *Server
	q                 *fakeQuorum
	st                *store.Store
	ping              *pinger
	root, inter       *x509.Certificate
	rootKey, interKey crypto.Signer
	rootPool          *x509.CertPool
	operator          tls.Certificate
	httpsURL, httpURL string
	sock              string
	reg               *prometheus.Registry
}

func mkCert(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newCAPair makes a root and an intermediate.
func newCAPair(t testing.TB, name string) (root, inter *x509.Certificate, rootKey, interKey crypto.Signer) {
	t.Helper()
	rk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ik, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	rt := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " root", Organization: []string{"hsmca test"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	root = mkCert(t, rt, rt, rk.Public(), rk)
	it := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name + " issuing", Organization: []string{"hsmca test"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(5 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature}
	inter = mkCert(t, it, root, ik.Public(), rk)
	return root, inter, rk, ik
}

// freeAddr returns a loopback address with a port that was free a moment
// ago (the CA's URLs must name it before the server listens).
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func newEnv(t testing.TB, mod func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, dir: t.TempDir(), q: newFakeQuorum(), ping: &pinger{}, reg: prometheus.NewRegistry()}
	e.root, e.inter, e.rootKey, e.interKey = newCAPair(t, "hsmca")
	e.rootPool = x509.NewCertPool()
	e.rootPool.AddCert(e.root)
	var err error
	if e.st, err = store.Open(filepath.Join(e.dir, "ca.db")); err != nil {
		t.Fatal(err)
	}
	httpAddr := freeAddr(t)
	cfgCA := ca.Config{
		Issuers: []ca.IssuerConfig{{Name: "issuing-1", Certificate: "unused.pem"}},
		URLs: ca.URLs{
			CRLBase: "http://" + httpAddr + "/crl",
			AIABase: "http://" + httpAddr + "/aia",
			OCSP:    "http://" + httpAddr + "/ocsp",
		},
	}
	c, err := ca.New(cfgCA, []ca.Issuer{{Name: "issuing-1", Cert: e.inter, Chain: []*x509.Certificate{e.root},
		Signer: gateSigner{Signer: e.interKey, q: e.q}}}, e.st, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The server's TLS certificate and an operator certificate, issued
	// while active (as quickstart does), then sealed again.
	e.q.active = true
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvCert := e.issueDirect(c, "server", srvKey, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}})
	e.operator = e.clientCert(c, "operator", "alice")
	e.q.active = false
	certFile, keyFile := filepath.Join(e.dir, "tls.pem"), filepath.Join(e.dir, "tls.key")
	writePEM(t, certFile, "CERTIFICATE", srvCert.DER, srvCert.Chain[0])
	kder, _ := x509.MarshalPKCS8PrivateKey(srvKey)
	writePEM(t, keyFile, "PRIVATE KEY", kder)

	e.sock = filepath.Join(e.dir, "admin.sock")
	cfg := Config{
		HTTPSAddr: "127.0.0.1:0", HTTPAddr: httpAddr, AdminSocket: e.sock,
		TLSCertFile: certFile, TLSKeyFile: keyFile, CRLInterval: -1,
	}
	if mod != nil {
		mod(&cfg)
	}
	m, err := NewMetrics(e.reg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv, err = New(cfg, Deps{CA: c, Quorum: e.q, Store: e.ping, Metrics: m, Gatherer: e.reg,
		ACME: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "acme here") })})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		e.st.Close()
	})
	e.httpsURL = "https://" + e.srv.HTTPSAddr()
	e.httpURL = "http://" + e.srv.HTTPAddr()
	return e
}

func writePEM(t testing.TB, path, typ string, ders ...[]byte) {
	t.Helper()
	var b bytes.Buffer
	for _, d := range ders {
		pem.Encode(&b, &pem.Block{Type: typ, Bytes: d})
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (e *testEnv) issueDirect(c *ca.CA, profile string, key crypto.Signer, tmpl *x509.CertificateRequest) *ca.Certificate {
	e.t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		e.t.Fatal(err)
	}
	cert, err := c.Issue(context.Background(), ca.IssueRequest{CSR: der, Profile: profile})
	if err != nil {
		e.t.Fatal(err)
	}
	return cert
}

// clientCert issues a client certificate with profile and returns it with
// its key and chain as a tls.Certificate.
func (e *testEnv) clientCert(c *ca.CA, profile, cn string) tls.Certificate {
	e.t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := e.issueDirect(c, profile, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}})
	leaf, _ := x509.ParseCertificate(cert.DER)
	return tls.Certificate{Certificate: append([][]byte{cert.DER}, cert.Chain...), PrivateKey: key, Leaf: leaf}
}

// client returns an HTTPS client trusting the test root, presenting cert
// (nil: none).
func (e *testEnv) client(cert *tls.Certificate) *http.Client {
	tc := &tls.Config{RootCAs: e.rootPool, ServerName: "localhost"}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
}

// socketClient talks to the admin socket.
func (e *testEnv) socketClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.sock)
		},
	}}
}

// call sends a JSON request and decodes the answer into out (or a
// Problem on error). It returns the status code and the problem, if any.
func call(t testing.TB, c *http.Client, method, url string, in, out any) (int, *Problem, http.Header) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		var p Problem
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatalf("%s %s: %d with a body that is no problem document: %q", method, url, resp.StatusCode, raw)
		}
		if ct := resp.Header.Get("Content-Type"); ct != ContentTypeProb {
			t.Errorf("%s %s: problem with Content-Type %q", method, url, ct)
		}
		return resp.StatusCode, &p, resp.Header
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, url, raw, err)
		}
	}
	return resp.StatusCode, nil, resp.Header
}

func csrPEM(t testing.TB, names ...string) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func parsePEMCert(t testing.TB, s string) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode([]byte(s))
	if blk == nil {
		t.Fatalf("no PEM in %q", s)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// activate presents two shares over c.
func (e *testEnv) activate(c *http.Client, base string) {
	e.t.Helper()
	for _, s := range []string{"share-1", "share-2"} {
		if code, p, _ := call(e.t, c, "POST", base+"/admin/hsm/activate", ActivateRequest{Share: s}, nil); code != 200 {
			e.t.Fatalf("activate: %d %v", code, p)
		}
	}
}
