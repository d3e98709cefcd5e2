package loadtest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer collects a child process's output for failure messages.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// pebbleBinary returns bin/peers/pebble, or skips (fails in CI) when it is
// missing: `make deps` installs it.
func pebbleBinary(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "bin", "peers", "pebble"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pebble not found at %s; `make deps` (scripts/deps.sh) installs it", p)
		}
		t.Skipf("pebble not found at %s; run `make deps` (scripts/deps.sh) to install it", p)
	}
	return p
}

// freePort returns a port that was free on 127.0.0.1 for both TCP and UDP
// a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		ln.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no free port found")
	return 0
}

// writeListenerCert writes a self-signed certificate for 127.0.0.1 and
// localhost, and its key (0600), into dir.
func writeListenerCert(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "loadtest pebble listener"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// pebble is a running Pebble on loopback.
type pebble struct {
	url, caBundle     string
	httpPort, tlsPort int
	dnsAddr           string
	log               *lockedBuffer
}

// startPebble runs bin/peers/pebble with testdata/pebble-config.json
// rewritten to free loopback ports, validating against a stub DNS at
// p.dnsAddr (which the load generator starts).
func startPebble(t *testing.T, env ...string) *pebble {
	t.Helper()
	bin := pebbleBinary(t)
	dir := t.TempDir()
	raw, err := os.ReadFile(filepath.Join("testdata", "pebble-config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := writeListenerCert(t, dir)
	p := &pebble{caBundle: certPath, httpPort: freePort(t), tlsPort: freePort(t), log: &lockedBuffer{}}
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	p.dnsAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	p.url = "https://" + listen + "/dir"
	pc := cfg["pebble"]
	pc["listenAddress"] = listen
	pc["certificate"] = certPath
	pc["privateKey"] = keyPath
	pc["httpPort"] = p.httpPort
	pc["tlsPort"] = p.tlsPort
	out, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(cfgPath, out, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-config", cfgPath, "-dnsserver", p.dnsAddr)
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("pebble output:\n%s", p.log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			return p
		}
		select {
		case <-exited:
			t.Fatalf("pebble exited early:\n%s", p.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble did not listen on %s within 30s:\n%s", listen, p.log.String())
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, not synchronising
	}
}

func TestPebble(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Pebble")
	}
	for _, tc := range []struct {
		name      string
		challenge string
		keyType   string
		clients   int
		orders    int
		names     int
	}{
		{"http-01", HTTP01, "ecdsa-p256", 4, 12, 1},
		{"tls-alpn-01", TLSALPN01, "ecdsa-p256", 2, 4, 2},
		{"dns-01 rsa", DNS01, "rsa-2048", 2, 4, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startPebble(t)
			var progress lockedBuffer
			rep, err := Run(context.Background(), Config{
				URL:           p.url,
				Clients:       tc.clients,
				Orders:        tc.orders,
				NamesPerOrder: tc.names,
				KeyType:       tc.keyType,
				Challenge:     tc.challenge,
				HTTPPort:      p.httpPort,
				TLSPort:       p.tlsPort,
				DNSAddr:       p.dnsAddr,
				CABundle:      p.caBundle,
				MaxTime:       2 * time.Minute,
			}, &progress)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Orders != tc.orders || rep.FailedOrders != 0 || rep.Unfinished != 0 || len(rep.Errors) != 0 {
				t.Fatalf("orders %d ok, %d failed, %d unfinished, errors %v (%s); want %d ok and nothing else",
					rep.Orders, rep.FailedOrders, rep.Unfinished, rep.Errors, rep.FirstError, tc.orders)
			}
			if rep.Stopped != "orders" {
				t.Errorf("stopped by %q, want orders", rep.Stopped)
			}
			if rep.Accounts != tc.clients {
				t.Errorf("accounts = %d, want %d", rep.Accounts, tc.clients)
			}
			if !(rep.P50ms > 0 && rep.P50ms <= rep.P90ms && rep.P90ms <= rep.P99ms && rep.P99ms <= rep.MaxMs) {
				t.Errorf("latencies not ordered: p50 %v p90 %v p99 %v max %v", rep.P50ms, rep.P90ms, rep.P99ms, rep.MaxMs)
			}
			if rep.OrdersPerSec <= 0 || rep.WallS <= 0 || rep.ClientCPUs <= 0 {
				t.Errorf("orders/s %v, wall %v, cpu %v: want all positive", rep.OrdersPerSec, rep.WallS, rep.ClientCPUs)
			}
			// Per order at least newOrder, authz, challenge, finalize, cert.
			if min := int64(tc.orders * 5); rep.Requests < min {
				t.Errorf("requests = %d, want at least %d", rep.Requests, min)
			}
			checkJSONKeys(t, rep)
		})
	}
}

// TestPebbleBadNonce has Pebble reject a share of nonces (a fault a real
// server produces on demand) and checks that the client retries once and
// counts what still fails under the badNonce problem type only.
func TestPebbleBadNonce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Pebble")
	}
	p := startPebble(t, "PEBBLE_WFE_NONCEREJECT=40")
	const orders = 20
	rep, err := Run(context.Background(), Config{
		URL: p.url, Clients: 2, Orders: orders, HTTPPort: p.httpPort, DNSAddr: p.dnsAddr,
		CABundle: p.caBundle, MaxTime: 2 * time.Minute,
	}, nil)
	if err != nil {
		// Registration itself may lose both tries on every account.
		if strings.Contains(err.Error(), "badNonce") {
			t.Skipf("every account lost to badNonce: %v", err)
		}
		t.Fatal(err)
	}
	t.Logf("%d ok, %d failed, errors %v, %d requests", rep.Orders, rep.FailedOrders, rep.Errors, rep.Requests)
	if rep.Orders+rep.FailedOrders != orders {
		t.Errorf("%d ok + %d failed, want %d orders in all", rep.Orders, rep.FailedOrders, orders)
	}
	if rep.Orders == 0 {
		t.Errorf("no order succeeded despite the retry: %v", rep.Errors)
	}
	for k := range rep.Errors {
		if k != problemBadNonce {
			t.Errorf("unexpected error type %q (%s)", k, rep.FirstError)
		}
	}
	if rep.FailedOrders != rep.Errors[problemBadNonce]-(rep.Clients-rep.Accounts) {
		t.Errorf("failed orders %d, badNonce errors %v", rep.FailedOrders, rep.Errors)
	}
}

// TestPebbleDuration checks that --duration ends the run on its own.
func TestPebbleDuration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Pebble")
	}
	p := startPebble(t)
	var progress lockedBuffer
	rep, err := Run(context.Background(), Config{
		URL: p.url, Clients: 2, Duration: 1500 * time.Millisecond, HTTPPort: p.httpPort, DNSAddr: p.dnsAddr,
		CABundle: p.caBundle, MaxTime: 2 * time.Minute,
	}, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Stopped != "duration" || rep.Orders == 0 || rep.FailedOrders != 0 {
		t.Errorf("stopped by %q with %d ok, %d failed (%v); want duration, >0, 0", rep.Stopped, rep.Orders, rep.FailedOrders, rep.Errors)
	}
	if !strings.Contains(progress.String(), "loadtest:") || !strings.Contains(progress.String(), "in flight") {
		t.Errorf("no progress line written: %q", progress.String())
	}
}

func checkJSONKeys(t *testing.T, rep *Report) {
	t.Helper()
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"orders", "orders_per_sec", "p50_ms", "p90_ms", "p99_ms", "errors", "client_cpu_s"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON report lacks %q: %s", k, b)
		}
	}
	if _, ok := m["errors"].(map[string]any); !ok {
		t.Errorf("errors is not an object: %s", b)
	}
}
