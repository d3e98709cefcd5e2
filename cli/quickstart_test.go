package cli

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsmca/hsmca/server"
)

// TestQuickstartEndToEnd is issue 5's acceptance run: quickstart in a temp
// dir, issuance through the admin API (socket and mutual TLS), OCSP checked
// by openssl before and after revocation, the CRL fetched from the URL in
// the certificate, sealed behaviour and re-activation, admin refusals, the
// socket's mode, SIGTERM, and a second run that reuses the directory.
func TestQuickstartEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (make deps)")
	}
	dir := t.TempDir()
	p, httpsURL, httpURL := startQuickstart(t, dir)
	sock := filepath.Join(dir, "admin.sock")
	out := p.out.String()
	for _, want := range []string{"WARNING: DEMO LAYOUT", httpsURL + "/acme/directory", "certbot certonly", "lego --server", filepath.Join(dir, "root.pem")} {
		if !strings.Contains(out, want) {
			t.Errorf("quickstart output lacks %q", want)
		}
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("admin socket: %v %v", fi, err)
	}
	for _, f := range []string{"operator.key", "tls/server.key", "shares/issuing/share-1.txt"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", f, fi, err)
		}
	}
	for _, f := range []string{"ceremonies/root.yaml", "ceremonies/intermediate.yaml", "ceremonies/root-crl.yaml", "ceremonies/root.transcript.txt"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("ceremony file: %v", err)
		}
	}
	root, inter := filepath.Join(dir, "root.pem"), filepath.Join(dir, "intermediate-1.pem")
	mtls := []string{"--server", httpsURL, "--client-cert", filepath.Join(dir, "operator.pem"), "--client-key", filepath.Join(dir, "operator.key"), "--ca-cert", root}

	// Issue through the socket and through mutual TLS.
	csr1, _ := newCSRPEM(t, dir, "a.csr", "a.example.internal")
	mustRun(t, dir, "cert", "issue", "--socket", sock, "--csr", csr1, "--profile", "server", "--out", filepath.Join(dir, "a.pem"))
	csr2, _ := newCSRPEM(t, dir, "b.csr", "b.example.internal")
	mustRun(t, dir, append([]string{"cert", "issue", "--csr", csr2, "--profile", "server", "--out", filepath.Join(dir, "b.pem")}, mtls...)...)
	leaf := readCertPEM(t, filepath.Join(dir, "a.pem"))
	mustRun(t, dir, "cert", "show", "--socket", sock, leaf.SerialNumber.Text(16))
	if r := mustRun(t, dir, append([]string{"cert", "list"}, mtls...)...); !strings.Contains(r.stdout, leaf.SerialNumber.Text(16)) {
		t.Fatalf("cert list lacks the serial:\n%s", r)
	}
	if r := exec.Command("openssl", "verify", "-CAfile", root, "-untrusted", inter, filepath.Join(dir, "a.pem")); true {
		if b, err := r.CombinedOutput(); err != nil {
			t.Fatalf("openssl verify: %v\n%s", err, b)
		}
	}

	// OCSP with a client nobody here wrote.
	if len(leaf.OCSPServer) != 1 || !strings.HasPrefix(leaf.OCSPServer[0], httpURL) {
		t.Fatalf("OCSP URL %v, want under %s", leaf.OCSPServer, httpURL)
	}
	ocspCheck := func(want ...string) {
		t.Helper()
		cmd := exec.Command("openssl", "ocsp", "-issuer", inter, "-cert", filepath.Join(dir, "a.pem"), "-url", leaf.OCSPServer[0], "-CAfile", root)
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("openssl ocsp: %v\n%s", err, b)
		}
		for _, w := range want {
			if !strings.Contains(string(b), w) {
				t.Fatalf("openssl ocsp output lacks %q:\n%s", w, b)
			}
		}
	}
	ocspCheck(": good", "Response verify OK")
	mustRun(t, dir, "cert", "revoke", leaf.SerialNumber.Text(16), "--reason", "keyCompromise", "--socket", sock)
	ocspCheck(": revoked", "Reason: keyCompromise")

	// The CRL at the URL inside the certificate lists it (regenerated in
	// the background after the revocation).
	deadline := time.Now().Add(time.Minute)
	for listed := false; !listed; {
		if time.Now().After(deadline) {
			t.Fatal("the CRL never listed the revoked serial")
		}
		resp, err := http.Get(leaf.CRLDistributionPoints[0])
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if crl, err := x509.ParseRevocationList(b); err == nil {
			for _, e := range crl.RevokedCertificateEntries {
				listed = listed || e.SerialNumber.Cmp(leaf.SerialNumber) == 0
			}
		}
		if !listed {
			time.Sleep(50 * time.Millisecond) // polling the background CRL job
		}
	}

	// Sealed: issuance refused with the quorum message; M shares through
	// the admin API make it issue again.
	mustRun(t, dir, append([]string{"hsm", "seal"}, mtls...)...)
	csr3, _ := newCSRPEM(t, dir, "c.csr", "c.example.internal")
	mustFail(t, dir, ExitFail, []string{"CA awaits quorum (0 of 2)"}, "cert", "issue", "--socket", sock, "--csr", csr3, "--profile", "server")
	r := mustRun(t, dir, append([]string{"hsm", "activate", "--share", filepath.Join(dir, "shares/issuing/share-3.txt")}, mtls...)...)
	if !strings.Contains(r.stdout, "1 of 2") && !strings.Contains(r.stderr, "1 of 2") {
		t.Fatalf("activate one share:\n%s", r)
	}
	mustFail(t, dir, ExitFail, []string{"CA awaits quorum (1 of 2)"}, "cert", "issue", "--socket", sock, "--csr", csr3, "--profile", "server")
	mustRun(t, dir, "hsm", "activate", "--socket", sock, "--share", filepath.Join(dir, "shares/issuing/share-1.txt"))
	mustRun(t, dir, "cert", "issue", "--socket", sock, "--csr", csr3, "--profile", "server", "--out", filepath.Join(dir, "c.pem"))
	mustRun(t, dir, "crl", "generate", "--socket", sock, "--out", filepath.Join(dir, "crl.pem"))

	// The admin API refuses a client without a certificate and one whose
	// operator certificate is revoked.
	rootPool := x509.NewCertPool()
	rb, _ := os.ReadFile(root)
	rootPool.AppendCertsFromPEM(rb)
	noCert := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: rootPool}}}
	if code, p, err := adminCall(noCert, "GET", httpsURL+"/admin/hsm/status", nil, nil); err != nil || code != http.StatusUnauthorized {
		t.Fatalf("no client certificate: %d %v %v", code, p, err)
	}
	// An operator certificate issued through the socket, then revoked.
	keyPath, certPath := filepath.Join(dir, "op3.key"), filepath.Join(dir, "op3.pem")
	writeOperator(t, dir, sock, keyPath, certPath)
	op3 := readCertPEM(t, certPath)
	mustRun(t, dir, "cert", "revoke", op3.SerialNumber.Text(16), "--socket", sock)
	mustFail(t, dir, ExitUsage, []string{"revoked"}, "hsm", "status", "--server", httpsURL, "--client-cert", certPath, "--client-key", keyPath, "--ca-cert", root)

	// SIGTERM: graceful stop, sealed, socket removed.
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("quickstart exit after SIGTERM: %v\n%s", err, p.out)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left after shutdown: %v", err)
	}

	// Second run: same directory, same addresses, nothing re-created.
	https := strings.TrimPrefix(httpsURL, "https://")
	http_ := strings.TrimPrefix(httpURL, "http://")
	p2 := startProc(t, dir, "quickstart", "--dir", dir, "--https-addr", https, "--http-addr", http_)
	waitHealth(t, p2, httpURL, isActive)
	if strings.Contains(p2.out.String(), "creating a demo CA") {
		t.Fatalf("second run re-created the CA:\n%s", p2.out)
	}
	var list server.CertList
	if code, prob, err := adminCall(socketClient(sock), "GET", "http://admin/admin/cert/list?revoked=true", nil, &list); err != nil || code != 200 {
		t.Fatalf("list after restart: %d %v %v", code, prob, err)
	}
	found := false
	for _, c := range list.Certificates {
		found = found || c.Serial == leaf.SerialNumber.Text(16)
	}
	if !found {
		t.Fatalf("revoked certificate missing after restart: %+v", list)
	}
	if err := p2.stop(t, syscall.SIGINT); err != nil {
		t.Fatalf("second run exit: %v\n%s", err, p2.out)
	}
}

// writeOperator makes a key file and an operator certificate for it through
// the admin socket.
func writeOperator(t *testing.T, dir, sock, keyPath, certPath string) {
	t.Helper()
	mustRun(t, dir, "cert", "issue", "--socket", sock, "--csr", writeKeyAndCSR(t, dir, keyPath, "eve"), "--profile", "operator", "--out", certPath)
}
