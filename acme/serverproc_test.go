package acme_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	hacme "github.com/hsmca/hsmca/acme"
	"github.com/hsmca/hsmca/store"
)

// The server-process benchmark re-runs this test binary as the ACME server
// alone, so that its CPU time and peak RSS can be read from the kernel
// (rusage of the child) without the clients' share.
const benchServerEnv = "HSMCA_ACME_BENCH_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(benchServerEnv) != "" {
		os.Exit(runBenchServer())
	}
	os.Exit(m.Run())
}

// runBenchServer serves ACME over plain HTTP on loopback until stdin
// closes. Configuration comes from the environment (set by the parent).
func runBenchServer() int {
	if p := os.Getenv("HSMCA_BENCH_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
		if err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	ca := newFakeCA(benchTB{})
	if os.Getenv("HSMCA_BENCH_HOLD_CA") != "" {
		ca.hold = make(chan struct{}) // never released: issuance hangs
	}
	st, err := store.Open(os.Getenv("HSMCA_BENCH_DB"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	port, _ := strconv.Atoi(os.Getenv("HSMCA_BENCH_HTTP01"))
	cfg := hacme.Config{
		BaseURL:    "http://" + ln.Addr().String() + "/acme/",
		HTTP01Port: port,
		Resolver:   os.Getenv("HSMCA_BENCH_RESOLVER"),
		RateLimits: hacme.RateLimits{AccountRate: -1, IPRate: -1, NewOrderRate: -1},
	}
	if w, err := time.ParseDuration(os.Getenv("HSMCA_BENCH_FINALIZE_WAIT")); err == nil {
		cfg.FinalizeWait = w
	}
	srv, err := hacme.New(cfg, ca, st, hacme.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	fmt.Printf("ADDR %s\n", ln.Addr())
	bufio.NewReader(os.Stdin).ReadString('\n') // until the parent closes stdin
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hs.Shutdown(ctx)
	srv.Close()
	st.Close()
	return 0
}

// benchTB is enough of testing.TB for newFakeCA in the child.
type benchTB struct{ testing.TB }

func (benchTB) Helper()             {}
func (benchTB) Fatal(args ...any)   { fmt.Fprintln(os.Stderr, args...); os.Exit(1) }
func (benchTB) Cleanup(f func())    {}
func (benchTB) Logf(string, ...any) {}

// BenchmarkFullOrderServerProcess runs 16 clients against the server in a
// child process and reports the server's CPU time per order and its peak
// RSS, besides orders/s and latency.
func BenchmarkFullOrderServerProcess(b *testing.B) {
	chal := newChallengeServers(b)
	d := newTestDNS(b)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchServerEnv+"=1",
		"HSMCA_BENCH_DB="+filepath.Join(b.TempDir(), "hsmca.db"),
		"HSMCA_BENCH_HTTP01="+strconv.Itoa(chal.httpPort),
		"HSMCA_BENCH_RESOLVER="+d.addr)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	if err != nil || !ok {
		cmd.Process.Kill()
		b.Fatalf("server did not start: %q %v", line, err)
	}
	e := &env{t: b, chal: chal, dns: d, base: "http://" + addr + "/acme/",
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	e.dir = e.base + "directory"

	const clients = 16
	cs := make([]*rawClient, clients)
	for i := range cs {
		cs[i] = newRaw(b, e)
		cs[i].register()
	}
	b.ResetTimer()
	all, _ := runOrders(b, cs, "s")
	b.StopTimer()
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		b.Fatalf("server process: %v", err)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	// Includes start-up and the 16 registrations; small against b.N orders.
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(len(all)), "server-cpu-ms/order")
	b.ReportMetric(float64(ru.Maxrss)/1024, "server-peak-RSS-MiB")
}
