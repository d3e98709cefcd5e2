package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/hsm"
)

func init() { commands = append(commands, newQuickstartCmd) }

// The quickstart directory layout. Everything a demo CA needs lives in one
// directory, so that a second run finds it again.
const (
	qsConfig       = "ca.yaml"
	qsModule       = "module"
	qsShares       = "shares"
	qsCeremonies   = "ceremonies"
	qsRoot         = "root.pem"
	qsIntermediate = "intermediate-1.pem"
	qsRootCRL      = "root-crl.pem"
	qsTLSCert      = "tls/server.pem"
	qsTLSKey       = "tls/server.key"
	qsOperatorCert = "operator.pem"
	qsOperatorKey  = "operator.key"
	qsSocket       = "admin.sock"
	qsThreshold    = 2
	qsShareCount   = 3
)

type quickstartFlags struct {
	dir string
	serveFlags
}

func newQuickstartCmd(e *env) *cobra.Command {
	f := quickstartFlags{}
	cmd := &cobra.Command{
		Use:   "quickstart",
		Short: "Bring up a demo CA on this machine: soft module, 2-of-3 shares, ceremonies, serve",
		Long: `Runs a complete demo CA from one directory (--dir).

The first run creates a soft HSM module with two partitions, each with three
custodian shares of which two activate it: "root" (per-operation, used only in
ceremonies) and "issuing" (online). It writes the ceremony scripts to
DIR/ceremonies/ and runs them (root certificate, intermediate certificate,
root CRL) the way custodians would, writes DIR/ca.yaml, and issues the
server's TLS certificate and an operator client certificate for the admin API.

Every run then starts ` + "`hsmca ca serve`" + ` (sealed), activates the issuing
partition with two of the demo shares, prints the ACME directory URL and
certbot and lego command lines, and serves until Ctrl-C.

THE DEMO KEEPS ALL SHARES IN ONE DIRECTORY. Real custodians each keep their
own share, apart from the others and from the server.`,
		Example: `  hsmca quickstart --dir ./demo
  hsmca quickstart --dir ./demo --https-addr 127.0.0.1:9443 --http-addr 127.0.0.1:9080
  hsmca quickstart --dir ./demo --resolver 127.0.0.1:5353
  # CT for the server profile; the log must accept DIR/root.pem (made by the first run)
  hsmca quickstart --dir ./demo --ct-log http://127.0.0.1:6962/2026 --ct-log-key log-pub.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runQuickstart(ctx, e, f)
		},
	}
	cmd.Flags().StringVar(&f.dir, "dir", "./demo", "demo `DIR` (created on the first run, reused afterwards)")
	f.serveFlags.add(cmd)
	return cmd
}

func runQuickstart(ctx context.Context, e *env, f quickstartFlags) error {
	dir, err := filepath.Abs(f.dir)
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(dir, qsConfig)
	// Bad --ct-* flags are refused before a first run creates anything;
	// startServe applies them.
	cto, err := f.ctOverride()
	if err != nil {
		return err
	}
	if !fileExists(cfgPath) && cto.mode != "" && len(cto.logs) == 0 {
		// The config a first run writes has no CT logs.
		return usageError{withHint(errors.New("ct: --ct-mode needs CT logs"), "add --ct-log URL --ct-log-key FILE")}
	}
	if !fileExists(cfgPath) {
		if fileExists(filepath.Join(dir, qsModule)) {
			return withHint(fmt.Errorf("quickstart: %s holds a module but no %s: an earlier first run stopped half way", dir, qsConfig),
				"remove "+dir+" and run quickstart again")
		}
		https, http := f.httpsAddr, f.httpAddr
		if https == "" {
			https = DefaultHTTPSAddr
		}
		if http == "" {
			http = DefaultHTTPAddr
		}
		if err := quickstartInit(e, dir, https, http); err != nil {
			return err
		}
	}
	cfg, err := LoadConfig(cfgPath)
	if err != nil {
		return err
	}
	if f.httpAddr != "" && f.httpAddr != cfg.Server.HTTPAddr {
		fmt.Fprintf(e.stderr, "hsmca quickstart: warning: --http-addr %s differs from %s in %s; the CRL, OCSP and AIA URLs inside certificates still name the old address\n",
			f.httpAddr, cfg.Server.HTTPAddr, cfgPath)
	}
	r, err := startServe(e, cfg, cfgPath, f.serveFlags)
	if err != nil {
		return err
	}
	var shares []string
	for i := 1; i <= qsThreshold; i++ {
		shares = append(shares, filepath.Join(dir, qsShares, "issuing", fmt.Sprintf("share-%d.txt", i)))
	}
	if err := gatherQuorum(e, r.quorum.p, shares, nil); err != nil {
		r.shutdown()
		return err
	}
	r.srv.KickCRL()
	r.printReady(e)
	if len(f.ctLogs) > 0 {
		fmt.Fprintf(e.stdout, "hsmca quickstart: profile server embeds SCTs from %d CT log(s) (mode %s); each log must accept the root %s\n",
			len(f.ctLogs), ctModeOrDefault(f.ctMode), filepath.Join(dir, qsRoot))
	}
	printQuickstartHelp(e, dir, cfg, r)
	return r.run(ctx)
}

// quickstartInit makes the demo CA in dir (first run).
func quickstartInit(e *env, dir, httpsAddr, httpAddr string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("quickstart: %w", err)
	}
	moduleDir := filepath.Join(dir, qsModule)
	fmt.Fprintf(e.stdout, "hsmca quickstart: creating a demo CA in %s\n", dir)

	// The module with its two partitions and their demo shares.
	m, err := createModule(moduleDir, backendOptions{})
	if err != nil {
		return err
	}
	for _, p := range []struct {
		name   string
		policy hsm.Policy
	}{{"root", hsm.PolicyPerOperation}, {"issuing", hsm.PolicyOnline}} {
		shares, err := m.InitPartition(hsm.InitOptions{Partition: p.name, Shares: qsShareCount, Threshold: qsThreshold, Policy: p.policy})
		if err != nil {
			m.Close()
			return err
		}
		sdir := filepath.Join(dir, qsShares, p.name)
		if err := os.MkdirAll(sdir, 0o700); err != nil {
			m.Close()
			return err
		}
		for _, s := range shares {
			if err := writeNewFile(filepath.Join(sdir, fmt.Sprintf("share-%d.txt", s.Index)), []byte(hsm.EncodeText(s))); err != nil {
				m.Close()
				return err
			}
		}
		fmt.Fprintf(e.stdout, "hsmca quickstart: partition %s (%s): %d of %d shares activate it\n", p.name, p.policy, qsThreshold, qsShareCount)
	}
	if head, err := m.Audit().Head(); err == nil {
		fmt.Fprintf(e.stdout, "hsmca quickstart: module audit key %s\n", head.PublicKey)
	}
	if err := m.Close(); err != nil {
		return err
	}
	printShareWarning(e, filepath.Join(dir, qsShares))

	// The ceremonies, written as files first so that they can be read and
	// audited like real ones.
	cdir := filepath.Join(dir, qsCeremonies)
	if err := os.MkdirAll(cdir, 0o700); err != nil {
		return err
	}
	base := "http://" + httpAddr
	abs := func(p string) string { return filepath.Join(dir, p) }
	ceremonies := []struct{ name, body string }{
		{"root.yaml", fmt.Sprintf(`# Root ceremony: a P-384 key in the per-operation root partition and a
# self-signed root certificate. Written by hsmca quickstart (demo).
kind: root
description: hsmca quickstart demo root
key:
  partition: root
  type: ecdsa-p384
  label: root-1
certificate:
  subject:
    common_name: hsmca quickstart demo root
    organization: [hsmca demo]
    country: [DE]
  validity: 10y
outputs:
  certificate: %s
`, abs(qsRoot))},
		{"intermediate.yaml", fmt.Sprintf(`# Intermediate ceremony: a P-256 key in the online issuing partition,
# certified by the root. Written by hsmca quickstart (demo).
kind: intermediate
description: hsmca quickstart demo issuing CA
key:
  partition: issuing
  type: ecdsa-p256
  label: intermediate-1
issuer:
  partition: root
  key: root-1
  certificate: %s
certificate:
  subject:
    common_name: hsmca quickstart demo issuing CA 1
    organization: [hsmca demo]
    country: [DE]
  validity: 5y
  path_length: 0
  ext_key_usages: [server-auth, client-auth]
  policies: ["2.5.29.32.0"]
  crl_urls: ["%s/crl/root.crl"]
  issuer_urls: ["%s/aia/root.crt"]
outputs:
  certificate: %s
`, abs(qsRoot), base, base, abs(qsIntermediate))},
		{"root-crl.yaml", fmt.Sprintf(`# The root's first CRL (no revoked intermediates). Written by hsmca
# quickstart (demo).
kind: crl
description: hsmca quickstart demo root CRL 1
issuer:
  partition: root
  key: root-1
  certificate: %s
crl:
  number: 1
  validity: 365d
outputs:
  crl: %s
`, abs(qsRoot), abs(qsRootCRL))},
	}
	var q quorumFlags
	for _, part := range []string{"root", "issuing"} {
		for i := 1; i <= qsThreshold; i++ {
			q.shares = append(q.shares, filepath.Join(dir, qsShares, part, fmt.Sprintf("share-%d.txt", i)))
		}
	}
	for _, c := range ceremonies {
		path := filepath.Join(cdir, c.name)
		if err := writeNewFile(path, []byte(c.body)); err != nil {
			return err
		}
		t, err := runCeremony(e, path, moduleDir, q)
		if err != nil {
			return fmt.Errorf("quickstart: ceremony %s: %w", c.name, err)
		}
		tpath := strings.TrimSuffix(path, ".yaml") + ".transcript.txt"
		if err := writeNewFile(tpath, []byte(t.String())); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "hsmca quickstart: ceremony %s done; transcript %s\n", c.name, tpath)
	}

	// The configuration.
	conf := fmt.Sprintf(`# Written by hsmca quickstart (a demo CA). Paths are relative to this file.
# Reference: docs/serve.md.
module: %s
store: ca.db
ca:
  default_issuer: intermediate-1
  issuers:
    - name: intermediate-1
      certificate: %s
      chain: %s
      partition: issuing
      key: intermediate-1
  urls:
    crl_base: %s/crl
    aia_base: %s/aia
    ocsp: %s/ocsp
  # The built-in profiles apply: server (serverAuth, DNS/IP names, 90
  # days), client (clientAuth) and operator (clientAuth for the admin API,
  # 30 days). A "profiles:" entry of the same name replaces one.
server:
  https_addr: %s
  http_addr: %s
  admin_socket: %s
  tls_cert: %s
  tls_key: %s
  issuing_partition: issuing
  crl_interval: 1h
  crl_files:
    root: %s
  issuer_files:
    root: %s
acme:
  http01_port: 80
  tlsalpn01_port: 443
`, qsModule, qsIntermediate, qsRoot, base, base, base, httpsAddr, httpAddr, qsSocket, qsTLSCert, qsTLSKey, qsRootCRL, qsRoot)
	cfgPath := filepath.Join(dir, qsConfig)
	// The config is written last-but-one: its presence marks a finished
	// first run, so the certificates below are made first under a
	// temporary name.
	tmpCfg := cfgPath + ".new"
	os.Remove(tmpCfg)
	if err := writeNewFile(tmpCfg, []byte(conf)); err != nil {
		return err
	}
	if err := quickstartCerts(e, dir, tmpCfg, httpsAddr); err != nil {
		return err
	}
	if err := os.Rename(tmpCfg, cfgPath); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "hsmca quickstart: wrote %s\n", cfgPath)
	return nil
}

// quickstartCerts issues the server's TLS certificate and the operator's
// client certificate (keys in 0600 files) and the first CRL of the issuer.
func quickstartCerts(e *env, dir, cfgPath, httpsAddr string) error {
	cfg, err := LoadConfig(cfgPath)
	if err != nil {
		return err
	}
	m, err := openModule(cfg.Path(cfg.Module))
	if err != nil {
		return err
	}
	defer m.Close()
	st, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	c, err := openCA(cfg, m, st, caDeps{})
	if err != nil {
		return err
	}
	p, err := m.Partition("issuing")
	if err != nil {
		return err
	}
	var shares []string
	for i := 1; i <= qsThreshold; i++ {
		shares = append(shares, filepath.Join(dir, qsShares, "issuing", fmt.Sprintf("share-%d.txt", i)))
	}
	if err := gatherQuorum(e, p, shares, nil); err != nil {
		return err
	}
	defer p.Seal()

	host, _, _ := net.SplitHostPort(httpsAddr)
	dns := []string{"localhost"}
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	if ip := net.ParseIP(host); ip != nil {
		if !ip.Equal(ips[0]) && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
	} else if host != "" && host != "localhost" {
		dns = append(dns, host)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tls"), 0o700); err != nil {
		return err
	}
	if err := issueToFiles(c, "server", &x509.CertificateRequest{Subject: pkix.Name{CommonName: "localhost"}, DNSNames: dns, IPAddresses: ips},
		filepath.Join(dir, qsTLSCert), filepath.Join(dir, qsTLSKey)); err != nil {
		return fmt.Errorf("quickstart: server TLS certificate: %w", err)
	}
	if err := issueToFiles(c, "operator", &x509.CertificateRequest{Subject: pkix.Name{CommonName: "hsmca quickstart operator"}},
		filepath.Join(dir, qsOperatorCert), filepath.Join(dir, qsOperatorKey)); err != nil {
		return fmt.Errorf("quickstart: operator certificate: %w", err)
	}
	if _, err := c.GenerateCRL(context.Background(), ""); err != nil {
		return fmt.Errorf("quickstart: first CRL: %w", err)
	}
	fmt.Fprintf(e.stdout, "hsmca quickstart: server TLS certificate %s, operator certificate %s (key %s)\n",
		filepath.Join(dir, qsTLSCert), filepath.Join(dir, qsOperatorCert), filepath.Join(dir, qsOperatorKey))
	return nil
}

// issueToFiles makes a P-256 key, issues a certificate for tmpl with
// profile and writes the chain (leaf first, without the root) and the key
// (PKCS #8, 0600).
func issueToFiles(c *ca.CA, profile string, tmpl *x509.CertificateRequest, certPath, keyPath string) error {
	key, csr, err := newKeyAndCSR(tmpl)
	if err != nil {
		return err
	}
	cert, err := c.Issue(context.Background(), ca.IssueRequest{CSR: csr, Profile: profile})
	if err != nil {
		return err
	}
	return writeKeyAndChain(key, cert, certPath, keyPath)
}

// newKeyAndCSR makes a P-256 key and a CSR for tmpl signed by it.
func newKeyAndCSR(tmpl *x509.CertificateRequest) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// writeKeyAndChain writes key (PKCS #8 PEM, mode 0600) to keyPath and the
// certificate with its chain, root left out, to certPath; neither is
// overwritten.
func writeKeyAndChain(key *ecdsa.PrivateKey, cert *ca.Certificate, certPath, keyPath string) error {
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeNewFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})); err != nil {
		return err
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.DER})
	for _, der := range withoutRoot(cert.Chain) {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return writeNewFile(certPath, chain)
}

func printShareWarning(e *env, dir string) {
	fmt.Fprintf(e.stderr, `
################################################################################
#  WARNING: DEMO LAYOUT. All custodian shares of both partitions are in        #
#  %-74s  #
#  Anyone who can read that directory can activate every key of this CA.       #
#  In a real deployment each custodian keeps their own share, apart from the   #
#  others and from the server (hsmca hsm init --custodian NAME=age1...).       #
################################################################################

`, dir)
}

func printQuickstartHelp(e *env, dir string, cfg *Config, r *running) {
	root := filepath.Join(dir, qsRoot)
	fmt.Fprintf(e.stdout, `
hsmca quickstart: the demo CA is active.

  ACME directory:   %[1]s
  root certificate: %[2]s
  admin socket:     %[3]s
  operator cert:    %[4]s (key %[5]s) for the admin API over mutual TLS

Get a certificate with certbot (the name must resolve to this machine for the
CA, or start quickstart with --resolver HOST:PORT; http-01 validation connects
to port %[6]d):

  REQUESTS_CA_BUNDLE=%[2]s certbot certonly --standalone --non-interactive --agree-tos \
    --register-unsafely-without-email --server %[1]s -d app.example.internal

or with lego:

  LEGO_CA_CERTIFICATES=%[2]s lego --server %[1]s --accept-tos --email you@example.internal \
    --http --http.port :%[6]d -d app.example.internal run

Act on the running CA:

  hsmca hsm status --socket %[3]s
  hsmca cert list --socket %[3]s
  hsmca hsm seal --socket %[3]s     # custodians re-activate with: hsmca hsm activate --socket %[3]s --share FILE

Stop with Ctrl-C (the CA seals itself). The next run reuses %[7]s.
`, r.acmeURL, root, r.socket, filepath.Join(dir, qsOperatorCert), filepath.Join(dir, qsOperatorKey), httpPort(cfg), dir)
}

func httpPort(cfg *Config) int {
	if cfg.ACME.HTTP01Port != 0 {
		return cfg.ACME.HTTP01Port
	}
	return 80
}

func ctModeOrDefault(m string) string {
	if m == "" {
		return string(ca.CTEmbed)
	}
	return m
}
