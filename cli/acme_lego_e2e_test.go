package cli

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-acme/lego/v5/acme"
	"github.com/go-acme/lego/v5/certcrypto"
	"github.com/go-acme/lego/v5/certificate"
	"github.com/go-acme/lego/v5/challenge/dns01"
	"github.com/go-acme/lego/v5/challenge/tlsalpn01"
	"github.com/go-acme/lego/v5/lego"
	"github.com/go-acme/lego/v5/registration"
	"github.com/miekg/dns"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"

	"github.com/hsmca/hsmca/server"
)

// legoChallenges answers the CA's validations for lego: http-01 tokens on a
// loopback HTTP server, tls-alpn-01 certificates on a loopback TLS server,
// and a DNS server that answers every A query with 127.0.0.1 and serves the
// dns-01 TXT records.
type legoChallenges struct {
	mu     sync.Mutex
	tokens map[string]string
	certs  map[string]*tls.Certificate
	txt    map[string][]string // a wildcard and its base name share one TXT name

	http01, alpn, dnsAddr string
}

func newLegoChallenges(t *testing.T) *legoChallenges {
	t.Helper()
	c := &legoChallenges{tokens: map[string]string{}, certs: map[string]*tls.Certificate{}, txt: map[string][]string{}}

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		ka, ok := c.tokens[strings.TrimPrefix(r.URL.Path, "/.well-known/acme-challenge/")]
		c.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(ka))
	})}
	go hs.Serve(hl)
	t.Cleanup(func() { hs.Close() })
	c.http01 = hl.Addr().String()

	tl, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		NextProtos: []string{tlsalpn01.ACMETLS1Protocol},
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			c.mu.Lock()
			defer c.mu.Unlock()
			if cert, ok := c.certs[h.ServerName]; ok {
				return cert, nil
			}
			for _, cert := range c.certs { // an IP identifier comes without SNI
				if h.ServerName == "" {
					return cert, nil
				}
			}
			return nil, os.ErrNotExist
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			conn, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				conn.(*tls.Conn).Handshake()
				conn.Close()
			}()
		}
	}()
	t.Cleanup(func() { tl.Close() })
	c.alpn = tl.Addr().String()

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ds := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		for _, q := range r.Question {
			switch q.Qtype {
			case dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(127, 0, 0, 1)})
			case dns.TypeTXT:
				c.mu.Lock()
				vals := c.txt[strings.ToLower(strings.TrimSuffix(q.Name, "."))]
				c.mu.Unlock()
				for _, v := range vals {
					m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 1}, Txt: []string{v}})
				}
			}
		}
		w.WriteMsg(m)
	})}
	go ds.ActivateAndServe()
	t.Cleanup(func() { ds.Shutdown() })
	c.dnsAddr = pc.LocalAddr().String()
	return c
}

type legoHTTP01 struct{ c *legoChallenges }

func (p legoHTTP01) Present(_ context.Context, _, token, keyAuth string) error {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	p.c.tokens[token] = keyAuth
	return nil
}
func (p legoHTTP01) CleanUp(context.Context, string, string, string) error { return nil }

type legoALPN struct{ c *legoChallenges }

func (p legoALPN) Present(_ context.Context, domain, _, keyAuth string) error {
	cert, err := tlsalpn01.ChallengeCert(domain, keyAuth)
	if err != nil {
		return err
	}
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	p.c.certs[domain] = cert
	return nil
}
func (p legoALPN) CleanUp(_ context.Context, domain, _, _ string) error {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	delete(p.c.certs, domain)
	return nil
}

type legoDNS01 struct{ c *legoChallenges }

func (p legoDNS01) Present(_ context.Context, domain, _, keyAuth string) error {
	sum := sha256.Sum256([]byte(keyAuth))
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	name := "_acme-challenge." + strings.ToLower(domain)
	p.c.txt[name] = append(p.c.txt[name], base64.RawURLEncoding.EncodeToString(sum[:]))
	return nil
}
func (p legoDNS01) CleanUp(context.Context, string, string, string) error { return nil }

