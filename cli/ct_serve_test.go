package cli

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
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-acme/lego/v5/acme"
	"github.com/go-acme/lego/v5/certcrypto"
	"github.com/go-acme/lego/v5/certificate"
	"github.com/go-acme/lego/v5/challenge/http01"
	"github.com/go-acme/lego/v5/lego"
	"github.com/go-acme/lego/v5/registration"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/ct"
	"github.com/hsmca/hsmca/ct/cttest"
)

// Tests of the --ct-log, --ct-log-key and --ct-mode flags of `ca serve` and
// `quickstart` (issue 8): flag checking, CT metrics on /metrics, and ACME
// orders with lego against a real TesseraCT log.

// TestCTFlagOverride checks how the --ct-* flags change a config: logs
// added, the server profile's mode set without losing what the config or
// the built-in profile says about it, and clear refusals.
func TestCTFlagOverride(t *testing.T) {
	dir := t.TempDir()
	keyA := filepath.Join(dir, "a.pem")
	keyB := filepath.Join(dir, "b.pem")
	for _, k := range []string{keyA, keyB} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err := os.WriteFile(k, []byte(cttest.PublicKeyPEM(key.Public())), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfgLog := ct.LogConfig{Name: "cfg", URL: "https://ct.example.internal/2026", PublicKey: keyA}
	tests := []struct {
		name     string
		flags    serveFlags
		cfg      func(*Config)
		wantErr  string
		wantMode ca.CTMode
		wantURLs []string
		check    func(t *testing.T, p ca.Profile)
	}{
		{name: "no flags", wantMode: ca.CTOff},
		{
			name:     "one log",
			flags:    serveFlags{ctLogs: []string{"http://127.0.0.1:6962/2026"}, ctLogKeys: []string{keyA}},
			wantMode: ca.CTEmbed, wantURLs: []string{"http://127.0.0.1:6962/2026"},
			check: func(t *testing.T, p ca.Profile) {
				// The built-in server profile's booleans survive.
				if !p.KeepCN || !p.AllowNotBeforeNotAfter || len(p.ExtKeyUsages) != 1 || p.ExtKeyUsages[0] != "serverAuth" {
					t.Errorf("server profile lost its defaults: %+v", p)
				}
			},
		},
		{
			name:     "two logs best-effort after the config's",
			flags:    serveFlags{ctLogs: []string{"http://a.test/x", "https://b.test/y/"}, ctLogKeys: []string{keyA, keyB}, ctMode: "best-effort"},
			cfg:      func(c *Config) { c.CT.Logs = []ct.LogConfig{cfgLog} },
			wantMode: ca.CTBestEffort, wantURLs: []string{cfgLog.URL, "http://a.test/x", "https://b.test/y/"},
		},
		{
			name:  "configured server profile kept",
			flags: serveFlags{ctLogs: []string{"http://a.test/x"}, ctLogKeys: []string{keyA}},
			cfg: func(c *Config) {
				c.CA.Profiles = map[string]ca.Profile{"server": {Validity: ca.Duration(7 * 24 * time.Hour), KeepCN: true}}
			},
			wantMode: ca.CTEmbed, wantURLs: []string{"http://a.test/x"},
			check: func(t *testing.T, p ca.Profile) {
				if p.Validity.D() != 7*24*time.Hour || !p.KeepCN || p.AllowNotBeforeNotAfter {
					t.Errorf("configured server profile changed: %+v", p)
				}
			},
		},
		{
			name:     "mode alone with configured logs",
			flags:    serveFlags{ctMode: "best-effort"},
			cfg:      func(c *Config) { c.CT.Logs = []ct.LogConfig{cfgLog} },
			wantMode: ca.CTBestEffort, wantURLs: []string{cfgLog.URL},
		},
		{name: "mode alone without logs", flags: serveFlags{ctMode: "embed"}, wantErr: "--ct-mode needs CT logs"},
		{name: "bad mode", flags: serveFlags{ctLogs: []string{"http://a.test"}, ctLogKeys: []string{keyA}, ctMode: "always"}, wantErr: `--ct-mode "always": want embed or best-effort`},
		{name: "log without key", flags: serveFlags{ctLogs: []string{"http://a.test", "http://b.test"}, ctLogKeys: []string{keyA}}, wantErr: "2 --ct-log URLs but 1 --ct-log-key files"},
		{name: "key without log", flags: serveFlags{ctLogKeys: []string{keyA}}, wantErr: "0 --ct-log URLs but 1 --ct-log-key files"},
		{name: "missing key file", flags: serveFlags{ctLogs: []string{"http://a.test"}, ctLogKeys: []string{filepath.Join(dir, "nope.pem")}}, wantErr: "--ct-log-key: stat " + filepath.Join(dir, "nope.pem")},
		{name: "key is a directory", flags: serveFlags{ctLogs: []string{"http://a.test"}, ctLogKeys: []string{dir}}, wantErr: "not a regular file"},
		{name: "bad URL", flags: serveFlags{ctLogs: []string{"ftp://a.test"}, ctLogKeys: []string{keyA}}, wantErr: "scheme must be http or https"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &Config{Module: "module"}
			if tc.cfg != nil {
				tc.cfg(cfg)
			}
			o, err := tc.flags.ctOverride()
			if err == nil {
				err = o.apply(cfg)
			}
			if tc.wantErr != "" {
				var ue usageError
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &ue) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tc.wantErr)
				}
				// docs/serve.md: every refusal comes with a hint.
				var he hintError
				if !errors.As(err, &he) || he.hint == "" {
					t.Fatalf("err = %v has no hint", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var urls []string
			for _, l := range cfg.CT.Logs {
				urls = append(urls, l.URL)
				if !filepath.IsAbs(l.PublicKey) {
					t.Errorf("log %s key %q is not an absolute path", l.URL, l.PublicKey)
				}
			}
			if fmt.Sprint(urls) != fmt.Sprint(tc.wantURLs) {
				t.Errorf("logs %v, want %v", urls, tc.wantURLs)
			}
			p := cfg.CA.EffectiveProfiles()["server"]
			if p.CT.Mode != tc.wantMode {
				t.Errorf("server profile CT mode %q, want %q", p.CT.Mode, tc.wantMode)
			}
			if c := cfg.CA.EffectiveProfiles()["client"]; c.CT.Mode != ca.CTOff {
				t.Errorf("client profile CT mode %q, want off", c.CT.Mode)
			}
			if tc.check != nil {
				tc.check(t, p)
			}
		})
	}
}

