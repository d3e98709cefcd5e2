//go:build crash

package server_test

// The crash-under-load test (issue 7): `make test-crash` runs it against the
// built binary ($HSMCA). It starts `hsmca ca serve`, drives it with
// `hsmca loadtest acme` (http-01) and, alongside, with recording ACME
// clients (golang.org/x/crypto/acme, tls-alpn-01) that keep every
// certificate they receive, SIGKILLs the server at random moments, restarts
// and re-activates it, and finally checks that every received certificate
// is in the store byte for byte and verifies, that no serial appears twice,
// that no order is stuck in processing, and that the module's audit log
// verifies.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/acme"

	"github.com/hsmca/hsmca/server"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type proc struct {
	cmd    *exec.Cmd
	out    *lockedBuf // stdout and stderr
	stdout *lockedBuf
	done   chan struct{}
}

func start(t *testing.T, dir, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), out: &lockedBuf{}, stdout: &lockedBuf{}, done: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = io.MultiWriter(p.out, p.stdout), p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("process did not end within 2m after %v:\n%s", sig, p.out)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

func waitHealth(t *testing.T, p *proc, url string, ok func(server.Health) bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	c := &http.Client{Timeout: 5 * time.Second}
	for {
		select {
		case <-p.done:
			t.Fatalf("server exited:\n%s", p.out)
		default:
		}
		if resp, err := c.Get(url + "/healthz"); err == nil {
			var h server.Health
			err := json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if err == nil && ok(h) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz not as expected within 3m:\n%s", p.out)
		}
		time.Sleep(50 * time.Millisecond) // polling a starting process
	}
}

func unixClient(path string) *http.Client {
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

func adminJSON(c *http.Client, method, url string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, body)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("%s", raw)
	}
	if out != nil {
		return resp.StatusCode, json.Unmarshal(raw, out)
	}
	return resp.StatusCode, nil
}

// alpnServer answers tls-alpn-01 (RFC 8737) for the recording clients.
type alpnServer struct {
	mu    sync.Mutex
	certs map[string]*tls.Certificate
}

func (a *alpnServer) set(name string, c *tls.Certificate) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.certs[name] = c
}

func (a *alpnServer) serve(t *testing.T, addr string) {
	ln, err := tls.Listen("tcp", addr, &tls.Config{
		NextProtos: []string{acme.ALPNProto},
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			a.mu.Lock()
			defer a.mu.Unlock()
			if c, ok := a.certs[h.ServerName]; ok {
				return c, nil
			}
			return nil, fmt.Errorf("no challenge for %q", h.ServerName)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
}

// received is what the recording clients got.
type received struct {
	mu     sync.Mutex
	certs  map[string][]byte // serial → leaf DER
	dupes  []string
	orders []orderRef
	n      int
}

// orderRef is an order and the account key that owns it.
type orderRef struct {
	key crypto.Signer
	url string
}

func (r *received) add(serial string, der []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.certs[serial]; ok {
		r.dupes = append(r.dupes, serial)
	}
	r.certs[serial] = der
	r.n++
}

func (r *received) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// recorder is one ACME client that orders certificates in a loop until
// stop closes, recording what it receives.
func recorder(ctx context.Context, id int, dirURL string, hc *http.Client, alpn *alpnServer, rec *received, stop <-chan struct{}) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	certKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var cl *acme.Client
	for n := 0; n < 100_000; n++ {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		if cl == nil {
			cl = &acme.Client{Key: key, DirectoryURL: dirURL, HTTPClient: hc}
			if _, err := cl.Register(ctx, &acme.Account{}, acme.AcceptTOS); err != nil && err != acme.ErrAccountAlreadyExists {
				cl = nil
				time.Sleep(100 * time.Millisecond) // server restarting: back off
				continue
			}
		}
		name := fmt.Sprintf("rec%d-%d-%d.crash.test", id, n, time.Now().UnixNano()%1e6)
		if err := orderOne(ctx, cl, name, certKey, alpn, rec); err != nil {
			cl = nil                           // a killed server loses nothing, but the client's nonces go stale
			time.Sleep(100 * time.Millisecond) // server restarting: back off
		}
	}
}

func orderOne(ctx context.Context, cl *acme.Client, name string, certKey crypto.Signer, alpn *alpnServer, rec *received) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	o, err := cl.AuthorizeOrder(ctx, acme.DomainIDs(name))
	if err != nil {
		return err
	}
	rec.mu.Lock()
	rec.orders = append(rec.orders, orderRef{cl.Key, o.URI})
	rec.mu.Unlock()
	for _, zu := range o.AuthzURLs {
		z, err := cl.GetAuthorization(ctx, zu)
		if err != nil {
			return err
		}
		if z.Status == acme.StatusValid {
			continue
		}
		var chal *acme.Challenge
		for _, c := range z.Challenges {
			if c.Type == "tls-alpn-01" {
				chal = c
			}
		}
		if chal == nil {
			return fmt.Errorf("no tls-alpn-01 challenge")
		}
		cert, err := cl.TLSALPN01ChallengeCert(chal.Token, name)
		if err != nil {
			return err
		}
		alpn.set(name, &cert)
		if _, err := cl.Accept(ctx, chal); err != nil {
			return err
		}
		if _, err := cl.WaitAuthorization(ctx, zu); err != nil {
			return err
		}
	}
	if o, err = cl.WaitOrder(ctx, o.URI); err != nil {
		return err
	}
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{name}}, certKey)
	ders, _, err := cl.CreateOrderCert(ctx, o.FinalizeURL, csr, true)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(ders[0])
	if err != nil {
		return err
	}
	rec.add(leaf.SerialNumber.Text(16), ders[0])
	return nil
}

