package cli

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmca/hsmca/ct/cttest"
)

// TestCeremonyServerCertChecksNamesBeforeQuorum: `ceremony server-cert`
// refuses a name the server profile or the name policy refuses before it
// gathers the quorum: no share is presented, the module's audit log does
// not grow, nothing is stored or written.
func TestCeremonyServerCertChecksNamesBeforeQuorum(t *testing.T) {
	dir, _, _ := stoppedQuickstart(t)
	issuingQ := shareArgs(filepath.Join(dir, "shares/issuing/share-1.txt"), filepath.Join(dir, "shares/issuing/share-2.txt"))
	certs, audit := certCount(t, dir), auditLength(t, dir)
	certPath, keyPath := filepath.Join(dir, "tls2", "server.pem"), filepath.Join(dir, "tls2", "server.key")
	r := mustFail(t, dir, 2, []string{`malformed DNS SAN "bad_name.svc.corp"`},
		args("ceremony", "server-cert", "--config", "ca.yaml", "--name", "bad_name.svc.corp", "--cert", certPath, "--key", keyPath, issuingQ)...)
	if strings.Contains(r.stderr, "accepted") {
		t.Errorf("shares were presented:\n%s", r)
	}
	if n := auditLength(t, dir); n != audit {
		t.Errorf("the module's audit log grew from %d to %d records", audit, n)
	}
	if n := certCount(t, dir); n != certs {
		t.Errorf("the store holds %d certificates, %d before", n, certs)
	}
	if _, err := os.Lstat(filepath.Dir(certPath)); err == nil {
		t.Errorf("%s was created for a refused request", filepath.Dir(certPath))
	}
	// Good names issue.
	mustRun(t, dir, args("ceremony", "server-cert", "--config", "ca.yaml", "--name", "pki.svc.corp", "--name", "10.0.0.5", "--cert", certPath, "--key", keyPath, issuingQ)...)
	if n := certCount(t, dir); n != certs+1 {
		t.Fatalf("the store holds %d certificates, want %d", n, certs+1)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", fi, err)
	}
}

// TestCeremonyServerCertCTPerOperation: a server profile with Certificate
// Transparency under a default issuer in a per-operation partition takes
// two signatures (precertificate, certificate); `ceremony server-cert`
// activates the partition for both, as `cert issue` does.
func TestCeremonyServerCertCTPerOperation(t *testing.T) {
	dir, _, _ := stoppedQuickstart(t)
	log := cttest.NewFakeLog(t, cttest.OK)
	logKey := writeLogKey(t, dir, "fake-log", log.Key.Public())
	editConfig(t, dir,
		"  default_issuer: intermediate-1\n", "  default_issuer: root\n",
		"  issuers:\n", "  issuers:\n    - name: root\n      certificate: root.pem\n      partition: root\n      key: root-1\n",
		"  # The built-in profiles apply", "  profiles:\n    server:\n      ext_key_usages: [serverAuth]\n      ct: {mode: embed}\n  # The built-in profiles apply",
		"acme:\n", "ct:\n  logs:\n    - name: fake\n      url: "+log.URL+"\n      public_key: "+logKey+"\nacme:\n")
	certPath, keyPath := filepath.Join(dir, "ct-server.pem"), filepath.Join(dir, "ct-server.key")
	mustRun(t, dir, args("ceremony", "server-cert", "--config", "ca.yaml", "--name", "pki.svc.corp", "--cert", certPath, "--key", keyPath,
		shareArgs(filepath.Join(dir, "shares/root/share-1.txt"), filepath.Join(dir, "shares/root/share-2.txt")))...)
	b, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s holds no PEM", certPath)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !hasSCTList(cert) || log.Calls() != 1 {
		t.Fatalf("certificate without SCTs (log saw %d requests)", log.Calls())
	}
}
