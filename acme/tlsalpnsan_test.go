package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net"
	"testing"
	"time"
)

// generalName encodes one GeneralName (RFC 5280 §4.2.1.6) with tag and
// content; compound for the constructed ones.
func generalName(t *testing.T, tag int, compound bool, content []byte) asn1.RawValue {
	t.Helper()
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tag, IsCompound: compound, Bytes: content}
}

// certWithSAN is a self-signed certificate whose subjectAltName extension
// holds names as given (none: no extension).
func certWithSAN(t *testing.T, names ...asn1.RawValue) *x509.Certificate {
	t.Helper()
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	if names != nil {
		san, err := asn1.Marshal(names)
		if err != nil {
			t.Fatal(err)
		}
		tpl.ExtraExtensions = []pkix.Extension{{Id: idCeSubjectAltName, Value: san}}
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// RFC 8737 §3: the subjectAltName holds the identifier and no other
// entry, of any type, including the types crypto/x509 does not parse.
func TestSANIsExactly(t *testing.T) {
	oid, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 3, 4})
	utf8, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: mustMarshal(t, "x")})
	dirName := mustMarshal(t, pkix.Name{CommonName: "x"}.ToRDNSequence())

	dns := func(s string) asn1.RawValue { return generalName(t, 2, false, []byte(s)) }
	ip := func(s string) asn1.RawValue {
		a := net.ParseIP(s)
		if a4 := a.To4(); a4 != nil {
			a = a4
		}
		return generalName(t, 7, false, a)
	}
	registeredID := generalName(t, 8, false, oid[2:])
	otherName := generalName(t, 0, true, append(append([]byte{}, oid...), utf8...))
	directoryName := generalName(t, 4, true, dirName)
	email := generalName(t, 1, false, []byte("a@host.example"))
	uri := generalName(t, 6, false, []byte("https://host.example/"))

	dnsID := Identifier{Type: "dns", Value: "host.example"}
	ipID := Identifier{Type: "ip", Value: "192.0.2.1"}
	for _, tc := range []struct {
		name  string
		id    Identifier
		names []asn1.RawValue
		want  bool
	}{
		{"dns exactly", dnsID, []asn1.RawValue{dns("host.example")}, true},
		{"dns other name", dnsID, []asn1.RawValue{dns("other.example")}, false},
		{"dns and another dns", dnsID, []asn1.RawValue{dns("host.example"), dns("other.example")}, false},
		{"dns twice", dnsID, []asn1.RawValue{dns("host.example"), dns("host.example")}, false},
		{"dns and registeredID", dnsID, []asn1.RawValue{dns("host.example"), registeredID}, false},
		{"registeredID and dns", dnsID, []asn1.RawValue{registeredID, dns("host.example")}, false},
		{"dns and otherName", dnsID, []asn1.RawValue{dns("host.example"), otherName}, false},
		{"dns and directoryName", dnsID, []asn1.RawValue{dns("host.example"), directoryName}, false},
		{"dns and rfc822Name", dnsID, []asn1.RawValue{dns("host.example"), email}, false},
		{"dns and URI", dnsID, []asn1.RawValue{dns("host.example"), uri}, false},
		{"dns and ip", dnsID, []asn1.RawValue{dns("host.example"), ip("192.0.2.1")}, false},
		{"dns as constructed", dnsID, []asn1.RawValue{generalName(t, 2, true, []byte("host.example"))}, false},
		{"dns given as ip identifier", ipID, []asn1.RawValue{dns("192.0.2.1")}, false},
		{"no names", dnsID, []asn1.RawValue{}, false},
		{"no extension", dnsID, nil, false},
		{"ip exactly", ipID, []asn1.RawValue{ip("192.0.2.1")}, true},
		{"ip as 16 bytes", ipID, []asn1.RawValue{generalName(t, 7, false, net.ParseIP("192.0.2.1").To16())}, true},
		{"ip other address", ipID, []asn1.RawValue{ip("192.0.2.2")}, false},
		{"ip and registeredID", ipID, []asn1.RawValue{ip("192.0.2.1"), registeredID}, false},
		{"ip and dns", ipID, []asn1.RawValue{ip("192.0.2.1"), dns("host.example")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sanIsExactly(certWithSAN(t, tc.names...), tc.id); got != tc.want {
				t.Fatalf("sanIsExactly = %v, want %v", got, tc.want)
			}
		})
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzSANIsExactly feeds arbitrary subjectAltName extension values to
// sanIsExactly: it never panics, and it accepts only the one DER
// encoding of a single dNSName equal to the identifier.
func FuzzSANIsExactly(f *testing.F) {
	id := Identifier{Type: "dns", Value: "host.example"}
	want, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte(id.Value)}})
	if err != nil {
		f.Fatal(err)
	}
	oid, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 3, 4})
	extra, _ := asn1.Marshal([]asn1.RawValue{
		{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte(id.Value)},
		{Class: asn1.ClassContextSpecific, Tag: 8, Bytes: oid[2:]}})
	for _, seed := range [][]byte{want, extra, {0x30, 0x00}, {0x30, 0x81, 0x02, 0x82, 0x00}, nil} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, ext []byte) {
		c := &x509.Certificate{Extensions: []pkix.Extension{{Id: idCeSubjectAltName, Value: ext}}}
		if sanIsExactly(c, id) && string(ext) != string(want) {
			t.Fatalf("accepted %x, want only %x", ext, want)
		}
	})
}