// TestQuickstartCTFlagsRefused: bad --ct-* flags are refused with exit 2
// and a clear message before quickstart's first run creates anything.
func TestQuickstartCTFlagsRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir := t.TempDir()
	demo := filepath.Join(dir, "demo")
	mustFail(t, dir, ExitUsage, []string{"1 --ct-log URLs but 0 --ct-log-key files", "hint:"},
		"quickstart", "--dir", demo, "--ct-log", "http://127.0.0.1:1/log")
	mustFail(t, dir, ExitUsage, []string{`--ct-mode "sometimes"`},
		"quickstart", "--dir", demo, "--ct-mode", "sometimes")
	mustFail(t, dir, ExitUsage, []string{"--ct-mode needs CT logs"},
		"quickstart", "--dir", demo, "--ct-mode", "best-effort")
	if _, err := os.Stat(demo); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("quickstart created %s despite bad flags (%v)", demo, err)
	}
}

// writeLogKey writes a log's public key as PEM and returns the path.
func writeLogKey(t testing.TB, dir, name string, pub crypto.PublicKey) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(cttest.PublicKeyPEM(pub)), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// hasSCTList reports whether c carries the RFC 6962 SCT list extension.
func hasSCTList(c *x509.Certificate) bool {
	for _, e := range c.Extensions {
		if e.Id.Equal(ct.OIDSCTList) {
			return true
		}
	}
	return false
}

