package acme

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startDNS serves h on one loopback port over UDP and TCP.
func startDNS(t *testing.T, h dns.HandlerFunc) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("dns server did not start")
		}
		t.Cleanup(func() { srv.Shutdown() })
	}
	return pc.LocalAddr().String()
}

func TestDNSClient(t *testing.T) {
	addr := startDNS(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		hdr := func(name string, typ uint16) dns.RR_Header {
			return dns.RR_Header{Name: name, Rrtype: typ, Class: dns.ClassINET, Ttl: 1}
		}
		switch q.Name {
		case "a.test.":
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr(q.Name, dns.TypeA), A: net.ParseIP("192.0.2.1")})
			}
			if q.Qtype == dns.TypeAAAA {
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(q.Name, dns.TypeAAAA), AAAA: net.ParseIP("2001:db8::1")})
			}
		case "v4.test.", "alias.test.":
			if q.Name == "alias.test." {
				m.Answer = append(m.Answer, &dns.CNAME{Hdr: hdr(q.Name, dns.TypeCNAME), Target: "v4.test."})
			}
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr("v4.test.", dns.TypeA), A: net.ParseIP("192.0.2.4")})
			}
		case "big.test.":
			if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
				m.Truncated = true
			} else {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(q.Name, dns.TypeTXT), Txt: []string{"ab", "cd"}},
					&dns.TXT{Hdr: hdr(q.Name, dns.TypeTXT), Txt: []string{"ef"}})
			}
		case "liar.test.":
			m.Question[0].Name = "other.test."
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr("other.test.", dns.TypeA), A: net.ParseIP("192.0.2.9")})
		default:
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	c := newDNSClient(addr, &net.Dialer{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	ipTests := []struct {
		name string
		want []string // nil: an error
	}{
		{"a.test", []string{"192.0.2.1", "2001:db8::1"}},
		{"v4.test", []string{"192.0.2.4"}},
		{"alias.test", []string{"192.0.2.4"}},
		{"nx.test", nil},
		{"liar.test", nil},
	}
	for _, tc := range ipTests {
		t.Run("ip "+tc.name, func(t *testing.T) {
			ips, err := c.lookupIP(ctx, tc.name)
			if tc.want == nil {
				if err == nil {
					t.Fatalf("got %v, want an error", ips)
				}
				return
			}
			var got []string
			for _, a := range ips {
				got = append(got, a.String())
			}
			slices.Sort(got)
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %v %v, want %v", got, err, tc.want)
			}
		})
	}
	t.Run("txt over tcp after truncation", func(t *testing.T) {
		txts, err := c.lookupTXT(ctx, "big.test")
		if err != nil || !slices.Equal(txts, []string{"abcd", "ef"}) {
			t.Fatalf("got %q %v", txts, err)
		}
	})
	t.Run("txt nxdomain", func(t *testing.T) {
		if _, err := c.lookupTXT(ctx, "nx.test"); !errors.Is(err, errNoRecords) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("no answer within the deadline", func(t *testing.T) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0") // never answers
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := newDNSClient(pc.LocalAddr().String(), &net.Dialer{}).lookupIP(ctx, "a.test"); err == nil {
			t.Fatal("a lookup nobody answered succeeded")
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("lookup took %v past its deadline", d)
		}
	})
}
