package acme

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/asn1"
	"net"
	"net/netip"
	"strconv"
)

// idPeACMEIdentifier is the acmeIdentifier extension (RFC 8737 §3).
var idPeACMEIdentifier = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 31}

// tlsALPN01 validates RFC 8737: a TLS handshake offering only "acme-tls/1"
// must present a self-signed certificate for exactly the identifier with a
// critical acmeIdentifier extension holding SHA-256(key authorization).
// IP identifiers use the reverse-DNS SNI of RFC 8738 §6. Each resolved
// address is tried in turn, as http-01 does: the first that validates
// settles it (one that refuses the connection or presents another
// certificate does not end the attempt), and if none does, the last
// address's problem is reported.
func (v *validator) tlsALPN01(ctx context.Context, a *Authz, keyAuth string) *Problem {
	id := a.Identifier
	ips, p := v.lookup(ctx, id.Value)
	if p != nil {
		return p
	}
	sni := id.Value
	if id.Type == "ip" {
		sni = reverseName(ips[0])
	}
	for _, ip := range ips {
		addr := net.JoinHostPort(ip.String(), strconv.Itoa(v.s.cfg.TLSALPN01Port))
		if p = v.tlsALPN01At(ctx, id, sni, addr, keyAuth); p == nil || ctx.Err() != nil {
			break
		}
	}
	return p
}

// tlsALPN01At is one tls-alpn-01 handshake with addr and the check of the
// certificate it presents.
func (v *validator) tlsALPN01At(ctx context.Context, id Identifier, sni, addr, keyAuth string) *Problem {
	cfg := &tls.Config{ServerName: sni, NextProtos: []string{"acme-tls/1"}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
	d := &tls.Dialer{NetDialer: v.dialer, Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return prob(ProbTLS, 400, "tls-alpn-01: TLS handshake with "+addr+" failed")
	}
	defer conn.Close()
	cs := conn.(*tls.Conn).ConnectionState()
	if cs.NegotiatedProtocol != "acme-tls/1" {
		return prob(ProbTLS, 400, "tls-alpn-01: the server did not negotiate acme-tls/1")
	}
	if len(cs.PeerCertificates) == 0 {
		return prob(ProbTLS, 400, "tls-alpn-01: no certificate")
	}
	c := cs.PeerCertificates[0]
	// RFC 8737 §3 (RFC 8738 §6 for IPs): the subjectAltName holds the
	// identifier being validated and no other entries, of any type.
	if len(c.EmailAddresses) != 0 || len(c.URIs) != 0 {
		return prob(ProbUnauthorized, 403, "tls-alpn-01: the certificate must name exactly "+id.Value)
	}
	switch id.Type {
	case "dns":
		if len(c.DNSNames) != 1 || c.DNSNames[0] != id.Value || len(c.IPAddresses) != 0 {
			return prob(ProbUnauthorized, 403, "tls-alpn-01: the certificate must name exactly "+id.Value)
		}
	case "ip":
		ok := len(c.IPAddresses) == 1 && len(c.DNSNames) == 0
		if ok {
			got, _ := netip.AddrFromSlice(c.IPAddresses[0])
			ok = got.Unmap() == netip.MustParseAddr(id.Value)
		}
		if !ok {
			return prob(ProbUnauthorized, 403, "tls-alpn-01: the certificate must name exactly "+id.Value)
		}
	}
	sum := sha256.Sum256([]byte(keyAuth))
	for _, e := range c.Extensions {
		if !e.Id.Equal(idPeACMEIdentifier) {
			continue
		}
		if !e.Critical {
			return prob(ProbUnauthorized, 403, "tls-alpn-01: the acmeIdentifier extension must be critical")
		}
		var got []byte
		if rest, err := asn1.Unmarshal(e.Value, &got); err != nil || len(rest) != 0 {
			return prob(ProbUnauthorized, 403, "tls-alpn-01: malformed acmeIdentifier extension")
		}
		if subtle.ConstantTimeCompare(got, sum[:]) != 1 {
			return prob(ProbIncorrectResponse, 403, "tls-alpn-01: acmeIdentifier does not match the key authorization")
		}
		return nil
	}
	return prob(ProbUnauthorized, 403, "tls-alpn-01: the certificate has no acmeIdentifier extension")
}

// reverseName is the in-addr.arpa / ip6.arpa name of an address.
func reverseName(a netip.Addr) string {
	const hex = "0123456789abcdef"
	b := a.AsSlice()
	var out []byte
	if a.Is4() {
		for i := len(b) - 1; i >= 0; i-- {
			out = strconv.AppendInt(out, int64(b[i]), 10)
			out = append(out, '.')
		}
		return string(out) + "in-addr.arpa"
	}
	for i := len(b) - 1; i >= 0; i-- {
		out = append(out, hex[b[i]&0xf], '.', hex[b[i]>>4], '.')
	}
	return string(out) + "ip6.arpa"
}
