package cli

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"filippo.io/age"
)

// The end-to-end check of the hsm commands on a file system without hard
// links (vfat, exFAT): the real binary runs under a seccomp filter that
// makes link(2) and linkat(2) fail with EPERM, as those file systems do.
// The test binary itself installs the filter (TestHSMNoLinkExec) and then
// executes hsmca, which inherits it.

const noLinkBinEnv = "HSMCA_TEST_NOLINK_BIN"

// noLinkUnavailable is the helper's exit status when the kernel or a
// sandbox refuses the seccomp filter.
const noLinkUnavailable = 77

// runNoLink runs the hsmca binary with hard links refused, in dir.
func runNoLink(t *testing.T, dir string, hsmcaArgs ...string) cliResult {
	t.Helper()
	r := runCommand(t, dir, nil, hsmcaArgs, func(ctx context.Context) *exec.Cmd {
		cmd := exec.CommandContext(ctx, os.Args[0], append([]string{"-test.run=^TestHSMNoLinkExec$", "--"}, hsmcaArgs...)...)
		cmd.Env = append(os.Environ(), noLinkBinEnv+"="+hsmcaBinary(t))
		return cmd
	})
	if r.code == noLinkUnavailable && strings.Contains(r.stderr, "nolink: cannot install the seccomp filter") {
		t.Skipf("no seccomp here: %s", strings.TrimSpace(r.stderr))
	}
	return r
}

func mustRunNoLink(t *testing.T, dir string, hsmcaArgs ...string) cliResult {
	t.Helper()
	r := runNoLink(t, dir, hsmcaArgs...)
	if r.code != 0 {
		t.Fatalf("want exit 0:\n%s", r)
	}
	return r
}

// TestHSMNoLinkExec is not a test: run by runNoLink, it installs the
// filter and executes $HSMCA_TEST_NOLINK_BIN with the arguments after --.
func TestHSMNoLinkExec(t *testing.T) {
	bin := os.Getenv(noLinkBinEnv)
	if bin == "" {
		t.Skip("helper process of runNoLink")
	}
	runtime.LockOSThread() // the filter is the thread's, and exec keeps it
	if err := refuseHardLinks(); err != nil {
		// A sandbox without seccomp: runNoLink skips the test.
		os.Stderr.WriteString("nolink: cannot install the seccomp filter: " + err.Error() + "\n")
		os.Exit(noLinkUnavailable)
	}
	t.Fatal(syscall.Exec(bin, append([]string{bin}, flag.Args()...), os.Environ()))
}

// refuseHardLinks installs a seccomp filter on the calling thread under
// which link(2) and linkat(2) fail with EPERM.
func refuseHardLinks() error {
	type sockFilter struct {
		code uint16
		jt   uint8
		jf   uint8
		k    uint32
	}
	type sockFprog struct {
		len    uint16
		filter *sockFilter
	}
	const (
		ldW          = 0x20 // BPF_LD|BPF_W|BPF_ABS
		jeqK         = 0x15 // BPF_JMP|BPF_JEQ|BPF_K
		retK         = 0x06 // BPF_RET|BPF_K
		allow        = 0x7fff0000
		errno        = 0x00050000
		auditArchX86 = 0xc000003e
		sysLinkat    = 265
		setModeFilt  = 1   // SECCOMP_SET_MODE_FILTER
		sysSeccomp   = 317 // amd64
		prSetNoNewPr = 38  // PR_SET_NO_NEW_PRIVS
	)
	prog := []sockFilter{
		{ldW, 0, 0, 4}, // seccomp_data.arch
		{jeqK, 1, 0, auditArchX86},
		{retK, 0, 0, allow},
		{ldW, 0, 0, 0}, // seccomp_data.nr
		{jeqK, 2, 0, syscall.SYS_LINK},
		{jeqK, 1, 0, sysLinkat},
		{retK, 0, 0, allow},
		{retK, 0, 0, errno | uint32(syscall.EPERM)},
	}
	fp := sockFprog{len: uint16(len(prog)), filter: &prog[0]}
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, prSetNoNewPr, 1, 0, 0, 0, 0); e != 0 {
		return e
	}
	if _, _, e := syscall.RawSyscall(sysSeccomp, setModeFilt, 0, uintptr(unsafe.Pointer(&fp))); e != 0 {
		return e
	}
	return nil
}

// hsm init, export and reshare write their files where link(2) fails with
// EPERM: the shares and the wrapped key are written, the new share set
// activates, and no temporary file or staging directory is left.
func TestHSMWithoutHardLinksEndToEnd(t *testing.T) {
	work := t.TempDir()
	mod := filepath.Join(work, "module")
	shares := filepath.Join(work, "shares")
	mustRunNoLink(t, work, "hsm", "init", "--module", mod, "--partition", "issuing", "--shares", "3", "--threshold", "2", "--out", shares)
	old := shareArgs(filepath.Join(shares, "share-1.txt"), filepath.Join(shares, "share-3.txt"))
	mustRunNoLink(t, work, args("hsm", "keys", "generate", "--module", mod, "--partition", "issuing", "--label", "k1", "--exportable", old)...)

	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	wrapped := filepath.Join(work, "k1.wrapped")
	mustRunNoLink(t, work, args("hsm", "export", "--module", mod, "--partition", "issuing", "--key", "k1", "--to", id.Recipient().String(), "--out", wrapped, old)...)
	checkMode0600(t, wrapped)

	fresh := filepath.Join(work, "fresh")
	mustRunNoLink(t, work, args("hsm", "reshare", "--module", mod, "--partition", "issuing", "--shares", "2", "--threshold", "2", "--out", fresh, old)...)
	mustRun(t, work, args("hsm", "activate", "--module", mod, shareArgs(filepath.Join(fresh, "share-1.txt"), filepath.Join(fresh, "share-2.txt")))...)

	for _, d := range []string{shares, fresh, work} {
		entries, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("%s left in %s", e.Name(), d)
			}
		}
	}
	for _, p := range []string{filepath.Join(shares, "share-2.txt"), filepath.Join(fresh, "share-2.txt")} {
		checkMode0600(t, p)
	}
}
