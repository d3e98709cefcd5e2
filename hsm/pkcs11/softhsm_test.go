//go:build cgo

package pkcs11

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmca/hsmca/hsm"
)

// SoftHSM2 is process-global: the library reads SOFTHSM2_CONF and its token
// directory once, at C_Initialize, and crypto11 loads each library once per
// process. So TestMain creates one token directory for the whole test
// binary, with one token per test (tests never share a token), before any
// test loads the library.

// Token labels, one per test that needs a token.
const (
	tokLifecycle = "hsmca-lifecycle"
	tokLockout   = "hsmca-lockout"
	tokPerOp     = "hsmca-perop"
	tokGone      = "hsmca-gone"
	tokBadPIN    = "hsmca-badpin"
	tokReshare   = "hsmca-reshare"
	tokBench     = "hsmca-bench"
	tokDirect    = "hsmca-direct"
	tokRace      = "hsmca-race"
	tokInitFail  = "hsmca-initfail"
	// reshare_test.go
	tokReshareEpoch      = "hsmca-epoch"
	tokReshareIncomplete = "hsmca-incomplete"
	// TestLockoutRunsInModuleTime, one token per case.
	tokModTimeSame = "hsmca-modtime-same"
	tokModTimeFwd  = "hsmca-modtime-forward"
	tokModTimeBack = "hsmca-modtime-back"
)

var allTokens = []string{tokLifecycle, tokLockout, tokPerOp, tokGone, tokBadPIN, tokReshare, tokBench, tokDirect, tokRace, tokInitFail, tokReshareEpoch, tokReshareIncomplete, tokModTimeSame, tokModTimeFwd, tokModTimeBack}

const (
	userPIN = "87654321"
	soPIN   = "12345678"
)

var (
	testRoot     string // temporary directory of the whole test binary
	softhsmLib   string // path of libsofthsm2.so, "" when unavailable
	softhsmSkip  string // why SoftHSM tests skip
	softhsmError string // why SoftHSM tests fail (setup broke)
)

var libCandidates = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hsmca-pkcs11-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testRoot = dir
	setupSoftHSM(dir)
	code := m.Run()
	closeBenchFixture()
	os.RemoveAll(dir)
	os.Exit(code)
}

func setupSoftHSM(dir string) {
	missing := func(what string) {
		msg := what + " not found; install SoftHSM2 and opensc (make deps)"
		if os.Getenv("CI") != "" {
			softhsmError = msg + " (CI is set, so this is a failure)"
		} else {
			softhsmSkip = msg
		}
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		missing("softhsm2-util")
		return
	}
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		missing("pkcs11-tool")
		return
	}
	for _, c := range libCandidates {
		if _, err := os.Stat(c); err == nil {
			softhsmLib = c
			break
		}
	}
	if softhsmLib == "" {
		missing("libsofthsm2.so")
		return
	}
	tokdir := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokdir, 0o700); err != nil {
		softhsmError = err.Error()
		return
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := "directories.tokendir = " + tokdir + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		softhsmError = err.Error()
		return
	}
	os.Setenv("SOFTHSM2_CONF", conf)
	for _, label := range allTokens {
		out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", soPIN, "--pin", userPIN).CombinedOutput()
		if err != nil {
			softhsmError = fmt.Sprintf("softhsm2-util --init-token %s: %v: %s", label, err, out)
			return
		}
	}
}

// needSoftHSM skips or fails t when SoftHSM2 is not usable.
func needSoftHSM(tb testing.TB) {
	tb.Helper()
	if softhsmError != "" {
		tb.Fatal("SoftHSM2 setup: " + softhsmError)
	}
	if softhsmSkip != "" {
		tb.Skip("SoftHSM2 tests skipped: " + softhsmSkip)
	}
}

// tokenURI names one test token.
func tokenURI(label string) string {
	return (&URI{Token: label, ModulePath: softhsmLib}).String()
}

// initModule creates a module in a temp dir with one partition on token.
func initModule(tb testing.TB, token string, opts hsm.InitOptions, mo Options) (*Module, []hsm.Share, string) {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "module")
	mod, shares, err := InitModule(dir, mo, opts, tokenURI(token), []byte(userPIN))
	if err != nil {
		tb.Fatalf("InitModule on %s: %v", token, err)
	}
	return mod.(*Module), shares, dir
}

// pkcs11Tool runs pkcs11-tool against the test token label and returns
// its combined output.
func pkcs11Tool(token string, args ...string) (string, error) {
	all := append([]string{"--module", softhsmLib, "--token-label", token}, args...)
	out, err := exec.Command("pkcs11-tool", all...).CombinedOutput()
	return string(out), err
}

// activate presents shares and returns the final status.
func activate(tb testing.TB, p hsm.Partition, shares ...hsm.Share) hsm.PartitionStatus {
	tb.Helper()
	var st hsm.PartitionStatus
	var err error
	for _, s := range shares {
		st, err = p.AddShare(s)
		if err != nil {
			tb.Fatalf("AddShare(%d): %v", s.Index, err)
		}
	}
	return st
}

// objects splits pkcs11-tool --list-objects output into blocks by object.
func objects(out string) []string {
	var blocks []string
	var cur strings.Builder
	for _, line := range strings.Split(out, "\n") {
		if line != "" && !strings.HasPrefix(line, " ") && cur.Len() > 0 {
			blocks = append(blocks, cur.String())
			cur.Reset()
		}
		cur.WriteString(line + "\n")
	}
	if cur.Len() > 0 {
		blocks = append(blocks, cur.String())
	}
	return blocks
}
