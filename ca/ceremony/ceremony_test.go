package ceremony

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// memKeys is an in-memory module that enforces the contract the CLI's
// adapter provides: keys sign only while their partition is active, and an
// activation is for a fixed number of signatures (per-operation). Its
// hooks produce the faults a real module cannot on demand: a quorum that
// is not reached, an audit log that fails to sync, a file that appears
// while the module signs.
type memKeys struct {
	mu         sync.Mutex
	partitions map[string]*memPartition
	audit      uint64
	signatures int // module signatures made, for "nothing was signed" checks
	syncs      int // SyncAudit calls

	activateErr map[string]error // partition → error of Activate
	syncErr     error            // error of every SyncAudit
	onSign      func()           // runs inside every module signature
	onSync      func()           // runs inside every SyncAudit
}

type memPartition struct {
	policy string
	active bool
	budget int
	keys   map[string]*ecdsa.PrivateKey
}

// newMemKeys makes a module with per-operation partitions of the given
// names (memKeys enforces the per-operation budget on every partition).
func newMemKeys(parts ...string) *memKeys {
	m := &memKeys{partitions: map[string]*memPartition{}, activateErr: map[string]error{}}
	for _, p := range parts {
		m.partitions[p] = &memPartition{policy: PolicyPerOperation, keys: map[string]*ecdsa.PrivateKey{}}
	}
	return m
}

func (m *memKeys) PartitionPolicy(partition string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, err := m.part(partition)
	if err != nil {
		return "", err
	}
	return p.policy, nil
}

func (m *memKeys) part(name string) (*memPartition, error) {
	p, ok := m.partitions[name]
	if !ok {
		return nil, fmt.Errorf("no partition %s", name)
	}
	return p, nil
}

func (m *memKeys) Activate(partition string, signatures int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, err := m.part(partition)
	if err != nil {
		return err
	}
	if err := m.activateErr[partition]; err != nil {
		return err
	}
	p.active, p.budget = true, signatures
	m.audit++
	return nil
}

func (m *memKeys) GenerateKey(partition, keyType, label string) (KeyRef, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, err := m.part(partition)
	if err != nil {
		return KeyRef{}, err
	}
	if !p.active {
		return KeyRef{}, errors.New("sealed")
	}
	if _, ok := p.keys[label]; ok {
		return KeyRef{}, errors.New("label exists")
	}
	curve := elliptic.P256()
	if keyType == "ecdsa-p384" {
		curve = elliptic.P384()
	}
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		return KeyRef{}, err
	}
	p.keys[label] = k
	m.audit++
	return KeyRef{ID: hex.EncodeToString([]byte(label)), Label: label, Type: keyType, Public: k.Public()}, nil
}

func (m *memKeys) Key(partition, key string) (KeyRef, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, err := m.part(partition)
	if err != nil {
		return KeyRef{}, err
	}
	for label, k := range p.keys {
		if label == key || hex.EncodeToString([]byte(label)) == key {
			return KeyRef{ID: hex.EncodeToString([]byte(label)), Label: label, Public: k.Public()}, nil
		}
	}
	return KeyRef{}, errors.New("key not found")
}

func (m *memKeys) Signer(partition, key string) (crypto.Signer, error) {
	ref, err := m.Key(partition, key)
	if err != nil {
		return nil, err
	}
	return &memSigner{m: m, partition: partition, label: ref.Label}, nil
}

func (m *memKeys) Seal(partition string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, err := m.part(partition)
	if err != nil {
		return err
	}
	p.active, p.budget = false, 0
	return nil
}

func (m *memKeys) AuditHead() (uint64, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.audit, fmt.Sprintf("%064x", m.audit), nil
}

type memSigner struct {
	m         *memKeys
	partition string
	label     string
}

func (s *memSigner) Public() crypto.PublicKey {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	return s.m.partitions[s.partition].keys[s.label].Public()
}

func (s *memSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	p := s.m.partitions[s.partition]
	if !p.active || p.budget <= 0 {
		return nil, errors.New("partition sealed")
	}
	p.budget--
	if p.budget == 0 {
		p.active = false
	}
	s.m.signatures++
	s.m.audit++
	if s.m.onSign != nil {
		s.m.onSign()
	}
	return p.keys[s.label].Sign(r, digest, opts)
}

// SyncAudit implements ca.AuditSyncer as the module's signers do.
func (s *memSigner) SyncAudit() error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.m.syncs++
	if s.m.onSync != nil {
		s.m.onSync()
	}
	return s.m.syncErr
}

// inDir runs the test in a fresh working directory (ceremony outputs are
// relative to it) and writes the given files there.
func inDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	t.Chdir(dir)
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func run(t *testing.T, keys *memKeys, name string) (*Transcript, error) {
	t.Helper()
	f, err := Load(name)
	if err != nil {
		return nil, err
	}
	return Run(context.Background(), f, Options{Keys: keys})
}

func mustRun(t *testing.T, keys *memKeys, name string) *Transcript {
	t.Helper()
	tr, err := run(t, keys, name)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return tr
}

