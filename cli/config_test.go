package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// configCA is the smallest ca section that validates.
const configCA = "module: m\nca:\n  issuers: [{name: a, certificate: a.pem, partition: p, key: k}]\n"

// TestConfigSecondDocument: ca.yaml is one YAML document; anything after
// a "---" that ends it is refused, not silently ignored.
func TestConfigSecondDocument(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		ok         bool
	}{
		{"one document", configCA, true},
		{"leading marker", "---\n" + configCA, true},
		{"end marker", configCA + "...\n", true},
		{"second document", configCA + "---\nserver:\n  https_adr: 0.0.0.0:443\n  tls_key: /etc/evil\n", false},
		{"second document of known fields", configCA + "---\nserver:\n  https_addr: 0.0.0.0:443\n", false},
		// A trailing "---" with nothing, or only comments, after it carries
		// no settings; such files loaded before the check existed.
		{"empty second document", configCA + "---\n", true},
		{"comments after the marker", configCA + "---\n# nothing here\n", true},
		{"empty documents, then one with content", configCA + "---\n---\nacme:\n  base_url: https://x/\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeConfig([]byte(tc.body))
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && (err == nil || !strings.Contains(err.Error(), "second YAML document")) {
				t.Fatalf("DecodeConfig: %v, want the second document refused", err)
			}
		})
	}
}

// TestConfigNegativeLimits: a negative duration or size in the server
// section is refused at load, naming the field, instead of switching a
// timeout (or the CRL schedule) off.
func TestConfigNegativeLimits(t *testing.T) {
	for _, field := range []string{"read_header_timeout: -1s", "read_timeout: -1s", "write_timeout: -1m",
		"idle_timeout: -2m", "retry_after: -5s", "crl_interval: -1h", "max_header_bytes: -1", "max_body_bytes: -1"} {
		t.Run(field, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ca.yaml")
			if err := os.WriteFile(path, []byte(configCA+"server:\n  "+field+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(path)
			name := "server." + strings.Split(field, ":")[0]
			if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "negative") {
				t.Fatalf("LoadConfig: %v, want %s refused as negative", err, name)
			}
		})
	}
	path := filepath.Join(t.TempDir(), "ca.yaml")
	if err := os.WriteFile(path, []byte(configCA+"server:\n  read_header_timeout: 0s\n  max_body_bytes: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(path); err != nil {
		t.Fatalf("zero values (the defaults): %v", err)
	}
}

// TestServeExitCodes: cobra's own usage errors exit 2; a runtime error
// whose text holds "invalid argument" (EINVAL from the kernel) exits 1.
func TestServeExitCodes(t *testing.T) {
	run := func(args ...string) (int, string) {
		var out, errb bytes.Buffer
		code := Main(args, strings.NewReader(""), &out, &errb)
		return code, errb.String()
	}
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"unknown flag", []string{"ca", "serve", "--nope"}, ExitUsage},
		{"unknown shorthand", []string{"ca", "serve", "-z"}, ExitUsage},
		{"flag without value", []string{"ca", "serve", "--config"}, ExitUsage},
		{"stray argument", []string{"ca", "serve", "extra"}, ExitUsage},
		{"unknown command", []string{"nope"}, ExitUsage},
		{"too many arguments", []string{"ca", "serve", "a", "b"}, ExitUsage},
		// connect(2) on a path longer than sun_path: EINVAL.
		{"EINVAL from a socket", []string{"hsm", "status", "--socket", "/tmp/" + strings.Repeat("x", 200)}, ExitFail},
		// open(2) of a name with a NUL byte: EINVAL.
		{"EINVAL from a config path", []string{"ca", "serve", "--config", "ca\x00.yaml"}, ExitFail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := run(tc.args...)
			if code != tc.want || !strings.Contains(stderr, "hsmca: error:") {
				t.Fatalf("exit %d, want %d:\n%q", code, tc.want, stderr)
			}
			if tc.want == ExitFail && !strings.Contains(stderr, "invalid argument") {
				t.Fatalf("the case no longer produces EINVAL:\n%q", stderr)
			}
		})
	}
	for _, err := range []error{
		fmt.Errorf("server: admin socket: listen unix /x: bind: %w", syscall.EINVAL),
		fmt.Errorf("ct: the log list names no log that accepts submissions"),
		syscall.EINVAL,
	} {
		if isCobraUsage(err) {
			t.Errorf("isCobraUsage(%q) = true", err)
		}
	}
}