func TestCrashUnderLoad(t *testing.T) {
	bin := os.Getenv("HSMCA")
	if bin == "" {
		t.Fatal("set HSMCA to the hsmca binary (make test-crash does)")
	}
	bin, _ = filepath.Abs(bin)
	const kills = 5
	seed := uint64(time.Now().UnixNano())
	rng := mrand.New(mrand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)

	dir := t.TempDir()
	httpsAddr := "127.0.0.1:" + freePort(t)
	httpAddr := "127.0.0.1:" + freePort(t)
	httpURL := "http://" + httpAddr
	dnsAddr := "127.0.0.1:" + freePort(t)
	http01, alpnPort := freePort(t), freePort(t)

	qs := start(t, dir, bin, "quickstart", "--dir", dir, "--https-addr", httpsAddr, "--http-addr", httpAddr)
	waitHealth(t, qs, httpURL, func(h server.Health) bool { return !h.Sealed })
	qs.signal(t, syscall.SIGTERM)
	cfgPath := filepath.Join(dir, "ca.yaml")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	raw = regexp.MustCompile(`(?m)^(\s*)http01_port:.*$`).ReplaceAll(raw, []byte("${1}http01_port: "+http01))
	raw = regexp.MustCompile(`(?m)^(\s*)tlsalpn01_port:.*$`).ReplaceAll(raw, []byte("${1}tlsalpn01_port: "+alpnPort))
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	root := filepath.Join(dir, "root.pem")
	rootPEM, _ := os.ReadFile(root)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	dirURL := "https://" + httpsAddr + "/acme/directory"
	alpn := &alpnServer{certs: map[string]*tls.Certificate{}}
	alpn.serve(t, "127.0.0.1:"+alpnPort)
	rec := &received{certs: map[string][]byte{}}
	sock := filepath.Join(dir, "admin.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	activate := func(p *proc) {
		t.Helper()
		waitHealth(t, p, httpURL, func(h server.Health) bool { return h.Sealed })
		for _, s := range []string{"share-1.txt", "share-2.txt"} {
			b, err := os.ReadFile(filepath.Join(dir, "shares", "issuing", s))
			if err != nil {
				t.Fatal(err)
			}
			if code, err := adminJSON(unixClient(sock), "POST", "http://admin/admin/hsm/activate", server.ActivateRequest{Share: string(b)}, nil); err != nil || code != 200 {
				t.Fatalf("activate: %d %v", code, err)
			}
		}
	}

	loadOrders := 0
	var ltDirs []string // where the loadtest saved every chain it received
	for round := 0; round < kills; round++ {
		p := start(t, dir, bin, "ca", "serve", "--config", cfgPath, "--resolver", dnsAddr)
		activate(p)
		ltCerts := filepath.Join(dir, fmt.Sprintf("loadtest-certs-%d", round))
		if err := os.Mkdir(ltCerts, 0o700); err != nil {
			t.Fatal(err)
		}
		ltDirs = append(ltDirs, ltCerts)
		lt := start(t, dir, bin, "loadtest", "acme", "--url", dirURL, "--ca-bundle", root, "--clients", "4",
			"--duration", "90s", "--max-time", "2m", "--http-port", http01, "--dns-addr", dnsAddr, "--json", "--save-certs", ltCerts)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for id := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				recorder(ctx, round*10+id, dirURL, hc, alpn, rec, stop)
			}()
		}
		// Kill at a random moment: after a random number of further
		// certificates reached the recording clients (bounded in time).
		want := rec.count() + 5 + rng.IntN(20)
		deadline := time.Now().Add(3 * time.Minute)
		for rec.count() < want && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond) // polling a counter
		}
		if rec.count() < want {
			t.Fatalf("round %d: recording clients received %d of %d certificates within 3m; server:\n%s\nloadtest:\n%s", round, rec.count(), want, p.out, lt.out)
		}
		// A random extra moment inside an issuance burst.
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		close(stop)
		wg.Wait()
		lt.signal(t, syscall.SIGINT)
		var rep struct {
			Orders int `json:"orders"`
		}
		if err := json.Unmarshal([]byte(lt.stdout.String()), &rep); err != nil {
			t.Logf("round %d: loadtest report: %v\n%s", round, err, tail(lt.out.String(), 2000))
		}
		loadOrders += rep.Orders
		t.Logf("round %d: SIGKILL after %d recorded certificates; loadtest completed %d orders", round, rec.count(), rep.Orders)
	}

	// Restart, re-activate, check.
	p := start(t, dir, bin, "ca", "serve", "--config", cfgPath, "--resolver", dnsAddr)
	activate(p)
	// The loadtest clients' certificates count as received too.
	ltReceived := 0
	for _, d := range ltDirs {
		files, err := filepath.Glob(filepath.Join(d, "*.pem"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			blk, _ := pem.Decode(b)
			if blk == nil {
				t.Fatalf("%s: the loadtest saved no PEM certificate", f)
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			rec.add(c.SerialNumber.Text(16), blk.Bytes)
			ltReceived++
		}
	}
	if ltReceived == 0 {
		t.Fatal("the loadtest saved no certificate in any round")
	}
	if len(rec.dupes) > 0 {
		t.Fatalf("serials received twice: %v", rec.dupes)
	}
	inter, _ := os.ReadFile(filepath.Join(dir, "intermediate-1.pem"))
	ipool := x509.NewCertPool()
	ipool.AppendCertsFromPEM(inter)
	sc := unixClient(sock)
	for serial, der := range rec.certs {
		var ci server.CertInfo
		if code, err := adminJSON(sc, "GET", "http://admin/admin/cert/show/"+serial, nil, &ci); err != nil || code != 200 {
			t.Errorf("received certificate %s not in the store: %d %v", serial, code, err)
			continue
		}
		blk, _ := pem.Decode([]byte(ci.Certificate))
		if blk == nil || !bytes.Equal(blk.Bytes, der) {
			t.Errorf("certificate %s in the store differs from what the client received", serial)
		}
		leaf, _ := x509.ParseCertificate(der)
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: ipool}); err != nil {
			t.Errorf("certificate %s does not verify: %v", serial, err)
		}
	}
	// No serial twice in the store.
	seen := map[string]bool{}
	after, records := "", 0
	for page := 0; page < 10_000; page++ {
		var l server.CertList
		q := "limit=1000"
		if after != "" {
			q += "&after=" + after
		}
		if code, err := adminJSON(sc, "GET", "http://admin/admin/cert/list?"+q, nil, &l); err != nil || code != 200 {
			t.Fatalf("list: %d %v", code, err)
		}
		for _, c := range l.Certificates {
			if seen[c.Serial] {
				t.Errorf("serial %s twice in the store", c.Serial)
			}
			seen[c.Serial] = true
			records++
		}
		if l.Next == "" {
			break
		}
		after = l.Next
	}
	// No order stuck in processing after the restarts.
	stuck, checkedOrders := 0, 0
	clients := map[crypto.Signer]*acme.Client{}
	for _, ref := range rec.orders {
		cl := clients[ref.key]
		if cl == nil {
			cl = &acme.Client{Key: ref.key, DirectoryURL: dirURL, HTTPClient: hc}
			clients[ref.key] = cl
		}
		o, err := cl.GetOrder(ctx, ref.url)
		if err != nil {
			t.Errorf("order %s: %v", ref.url, err)
			continue
		}
		checkedOrders++
		switch o.Status {
		case acme.StatusPending, acme.StatusReady, acme.StatusValid, acme.StatusInvalid:
		default:
			t.Errorf("order %s is %s after the restart", ref.url, o.Status)
			stuck++
		}
	}
	if stuck > 0 {
		t.Errorf("%d orders stuck in processing", stuck)
	}
	p.signal(t, syscall.SIGTERM)
	out, err := exec.Command(bin, "hsm", "audit", "verify", "--module", filepath.Join(dir, "module")).CombinedOutput()
	if err != nil {
		t.Fatalf("hsm audit verify: %v\n%s", err, out)
	}
	fmt.Printf("crash test: %d kills, %d loadtest orders completed (%d certificates saved by the loadtest), %d recorded orders placed (%d checked, none stuck in processing), %d certificates received and checked, %d records in the store, audit log verified (seed %d)\n",
		kills, loadOrders, ltReceived, len(rec.orders), checkedOrders, len(rec.certs), records, seed)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
