package acme_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmca/hsmca/acme"
	"github.com/hsmca/hsmca/store"
	"github.com/miekg/dns"
)

// fakeCA is a tiny in-memory CA (root -> intermediate -> leaf, P-256)
// implementing acme.CA. It can be "sealed", refuses names under
// "denied.test" and, if maxNames is set, lists of more names. Like the
// real CA, CheckNames reports only the first name it refuses.
type fakeCA struct {
	root, inter *x509.Certificate
	interKey    crypto.Signer
	sealed      atomic.Bool
	maxNames    atomic.Int32
	hold        chan struct{} // if set, Issue waits until it is closed
	issued      atomic.Int64
	mu          sync.Mutex
	revoked     map[string]int
}

func newFakeCA(t testing.TB) *fakeCA {
	t.Helper()
	rk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ik, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	rt := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test Root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	rd, err := x509.CreateCertificate(rand.Reader, rt, rt, &rk.PublicKey, rk)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rd)
	it := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Test Issuing"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	id, err := x509.CreateCertificate(rand.Reader, it, root, &ik.PublicKey, rk)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(id)
	return &fakeCA{root: root, inter: inter, interKey: ik, revoked: map[string]int{}}
}

func (c *fakeCA) CheckNames(profile string, ids []acme.Identifier) error {
	if n := int(c.maxNames.Load()); n > 0 && len(ids) > n {
		return &acme.RejectedError{Identifier: acme.Identifier{Type: "dns", Value: fmt.Sprintf("%d names", len(ids))},
			Reason: fmt.Sprintf("at most %d names", n)}
	}
	for _, id := range ids {
		if strings.HasSuffix(id.Value, "denied.test") {
			return &acme.RejectedError{Identifier: id, Reason: "name is outside the CA's allowed suffixes"}
		}
	}
	return nil
}

func (c *fakeCA) Issue(ctx context.Context, req acme.IssueRequest) (*acme.Issued, error) {
	if c.hold != nil {
		select {
		case <-c.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if c.sealed.Load() {
		return nil, &acme.UnavailableError{Detail: "CA awaits quorum (1 of 2)", RetryAfter: 7 * time.Second}
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, &acme.BadCSRError{Reason: "does not parse"}
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	now := time.Now()
	tpl := &x509.Certificate{SerialNumber: serial, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(12 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, id := range req.Identifiers {
		switch id.Type {
		case "dns":
			tpl.DNSNames = append(tpl.DNSNames, id.Value)
		case "ip":
			tpl.IPAddresses = append(tpl.IPAddresses, net.ParseIP(id.Value))
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, c.inter, csr.PublicKey, c.interKey)
	if err != nil {
		return nil, err
	}
	c.issued.Add(1)
	return &acme.Issued{Serial: serial.Text(16), DER: der, Chain: [][]byte{c.inter.Raw}}, nil
}

func (c *fakeCA) Revoke(ctx context.Context, serial string, reason int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.revoked[serial]; ok {
		return errors.New("already revoked")
	}
	c.revoked[serial] = reason
	return nil
}

func (c *fakeCA) isRevoked(serial string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.revoked[serial]
	return ok
}

// verify checks that a leaf chains to the fake root.
func (c *fakeCA) verify(t testing.TB, leaf *x509.Certificate, chain []*x509.Certificate) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(c.root)
	inter := x509.NewCertPool()
	for _, ch := range chain {
		inter.AddCert(ch)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
		t.Fatalf("certificate does not verify to the root: %v", err)
	}
}

// testDNS answers A 127.0.0.1 for every name (or the A records tests set)
// and the TXT records tests set.
type testDNS struct {
	addr string
	mu   sync.Mutex
	txt  map[string][]string
	a    map[string][]net.IP
	srv  *dns.Server
}

func newTestDNS(t testing.TB) *testDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &testDNS{addr: pc.LocalAddr().String(), txt: map[string][]string{}, a: map[string][]net.IP{}}
	d.srv = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve)}
	started := make(chan struct{})
	d.srv.NotifyStartedFunc = func() { close(started) }
	go d.srv.ActivateAndServe()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("dns server did not start")
	}
	t.Cleanup(func() { d.srv.Shutdown() })
	return d
}

func (d *testDNS) setTXT(name, val string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name = strings.ToLower(dns.Fqdn(name))
	d.txt[name] = append(d.txt[name], val)
}

// setA makes name resolve to ips, in this order, instead of 127.0.0.1.
func (d *testDNS) setA(name string, ips ...net.IP) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.a[strings.ToLower(dns.Fqdn(name))] = ips
}

