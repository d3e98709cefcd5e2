package cli

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// auditTestModule makes a soft module with a 1-of-1 partition in a new
// directory and returns the work directory, the module and the share.
func auditTestModule(t *testing.T) (work, mod, share string) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: builds and runs the hsmca binary")
	}
	work = t.TempDir()
	mod = filepath.Join(work, "module")
	mustRun(t, work, "hsm", "init", "--module", mod, "--partition", "issuing", "--shares", "1", "--threshold", "1", "--out", filepath.Join(work, "shares"))
	return work, mod, filepath.Join(work, "shares", "share-1.txt")
}

// statusHead returns the audit head `hsm status --json` prints, as
// COUNT:HASH.
func statusHead(t *testing.T, work, mod string) string {
	t.Helper()
	st := decodeJSON[struct {
		Audit struct {
			Count uint64 `json:"count"`
			Hash  string `json:"hash"`
		} `json:"audit"`
	}](t, mustRun(t, work, "hsm", "status", "--module", mod, "--json"))
	return fmt.Sprintf("%d:%s", st.Audit.Count, st.Audit.Hash)
}

// An auditor keeps a head (from hsm status or a ceremony transcript) and
// passes it with --known-head: a later log must extend it. A module rolled
// back to an older copy verifies on its own, not against the head.
func TestHSMAuditVerifyKnownHead(t *testing.T) {
	work, mod, share := auditTestModule(t)
	old := filepath.Join(work, "module-old")
	copyDir(t, mod, old)
	mustRun(t, work, "hsm", "activate", "--module", mod, "--share", share) // share, activation, seal
	known := statusHead(t, work, mod)

	r := mustRun(t, work, "hsm", "audit", "verify", "--module", mod, "--known-head", known, "--known-head", strings.ToUpper(known))
	if !strings.Contains(r.stdout, "audit log OK") || !strings.Contains(r.stdout, "extends the known head "+known) {
		t.Errorf("verify against the current head:\n%s", r)
	}

	// The module replaced by its copy from before the activation: the log
	// is consistent, but the records the auditor saw are gone.
	mustRun(t, work, "hsm", "audit", "verify", "--module", old)
	r = mustFail(t, work, 1, []string{"does not extend a known head", "truncated", "hint:"},
		"hsm", "audit", "verify", "--module", old, "--known-head", known)
	if strings.Contains(r.stdout, "audit log OK") {
		t.Errorf("rolled-back log reported OK:\n%s", r)
	}
	r = runCLI(t, work, "hsm", "audit", "verify", "--module", old, "--known-head", known, "--json")
	var res auditVerifyJSON
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || r.code != 1 || res.OK || res.BadRecord == nil || len(res.KnownHeads) != 1 {
		t.Errorf("--json of a log that does not extend the known head: %+v, %v\n%s", res, err, r)
	}

	// A head of the same count with another hash: the log was rewritten.
	count, _, _ := strings.Cut(known, ":")
	mustFail(t, work, 1, []string{"does not extend a known head", "log rewritten"},
		"hsm", "audit", "verify", "--module", mod, "--known-head", count+":"+strings.Repeat("ab", 32))

	for _, bad := range []string{"12", "x:" + strings.Repeat("ab", 32), "3:abcd", "3:" + strings.Repeat("zz", 32), "0:" + strings.Repeat("ab", 32)} {
		mustFail(t, work, 2, []string{"--known-head"}, "hsm", "audit", "verify", "--module", mod, "--known-head", bad)
	}
}

// A deleted audit segment is reported, and neither verify nor list
// creates one in its place.
func TestHSMAuditVerifyMissingSegment(t *testing.T) {
	work, mod, share := auditTestModule(t)
	mustRun(t, work, "hsm", "activate", "--module", mod, "--share", share)
	seg := filepath.Join(mod, "audit.seg")
	if err := os.Remove(seg); err != nil {
		t.Fatal(err)
	}
	mustFail(t, work, 1, []string{"audit.seg is missing", "hint:"}, "hsm", "audit", "verify", "--module", mod)
	mustRun(t, work, "hsm", "audit", "list", "--module", mod)
	if _, err := os.Stat(seg); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("verify or list created a new audit segment: %v", err)
	}
}