const rootYAML = `kind: root
key: {partition: root, type: ecdsa-p384, label: root-1}
certificate:
  subject: {common_name: Test Root, organization: [Test], country: [DE]}
  validity: 20y
outputs: {certificate: root.pem}
`

const interYAML = `kind: intermediate
key: {partition: issuing, type: ecdsa-p256, label: inter-1}
issuer: {partition: root, key: root-1, certificate: root.pem}
certificate:
  subject: {common_name: Test Issuing CA, organization: [Test], country: [DE]}
  validity: 5y
  policies: ["2.5.29.32.0"]
  crl_urls: ["http://127.0.0.1:8080/crl/root.crl"]
  issuer_urls: ["http://127.0.0.1:8080/aia/root.crt"]
outputs: {certificate: inter.pem}
`

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := readCertificate(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRootIntermediateCRLCrossSign(t *testing.T) {
	dir := inDir(t, map[string]string{
		"root.yaml":  rootYAML,
		"inter.yaml": interYAML,
		"crl.yaml": `kind: crl
issuer: {partition: root, key: root-1, certificate: root.pem}
crl:
  number: 1
  validity: 365d
  revoked:
    - {serial: "01:02:03", reason: keyCompromise, revoked_at: "2026-01-02T03:04:05Z"}
outputs: {crl: crl-1.pem}
`,
		"crl2.yaml": `kind: crl
issuer: {partition: root, key: root-1, certificate: root.pem}
crl: {number: 2, previous: crl-1.pem, validity: 30d}
outputs: {crl: crl-2.pem}
`,
		"root2.yaml": strings.ReplaceAll(strings.ReplaceAll(rootYAML, "root-1", "root-2"), "root.pem", "root2.pem"),
		"cross.yaml": `kind: cross-sign
issuer: {partition: root, key: root-1, certificate: root.pem}
certificate:
  certificate: root2.pem
  validity: 5y
  policies: ["2.5.29.32.0"]
  crl_urls: ["http://127.0.0.1:8080/crl/root.crl"]
  issuer_urls: ["http://127.0.0.1:8080/aia/root.crt"]
outputs: {certificate: cross.pem}
`,
		"key.yaml": `kind: key
key: {partition: issuing, type: ecdsa-p256, label: spare}
outputs: {public_key: spare.pub.pem}
`,
	})
	keys := newMemKeys("root", "issuing")

	tr := mustRun(t, keys, "root.yaml")
	root := readCert(t, "root.pem")
	if !root.IsCA || root.Subject.CommonName != "Test Root" || root.CheckSignatureFrom(root) != nil {
		t.Fatalf("root certificate wrong: CA=%v subject=%s", root.IsCA, root.Subject)
	}
	if keys.partitions["root"].active {
		t.Fatal("root partition still active after the root ceremony")
	}
	if tr.FileSHA256 == "" || len(tr.Keys) != 1 || tr.Keys[0].Role != "generated" || len(tr.Outputs) != 1 {
		t.Fatalf("transcript incomplete: %+v", tr)
	}
	if tr.AuditAfter.Count <= tr.AuditBefore.Count {
		t.Fatalf("audit position did not move: %+v -> %+v", tr.AuditBefore, tr.AuditAfter)
	}
	s := tr.String()
	for _, want := range []string{"file sha256:", "audit before:", "audit after:", "key (generated)", "output (certificate): root.pem", "verified: lint clean"} {
		if !strings.Contains(s, want) {
			t.Errorf("transcript lacks %q:\n%s", want, s)
		}
	}

	mustRun(t, keys, "inter.yaml")
	inter := readCert(t, "inter.pem")
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Fatalf("intermediate not signed by root: %v", err)
	}
	if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		t.Fatalf("intermediate basic constraints wrong: CA=%v pathlen=%d", inter.IsCA, inter.MaxPathLen)
	}
	if got := inter.PublicKey.(*ecdsa.PublicKey); !got.Equal(keys.partitions["issuing"].keys["inter-1"].Public()) {
		t.Fatal("intermediate key is not the module key")
	}
	if keys.partitions["root"].active || keys.partitions["issuing"].active {
		t.Fatal("partitions left active after the intermediate ceremony")
	}

	mustRun(t, keys, "crl.yaml")
	crl, err := readCRL("crl-1.pem")
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(root); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	if crl.Number.Int64() != 1 || len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].ReasonCode != 1 {
		t.Fatalf("CRL contents wrong: number %v entries %+v", crl.Number, crl.RevokedCertificateEntries)
	}
	mustRun(t, keys, "crl2.yaml")

	mustRun(t, keys, "root2.yaml")
	mustRun(t, keys, "cross.yaml")
	cross := readCert(t, "cross.pem")
	root2 := readCert(t, "root2.pem")
	if err := cross.CheckSignatureFrom(root); err != nil || string(cross.RawSubject) != string(root2.RawSubject) {
		t.Fatalf("cross-signed certificate wrong: %v", err)
	}

	mustRun(t, keys, "key.yaml")
	b, err := os.ReadFile(filepath.Join(dir, "spare.pub.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		t.Fatal("key ceremony wrote no PUBLIC KEY")
	}
}

