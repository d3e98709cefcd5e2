package cli

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hostsLookup resolves names from a fixed table, standing in for a hosts
// file or DNS that maps a name where the test needs it.
func hostsLookup(hosts map[string][]string) func(context.Context, string) ([]net.IPAddr, error) {
	return func(_ context.Context, host string) ([]net.IPAddr, error) {
		addrs, ok := hosts[host]
		if !ok {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		var out []net.IPAddr
		for _, a := range addrs {
			out = append(out, net.IPAddr{IP: net.ParseIP(a)})
		}
		return out, nil
	}
}

// TestPprofAddrLoopbackOnly: --pprof-addr accepts a loopback IP, and a name
// only if every address it resolves to is loopback; it listens on the
// resolved address. Everything else is a usage error with a hint.
func TestPprofAddrLoopbackOnly(t *testing.T) {
	lookup := hostsLookup(map[string][]string{
		"localhost": {"::1", "127.0.0.1"},
		// A name that resolves to loopback and a routable address.
		"mixed": {"127.0.0.1", "192.0.2.7"},
		"empty": {},
	})
	// A hosts file or DNS that maps localhost elsewhere.
	misled := hostsLookup(map[string][]string{"localhost": {"10.0.0.5"}})
	for _, tc := range []struct {
		name, addr string
		want       string // the address to listen on; "" refused
		reason     string // what a refusal names
		lookup     func(context.Context, string) ([]net.IPAddr, error)
	}{
		{"IPv4 loopback", "127.0.0.1:6060", "127.0.0.1:6060", "", nil},
		{"other IPv4 loopback", "127.0.0.2:0", "127.0.0.2:0", "", nil},
		{"IPv6 loopback", "[::1]:6060", "[::1]:6060", "", nil},
		{"localhost resolved, IPv4 first", "localhost:6060", "127.0.0.1:6060", "", nil},
		{"every interface", "0.0.0.0:6060", "", "not a loopback address", nil},
		{"no host", ":6060", "", "no host", nil},
		{"routable IP", "10.1.2.3:6060", "", "not a loopback address", nil},
		{"no port", "127.0.0.1", "", "want HOST:PORT", nil},
		{"localhost resolving elsewhere", "localhost:6060", "", "localhost resolves to 10.0.0.5", misled},
		{"name resolving to loopback and elsewhere", "mixed:6060", "", "resolves to 192.0.2.7", nil},
		{"name resolving to nothing", "empty:6060", "", "no address", nil},
		{"unknown name", "nowhere.invalid:6060", "", "resolve nowhere.invalid", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lookup
			if tc.lookup != nil {
				l = tc.lookup
			}
			got, err := pprofListenAddr(context.Background(), tc.addr, l)
			if tc.want != "" {
				if err != nil || got != tc.want {
					t.Fatalf("pprofListenAddr(%q) = %q, %v; want %q", tc.addr, got, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("pprofListenAddr(%q) accepted, listening on %s", tc.addr, got)
			}
			var ue usageError
			var he hintError
			if !errors.As(err, &ue) || !errors.As(err, &he) || !strings.Contains(he.hint, "loopback IP") {
				t.Errorf("refusal is not a usage error with a hint: %#v", err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("refusal %q does not say %q", err, tc.reason)
			}
		})
	}
}

// TestPprofServesOnLoopback: localhost, resolved by the system, serves the
// profiles on a loopback address.
func TestPprofServesOnLoopback(t *testing.T) {
	la, err := pprofListenAddr(context.Background(), "localhost:0", net.DefaultResolver.LookupIPAddr)
	if err != nil {
		t.Fatal(err)
	}
	hs, addr, err := startPprof(la, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	host, _, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Fatalf("pprof listens on %s", addr)
	}
	resp, err := http.Get("http://" + addr + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "goroutine") {
		t.Fatalf("pprof index: HTTP %d\n%s", resp.StatusCode, b)
	}
	if hs, _, err := startPprof("localhost:0", slog.New(slog.DiscardHandler)); err == nil {
		hs.Close()
		t.Fatal("startPprof listened on a name it did not resolve")
	}
}

// TestServePprofAddrRefused: `ca serve --pprof-addr` with an address that is
// not loopback exits with the usage code and a hint before it opens anything
// (the config names a module that does not exist).
func TestServePprofAddrRefused(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "ca.yaml")
	if err := os.WriteFile(cfg, []byte("module: nowhere\nca:\n  issuers: [{name: a, certificate: a.pem, partition: p, key: k}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustFail(t, dir, ExitUsage, []string{"--pprof-addr", "only a loopback address is allowed", "hint: give a loopback IP"},
		"ca", "serve", "--config", cfg, "--pprof-addr", "0.0.0.0:6060")
}
