package acme

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"net"
	"net/netip"
	"strconv"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
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
	if !sanIsExactly(c, id) {
		return prob(ProbUnauthorized, 403, "tls-alpn-01: the certificate must name exactly "+id.Value)
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

// idCeSubjectAltName is the subjectAltName extension (RFC 5280 §4.2.1.6).
var idCeSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// GeneralName tags (RFC 5280 §4.2.1.6) of the two names an identifier
// can be.
const (
	sanTagDNSName   = 2
	sanTagIPAddress = 7
)

// sanIsExactly reports whether c's subjectAltName holds id and no other
// entry (RFC 8737 §3; RFC 8738 §6 for IP identifiers). It reads the
// extension itself rather than c's parsed fields: crypto/x509 parses only
// some GeneralName types and skips the rest (otherName, x400Address,
// directoryName, ediPartyName, registeredID), so an entry of those types
// would go unseen.
func sanIsExactly(c *x509.Certificate, id Identifier) bool {
	var ext []byte
	for _, e := range c.Extensions {
		if e.Id.Equal(idCeSubjectAltName) {
			if ext != nil {
				return false
			}
			ext = e.Value
		}
	}
	in := cryptobyte.String(ext)
	var names, name cryptobyte.String
	var tag cbasn1.Tag
	if !in.ReadASN1(&names, cbasn1.SEQUENCE) || !in.Empty() ||
		!names.ReadAnyASN1(&name, &tag) || !names.Empty() {
		return false
	}
	switch id.Type {
	case "dns":
		return tag == cbasn1.Tag(sanTagDNSName).ContextSpecific() && string(name) == id.Value
	case "ip":
		got, ok := netip.AddrFromSlice(name)
		want, err := netip.ParseAddr(id.Value)
		return tag == cbasn1.Tag(sanTagIPAddress).ContextSpecific() && ok && err == nil && got.Unmap() == want
	}
	return false
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
