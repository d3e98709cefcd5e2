package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The end-to-end tests run the real hsmca binary, the way a custodian or an
// operator does. $HSMCA names a binary built already (make test sets it);
// otherwise the first test that needs one builds it once into a temporary
// directory that TestMain removes.

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// hsmcaBinary returns the path of the hsmca binary under test.
func hsmcaBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("HSMCA"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "hsmca-e2e-")
		if buildErr != nil {
			return
		}
		goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goTool); err != nil {
			goTool = "go"
		}
		buildBin = filepath.Join(buildDir, "hsmca")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool, "build", "-o", buildBin, "github.com/hsmca/hsmca/cmd/hsmca")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = errors.New("go build ./cmd/hsmca: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// cliResult is what one run of the binary produced.
type cliResult struct {
	args   []string
	stdout string
	stderr string
	code   int
}

func (r cliResult) String() string {
	return "hsmca " + quoteArgs(r.args) + "\nexit " + strconv.Itoa(r.code) + "\n--- stdout\n" + r.stdout + "--- stderr\n" + r.stderr
}

// runCLI runs the binary in dir with args and no stdin, bounded in time.
func runCLI(t testing.TB, dir string, args ...string) cliResult {
	t.Helper()
	return runCLIStdin(t, dir, nil, args...)
}

// runCLIStdin is runCLI with stdin.
func runCLIStdin(t testing.TB, dir string, stdin []byte, args ...string) cliResult {
	t.Helper()
	return runCommand(t, dir, stdin, args, func(ctx context.Context) *exec.Cmd {
		return exec.CommandContext(ctx, hsmcaBinary(t), args...)
	})
}

// runCommand runs the command newCmd makes in dir with stdin, bounded in
// time, and reports it as a run of hsmca with args.
func runCommand(t testing.TB, dir string, stdin []byte, args []string, newCmd func(context.Context) *exec.Cmd) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := newCmd(ctx)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run hsmca %s: %v", quoteArgs(args), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("hsmca %s did not finish within 2 minutes", quoteArgs(args))
	}
	return r
}

// mustRun runs the binary and fails the test unless it exits 0.
func mustRun(t testing.TB, dir string, args ...string) cliResult {
	t.Helper()
	r := runCLI(t, dir, args...)
	if r.code != 0 {
		t.Fatalf("want exit 0:\n%s", r)
	}
	return r
}

// mustFail runs the binary and fails the test unless it exits with code
// and prints every one of want on stderr.
func mustFail(t testing.TB, dir string, code int, want []string, args ...string) cliResult {
	t.Helper()
	r := runCLI(t, dir, args...)
	if r.code != code {
		t.Fatalf("want exit %d:\n%s", code, r)
	}
	for _, w := range want {
		if !bytes.Contains([]byte(r.stderr), []byte(w)) {
			t.Fatalf("stderr lacks %q:\n%s", w, r)
		}
	}
	return r
}

func quoteArgs(args []string) string {
	var b bytes.Buffer
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(shellQuote(a))
	}
	return b.String()
}