func (d *testDNS) clearTXT(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.txt, strings.ToLower(dns.Fqdn(name)))
}

func (d *testDNS) serve(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	for _, q := range r.Question {
		name := strings.ToLower(q.Name)
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 1}
		switch q.Qtype {
		case dns.TypeA:
			hdr.Rrtype = dns.TypeA
			d.mu.Lock()
			ips, ok := d.a[name]
			d.mu.Unlock()
			if !ok {
				ips = []net.IP{net.IPv4(127, 0, 0, 1)}
			}
			for _, ip := range ips {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: ip})
			}
		case dns.TypeTXT:
			hdr.Rrtype = dns.TypeTXT
			d.mu.Lock()
			for _, v := range d.txt[name] {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{v}})
			}
			d.mu.Unlock()
		case dns.TypeSOA:
			hdr.Rrtype = dns.TypeSOA
			m.Answer = append(m.Answer, &dns.SOA{Hdr: hdr, Ns: "ns.test.", Mbox: "h.test.", Serial: 1, Refresh: 1, Retry: 1, Expire: 1, Minttl: 1})
		}
	}
	w.WriteMsg(m)
}

// challengeServers serve http-01 tokens and tls-alpn-01 certificates on
// loopback for any client under test.
type challengeServers struct {
	httpPort, tlsPort int
	mu                sync.Mutex
	tokens            map[string]string
	redirects         map[string]string // path -> Location
	certs             map[string]*tls.Certificate
}

func newChallengeServers(t testing.TB) *challengeServers {
	t.Helper()
	c := &challengeServers{tokens: map[string]string{}, certs: map[string]*tls.Certificate{}, redirects: map[string]string{}}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		to, redirect := c.redirects[r.URL.Path]
		c.mu.Unlock()
		if redirect {
			http.Redirect(w, r, to, http.StatusFound)
			return
		}
		tok := strings.TrimPrefix(r.URL.Path, "/.well-known/acme-challenge/")
		tok = strings.TrimPrefix(tok, "/moved/")
		c.mu.Lock()
		ka, ok := c.tokens[tok]
		c.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(ka))
	})}
	go hs.Serve(hl)
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{NextProtos: []string{"acme-tls/1"}, GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if cert, ok := c.certs[h.ServerName]; ok {
			return cert, nil
		}
		return nil, fmt.Errorf("no certificate for %q", h.ServerName)
	}}
	ts := tls.NewListener(tl, cfg)
	go func() {
		for {
			conn, err := ts.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				conn.(*tls.Conn).Handshake()
			}()
		}
	}()
	t.Cleanup(func() { hs.Close(); ts.Close() })
	c.httpPort = hl.Addr().(*net.TCPAddr).Port
	c.tlsPort = tl.Addr().(*net.TCPAddr).Port
	return c
}

func (c *challengeServers) setToken(tok, ka string) {
	c.mu.Lock()
	c.tokens[tok] = ka
	c.mu.Unlock()
}

func (c *challengeServers) setRedirect(path, to string) {
	c.mu.Lock()
	c.redirects[path] = to
	c.mu.Unlock()
}

func (c *challengeServers) setCert(sni string, cert *tls.Certificate) {
	c.mu.Lock()
	c.certs[sni] = cert
	c.mu.Unlock()
}

// env is one ACME server on loopback with its store, CA, DNS and
// challenge servers.
type env struct {
	t      testing.TB
	ca     *fakeCA
	dns    *testDNS
	chal   *challengeServers
	dbPath string
	cfg    acme.Config
	opts   acme.Options
	wrap   func(acme.Store) acme.Store // optional, set before start
	st     *store.Store
	srv    *acme.Server
	http   *http.Server
	ln     net.Listener
	base   string // .../acme/
	tlsCfg *tls.Config
	client *http.Client // trusts the server's certificate
	dir    string       // directory URL
}