type legoAccount struct {
	key crypto.Signer
	reg *acme.ExtendedAccount
}

func (u *legoAccount) GetEmail() string                       { return "ops@example.internal" }
func (u *legoAccount) GetRegistration() *acme.ExtendedAccount { return u.reg }
func (u *legoAccount) GetPrivateKey() crypto.Signer           { return u.key }

// lintLeaf runs zlint's RFC 5280 and Baseline Requirements lints over an
// issued leaf, skipping only the server profile's documented exclusions
// (docs/lints.md): private names, internal CRL/AIA hosts, a kept CN and no
// SKI in leaves.
func lintLeaf(t *testing.T, der []byte) {
	t.Helper()
	c, err := zx509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: lint.SourceList{lint.RFC5280, lint.CABFBaselineRequirements}})
	if err != nil {
		t.Fatal(err)
	}
	skip := map[string]bool{
		"e_dnsname_not_valid_tld": true, "e_ext_san_contains_reserved_ip": true,
		"w_sub_cert_aia_contains_internal_names": true, "e_sub_cert_aia_contains_internal_names": true,
		"w_subject_common_name_included": true, "w_ext_subject_key_identifier_missing_sub_cert": true,
	}
	for name, r := range zlint.LintCertificateEx(c, reg).Results {
		if !skip[name] && (r.Status == lint.Error || r.Status == lint.Fatal || r.Status == lint.Warn) {
			t.Errorf("zlint %s: %s %s", name, r.Status, r.Details)
		}
	}
}

