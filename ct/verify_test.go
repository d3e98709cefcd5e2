package ct

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ctgo "github.com/google/certificate-transparency-go"
	cttls "github.com/google/certificate-transparency-go/tls"

	"github.com/hsmca/hsmca/ct/cttest"
)

var update = flag.Bool("update", false, "regenerate ../testdata/ct fixtures")

// issueWithSCTs runs the whole CT flow against fake logs and returns the
// final certificate, the PKI and the Submitter.
func issueWithSCTs(t *testing.T, nLogs int) (*x509.Certificate, *testPKI, *Submitter, *issued) {
	t.Helper()
	pki := newTestPKI(t)
	var cfg Config
	for i := 0; i < nLogs; i++ {
		f := cttest.NewFakeLog(t, cttest.OK)
		name := "log" + string(rune('A'+i))
		cfg.Logs = append(cfg.Logs, logCfg(f, name, name))
	}
	cfg.MinSCTs = nLogs
	s := mustNew(t, cfg)
	iss := pki.precert(t, leafTemplate(t, "verify.example.test", "www.verify.example.test"))
	scts, err := s.GetSCTs(context.Background(), iss.chain())
	if err != nil {
		t.Fatal(err)
	}
	return iss.final(t, scts), pki, s, iss
}

func TestVerifyEmbedded(t *testing.T) {
	final, pki, s, _ := issueWithSCTs(t, 2)
	logs := s.Logs()

	got, err := VerifyEmbedded(final, pki.inter, logs)
	if err != nil || len(got) != 2 {
		t.Fatalf("VerifyEmbedded = %v, %v", got, err)
	}
	if got[0].LogID != logs[0].ID || got[1].LogID != logs[1].ID {
		t.Errorf("log IDs %x %x", got[0].LogID[:4], got[1].LogID[:4])
	}

	t.Run("unknown log", func(t *testing.T) {
		got, err := VerifyEmbedded(final, pki.inter, logs[1:])
		var ve *VerifyError
		if !errors.As(err, &ve) || len(ve.Failures) != 1 || ve.Failures[0].Index != 0 || ve.Failures[0].LogName != "" {
			t.Fatalf("err = %v", err)
		}
		if len(got) != 1 || got[0].LogName != "logB" {
			t.Errorf("verified = %+v", got)
		}
	})
	t.Run("wrong issuer", func(t *testing.T) {
		other := newTestPKI(t)
		if _, err := VerifyEmbedded(final, other.inter, logs); err == nil || !strings.Contains(err.Error(), "not signed by the given issuer") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no SCTs", func(t *testing.T) {
		if _, err := VerifyEmbedded(pki.inter, pki.root, logs); !errors.Is(err, ErrNoSCTs) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("SCT for another certificate", func(t *testing.T) {
		// Same SCTs embedded in a certificate with other contents: the
		// signatures cover the precertificate, so they must fail.
		ext := findExt(final, OIDSCTList)
		scts, err := ParseSCTList(ext)
		if err != nil {
			t.Fatal(err)
		}
		forged := pki.precert(t, leafTemplate(t, "evil.example.test")).final(t, scts)
		got, err := VerifyEmbedded(forged, pki.inter, logs)
		var ve *VerifyError
		if !errors.As(err, &ve) || len(ve.Failures) != 2 || len(got) != 0 {
			t.Fatalf("forged certificate: verified %v, err %v", got, err)
		}
		if !strings.Contains(err.Error(), "signature does not verify") {
			t.Errorf("err = %v", err)
		}
	})
}

func findExt(c *x509.Certificate, oid asn1.ObjectIdentifier) []byte {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e.Value
		}
	}
	return nil
}

func TestSCTListExtension(t *testing.T) {
	final, _, _, _ := issueWithSCTs(t, 2)
	ext := findExt(final, OIDSCTList)
	scts, err := ParseSCTList(ext)
	if err != nil || len(scts) != 2 {
		t.Fatalf("ParseSCTList = %d, %v", len(scts), err)
	}
	again, err := SCTListExtension(scts)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Value, ext) || again.Critical || !again.Id.Equal(OIDSCTList) {
		t.Errorf("SCTListExtension does not round-trip")
	}
	for _, c := range final.Extensions {
		if c.Id.Equal(OIDSCTList) && c.Critical {
			t.Error("SCT list extension is critical")
		}
	}
	if _, err := SCTListExtension(nil); err == nil {
		t.Error("empty SCT list accepted")
	}
	if _, err := SCTListExtension([][]byte{{0, 1, 2}}); err == nil {
		t.Error("garbage SCT accepted")
	}
	bad := [][]byte{append(append([]byte(nil), scts[0]...), 0)}
	if _, err := SCTListExtension(bad); err == nil || !strings.Contains(err.Error(), "trailing") {
		t.Errorf("SCT with trailing byte: err = %v", err)
	}
	if _, err := ParseSCTList(append(append([]byte(nil), ext...), 0)); err == nil {
		t.Error("trailing data after extension accepted")
	}
}