func newEnv(t testing.TB, mod func(*acme.Config)) *env {
	return newEnvOpts(t, mod, acme.Options{})
}

func newEnvOpts(t testing.TB, mod func(*acme.Config), opts acme.Options) *env {
	t.Helper()
	return newEnvWrap(t, mod, opts, nil)
}

// newEnvWrap is newEnvOpts with the server's store wrapped by wrap (if not
// nil) from the first start on.
func newEnvWrap(t testing.TB, mod func(*acme.Config), opts acme.Options, wrap func(acme.Store) acme.Store) *env {
	t.Helper()
	e := &env{t: t, ca: newFakeCA(t), dns: newTestDNS(t), chal: newChallengeServers(t),
		dbPath: filepath.Join(t.TempDir(), "hsmca.db"), opts: opts, wrap: wrap}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.ln = ln
	e.base = "https://" + ln.Addr().String() + "/acme/"
	e.serverTLS()
	e.dir = e.base + "directory"
	e.cfg = acme.Config{
		BaseURL:              e.base,
		HTTP01Port:           e.chal.httpPort,
		TLSALPN01Port:        e.chal.tlsPort,
		Resolver:             e.dns.addr,
		ValidationTimeout:    5 * time.Second,
		ValidationRetries:    2,
		ValidationRetryDelay: 50 * time.Millisecond,
		RetryAfter:           time.Second,
		Profiles:             map[string]string{"server": "TLS server certificates", "short": "short-lived"},
		DefaultProfile:       "server",
	}
	if mod != nil {
		mod(&e.cfg)
	}
	e.start()
	t.Cleanup(e.stop)
	return e
}

func (e *env) start() {
	e.t.Helper()
	st, err := store.Open(e.dbPath)
	if err != nil {
		e.t.Fatal(err)
	}
	opts := e.opts
	if opts.Logger == nil {
		opts.Logger = testLogger
	}
	var ast acme.Store = st
	if e.wrap != nil {
		ast = e.wrap(st)
	}
	srv, err := acme.New(e.cfg, e.ca, ast, opts)
	if err != nil {
		st.Close()
		e.t.Fatal(err)
	}
	if e.ln == nil {
		addr := strings.TrimSuffix(strings.TrimPrefix(e.base, "https://"), "/acme/")
		if e.ln, err = net.Listen("tcp", addr); err != nil {
			e.t.Fatal(err)
		}
	}
	e.st, e.srv = st, srv
	if e.client != nil {
		// Connections kept alive to a previous server instance are dead;
		// a POST on one would fail with EOF rather than be retried.
		e.client.CloseIdleConnections()
	}
	// Each server instance gets its own copy of the TLS config: net/http
	// fills in NextProtos on first use, and a server stopped right after
	// it started may still be doing that when the next one starts.
	e.http = &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, TLSConfig: e.tlsCfg.Clone()}
	go e.http.ServeTLS(e.ln, "", "")
}

func (e *env) stop() {
	if e.http == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e.http.Shutdown(ctx)
	e.srv.Close()
	e.st.Close()
	e.http, e.ln = nil, nil
}

// serverTLS makes the ACME server's own certificate (127.0.0.1) under the
// fake root and a client that trusts it.
func (e *env) serverTLS() {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	tpl := &x509.Certificate{SerialNumber: big.NewInt(3), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tpl, e.ca.inter, &k.PublicKey, e.ca.interKey)
	if err != nil {
		e.t.Fatal(err)
	}
	e.tlsCfg = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der, e.ca.inter.Raw}, PrivateKey: k}}}
	pool := x509.NewCertPool()
	pool.AddCert(e.ca.root)
	e.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 64}}
}

// restart closes and reopens the store and the server on the same address.
func (e *env) restart() {
	e.t.Helper()
	e.stop()
	e.start()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var testLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

func (c *fakeCA) revokedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.revoked)
}
