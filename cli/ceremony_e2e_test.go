package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"

	"github.com/hsmca/hsmca/ca/ceremony"
	"github.com/hsmca/hsmca/hsm"
)

// ceremonyDir runs testdata/ceremony/run.sh into a fresh directory with the
// binary under test and returns the directory. $HSMCA is a relative path,
// as an operator might give it: the script changes directory before it
// runs the binary.
func ceremonyDir(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ceremony")
	script, err := filepath.Abs("../testdata/ceremony/run.sh")
	if err != nil {
		t.Fatal(err)
	}
	bin := hsmcaBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script, out)
	cmd.Dir = filepath.Dir(bin)
	cmd.Env = append(os.Environ(), "HSMCA=./"+filepath.Base(bin))
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run.sh: %v\n%s", err, b)
	}
	return out
}

// openssl runs the openssl command line tool (a client nobody here wrote).
func openssl(t *testing.T, dir string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", args...)
	cmd.Dir = dir
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return string(b)
}

// lintPEM runs zlint's RFC 5280 and Baseline Requirements lints over the
// first certificate of a PEM file and fails on any error or warning, except
// the public-web lints a private PKI excludes (see docs/lints.md).
func lintPEM(t *testing.T, path string, exclude ...string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := zx509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: lint.SourceList{lint.RFC5280, lint.CABFBaselineRequirements}})
	if err != nil {
		t.Fatal(err)
	}
	skip := map[string]bool{}
	for _, n := range exclude {
		skip[n] = true
	}
	for name, r := range zlint.LintCertificateEx(c, reg).Results {
		if skip[name] {
			continue
		}
		if r.Status == lint.Error || r.Status == lint.Fatal || r.Status == lint.Warn {
			t.Errorf("%s: zlint %s: %s %s", path, name, r.Status, r.Details)
		}
	}
}

