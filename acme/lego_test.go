package acme_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/go-acme/lego/v5/acme"
	"github.com/go-acme/lego/v5/certcrypto"
	"github.com/go-acme/lego/v5/certificate"
	"github.com/go-acme/lego/v5/challenge/dns01"
	"github.com/go-acme/lego/v5/challenge/http01"
	"github.com/go-acme/lego/v5/challenge/tlsalpn01"
	"github.com/go-acme/lego/v5/lego"
	"github.com/go-acme/lego/v5/registration"
	hacme "github.com/hsmca/hsmca/acme"
)

type legoUser struct {
	key crypto.Signer
	reg *acme.ExtendedAccount
}

func (u *legoUser) GetEmail() string                       { return "ops@example.test" }
func (u *legoUser) GetRegistration() *acme.ExtendedAccount { return u.reg }
func (u *legoUser) GetPrivateKey() crypto.Signer           { return u.key }

type http01Provider struct{ c *challengeServers }

func (p http01Provider) Present(_ context.Context, domain, token, keyAuth string) error {
	p.c.setToken(token, keyAuth)
	return nil
}
func (p http01Provider) CleanUp(context.Context, string, string, string) error { return nil }

type alpnProvider struct{ c *challengeServers }

func (p alpnProvider) Present(_ context.Context, domain, token, keyAuth string) error {
	cert, err := tlsalpn01.ChallengeCert(domain, keyAuth)
	if err != nil {
		return err
	}
	p.c.setCert(domain, cert)
	if a, err := netip.ParseAddr(domain); err == nil {
		p.c.setCert(reverse4(a), cert)
	}
	return nil
}
func (p alpnProvider) CleanUp(context.Context, string, string, string) error { return nil }

func reverse4(a netip.Addr) string {
	b := a.As4()
	return strconv.Itoa(int(b[3])) + "." + strconv.Itoa(int(b[2])) + "." + strconv.Itoa(int(b[1])) + "." + strconv.Itoa(int(b[0])) + ".in-addr.arpa"
}

// dnsProvider writes the TXT record into the test's DNS server.
type dnsProvider struct{ d *testDNS }

func (p dnsProvider) Present(_ context.Context, domain, token, keyAuth string) error {
	sum := sha256.Sum256([]byte(keyAuth))
	p.d.setTXT("_acme-challenge."+domain, base64.RawURLEncoding.EncodeToString(sum[:]))
	return nil
}
func (p dnsProvider) CleanUp(_ context.Context, domain, token, keyAuth string) error {
	p.d.clearTXT("_acme-challenge." + domain)
	return nil
}

func newLego(t *testing.T, e *env, key crypto.Signer) (*lego.Client, *legoUser) {
	t.Helper()
	if key == nil {
		key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	u := &legoUser{key: key}
	cfg := lego.NewConfig(u)
	cfg.CADirURL = e.dir
	cfg.HTTPClient = e.client
	c, err := lego.NewClient(cfg)
	if err != nil {
		t.Fatalf("lego client: %v", err)
	}
	return c, u
}

func parseBundle(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatal("no certificate in PEM")
	}
	return out
}

