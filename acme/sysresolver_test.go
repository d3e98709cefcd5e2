package acme

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
)

// recordingResolver stands in for the system resolver: it records the
// names asked and answers only absolute names it knows, as a resolver
// without a search list would.
type recordingResolver struct {
	mu    sync.Mutex
	asked []string
	ips   map[string][]netip.Addr
	txts  map[string][]string
}

func (r *recordingResolver) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked = append(r.asked, "ip "+host)
	if ips, ok := r.ips[host]; ok {
		return ips, nil
	}
	return nil, errors.New("no such host")
}

func (r *recordingResolver) LookupTXT(_ context.Context, name string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked = append(r.asked, "txt "+name)
	if t, ok := r.txts[name]; ok {
		return t, nil
	}
	return nil, errors.New("no such host")
}

// Without a configured resolver every lookup of a validation goes to the
// system resolver with an absolute name, so that the search list of
// /etc/resolv.conf cannot answer it: the identifier's A/AAAA (http-01,
// tls-alpn-01), the dns-01 TXT name, and the host of an http-01 redirect.
func TestSystemResolverAbsoluteNames(t *testing.T) {
	const keyAuth = "token.thumb"
	sum := sha256.Sum256([]byte(keyAuth))
	r := &recordingResolver{
		ips:  map[string][]netip.Addr{"host.example.": {netip.MustParseAddr("192.0.2.1")}},
		txts: map[string][]string{"_acme-challenge.host.example.": {base64.RawURLEncoding.EncodeToString(sum[:])}},
	}
	v := &validator{resolver: r}
	ctx := context.Background()

	if ips, p := v.lookup(ctx, "host.example"); p != nil || len(ips) != 1 {
		t.Errorf("lookup(host.example) = %v, %v; want the address of host.example.", ips, p)
	}
	if p := v.dns01(ctx, &Authz{Identifier: Identifier{Type: "dns", Value: "host.example"}}, keyAuth); p != nil {
		t.Errorf("dns01: %v; want the TXT record at _acme-challenge.host.example.", p.Detail)
	}
	// A redirect's host reaches the resolver through the transport's
	// dialer; one already absolute is not given a second dot.
	v.dialResolved(ctx, "tcp", "elsewhere.example:80")
	v.dialResolved(ctx, "tcp", "rooted.example.:80")
	// An address is not looked up at all.
	v.lookup(ctx, "192.0.2.7")

	want := []string{"ip host.example.", "txt _acme-challenge.host.example.", "ip elsewhere.example.", "ip rooted.example."}
	if !slices.Equal(r.asked, want) {
		t.Fatalf("system resolver asked %q, want %q", r.asked, want)
	}
}
