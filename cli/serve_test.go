package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
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

	"github.com/miekg/dns"
	xacme "golang.org/x/crypto/acme"

	"github.com/hsmca/hsmca/acme"
	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/server"
)

// TestServeKillDuringAdminBurst kills `ca serve` with SIGKILL while clients
// issue certificates through the admin socket, restarts and re-activates it,
// several times; then every certificate a client received must be in the
// store and in `cert list`, byte for byte, with no serial twice.
func TestServeKillDuringAdminBurst(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir, _, httpURL := stoppedQuickstart(t)
	cfg := filepath.Join(dir, "ca.yaml")
	sock := filepath.Join(dir, "admin.sock")
	_, csrPEM := newCSRPEM(t, dir, "burst.csr", "burst.example.internal")

	const (
		kills      = 3
		clients    = 4
		perRound   = 12 // kill after this many acknowledged issuances
		roundLimit = 2 * time.Minute
	)
	var (
		mu       sync.Mutex
		received = map[string][]byte{} // serial → DER as the client got it
		dupes    []string
	)
	for round := 0; round <= kills; round++ {
		p := startProc(t, dir, "ca", "serve", "--config", cfg)
		waitHealth(t, p, httpURL, isSealed)
		sc := socketClient(sock)
		for _, s := range []string{"share-2.txt", "share-3.txt"} {
			share, err := os.ReadFile(filepath.Join(dir, "shares", "issuing", s))
			if err != nil {
				t.Fatal(err)
			}
			if code, prob, err := adminCall(sc, "POST", "http://admin/admin/hsm/activate", server.ActivateRequest{Share: string(share)}, nil); err != nil || code != 200 {
				t.Fatalf("round %d: activate: %d %v %v", round, code, prob, err)
			}
		}
		if round == kills {
			// Final round: the store and `cert list` must hold everything.
			verifyReceived(t, dir, sock, received)
			if err := p.stop(t, syscall.SIGTERM); err != nil {
				t.Fatalf("final stop: %v", err)
			}
			break
		}
		var (
			wg   sync.WaitGroup
			got  int
			stop = make(chan struct{})
			once sync.Once
		)
		deadline := time.Now().Add(roundLimit)
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; n < 10_000 && time.Now().Before(deadline); n++ {
					select {
					case <-stop:
						return
					default:
					}
					var ci server.CertInfo
					code, _, err := adminCall(sc, "POST", "http://admin/admin/cert/issue", server.IssueRequest{CSR: csrPEM, Profile: "server"}, &ci)
					if err != nil || code != http.StatusCreated {
						return // the server died under us: expected after the kill
					}
					blk, _ := pem.Decode([]byte(ci.Certificate))
					mu.Lock()
					if _, dup := received[ci.Serial]; dup {
						dupes = append(dupes, ci.Serial)
					}
					received[ci.Serial] = blk.Bytes
					got++
					if got >= perRound {
						once.Do(func() { p.kill9(t); close(stop) })
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		once.Do(func() { p.kill9(t); close(stop) })
		if got == 0 {
			t.Fatalf("round %d: no issuance succeeded; output:\n%s", round, p.out)
		}
	}
	if len(dupes) > 0 {
		t.Fatalf("serials handed out twice: %v", dupes)
	}
	t.Logf("kills: %d, certificates received and checked: %d", kills, len(received))
}

// verifyReceived checks every received certificate against the store (via
// the admin API) and `cert list`.
func verifyReceived(t *testing.T, dir, sock string, received map[string][]byte) {
	t.Helper()
	r := mustRun(t, dir, "cert", "list", "--socket", sock, "--json")
	var listed []struct {
		Serial string `json:"serial"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil {
		t.Fatalf("cert list --json: %v\n%s", err, r.stdout)
	}
	seen := map[string]int{}
	for _, c := range listed {
		seen[c.Serial]++
		if seen[c.Serial] > 1 {
			t.Errorf("serial %s listed twice", c.Serial)
		}
	}
	sc := socketClient(sock)
	for serial, der := range received {
		if seen[serial] == 0 {
			t.Errorf("received certificate %s is not in `cert list`", serial)
			continue
		}
		var ci server.CertInfo
		code, prob, err := adminCall(sc, "GET", "http://admin/admin/cert/show/"+serial, nil, &ci)
		if err != nil || code != 200 {
			t.Errorf("show %s: %d %v %v", serial, code, prob, err)
			continue
		}
		blk, _ := pem.Decode([]byte(ci.Certificate))
		if blk == nil || !bytes.Equal(blk.Bytes, der) || ci.Status != "valid" {
			t.Errorf("certificate %s in the store differs from what the client received (status %s)", serial, ci.Status)
		}
		if _, err := x509.ParseCertificate(der); err != nil {
			t.Errorf("%s: %v", serial, err)
		}
	}
	pending := 0
	for _, c := range listed {
		if c.Status == "pending" {
			pending++
		}
	}
	t.Logf("cert list: %d records (%d pending: serials reserved before a kill, revocable), %d received by clients", len(listed), pending, len(received))
}

// TestServeConfigErrors: bad configs fail at start-up with clear errors.
func TestServeConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, body string
		code       int
		want       string
	}{
		{"unknown field", "module: m\nca:\n  issuers: [{name: a, certificate: a.pem, partition: p, key: k}]\nserver:\n  bogus: 1\n", ExitFail, "bogus"},
		{"bad log format", "module: m\nca:\n  issuers: [{name: a, certificate: a.pem, partition: p, key: k}]\nserver:\n  log_format: xml\n", ExitFail, "log_format"},
		{"no module", "module: nowhere\nca:\n  issuers: [{name: a, certificate: a.pem, partition: p, key: k}]\n", ExitFail, "nowhere"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := write(strings.ReplaceAll(tc.name, " ", "-")+".yaml", tc.body)
			r := runCLI(t, dir, "ca", "serve", "--config", path)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("want a failure naming %q:\n%s", tc.want, r)
			}
		})
	}
}

// dnsStub answers every A query with 127.0.0.1 (and nothing else), so that
// the CA's http-01 validation of any name reaches a client on loopback.
func dnsStub(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(127, 0, 0, 1)})
			}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// TestCertbotThroughServe drives Debian's certbot (a client nobody here
// wrote) against `ca serve`: register, issue for two names over http-01 in
// standalone mode on a loopback port, renew, revoke. The certificate
// verifies with openssl against the root.
func TestCertbotThroughServe(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	certbot, err := exec.LookPath("certbot")
	if err != nil {
		t.Skip("certbot not installed (make deps)")
	}
	dir, httpsURL, httpURL := stoppedQuickstart(t)
	// Point http-01 validation at the port certbot will listen on.
	http01 := freeAddr(t)
	_, port, _ := net.SplitHostPort(http01)
	cfgPath := editConfig(t, dir, "http01_port: 80", "http01_port: "+port)
	resolver := dnsStub(t)
	p := startProc(t, dir, "ca", "serve", "--config", cfgPath, "--resolver", resolver)
	waitHealth(t, p, httpURL, isSealed)
	sock := filepath.Join(dir, "admin.sock")
	mustRun(t, dir, "hsm", "activate", "--socket", sock,
		"--share", filepath.Join(dir, "shares/issuing/share-1.txt"), "--share", filepath.Join(dir, "shares/issuing/share-3.txt"))

	cb := filepath.Join(dir, "certbot")
	common := []string{"--config-dir", cb + "/config", "--work-dir", cb + "/work", "--logs-dir", cb + "/logs", "--non-interactive"}
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, certbot, append(args, common...)...)
		cmd.Env = append(os.Environ(), "REQUESTS_CA_BUNDLE="+filepath.Join(dir, "root.pem"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			logs, _ := os.ReadFile(cb + "/logs/letsencrypt.log")
			t.Fatalf("certbot %s: %v\n%s\n--- certbot log (tail)\n%s\n--- server\n%s", strings.Join(args, " "), err, out, tail(string(logs), 4000), tail(p.out.String(), 4000))
		}
		return string(out)
	}
	names := []string{"a.example.internal", "b.example.internal"}
	run("register", "--agree-tos", "--register-unsafely-without-email", "--server", httpsURL+"/acme/directory")
	run("certonly", "--standalone", "--http-01-port", port, "--http-01-address", "127.0.0.1",
		"--server", httpsURL+"/acme/directory", "--cert-name", "demo", "-d", names[0], "-d", names[1])
	live := filepath.Join(cb, "config", "live", "demo")
	verify := func() *x509.Certificate {
		t.Helper()
		out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(dir, "root.pem"), "-untrusted", filepath.Join(dir, "intermediate-1.pem"), filepath.Join(live, "cert.pem")).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl verify: %v\n%s", err, out)
		}
		c := readCertPEM(t, filepath.Join(live, "cert.pem"))
		if len(c.DNSNames) != 2 {
			t.Fatalf("certificate names %v, want %v", c.DNSNames, names)
		}
		return c
	}
	first := verify()
	run("renew", "--force-renewal", "--no-random-sleep-on-renew", "--cert-name", "demo")
	second := verify()
	if first.SerialNumber.Cmp(second.SerialNumber) == 0 {
		t.Fatal("renewal returned the same certificate")
	}
	run("revoke", "--cert-name", "demo", "--reason", "keycompromise", "--no-delete-after-revoke")
	var ci server.CertInfo
	if code, prob, err := adminCall(socketClient(sock), "GET", "http://admin/admin/cert/show/"+second.SerialNumber.Text(16), nil, &ci); err != nil || code != 200 || ci.Status != "revoked" || ci.Reason != "keyCompromise" {
		t.Fatalf("after certbot revoke: %d %v %v %+v", code, prob, err, ci)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("serve exit: %v", err)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestServeExampleConfig keeps testdata/serve/ca.yaml decodable.
func TestServeExampleConfig(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "testdata", "serve", "ca.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := DecodeConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server.TLSKey != "tls/server.key" || cfg.Server.CRLFiles["root"] != "root-crl.pem" || cfg.Server.CRLInterval.D() != time.Hour {
		t.Fatalf("decoded server section: %+v", cfg.Server)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// serveWithACMEPorts makes a quickstart CA in a temp dir, points http-01
// validation at a free port and starts `ca serve` (sealed) with a DNS stub
// as its resolver. It returns the dir, the process, the base URLs and the
// http-01 port.
func serveWithACMEPorts(t *testing.T) (dir string, p *serverProc, httpsURL, httpURL, http01 string) {
	t.Helper()
	dir, httpsURL, httpURL = stoppedQuickstart(t)
	_, http01, _ = net.SplitHostPort(freeAddr(t))
	cfgPath := editConfig(t, dir, "http01_port: 80", "http01_port: "+http01)
	p = startProc(t, dir, "ca", "serve", "--config", cfgPath, "--resolver", dnsStub(t))
	waitHealth(t, p, httpURL, isSealed)
	return dir, p, httpsURL, httpURL, http01
}

// TestACMESealedFinalize: while sealed, an ACME order is created and
// validated, finalize answers 503 with the quorum message (not
// serverInternal); after activation through the admin API the same order
// finalizes.
func TestACMESealedFinalize(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir, p, httpsURL, _, http01 := serveWithACMEPorts(t)
	rb, _ := os.ReadFile(filepath.Join(dir, "root.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rb)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cl := &xacme.Client{Key: key, DirectoryURL: httpsURL + "/acme/directory",
		HTTPClient: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
		RetryBackoff: func(n int, _ *http.Request, resp *http.Response) time.Duration {
			if n > 5 || resp == nil || resp.StatusCode == http.StatusServiceUnavailable {
				return 0 // let the test see the 503
			}
			return 50 * time.Millisecond
		}}
	var (
		mu   sync.Mutex
		resp = map[string]string{}
	)
	ln, err := net.Listen("tcp", "127.0.0.1:"+http01)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		io.WriteString(w, resp[strings.TrimPrefix(r.URL.Path, "/.well-known/acme-challenge/")])
	}), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := cl.Register(ctx, &xacme.Account{}, xacme.AcceptTOS); err != nil {
		t.Fatal(err)
	}
	name := "sealed.example.internal"
	o, err := cl.AuthorizeOrder(ctx, xacme.DomainIDs(name))
	if err != nil {
		t.Fatal(err)
	}
	for _, zu := range o.AuthzURLs {
		z, err := cl.GetAuthorization(ctx, zu)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range z.Challenges {
			if c.Type != "http-01" {
				continue
			}
			ka, err := cl.HTTP01ChallengeResponse(c.Token)
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			resp[c.Token] = ka
			mu.Unlock()
			if _, err := cl.Accept(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := cl.WaitAuthorization(ctx, zu); err != nil {
			t.Fatalf("validation while sealed: %v\n%s", err, p.out)
		}
	}
	certKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{name}}, certKey)
	_, _, err = cl.CreateOrderCert(ctx, o.FinalizeURL, csr, true)
	var ae *xacme.Error
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusServiceUnavailable || !strings.Contains(ae.Detail, "CA awaits quorum (0 of 2)") || strings.Contains(ae.ProblemType, "serverInternal") {
		t.Fatalf("finalize while sealed: %#v", err)
	}
	sock := filepath.Join(dir, "admin.sock")
	mustRun(t, dir, "hsm", "activate", "--socket", sock,
		"--share", filepath.Join(dir, "shares/issuing/share-1.txt"), "--share", filepath.Join(dir, "shares/issuing/share-2.txt"))
	ders, _, err := cl.CreateOrderCert(ctx, o.FinalizeURL, csr, true)
	if err != nil {
		t.Fatalf("finalize after activation: %v\n%s", err, p.out)
	}
	leaf, err := x509.ParseCertificate(ders[0])
	if err != nil || len(ders) != 2 || leaf.DNSNames[0] != name {
		t.Fatalf("certificate: %v, %d in chain", err, len(ders))
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("serve exit: %v", err)
	}
}

// TestServeSIGHUPReload: SIGHUP re-reads the name policy.
func TestServeSIGHUPReload(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir, p, _, httpURL, _ := serveWithACMEPorts(t)
	sock := filepath.Join(dir, "admin.sock")
	mustRun(t, dir, "hsm", "activate", "--socket", sock,
		"--share", filepath.Join(dir, "shares/issuing/share-1.txt"), "--share", filepath.Join(dir, "shares/issuing/share-2.txt"))
	csr, _ := newCSRPEM(t, dir, "x.csr", "x.denied.internal")
	mustRun(t, dir, "cert", "issue", "--socket", sock, "--csr", csr, "--profile", "server")
	cfgPath := filepath.Join(dir, "ca.yaml")
	b, _ := os.ReadFile(cfgPath)
	b = bytes.Replace(b, []byte("ca:\n"), []byte("ca:\n  policy:\n    denied_dns_suffixes: [denied.internal]\n"), 1)
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(time.Minute)
	for {
		r := runCLI(t, dir, "cert", "issue", "--socket", sock, "--csr", csr, "--profile", "server")
		if r.code == ExitUsage && strings.Contains(r.stderr, "denied.internal") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("policy not reloaded after SIGHUP:\n%s\n%s", r, p.out)
		}
		time.Sleep(50 * time.Millisecond) // polling for the reload
	}
	// Still serving and still active.
	waitHealth(t, p, httpURL, isActive)
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("serve exit: %v", err)
	}
}

// TestServeSIGHUPOperatorCA: SIGHUP re-reads server.operator_ca. An operator
// certificate from CA A is accepted; an operator_ca file without a
// certificate fails the reload and keeps A; once the file names only CA B,
// the same certificate is refused without a restart.
func TestServeSIGHUPOperatorCA(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir, httpsURL, httpURL := stoppedQuickstart(t)
	opCA := filepath.Join(dir, "operator-ca.pem")
	rootPEM, err := os.ReadFile(filepath.Join(dir, "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	writeOpCA := func(b []byte) {
		if err := os.WriteFile(opCA, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeOpCA(rootPEM)
	cfgPath := editConfig(t, dir, "  issuing_partition: issuing", "  operator_ca: operator-ca.pem\n  issuing_partition: issuing")
	p := startProc(t, dir, "ca", "serve", "--config", cfgPath)
	waitHealth(t, p, httpURL, isSealed)
	status := func() cliResult {
		return runCLI(t, dir, "hsm", "status", "--server", httpsURL,
			"--client-cert", "operator.pem", "--client-key", "operator.key", "--ca-cert", "root.pem")
	}
	if r := status(); r.code != 0 {
		t.Fatalf("operator of CA A before the reload:\n%s\n%s", r, p.out)
	}

	writeOpCA([]byte("not a certificate\n"))
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitOutput(t, p, "reload failed")
	if !strings.Contains(p.out.String(), "server.operator_ca operator-ca.pem: no PEM certificate") {
		t.Fatalf("the failed reload does not say why:\n%s", p.out)
	}
	if r := status(); r.code != 0 {
		t.Fatalf("operator of CA A after a failed reload:\n%s\n%s", r, p.out)
	}

	writeOpCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: selfSigned(t, "operator CA B")}))
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitOutput(t, p, "server: reloaded configuration")
	r := status()
	if r.code == 0 || !strings.Contains(r.stderr, "operator client certificate") {
		t.Fatalf("operator of CA A after the reload to CA B only:\n%s\n%s", r, p.out)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("serve exit: %v", err)
	}
}

type stubQuorum struct{ st server.QuorumStatus }

func (s *stubQuorum) Status() (server.QuorumStatus, error)         { return s.st, nil }
func (s *stubQuorum) AddShare([]byte) (server.QuorumStatus, error) { return s.st, nil }
func (s *stubQuorum) Seal() error                                  { return nil }

// TestACMEAdapterErrors: the adapter turns CA domain errors into the ACME
// errors the acme package answers with.
func TestACMEAdapterErrors(t *testing.T) {
	q := &stubQuorum{st: server.QuorumStatus{Partition: "issuing", State: server.StateCollecting, Presented: 1, Threshold: 2}}
	a := &acmeCA{quorum: q, retryAfter: 7 * time.Second}
	_, err := a.Issue(context.Background(), acme.IssueRequest{CSR: []byte{1}})
	var ue *acme.UnavailableError
	if !errors.As(err, &ue) || ue.Detail != "CA awaits quorum (1 of 2)" || ue.RetryAfter != 7*time.Second {
		t.Fatalf("sealed issue: %#v", err)
	}
	ids := []acme.Identifier{{Type: "dns", Value: "a.example"}, {Type: "ip", Value: "10.0.0.1"}}
	for _, tc := range []struct {
		name  string
		err   error
		check func(error) bool
	}{
		{"sealed", fmt.Errorf("ca: sign: %w", ca.ErrSealed), func(e error) bool { var u *acme.UnavailableError; return errors.As(e, &u) }},
		{"policy dns", &ca.ErrPolicy{Name: "a.example", Reason: "denied"}, func(e error) bool {
			var r *acme.RejectedError
			return errors.As(e, &r) && r.Identifier == ids[0] && r.Reason == "denied"
		}},
		{"policy ip", &ca.ErrPolicy{Name: "10.0.0.1", Reason: "range"}, func(e error) bool {
			var r *acme.RejectedError
			return errors.As(e, &r) && r.Identifier == ids[1]
		}},
		{"bad csr", &ca.ErrBadCSR{Rule: "key too small"}, func(e error) bool { var b *acme.BadCSRError; return errors.As(e, &b) }},
		{"lint", &ca.ErrLint{Results: []ca.LintResult{{Lint: "e_x", Status: "error"}}}, func(e error) bool { var b *acme.BadCSRError; return errors.As(e, &b) }},
		{"unknown serial", ca.ErrUnknownSerial, func(e error) bool { return errors.Is(e, acme.ErrNotFound) }},
		{"internal", errors.New("disk full"), func(e error) bool { return e.Error() == "disk full" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := a.mapErr(tc.err, ids); !tc.check(got) {
				t.Fatalf("mapErr(%v) = %#v", tc.err, got)
			}
		})
	}
	// withoutRoot drops a self-signed last certificate only.
	root := selfSigned(t, "r")
	if got := withoutRoot([][]byte{{1}, root}); len(got) != 1 {
		t.Fatalf("withoutRoot kept the root: %d", len(got))
	}
	if got := withoutRoot([][]byte{root}); len(got) != 1 {
		t.Fatalf("withoutRoot dropped a lone certificate")
	}
}

// selfSigned makes a self-signed CA certificate (DER).
func selfSigned(t *testing.T, cn string) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// A reload that changes the issuers is refused (they are set up at start:
// partitions, quorum, CRL schedule) and changes nothing; one that changes
// a section only a restart applies (acme) is carried out and says so.
func TestServeSIGHUPIssuersNeedRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir, httpsURL, httpURL := stoppedQuickstart(t)
	cfgPath := filepath.Join(dir, "ca.yaml")
	// The listener flags override the config at start; a reload applies
	// them again, so an unchanged config reloads without a warning.
	p := startProc(t, dir, "ca", "serve", "--config", cfgPath,
		"--https-addr", strings.TrimPrefix(httpsURL, "https://"), "--http-addr", strings.TrimPrefix(httpURL, "http://"))
	waitHealth(t, p, httpURL, isSealed)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitOutput(t, p, "server: reloaded configuration")
	if strings.Contains(p.out.String(), "take effect only at the next restart") {
		t.Fatalf("a reload of the unchanged config warns of changes:\n%s", p.out)
	}

	editConfig(t, dir, "      key: intermediate-1", "      key: another-key")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitOutput(t, p, "reload failed")
	if !strings.Contains(p.out.String(), "ca.issuers or ca.default_issuer changed") {
		t.Fatalf("the refused reload does not say why:\n%s", p.out)
	}
	resp, err := http.Get(httpURL + "/crl/intermediate-1.crl")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		t.Fatalf("the running issuer intermediate-1 is gone after a refused reload")
	}

	editConfig(t, dir, "      key: another-key", "      key: intermediate-1", "  http01_port: 80", "  http01_port: 5002")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitOutput(t, p, "sections=acme")
	if !strings.Contains(p.out.String(), "take effect only at the next restart") {
		t.Fatalf("the reload does not name the acme section it did not apply:\n%s", p.out)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("serve exit: %v", err)
	}
}
