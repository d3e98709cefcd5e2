package cli

import (
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmca/hsmca/server"
)

// TestAdminGenerateCRLPicksDefaultIssuer: `crl generate --socket` without
// --issuer gets every CRL the server could make and prints the default
// issuer's, not the first listed; the default issuer's failure is the
// error; an answer without default_issuer (an older server) gives the
// first CRL, as before.
func TestAdminGenerateCRLPicksDefaultIssuer(t *testing.T) {
	var answer server.CRLInfo
	sock := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/admin/crl/generate" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(answer)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	tgt := adminTarget{socket: sock}

	answer = server.CRLInfo{CRLs: []server.CRLEntry{{Issuer: "a-old", Number: "1"}, {Issuer: "issuing-1", Number: "7"}}, DefaultIssuer: "issuing-1"}
	if c, err := tgt.generateCRL(""); err != nil || c.Issuer != "issuing-1" {
		t.Fatalf("default issuer: %+v, %v; want issuing-1's CRL", c, err)
	}
	if c, err := tgt.generateCRL("a-old"); err != nil || c.Issuer != "a-old" {
		t.Fatalf("named issuer: %+v, %v", c, err)
	}
	answer = server.CRLInfo{CRLs: []server.CRLEntry{{Issuer: "a-old", Number: "1"}}, DefaultIssuer: "issuing-1",
		Failed: []server.CRLFailure{{Issuer: "issuing-1", Reason: "sealed partition"}}}
	if _, err := tgt.generateCRL(""); err == nil || !strings.Contains(err.Error(), "CRL of issuing-1: sealed partition") {
		t.Fatalf("default issuer failed: %v", err)
	}
	answer = server.CRLInfo{CRLs: []server.CRLEntry{{Issuer: "only", Number: "3"}}}
	if c, err := tgt.generateCRL(""); err != nil || c.Issuer != "only" {
		t.Fatalf("answer without default_issuer: %+v, %v", c, err)
	}
}
