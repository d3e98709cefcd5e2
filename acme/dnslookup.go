package acme

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// dnsClient makes the validation lookups when Config.Resolver names a DNS
// server: A, AAAA and TXT queries sent to that server alone, over a fresh
// UDP socket each (random source port) with a random ID, the answer's ID
// and question checked, and repeated over TCP when it comes back
// truncated. Unlike a net.Resolver dialling the same server it consults
// neither /etc/hosts nor the search list of /etc/resolv.conf, so the
// configured server answers every lookup, and it costs a fraction of the
// CPU (no per-query goroutines or configuration checks).
type dnsClient struct {
	addr     string
	udp, tcp *dns.Client
}

// dnsUDPSize is the EDNS0 buffer size offered (the DNS flag day 2020
// value), large enough for the usual answers without fragmentation.
const dnsUDPSize = 1232

func newDNSClient(addr string, d *net.Dialer) *dnsClient {
	return &dnsClient{addr: addr,
		udp: &dns.Client{Net: "udp", Dialer: d, UDPSize: dnsUDPSize},
		tcp: &dns.Client{Net: "tcp", Dialer: d}}
}

// errNoRecords: the name exists but has no record of the type asked for,
// or the server answered with an error code (NXDOMAIN, SERVFAIL, ...).
var errNoRecords = errors.New("acme: dns: no records")

// query asks for name's records of type qtype and returns the answer
// section's records of that type (a CNAME chain the server followed
// precedes them in the answer and is skipped).
func (c *dnsClient) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(dnsUDPSize, false)
	r, err := c.exchange(ctx, c.udp, m)
	if err == nil && r.Truncated {
		r, err = c.exchange(ctx, c.tcp, m)
	}
	if err != nil {
		return nil, err
	}
	if r.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("%w: %s %s: %s", errNoRecords, name, dns.TypeToString[qtype], dns.RcodeToString[r.Rcode])
	}
	var out []dns.RR
	for _, rr := range r.Answer {
		if rr.Header().Rrtype == qtype && rr.Header().Class == dns.ClassINET {
			out = append(out, rr)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s %s", errNoRecords, name, dns.TypeToString[qtype])
	}
	return out, nil
}

// exchange sends m and checks that the reply answers it; a UDP query that
// times out is sent once more (a lost datagram) while ctx allows.
func (c *dnsClient) exchange(ctx context.Context, cl *dns.Client, m *dns.Msg) (*dns.Msg, error) {
	r, _, err := cl.ExchangeContext(ctx, m, c.addr)
	var ne net.Error
	if err != nil && cl.Net == "udp" && errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
		r, _, err = cl.ExchangeContext(ctx, m, c.addr)
	}
	if err != nil {
		return nil, err
	}
	q := m.Question[0]
	if !r.Response || r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 ||
		r.Question[0].Qtype != q.Qtype || r.Question[0].Qclass != q.Qclass || !strings.EqualFold(r.Question[0].Name, q.Name) {
		return nil, errors.New("acme: dns: the reply does not answer the query")
	}
	return r, nil
}

// lookupIP returns host's A and AAAA addresses (queried concurrently);
// it fails only if neither query gave an address.
func (c *dnsClient) lookupIP(ctx context.Context, host string) ([]netip.Addr, error) {
	type res struct {
		rrs []dns.RR
		err error
	}
	six := make(chan res, 1)
	go func() {
		rrs, err := c.query(ctx, host, dns.TypeAAAA)
		six <- res{rrs, err}
	}()
	rrs, err4 := c.query(ctx, host, dns.TypeA)
	r6 := <-six
	var ips []netip.Addr
	for _, rr := range append(rrs, r6.rrs...) {
		var ip net.IP
		switch rr := rr.(type) {
		case *dns.A:
			ip = rr.A
		case *dns.AAAA:
			ip = rr.AAAA
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			ips = append(ips, a.Unmap())
		}
	}
	if len(ips) == 0 {
		return nil, errors.Join(err4, r6.err)
	}
	return ips, nil
}

// lookupTXT returns the TXT records at name, each record's strings joined
// (as net.Resolver.LookupTXT does).
func (c *dnsClient) lookupTXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := c.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, nil
}
