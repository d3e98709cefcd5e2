package cli

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/ct/cttest"
)

// writeCSRFile writes a PEM CSR for names (the first is the CN) signed by
// key to dir/name and returns its path.
func writeCSRFile(t *testing.T, dir, name string, key crypto.Signer, names ...string) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: names[0]}, DNSNames: names}, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// auditLength is how many records the module's audit log holds.
func auditLength(t *testing.T, dir string) int {
	t.Helper()
	var recs []json.RawMessage
	if err := json.Unmarshal([]byte(mustRun(t, dir, "hsm", "audit", "list", "--module", "module", "--json").stdout), &recs); err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

// certCount is how many certificates the store lists.
func certCount(t *testing.T, dir string) int {
	t.Helper()
	return len(decodeJSON[[]certJSON](t, mustRun(t, dir, "cert", "list", "--json", "--config", "ca.yaml")))
}

// TestCertIssueChecksBeforeQuorum: `cert issue` refuses an --out it could
// not write and a bad CSR before it gathers the quorum: nothing is
// activated (the module's audit log does not grow), signed or stored, and
// the error says why.
func TestCertIssueChecksBeforeQuorum(t *testing.T) {
	dir, _, _ := stoppedQuickstart(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := writeCSRFile(t, dir, "web.csr", key, "web.svc.corp")
	// A CSR whose signature does not verify: a byte of the signature flipped.
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"web.svc.corp"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	der[len(der)-3] ^= 0xff
	badSig := filepath.Join(dir, "badsig.csr")
	if err := os.WriteFile(badSig, der, 0o600); err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	weak := writeCSRFile(t, dir, "weak.csr", p224, "web.svc.corp")
	kept := filepath.Join(dir, "kept.pem")
	if err := os.WriteFile(kept, []byte("keep me\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	issuingQ := shareArgs(filepath.Join(dir, "shares/issuing/share-1.txt"), filepath.Join(dir, "shares/issuing/share-2.txt"))
	certs, audit := certCount(t, dir), auditLength(t, dir)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"out exists", []string{"--csr", good, "--out", kept}, ExitFail, "kept.pem already exists; refusing to overwrite it"},
		{"out directory missing", []string{"--csr", good, "--out", filepath.Join(dir, "nowhere", "web.pem")}, ExitFail, "cannot write"},
		{"bad signature", []string{"--csr", badSig}, 2, "bad signature"},
		{"key type", []string{"--csr", weak}, 2, "key type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustFail(t, dir, tt.code, []string{tt.want}, args("cert", "issue", "--config", "ca.yaml", "--profile", "server", tt.args, issuingQ)...)
			if strings.Contains(r.stderr, "accepted") {
				t.Errorf("shares were presented:\n%s", r)
			}
			if n := auditLength(t, dir); n != audit {
				t.Errorf("the module's audit log grew from %d to %d records", audit, n)
			}
			if n := certCount(t, dir); n != certs {
				t.Errorf("the store holds %d certificates, %d before", n, certs)
			}
		})
	}
	if b, _ := os.ReadFile(kept); string(b) != "keep me\n" {
		t.Fatalf("kept.pem changed: %q", b)
	}
	// The same command with a new --out issues.
	mustRun(t, dir, args("cert", "issue", "--config", "ca.yaml", "--profile", "server", "--csr", good, "--out", filepath.Join(dir, "web.pem"), issuingQ)...)
	if n := certCount(t, dir); n != certs+1 {
		t.Fatalf("the store holds %d certificates, want %d", n, certs+1)
	}
}

// TestCertIssueCTPerOperation issues under a CT profile from an issuer in
// a per-operation partition: the activation must allow two signatures
// (precertificate and certificate), not one.
func TestCertIssueCTPerOperation(t *testing.T) {
	dir, _, _ := stoppedQuickstart(t)
	log := cttest.NewFakeLog(t, cttest.OK)
	logKey := writeLogKey(t, dir, "fake-log", log.Key.Public())
	// The root (per-operation partition "root") issues leaves directly
	// here, under a profile with CT.
	editConfig(t, dir,
		"  issuers:\n", "  issuers:\n    - name: root\n      certificate: root.pem\n      partition: root\n      key: root-1\n",
		"  # The built-in profiles apply", "  profiles:\n    ct:\n      ext_key_usages: [serverAuth]\n      keep_cn: true\n      ct: {mode: embed}\n  # The built-in profiles apply",
		"acme:\n", "ct:\n  logs:\n    - name: fake\n      url: "+log.URL+"\n      public_key: "+logKey+"\nacme:\n")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := writeCSRFile(t, dir, "web.csr", key, "web.svc.corp")
	out := filepath.Join(dir, "web.pem")
	mustRun(t, dir, args("cert", "issue", "--config", "ca.yaml", "--issuer", "root", "--profile", "ct", "--csr", csr, "--out", out,
		shareArgs(filepath.Join(dir, "shares/root/share-1.txt"), filepath.Join(dir, "shares/root/share-2.txt")))...)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !hasSCTList(cert) || log.Calls() != 1 {
		t.Fatalf("certificate without SCTs (log saw %d requests)", log.Calls())
	}
}

// TestPrintIssuedKeepsCertificate: when --out cannot be written after the
// certificate was issued (the path appeared since it was checked), the
// certificate goes to stdout and the error names its serial.
func TestPrintIssuedKeepsCertificate(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "web.pem")
	if err := os.WriteFile(out, []byte("someone else's\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &ca.Certificate{Serial: "1a2b3c", DER: []byte("leaf"), Chain: [][]byte{[]byte("issuer")}, Profile: "server", Names: []string{"web.svc.corp"},
		Status: ca.StatusValid, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	for _, asJSON := range []bool{false, true} {
		var stdout, stderr bytes.Buffer
		err := printIssued(&env{stdout: &stdout, stderr: &stderr}, c, out, asJSON)
		if err == nil || !strings.Contains(err.Error(), "certificate 1a2b3c was issued and stored, but could not be written to "+out) ||
			!strings.Contains(err.Error(), "printed on standard output instead") {
			t.Fatalf("json=%v: err = %v", asJSON, err)
		}
		if want := string(chainPEM(c)); asJSON && !strings.Contains(stdout.String(), `"serial": "1a2b3c"`) || !asJSON && stdout.String() != want {
			t.Errorf("json=%v: stdout %q lacks the certificate", asJSON, stdout.String())
		}
	}
	if b, _ := os.ReadFile(out); string(b) != "someone else's\n" {
		t.Fatalf("%s overwritten: %q", out, b)
	}
}
