package ca_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
)

func TestDecodeExampleConfig(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "testdata", "ca", "ca.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := ca.DecodeConfig(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Issuers) != 2 || cfg.DefaultIssuer != "issuing-1" || cfg.Issuers[0].Key != "intermediate-1" {
		t.Errorf("issuers: %+v", cfg.Issuers)
	}
	profs := cfg.EffectiveProfiles()
	if profs["short-lived"].Validity.D() != 24*time.Hour || profs["server"].Validity.D() != 30*24*time.Hour {
		t.Errorf("validity: %v %v", profs["short-lived"].Validity.D(), profs["server"].Validity.D())
	}
	if _, ok := profs["operator"]; !ok {
		t.Error("default operator profile missing")
	}
	over, err := ca.DecodeConfig(strings.NewReader("issuers: [{name: i1, certificate: i1.pem}]\nprofiles:\n  client: {validity: 7d}\n"))
	if err != nil {
		t.Fatal(err)
	}
	cl := over.EffectiveProfiles()["client"]
	if cl.Validity.D() != 7*24*time.Hour || len(cl.ExtKeyUsages) != 1 || cl.ExtKeyUsages[0] != "clientAuth" || cl.KeepCN {
		t.Errorf("client overlaid on the default: %+v", cl)
	}
	if profs["public-ct"].CT.Mode != ca.CTBestEffort || profs["client"].CT.Mode != ca.CTOff {
		t.Error("CT modes not decoded or defaulted")
	}
	if got := cfg.URLs.CRLURL("issuing-1"); got != "http://pki.svc.corp/crl/issuing-1.crl" {
		t.Errorf("CRL URL %s", got)
	}
}

func TestDecodeConfigErrors(t *testing.T) {
	base := "issuers:\n  - name: i1\n    certificate: i1.pem\n"
	tests := []struct{ name, yaml, want string }{
		{"unknown field", base + "bogus: 1\n", "field bogus not found"},
		{"unknown profile field", base + "profiles:\n  server:\n    validty: 1d\n", "field validty not found"},
		{"empty", "", "config is empty"},
		{"no issuers", "profiles: {}\n", "at least one issuer"},
		{"duplicate issuer", base + "  - name: i1\n    certificate: x.pem\n", "duplicate issuer"},
		{"bad issuer name", "issuers:\n  - name: a/b\n    certificate: x.pem\n", "name \"a/b\""},
		{"unknown default issuer", base + "default_issuer: i2\n", "default_issuer"},
		{"bad duration", base + "profiles:\n  p:\n    validity: 3 weeks\n", "bad duration"},
		{"bad key type", base + "profiles:\n  p:\n    allowed_key_types: [rsa-1024]\n", "unknown key type \"rsa-1024\""},
		{"bad EKU", base + "profiles:\n  p:\n    ext_key_usages: [anyThing]\n", "unknown extended key usage"},
		{"bad CT mode", base + "profiles:\n  p:\n    ct: {mode: always}\n", "ct.mode"},
		{"bad CIDR", base + "policy:\n  allowed_ip_ranges: [10.0.0.0]\n", "bad IP range"},
		{"bad URL", base + "urls:\n  crl_base: ftp://x\n", "urls.crl_base"},
		{"unknown lint", base + "profiles:\n  p:\n    lints: {exclude: [no_such_lint]}\n", "unknown zlint lint"},
		{"unknown lint source", base + "profiles:\n  p:\n    lints: {sources: [RFC9999]}\n", "unknown zlint source"},
		{"backdate over validity", base + "profiles:\n  p:\n    validity: 1h\n    backdate: 2h\n", "backdate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.DecodeConfig(strings.NewReader(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "ca: ") {
				t.Fatalf("err %v, want one containing %q", err, tt.want)
			}
		})
	}
	if _, err := ca.DecodeConfig(strings.NewReader(base)); err != nil {
		t.Errorf("minimal config: %v", err)
	}
}

func TestDurationYAML(t *testing.T) {
	for in, want := range map[string]time.Duration{"90d": 90 * 24 * time.Hour, "36h": 36 * time.Hour, "1h30m": 90 * time.Minute} {
		d, err := ca.ParseDuration(in)
		if err != nil || d.D() != want {
			t.Errorf("%s: %v %v", in, d.D(), err)
		}
	}
	for _, bad := range []string{"", "d", "-1d", "1y", "99999999d"} {
		if _, err := ca.ParseDuration(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzDecodeConfig(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("..", "testdata", "ca", "ca.yaml")); err == nil {
		f.Add(b)
	}
	f.Add([]byte("issuers:\n  - name: i1\n    certificate: i1.pem\n"))
	f.Add([]byte("profiles: {a: {validity: 1d, ct: {mode: embed}}}"))
	f.Add([]byte("{{{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ca.DecodeConfig(bytes.NewReader(b))
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("decoded config does not validate: %v", err)
		}
	})
}

func TestNewChecksIssuers(t *testing.T) {
	p := newPKI(t)
	other := newPKI(t)
	cases := map[string][]ca.Issuer{
		"signer mismatch": {{Name: "issuing-1", Cert: p.inter, Signer: other.interKey}},
		"missing issuer":  {},
		"extra issuer":    {{Name: "issuing-1", Cert: p.inter, Signer: p.interKey}, {Name: "x", Cert: p.inter, Signer: p.interKey}},
	}
	for name, issuers := range cases {
		if _, err := ca.New(baseConfig(), issuers, failingStore{}, ca.Options{}); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
}