func TestPoisonExtension(t *testing.T) {
	pki := newTestPKI(t)
	iss := pki.precert(t, leafTemplate(t, "poison.example.test"))
	var found *pkix.Extension
	for i, e := range iss.precert.Extensions {
		if e.Id.Equal(OIDPoison) {
			found = &iss.precert.Extensions[i]
		}
	}
	if found == nil || !found.Critical || !bytes.Equal(found.Value, []byte{5, 0}) {
		t.Fatalf("poison extension = %+v", found)
	}
	// RFC 5280 validators must refuse a precertificate.
	pool := x509.NewCertPool()
	pool.AddCert(pki.root)
	inter := x509.NewCertPool()
	inter.AddCert(pki.inter)
	if _, err := iss.precert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter}); err == nil {
		t.Error("a precertificate verified as a certificate")
	}
}

func TestMatchesPrecert(t *testing.T) {
	final, pki, _, iss := issueWithSCTs(t, 1)
	if err := MatchesPrecert(iss.precert.Raw, final.Raw); err != nil {
		t.Fatal(err)
	}
	scts, _ := ParseSCTList(findExt(final, OIDSCTList))
	changed := *iss.tmpl
	changed.DNSNames = append([]string{"other.example.test"}, changed.DNSNames...)
	other := (&issued{pki: pki, tmpl: &changed, leafKey: iss.leafKey}).final(t, scts)
	cases := []struct {
		name       string
		pre, final []byte
		want       string
	}{
		{"names differ", iss.precert.Raw, other.Raw, "does not match"},
		{"swapped", final.Raw, iss.precert.Raw, "no poison"},
		{"final poisoned", iss.precert.Raw, iss.precert.Raw, "carries the poison"},
		{"garbage", []byte{1}, final.Raw, "precertificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := MatchesPrecert(tc.pre, tc.final); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestOpenSSLShowsSCTs checks an outside parser sees the embedded list.
func TestOpenSSLShowsSCTs(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl not found (make deps installs it)")
		}
		t.Skip("openssl not found; run make deps")
	}
	final, _, s, _ := issueWithSCTs(t, 2)
	path := filepath.Join(t.TempDir(), "cert.pem")
	writePEM(t, path, "CERTIFICATE", final.Raw)
	out, err := exec.Command(openssl, "x509", "-in", path, "-text", "-noout").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	text := string(out)
	if !strings.Contains(text, "CT Precertificate SCTs") {
		t.Fatalf("openssl does not show the SCT list:\n%s", text)
	}
	if n := strings.Count(text, "Signed Certificate Timestamp:"); n != 2 {
		t.Errorf("openssl shows %d SCTs, want 2", n)
	}
	// openssl prints log IDs as colon-separated hex; check the first bytes.
	for _, l := range s.Logs() {
		if !strings.Contains(strings.ReplaceAll(text, "\n", ""), hexColon(l.ID[:4])) {
			t.Errorf("openssl output lacks log ID %x", l.ID[:4])
		}
	}
}

func hexColon(b []byte) string {
	var parts []string
	for _, c := range b {
		parts = append(parts, strings.ToUpper(string("0123456789abcdef"[c>>4])+string("0123456789abcdef"[c&15])))
	}
	return strings.Join(parts, ":")
}

// TestFixtures regenerates (with -update) or checks the fixtures in
// ../testdata/ct: a certificate with two embedded SCTs, its issuer and
// root, the two logs' keys and a log list naming them. The CLI tests and
// fuzz seeds use them.
func TestFixtures(t *testing.T) {
	dir := filepath.Join("..", "testdata", "ct")
	if *update {
		final, pki, s, _ := issueWithSCTs(t, 2)
		writePEM(t, filepath.Join(dir, "cert.pem"), "CERTIFICATE", final.Raw)
		writePEM(t, filepath.Join(dir, "chain.pem"), "CERTIFICATE", final.Raw, pki.inter.Raw)
		writePEM(t, filepath.Join(dir, "issuer.pem"), "CERTIFICATE", pki.inter.Raw)
		writePEM(t, filepath.Join(dir, "root.pem"), "CERTIFICATE", pki.root.Raw)
		var entries []listEntry
		for i, l := range s.Logs() {
			writeFile(t, filepath.Join(dir, "log"+string(rune('A'+i))+".pem"), []byte(pubPEM(t, l.PublicKey)))
			entries = append(entries, listEntry{op: "Operator " + l.Name, desc: l.Name, url: "https://" + strings.ToLower(l.Name) + ".example.test/", pub: l.PublicKey, state: "usable"})
		}
		writeFile(t, filepath.Join(dir, "log_list.json"), logListJSON(t, entries))
	}
	read := func(name string) *x509.Certificate {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%v (regenerate with go test ./ct -run TestFixtures -update)", err)
		}
		c, err := parsePEMCert(b)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cert, issuer := read("cert.pem"), read("issuer.pem")
	list, err := os.ReadFile(filepath.Join(dir, "log_list.json"))
	if err != nil {
		t.Fatal(err)
	}
	logs, err := ParseLogList(list)
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyEmbedded(cert, issuer, logs)
	if err != nil || len(got) != 2 || got[0].LogName != "logA" || got[1].LogName != "logB" {
		t.Fatalf("fixture: %+v, %v", got, err)
	}
}

// signedSCTAt returns an SCT from log f for the precertificate of iss,
// correctly signed, with the timestamp ts.
func signedSCTAt(t *testing.T, f *cttest.FakeLog, iss *issued, ts time.Time) []byte {
	t.Helper()
	entry, _, err := precertEntry(iss.chain())
	if err != nil {
		t.Fatal(err)
	}
	ms := uint64(ts.UnixMilli())
	sct := ctgo.SignedCertificateTimestamp{SCTVersion: ctgo.V1, LogID: ctgo.LogID{KeyID: f.ID}, Timestamp: ms}
	leaf := *entry
	te := *entry.TimestampedEntry
	te.Timestamp = ms
	leaf.TimestampedEntry = &te
	input, err := ctgo.SerializeSCTSignatureInput(sct, ctgo.LogEntry{Leaf: leaf})
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(input)
	sig, err := f.Key.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	sct.Signature = ctgo.DigitallySigned{Algorithm: cttls.SignatureAndHashAlgorithm{Hash: cttls.SHA256, Signature: cttls.ECDSA}, Signature: sig}
	raw, err := cttls.Marshal(sct)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// An embedded SCT dated after now, beyond the allowance the Submitter
// gives a log's clock, is a failure, however well it is signed.
func TestVerifyEmbeddedFutureSCT(t *testing.T) {
	pki := newTestPKI(t)
	f := cttest.NewFakeLog(t, cttest.OK)
	pub, id, err := ParsePublicKey([]byte(f.PublicKeyPEM()))
	if err != nil {
		t.Fatal(err)
	}
	logs := []Log{{Name: "fake", ID: id, PublicKey: pub}}
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		offset time.Duration
		ok     bool
	}{
		{"an hour ago", -time.Hour, true},
		{"now", 0, true},
		{"within the allowance", maxFutureSCT - time.Second, true},
		{"just beyond the allowance", maxFutureSCT + time.Second, false},
		{"a year ahead", 365 * 24 * time.Hour, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			iss := pki.precert(t, leafTemplate(t, "future.example.test"))
			final := iss.final(t, [][]byte{signedSCTAt(t, f, iss, now.Add(tc.offset))})
			got, err := VerifyEmbeddedAt(final, pki.inter, logs, now)
			var ve *VerifyError
			switch {
			case tc.ok && (err != nil || len(got) != 1):
				t.Fatalf("VerifyEmbeddedAt = %+v, %v", got, err)
			case !tc.ok && (!errors.As(err, &ve) || len(ve.Failures) != 1 || len(got) != 0 || !strings.Contains(err.Error(), "in the future")):
				t.Fatalf("SCT %v after now: VerifyEmbeddedAt = %+v, %v", tc.offset, got, err)
			}
		})
	}
	t.Run("VerifyEmbedded uses the current time", func(t *testing.T) {
		iss := pki.precert(t, leafTemplate(t, "future.example.test"))
		final := iss.final(t, [][]byte{signedSCTAt(t, f, iss, time.Now().Add(365*24*time.Hour))})
		if got, err := VerifyEmbedded(final, pki.inter, logs); err == nil {
			t.Fatalf("SCT a year ahead verified: %+v", got)
		}
	})
}