func TestCeremonyScriptEndToEnd(t *testing.T) {
	dir := ceremonyDir(t)
	for _, f := range []string{"root.pem", "intermediate-1.pem", "intermediate-2.pem", "root-crl.pem", "transcript.txt", "ca.yaml", "tls/server.pem", "tls/server.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("run.sh did not write %s: %v", f, err)
		}
	}
	checkMode0600(t, filepath.Join(dir, "tls", "server.key"))
	for i := 1; i <= 5; i++ {
		for _, p := range []string{"root", "issuing"} {
			checkMode0600(t, filepath.Join(dir, "shares", p, "share-"+string(rune('0'+i))+".txt"))
		}
	}
	// Outside tools accept what the ceremony made.
	out := openssl(t, dir, "verify", "-CAfile", "root.pem", "root.pem", "intermediate-1.pem", "intermediate-2.pem")
	if strings.Count(out, ": OK") != 3 {
		t.Fatalf("openssl verify:\n%s", out)
	}
	out = openssl(t, dir, "crl", "-in", "root-crl.pem", "-CAfile", "root.pem", "-noout", "-text")
	if !strings.Contains(out, "X509v3 CRL Number") {
		t.Fatalf("openssl crl:\n%s", out)
	}
	for _, f := range []string{"root.pem", "intermediate-1.pem", "intermediate-2.pem"} {
		// The intermediates' AIA and CRL URLs are on loopback: a private
		// PKI's internal names.
		lintPEM(t, filepath.Join(dir, f), "w_sub_ca_aia_does_not_contain_ocsp_url", "e_sub_ca_aia_does_not_contain_issuing_ca_url")
	}
	tr, err := os.ReadFile(filepath.Join(dir, "transcript.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"file sha256:", "audit before:", "audit after:", "lint clean", "chains to", "certificate key equals module key"} {
		if !strings.Contains(string(tr), want) {
			t.Errorf("transcript lacks %q", want)
		}
	}

	// The root key cannot be used without a fresh quorum: the root
	// partition is per-operation and sealed after every step, so a CRL
	// ceremony with only two root shares fails and writes nothing.
	crl2 := "kind: crl\nissuer: {partition: root, key: root-1, certificate: root.pem}\ncrl: {number: 2, previous: root-crl.pem, validity: 30d}\noutputs: {crl: root-crl-2.pem}\n"
	if err := os.WriteFile(filepath.Join(dir, "crl2.yaml"), []byte(crl2), 0o644); err != nil {
		t.Fatal(err)
	}
	r := mustFail(t, dir, 1, []string{"2 of 3 shares presented"}, args("ceremony", "run", "crl2.yaml", "--module", "module",
		"--transcript", "crl2-failed.txt", shareArgs("shares/root/share-1.txt", "shares/root/share-2.txt"))...)
	if _, err := os.Stat(filepath.Join(dir, "root-crl-2.pem")); err == nil {
		t.Fatal("a CRL was written without a quorum")
	}
	// The failed ceremony's transcript is printed and written all the same.
	failed, err := os.ReadFile(filepath.Join(dir, "crl2-failed.txt"))
	if err != nil || !strings.Contains(string(failed), "FAILED: ") || !strings.Contains(string(failed), "2 of 3 shares presented") ||
		!strings.Contains(r.stdout, string(failed)) {
		t.Fatalf("failed ceremony's transcript file %q (%v), printed:\n%s", failed, err, r)
	}
	rootQ := shareArgs("shares/root/share-2.txt", "shares/root/share-3.txt", "shares/root/share-4.txt")
	mustRun(t, dir, args("ceremony", "run", "crl2.yaml", "--module", "module", rootQ)...)
	// Outputs are never overwritten.
	mustFail(t, dir, 1, []string{"already exists"}, args("ceremony", "run", "crl2.yaml", "--module", "module", rootQ)...)
	// Unknown fields are refused before anything happens.
	if err := os.WriteFile(filepath.Join(dir, "typo.yaml"), []byte(crl2+"colour: red\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustFail(t, dir, 2, []string{"colour"}, args("ceremony", "run", "typo.yaml", "--module", "module", rootQ)...)

	// Issue → revoke → CRL through the CLI, with the config the script wrote.
	issuingQ := shareArgs("shares/issuing/share-1.txt", "shares/issuing/share-4.txt", "shares/issuing/share-5.txt")
	openssl(t, dir, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "web.key", "-out", "web.csr",
		"-subj", "/CN=web.svc.corp", "-addext", "subjectAltName=DNS:web.svc.corp,DNS:api")
	mustRun(t, dir, args("cert", "issue", "--config", "ca.yaml", "--csr", "web.csr", "--profile", "server", "--out", "web.pem", issuingQ)...)
	out = openssl(t, dir, "verify", "-CAfile", "root.pem", "-untrusted", "intermediate-1.pem", "web.pem")
	if !strings.Contains(out, "web.pem: OK") {
		t.Fatalf("issued certificate does not verify:\n%s", out)
	}
	// The exclusions are the server profile's documented lint selection
	// (docs/lints.md): private names and hosts, a kept CN, no SKI in leaves.
	lintPEM(t, filepath.Join(dir, "web.pem"), "e_dnsname_not_valid_tld", "w_sub_cert_aia_contains_internal_names", "e_sub_cert_aia_contains_internal_names",
		"w_subject_common_name_included", "w_ext_subject_key_identifier_missing_sub_cert")
	// The store holds the server's TLS certificate (run.sh) and web.pem.
	list := decodeJSON[[]certJSON](t, mustRun(t, dir, "cert", "list", "--config", "ca.yaml", "--json"))
	var web *certJSON
	for i := range list {
		if slices.Contains(list[i].Names, "web.svc.corp") {
			web = &list[i]
		}
	}
	if len(list) != 2 || web == nil || web.Status != "valid" {
		t.Fatalf("cert list: %+v", list)
	}
	serial := web.Serial
	b, _ := os.ReadFile(filepath.Join(dir, "web.pem"))
	blk, _ := pem.Decode(b)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || strings.TrimLeft(leaf.SerialNumber.Text(16), "0") != strings.TrimLeft(serial, "0") {
		t.Fatalf("listed serial %s is not the issued certificate's", serial)
	}
	mustRun(t, dir, "cert", "revoke", serial, "--reason", "keyCompromise", "--config", "ca.yaml")
	mustRun(t, dir, args("crl", "generate", "--config", "ca.yaml", "--out", "crl-1.pem", issuingQ)...)
	mustRun(t, dir, args("crl", "generate", "--config", "ca.yaml", "--out", "crl-2.pem", issuingQ)...)
	text := openssl(t, dir, "crl", "-in", "crl-2.pem", "-CAfile", "intermediate-1.pem", "-noout", "-text")
	if !strings.Contains(strings.ToLower(text), strings.TrimLeft(serial, "0")) || !strings.Contains(text, "Key Compromise") {
		t.Fatalf("CRL lacks the serial %s with its reason:\n%s", serial, text)
	}
	n1 := decodeJSON[crlJSON](t, mustRun(t, dir, "crl", "show", "crl-1.pem", "--json")).Number
	n2 := decodeJSON[crlJSON](t, mustRun(t, dir, "crl", "show", "crl-2.pem", "--json", "--issuer-cert", "intermediate-1.pem")).Number
	if !(len(n2) > len(n1) || (len(n2) == len(n1) && n2 > n1)) {
		t.Fatalf("CRL number did not grow: %s then %s", n1, n2)
	}

	// Bad inputs each get a clear error and change nothing.
	if err := os.WriteFile(filepath.Join(dir, "junk.csr"), []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	openssl(t, dir, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "evil.key", "-out", "evil.csr",
		"-subj", "/CN=x", "-addext", "subjectAltName=DNS:localhost.evil..com")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"malformed CSR", args("cert", "issue", "--config", "ca.yaml", "--csr", "junk.csr", "--profile", "server", issuingQ), "malformed CSR"},
		{"unknown profile", args("cert", "issue", "--config", "ca.yaml", "--csr", "web.csr", "--profile", "nope", issuingQ), "unknown profile"},
		{"malformed name", args("cert", "issue", "--config", "ca.yaml", "--csr", "evil.csr", "--profile", "server", issuingQ), "evil"},
		{"unknown serial", args("cert", "revoke", "abcdef", "--config", "ca.yaml"), "unknown serial"},
		{"bad reason", args("cert", "revoke", serial, "--reason", "boredom", "--config", "ca.yaml"), "reason"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustFail(t, dir, 2, []string{tc.want}, tc.args...)
		})
	}
	list = decodeJSON[[]certJSON](t, mustRun(t, dir, "cert", "list", "--config", "ca.yaml", "--json"))
	if len(list) != 2 {
		t.Fatalf("bad inputs changed the store: %d records", len(list))
	}

	// `ca serve` accepts the config as run.sh wrote it (on other ports)
	// and publishes the root's CRL and certificate at the paths the
	// intermediates name.
	serveCeremonyCA(t, dir)
}

