package cli

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

// e2eBackend tells the shared end-to-end script (runHSMEndToEnd) how to use
// one module backend. The soft backend's test is TestHSMEndToEndSoft; the
// pkcs11 backend runs the same script with its own e2eBackend (issue 3).
type e2eBackend struct {
	name string
	// initFlags returns the extra `hsm init` flags for creating partition
	// in module (for example --backend pkcs11 --token-uri ... --pin-file ...).
	// It is called once per partition.
	initFlags func(t *testing.T, module, partition string) []string
	// keyTypes are the key types the backend must generate (one key each).
	keyTypes []string
	// exportableKeys says the backend makes exportable keys, so the script
	// moves one to a second module (export, import). When false (PKCS#11
	// keys are generated non-extractable) the script checks instead that
	// --exportable is refused as not supported.
	exportableKeys bool
	// tamperAudit alters the audit log in a module directory the way an
	// attacker with write access would; audit verify must then fail. nil
	// skips the step. tamperBoltAudit does it for a log kept in a bbolt file
	// in the module directory.
	tamperAudit func(t *testing.T, module string)
	// auditTampers are more such alterations by name (boltAuditTampers:
	// change, delete, truncate records). Each of these and tamperAudit runs
	// on its own copy of the module directory.
	auditTampers map[string]func(t *testing.T, module string)
}

// e2eStatus mirrors `hsm status --json`.
type e2eStatus struct {
	Module  string `json:"module"`
	Backend string `json:"backend"`
	Audit   struct {
		Count     uint64 `json:"count"`
		Hash      string `json:"hash"`
		PublicKey string `json:"public_key"`
	} `json:"audit"`
	Partitions []struct {
		Name         string `json:"name"`
		Policy       string `json:"policy"`
		State        string `json:"state"`
		Threshold    int    `json:"threshold"`
		Shares       int    `json:"shares"`
		Presented    int    `json:"presented"`
		Keys         int    `json:"keys"`
		Generation   int    `json:"generation"`
		LockedUntil  string `json:"locked_until"`
		FailedShares int    `json:"failed_shares"`
		TransportKey string `json:"transport_key"`
	} `json:"partitions"`
}

// e2eKey mirrors one element of `hsm keys list --json`.
type e2eKey struct {
	Partition  string `json:"partition"`
	ID         string `json:"id"`
	Label      string `json:"label"`
	Type       string `json:"type"`
	Exportable bool   `json:"exportable"`
	Created    string `json:"created"`
	PublicKey  string `json:"public_key"`
}

type e2eAudit struct {
	OK        bool    `json:"ok"`
	Records   uint64  `json:"records"`
	Head      string  `json:"head"`
	PublicKey string  `json:"public_key"`
	BadRecord *uint64 `json:"bad_record"`
	Error     string  `json:"error"`
}

// e2eEvent mirrors one element of `hsm audit list --json`.
type e2eEvent struct {
	Seq       uint64            `json:"seq"`
	Type      string            `json:"type"`
	Partition string            `json:"partition"`
	Fields    map[string]string `json:"fields"`
}

func decodeJSON[T any](t *testing.T, r cliResult) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, r)
	}
	return v
}

// shareArgs turns files into repeated --share flags.
func shareArgs(files ...string) []string {
	var a []string
	for _, f := range files {
		a = append(a, "--share", f)
	}
	return a
}

func args(parts ...any) []string {
	var a []string
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			a = append(a, v)
		case []string:
			a = append(a, v...)
		default:
			panic("args: unexpected type")
		}
	}
	return a
}

// corruptOneChar changes one character in the middle of the longest line
// of a text share, keeping it in the same character class, so that only a
// checksum or the commitments can tell.
func corruptOneChar(t *testing.T, data []byte) []byte {
	t.Helper()
	lines := bytes.Split(data, []byte("\n"))
	li := 0
	for i, l := range lines {
		if len(l) > len(lines[li]) {
			li = i
		}
	}
	line := append([]byte(nil), lines[li]...)
	for off := 0; off < len(line); off++ {
		i := (len(line)/2 + off) % len(line)
		c := line[i]
		switch {
		case c >= 'a' && c <= 'y', c >= 'A' && c <= 'Y', c >= '0' && c <= '8':
			line[i] = c + 1
		case c == 'z', c == 'Z', c == '9':
			line[i] = c - 1
		default:
			continue
		}
		lines[li] = line
		out := bytes.Join(lines, []byte("\n"))
		if bytes.Equal(out, data) {
			t.Fatal("corruptOneChar changed nothing")
		}
		return out
	}
	t.Fatal("no character to corrupt in share")
	return nil
}

