package acme_test

import (
	"context"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	hacme "github.com/hsmca/hsmca/acme"
)

// TestCertbot drives the real certbot (Debian package, installed by
// `make deps`) in standalone mode: register, issue for two names, renew,
// revoke; the certificate verifies with openssl against the root.
func TestCertbot(t *testing.T) {
	certbot, err := exec.LookPath("certbot")
	if err != nil {
		t.Skip("certbot not installed (make deps)")
	}
	if testing.Short() {
		t.Skip("slow: runs certbot")
	}
	port := freePort(t)
	e := newEnv(t, func(c *hacme.Config) { c.HTTP01Port = port })
	dir := t.TempDir()
	root := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(root, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.ca.root.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		base := []string{"--non-interactive", "--server", e.dir,
			"--config-dir", filepath.Join(dir, "config"), "--work-dir", filepath.Join(dir, "work"), "--logs-dir", filepath.Join(dir, "logs")}
		cmd := exec.CommandContext(ctx, certbot, append(args, base...)...)
		cmd.Env = append(os.Environ(), "REQUESTS_CA_BUNDLE="+root)
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		t.Logf("certbot %s: %v", args[0], time.Since(t0).Round(time.Millisecond))
		if err != nil {
			t.Fatalf("certbot %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	standalone := []string{"--standalone", "--http-01-address", "127.0.0.1", "--http-01-port", strconv.Itoa(port)}
	run("register", "--agree-tos", "-m", "ops@example.test")
	run(append([]string{"certonly", "--cert-name", "site", "-d", "cb1.example.test", "-d", "cb2.example.test"}, standalone...)...)
	live := filepath.Join(dir, "config", "live", "site")
	verify := func() string {
		t.Helper()
		out, err := exec.Command("openssl", "verify", "-CAfile", root, "-untrusted", filepath.Join(live, "chain.pem"), filepath.Join(live, "cert.pem")).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl verify: %v\n%s", err, out)
		}
		b, _ := os.ReadFile(filepath.Join(live, "cert.pem"))
		return string(b)
	}
	first := verify()
	run(append([]string{"renew", "--cert-name", "site", "--force-renewal", "--no-random-sleep-on-renew"}, standalone...)...)
	if second := verify(); second == first {
		t.Fatal("renewal did not replace the certificate")
	}
	before := e.ca.revokedCount()
	run("revoke", "--cert-path", filepath.Join(live, "cert.pem"), "--reason", "keycompromise", "--no-delete-after-revoke")
	if e.ca.revokedCount() != before+1 {
		t.Fatal("the CA was not asked to revoke")
	}
}