// serveCeremonyCA starts `hsmca ca serve` with the ceremony's ca.yaml on
// free loopback ports, checks /healthz and fetches the root CRL and root
// certificate from the paths of the intermediates' CRL distribution point
// and AIA caIssuers URLs, then stops the server.
func serveCeremonyCA(t *testing.T, dir string) {
	t.Helper()
	httpAddr := freeAddr(t)
	p := startProc(t, dir, "ca", "serve", "--config", "ca.yaml", "--https-addr", freeAddr(t), "--http-addr", httpAddr)
	httpURL := "http://" + httpAddr
	waitHealth(t, p, httpURL, isSealed)

	root := readCertPEM(t, filepath.Join(dir, "root.pem"))
	c := &http.Client{Timeout: 30 * time.Second}
	get := func(rawURL string) []byte {
		t.Helper()
		u, err := url.Parse(rawURL)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Get(httpURL + u.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s (named %s): %s\n%s", u.Path, rawURL, resp.Status, b)
		}
		return b
	}
	derOf := func(b []byte) []byte {
		if blk, _ := pem.Decode(b); blk != nil {
			return blk.Bytes
		}
		return b
	}
	for _, f := range []string{"intermediate-1.pem", "intermediate-2.pem"} {
		inter := readCertPEM(t, filepath.Join(dir, f))
		if len(inter.CRLDistributionPoints) != 1 || len(inter.IssuingCertificateURL) != 1 {
			t.Fatalf("%s: CRL DP %v, AIA %v", f, inter.CRLDistributionPoints, inter.IssuingCertificateURL)
		}
		crl, err := x509.ParseRevocationList(derOf(get(inter.CRLDistributionPoints[0])))
		if err != nil {
			t.Fatalf("%s's CRL URL: %v", f, err)
		}
		if err := crl.CheckSignatureFrom(root); err != nil {
			t.Fatalf("%s's CRL URL serves a CRL the root did not sign: %v", f, err)
		}
		issuer, err := x509.ParseCertificate(derOf(get(inter.IssuingCertificateURL[0])))
		if err != nil {
			t.Fatalf("%s's AIA URL: %v", f, err)
		}
		if !issuer.Equal(root) || inter.CheckSignatureFrom(issuer) != nil {
			t.Fatalf("%s's AIA URL serves %s, not its issuer", f, issuer.Subject)
		}
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("ca serve did not stop cleanly: %v\n%s", err, p.out)
	}
}