func checkMode0600(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
}

// runHSMEndToEnd is the custodian's script: every `hsmca hsm` command, run
// as a separate process on module directories in a temporary directory.
// Steps run in order and stop at the first failure (later steps depend on
// earlier ones).
func runHSMEndToEnd(t *testing.T, b e2eBackend) {
	work := t.TempDir()
	mod := filepath.Join(work, "module")
	mod2 := filepath.Join(work, "module2")
	m := func(a ...any) []string { return args(append([]any{"hsm"}, a...)...) }
	share := func(dir string, i int) string { return filepath.Join(work, dir, "share-"+string(rune('0'+i))+".txt") }

	var (
		auditKey   string
		idFiles    = map[string]string{}
		idKeys     = map[string]*age.X25519Identity{}
		exportedPK string
	)

	step := func(name string, f func(t *testing.T)) {
		if t.Failed() {
			return
		}
		t.Run(name, f)
	}

	step("missing module has a hint", func(t *testing.T) {
		mustFail(t, work, 1, []string{"hsmca: error:", "does not exist", "hint:", "hsmca hsm init --module"},
			m("status", "--module", filepath.Join(work, "nope"))...)
		mustFail(t, work, 1, []string{"hint:", "hsmca hsm init"},
			m("keys", "list", "--module", filepath.Join(work, "nope"))...)
	})

	step("bad usage exits 2", func(t *testing.T) {
		base := args("hsm", "init", "--module", mod, "--out", filepath.Join(work, "x"))
		for name, a := range map[string][]string{
			"threshold above shares": args(base, "--partition", "p", "--shares", "3", "--threshold", "5", b.initFlags(t, mod, "p")),
			"zero shares":            args(base, "--partition", "p", "--shares", "0", "--threshold", "0", b.initFlags(t, mod, "p")),
			"no partition":           args(base, "--shares", "3", "--threshold", "2", b.initFlags(t, mod, "p")),
			"bad policy":             args(base, "--partition", "p", "--shares", "3", "--threshold", "2", "--policy", "sometimes", b.initFlags(t, mod, "p")),
			"custodian count":        args(base, "--partition", "p", "--shares", "3", "--threshold", "2", "--custodian", "alice", b.initFlags(t, mod, "p")),
			"bad recipient":          args(base, "--partition", "p", "--shares", "1", "--threshold", "1", "--custodian", "alice=age1nope", b.initFlags(t, mod, "p")),
			"unknown flag":           args("hsm", "status", "--module", mod, "--frobnicate"),
			"stray argument":         args("hsm", "status", "--module", mod, "extra"),
		} {
			r := runCLI(t, work, a...)
			if r.code != 2 || !strings.Contains(r.stderr, "hsmca: error:") {
				t.Errorf("%s: want exit 2 with an error line:\n%s", name, r)
			}
		}
		if _, err := os.Stat(filepath.Join(work, "x")); err == nil {
			entries, _ := os.ReadDir(filepath.Join(work, "x"))
			if len(entries) > 0 {
				t.Errorf("a refused init wrote share files: %v", entries)
			}
		}
	})

	step("init 3 of 5 with plain shares", func(t *testing.T) {
		r := mustRun(t, work, m("init", "--module", mod, "--partition", "issuing", "--shares", "5", "--threshold", "3",
			"--out", filepath.Join(work, "shares"), b.initFlags(t, mod, "issuing"))...)
		if !strings.Contains(r.stdout, "3 of 5") {
			t.Errorf("init does not say 3 of 5:\n%s", r)
		}
		for i := 1; i <= 5; i++ {
			checkMode0600(t, share("shares", i))
			if !strings.Contains(r.stdout, share("shares", i)) {
				t.Errorf("init does not name %s:\n%s", share("shares", i), r)
			}
		}
		for _, l := range strings.Split(r.stdout, "\n") {
			if k, ok := strings.CutPrefix(l, "audit key (pin it to verify the log later): "); ok {
				auditKey = strings.TrimSpace(k)
			}
		}
		if auditKey == "" {
			t.Errorf("init does not print the audit key:\n%s", r)
		}
	})

	step("init refuses an existing partition", func(t *testing.T) {
		before, _ := os.ReadFile(share("shares", 1))
		mustFail(t, work, 1, []string{"issuing", "exists"},
			m("init", "--module", mod, "--partition", "issuing", "--shares", "2", "--threshold", "2",
				"--out", filepath.Join(work, "shares-again"), b.initFlags(t, mod, "issuing"))...)
		after, _ := os.ReadFile(share("shares", 1))
		if !bytes.Equal(before, after) {
			t.Error("a refused init changed an existing share file")
		}
		mustFail(t, work, 1, []string{"already exists"},
			m("init", "--module", mod, "--partition", "other", "--shares", "2", "--threshold", "2",
				"--out", filepath.Join(work, "shares"), b.initFlags(t, mod, "other"))...)
	})

	step("init with age-encrypted shares", func(t *testing.T) {
		var custodians []string
		for _, name := range []string{"alice", "bob", "carol"} {
			id, err := age.GenerateX25519Identity()
			if err != nil {
				t.Fatal(err)
			}
			idKeys[name] = id
			idFiles[name] = filepath.Join(work, name+".key")
			if err := os.WriteFile(idFiles[name], []byte("# "+name+"\n"+id.String()+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			custodians = append(custodians, "--custodian", name+"="+id.Recipient().String())
		}
		r := mustRun(t, work, m("init", "--module", mod, "--partition", "root", "--policy", "per-operation",
			"--shares", "3", "--threshold", "2", "--out", filepath.Join(work, "root-shares"), custodians, b.initFlags(t, mod, "root"))...)
		for _, name := range []string{"alice", "bob", "carol"} {
			p := filepath.Join(work, "root-shares", name+".age")
			checkMode0600(t, p)
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(data, []byte("age-encryption.org/v1")) && !bytes.HasPrefix(data, []byte("-----BEGIN AGE ENCRYPTED FILE-----")) {
				t.Errorf("%s is not an age file", p)
			}
			if !strings.Contains(r.stdout, "custodian "+name) {
				t.Errorf("init does not name custodian %s:\n%s", name, r)
			}
		}
	})

	step("status", func(t *testing.T) {
		r := mustRun(t, work, m("status", "--module", mod)...)
		for _, w := range []string{"issuing", "root", "per-operation", "sealed", "0 of 3", "0 of 2"} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("status lacks %q:\n%s", w, r)
			}
		}
		st := decodeJSON[e2eStatus](t, mustRun(t, work, m("status", "--module", mod, "--json")...))
		if st.Module == "" || st.Backend != b.name || len(st.Partitions) < 2 {
			t.Fatalf("status --json: %+v", st)
		}
		iss, root := st.Partitions[0], st.Partitions[1]
		if iss.Name != "issuing" || iss.State != "sealed" || iss.Threshold != 3 || iss.Shares != 5 || iss.Policy != "online" || iss.Generation < 1 {
			t.Errorf("issuing status: %+v", iss)
		}
		if root.Name != "root" || root.Threshold != 2 || root.Shares != 3 || root.Policy != "per-operation" {
			t.Errorf("root status: %+v", root)
		}
		if st.Audit.PublicKey != auditKey || st.Audit.Count == 0 {
			t.Errorf("status audit %+v, init printed key %s", st.Audit, auditKey)
		}
	})

	step("activate needs M shares", func(t *testing.T) {
		mustFail(t, work, 1, []string{"2 of 3", "issuing", "hint:"},
			m("activate", "--module", mod, "--partition", "issuing", shareArgs(share("shares", 1), share("shares", 2)))...)
		r := mustRun(t, work, m("activate", "--module", mod, "--partition", "issuing", shareArgs(share("shares", 1), share("shares", 3), share("shares", 5)))...)
		if !strings.Contains(r.stdout, "valid quorum") || !strings.Contains(r.stderr, "share 3 of 3 accepted") {
			t.Errorf("activate with 3 shares:\n%s", r)
		}
		r = mustRun(t, work, m("activate", "--module", mod, "--partition", "issuing",
			shareArgs(share("shares", 1), share("shares", 2), share("shares", 3), share("shares", 4), share("shares", 5)))...)
		if !strings.Contains(r.stdout, "5 share(s) checked") {
			t.Errorf("activate with all 5 shares does not check all:\n%s", r)
		}
		// A share given on stdin.
		data, err := os.ReadFile(share("shares", 2))
		if err != nil {
			t.Fatal(err)
		}
		r = runCLIStdin(t, work, data, m("activate", "--module", mod, "--partition", "issuing", shareArgs(share("shares", 1), "-", share("shares", 4)))...)
		if r.code != 0 {
			t.Errorf("activate with a share on stdin:\n%s", r)
		}
		// A plain share readable by others works, with a warning.
		loose := filepath.Join(work, "loose-share.txt")
		if err := os.WriteFile(loose, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(loose, 0o644); err != nil {
			t.Fatal(err)
		}
		r = mustRun(t, work, m("activate", "--module", mod, "--partition", "issuing", shareArgs(share("shares", 1), loose, share("shares", 4)))...)
		if !strings.Contains(r.stderr, "warning: plain-text share file "+loose+" is readable by other users") {
			t.Errorf("no warning for a share file with mode 0644:\n%s", r)
		}
		if strings.Contains(mustRun(t, work, m("activate", "--module", mod, "--partition", "issuing", shareArgs(share("shares", 1), share("shares", 2), share("shares", 4)))...).stderr, "warning") {
			t.Error("warning for 0600 share files")
		}
		// Without shares and without a terminal: a usage error that says what to do.
		mustFail(t, work, 2, []string{"--share"}, m("activate", "--module", mod, "--partition", "issuing")...)
	})

	step("activate with age-encrypted shares", func(t *testing.T) {
		alice, bob := filepath.Join(work, "root-shares", "alice.age"), filepath.Join(work, "root-shares", "bob.age")
		r := mustRun(t, work, m("activate", "--module", mod, "--partition", "root", shareArgs(alice, bob),
			"--identity", idFiles["alice"], "--identity", idFiles["bob"])...)
		if !strings.Contains(r.stdout, "valid quorum") {
			t.Errorf("age activate:\n%s", r)
		}
		// Without --partition, the shares say which partition they are for.
		r = mustRun(t, work, m("activate", "--module", mod, shareArgs(bob, alice), "--identity", idFiles["bob"], "--identity", idFiles["alice"])...)
		if !strings.Contains(r.stdout, "partition root") {
			t.Errorf("activate without --partition:\n%s", r)
		}
		mustFail(t, work, 1, []string{alice, "--identity"}, m("activate", "--module", mod, "--partition", "root", shareArgs(alice, bob))...)
		mustFail(t, work, 1, []string{bob}, m("activate", "--module", mod, "--partition", "root", shareArgs(alice, bob),
			"--identity", idFiles["alice"], "--identity", idFiles["carol"])...)
	})

	step("bad shares are named", func(t *testing.T) {
		data, err := os.ReadFile(share("shares", 2))
		if err != nil {
			t.Fatal(err)
		}
		bad := filepath.Join(work, "corrupted-share.txt")
		if err := os.WriteFile(bad, corruptOneChar(t, data), 0o600); err != nil {
			t.Fatal(err)
		}
		mustFail(t, work, 1, []string{"corrupted-share.txt"},
			m("activate", "--module", mod, "--partition", "issuing", shareArgs(share("shares", 1), bad, share("shares", 3)))...)
		mustFail(t, work, 1, []string{share("shares", 1), "share 1", "already presented"},
			m("activate", "--module", mod, "--partition", "issuing", shareArgs(share("shares", 1), share("shares", 1), share("shares", 3)))...)
		// A share of another partition.
		mustFail(t, work, 1, []string{share("shares", 1), "share 1"},
			m("activate", "--module", mod, "--partition", "root", shareArgs(share("shares", 1)))...)
		garbage := filepath.Join(work, "garbage.txt")
		if err := os.WriteFile(garbage, []byte("not a share at all\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		mustFail(t, work, 1, []string{"garbage.txt"},
			m("activate", "--module", mod, "--partition", "issuing", shareArgs(garbage))...)
		mustFail(t, work, 1, []string{"nonexistent.txt"},
			m("activate", "--module", mod, "--partition", "issuing", shareArgs(filepath.Join(work, "nonexistent.txt")))...)
	})

	step("lockout survives restarts", func(t *testing.T) {
		mustRun(t, work, m("init", "--module", mod, "--partition", "lock", "--shares", "2", "--threshold", "2",
			"--lockout-after", "2", "--lockout", "1h", "--out", filepath.Join(work, "lock-shares"), b.initFlags(t, mod, "lock"))...)
		// Each bad share is presented by a separate process: the count and
		// the lockout are persisted in the module.
		for range 2 {
			mustFail(t, work, 1, []string{share("shares", 4)}, m("activate", "--module", mod, "--partition", "lock", shareArgs(share("shares", 4)))...)
		}
		good := filepath.Join(work, "lock-shares", "share-1.txt")
		mustFail(t, work, 1, []string{"locked until", "hint:"}, m("activate", "--module", mod, "--partition", "lock", shareArgs(good))...)
		r := mustRun(t, work, m("status", "--module", mod, "--partition", "lock")...)
		if !strings.Contains(r.stdout, "locked until") {
			t.Errorf("status does not show the lockout:\n%s", r)
		}
		st := decodeJSON[e2eStatus](t, mustRun(t, work, m("status", "--module", mod, "--partition", "lock", "--json")...))
		if st.Partitions[0].LockedUntil == "" {
			t.Errorf("status --json has no locked_until: %+v", st.Partitions[0])
		}
	})

	var keyIDs = map[string]string{}
	step("keys generate", func(t *testing.T) {
		quorum := shareArgs(share("shares", 2), share("shares", 4), share("shares", 5))
		for _, kt := range b.keyTypes {
			label := "k-" + kt
			r := mustRun(t, work, m("keys", "generate", "--module", mod, "--partition", "issuing", "--type", kt, "--label", label, quorum)...)
			block, _ := pem.Decode([]byte(r.stdout[strings.Index(r.stdout, "-----BEGIN"):]))
			if block == nil || block.Type != "PUBLIC KEY" {
				t.Fatalf("keys generate prints no PEM public key:\n%s", r)
			}
			if _, err := x509.ParsePKIXPublicKey(block.Bytes); err != nil {
				t.Fatalf("public key of %s does not parse: %v", kt, err)
			}
			for _, l := range strings.Split(r.stdout, "\n") {
				if id, ok := strings.CutPrefix(l, "id: "); ok {
					keyIDs[label] = id
				}
			}
			if keyIDs[label] == "" {
				t.Fatalf("keys generate prints no id:\n%s", r)
			}
		}
		if b.exportableKeys {
			mustRun(t, work, m("keys", "generate", "--module", mod, "--partition", "issuing", "--type", "ecdsa-p256", "--label", "exp1", "--exportable", quorum)...)
		} else {
			mustFail(t, work, 1, []string{"not supported"}, m("keys", "generate", "--module", mod, "--partition", "issuing", "--type", "ecdsa-p256", "--label", "exp1", "--exportable", quorum)...)
			mustRun(t, work, m("keys", "generate", "--module", mod, "--partition", "issuing", "--type", "ecdsa-p256", "--label", "exp1", quorum)...)
		}
		mustRun(t, work, m("keys", "generate", "--module", mod, "--partition", "issuing", "--type", "ecdsa-p256", "--label", "doomed", quorum)...)
		// A root key, with two custodians' age-encrypted shares, JSON out.
		r := mustRun(t, work, m("keys", "generate", "--module", mod, "--partition", "root", "--type", "ecdsa-p384", "--label", "root-1", "--json",
			shareArgs(filepath.Join(work, "root-shares", "carol.age"), filepath.Join(work, "root-shares", "alice.age")),
			"--identity", idFiles["alice"], "--identity", idFiles["carol"])...)
		rk := decodeJSON[e2eKey](t, r)
		if rk.Partition != "root" || rk.Label != "root-1" || rk.Type != "ecdsa-p384" || rk.ID == "" || !strings.Contains(rk.PublicKey, "BEGIN PUBLIC KEY") {
			t.Errorf("keys generate --json: %+v", rk)
		}
		keyIDs["root-1"] = rk.ID
		mustFail(t, work, 1, []string{"exp1"}, m("keys", "generate", "--module", mod, "--partition", "issuing", "--type", "ecdsa-p256", "--label", "exp1", quorum)...)
		mustFail(t, work, 2, []string{"key type"}, m("keys", "generate", "--module", mod, "--partition", "issuing", "--type", "dsa-1024", "--label", "x", quorum)...)
		mustFail(t, work, 2, []string{"--share"}, m("keys", "generate", "--module", mod, "--partition", "issuing", "--type", "ecdsa-p256", "--label", "noquorum")...)
		mustFail(t, work, 1, []string{"2 of 3"}, m("keys", "generate", "--module", mod, "--partition", "issuing", "--type", "ecdsa-p256", "--label", "short", shareArgs(share("shares", 1), share("shares", 2)))...)
	})

	step("keys list", func(t *testing.T) {
		keys := decodeJSON[[]e2eKey](t, mustRun(t, work, m("keys", "list", "--module", mod, "--json")...))
		byLabel := map[string]e2eKey{}
		for _, k := range keys {
			byLabel[k.Label] = k
		}
		if len(keys) != len(b.keyTypes)+3 {
			t.Errorf("keys list has %d keys, want %d: %+v", len(keys), len(b.keyTypes)+3, keys)
		}
		if k := byLabel["root-1"]; k.Partition != "root" || k.ID != keyIDs["root-1"] {
			t.Errorf("root key listed as %+v", k)
		}
		for _, kt := range b.keyTypes {
			k := byLabel["k-"+kt]
			if k.ID != keyIDs["k-"+kt] || k.Type != kt || k.Exportable || k.Partition != "issuing" || k.Created == "" {
				t.Errorf("key k-%s: %+v", kt, k)
			}
		}
		if byLabel["exp1"].Exportable != b.exportableKeys {
			t.Errorf("exp1 exportable %t, want %t", byLabel["exp1"].Exportable, b.exportableKeys)
		}
		exportedPK = byLabel["exp1"].PublicKey
		if !strings.Contains(exportedPK, "BEGIN PUBLIC KEY") {
			t.Errorf("keys list --json has no public key: %+v", byLabel["exp1"])
		}
		r := mustRun(t, work, m("keys", "list", "--module", mod, "--partition", "issuing")...)
		for _, w := range []string{"ID", "LABEL", "TYPE", "EXPORTABLE", "CREATED", "exp1", "false", keyIDs["k-"+b.keyTypes[0]]} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("keys list lacks %q:\n%s", w, r)
			}
		}
		st := decodeJSON[e2eStatus](t, mustRun(t, work, m("status", "--module", mod, "--json")...))
		if st.Partitions[0].Name != "issuing" || st.Partitions[0].Keys != len(b.keyTypes)+2 {
			t.Errorf("status counts %d keys", st.Partitions[0].Keys)
		}
	})

	step("keys destroy", func(t *testing.T) {
		quorum := shareArgs(share("shares", 1), share("shares", 2), share("shares", 3))
		mustFail(t, work, 2, []string{"--yes"}, m("keys", "destroy", "--module", mod, "--partition", "issuing", "--key", "doomed", quorum)...)
		mustFail(t, work, 1, []string{"not found", "hint:"}, m("keys", "destroy", "--module", mod, "--partition", "issuing", "--key", "never-was", "--yes", quorum)...)
		mustRun(t, work, m("keys", "destroy", "--module", mod, "--partition", "issuing", "--key", "doomed", "--yes", quorum)...)
		r := mustRun(t, work, m("keys", "list", "--module", mod)...)
		if strings.Contains(r.stdout, "doomed") {
			t.Errorf("destroyed key still listed:\n%s", r)
		}
	})

	step("export and import between modules", func(t *testing.T) {
		if !b.exportableKeys {
			id, err := age.GenerateX25519Identity()
			if err != nil {
				t.Fatal(err)
			}
			wrapped := filepath.Join(work, "k.wrapped")
			mustFail(t, work, 1, []string{"not exportable"}, m("export", "--module", mod, "--partition", "issuing", "--key", "exp1",
				"--to", id.Recipient().String(), "--out", wrapped, shareArgs(share("shares", 1), share("shares", 2), share("shares", 3)))...)
			if _, err := os.Stat(wrapped); err == nil {
				t.Fatal("a refused export wrote a file")
			}
			return
		}
		mustRun(t, work, m("init", "--module", mod2, "--partition", "issuing", "--shares", "3", "--threshold", "2",
			"--out", filepath.Join(work, "shares-m2"), b.initFlags(t, mod2, "issuing"))...)
		tk := strings.TrimSpace(mustRun(t, work, m("keys", "transport-key", "--module", mod2, "--partition", "issuing")...).stdout)
		if !strings.HasPrefix(tk, "age1") {
			t.Fatalf("transport key %q", tk)
		}
		st := decodeJSON[e2eStatus](t, mustRun(t, work, m("status", "--module", mod2, "--json")...))
		if st.Partitions[0].TransportKey != tk {
			t.Errorf("status transport key %q, keys transport-key %q", st.Partitions[0].TransportKey, tk)
		}
		if st.Module == decodeJSON[e2eStatus](t, mustRun(t, work, m("status", "--module", mod, "--json")...)).Module {
			t.Error("two modules share an ID")
		}
		tkFile := filepath.Join(work, "module2.tk")
		if err := os.WriteFile(tkFile, []byte(tk+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		quorum := shareArgs(share("shares", 1), share("shares", 2), share("shares", 3))
		wrapped := filepath.Join(work, "exp1.wrapped")
		mustFail(t, work, 1, []string{"not exportable"}, m("export", "--module", mod, "--partition", "issuing", "--key", "k-ecdsa-p256",
			"--to", tkFile, "--out", wrapped, quorum)...)
		if _, err := os.Stat(wrapped); err == nil {
			t.Fatal("a refused export wrote a file")
		}
		mustRun(t, work, m("export", "--module", mod, "--partition", "issuing", "--key", "exp1", "--to", tkFile, "--out", wrapped, quorum)...)
		checkMode0600(t, wrapped)
		mustFail(t, work, 1, []string{"exists"}, m("export", "--module", mod, "--partition", "issuing", "--key", "exp1", "--to", tk, "--out", wrapped, quorum)...)
		// The blob is for module2; module1 cannot import it.
		mustFail(t, work, 1, []string{"import"}, m("import", "--module", mod, "--partition", "issuing", "--in", wrapped, quorum)...)
		m2quorum := shareArgs(filepath.Join(work, "shares-m2", "share-1.txt"), filepath.Join(work, "shares-m2", "share-3.txt"))
		mustRun(t, work, m("import", "--module", mod2, "--partition", "issuing", "--in", wrapped, m2quorum)...)
		keys := decodeJSON[[]e2eKey](t, mustRun(t, work, m("keys", "list", "--module", mod2, "--json")...))
		if len(keys) != 1 || keys[0].Label != "exp1" || keys[0].PublicKey != exportedPK {
			t.Errorf("imported key %+v, want exp1 with public key\n%s", keys, exportedPK)
		}
	})

	step("reshare", func(t *testing.T) {
		old := shareArgs(share("shares", 1), share("shares", 2), share("shares", 3))
		mustFail(t, work, 2, []string{"--threshold"}, m("reshare", "--module", mod, "--partition", "issuing", "--shares", "2", "--threshold", "3", "--out", filepath.Join(work, "new"), old)...)
		r := mustRun(t, work, m("reshare", "--module", mod, "--partition", "issuing", "--shares", "4", "--threshold", "2", "--out", filepath.Join(work, "new"), old)...)
		if !strings.Contains(r.stdout, "2 of 4") {
			t.Errorf("reshare:\n%s", r)
		}
		for i := 1; i <= 4; i++ {
			checkMode0600(t, share("new", i))
		}
		mustFail(t, work, 1, []string{share("shares", 1)}, m("activate", "--module", mod, "--partition", "issuing", old)...)
		mustRun(t, work, m("activate", "--module", mod, "--partition", "issuing", shareArgs(share("new", 1), share("new", 4)))...)
		st := decodeJSON[e2eStatus](t, mustRun(t, work, m("status", "--module", mod, "--json", "--partition", "issuing")...))
		if p := st.Partitions[0]; p.Threshold != 2 || p.Shares != 4 || p.Generation < 2 {
			t.Errorf("after reshare: %+v", p)
		}
		// The keys survive a reshare.
		mustRun(t, work, m("keys", "generate", "--module", mod, "--partition", "issuing", "--type", "ecdsa-p256", "--label", "after-reshare", shareArgs(share("new", 2), share("new", 3)))...)
	})

	step("seal", func(t *testing.T) {
		r := mustRun(t, work, m("seal", "--module", mod, "--partition", "issuing")...)
		if !strings.Contains(r.stdout, "always sealed") {
			t.Errorf("seal:\n%s", r)
		}
	})

	step("audit verify", func(t *testing.T) {
		r := mustRun(t, work, m("audit", "verify", "--module", mod)...)
		if !strings.Contains(r.stdout, "audit log OK") {
			t.Errorf("audit verify:\n%s", r)
		}
		a := decodeJSON[e2eAudit](t, mustRun(t, work, m("audit", "verify", "--module", mod, "--json", "--audit-key", auditKey)...))
		st := decodeJSON[e2eStatus](t, mustRun(t, work, m("status", "--module", mod, "--json")...))
		if !a.OK || a.Records == 0 || a.Head == "" || a.Head != st.Audit.Hash || a.Records != st.Audit.Count || a.PublicKey != auditKey {
			t.Errorf("audit verify --json %+v, status audit %+v", a, st.Audit)
		}
		mustFail(t, work, 1, []string{"pinned"}, m("audit", "verify", "--module", mod, "--audit-key", "AAAA")...)

		events := decodeJSON[[]e2eEvent](t, mustRun(t, work, m("audit", "list", "--module", mod, "--json")...))
		if len(events) == 0 || uint64(len(events)) != a.Records || events[0].Seq != 1 {
			t.Fatalf("audit list has %d records, verify counted %d: %+v", len(events), a.Records, events)
		}
		types := map[string]bool{}
		for _, ev := range events {
			types[ev.Type] = true
		}
		for _, want := range []string{"init", "share-accepted", "share-rejected", "activate", "key-generate", "key-destroy", "reshare"} {
			if !types[want] {
				t.Errorf("audit list has no %q event; types %v", want, types)
			}
		}
		page := decodeJSON[[]e2eEvent](t, mustRun(t, work, m("audit", "list", "--module", mod, "--json", "--from", "3", "--limit", "2")...))
		if len(page) != 2 || page[0].Seq != 3 || page[1].Seq != 4 {
			t.Errorf("audit list --from 3 --limit 2: %+v", page)
		}
		r = mustRun(t, work, m("audit", "list", "--module", mod, "--limit", "3")...)
		if !strings.Contains(r.stdout, "SEQ") || !strings.Contains(r.stdout, "init") {
			t.Errorf("audit list:\n%s", r)
		}
	})

	step("help has examples", func(t *testing.T) {
		for _, c := range [][]string{
			{"hsm"}, {"hsm", "init"}, {"hsm", "status"}, {"hsm", "activate"}, {"hsm", "seal"}, {"hsm", "keys"},
			{"hsm", "keys", "list"}, {"hsm", "keys", "generate"}, {"hsm", "keys", "destroy"}, {"hsm", "keys", "transport-key"},
			{"hsm", "reshare"}, {"hsm", "export"}, {"hsm", "import"}, {"hsm", "audit"}, {"hsm", "audit", "verify"}, {"hsm", "audit", "list"},
		} {
			r := mustRun(t, work, append(c, "--help")...)
			if !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "hsmca hsm") {
				t.Errorf("%s --help has no example:\n%s", strings.Join(c, " "), r)
			}
		}
	})

	tampers := map[string]func(t *testing.T, module string){}
	for name, f := range b.auditTampers {
		tampers[name] = f
	}
	if b.tamperAudit != nil {
		tampers["tamperAudit"] = b.tamperAudit
	}
	for name, tamper := range tampers {
		step("audit tampering is detected: "+name, func(t *testing.T) {
			copyMod := filepath.Join(t.TempDir(), "module")
			copyDir(t, mod, copyMod)
			mustRun(t, work, m("audit", "verify", "--module", copyMod)...)
			tamper(t, copyMod)
			r := mustFail(t, work, 1, []string{"audit", "hint:"}, m("audit", "verify", "--module", copyMod)...)
			if strings.Contains(r.stdout, "audit log OK") {
				t.Errorf("tampered log reported OK:\n%s", r)
			}
			r = runCLI(t, work, m("audit", "verify", "--module", copyMod, "--json")...)
			a := decodeJSON[e2eAudit](t, r)
			if r.code != 1 || a.OK || a.Error == "" {
				t.Errorf("tampered log, --json: %+v\n%s", a, r)
			}
		})
	}
}

// copyDir copies the regular files of a module directory tree.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		dst := filepath.Join(to, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o700)
		case d.Type().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, data, 0o600)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("copy module: %v", err)
	}
}
