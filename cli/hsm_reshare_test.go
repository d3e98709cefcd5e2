package cli

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/hsm/soft"
)

// softPartition makes a soft module in a temporary directory with one
// partition "issuing" (n shares, threshold m), activated with its first m
// shares.
func softPartition(t *testing.T, n, m int) (dir string, mod *soft.Module, p hsm.Partition, shares []hsm.Share) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "module")
	mod, err := soft.Open(dir, soft.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mod.Close() })
	shares, err = mod.InitPartition(hsm.InitOptions{Partition: "issuing", Shares: n, Threshold: m})
	if err != nil {
		t.Fatal(err)
	}
	if p, err = mod.Partition("issuing"); err != nil {
		t.Fatal(err)
	}
	for _, s := range shares[:m] {
		if _, err := p.AddShare(s); err != nil {
			t.Fatal(err)
		}
	}
	return dir, mod, p, shares
}

// failingShareSet is a share set of n whose last share cannot be written:
// its custodian's age recipient is invalid (flag validation would refuse
// it; here it stands for any failure after some files are written).
func failingShareSet(t *testing.T, out string, n, m int) shareSet {
	t.Helper()
	ss := shareSet{N: n, M: m, Out: out}
	for i := range n {
		c := custodian{Name: string(rune('a' + i))}
		name := c.Name + ".txt"
		if i == n-1 {
			c.Recipient, name = "age1notarecipient", c.Name+".age"
		}
		ss.Custodians = append(ss.Custodians, c)
		ss.Names = append(ss.Names, name)
	}
	if err := ss.prepare(); err != nil {
		t.Fatal(err)
	}
	return ss
}

// A re-share whose share files cannot all be written leaves the partition
// at its current generation (the old shares still work, after a restart
// too) and removes the new files.
func TestHSMReshareWriteFailureKeepsCurrentShares(t *testing.T) {
	dir, mod, p, old := softPartition(t, 3, 2)
	out := filepath.Join(t.TempDir(), "new")
	ss := failingShareSet(t, out, 4, 2)
	_, err := reshare(p, ss)
	if err == nil {
		t.Fatal("reshare with an unwritable share succeeded")
	}
	var h hintError
	if !errors.As(err, &h) || !strings.Contains(h.hint, "current shares still work") {
		t.Fatalf("error %v, hint %q", err, h.hint)
	}
	if left, _ := os.ReadDir(out); len(left) != 0 {
		t.Fatalf("files left in --out: %v", left)
	}
	if st, _ := p.Status(); st.Generation != 1 {
		t.Fatalf("generation %d after a failed reshare", st.Generation)
	}
	mod.Close()
	mod, err = soft.Open(dir, soft.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	p, _ = mod.Partition("issuing")
	for _, s := range old[1:] {
		if _, err := p.AddShare(s); err != nil {
			t.Fatalf("old share %d after a failed reshare: %v", s.Index, err)
		}
	}
	if st, _ := p.Status(); st.State != hsm.StateActive {
		t.Fatalf("old shares after a failed reshare: %+v", st)
	}
}

// A successful re-share writes every file (0600, complete, no staging
// left) before the new set is in force, and the files activate.
func TestHSMReshareWritesCompleteSet(t *testing.T) {
	dir, mod, p, _ := softPartition(t, 3, 2)
	out := filepath.Join(t.TempDir(), "new")
	set := shareSetFlags{shares: 4, threshold: 3, out: out}
	ss, err := set.validate()
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
	entries, _ := os.ReadDir(out)
	if len(entries) != 4 {
		t.Fatalf("--out holds %v", entries)
	}
	mod.Close()
	mod, err = soft.Open(dir, soft.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	p, _ = mod.Partition("issuing")
	activateFromFiles(t, p, ss.Paths[1:])
	if st, _ := p.Status(); st.State != hsm.StateActive || st.Generation != 2 {
		t.Fatalf("new shares: %+v", st)
	}
}

// inPlacePartition hides the soft partition's two-step re-share, as a
// backend without one (pkcs11) would.
type inPlacePartition struct{ hsm.Partition }

// Where the new set is in force before the files are written, a failed
// write says how many new shares exist and what that allows, rather than
// send custodians to "reshare again" with too few.
func TestHSMReshareInPlaceWriteFailureHint(t *testing.T) {
	tests := []struct {
		name       string
		n, m       int
		wantInHint string
	}{
		{"enough written", 3, 2, "2 of the 3 new shares were written and 2 activate the partition: activate with them"},
		{"too few written", 3, 3, "2 of the 3 new shares were written and 3 activate the partition: too few"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, p, _ := softPartition(t, 2, 2)
			ss := failingShareSet(t, filepath.Join(t.TempDir(), "new"), tc.n, tc.m)
			_, err := reshare(inPlacePartition{p}, ss)
			var h hintError
			if !errors.As(err, &h) || !strings.Contains(h.hint, tc.wantInHint) {
				t.Fatalf("error %v\nhint %q\nwant it to contain %q", err, h.hint, tc.wantInHint)
			}
		})
	}
}

// writeNewFile never shows a partly written file under its name: the name
// appears only once the whole content is there.
func TestHSMWriteNewFileNeverShowsPartialFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big")
	data := bytes.Repeat([]byte("0123456789abcdef"), 2<<20) // 32 MiB
	done := make(chan error, 1)
	go func() { done <- writeNewFile(path, data) }()
	deadline := time.Now().Add(time.Minute)
	for {
		fi, err := os.Stat(path)
		if err == nil {
			if fi.Size() != int64(len(data)) {
				t.Fatalf("%s visible with %d of %d bytes", path, fi.Size(), len(data))
			}
			break
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			done <- nil
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("file never appeared")
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkMode0600(t, path)
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("directory holds %v", entries)
	}
}

// tinyTmpfs mounts an 8 KiB tmpfs (two files' worth) for a test, or skips
// the test where it cannot (not root, no mount).
func tinyTmpfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := filepath.Join(t.TempDir(), "tiny")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, dir, "size=8k,mode=0700")
	return dir
}

