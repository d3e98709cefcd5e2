package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// TestCTVerify runs `hsmca ct verify` on the fixtures in testdata/ct (a
// certificate with SCTs from two logs; regenerate with
// go test ./ct -run TestFixtures -update).
func TestCTVerify(t *testing.T) {
	dir, err := filepath.Abs(filepath.Join("..", "testdata", "ct"))
	if err != nil {
		t.Fatal(err)
	}

	r := mustRun(t, dir, "ct", "verify", "cert.pem", "--issuer", "issuer.pem", "--log-key", "logA.pem", "--log-key", "logB.pem")
	for _, want := range []string{"logA", "logB", "LOG ID", "TIMESTAMP"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r)
		}
	}
	if strings.Count(r.stdout, " ok\n") != 2 {
		t.Errorf("want two ok rows:\n%s", r)
	}

	r = mustRun(t, dir, "ct", "verify", "chain.pem", "--log-list", "log_list.json", "--json")
	var rows []ctSCTJSON
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("--json output: %v\n%s", err, r)
	}
	if len(rows) != 2 || !rows[0].OK || !rows[1].OK || rows[0].Log != "logA" || rows[1].Log != "logB" || rows[0].LogID == "" || rows[0].Timestamp.IsZero() {
		t.Errorf("--json rows = %+v", rows)
	}

	r = mustFail(t, dir, ExitFail, []string{"1 of 2 embedded SCTs failed"}, "ct", "verify", "chain.pem", "--log-key", "logA.pem")
	if !strings.Contains(r.stdout, "FAILED: no key for this log ID") || !strings.Contains(r.stdout, "logA") {
		t.Errorf("the failing SCT is not named:\n%s", r)
	}
	mustFail(t, dir, ExitFail, []string{"not signed by the given issuer"}, "ct", "verify", "cert.pem", "--issuer", "root.pem", "--log-key", "logA.pem")
	mustFail(t, dir, ExitUsage, []string{"no issuer certificate", "hint: pass --issuer"}, "ct", "verify", "cert.pem", "--log-key", "logA.pem")
	mustFail(t, dir, ExitUsage, []string{"no logs to verify against", "hint:"}, "ct", "verify", "chain.pem")
	mustFail(t, dir, ExitUsage, []string{"no such file"}, "ct", "verify", "missing.pem", "--log-key", "logA.pem")
	mustFail(t, dir, ExitFail, []string{"no embedded SCT list"}, "ct", "verify", "issuer.pem", "--issuer", "root.pem", "--log-key", "logA.pem")
}
