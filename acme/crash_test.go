package acme_test

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// goexitTB ends the calling goroutine instead of failing the test: the
// clients of the crash test run into a killed server on purpose.
type goexitTB struct{ testing.TB }

func (goexitTB) Helper()                 {}
func (goexitTB) Fatal(...any)            { runtime.Goexit() }
func (goexitTB) Fatalf(string, ...any)   { runtime.Goexit() }
func (g goexitTB) Logf(string, ...any)   {}
func (g goexitTB) Errorf(string, ...any) { runtime.Goexit() }

type serverProc struct {
	cmd  *exec.Cmd
	base string
}

func startServerProc(t *testing.T, db string, chal *challengeServers, d *testDNS, env ...string) *serverProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), env...), benchServerEnv+"=1", "HSMCA_BENCH_DB="+db,
		"HSMCA_BENCH_HTTP01="+strconv.Itoa(chal.httpPort), "HSMCA_BENCH_RESOLVER="+d.addr)
	if _, err := cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	if err != nil || !ok {
		t.Fatalf("server did not start: %q %v", line, err)
	}
	return &serverProc{cmd: cmd, base: "http://" + addr + "/acme/"}
}

// TestCrashRecovery kills the server (SIGKILL) while clients order, starts
// it again on the same store, and checks that every order a client saw
// valid is still valid with its certificate, and that no order is left
// processing.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	chal, d := newChallengeServers(t), newTestDNS(t)
	db := filepath.Join(t.TempDir(), "hsmca.db")
	p := startServerProc(t, db, chal, d)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	e := &env{t: t, chal: chal, dns: d, base: p.base, client: client}

	const clients = 6
	cs := make([]*rawClient, clients)
	for i := range cs {
		cs[i] = newRaw(t, e)
		cs[i].register()
		cs[i].t = goexitTB{t}
	}
	var mu sync.Mutex
	var acked []string // order URLs seen valid with the certificate downloaded
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 200; k++ {
				name := fmt.Sprintf("c%d-%d.crash.test", i, k)
				u := c.fullOrderURL(name)
				mu.Lock()
				acked = append(acked, u)
				mu.Unlock()
			}
		}()
	}
	waitFor(t, "some orders", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 20 })
	p.cmd.Process.Kill()
	p.cmd.Wait()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("clients did not stop after the kill")
	}

	p2 := startServerProc(t, db, chal, d)
	e2 := &env{t: t, chal: chal, dns: d, base: p2.base, client: client}
	rebase := func(u string) string { return p2.base + strings.TrimPrefix(u, p.base) }
	for _, c := range cs {
		c.t, c.e, c.kid, c.next = t, e2, rebase(c.kid), ""
	}
	for _, u := range acked {
		found := false
		for _, c := range cs {
			if r := c.post(rebase(u), nil, signOpts{}); r.code == 200 {
				found = true
				o := decode[orderResp](t, r)
				if o.Status != "valid" {
					t.Fatalf("acknowledged order %s is %s after the crash", u, o.Status)
				}
				if r := c.post(o.Certificate, nil, signOpts{}); r.code != 200 {
					t.Fatalf("certificate of %s: %d", u, r.code)
				}
				break
			}
		}
		if !found {
			t.Fatalf("acknowledged order %s is gone after the crash", u)
		}
	}
	total := 0
	for _, c := range cs {
		l := decode[struct{ Orders []string }](t, c.post(c.kid+"/orders", nil, signOpts{}))
		for _, u := range l.Orders {
			total++
			if o := decode[orderResp](t, c.post(u, nil, signOpts{})); o.Status == "processing" {
				t.Fatalf("order %s still processing after restart", u)
			}
		}
	}
	t.Logf("%d acknowledged orders survived; %d orders in all", len(acked), total)
	if total < len(acked) {
		t.Fatalf("%d orders listed, %d acknowledged", total, len(acked))
	}
}

// TestCrashWhileProcessing: an order announced as processing (the CA hangs)
// when the server is killed is invalid after the restart, with a problem
// that says to order again, and a new order for the name succeeds.
func TestCrashWhileProcessing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	chal, d := newChallengeServers(t), newTestDNS(t)
	db := filepath.Join(t.TempDir(), "hsmca.db")
	p := startServerProc(t, db, chal, d, "HSMCA_BENCH_HOLD_CA=1", "HSMCA_BENCH_FINALIZE_WAIT=50ms")
	client := &http.Client{Timeout: 30 * time.Second}
	e := &env{t: t, chal: chal, dns: d, base: p.base, client: client}
	c := newRaw(t, e)
	c.register()
	u, o := c.newOrder("proc.crash.test")
	c.solveHTTP(u, o)
	r := c.finalize(o, makeCSR(t, "proc.crash.test"))
	if st := decode[orderResp](t, r).Status; st != "processing" {
		t.Fatalf("finalize with a hanging CA: %s", st)
	}
	p.cmd.Process.Kill()
	p.cmd.Wait()

	p2 := startServerProc(t, db, chal, d)
	c.e = &env{t: t, chal: chal, dns: d, base: p2.base, client: client}
	c.kid, c.next = p2.base+strings.TrimPrefix(c.kid, p.base), ""
	u2 := p2.base + strings.TrimPrefix(u, p.base)
	got := decode[orderResp](t, c.post(u2, nil, signOpts{}))
	if got.Status != "invalid" || got.Error == nil || !strings.Contains(got.Error.Detail, "restart") {
		t.Fatalf("order after the crash: %+v", got)
	}
	// The authorization is reused: the new order is ready at once.
	nu, no := c.newOrder("proc.crash.test")
	if no.Status != "ready" {
		t.Fatalf("new order is %s", no.Status)
	}
	if r := c.finalize(no, makeCSR(t, "proc.crash.test")); r.code != 200 {
		t.Fatalf("finalize after restart: %d %s", r.code, r.body)
	}
	c.waitOrder(nu, "valid")
}
