package loadtest

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// hsmcaBinary returns the hsmca binary named by $HSMCA (set by `make test`)
// or bin/hsmca, skipping when neither exists or it has no quickstart.
func hsmcaBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("HSMCA")
	if bin == "" {
		p, err := filepath.Abs(filepath.Join("..", "bin", "hsmca"))
		if err != nil {
			t.Fatal(err)
		}
		bin = p
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no hsmca binary at %s (build it with `make build`, or set HSMCA)", bin)
	}
	if err := exec.Command(bin, "quickstart", "--help").Run(); err != nil {
		t.Skipf("%s quickstart --help fails: %v", bin, err)
	}
	return bin
}

// startQuickstart runs `hsmca quickstart` in dir and returns once its ACME
// directory answers; the process is stopped at cleanup.
func startQuickstart(t *testing.T, bin, dir, httpsAddr, httpAddr, resolver string) {
	t.Helper()
	log := &lockedBuffer{}
	cmd := exec.Command(bin, "quickstart", "--dir", dir, "--https-addr", httpsAddr, "--http-addr", httpAddr, "--resolver", resolver)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("hsmca quickstart output:\n%s", log.String())
		}
	})
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // readiness probe only
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := hc.Get("https://" + httpsAddr + "/acme/directory")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-exited:
			t.Fatalf("hsmca quickstart exited early:\n%s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("hsmca quickstart did not serve within 2m:\n%s", log.String())
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, not synchronising
	}
}

// TestHsmca runs the generator, unmodified, against a quickstart CA.
// quickstart validates http-01 on port 80; the test moves that to a free
// port in ca.yaml after the first run, so nothing needs port 80.
func TestHsmca(t *testing.T) {
	if testing.Short() {
		t.Skip("starts hsmca")
	}
	bin := hsmcaBinary(t)
	dir := filepath.Join(t.TempDir(), "demo")
	httpsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	dnsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	httpPort, tlsPort := freePort(t), freePort(t)

	// First run: create the demo CA, then stop it to set the ports.
	setupDone := t.Run("create", func(t *testing.T) {
		startQuickstart(t, bin, dir, httpsAddr, httpAddr, dnsAddr)
	})
	if !setupDone {
		t.FailNow()
	}
	cfgPath := filepath.Join(dir, "ca.yaml")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	raw = regexp.MustCompile(`(?m)^(\s*)http01_port:.*$`).ReplaceAll(raw, []byte("${1}http01_port: "+strconv.Itoa(httpPort)))
	raw = regexp.MustCompile(`(?m)^(\s*)tlsalpn01_port:.*$`).ReplaceAll(raw, []byte("${1}tlsalpn01_port: "+strconv.Itoa(tlsPort)))
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	startQuickstart(t, bin, dir, httpsAddr, httpAddr, dnsAddr)

	for _, tc := range []struct {
		name      string
		challenge string
	}{{"http-01", HTTP01}, {"dns-01", DNS01}, {"tls-alpn-01", TLSALPN01}} {
		t.Run(tc.name, func(t *testing.T) {
			const orders = 6
			rep, err := Run(context.Background(), Config{
				URL: "https://" + httpsAddr + "/acme/directory", CABundle: filepath.Join(dir, "root.pem"),
				Clients: 3, Orders: orders, Challenge: tc.challenge, HTTPPort: httpPort, TLSPort: tlsPort,
				DNSAddr: dnsAddr, MaxTime: 2 * time.Minute,
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Orders != orders || rep.FailedOrders != 0 || rep.Unfinished != 0 || len(rep.Errors) != 0 {
				t.Fatalf("%d ok, %d failed, %d unfinished, errors %v (%s); want %d ok", rep.Orders, rep.FailedOrders, rep.Unfinished, rep.Errors, rep.FirstError, orders)
			}
			checkJSONKeys(t, rep)
		})
	}
}
