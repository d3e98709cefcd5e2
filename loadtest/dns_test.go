package loadtest

import (
	"testing"

	"github.com/miekg/dns"
)

func TestStubDNS(t *testing.T) {
	s := NewStubDNS()
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.SetTXT("_acme-challenge.Example.load.test", "v1")
	s.SetTXT("_acme-challenge.example.load.test.", "v2")

	for _, net := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: net}
		ask := func(t *testing.T, name string, qtype uint16) *dns.Msg {
			t.Helper()
			m := new(dns.Msg)
			m.SetQuestion(dns.Fqdn(name), qtype)
			in, _, err := c.Exchange(m, s.Addr())
			if err != nil {
				t.Fatal(err)
			}
			if in.Rcode != dns.RcodeSuccess {
				t.Fatalf("rcode %s", dns.RcodeToString[in.Rcode])
			}
			return in
		}
		t.Run(net, func(t *testing.T) {
			t.Run("A", func(t *testing.T) {
				in := ask(t, "anything.at.all.example", dns.TypeA)
				if len(in.Answer) != 1 {
					t.Fatalf("answers = %v", in.Answer)
				}
				a, ok := in.Answer[0].(*dns.A)
				if !ok || a.A.String() != "127.0.0.1" {
					t.Fatalf("answer = %v, want A 127.0.0.1", in.Answer[0])
				}
			})
			t.Run("AAAA empty", func(t *testing.T) {
				if in := ask(t, "anything.example", dns.TypeAAAA); len(in.Answer) != 0 {
					t.Fatalf("answers = %v, want none", in.Answer)
				}
			})
			t.Run("TXT", func(t *testing.T) {
				in := ask(t, "_ACME-challenge.example.load.test", dns.TypeTXT)
				got := map[string]bool{}
				for _, rr := range in.Answer {
					if txt, ok := rr.(*dns.TXT); ok && len(txt.Txt) == 1 {
						got[txt.Txt[0]] = true
					}
				}
				if len(in.Answer) != 2 || !got["v1"] || !got["v2"] {
					t.Fatalf("answers = %v, want TXT v1 and v2", in.Answer)
				}
			})
			t.Run("TXT unknown", func(t *testing.T) {
				if in := ask(t, "_acme-challenge.other.load.test", dns.TypeTXT); len(in.Answer) != 0 {
					t.Fatalf("answers = %v, want none", in.Answer)
				}
			})
		})
	}

	s.ClearTXT("_acme-challenge.example.load.test", "v1")
	s.ClearTXT("_acme-challenge.example.load.test", "v2")
	s.mu.RLock()
	left := len(s.txt)
	s.mu.RUnlock()
	if left != 0 {
		t.Errorf("%d TXT names left after clearing", left)
	}
}

func TestStubDNSFormErr(t *testing.T) {
	s := NewStubDNS()
	m := new(dns.Msg)
	m.Opcode = dns.OpcodeUpdate
	if got := s.answer(m); got.Rcode != dns.RcodeFormatError {
		t.Errorf("update: rcode %d, want FORMERR", got.Rcode)
	}
	if got := s.answer(new(dns.Msg)); got.Rcode != dns.RcodeFormatError {
		t.Errorf("no question: rcode %d, want FORMERR", got.Rcode)
	}
}

func FuzzStubDNSAnswer(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"a.load.test.", dns.TypeA}, {"_acme-challenge.a.load.test.", dns.TypeTXT}, {"x.", dns.TypeAAAA}, {".", dns.TypeCAA}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0, 1, 2})
	s := NewStubDNS()
	s.SetTXT("_acme-challenge.a.load.test", "v")
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(dns.Msg)
		if req.Unpack(b) != nil {
			return
		}
		resp := s.answer(req)
		if resp.Id != req.Id {
			t.Fatalf("reply id %d, request %d", resp.Id, req.Id)
		}
		if _, err := resp.Pack(); err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
	})
}