// TestCeremonyRefusalsAndHints: a root key in a partition that is not
// per-operation is refused before anything is generated, and a failed
// ceremony that left a key says how to remove it with a command that works.
func TestCeremonyRefusalsAndHints(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, dir, "hsm", "init", "--module", "module", "--partition", "online", "--policy", "online", "--shares", "3", "--threshold", "2", "--out", "shares")
	q := shareArgs("shares/share-1.txt", "shares/share-2.txt")
	root := "kind: root\nkey: {partition: online, type: ecdsa-p256, label: root-1}\n" +
		"certificate: {subject: {common_name: Online Root}, validity: 10y}\noutputs: {certificate: root.pem}\n"
	key := "kind: key\nkey: {partition: online, type: ecdsa-p256, label: k-1}\noutputs: {public_key: k-1.pub.pem}\n"
	for name, body := range map[string]string{"root.yaml": root, "key.yaml": key} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	listKeys := func() []keyJSON {
		return decodeJSON[[]keyJSON](t, mustRun(t, dir, "hsm", "keys", "list", "--module", "module", "--partition", "online", "--json"))
	}

	mustFail(t, dir, ExitUsage, []string{"per-operation partition", "partition online is online", "hint:", "--policy per-operation"},
		args("ceremony", "run", "root.yaml", "--module", "module", q)...)
	if n := len(listKeys()); n != 0 {
		t.Fatalf("the refused root ceremony generated %d key(s)", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "root.pem")); err == nil {
		t.Fatal("root.pem written")
	}

	// The hint for a key left by a failed ceremony is a command that
	// removes it, given the partition's quorum.
	mustRun(t, dir, args("ceremony", "run", "key.yaml", "--module", "module", q)...)
	keys := listKeys()
	if len(keys) != 1 {
		t.Fatalf("keys: %+v", keys)
	}
	err := ceremonyError(&ceremony.GeneratedKeyError{Partition: "online", Key: ceremony.KeyRef{ID: keys[0].ID, Label: "k-1"}, Err: errors.New("ceremony: failed")}, "module")
	var h hintError
	if !errors.As(err, &h) {
		t.Fatalf("no hint for a key left behind: %v", err)
	}
	_, rest, _ := strings.Cut(h.hint, "`")
	command, _, ok := strings.Cut(rest, "`")
	if !ok || !strings.HasPrefix(command, "hsmca hsm keys destroy ") {
		t.Fatalf("hint names no destroy command: %q", h.hint)
	}
	mustRun(t, dir, args(strings.Fields(command)[1:], q)...)
	if n := len(listKeys()); n != 0 {
		t.Fatalf("the hint's command left %d key(s)", n)
	}
}

func TestCeremonyPolicyNamesMatchModule(t *testing.T) {
	if ceremony.PolicyPerOperation != string(hsm.PolicyPerOperation) || ceremony.PolicyOnline != string(hsm.PolicyOnline) {
		t.Fatal("ca/ceremony's policy names differ from package hsm's")
	}
}
