package cli

import (
	"context"
	"encoding/json"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/store"
)

// TestCertListRefused: a serial the lints refused after it was recorded
// (StatusRefused) is left out of `cert list` and shown by `cert list
// --refused`, which shows nothing else.
func TestCertListRefused(t *testing.T) {
	dir, _, _ := stoppedQuickstart(t)
	st, err := store.Open(filepath.Join(dir, "ca.db"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	recs, err := st.ListCerts(ctx, ca.Query{})
	if err != nil || len(recs) == 0 {
		t.Fatalf("quickstart store: %d records, %v", len(recs), err)
	}
	now := time.Now().UTC()
	const serial = "7e57ab1e0000000000000000000000001"
	rec := ca.Record{Serial: serial, Issuer: recs[0].Issuer, Profile: "server", Status: ca.StatusPending,
		DER: recs[0].DER, Names: []string{"refused.example.test"}, NotBefore: now, NotAfter: now.Add(time.Hour), Created: now}
	if err := st.ReserveSerial(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if _, err := st.UpdateRevocation(ctx, serial, func(r *ca.Record) error { r.Status = ca.StatusRefused; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	list := func(args ...string) []map[string]any {
		t.Helper()
		r := mustRun(t, dir, append([]string{"cert", "list", "--json", "--config", filepath.Join(dir, "ca.yaml")}, args...)...)
		var out []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatalf("cert list %v: %v\n%s", args, err, r.stdout)
		}
		return out
	}
	for _, c := range list() {
		if c["serial"] == serial {
			t.Errorf("cert list shows the refused serial: %v", c)
		}
	}
	got := list("--refused")
	if len(got) != 1 || got[0]["serial"] != serial || got[0]["status"] != "refused" {
		t.Errorf("cert list --refused = %v, want only %s (refused)", got, serial)
	}
}

// TestCertUnrevokeLocal: `cert unrevoke` on a stopped CA releases a
// certificate from certificateHold only; anything else is refused (exit 1,
// as over the admin API) and changes nothing.
func TestCertUnrevokeLocal(t *testing.T) {
	dir, _, _ := stoppedQuickstart(t)
	cfg := filepath.Join(dir, "ca.yaml")
	var certs []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, dir, "cert", "list", "--json", "--config", cfg).stdout), &certs); err != nil || len(certs) == 0 {
		t.Fatalf("cert list: %d certificates, %v", len(certs), err)
	}
	serial := certs[0]["serial"].(string)
	status := func() string {
		t.Helper()
		var c map[string]any
		if err := json.Unmarshal([]byte(mustRun(t, dir, "cert", "show", serial, "--json", "--config", cfg).stdout), &c); err != nil {
			t.Fatal(err)
		}
		return c["status"].(string)
	}
	before := status()
	mustFail(t, dir, 1, []string{"not on hold"}, "cert", "unrevoke", serial, "--config", cfg)
	mustRun(t, dir, "cert", "revoke", serial, "--reason", "certificateHold", "--config", cfg)
	if s := status(); s != "revoked" {
		t.Fatalf("after hold: %s", s)
	}
	crl := func() crlGeneratedJSON {
		t.Helper()
		var c crlGeneratedJSON
		r := mustRun(t, dir, "crl", "generate", "--json", "--config", cfg,
			"--share", filepath.Join(dir, "shares/issuing/share-1.txt"), "--share", filepath.Join(dir, "shares/issuing/share-2.txt"))
		if err := json.Unmarshal([]byte(r.stdout), &c); err != nil || c.Number == "" || !strings.Contains(c.PEM, "BEGIN X509 CRL") {
			t.Fatalf("crl generate --json: %+v %v\n%s", c, err, r)
		}
		return c
	}
	onHold := crl()
	if r := mustRun(t, dir, "cert", "unrevoke", serial, "--config", cfg); !strings.Contains(r.stdout, "released") {
		t.Fatalf("unrevoke output:\n%s", r)
	}
	if s := status(); s != before {
		t.Fatalf("after unrevoke: %s, want %s", s, before)
	}
	released := crl()
	n1, _ := new(big.Int).SetString(onHold.Number, 10)
	n2, _ := new(big.Int).SetString(released.Number, 10)
	if released.Entries != onHold.Entries-1 || n1 == nil || n2 == nil || n2.Cmp(n1) <= 0 {
		t.Fatalf("CRL after unrevoke: number %s with %d entries; on hold: number %s with %d", released.Number, released.Entries, onHold.Number, onHold.Entries)
	}
	mustRun(t, dir, "cert", "revoke", serial, "--reason", "superseded", "--config", cfg)
	mustFail(t, dir, 1, []string{"not on hold"}, "cert", "unrevoke", serial, "--config", cfg)
	if s := status(); s != "revoked" {
		t.Fatalf("a refused unrevoke changed the status to %s", s)
	}
	mustFail(t, dir, 2, []string{"unknown serial"}, "cert", "unrevoke", "abcdef0123", "--config", cfg)
}
