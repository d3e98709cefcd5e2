package acme_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"testing"
)

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// makeCSR returns a P-256 CSR for DNS names and IP addresses.
func makeCSR(t testing.TB, names ...string) []byte {
	t.Helper()
	csr, _ := makeCSRKey(t, names...)
	return csr
}

// makeCSRKey is makeCSR that also returns the certificate key.
func makeCSRKey(t testing.TB, names ...string) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.CertificateRequest{Subject: pkix.Name{}}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tpl.IPAddresses = append(tpl.IPAddresses, ip)
		} else {
			tpl.DNSNames = append(tpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tpl, k)
	if err != nil {
		t.Fatal(err)
	}
	return der, k
}

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