// metricValue returns the value of the sample whose name and labels are
// exactly series (as the text exposition prints them), or "".
func metricValue(t testing.TB, httpURL, series string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(httpURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// TestServeCTFlagsMetrics runs `ca serve --ct-log --ct-log-key` against an
// in-process fake log that really signs SCTs: a server-profile certificate
// embeds its SCT (checked by `hsmca ct verify`), a client-profile one does
// not, /metrics shows hsmca_ct_* for the log, and after SIGHUP the reloaded
// CA still submits and its metrics are the ones exported.
func TestServeCTFlagsMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir, _, httpURL := stoppedQuickstart(t)
	fake := cttest.NewFakeLog(t, cttest.OK)
	keyPath := writeLogKey(t, dir, "fake-log.pem", fake.Key.Public())
	u, _ := url.Parse(fake.URL)
	logName := strings.TrimRight(u.Host+u.Path, "/")

	p := startProc(t, dir, "ca", "serve", "--config", filepath.Join(dir, "ca.yaml"), "--ct-log", fake.URL, "--ct-log-key", keyPath)
	waitHealth(t, p, httpURL, isSealed)
	sock := filepath.Join(dir, "admin.sock")
	mustRun(t, dir, "hsm", "activate", "--socket", sock,
		"--share", filepath.Join(dir, "shares/issuing/share-1.txt"), "--share", filepath.Join(dir, "shares/issuing/share-2.txt"))

	issue := func(profile, name string) *x509.Certificate {
		t.Helper()
		csr, _ := newCSRPEM(t, dir, name+".csr", name)
		out := filepath.Join(dir, name+".pem")
		mustRun(t, dir, "cert", "issue", "--socket", sock, "--csr", csr, "--profile", profile, "--out", out)
		return readCertPEM(t, out)
	}
	leaf := issue("server", "ct1.example.internal")
	if !hasSCTList(leaf) {
		t.Fatal("server-profile certificate has no SCT list")
	}
	if fake.Calls() != 1 {
		t.Fatalf("fake log saw %d submissions, want 1", fake.Calls())
	}
	r := mustRun(t, dir, "ct", "verify", filepath.Join(dir, "ct1.example.internal.pem"),
		"--issuer", filepath.Join(dir, "intermediate-1.pem"), "--log-key", keyPath)
	if !strings.Contains(r.stdout, "fake-log") || !strings.Contains(r.stdout, " ok") {
		t.Fatalf("ct verify output:\n%s", r)
	}
	if c := issue("client", "client1.example.internal"); hasSCTList(c) || fake.Calls() != 1 {
		t.Fatalf("client-profile certificate: SCT list %v, log calls %d; want none and 1", hasSCTList(c), fake.Calls())
	}

	obtained := `hsmca_ct_scts_obtained_total{log="` + logName + `"}`
	okCount := `hsmca_ct_submission_duration_seconds_count{log="` + logName + `",result="ok"}`
	if v := metricValue(t, httpURL, obtained); v != "1" {
		t.Fatalf("%s = %q, want 1", obtained, v)
	}
	if v := metricValue(t, httpURL, okCount); v != "1" {
		t.Fatalf("%s = %q, want 1", okCount, v)
	}

	// SIGHUP builds a new CA with a new Submitter: the flags still apply
	// and /metrics follows the new Submitter (which counts from zero).
	if strings.Contains(p.out.String(), "server: reloaded configuration") {
		t.Fatal("reloaded before SIGHUP")
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitOutput(t, p, "server: reloaded configuration")
	for _, n := range []string{"ct2.example.internal", "ct3.example.internal"} {
		if c := issue("server", n); !hasSCTList(c) {
			t.Fatalf("%s after reload has no SCT list", n)
		}
	}
	if fake.Calls() != 3 {
		t.Fatalf("fake log saw %d submissions, want 3", fake.Calls())
	}
	if v := metricValue(t, httpURL, obtained); v != "2" {
		t.Fatalf("after reload %s = %q, want 2 (the new Submitter's count)", obtained, v)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("serve exit: %v\n%s", err, p.out)
	}
}

// finalizeRecorder is an http.RoundTripper that remembers the order status
// in every ACME finalize response, to show that finalize answered
// "processing" while SCTs were collected.
type finalizeRecorder struct {
	next http.RoundTripper

	mu       sync.Mutex
	statuses []string
}

func (f *finalizeRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := f.next.RoundTrip(req)
	if err != nil || !strings.HasSuffix(req.URL.Path, "/finalize") {
		return resp, err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	var o struct {
		Status string `json:"status"`
	}
	_ = json.Unmarshal(b, &o)
	f.mu.Lock()
	f.statuses = append(f.statuses, fmt.Sprintf("%d %s", resp.StatusCode, o.Status))
	f.mu.Unlock()
	return resp, nil
}

func (f *finalizeRecorder) get() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.statuses...)
}

type ctLegoUser struct {
	key crypto.Signer
	reg *acme.ExtendedAccount
}

func (u *ctLegoUser) GetEmail() string                       { return "ops@example.internal" }
func (u *ctLegoUser) GetRegistration() *acme.ExtendedAccount { return u.reg }
func (u *ctLegoUser) GetPrivateKey() crypto.Signer           { return u.key }

// waitOutput polls p's output until it contains want (one minute at most).
func waitOutput(t *testing.T, p *serverProc, want string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(p.out.String(), want) {
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("output lacks %q:\n%s", want, p.out)
		}
		time.Sleep(20 * time.Millisecond) // polling another process's output
	}
}

