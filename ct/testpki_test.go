package ct

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ct/cttest"
)

// testPKI is a root and an intermediate made with crypto/x509, the way the
// CA's ceremonies make them.
type testPKI struct {
	root, inter       *x509.Certificate
	rootKey, interKey *ecdsa.PrivateKey
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{rootKey: newKey(t), interKey: newKey(t)}
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hsmca ct test root"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	p.root = mustCreate(t, rootTmpl, rootTmpl, p.rootKey.Public(), p.rootKey)
	interTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: "hsmca ct test issuing"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	p.inter = mustCreate(t, interTmpl, p.root, p.interKey.Public(), p.rootKey)
	return p
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCreate(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// leafTemplate is a server certificate template; serial is random.
func leafTemplate(t testing.TB, names ...string) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(90 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
}

// issued is a precertificate and how to finish it.
type issued struct {
	pki     *testPKI
	tmpl    *x509.Certificate
	leafKey *ecdsa.PrivateKey
	precert *x509.Certificate
}

// precert signs a precertificate for tmpl under the intermediate.
func (p *testPKI) precert(t testing.TB, tmpl *x509.Certificate) *issued {
	t.Helper()
	k := newKey(t)
	pt := *tmpl
	pt.ExtraExtensions = append(append([]pkix.Extension(nil), tmpl.ExtraExtensions...), PoisonExtension)
	return &issued{pki: p, tmpl: tmpl, leafKey: k, precert: mustCreate(t, &pt, p.inter, k.Public(), p.interKey)}
}

// chain is what the CA hands GetSCTs.
func (i *issued) chain() [][]byte {
	return [][]byte{i.precert.Raw, i.pki.inter.Raw, i.pki.root.Raw}
}

// final builds the final certificate with the SCT list.
func (i *issued) final(t testing.TB, scts [][]byte) *x509.Certificate {
	t.Helper()
	ext, err := SCTListExtension(scts)
	if err != nil {
		t.Fatal(err)
	}
	ft := *i.tmpl
	ft.ExtraExtensions = append(append([]pkix.Extension(nil), i.tmpl.ExtraExtensions...), ext)
	return mustCreate(t, &ft, i.pki.inter, i.leafKey.Public(), i.pki.interKey)
}

func writePEM(t testing.TB, path, typ string, der ...[]byte) {
	t.Helper()
	var out []byte
	for _, d := range der {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func pubPEM(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func parsePEMCert(b []byte) (*x509.Certificate, error) {
	cs, err := ParseCertificates(b)
	if err != nil {
		return nil, err
	}
	return cs[0], nil
}

// logCfg names a fake log in a Config (key inline as PEM).
func logCfg(f *cttest.FakeLog, name, operator string) LogConfig {
	return LogConfig{Name: name, URL: f.URL, PublicKey: f.PublicKeyPEM(), Operator: operator}
}
