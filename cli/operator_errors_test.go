package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsmca/hsmca/server"
)

// TestCeremonyTranscriptExistsRefusedFirst: an existing --transcript file
// is refused before the ceremony touches the module. It used to be found
// only after the ceremony had generated its key and written its outputs,
// so the command failed with the key made and no transcript anywhere.
func TestCeremonyTranscriptExistsRefusedFirst(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, dir, "hsm", "init", "--module", "module", "--partition", "issuing", "--shares", "3", "--threshold", "2", "--out", "shares")
	spec := "kind: key\nkey: {partition: issuing, type: ecdsa-p256, label: k-1}\noutputs: {public_key: k-1.pub.pem}\n"
	if err := os.WriteFile(filepath.Join(dir, "key.yaml"), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "old.txt"), []byte("an earlier transcript\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	q := shareArgs("shares/share-1.txt", "shares/share-2.txt")
	mustFail(t, dir, ExitUsage, []string{"old.txt already exists", "hint:"},
		args("ceremony", "run", "key.yaml", "--module", "module", "--transcript", "old.txt", q)...)
	if _, err := os.Stat(filepath.Join(dir, "k-1.pub.pem")); err == nil {
		t.Fatal("the ceremony wrote its output although its transcript file was refused")
	}
	keys := decodeJSON[[]keyJSON](t, mustRun(t, dir, "hsm", "keys", "list", "--module", "module", "--json"))
	if len(keys) != 0 {
		t.Fatalf("the ceremony generated %d key(s) although its transcript file was refused", len(keys))
	}
	b, _ := os.ReadFile(filepath.Join(dir, "old.txt"))
	if string(b) != "an earlier transcript\n" {
		t.Fatalf("old transcript changed: %q", b)
	}
	// A transcript in a directory that does not exist is refused up front
	// too, not after the key is made.
	mustFail(t, dir, ExitUsage, []string{"records does not exist", "hint:"},
		args("ceremony", "run", "key.yaml", "--module", "module", "--transcript", "records/t.txt", q)...)
	if keys := decodeJSON[[]keyJSON](t, mustRun(t, dir, "hsm", "keys", "list", "--module", "module", "--json")); len(keys) != 0 {
		t.Fatalf("the ceremony generated %d key(s) although its transcript directory does not exist", len(keys))
	}

	// With a new transcript path the same ceremony runs and prints the
	// transcript it writes.
	r := mustRun(t, dir, args("ceremony", "run", "key.yaml", "--module", "module", "--transcript", "new.txt", q)...)
	b, err := os.ReadFile(filepath.Join(dir, "new.txt"))
	if err != nil || len(b) == 0 || !strings.Contains(r.stdout, string(b)) {
		t.Fatalf("transcript file %q (%v) is not what was printed:\n%s", b, err, r)
	}
}

// writeSelfSigned writes a self-signed P-256 certificate and its key.
func writeSelfSigned(t *testing.T, certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "not an operator"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestAdminTLSFailureHints: when the admin API's TLS handshake fails, the
// hint says which certificate is the problem instead of asking whether the
// server runs (it does).
func TestAdminTLSFailureHints(t *testing.T) {
	dir := t.TempDir()
	writeSelfSigned(t, filepath.Join(dir, "op.pem"), filepath.Join(dir, "op.key"))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"partition":"issuing","state":"active","presented":2,"threshold":2,"shares":3}`))
	})
	quiet := log.New(io.Discard, "", 0) // the refused handshakes are the point
	plain := httptest.NewUnstartedServer(handler)
	plain.Config.ErrorLog = quiet
	plain.StartTLS()
	defer plain.Close()
	mtls := httptest.NewUnstartedServer(handler)
	mtls.Config.ErrorLog = quiet
	mtls.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: x509.NewCertPool()}
	mtls.StartTLS()
	defer mtls.Close()
	for _, f := range []struct {
		name string
		srv  *httptest.Server
	}{{"server.pem", plain}, {"mtls.pem", mtls}} {
		if err := os.WriteFile(filepath.Join(dir, f.name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// hsmca's server asks for a client certificate but does not require
	// one in the handshake, so a foreign operator certificate is not sent
	// and the admin API answers 401 with a problem.
	refusing := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"type":"` + server.ProbUnauthorized + `","detail":"the admin API needs an operator client certificate (mutual TLS)","status":401}`))
	}))
	refusing.Config.ErrorLog = quiet
	refusing.StartTLS()
	defer refusing.Close()
	if err := os.WriteFile(filepath.Join(dir, "refusing.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: refusing.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	client := []string{"--client-cert", "op.pem", "--client-key", "op.key"}
	for _, tc := range []struct {
		name string
		args []string
		hint string
	}{
		{"server certificate from an unknown CA", args("hsm", "status", "--server", plain.URL, client), "hint: pass --ca-cert FILE"},
		{"server certificate for another name", args("hsm", "status", "--server", strings.Replace(plain.URL, "127.0.0.1", "localhost", 1), "--ca-cert", "server.pem", client), "hint: --server must name a host"},
		{"client certificate refused", args("hsm", "status", "--server", mtls.URL, "--ca-cert", "mtls.pem", client), "hint: the server refused the TLS handshake"},
		{"operator certificate not accepted", args("hsm", "status", "--server", refusing.URL, "--ca-cert", "refusing.pem", client), "hint: --client-cert and --client-key must be an operator certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustFail(t, dir, ExitFail, []string{tc.hint}, tc.args...)
			if strings.Contains(r.stderr, "is `hsmca ca serve` running there?") {
				t.Errorf("hint asks whether the server runs:\n%s", r)
			}
		})
	}
	// A good connection still works, and no server is still "not running".
	mustRun(t, dir, args("hsm", "status", "--server", plain.URL, "--ca-cert", "server.pem", client)...)
	mustFail(t, dir, ExitFail, []string{"is `hsmca ca serve` running there?"}, "hsm", "status", "--socket", filepath.Join(dir, "no.sock"))
}

// TestRemotePartitionMismatchRefused: with --socket or --server the admin
// API acts on the running CA's one partition. A --partition naming another
// one used to be ignored, so `hsm seal --partition root` sealed the issuing
// partition and reported success. The local cert commands name the
// profiles a CA has when given an unknown one.
func TestRemotePartitionMismatchRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir := t.TempDir()
	p, _, httpURL := startQuickstart(t, dir)
	sock := filepath.Join(dir, "admin.sock")
	for _, cmd := range [][]string{
		{"hsm", "status", "--socket", sock, "--partition", "root"},
		{"hsm", "seal", "--socket", sock, "--partition", "root"},
		{"hsm", "activate", "--socket", sock, "--partition", "root", "--share", filepath.Join(dir, "shares/root/share-1.txt")},
	} {
		mustFail(t, dir, ExitUsage, []string{"uses partition issuing, not root", "hint:"}, cmd...)
	}
	waitHealth(t, p, httpURL, isActive) // nothing was sealed
	mustRun(t, dir, "hsm", "status", "--socket", sock, "--partition", "issuing")
	mustRun(t, dir, "hsm", "seal", "--socket", sock, "--partition", "issuing")
	waitHealth(t, p, httpURL, isSealed)
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("quickstart: %v\n%s", err, p.out)
	}

	csr, _ := newCSRPEM(t, dir, "web.csr", "web.example.internal")
	mustFail(t, dir, ExitUsage, []string{`unknown profile "nope"`, "hint: the config's profiles are ", "server"},
		args("cert", "issue", "--config", "ca.yaml", "--csr", csr, "--profile", "nope", shareArgs(filepath.Join(dir, "shares/issuing/share-1.txt")))...)
}
