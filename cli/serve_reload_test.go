package cli

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestServeSIGHUPTLSFiles: a reload of a ca.yaml whose tls_cert and
// tls_key name other files serves the certificate in them; a new pair
// that does not load fails the reload, which keeps the pair in force.
func TestServeSIGHUPTLSFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir, httpsURL, httpURL := stoppedQuickstart(t)
	// New TLS files: the operator pair stands in for a renewed certificate
	// (the test reads the name the server presents, not its use).
	for src, dst := range map[string]string{"operator.pem": "tls/new.pem", "operator.key": "tls/new.key"} {
		b, err := os.ReadFile(filepath.Join(dir, src))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	operatorCN := readCertPEM(t, filepath.Join(dir, "operator.pem")).Subject.CommonName
	p := startProc(t, dir, "ca", "serve", "--config", filepath.Join(dir, "ca.yaml"))
	waitHealth(t, p, httpURL, isSealed)
	served := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", strings.TrimPrefix(httpsURL, "https://"), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	before := served()
	if before == operatorCN {
		t.Fatalf("the server presents %q already", before)
	}

	// Relative names, resolved against the config's directory.
	editConfig(t, dir, "tls_cert: tls/server.pem", "tls_cert: tls/new.pem", "tls_key: tls/server.key", "tls_key: tls/new.key")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitOutput(t, p, "server: reloaded configuration")
	if after := served(); after != operatorCN {
		t.Fatalf("after the reload the server presents %q, want %q from tls/new.pem:\n%s", after, operatorCN, p.out)
	}

	// A key that does not belong to the certificate fails the reload.
	editConfig(t, dir, "tls_key: tls/new.key", "tls_key: tls/server.key")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitOutput(t, p, "reload failed")
	if !strings.Contains(p.out.String(), "tls/new.pem") {
		t.Errorf("the failed reload does not name the TLS files:\n%s", p.out)
	}
	if after := served(); after != operatorCN {
		t.Fatalf("after a failed reload the server presents %q, want the pair in force (%q)", after, operatorCN)
	}
	waitHealth(t, p, httpURL, isSealed)
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("serve exit: %v", err)
	}
}