func TestLego(t *testing.T) {
	e := newEnv(t, nil)
	dns01.SetDefaultClient(dns01.NewClient(&dns01.Options{RecursiveNameservers: []string{e.dns.addr}, Timeout: 2 * time.Second}))
	ctx := context.Background()
	client, user := newLego(t, e, nil)
	reg, err := client.Registration.Register(ctx, registration.RegisterOptions{TermsOfServiceAgreed: true})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	user.reg = reg
	if reg.Status != "valid" {
		t.Fatalf("account status %q", reg.Status)
	}

	obtain := func(t *testing.T, domains ...string) *certificate.Resource {
		t.Helper()
		res, err := client.Certificate.Obtain(ctx, certificate.ObtainRequest{Domains: domains, Bundle: true, KeyType: certcrypto.EC256})
		if err != nil {
			t.Fatalf("obtain %v: %v", domains, err)
		}
		certs := parseBundle(t, res.Certificate)
		e.ca.verify(t, certs[0], certs[1:])
		for _, d := range domains {
			if err := certs[0].VerifyHostname(trimWild(d)); err != nil && net.ParseIP(d) == nil {
				t.Fatalf("certificate does not cover %s: %v", d, err)
			}
		}
		return res
	}
	solvers := func(t *testing.T, typ string) {
		t.Helper()
		client.Challenge.ResetSolvers()
		var err error
		switch typ {
		case "http-01":
			err = client.Challenge.SetHTTP01Provider(http01Provider{e.chal})
		case "tls-alpn-01":
			err = client.Challenge.SetTLSALPN01Provider(alpnProvider{e.chal})
		case "dns-01":
			err = client.Challenge.SetDNS01Provider(dnsProvider{e.dns}, dns01.PropagationWait(0, true))
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	var httpRes *certificate.Resource
	t.Run("http-01", func(t *testing.T) {
		solvers(t, "http-01")
		httpRes = obtain(t, "a.example.test", "b.example.test")
	})
	t.Run("dns-01 wildcard", func(t *testing.T) {
		solvers(t, "dns-01")
		res := obtain(t, "*.wild.example.test", "wild.example.test")
		c := parseBundle(t, res.Certificate)[0]
		if err := c.VerifyHostname("x.wild.example.test"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("tls-alpn-01", func(t *testing.T) {
		solvers(t, "tls-alpn-01")
		obtain(t, "alpn.example.test")
	})
	t.Run("ip identifier", func(t *testing.T) {
		solvers(t, "http-01")
		res := obtain(t, "127.0.0.1")
		c := parseBundle(t, res.Certificate)[0]
		if len(c.IPAddresses) != 1 || !c.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
			t.Fatalf("IP SANs %v", c.IPAddresses)
		}
	})
	t.Run("ip identifier tls-alpn-01", func(t *testing.T) {
		// A second account, so that the valid authorization of the first
		// for 127.0.0.1 is not reused.
		c2, u2 := newLego(t, e, nil)
		r2, err := c2.Registration.Register(ctx, registration.RegisterOptions{TermsOfServiceAgreed: true})
		if err != nil {
			t.Fatal(err)
		}
		u2.reg = r2
		if err := c2.Challenge.SetTLSALPN01Provider(alpnProvider{e.chal}); err != nil {
			t.Fatal(err)
		}
		res, err := c2.Certificate.Obtain(ctx, certificate.ObtainRequest{Domains: []string{"127.0.0.1"}, Bundle: true, KeyType: certcrypto.EC256})
		if err != nil {
			t.Fatalf("obtain: %v", err)
		}
		certs := parseBundle(t, res.Certificate)
		e.ca.verify(t, certs[0], certs[1:])
	})
	t.Run("renewal", func(t *testing.T) {
		if httpRes == nil {
			t.Skip("http-01 failed")
		}
		solvers(t, "http-01")
		old := parseBundle(t, httpRes.Certificate)[0]
		info, err := client.Certificate.GetRenewalInfo(ctx, old)
		if err != nil {
			t.Fatalf("ARI: %v", err)
		}
		if !info.SuggestedWindow.Start.After(old.NotBefore) || !info.SuggestedWindow.End.Before(old.NotAfter) {
			t.Fatalf("suggested window %v..%v outside the certificate's life", info.SuggestedWindow.Start, info.SuggestedWindow.End)
		}
		res, err := client.Certificate.Renew(ctx, *httpRes, &certificate.RenewOptions{Bundle: true, UseARICertID: true})
		if err != nil {
			t.Fatalf("renew: %v", err)
		}
		nc := parseBundle(t, res.Certificate)[0]
		if nc.SerialNumber.Cmp(old.SerialNumber) == 0 {
			t.Fatal("renewal returned the same certificate")
		}
		e.ca.verify(t, nc, parseBundle(t, res.Certificate)[1:])
		// The server recorded that the old certificate is replaced.
		rec, err := e.st.GetCert(ctx, old.SerialNumber.Text(16))
		if err != nil || !rec.Replaced {
			t.Fatalf("old certificate not marked replaced: %v %+v", err, rec)
		}
	})
	t.Run("revocation", func(t *testing.T) {
		solvers(t, "http-01")
		res := obtain(t, "revoke.example.test")
		c := parseBundle(t, res.Certificate)[0]
		if err := client.Certificate.Revoke(ctx, res.Certificate); err != nil {
			t.Fatalf("revoke: %v", err)
		}
		if !e.ca.isRevoked(c.SerialNumber.Text(16)) {
			t.Fatal("CA was not asked to revoke")
		}
		if err := client.Certificate.Revoke(ctx, res.Certificate); err == nil {
			t.Fatal("second revocation succeeded")
		}
	})
}

func trimWild(d string) string {
	if len(d) > 2 && d[:2] == "*." {
		return "x." + d[2:]
	}
	return d
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestLegoProviderServers uses lego's own challenge servers (http01 and
// tlsalpn01 ProviderServer) instead of the test's, on ports the server is
// configured to validate at.
func TestLegoProviderServers(t *testing.T) {
	hp, tp := freePort(t), freePort(t)
	e := newEnv(t, func(c *hacme.Config) { c.HTTP01Port, c.TLSALPN01Port = hp, tp })
	ctx := context.Background()
	client, user := newLego(t, e, nil)
	reg, err := client.Registration.Register(ctx, registration.RegisterOptions{TermsOfServiceAgreed: true})
	if err != nil {
		t.Fatal(err)
	}
	user.reg = reg
	for _, typ := range []string{"http-01", "tls-alpn-01"} {
		client.Challenge.ResetSolvers()
		if typ == "http-01" {
			err = client.Challenge.SetHTTP01Provider(http01.NewProviderServer("127.0.0.1", strconv.Itoa(hp)))
		} else {
			err = client.Challenge.SetTLSALPN01Provider(tlsalpn01.NewProviderServer("127.0.0.1", strconv.Itoa(tp)))
		}
		if err != nil {
			t.Fatal(err)
		}
		name := "lp-" + typ + ".example.test"
		res, err := client.Certificate.Obtain(ctx, certificate.ObtainRequest{Domains: []string{name}, Bundle: true, KeyType: certcrypto.EC256})
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		certs := parseBundle(t, res.Certificate)
		e.ca.verify(t, certs[0], certs[1:])
	}
}

func TestLegoEAB(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.ExternalAccountRequired = true })
	ctx := context.Background()
	kid, key, err := hacme.CreateEAB(ctx, e.st, "lego")
	if err != nil {
		t.Fatal(err)
	}
	client, user := newLego(t, e, nil)
	if _, err := client.Registration.Register(ctx, registration.RegisterOptions{TermsOfServiceAgreed: true}); err == nil {
		t.Fatal("registered without EAB")
	}
	reg, err := client.Registration.RegisterWithExternalAccountBinding(ctx, registration.RegisterEABOptions{
		TermsOfServiceAgreed: true, Kid: kid, HmacEncoded: key})
	if err != nil {
		t.Fatalf("register with EAB: %v", err)
	}
	user.reg = reg
	if err := client.Challenge.SetHTTP01Provider(http01Provider{e.chal}); err != nil {
		t.Fatal(err)
	}
	res, err := client.Certificate.Obtain(ctx, certificate.ObtainRequest{Domains: []string{"eab.example.test"}, Bundle: true, KeyType: certcrypto.EC256})
	if err != nil {
		t.Fatalf("obtain: %v", err)
	}
	certs := parseBundle(t, res.Certificate)
	e.ca.verify(t, certs[0], certs[1:])
}