// TestLegoThroughServe drives lego (a client nobody here wrote) against the
// real `hsmca ca serve`, issuing through the soft HSM with lint-then-sign:
// http-01, a dns-01 wildcard, tls-alpn-01, an IP identifier, renewal with
// ARI and revocation. Every certificate verifies to the root and passes
// zlint.
func TestLegoThroughServe(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	ch := newLegoChallenges(t)
	dir, httpsURL, httpURL := stoppedQuickstart(t)
	_, httpPort, _ := net.SplitHostPort(ch.http01)
	_, alpnPort, _ := net.SplitHostPort(ch.alpn)
	cfgPath := editConfig(t, dir, "http01_port: 80", "http01_port: "+httpPort, "tlsalpn01_port: 443", "tlsalpn01_port: "+alpnPort)
	p := startProc(t, dir, "ca", "serve", "--config", cfgPath, "--resolver", ch.dnsAddr)
	waitHealth(t, p, httpURL, isSealed)
	sock := filepath.Join(dir, "admin.sock")
	mustRun(t, dir, "hsm", "activate", "--socket", sock,
		"--share", filepath.Join(dir, "shares/issuing/share-2.txt"), "--share", filepath.Join(dir, "shares/issuing/share-3.txt"))
	waitHealth(t, p, httpURL, isActive)

	rootPEM, err := os.ReadFile(filepath.Join(dir, "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatal("root.pem holds no certificate")
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	dns01.SetDefaultClient(dns01.NewClient(&dns01.Options{RecursiveNameservers: []string{ch.dnsAddr}, Timeout: 2 * time.Second}))

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	user := &legoAccount{key: key}
	cfg := lego.NewConfig(user)
	cfg.CADirURL = httpsURL + "/acme/directory"
	cfg.HTTPClient = hc
	client, err := lego.NewClient(cfg)
	if err != nil {
		t.Fatalf("lego: %v", err)
	}
	if user.reg, err = client.Registration.Register(ctx, registration.RegisterOptions{TermsOfServiceAgreed: true}); err != nil {
		t.Fatalf("register: %v\n%s", err, tail(p.out.String(), 3000))
	}

	use := func(t *testing.T, typ string) {
		t.Helper()
		client.Challenge.ResetSolvers()
		var err error
		switch typ {
		case "http-01":
			err = client.Challenge.SetHTTP01Provider(legoHTTP01{ch})
		case "tls-alpn-01":
			err = client.Challenge.SetTLSALPN01Provider(legoALPN{ch})
		case "dns-01":
			err = client.Challenge.SetDNS01Provider(legoDNS01{ch}, dns01.PropagationWait(0, true))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	check := func(t *testing.T, res *certificate.Resource, names ...string) *x509.Certificate {
		t.Helper()
		var certs []*x509.Certificate
		rest := res.Certificate
		for {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			certs = append(certs, c)
		}
		if len(certs) < 2 {
			t.Fatalf("lego got %d certificates, want leaf and intermediate", len(certs))
		}
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
			t.Fatalf("certificate does not verify to the root: %v", err)
		}
		for _, n := range names {
			if err := certs[0].VerifyHostname(strings.Replace(n, "*.", "x.", 1)); err != nil {
				t.Fatalf("certificate does not cover %s: %v", n, err)
			}
		}
		lintLeaf(t, certs[0].Raw)
		return certs[0]
	}
	obtain := func(t *testing.T, names ...string) *certificate.Resource {
		t.Helper()
		res, err := client.Certificate.Obtain(ctx, certificate.ObtainRequest{Domains: names, Bundle: true, KeyType: certcrypto.EC256})
		if err != nil {
			t.Fatalf("obtain %v: %v\n%s", names, err, tail(p.out.String(), 3000))
		}
		return res
	}

	var web *certificate.Resource
	t.Run("http-01", func(t *testing.T) {
		use(t, "http-01")
		web = obtain(t, "web.example.internal", "api.example.internal")
		check(t, web, "web.example.internal", "api.example.internal")
	})
	t.Run("dns-01 wildcard", func(t *testing.T) {
		use(t, "dns-01")
		check(t, obtain(t, "*.apps.example.internal", "apps.example.internal"), "*.apps.example.internal", "apps.example.internal")
	})
	t.Run("tls-alpn-01", func(t *testing.T) {
		use(t, "tls-alpn-01")
		check(t, obtain(t, "alpn.example.internal"), "alpn.example.internal")
	})
	t.Run("ip identifier", func(t *testing.T) {
		use(t, "http-01")
		c := check(t, obtain(t, "127.0.0.1"))
		if len(c.IPAddresses) != 1 || !c.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
			t.Fatalf("IP SANs %v", c.IPAddresses)
		}
	})
	t.Run("renewal", func(t *testing.T) {
		if web == nil {
			t.Skip("http-01 failed")
		}
		use(t, "http-01")
		old := check(t, web)
		if _, err := client.Certificate.GetRenewalInfo(ctx, old); err != nil {
			t.Fatalf("ARI: %v", err)
		}
		res, err := client.Certificate.Renew(ctx, *web, &certificate.RenewOptions{Bundle: true, UseARICertID: true})
		if err != nil {
			t.Fatalf("renew: %v", err)
		}
		if nc := check(t, res, "web.example.internal"); nc.SerialNumber.Cmp(old.SerialNumber) == 0 {
			t.Fatal("renewal returned the same certificate")
		}
	})
	t.Run("revocation", func(t *testing.T) {
		use(t, "http-01")
		res := obtain(t, "gone.example.internal")
		c := check(t, res, "gone.example.internal")
		if err := client.Certificate.Revoke(ctx, res.Certificate); err != nil {
			t.Fatalf("revoke: %v", err)
		}
		var ci server.CertInfo
		code, prob, err := adminCall(socketClient(sock), "GET", "http://admin/admin/cert/show/"+c.SerialNumber.Text(16), nil, &ci)
		if err != nil || code != 200 || ci.Status != "revoked" {
			t.Fatalf("after lego revoke the CA says %d %v %v status %q", code, prob, err, ci.Status)
		}
	})
}
