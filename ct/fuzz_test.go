package ct

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
)

func fixture(f *testing.F, name string) []byte {
	f.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "ct", name))
	if err != nil {
		f.Fatalf("%v (regenerate with go test ./ct -run TestFixtures -update)", err)
	}
	return b
}

func fixtureSCTList(f *testing.F) []byte {
	f.Helper()
	c, err := parsePEMCert(fixture(f, "cert.pem"))
	if err != nil {
		f.Fatal(err)
	}
	return findExt(c, OIDSCTList)
}

// FuzzParseSCTList checks that any extension value either fails cleanly or
// yields SCTs that re-encode to the same extension.
func FuzzParseSCTList(f *testing.F) {
	ext := fixtureSCTList(f)
	f.Add(ext)
	f.Add([]byte{})
	f.Add([]byte{0x04, 0x00})
	f.Add([]byte{0x04, 0x02, 0x00, 0x00})
	f.Add(ext[:len(ext)/2])
	f.Fuzz(func(t *testing.T, b []byte) {
		scts, err := ParseSCTList(b)
		if err != nil {
			return
		}
		for _, s := range scts {
			if _, err := ParseSCT(s); err != nil {
				return
			}
		}
		if len(scts) == 0 {
			return
		}
		again, err := SCTListExtension(scts)
		if err != nil {
			t.Fatalf("parsed SCTs do not re-encode: %v", err)
		}
		// DER and TLS encodings are canonical: what parses re-encodes
		// to the same bytes.
		if !bytes.Equal(again.Value, b) {
			t.Fatalf("SCT list does not round-trip")
		}
	})
}

// FuzzParseSCT checks single SCT parsing never panics and round-trips.
func FuzzParseSCT(f *testing.F) {
	scts, err := ParseSCTList(fixtureSCTList(f))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range scts {
		f.Add(s)
	}
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, b []byte) {
		sct, err := ParseSCT(b)
		if err != nil {
			return
		}
		out, err := serializeSCT(sct)
		if err != nil {
			t.Fatalf("parsed SCT does not serialise: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("SCT does not round-trip")
		}
	})
}

// FuzzParseLogList checks log list parsing returns a clear error or logs
// with usable keys.
func FuzzParseLogList(f *testing.F) {
	f.Add(fixture(f, "log_list.json"))
	f.Add([]byte(`{"operators":[]}`))
	f.Add([]byte(`{"operators":[null,{"name":"x","logs":[null,{"key":"","url":"https://x/"}]}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		logs, err := ParseLogList(b)
		if err != nil {
			return
		}
		for _, l := range logs {
			if l.PublicKey == nil || l.Name == "" || l.Operator == "" {
				t.Fatalf("incomplete log %+v", l)
			}
		}
	})
}

// FuzzParsePublicKey covers the key formats a config or CLI flag may hold.
func FuzzParsePublicKey(f *testing.F) {
	f.Add(fixture(f, "logA.pem"))
	f.Add([]byte("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"))
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pub, id, err := ParsePublicKey(b)
		if err != nil {
			return
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil || len(der) == 0 || id == [32]byte{} {
			t.Fatalf("accepted key does not marshal: %v", err)
		}
	})
}

// FuzzParseCertificates covers the PEM/DER reader used by the CLI.
func FuzzParseCertificates(f *testing.F) {
	f.Add(fixture(f, "issuer.pem"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		cs, err := ParseCertificates(b)
		if err == nil && len(cs) == 0 {
			t.Fatal("no error and no certificates")
		}
	})
}