// mountTmpfs mounts a tmpfs with options opts on dir until the test ends,
// or skips the test where it cannot.
func mountTmpfs(t *testing.T, dir, opts string) {
	t.Helper()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs -o %s: %v: %s", opts, err, out)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// activateFromFiles presents the text shares in paths to p, checking each
// file is 0600.
func activateFromFiles(t *testing.T, p hsm.Partition, paths []string) {
	t.Helper()
	for _, path := range paths {
		checkMode0600(t, path)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s, err := hsm.DecodeText(string(data))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.AddShare(s); err != nil {
			t.Fatal(err)
		}
	}
}

// On a full disk, writeNewFile leaves neither the file nor its temporary
// behind.
func TestHSMWriteNewFileDiskFull(t *testing.T) {
	dir := tinyTmpfs(t)
	path := filepath.Join(dir, "big")
	if err := writeNewFile(path, bytes.Repeat([]byte{'x'}, 64<<10)); err == nil {
		t.Fatal("a 64 KiB file fit into 8 KiB")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left behind: %v", entries)
	}
}

// The reviewer's scenario end to end: `hsm reshare` into a directory that
// fills up after two files. The command fails, writes nothing, and the old
// shares still activate the partition.
func TestHSMReshareDiskFull(t *testing.T) {
	tiny := tinyTmpfs(t)
	work := t.TempDir()
	mod := filepath.Join(work, "module")
	mustRun(t, work, "hsm", "init", "--module", mod, "--partition", "issuing", "--shares", "3", "--threshold", "2", "--out", filepath.Join(work, "shares"))
	old := shareArgs(filepath.Join(work, "shares", "share-1.txt"), filepath.Join(work, "shares", "share-2.txt"))
	mustRun(t, work, args("hsm", "keys", "generate", "--module", mod, "--partition", "issuing", "--label", "k1", old)...)
	mustFail(t, work, 1, []string{"nothing changed", "current shares still work"},
		args("hsm", "reshare", "--module", mod, "--partition", "issuing", "--shares", "5", "--threshold", "3", "--out", tiny, old)...)
	if entries, _ := os.ReadDir(tiny); len(entries) != 0 {
		t.Fatalf("left in --out: %v", entries)
	}
	mustRun(t, work, args("hsm", "activate", "--module", mod, old)...)
	r := mustRun(t, work, "hsm", "status", "--module", mod, "--json")
	if st := decodeJSON[e2eStatus](t, r); st.Partitions[0].Generation != 1 {
		t.Fatalf("generation after a failed reshare: %+v", st.Partitions[0])
	}
}

// `hsm init` into a directory that fills up after two of three files:
// the partition exists, and the hint says that the two written shares
// (threshold 2) activate it.
func TestHSMInitDiskFullHint(t *testing.T) {
	tiny := tinyTmpfs(t)
	work := t.TempDir()
	mod := filepath.Join(work, "module")
	mustFail(t, work, 1, []string{"2 of its 3 shares were written and 2 activate it: activate with them"},
		"hsm", "init", "--module", mod, "--partition", "issuing", "--shares", "3", "--threshold", "2", "--out", tiny)
	mustRun(t, work, args("hsm", "activate", "--module", mod, shareArgs(filepath.Join(tiny, "share-1.txt"), filepath.Join(tiny, "share-2.txt")))...)
}
