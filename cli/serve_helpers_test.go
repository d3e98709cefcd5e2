package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hsmca/hsmca/server"
)

// Helpers for the process-level tests of `ca serve` and `quickstart`: the
// real binary, real listeners on loopback, real module and store files.

// syncBuffer is a bytes.Buffer safe for a process writing and a test
// reading.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serverProc is a running hsmca process (quickstart or ca serve).
type serverProc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

func startProc(t testing.TB, dir string, args ...string) *serverProc {
	t.Helper()
	p := &serverProc{cmd: exec.Command(hsmcaBinary(t), args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *serverProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits (bounded) for the process to end.
func (p *serverProc) stop(t testing.TB, sig os.Signal) error {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return p.err
	case <-time.After(90 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("hsmca did not stop within 90s after %v; output:\n%s", sig, p.out)
		return nil
	}
}

// kill9 ends the process with SIGKILL, as a crash would.
func (p *serverProc) kill9(t testing.TB) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("hsmca survived SIGKILL for 30s")
	}
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitHealth polls /healthz until ok accepts it, the process exits, or two
// minutes pass.
func waitHealth(t testing.TB, p *serverProc, httpURL string, ok func(server.Health) bool) server.Health {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	c := &http.Client{Timeout: 5 * time.Second}
	for {
		if p.exited() {
			t.Fatalf("hsmca exited early (%v); output:\n%s", p.err, p.out)
		}
		if resp, err := c.Get(httpURL + "/healthz"); err == nil {
			var h server.Health
			err := json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if err == nil && ok(h) {
				return h
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz at %s not as expected within 2 minutes; output:\n%s", httpURL, p.out)
		}
		time.Sleep(50 * time.Millisecond) // polling a starting process
	}
}

func isActive(h server.Health) bool { return !h.Sealed && h.Status == "serving" }
func isSealed(h server.Health) bool { return h.Sealed }

// socketClient talks HTTP over the admin socket.
func socketClient(path string) *http.Client {
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// adminCall posts/gets JSON on the admin API and returns the status code;
// out receives the body on success, the problem otherwise.
func adminCall(c *http.Client, method, url string, in any, out any) (int, *server.Problem, error) {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, err
	}
	if resp.StatusCode >= 400 {
		var p server.Problem
		if err := json.Unmarshal(raw, &p); err != nil {
			return resp.StatusCode, nil, errors.New("no problem document: " + string(raw))
		}
		return resp.StatusCode, &p, nil
	}
	if out != nil {
		return resp.StatusCode, nil, json.Unmarshal(raw, out)
	}
	return resp.StatusCode, nil, nil
}

// newCSRPEM makes a P-256 key and a CSR for names; it writes the CSR to
// dir/name.csr and returns the path and the PEM.
func newCSRPEM(t testing.TB, dir, file string, names ...string) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: firstOr(names, "")}}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if strings.Contains(n, ".") {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	p := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	path := filepath.Join(dir, file)
	if err := os.WriteFile(path, []byte(p), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, p
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}

func readCertPEM(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// startQuickstart runs quickstart in dir on fresh loopback ports and waits
// until the CA is active. It returns the process and its two base URLs.
func startQuickstart(t testing.TB, dir string, extra ...string) (*serverProc, string, string) {
	t.Helper()
	https, http := freeAddr(t), freeAddr(t)
	args := append([]string{"quickstart", "--dir", dir, "--https-addr", https, "--http-addr", http}, extra...)
	p := startProc(t, dir, args...)
	waitHealth(t, p, "http://"+http, isActive)
	return p, "https://" + https, "http://" + http
}

// writeKeyAndCSR writes a new P-256 key (PKCS #8, 0600) to keyPath and a
// CSR with common name cn beside it; it returns the CSR's path.
func writeKeyAndCSR(t testing.TB, dir, keyPath, cn string) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	path := keyPath + ".csr"
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// stoppedQuickstart makes a quickstart CA in a fresh temp dir and stops it,
// so that a test can edit ca.yaml and start `ca serve` itself. It returns
// the dir and the base URLs the CA serves on.
func stoppedQuickstart(t testing.TB) (dir, httpsURL, httpURL string) {
	t.Helper()
	dir = t.TempDir()
	qs, httpsURL, httpURL := startQuickstart(t, dir)
	if err := qs.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("quickstart: %v\n%s", err, qs.out)
	}
	return dir, httpsURL, httpURL
}

// editConfig replaces, once each, every old string of the old/new pairs in
// dir/ca.yaml and fails the test if one is not there. It returns the
// config's path.
func editConfig(t testing.TB, dir string, oldNew ...string) string {
	t.Helper()
	path := filepath.Join(dir, "ca.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(oldNew); i += 2 {
		if !bytes.Contains(b, []byte(oldNew[i])) {
			t.Fatalf("ca.yaml has no %q to replace", oldNew[i])
		}
		b = bytes.Replace(b, []byte(oldNew[i]), []byte(oldNew[i+1]), 1)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