// ctACMECA makes a quickstart CA in a temp dir and stops it, then points
// http-01 validation at a free port (where legoObtain's provider server
// listens) and sets a short finalize_wait and Retry-After, so that a
// finalize that waits for SCTs answers "processing" and lego polls briskly.
func ctACMECA(t *testing.T) (dir, httpURL, chalPort string) {
	t.Helper()
	dir, _, httpURL = stoppedQuickstart(t)
	_, chalPort, _ = net.SplitHostPort(freeAddr(t))
	editConfig(t, dir, "http01_port: 80", "http01_port: "+chalPort+"\n  finalize_wait: 10ms\n  retry_after: 200ms")
	return dir, httpURL, chalPort
}

// legoObtain registers a new lego account at the CA and obtains a
// certificate for name over http-01 (lego's own provider server on
// chalPort). It returns the certificate resource, the parsed chain, and the
// "HTTP-code status" of every finalize answer. certTimeout bounds lego's
// wait for a processing order (zero: lego's 30s); lego keeps polling an
// order that turned invalid until then.
func legoObtain(t *testing.T, httpsURL string, root *x509.Certificate, chalPort, name string, certTimeout time.Duration) (*certificate.Resource, []*x509.Certificate, []string, error) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(root)
	rec := &finalizeRecorder{next: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	user := &ctLegoUser{key: key}
	lcfg := lego.NewConfig(user)
	lcfg.CADirURL = httpsURL + "/acme/directory"
	lcfg.HTTPClient = &http.Client{Timeout: 30 * time.Second, Transport: rec}
	if certTimeout > 0 {
		lcfg.Certificate.Timeout = certTimeout
	}
	client, err := lego.NewClient(lcfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if user.reg, err = client.Registration.Register(ctx, registration.RegisterOptions{TermsOfServiceAgreed: true}); err != nil {
		t.Fatalf("register: %v", err)
	}
	if err := client.Challenge.SetHTTP01Provider(http01.NewProviderServer("127.0.0.1", chalPort)); err != nil {
		t.Fatal(err)
	}
	res, err := client.Certificate.Obtain(ctx, certificate.ObtainRequest{Domains: []string{name}, Bundle: true, KeyType: certcrypto.EC256})
	if err != nil {
		return nil, nil, rec.get(), err
	}
	var chain []*x509.Certificate
	for rest := res.Certificate; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	if len(chain) < 2 || len(chain[0].DNSNames) != 1 || chain[0].DNSNames[0] != name {
		t.Fatalf("lego got %d certificates for %s", len(chain), name)
	}
	return res, chain, rec.get(), nil
}

// TestLegoCTTesseraCT is issue 8's ACME acceptance run: quickstart with
// --ct-log pointing at a real TesseraCT log, lego (as a library) obtains a
// certificate over http-01, finalize answers "processing" while the SCT is
// collected (finalize_wait is 10ms; TesseraCT answers only once a checkpoint
// covers the entry), and the certificate's embedded SCT passes
// `hsmca ct verify`, openssl shows it, and the log's checkpoint grew.
func TestLegoCTTesseraCT(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	cttest.TesseraCTBinary(t) // skip early (or fail in CI) without the log
	dir, _, chalPort := ctACMECA(t)
	root := readCertPEM(t, filepath.Join(dir, "root.pem"))
	ts := cttest.StartTesseraCT(t, root)
	keyPath := writeLogKey(t, dir, "tesseract.pem", ts.Key.Public())

	p, httpsURL, _ := startQuickstart(t, dir, "--resolver", dnsStub(t), "--ct-log", ts.URL, "--ct-log-key", keyPath)
	waitOutput(t, p, "embeds SCTs from 1 CT log(s) (mode embed)")
	size0 := ts.TreeSize(t)

	name := "ct-lego.example.internal"
	res, chain, finalize, err := legoObtain(t, httpsURL, root, chalPort, name, 0)
	if err != nil {
		t.Fatalf("obtain: %v\n--- server\n%s", err, tail(p.out.String(), 4000))
	}
	// lego repeats a finalize only after a badNonce; what counts is that
	// the successful one answered "processing", not "valid".
	if len(finalize) == 0 || finalize[len(finalize)-1] != "200 processing" {
		t.Fatalf("finalize answers %q, want the last one \"200 processing\" (finalize must not wait for the SCTs)", finalize)
	}
	if !hasSCTList(chain[0]) {
		t.Fatal("the ACME certificate has no SCT list")
	}
	logs, err := ct.LoadVerificationLogs("", []string{keyPath})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := ct.VerifyEmbedded(chain[0], chain[1], logs); err != nil || len(v) != 1 {
		t.Fatalf("VerifyEmbedded: %v (%d SCTs)", err, len(v))
	}
	certPath := filepath.Join(dir, "ct-lego.pem")
	if err := os.WriteFile(certPath, res.Certificate, 0o644); err != nil {
		t.Fatal(err)
	}
	r := mustRun(t, dir, "ct", "verify", certPath, "--log-key", keyPath)
	if !regexp.MustCompile(`(?m)^tesseract\s+\S+\s+\S+\s+ok$`).MatchString(r.stdout) {
		t.Fatalf("ct verify output:\n%s", r)
	}
	if _, err := exec.LookPath("openssl"); err == nil {
		out, err := exec.Command("openssl", "x509", "-noout", "-text", "-in", certPath).CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("CT Precertificate SCTs")) {
			t.Fatalf("openssl x509 -text: %v\n%s", err, out)
		}
	}
	if got := ts.WaitTreeSize(t, size0+1); got < 1 {
		t.Fatalf("checkpoint size %d after issuance", got)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("quickstart exit: %v\n%s", err, p.out)
	}
}