func TestRefusals(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want string
	}{
		{"unknown field", rootYAML + "colour: blue\n", "field colour not found"},
		{"second YAML document", rootYAML + "---\ncertificate: {validity: 100y}\n", "more than one YAML document"},
		{"unknown kind", "kind: party\noutputs: {}\n", "unknown kind"},
		{"root over 25 years", strings.Replace(rootYAML, "20y", "26y", 1), "exceeds the limit of 25 years"},
		{"intermediate over 8 years", strings.Replace(interYAML, "5y", "9y", 1), "exceeds the limit of 8 years"},
		{"bad key type", strings.Replace(rootYAML, "ecdsa-p384", "dsa-1024", 1), "unknown key.type"},
		{"missing output", strings.Replace(rootYAML, "outputs: {certificate: root.pem}", "outputs: {}", 1), "outputs.certificate is required"},
		{"bad serial in CRL", "kind: crl\nissuer: {partition: root, key: k, certificate: c.pem}\ncrl: {number: 1, validity: 1d, revoked: [{serial: xyz}]}\noutputs: {crl: x.pem}\n", "crl.revoked[0]"},
		{"CRL number zero", "kind: crl\nissuer: {partition: root, key: k, certificate: c.pem}\ncrl: {number: 0, validity: 1d}\noutputs: {crl: x.pem}\n", "crl.number"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestOutputExistsChangesNothing(t *testing.T) {
	inDir(t, map[string]string{"root.yaml": rootYAML, "root.pem": "already here"})
	keys := newMemKeys("root")
	_, err := run(t, keys, "root.yaml")
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("got %v, want refusal to overwrite", err)
	}
	if len(keys.partitions["root"].keys) != 0 || keys.signatures != 0 {
		t.Fatal("a refused ceremony generated a key or signed")
	}
	if b, _ := os.ReadFile("root.pem"); string(b) != "already here" {
		t.Fatal("existing output was modified")
	}
}

func TestLintRefusesBeforeSigning(t *testing.T) {
	// An intermediate without a CRL distribution point breaks the Baseline
	// Requirements' subordinate CA profile: lint refuses it and the root
	// key never signs.
	bad := strings.Replace(interYAML, `  crl_urls: ["http://127.0.0.1:8080/crl/root.crl"]`+"\n", "", 1)
	inDir(t, map[string]string{"root.yaml": rootYAML, "inter.yaml": bad})
	keys := newMemKeys("root", "issuing")
	mustRun(t, keys, "root.yaml")
	before := keys.signatures
	_, err := run(t, keys, "inter.yaml")
	if err == nil || !strings.Contains(err.Error(), "refused by lint before any module signature") {
		t.Fatalf("got %v, want a lint refusal", err)
	}
	// The refusal names the lint and says what it checks.
	if want := "e_sub_ca_crl_distribution_points_missing: Subordinate CA Certificate: cRLDistributionPoints MUST be present"; !strings.Contains(err.Error(), want) {
		t.Fatalf("lint refusal %q lacks %q", err, want)
	}
	if keys.signatures != before {
		t.Fatal("the module signed a certificate that failed lint")
	}
	if _, err := os.Stat("inter.pem"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("output written despite lint refusal")
	}
}

func TestCRLNumberMustGrow(t *testing.T) {
	crl := `kind: crl
issuer: {partition: root, key: root-1, certificate: root.pem}
crl: {number: 5, validity: 30d}
outputs: {crl: crl-5.pem}
`
	again := `kind: crl
issuer: {partition: root, key: root-1, certificate: root.pem}
crl: {number: 5, previous: crl-5.pem, validity: 30d}
outputs: {crl: crl-5b.pem}
`
	inDir(t, map[string]string{"root.yaml": rootYAML, "crl.yaml": crl, "again.yaml": again})
	keys := newMemKeys("root")
	mustRun(t, keys, "root.yaml")
	mustRun(t, keys, "crl.yaml")
	before := keys.signatures
	_, err := run(t, keys, "again.yaml")
	if err == nil || !strings.Contains(err.Error(), "does not grow") {
		t.Fatalf("got %v, want refusal of a CRL number that does not grow", err)
	}
	if keys.signatures != before {
		t.Fatal("signed a CRL whose number does not grow")
	}
}

func TestIntermediateMayNotOutliveRoot(t *testing.T) {
	shortRoot := strings.Replace(rootYAML, "20y", "365d", 1)
	inDir(t, map[string]string{"root.yaml": shortRoot, "inter.yaml": interYAML})
	keys := newMemKeys("root", "issuing")
	mustRun(t, keys, "root.yaml")
	before := keys.signatures
	if _, err := run(t, keys, "inter.yaml"); err == nil || !strings.Contains(err.Error(), "outlive its issuer") {
		t.Fatalf("got %v, want refusal", err)
	}
	if keys.signatures != before {
		t.Fatal("signed an intermediate that outlives its root")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(rootYAML))
	f.Add([]byte(interYAML))
	f.Add([]byte("kind: crl\ncrl: {number: 1}\n"))
	f.Add([]byte("{{{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse(b)
		if err == nil && file.Spec.Validate() != nil {
			t.Fatal("Parse accepted a spec that does not validate")
		}
	})
}
