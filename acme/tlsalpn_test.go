package acme_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	hacme "github.com/hsmca/hsmca/acme"
)

// alpnCert is a tls-alpn-01 certificate (RFC 8737 §3) for name proving
// keyAuth.
func alpnCert(t *testing.T, name, keyAuth string) *tls.Certificate {
	t.Helper()
	sum := sha256.Sum256([]byte(keyAuth))
	val, _ := asn1.Marshal(sum[:])
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames:        []string{name},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 31}, Critical: true, Value: val}}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// tls-alpn-01 tries each address the name resolves to, as http-01 does:
// an address that refuses the connection does not fail the validation when
// a later one validates, and when none does the problem names the last
// address tried. 127.0.0.2 is loopback too, but the challenge server
// listens on 127.0.0.1 only, so it refuses.
func TestTLSALPN01TriesEachAddress(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.ValidationRetries = -1 })
	refusing, serving := net.IPv4(127, 0, 0, 2), net.IPv4(127, 0, 0, 1)
	if c, err := net.Dial("tcp", net.JoinHostPort(refusing.String(), strconv.Itoa(e.chal.tlsPort))); err == nil {
		c.Close()
		t.Fatalf("%s accepts connections on the tls-alpn-01 port; the test needs it to refuse", refusing)
	}
	a := newRaw(t, e)
	a.register()
	for _, tc := range []struct {
		name   string
		addrs  []net.IP
		cert   bool
		want   string
		detail string // in the challenge's error, when invalid
	}{
		{"first address refuses", []net.IP{refusing, serving}, true, "valid", ""},
		{"no address validates", []net.IP{serving, refusing}, false, "invalid", refusing.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := strings.ReplaceAll(tc.name, " ", "-") + ".example.test"
			e.dns.setA(host, tc.addrs...)
			_, o := a.newOrder(host)
			z := decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{}))
			for _, ch := range z.Challenges {
				if ch.Type != "tls-alpn-01" {
					continue
				}
				if tc.cert {
					e.chal.setCert(host, alpnCert(t, host, a.keyAuth(ch.Token)))
				}
				if r := a.post(ch.URL, map[string]any{}, signOpts{}); r.code != 200 {
					t.Fatalf("challenge: %d %s", r.code, r.body)
				}
			}
			type authz struct {
				Status     string
				Challenges []struct {
					Type  string
					Error *struct{ Type, Detail string }
				}
			}
			var got authz
			waitFor(t, "authorization settled", func() bool {
				got = decode[authz](t, a.post(o.Authorizations[0], nil, signOpts{}))
				return got.Status == "valid" || got.Status == "invalid"
			})
			if got.Status != tc.want {
				t.Fatalf("authorization %s, want %s (%+v)", got.Status, tc.want, got)
			}
			if tc.want != "invalid" {
				return
			}
			for _, c := range got.Challenges {
				if c.Type == "tls-alpn-01" && (c.Error == nil || !strings.Contains(c.Error.Detail, tc.detail)) {
					t.Fatalf("challenge error %+v, want one naming %s (the last address)", c.Error, tc.detail)
				}
			}
		})
	}
}

// alpnCertSAN is alpnCert with the subjectAltName extension given as
// names, encoded as is (so that it may hold GeneralName types that
// crypto/x509 does not parse).
func alpnCertSAN(t *testing.T, keyAuth string, names ...asn1.RawValue) *tls.Certificate {
	t.Helper()
	sum := sha256.Sum256([]byte(keyAuth))
	val, _ := asn1.Marshal(sum[:])
	san, err := asn1.Marshal(names)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: san},
			{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 31}, Critical: true, Value: val}}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// RFC 8737 §3: the certificate's subjectAltName holds the identifier "and
// no other entries". An extra entry of a type crypto/x509 does not parse
// (registeredID, otherName) fails the validation like any other; the
// identifier alone, encoded the same way, passes.
func TestTLSALPN01ExtraSANEntry(t *testing.T) {
	e := newEnv(t, func(c *hacme.Config) { c.ValidationRetries = -1 })
	a := newRaw(t, e)
	a.register()
	oid, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 3, 4})
	utf8, _ := asn1.Marshal("x")
	explicit, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: utf8})
	registeredID := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 8, Bytes: oid[2:]}
	otherName := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: append(append([]byte{}, oid...), explicit...)}
	for _, tc := range []struct {
		name  string
		extra []asn1.RawValue
		want  string
	}{
		{"identifier alone", nil, "valid"},
		{"and a registeredID", []asn1.RawValue{registeredID}, "invalid"},
		{"and an otherName", []asn1.RawValue{otherName}, "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := strings.ToLower(strings.ReplaceAll(tc.name, " ", "-")) + ".example.test"
			e.dns.setA(host, net.IPv4(127, 0, 0, 1))
			_, o := a.newOrder(host)
			z := decode[authzResp](t, a.post(o.Authorizations[0], nil, signOpts{}))
			for _, ch := range z.Challenges {
				if ch.Type != "tls-alpn-01" {
					continue
				}
				names := append([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte(host)}}, tc.extra...)
				e.chal.setCert(host, alpnCertSAN(t, a.keyAuth(ch.Token), names...))
				if r := a.post(ch.URL, map[string]any{}, signOpts{}); r.code != 200 {
					t.Fatalf("challenge: %d %s", r.code, r.body)
				}
			}
			type authz struct {
				Status     string
				Challenges []struct {
					Type  string
					Error *struct{ Type, Detail string }
				}
			}
			var got authz
			waitFor(t, "authorization settled", func() bool {
				got = decode[authz](t, a.post(o.Authorizations[0], nil, signOpts{}))
				return got.Status == "valid" || got.Status == "invalid"
			})
			if got.Status != tc.want {
				t.Fatalf("authorization %s, want %s (%+v)", got.Status, tc.want, got)
			}
			for _, c := range got.Challenges {
				if tc.want == "invalid" && c.Type == "tls-alpn-01" && (c.Error == nil || !strings.Contains(c.Error.Detail, "must name exactly")) {
					t.Fatalf("challenge error %+v, want the subjectAltName refused", c.Error)
				}
			}
		})
	}
}
