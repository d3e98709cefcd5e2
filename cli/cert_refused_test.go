package cli

import (
	"context"
	"encoding/json"
	"path/filepath"
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
