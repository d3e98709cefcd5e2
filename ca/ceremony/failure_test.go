package ceremony

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Tests of what a failed ceremony leaves: no key it could have avoided
// generating, no output, a transcript and an error that name what stays.

func TestRefusedIntermediateLeavesNoKey(t *testing.T) {
	shortRoot := strings.Replace(rootYAML, "20y", "365d", 1)
	cases := []struct {
		name  string
		root  string // default rootYAML
		inter string
		setup func(*memKeys)
		want  string
	}{
		{name: "outlives its issuer", root: shortRoot, inter: interYAML, want: "outlive its issuer"},
		{name: "refused by lint", inter: strings.Replace(interYAML, `  crl_urls: ["http://127.0.0.1:8080/crl/root.crl"]`+"\n", "", 1),
			want: "e_sub_ca_crl_distribution_points_missing: "},
		{name: "does not parse", inter: strings.Replace(interYAML, "  validity: 5y\n", "  validity: 5y\n  name_constraints: {excluded_email: [\"@evil.example\"]}\n", 1),
			want: "does not parse"},
		{name: "root quorum short", inter: interYAML, setup: func(m *memKeys) { m.activateErr["root"] = errors.New("2 of 3 shares presented") },
			want: "2 of 3 shares presented"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := rootYAML
			if tc.root != "" {
				root = tc.root
			}
			inDir(t, map[string]string{"root.yaml": root, "inter.yaml": tc.inter, "good.yaml": strings.Replace(interYAML, "5y", "180d", 1)})
			keys := newMemKeys("root", "issuing")
			mustRun(t, keys, "root.yaml")
			if tc.setup != nil {
				tc.setup(keys)
			}
			_, err := run(t, keys, "inter.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			var g *GeneratedKeyError
			if errors.As(err, &g) {
				t.Fatalf("error names a generated key: %v", err)
			}
			if n := len(keys.partitions["issuing"].keys); n != 0 {
				t.Fatalf("the refused ceremony left %d key(s) in the issuing partition", n)
			}
			// The corrected file reuses the label.
			keys.activateErr = map[string]error{}
			mustRun(t, keys, "good.yaml")
		})
	}
}

func TestFailureAfterKeyGenerationNamesTheKey(t *testing.T) {
	inDir(t, map[string]string{"root.yaml": rootYAML, "inter.yaml": interYAML})
	keys := newMemKeys("root", "issuing")
	mustRun(t, keys, "root.yaml")
	keys.syncErr = errors.New("audit log: disk full")
	tr, err := run(t, keys, "inter.yaml")
	var g *GeneratedKeyError
	if !errors.As(err, &g) || g.Partition != "issuing" || g.Key.Label != "inter-1" || g.Key.ID == "" {
		t.Fatalf("got %v, want a GeneratedKeyError naming inter-1 in issuing", err)
	}
	if !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "label inter-1") {
		t.Fatalf("error does not say why and which key: %v", err)
	}
	if tr == nil {
		t.Fatal("no transcript for a ceremony that generated a key")
	}
	s := tr.String()
	for _, want := range []string{"key (generated): partition=issuing id=" + g.Key.ID, "FAILED: ", "disk full", "audit after:"} {
		if !strings.Contains(s, want) {
			t.Errorf("transcript lacks %q:\n%s", want, s)
		}
	}
	if tr.AuditAfter.Count <= tr.AuditBefore.Count || tr.Finished.IsZero() {
		t.Errorf("failed transcript lacks the audit position after or the end time: %+v", tr)
	}
}

