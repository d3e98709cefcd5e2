package loadtest

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// StubDNS is a tiny authoritative DNS server for load tests. It answers
// every A query with 127.0.0.1, every AAAA query with an empty NOERROR
// answer (so validators fall back to IPv4), and TXT queries with the dns-01
// records set through SetTXT (RFC 8555 §8.4). Everything else gets an empty
// NOERROR answer. It serves UDP and TCP on the same address.
type StubDNS struct {
	mu  sync.RWMutex
	txt map[string][]string // lower-case FQDN → values

	udp, tcp *dns.Server
	addr     string
}

// NewStubDNS returns a server that is not yet listening.
func NewStubDNS() *StubDNS {
	return &StubDNS{txt: make(map[string][]string)}
}

// Start listens on addr (host:port; port 0 picks a free port, the same one
// for UDP and TCP) and serves until Close.
func (s *StubDNS) Start(addr string) error {
	if s.udp != nil {
		return errors.New("loadtest: stub DNS already started")
	}
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	// With port 0 the UDP port may be taken on TCP; retry a few times.
	for range 10 {
		pc, err = net.ListenPacket("udp", addr)
		if err != nil {
			return fmt.Errorf("loadtest: stub DNS: %w", err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			return fmt.Errorf("loadtest: stub DNS: %w", err)
		}
	}
	if err != nil {
		return fmt.Errorf("loadtest: stub DNS: %w", err)
	}
	h := dns.HandlerFunc(s.serve)
	s.addr = pc.LocalAddr().String()
	s.udp = &dns.Server{PacketConn: pc, Handler: h}
	s.tcp = &dns.Server{Listener: ln, Handler: h}
	var wg sync.WaitGroup
	wg.Add(2)
	s.udp.NotifyStartedFunc = wg.Done
	s.tcp.NotifyStartedFunc = wg.Done
	errc := make(chan error, 2)
	go func() { errc <- s.udp.ActivateAndServe() }()
	go func() { errc <- s.tcp.ActivateAndServe() }()
	started := make(chan struct{})
	go func() { wg.Wait(); close(started) }()
	select {
	case <-started:
		return nil
	case err := <-errc:
		s.Close()
		return fmt.Errorf("loadtest: stub DNS: %w", err)
	case <-time.After(10 * time.Second):
		s.Close()
		return errors.New("loadtest: stub DNS did not start within 10s")
	}
}

// Addr is the address the server listens on (UDP and TCP).
func (s *StubDNS) Addr() string { return s.addr }

// Close stops both listeners.
func (s *StubDNS) Close() error {
	var errs []error
	if s.udp != nil {
		errs = append(errs, s.udp.Shutdown())
	}
	if s.tcp != nil {
		errs = append(errs, s.tcp.Shutdown())
	}
	return errors.Join(errs...)
}

// SetTXT adds value to the TXT records of name.
func (s *StubDNS) SetTXT(name, value string) {
	k := dns.CanonicalName(name)
	s.mu.Lock()
	s.txt[k] = append(s.txt[k], value)
	s.mu.Unlock()
}

// ClearTXT removes value from the TXT records of name.
func (s *StubDNS) ClearTXT(name, value string) {
	k := dns.CanonicalName(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	vs := s.txt[k]
	for i, v := range vs {
		if v == value {
			vs = append(vs[:i], vs[i+1:]...)
			break
		}
	}
	if len(vs) == 0 {
		delete(s.txt, k)
	} else {
		s.txt[k] = vs
	}
}

func (s *StubDNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	_ = w.WriteMsg(s.answer(req))
}

// answer builds the reply to req. It never fails: a query it cannot read
// gets FORMERR, one it does not know gets an empty NOERROR answer.
func (s *StubDNS) answer(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	if req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		m.SetRcode(req, dns.RcodeFormatError)
		return m
	}
	m.SetReply(req)
	m.Authoritative = true
	q := req.Question[0]
	if q.Qclass != dns.ClassINET {
		return m
	}
	name := dns.CanonicalName(q.Name)
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: 0}
	}
	switch q.Qtype {
	case dns.TypeA:
		if strings.HasPrefix(name, "_acme-challenge.") {
			return m
		}
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: net.IPv4(127, 0, 0, 1).To4()})
	case dns.TypeTXT:
		s.mu.RLock()
		vs := s.txt[name]
		for _, v := range vs {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: []string{v}})
		}
		s.mu.RUnlock()
	}
	return m
}
