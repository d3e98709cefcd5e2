package acme_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	hacme "github.com/hsmca/hsmca/acme"
)

func benchEnv(b *testing.B) (*env, *countingStore) {
	e := newEnv(b, func(c *hacme.Config) {
		c.RateLimits = hacme.RateLimits{AccountRate: -1, IPRate: -1, NewOrderRate: -1}
		c.ValidationWorkers = 32
	})
	cs := &countingStore{}
	e.wrap = func(st hacme.Store) hacme.Store { cs.Store = st; return cs }
	e.restart()
	return e, cs
}

// countingStore counts durable writes.
type countingStore struct {
	hacme.Store
	writes atomic.Int64
}

func (c *countingStore) CreateAccount(ctx context.Context, a *hacme.Account) error {
	c.writes.Add(1)
	return c.Store.CreateAccount(ctx, a)
}
func (c *countingStore) UpdateAccount(ctx context.Context, a *hacme.Account, old string) error {
	c.writes.Add(1)
	return c.Store.UpdateAccount(ctx, a, old)
}
func (c *countingStore) CreateOrder(ctx context.Context, o *hacme.Order, z []*hacme.Authz) error {
	c.writes.Add(1)
	return c.Store.CreateOrder(ctx, o, z)
}
func (c *countingStore) UpdateOrder(ctx context.Context, o *hacme.Order, w string, add bool) error {
	c.writes.Add(1)
	return c.Store.UpdateOrder(ctx, o, w, add)
}
func (c *countingStore) UpdateAuthz(ctx context.Context, a *hacme.Authz, w string, add bool) error {
	c.writes.Add(1)
	return c.Store.UpdateAuthz(ctx, a, w, add)
}
func (c *countingStore) FinishOrder(ctx context.Context, o *hacme.Order, cert *hacme.Cert) error {
	c.writes.Add(1)
	return c.Store.FinishOrder(ctx, o, cert)
}
func (c *countingStore) UpdateCert(ctx context.Context, cert *hacme.Cert) error {
	c.writes.Add(1)
	return c.Store.UpdateCert(ctx, cert)
}
func (c *countingStore) PutMeta(ctx context.Context, k string, v []byte) error {
	c.writes.Add(1)
	return c.Store.PutMeta(ctx, k, v)
}

// fullOrder runs newOrder -> http-01 -> finalize -> download for one new
// name, polling with a short pause as a real client would (with a much
// shorter Retry-After).
func (c *rawClient) fullOrder(name string) { c.fullOrderURL(name) }

// fullOrderURL is fullOrder returning the order's URL.
func (c *rawClient) fullOrderURL(name string) string {
	c.t.Helper()
	orderURL, o := c.newOrder(name)
	z := decode[authzResp](c.t, c.post(o.Authorizations[0], nil, signOpts{}))
	for _, ch := range z.Challenges {
		if ch.Type == "http-01" {
			c.e.chal.setToken(ch.Token, c.keyAuth(ch.Token))
			if r := c.post(ch.URL, map[string]any{}, signOpts{}); r.code != 200 {
				c.t.Fatalf("challenge: %d %s", r.code, r.body)
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		o = decode[orderResp](c.t, c.post(orderURL, nil, signOpts{}))
		if o.Status == "ready" {
			break
		}
		if o.Status != "pending" || time.Now().After(deadline) {
			c.t.Fatalf("order %s", o.Status)
		}
		time.Sleep(2 * time.Millisecond)
	}
	r := c.finalize(o, makeCSR(c.t, name))
	if r.code != 200 {
		c.t.Fatalf("finalize: %d %s", r.code, r.body)
	}
	o = decode[orderResp](c.t, r)
	for o.Status == "processing" {
		if time.Now().After(deadline) {
			c.t.Fatal("still processing")
		}
		time.Sleep(2 * time.Millisecond)
		o = decode[orderResp](c.t, c.post(orderURL, nil, signOpts{}))
	}
	if r := c.post(o.Certificate, nil, signOpts{}); r.code != http.StatusOK || len(r.body) == 0 {
		c.t.Fatalf("download: %d", r.code)
	}
	return orderURL
}

// BenchmarkFullOrder measures one client doing complete orders over real
// HTTPS on loopback (client work, including signing and CSR generation, is
// in the figure too).
func BenchmarkFullOrder(b *testing.B) {
	e, st := benchEnv(b)
	c := newRaw(b, e)
	c.register()
	w0, r0 := st.writes.Load(), requests.Load()
	b.ReportAllocs()
	start := time.Now()
	i := 0
	for b.Loop() {
		i++
		c.fullOrder(fmt.Sprintf("b%d.bench.test", i))
	}
	b.ReportMetric(float64(i)/time.Since(start).Seconds(), "orders/s")
	b.ReportMetric(float64(st.writes.Load()-w0)/float64(i), "writes/order")
	b.ReportMetric(float64(requests.Load()-r0)/float64(i), "requests/order")
}

// BenchmarkFullOrderParallel: 16 clients, one account each, sharing b.N
// orders; reports orders/s and the p50/p99 latency of one order.
func BenchmarkFullOrderParallel(b *testing.B) {
	e, st := benchEnv(b)
	const clients = 16
	cs := make([]*rawClient, clients)
	for i := range cs {
		cs[i] = newRaw(b, e)
		cs[i].register()
	}
	w0, r0 := st.writes.Load(), requests.Load()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	all, _ := runOrders(b, cs, "p")
	cpu := cpuTime() - cpu0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(len(all)), "proc-cpu-ms/order")
	b.ReportMetric(float64(st.writes.Load()-w0)/float64(len(all)), "writes/order")
	b.ReportMetric(float64(requests.Load()-r0)/float64(len(all)), "requests/order")
}

// runOrders has the clients place b.N full orders between them (names
// PREFIX<k>.bench.test) and reports orders/s and the p50/p99 latency of one
// order. It returns the sorted latencies and the wall time.
func runOrders(b *testing.B, cs []*rawClient, prefix string) ([]time.Duration, time.Duration) {
	var n atomic.Int64
	lat := make([][]time.Duration, len(cs))
	start := time.Now()
	var wg sync.WaitGroup
	for i := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := n.Add(1)
				if k > int64(b.N) {
					return
				}
				t0 := time.Now()
				cs[i].fullOrder(fmt.Sprintf("%s%d.bench.test", prefix, k))
				lat[i] = append(lat[i], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	b.ReportMetric(float64(len(all))/el.Seconds(), "orders/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
	return all, el
}

// cpuTime is this process's CPU time (user+system): server and clients
// together, since both run here.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