func TestAuditSyncedBeforeOutputs(t *testing.T) {
	crl := "kind: crl\nissuer: {partition: root, key: root-1, certificate: root.pem}\ncrl: {number: 1, validity: 30d}\noutputs: {crl: crl.pem}\n"
	for _, tc := range []struct{ name, file, out string }{
		{"root", "root.yaml", "root.pem"},
		{"intermediate", "inter.yaml", "inter.pem"},
		{"crl", "crl.yaml", "crl.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inDir(t, map[string]string{"root.yaml": rootYAML, "inter.yaml": interYAML, "crl.yaml": crl})
			keys := newMemKeys("root", "issuing")
			if tc.file != "root.yaml" {
				mustRun(t, keys, "root.yaml")
			}
			// A failed sync: the module signed, nothing is written.
			keys.syncErr = errors.New("audit log: fsync failed")
			syncs, signatures := keys.syncs, keys.signatures
			if _, err := run(t, keys, tc.file); err == nil || !strings.Contains(err.Error(), "fsync failed") {
				t.Fatalf("got %v, want the sync's error", err)
			}
			if keys.syncs != syncs+1 || keys.signatures != signatures+1 {
				t.Fatalf("%d sync(s) after %d signature(s), want one each", keys.syncs-syncs, keys.signatures-signatures)
			}
			if _, err := os.Stat(tc.out); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s written although the audit sync failed", tc.out)
			}
			// A good sync happens before the output exists.
			keys.syncErr = nil
			// The failed ceremony's key stays (that is tested above).
			switch tc.file {
			case "root.yaml":
				delete(keys.partitions["root"].keys, "root-1")
			case "inter.yaml":
				delete(keys.partitions["issuing"].keys, "inter-1")
			}
			existed := true
			keys.onSync = func() {
				_, err := os.Stat(tc.out)
				existed = err == nil
			}
			mustRun(t, keys, tc.file)
			if existed {
				t.Fatalf("%s existed when the audit log was synced", tc.out)
			}
		})
	}
}

