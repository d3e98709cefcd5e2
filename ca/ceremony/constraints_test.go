package ceremony

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"
)

// Tests of what a ceremony certifies: path lengths against the issuer's,
// cross-sign defaults, name constraints, the key it certifies.

// withPathLen adds path_length n to a ceremony file's certificate section.
func withPathLen(yaml, validity, n string) string {
	if n == "" {
		return yaml
	}
	return strings.Replace(yaml, "  validity: "+validity+"\n", "  validity: "+validity+"\n  path_length: "+n+"\n", 1)
}

// verifyLeaf issues a leaf with the module key part/label under issuer and
// verifies the chain leaf → inters → root with crypto/x509.
func verifyLeaf(t *testing.T, keys *memKeys, part, label string, issuer *x509.Certificate, inters []*x509.Certificate, root *x509.Certificate) error {
	t.Helper()
	k := keys.partitions[part].keys[label]
	lk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "leaf"}, DNSNames: []string{"leaf.corp"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, lk.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	ip := x509.NewCertPool()
	for _, c := range inters {
		ip.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: ip, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func TestIntermediatePathLengthAgainstIssuer(t *testing.T) {
	cases := []struct {
		name          string
		root, inter   string // path_length; "" for none
		want          string // error; "" for success
		wantInterPath int
	}{
		{name: "issuer with path length 0", root: "0", want: "has path length 0, so it may not certify another CA"},
		{name: "above the issuer's", root: "1", inter: "5", want: "certificate.path_length 5 is not below the issuer's path length 1"},
		{name: "equal to the issuer's", root: "1", inter: "1", want: "certificate.path_length 1 is not below the issuer's path length 1"},
		{name: "below the issuer's", root: "1", inter: "0", wantInterPath: 0},
		{name: "default under a limited issuer", root: "2", wantInterPath: 0},
		{name: "under an unlimited issuer", inter: "3", wantInterPath: 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inDir(t, map[string]string{"root.yaml": withPathLen(rootYAML, "20y", tc.root), "inter.yaml": withPathLen(interYAML, "5y", tc.inter)})
			keys := newMemKeys("root", "issuing")
			mustRun(t, keys, "root.yaml")
			before := keys.signatures
			_, err := run(t, keys, "inter.yaml")
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want an error containing %q", err, tc.want)
				}
				if keys.signatures != before || len(keys.partitions["issuing"].keys) != 0 {
					t.Fatalf("refused before signing? %d signature(s), %d key(s) generated", keys.signatures-before, len(keys.partitions["issuing"].keys))
				}
				if _, err := os.Stat("inter.pem"); !errors.Is(err, os.ErrNotExist) {
					t.Fatal("output written for a refused intermediate")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			root, inter := readCert(t, "root.pem"), readCert(t, "inter.pem")
			if inter.MaxPathLen != tc.wantInterPath {
				t.Fatalf("intermediate path length %d, want %d", inter.MaxPathLen, tc.wantInterPath)
			}
			if err := verifyLeaf(t, keys, "issuing", "inter-1", inter, []*x509.Certificate{inter}, root); err != nil {
				t.Fatalf("leaf under the intermediate does not verify: %v", err)
			}
		})
	}
}

// crossFiles are a second root (root-2) with an intermediate of its own and
// a cross-sign of root-2 by root-1 whose path length is crossPath ("" for
// the default).
func crossFiles(root1Path, crossPath string) map[string]string {
	cross := `kind: cross-sign
issuer: {partition: root, key: root-1, certificate: root.pem}
certificate:
  certificate: root2.pem
  validity: 5y
  policies: ["2.5.29.32.0"]
  crl_urls: ["http://127.0.0.1:8080/crl/root.crl"]
  issuer_urls: ["http://127.0.0.1:8080/aia/root.crt"]
outputs: {certificate: cross.pem}
`
	return map[string]string{
		"root.yaml":   withPathLen(rootYAML, "20y", root1Path),
		"root2.yaml":  strings.ReplaceAll(strings.ReplaceAll(rootYAML, "root-1", "root-2"), "root.pem", "root2.pem"),
		"inter2.yaml": strings.ReplaceAll(strings.ReplaceAll(interYAML, "root-1", "root-2"), "root.pem", "root2.pem"),
		"cross.yaml":  withPathLen(cross, "5y", crossPath),
	}
}

func TestCrossSignKeepsSubjectPathLength(t *testing.T) {
	inDir(t, crossFiles("", ""))
	keys := newMemKeys("root", "issuing")
	for _, f := range []string{"root.yaml", "root2.yaml", "inter2.yaml", "cross.yaml"} {
		mustRun(t, keys, f)
	}
	root, inter2, cross := readCert(t, "root.pem"), readCert(t, "inter.pem"), readCert(t, "cross.pem")
	if pathLen(cross) != -1 {
		t.Fatalf("cross certificate of an unlimited root has path length %d, want none", pathLen(cross))
	}
	// A leaf of root-2's intermediate chains to root-1 through the cross
	// certificate.
	if err := verifyLeaf(t, keys, "issuing", "inter-1", inter2, []*x509.Certificate{inter2, cross}, root); err != nil {
		t.Fatalf("leaf under root-2's intermediate does not chain to root-1 via the cross certificate: %v", err)
	}
}

func TestCrossSignPathLengthAgainstIssuer(t *testing.T) {
	// root-1 allows one CA below it; root-2 has no limit, so a cross
	// certificate keeping root-2's (none) is refused, and one with an
	// explicit path length 0 is made.
	inDir(t, crossFiles("1", ""))
	keys := newMemKeys("root", "issuing")
	for _, f := range []string{"root.yaml", "root2.yaml"} {
		mustRun(t, keys, f)
	}
	before := keys.signatures
	_, err := run(t, keys, "cross.yaml")
	if err == nil || !strings.Contains(err.Error(), "certificate.path_length none (unlimited) is not below the issuer's path length 1") {
		t.Fatalf("got %v, want a refusal naming both path lengths", err)
	}
	if keys.signatures != before {
		t.Fatal("the module signed a refused cross certificate")
	}
	explicit := crossFiles("1", "0")["cross.yaml"]
	if err := os.WriteFile("cross0.yaml", []byte(explicit), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, keys, "cross0.yaml")
	if c := readCert(t, "cross.pem"); pathLen(c) != 0 {
		t.Fatalf("cross certificate path length %d, want 0", pathLen(c))
	}
}

func TestExistingKeyTypeMustMatch(t *testing.T) {
	existing := `kind: root
key: {partition: root, type: TYPE, label: pre, existing: true}
certificate:
  subject: {common_name: Test Root, organization: [Test], country: [DE]}
  validity: 20y
outputs: {certificate: root.pem}
`
	cases := []struct {
		name, keyType, want string
	}{
		{"other type", "rsa-4096", "key.type is rsa-4096, but the existing key pre in partition root is ecdsa-p256"},
		{"same type", "ecdsa-p256", ""},
		{"no type", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			y := strings.Replace(existing, "TYPE", tc.keyType, 1)
			if tc.keyType == "" {
				y = strings.Replace(existing, "type: TYPE, ", "", 1)
			}
			inDir(t, map[string]string{"root.yaml": y})
			keys := newMemKeys("root")
			k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			keys.partitions["root"].keys["pre"] = k
			_, err = run(t, keys, "root.yaml")
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := keyTypeOf(readCert(t, "root.pem").PublicKey); got != "ecdsa-p256" {
					t.Fatalf("root key %s", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if keys.signatures != 0 {
				t.Fatal("the module signed")
			}
			if _, err := os.Stat("root.pem"); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("root.pem written for a key of the wrong type")
			}
		})
	}
}

func TestRootKeyNeedsPerOperationPartition(t *testing.T) {
	existing := strings.Replace(rootYAML, "label: root-1}", "label: root-1, existing: true}", 1)
	for name, y := range map[string]string{"new key": rootYAML, "existing key": existing} {
		t.Run(name, func(t *testing.T) {
			inDir(t, map[string]string{"root.yaml": y})
			keys := newMemKeys("root")
			keys.partitions["root"].policy = PolicyOnline
			k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if name == "existing key" {
				keys.partitions["root"].keys["root-1"] = k
			}
			before := len(keys.partitions["root"].keys)
			_, err = run(t, keys, "root.yaml")
			if !errors.Is(err, ErrNotPerOperation) || !strings.Contains(err.Error(), "partition root is online") {
				t.Fatalf("got %v, want ErrNotPerOperation naming the partition's policy", err)
			}
			if keys.signatures != 0 || len(keys.partitions["root"].keys) != before {
				t.Fatal("a key was generated or used in an online root partition")
			}
		})
	}
}

func TestPrivateNameConstraints(t *testing.T) {
	nc := func(extra string) string {
		return strings.Replace(interYAML, "  validity: 5y\n",
			"  validity: 5y\n  name_constraints: {"+extra+"permitted_dns: [svc.corp], excluded_email: [evil.example], permitted_ip: [\"10.0.0.0/8\", \"fd00::/8\"]}\n", 1)
	}
	t.Run("critical by default", func(t *testing.T) {
		inDir(t, map[string]string{"root.yaml": rootYAML, "inter.yaml": nc("")})
		keys := newMemKeys("root", "issuing")
		mustRun(t, keys, "root.yaml")
		mustRun(t, keys, "inter.yaml")
		c := readCert(t, "inter.pem")
		found := false
		for _, e := range c.Extensions {
			if e.Id.String() == "2.5.29.30" {
				found = true
				if !e.Critical {
					t.Fatal("name constraints are not critical")
				}
			}
		}
		if !found || len(c.PermittedIPRanges) != 2 || c.PermittedDNSDomains[0] != "svc.corp" {
			t.Fatalf("name constraints missing: %v %v", c.PermittedDNSDomains, c.PermittedIPRanges)
		}
	})
	t.Run("explicitly not critical", func(t *testing.T) {
		inDir(t, map[string]string{"root.yaml": rootYAML, "inter.yaml": nc("critical: false, ")})
		keys := newMemKeys("root", "issuing")
		mustRun(t, keys, "root.yaml")
		_, err := run(t, keys, "inter.yaml")
		if err == nil || !strings.Contains(err.Error(), "e_ext_name_constraints_not_critical: ") {
			t.Fatalf("got %v, want a lint refusal naming e_ext_name_constraints_not_critical", err)
		}
		if strings.Contains(err.Error(), "()") || strings.HasSuffix(err.Error(), ": ") {
			t.Fatalf("lint refusal without an explanation: %v", err)
		}
		if len(keys.partitions["issuing"].keys) != 0 {
			t.Fatal("a key was generated for a refused intermediate")
		}
	})
}
