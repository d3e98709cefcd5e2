package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runMain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestLoadtestUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"remote refused", []string{"loadtest", "acme", "--url", "https://acme.example.com/dir", "--orders", "1"}, "not a loopback host"},
		{"no bound", []string{"loadtest", "acme", "--url", "https://127.0.0.1:1/dir"}, "set a number of orders"},
		{"bad challenge", []string{"loadtest", "acme", "--url", "https://127.0.0.1:1/dir", "--orders", "1", "--challenge", "x"}, "unknown challenge"},
		{"unknown flag", []string{"loadtest", "acme", "--nope"}, "unknown flag"},
		{"peers needs runs", []string{"loadtest", "peers"}, "--runs is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runMain(t, tc.args...)
			if code != ExitUsage || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, ExitUsage, tc.want)
			}
		})
	}
}

func TestLoadtestPeers(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"hsmca_c16_r1.json":  `{"clients":16,"orders":200,"orders_per_sec":20,"p99_ms":900,"errors":{},"stopped":"duration"}`,
		"pebble_c16_r1.json": `{"clients":16,"orders":100,"orders_per_sec":10,"p99_ms":400,"errors":{},"stopped":"duration"}`,
		"pebble_c16_r1.rss":  "2048\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, svg := filepath.Join(dir, "peers.json"), filepath.Join(dir, "peers.svg")
	code, stdout, stderr := runMain(t, "loadtest", "peers", "--runs", dir, "--out", out, "--svg", svg)
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "2.00x") {
		t.Errorf("table lacks the hsmca/pebble ratio 2.00x:\n%s", stdout)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Summary []struct {
			Server    string `json:"server"`
			PeakRSSKB int64  `json:"peak_rss_kb"`
		} `json:"summary"`
	}
	if err := json.Unmarshal(b, &res); err != nil || len(res.Summary) != 2 {
		t.Fatalf("peers.json: %v %s", err, b)
	}
	if s, err := os.ReadFile(svg); err != nil || !bytes.HasPrefix(s, []byte("<svg")) {
		t.Errorf("chart: %v %.40q", err, s)
	}
}

// TestLoadtestCPUProfile: --cpuprofile writes the generator's CPU profile
// (gzip-compressed protobuf, as go tool pprof reads it) even when the run
// fails, here because nothing listens at the directory URL.
func TestLoadtestCPUProfile(t *testing.T) {
	prof := filepath.Join(t.TempDir(), "client.pprof")
	code, _, stderr := runMain(t, "loadtest", "acme", "--url", "https://127.0.0.1:1/dir", "--orders", "1",
		"--max-time", "5s", "--cpuprofile", prof)
	if code == 0 {
		t.Fatalf("a run against a closed port succeeded; stderr %q", stderr)
	}
	b, err := os.ReadFile(prof)
	if err != nil {
		t.Fatalf("no profile written: %v (stderr %q)", err, stderr)
	}
	if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Fatalf("profile is not gzip data: % x", b[:min(len(b), 8)])
	}
}