func TestOutputsAllOrNothing(t *testing.T) {
	both := strings.Replace(rootYAML, "outputs: {certificate: root.pem}", "outputs: {certificate: root.pem, public_key: root.pub.pem}", 1)
	t.Run("an output appears while the module signs", func(t *testing.T) {
		dir := inDir(t, map[string]string{"root.yaml": both})
		keys := newMemKeys("root")
		keys.onSign = func() {
			if err := os.WriteFile(filepath.Join(dir, "root.pub.pem"), []byte("someone else's"), 0o644); err != nil {
				t.Error(err)
			}
		}
		_, err := run(t, keys, "root.yaml")
		if err == nil || !strings.Contains(err.Error(), "root.pub.pem appeared while the ceremony ran") {
			t.Fatalf("got %v, want a refusal to overwrite", err)
		}
		if _, err := os.Stat("root.pem"); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("root.pem left behind by a ceremony that failed to write all its outputs")
		}
		if b, _ := os.ReadFile("root.pub.pem"); string(b) != "someone else's" {
			t.Fatal("the file that appeared was overwritten")
		}
		assertNoTempFiles(t, dir)
	})
	t.Run("success", func(t *testing.T) {
		dir := inDir(t, map[string]string{"root.yaml": both})
		mustRun(t, newMemKeys("root"), "root.yaml")
		for _, f := range []string{"root.pem", "root.pub.pem"} {
			st, err := os.Stat(f)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o644 {
				t.Errorf("%s has mode %v, want 0644", f, st.Mode().Perm())
			}
		}
		assertNoTempFiles(t, dir)
	})
	t.Run("two outputs name one file", func(t *testing.T) {
		same := strings.Replace(rootYAML, "outputs: {certificate: root.pem}", "outputs: {certificate: root.pem, public_key: ./root.pem}", 1)
		inDir(t, map[string]string{"root.yaml": same})
		keys := newMemKeys("root")
		_, err := run(t, keys, "root.yaml")
		if err == nil || !strings.Contains(err.Error(), "outputs.certificate and outputs.public_key both name ./root.pem") {
			t.Fatalf("got %v, want a refusal naming both outputs", err)
		}
		if len(keys.partitions["root"].keys) != 0 || keys.signatures != 0 {
			t.Fatal("the module was used")
		}
		if _, err := os.Stat("root.pem"); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("root.pem written")
		}
	})
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".ceremony-output-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestSectionsOfOtherKindsRefused(t *testing.T) {
	crl := "kind: crl\nissuer: {partition: root, key: k, certificate: c.pem}\ncrl: {number: 1, validity: 1d}\noutputs: {crl: x.pem}\n"
	cross := "kind: cross-sign\nissuer: {partition: root, key: k, certificate: c.pem}\ncertificate: {certificate: o.pem, validity: 1y}\noutputs: {certificate: x.pem}\n"
	key := "kind: key\nkey: {partition: issuing, type: ecdsa-p256, label: k}\noutputs: {public_key: k.pem}\n"
	cases := []struct {
		name, yaml, want string
	}{
		{"name constraints in a crl", crl + "certificate: {name_constraints: {permitted_dns: [corp]}}\n", "kind crl does not use certificate.name_constraints"},
		{"key in a crl", crl + "key: {partition: root, label: x}\n", "kind crl does not use key.partition, key.label"},
		{"certificate output in a crl", strings.Replace(crl, "{crl: x.pem}", "{crl: x.pem, certificate: y.pem}", 1), "kind crl does not use outputs.certificate"},
		{"subject in a cross-sign", strings.Replace(cross, "validity: 1y}", "validity: 1y, subject: {common_name: Other}}", 1), "kind cross-sign does not use certificate.subject"},
		{"key in a cross-sign", cross + "key: {partition: root, type: ecdsa-p256, label: x}\n", "kind cross-sign does not use key.partition, key.type, key.label"},
		{"issuer in a root", rootYAML + "issuer: {partition: other, key: k, certificate: c.pem}\n", "kind root does not use issuer.partition, issuer.key, issuer.certificate"},
		{"crl in a root", rootYAML + "crl: {number: 3}\n", "kind root does not use crl.number"},
		{"cross-sign input in an intermediate", strings.Replace(interYAML, "  validity: 5y\n", "  validity: 5y\n  certificate: other.pem\n", 1), "kind intermediate does not use certificate.certificate"},
		{"certificate in a key", key + "certificate: {validity: 1y}\n", "kind key does not use certificate.validity"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Each kind's own sections stay accepted.
	for _, y := range []string{crl, cross, key, rootYAML, interYAML} {
		if _, err := Parse([]byte(y)); err != nil {
			t.Errorf("valid file refused: %v\n%s", err, y)
		}
	}
}

func TestCACRLConfigurationDoesNotLeak(t *testing.T) {
	// A CA-only CRL may have a next update 12 months out; one that covers
	// leaf certificates at most 10 days, also after a CA-only CRL was
	// linted in the same process.
	inDir(t, map[string]string{"root.yaml": rootYAML,
		"ca.yaml":   "kind: crl\nissuer: {partition: root, key: root-1, certificate: root.pem}\ncrl: {number: 1, validity: 365d}\noutputs: {crl: c1.pem}\n",
		"leaf.yaml": "kind: crl\nissuer: {partition: root, key: root-1, certificate: root.pem}\ncrl: {number: 2, validity: 365d, covers_leaf_certificates: true}\noutputs: {crl: c2.pem}\n",
	})
	keys := newMemKeys("root")
	mustRun(t, keys, "root.yaml")
	mustRun(t, keys, "ca.yaml")
	before := keys.signatures
	_, err := run(t, keys, "leaf.yaml")
	if err == nil || !strings.Contains(err.Error(), "e_crl_next_update_invalid: ") || !strings.Contains(err.Error(), "at most 10 days") {
		t.Fatalf("got %v, want e_crl_next_update_invalid for a leaf CRL of 365 days", err)
	}
	if keys.signatures != before {
		t.Fatal("the module signed a refused CRL")
	}
	reg, err := lintRegistry()
	if err != nil {
		t.Fatal(err)
	}
	caReg, err := caCRLRegistry()
	if err != nil {
		t.Fatal(err)
	}
	if reg == caReg {
		t.Fatal("the CA-only CRL registry is the default registry")
	}
}
