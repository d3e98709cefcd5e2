package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"filippo.io/age"

	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/hsm/soft"
)

// withoutHardLinks makes linkFile fail as link(2) does on vfat and exFAT,
// where custodians often keep their shares, for the rest of the test.
func withoutHardLinks(t *testing.T) {
	t.Helper()
	prev := linkFile
	linkFile = func(oldname, newname string) error {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: syscall.EPERM}
	}
	t.Cleanup(func() { linkFile = prev })
}

// readOnlyDir makes dir, a directory no file can be created in: mode 0500,
// or for root (whom modes do not stop) a read-only tmpfs; it skips the
// test where it can do neither.
func readOnlyDir(t *testing.T, dir string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		return
	}
	mountTmpfs(t, dir, "ro,size=64k")
}

// Without hard links writeNewFile writes the file under its name (0600,
// complete, nothing else left) and still never replaces a file.
func TestHSMWriteNewFileWithoutHardLinks(t *testing.T) {
	withoutHardLinks(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "share-1.txt")
	data := bytes.Repeat([]byte("share "), 1000)
	if err := writeNewFile(path, data); err != nil {
		t.Fatal(err)
	}
	checkMode0600(t, path)
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatalf("%s holds %d bytes, want %d", path, len(got), len(data))
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("directory holds %v", entries)
	}
	if err := writeNewFile(path, []byte("other")); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second write: %v", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("the existing file was replaced")
	}
}

// Without hard links the staged files are written to their final names
// from the staged copies; if one name is taken meanwhile, the ones placed
// are removed again and the file under the taken name is left alone.
func TestHSMStagedFilesPlaceWithoutHardLinks(t *testing.T) {
	tests := []struct {
		name  string
		taken string // a final name that appears after staging
	}{
		{"all placed", ""},
		{"last name taken", "c.txt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			withoutHardLinks(t)
			dir := t.TempDir()
			names := []string{"a.txt", "b.txt", "c.txt"}
			var finals []string
			for _, n := range names {
				finals = append(finals, filepath.Join(dir, n))
			}
			files, err := stageFiles(dir, finals)
			if err != nil {
				t.Fatal(err)
			}
			for i, p := range files.paths() {
				if err := writeNewFile(p, []byte("content of "+names[i])); err != nil {
					t.Fatal(err)
				}
			}
			if tc.taken != "" {
				if err := os.WriteFile(filepath.Join(dir, tc.taken), []byte("someone else's"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			err = files.place()
			if tc.taken == "" {
				if err != nil {
					t.Fatal(err)
				}
				for i, p := range finals {
					checkMode0600(t, p)
					if got, _ := os.ReadFile(p); string(got) != "content of "+names[i] {
						t.Fatalf("%s holds %q", p, got)
					}
				}
				if entries, _ := os.ReadDir(dir); len(entries) != len(names) {
					t.Fatalf("directory holds %v (staging left?)", entries)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "already exists") {
				t.Fatalf("place with %s taken: %v", tc.taken, err)
			}
			for _, n := range names {
				_, serr := os.Stat(filepath.Join(dir, n))
				if n != tc.taken && serr == nil {
					t.Errorf("%s left in place after a failed place", n)
				}
			}
			if got, _ := os.ReadFile(filepath.Join(dir, tc.taken)); string(got) != "someone else's" {
				t.Fatal("the file that appeared was replaced")
			}
			if err := files.discard(); err != nil {
				t.Fatal(err)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Fatalf("after discard the directory holds %v", entries)
			}
		})
	}
}

// The reviewer's case: a re-share whose --out has no hard links. The new
// set is written and put in force, and it activates after a restart.
func TestHSMReshareWithoutHardLinks(t *testing.T) {
	withoutHardLinks(t)
	dir, mod, p, _ := softPartition(t, 3, 2)
	out := filepath.Join(t.TempDir(), "new")
	ss, err := shareSetFlags{shares: 3, threshold: 2, out: out}.validate()
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.prepare(); err != nil {
		t.Fatal(err)
	}
	gen, err := reshare(p, ss)
	if err != nil || gen != 2 {
		t.Fatalf("reshare: generation %d, %v", gen, err)
	}
	if entries, _ := os.ReadDir(out); len(entries) != 3 {
		t.Fatalf("--out holds %v", entries)
	}
	mod.Close()
	mod, err = soft.Open(dir, soft.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	p, _ = mod.Partition("issuing")
	activateFromFiles(t, p, ss.Paths[:2])
	if st, _ := p.Status(); st.State != hsm.StateActive || st.Generation != 2 {
		t.Fatalf("new shares: %+v", st)
	}
}

// A --out that takes no files stops init before a module or partition
// exists, and export before the key is exported (and audited as such).
func TestHSMUnwritableOutRefusedBeforeTheModuleChanges(t *testing.T) {
	work := t.TempDir()
	ro := filepath.Join(work, "ro")
	readOnlyDir(t, ro)

	mod := filepath.Join(work, "module")
	mustFail(t, work, 1, []string{"cannot write", "hint:"},
		"hsm", "init", "--module", mod, "--partition", "issuing", "--shares", "1", "--threshold", "1", "--out", ro)
	if _, err := os.Stat(mod); err == nil {
		t.Fatal("init with an unwritable --out created the module")
	}

	mustRun(t, work, "hsm", "init", "--module", mod, "--partition", "issuing", "--shares", "1", "--threshold", "1", "--out", filepath.Join(work, "shares"))
	quorum := shareArgs(filepath.Join(work, "shares", "share-1.txt"))
	mustRun(t, work, args("hsm", "keys", "generate", "--module", mod, "--partition", "issuing", "--label", "k1", "--exportable", quorum)...)
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	mustFail(t, work, 1, []string{"cannot write"}, args("hsm", "export", "--module", mod, "--partition", "issuing", "--key", "k1",
		"--to", id.Recipient().String(), "--out", filepath.Join(ro, "k1.wrapped"), quorum)...)
	r := mustRun(t, work, "hsm", "audit", "list", "--module", mod, "--json")
	if strings.Contains(r.stdout, `"export"`) {
		t.Fatalf("an export that could not be written was audited:\n%s", r.stdout)
	}
}
