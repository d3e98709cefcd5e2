package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"slices"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// TestZKeyType checks that a subject key parsed by zcrypto gets the name
// crypto/x509's parse of the same certificate gets.
func TestZKeyType(t *testing.T) {
	issKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	iss := testIssuer(t, issKey)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	for want, pub := range map[string]crypto.PublicKey{
		"ecdsa-p256": issKey.Public(), "ecdsa-p384": p384.Public(), "ecdsa-p521": p521.Public(),
		"rsa-2048": rsaKey.Public(), "ed25519": edPub,
	} {
		der, err := x509.CreateCertificate(rand.Reader, testLeafTemplate(), iss, pub, issKey)
		if err != nil {
			t.Fatal(err)
		}
		zc, err := zx509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := zKeyType(zc.PublicKey); err != nil || got != want {
			t.Errorf("zKeyType = %q, %v; want %s", got, err, want)
		}
	}
}

// TestOwnChecks checks that each of hsmca's own checks refuses the
// certificate it is about, and passes a correct one.
func TestOwnChecks(t *testing.T) {
	issKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	iss := testIssuer(t, issKey)
	otherSKID := *iss
	otherSKID.SubjectKeyId = []byte{7, 7, 7}
	otherName := *iss
	otherName.RawSubject = nil
	otherName.Subject = pkix.Name{CommonName: "another CA"}
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)

	profiles := DefaultProfiles()
	server, err := newProfileState("server", profiles["server"].withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	st := &issuerState{Issuer: Issuer{Name: "t", Cert: iss}}
	ids := identifiers{dns: []string{"a.svc.corp"}}

	// registeredID [8] plus a DNS name: a SAN kind hsmca never issues.
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte("a.svc.corp")) })
		b.AddASN1(cbasn1.Tag(8).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte{0x2a, 0x03}) })
	})
	oddSAN := b.BytesOrPanic()

	manyNames := make([]string, 101)
	for i := range manyNames {
		manyNames[i] = "n" + big.NewInt(int64(i)).String() + ".svc.corp"
	}
	now := time.Now().Truncate(time.Second)
	long := func() *x509.Certificate {
		long := *iss
		long.NotAfter = now.Add(400 * 24 * time.Hour)
		return &long
	}()
	cases := []struct {
		name   string
		mut    func(*x509.Certificate)
		parent *x509.Certificate
		pub    crypto.PublicKey
		ids    *identifiers
		want   string // "" means clean
	}{
		{name: "clean", want: ""},
		{name: "outlives issuer", mut: func(c *x509.Certificate) { c.NotAfter = iss.NotAfter.Add(time.Minute) }, want: "hsmca_validity_within_issuer"},
		{name: "longer than profile", mut: func(c *x509.Certificate) {
			c.NotBefore = iss.NotBefore
			c.NotAfter = c.NotBefore.Add(91*24*time.Hour + 2*time.Hour)
		}, parent: long, want: "hsmca_validity_within_profile"},
		{name: "backdated default window", mut: func(c *x509.Certificate) {
			c.NotBefore = now.Add(-time.Hour)
			c.NotAfter = now.Add(90*24*time.Hour - time.Second)
		}, parent: long, want: ""},
		{name: "requested window plus backdate", mut: func(c *x509.Certificate) {
			// A window that starts after issuance gets no backdate.
			c.NotBefore = now.Add(time.Minute)
			c.NotAfter = c.NotBefore.Add(90*24*time.Hour + 30*time.Minute)
		}, parent: long, want: "hsmca_validity_within_profile"},
		{name: "key type", pub: edKey.Public(), want: "hsmca_key_type_allowed"},
		{name: "ca", mut: func(c *x509.Certificate) { c.IsCA = true; c.KeyUsage |= x509.KeyUsageCertSign }, want: "hsmca_not_ca"},
		{name: "issuer name", parent: &otherName, want: "hsmca_issuer_name"},
		{name: "aki", parent: &otherSKID, want: "hsmca_authority_key_id"},
		{name: "no server names", mut: func(c *x509.Certificate) { c.DNSNames, c.EmailAddresses = nil, []string{"a@svc.corp"} },
			ids: &identifiers{emails: []string{"a@svc.corp"}}, want: "hsmca_server_names"},
		{name: "names differ", mut: func(c *x509.Certificate) { c.DNSNames = []string{"b.svc.corp"} }, want: "hsmca_names_match_request"},
		{name: "ip differs", mut: func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.ParseIP("10.0.0.1")} }, want: "hsmca_names_match_request"},
		{name: "other SAN kind", mut: func(c *x509.Certificate) {
			c.DNSNames = nil
			c.ExtraExtensions = []pkix.Extension{{Id: []int{2, 5, 29, 17}, Value: oddSAN}}
		}, want: "hsmca_names_match_request"},
		{name: "too many names", mut: func(c *x509.Certificate) { c.DNSNames = manyNames },
			ids: &identifiers{dns: manyNames}, want: "hsmca_max_sans"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := testLeafTemplate()
			if tc.mut != nil {
				tc.mut(tmpl)
			}
			parent, pub, want := iss, crypto.PublicKey(leafKey.Public()), ids
			if tc.parent != nil {
				parent = tc.parent
			}
			if tc.pub != nil {
				pub = tc.pub
			}
			if tc.ids != nil {
				want = *tc.ids
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, issKey)
			if err != nil {
				t.Fatal(err)
			}
			zc, err := zx509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			st := st
			if tc.parent == long {
				st = &issuerState{Issuer: Issuer{Name: "t", Cert: parent}}
			}
			var got []string
			for _, r := range ownChecks(server, st, zc, want, now) {
				got = append(got, r.Lint)
			}
			switch {
			case tc.want == "" && len(got) > 0:
				t.Errorf("clean certificate refused: %v", got)
			case tc.want != "" && !slices.Contains(got, tc.want):
				t.Errorf("findings %v lack %s", got, tc.want)
			}
		})
	}
}