// moduleFiles maps each file of a module directory to its bytes' hash and
// its modification time. With backdate it first sets every modification
// time to one long past, so that a later write changes it whatever the file
// system's time resolution.
func moduleFiles(t *testing.T, dir string, backdate bool) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		if backdate {
			past := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
			if err := os.Chtimes(path, past, past); err != nil {
				t.Fatal(err)
			}
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fmt.Sprintf("%x, mtime %s", sha256.Sum256(data), st.ModTime().UTC().Format(time.RFC3339Nano))
	}
	return out
}

// auditReadCommands are the commands that read a module's audit log;
// they must leave the module as they found it.
func auditReadCommands(mod, known string) [][]string {
	return [][]string{
		{"hsm", "audit", "verify", "--module", mod},
		{"hsm", "audit", "verify", "--module", mod, "--json", "--known-head", known},
		{"hsm", "audit", "list", "--module", mod},
		{"hsm", "audit", "list", "--module", mod, "--json", "--from", "2", "--limit", "3"},
	}
}

// An auditor verifying a copy of a module changes nothing in it:
// module.db (whose running time a writable open writes at close) and
// audit.seg keep their bytes and modification times.
func TestHSMAuditReadCommandsChangeNothing(t *testing.T) {
	work, mod, share := auditTestModule(t)
	mustRun(t, work, "hsm", "activate", "--module", mod, "--share", share)
	known := statusHead(t, work, mod)
	before := moduleFiles(t, mod, true)
	if len(before) != 2 || before["module.db"] == "" || before["audit.seg"] == "" {
		t.Fatalf("module files: %v", before)
	}
	for _, args := range auditReadCommands(mod, known) {
		mustRun(t, work, args...)
		if after := moduleFiles(t, mod, false); !maps.Equal(before, after) {
			t.Fatalf("hsmca %s changed the module:\nbefore %v\nafter  %v", quoteArgs(args), before, after)
		}
	}
}

func TestAuditParseKnownHead(t *testing.T) {
	hash := strings.Repeat("0f", 32)
	tests := []struct {
		in    string
		count uint64
		ok    bool
	}{
		{"23:" + hash, 23, true},
		{"23:" + strings.ToUpper(hash), 23, true},
		{"0:" + strings.Repeat("0", 64), 0, true},
		{"0:" + hash, 0, false},
		{"23", 0, false},
		{":" + hash, 0, false},
		{"-1:" + hash, 0, false},
		{"23:" + hash[:62], 0, false},
		{"23:" + hash + "00", 0, false},
		{"23 :" + hash, 0, false},
		{"023:" + hash, 0, false},
		{"record 23, head " + hash, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			h, err := parseKnownHead(tc.in)
			if tc.ok != (err == nil) || (tc.ok && (h.Count != tc.count || h.Hash != strings.ToLower(tc.in[strings.Index(tc.in, ":")+1:]))) {
				t.Fatalf("parseKnownHead(%q) = %+v, %v", tc.in, h, err)
			}
		})
	}
}

func FuzzAuditParseKnownHead(f *testing.F) {
	f.Add("23:" + strings.Repeat("0f", 32))
	f.Add("0:" + strings.Repeat("0", 64))
	f.Add("18446744073709551615:" + strings.Repeat("AB", 32))
	f.Add("1:")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := parseKnownHead(s)
		if err != nil {
			return
		}
		// What parses is what the commands print, up to the hash's case.
		if got := fmt.Sprintf("%d:%s", h.Count, h.Hash); got != strings.ToLower(s) {
			t.Fatalf("parseKnownHead(%q) = %s", s, got)
		}
	})
}