// TestACMECTRefusingLog: `ca serve --ct-log` with a log that refuses every
// chain (HTTP 400). In embed mode the lego order fails, the server log names
// the log's failure and the precertificate's serial stays on record as
// pending and can be revoked. With --ct-mode best-effort the order
// succeeds with a certificate that carries no SCT list. (When finalize
// answered "processing", lego polls the invalid order until its
// certificate timeout, 3s here, and then reports the order's problem.)
func TestACMECTRefusingLog(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir, httpURL, chalPort := ctACMECA(t)
	root := readCertPEM(t, filepath.Join(dir, "root.pem"))
	refuse := cttest.NewFakeLog(t, cttest.Refuse)
	keyPath := writeLogKey(t, dir, "refusing-log.pem", refuse.Key.Public())
	sock := filepath.Join(dir, "admin.sock")
	serve := func(extra ...string) *serverProc {
		t.Helper()
		args := append([]string{"ca", "serve", "--config", filepath.Join(dir, "ca.yaml"), "--resolver", dnsStub(t),
			"--ct-log", refuse.URL, "--ct-log-key", keyPath}, extra...)
		p := startProc(t, dir, args...)
		waitHealth(t, p, httpURL, isSealed)
		mustRun(t, dir, "hsm", "activate", "--socket", sock,
			"--share", filepath.Join(dir, "shares/issuing/share-1.txt"), "--share", filepath.Join(dir, "shares/issuing/share-3.txt"))
		return p
	}
	https := func() string {
		b, err := os.ReadFile(filepath.Join(dir, "ca.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^  https_addr: (\S+)$`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("no https_addr in ca.yaml:\n%s", b)
		}
		return "https://" + string(m[1])
	}()

	t.Run("embed", func(t *testing.T) {
		p := serve()
		_, _, finalize, err := legoObtain(t, https, root, chalPort, "refused.example.internal", 3*time.Second)
		if err == nil {
			t.Fatal("obtain succeeded although the only log refuses")
		}
		if !strings.Contains(err.Error(), "serverInternal") {
			t.Errorf("lego error %v, want a serverInternal problem", err)
		}
		// The refusal is quick, so finalize may answer the problem itself
		// or "processing" first.
		if n := len(finalize); n == 0 || (finalize[n-1] != "500 " && finalize[n-1] != "200 processing") {
			t.Errorf("finalize answers %q, want the last one 500 or 200 processing", finalize)
		}
		if refuse.Calls() == 0 {
			t.Fatal("the log saw no submission")
		}
		out := p.out.String()
		if !strings.Contains(out, "certificate transparency policy not met") || !strings.Contains(out, "http_4xx") {
			t.Errorf("server log does not name the log's failure:\n%s", tail(out, 4000))
		}
		r := mustRun(t, dir, "cert", "list", "--pending", "--json", "--socket", sock)
		var recs []certJSON
		if err := json.Unmarshal([]byte(r.stdout), &recs); err != nil {
			t.Fatalf("cert list --json: %v\n%s", err, r)
		}
		var serial string
		for _, c := range recs {
			if len(c.Names) == 1 && c.Names[0] == "refused.example.internal" {
				serial = c.Serial
			}
		}
		if serial == "" {
			t.Fatalf("no pending record for the precertificate:\n%s", r)
		}
		mustRun(t, dir, "cert", "revoke", serial, "--reason", "superseded", "--socket", sock)
		if err := p.stop(t, syscall.SIGTERM); err != nil {
			t.Fatalf("serve exit: %v\n%s", err, p.out)
		}
	})
	t.Run("best-effort", func(t *testing.T) {
		calls := refuse.Calls()
		p := serve("--ct-mode", "best-effort")
		_, chain, _, err := legoObtain(t, https, root, chalPort, "best-effort.example.internal", 0)
		if err != nil {
			t.Fatalf("obtain: %v\n--- server\n%s", err, tail(p.out.String(), 4000))
		}
		if hasSCTList(chain[0]) {
			t.Error("best-effort certificate carries an SCT list although the log refused")
		}
		if refuse.Calls() == calls {
			t.Error("best-effort issuance did not submit to the log")
		}
		if err := p.stop(t, syscall.SIGTERM); err != nil {
			t.Fatalf("serve exit: %v\n%s", err, p.out)
		}
	})
}

// TestACMEIssueWorkersWithCT: with CT on for a profile and
// acme.issue_workers unset, the finalize pool grows to ctIssueWorkers (an
// issuance waits for the logs while holding a worker); a configured size
// and configs without CT are left alone.
func TestACMEIssueWorkersWithCT(t *testing.T) {
	withCT := func(c *Config) {
		if err := (ctOverride{mode: ca.CTEmbed, logs: []ct.LogConfig{{URL: "http://a.test", PublicKey: "k.pem"}}}).apply(c); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want int
	}{
		{"no CT", func(*Config) {}, 0},
		{"CT from flags", withCT, ctIssueWorkers},
		{"CT on another profile", func(c *Config) {
			c.CT.Logs = []ct.LogConfig{{URL: "http://a.test", PublicKey: "k.pem"}}
			c.CA.Profiles = map[string]ca.Profile{"logged": {ExtKeyUsages: []string{"serverAuth"}, CT: ca.CTConfig{Mode: ca.CTBestEffort}}}
		}, ctIssueWorkers},
		{"configured size kept", func(c *Config) { withCT(c); c.ACME.IssueWorkers = 8 }, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &Config{Module: "module", Server: ServerConfig{HTTPSAddr: "127.0.0.1:8443"}}
			cfg.ACME.Profiles = map[string]string{"server": "TLS server"} // no CA needed
			tc.edit(cfg)
			acfg, err := acmeConfig(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if acfg.IssueWorkers != tc.want {
				t.Fatalf("issue_workers %d, want %d", acfg.IssueWorkers, tc.want)
			}
		})
	}
}
