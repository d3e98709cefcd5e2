package ca

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strings"
)

// identifiers are the checked names a certificate will carry.
type identifiers struct {
	dns    []string
	ips    []net.IP
	emails []string
	uris   []*url.URL
	// cn holds the names a kept common name carries in a profile whose
	// CN need not be a SAN (not a TLS server profile): not SANs, but
	// names all the same, so the name policy checks them too.
	cn *identifiers
	// subjectCN is the common name the subject carries ("" for none): in
	// a TLS server profile the CN's name in the form its SAN has, else
	// the CSR's CN as written (which, if it reads as a name, is in
	// canonical form up to the case of a DNS name or mail domain).
	subjectCN string
}

func (ids identifiers) count() int {
	return len(ids.dns) + len(ids.ips) + len(ids.emails) + len(ids.uris)
}

// strings lists every identifier as text: DNS names, IPs, emails, URIs.
func (ids identifiers) strings() []string {
	out := make([]string, 0, ids.count())
	out = append(out, ids.dns...)
	for _, ip := range ids.ips {
		out = append(out, ip.String())
	}
	out = append(out, ids.emails...)
	for _, u := range ids.uris {
		out = append(out, u.String())
	}
	return out
}

// matchNames checks that the DNS and IP identifiers, with those of a kept
// common name, are exactly names (case-insensitive, IPs compared as
// addresses).
func (ids identifiers) matchNames(names []string) error {
	want := map[string]bool{}
	for _, n := range names {
		want[normName(n)] = true
	}
	// An order names DNS names and IP addresses only; any other kind of
	// name in the CSR was not requested (nor validated).
	if len(ids.emails) > 0 || len(ids.uris) > 0 {
		return &ErrBadCSR{Rule: "CSR names email addresses or URIs, which the request does not"}
	}
	have := map[string]bool{}
	add := func(from identifiers) {
		for _, d := range from.dns {
			have[d] = true
		}
		for _, ip := range from.ips {
			have[ip.String()] = true
		}
	}
	add(ids)
	if cn := ids.cn; cn != nil {
		// A common name kept outside a server profile is not a SAN, but
		// it names what it names: it must have been requested too.
		if len(cn.emails) > 0 || len(cn.uris) > 0 {
			return &ErrBadCSR{Rule: fmt.Sprintf("CSR's common name %q is an email address, which the request does not name", ids.subjectCN)}
		}
		add(*cn)
	}
	var missing, extra []string
	for n := range want {
		if !have[n] {
			missing = append(missing, n)
		}
	}
	for n := range have {
		if !want[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	switch {
	case len(extra) > 0:
		return &ErrBadCSR{Rule: fmt.Sprintf("CSR names %s which the request does not", strings.Join(extra, ", "))}
	case len(missing) > 0:
		return &ErrBadCSR{Rule: fmt.Sprintf("CSR lacks requested names %s", strings.Join(missing, ", "))}
	}
	return nil
}

func normName(n string) string {
	if ip := net.ParseIP(n); ip != nil {
		return ip.String()
	}
	return strings.ToLower(strings.TrimSuffix(n, "."))
}

// ParseCSR parses a DER PKCS #10 request and checks its signature. Errors
// are *ErrBadCSR naming the rule.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) { return parseCSR(der, nil) }

func parseCSR(der []byte, parsed *x509.CertificateRequest) (*x509.CertificateRequest, error) {
	csr := parsed
	if csr == nil {
		if len(der) == 0 {
			return nil, &ErrBadCSR{Rule: "empty CSR"}
		}
		var err error
		csr, err = x509.ParseCertificateRequest(der)
		if err != nil {
			return nil, &ErrBadCSR{Rule: "malformed CSR", Err: err}
		}
	}
	if err := checkCSRSignature(csr); err != nil {
		return nil, err
	}
	return csr, nil
}

// CheckCSR runs the checks Issue makes on a CSR under profile before it
// builds a certificate: the CSR parses, its signature verifies, its key
// and names obey the profile's rules, and the names pass the CA's and the
// profile's name policy. It signs and records nothing, so a caller can
// refuse a bad CSR before it gathers an issuer's quorum. Errors:
// ErrUnknownProfile, *ErrBadCSR, *ErrPolicy. Issue checks all this again.
func (c *CA) CheckCSR(profile string, der []byte) error {
	prof, ok := c.profiles[profile]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownProfile, profile)
	}
	csr, err := ParseCSR(der)
	if err != nil {
		return err
	}
	ids, err := prof.checkCSR(csr)
	if err != nil {
		return err
	}
	return c.checkPolicy(prof, ids)
}

// checkCSRSignature checks a CSR's self-signature (proof of possession of
// the key, RFC 2986 §3).
func checkCSRSignature(csr *x509.CertificateRequest) error {
	if err := csr.CheckSignature(); err != nil {
		return &ErrBadCSR{Rule: "bad signature", Err: err}
	}
	return nil
}

// awaitSignature receives the verdict of a CSR signature check and puts it
// back, so that Issue can read it again after an error.
func awaitSignature(sigOK chan error) error {
	err := <-sigOK
	sigOK <- err
	return err
}

// checkCSR applies the profile's CSR rules and returns the identifiers.
func (ps *profileState) checkCSR(csr *x509.CertificateRequest) (identifiers, error) {
	kt, err := keyTypeOf(csr.PublicKey)
	if err != nil {
		return identifiers{}, &ErrBadCSR{Rule: "key type not supported", Err: err}
	}
	if !ps.keyTypes[kt] {
		return identifiers{}, &ErrBadCSR{Rule: fmt.Sprintf("key type %s not allowed by profile %s (allowed: %s)", kt, ps.name, strings.Join(ps.p.AllowedKeyTypes, ", "))}
	}
	if k, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		if err := checkRSAKey(k); err != nil {
			return identifiers{}, &ErrBadCSR{Rule: "weak RSA key", Err: err}
		}
	}
	if k, ok := csr.PublicKey.(ed25519.PublicKey); ok {
		if err := checkEd25519Key(k); err != nil {
			return identifiers{}, &ErrBadCSR{Rule: "unusable Ed25519 key", Err: err}
		}
	}
	var ids identifiers
	seen := map[string]bool{}
	dup := func(kind, v string) error {
		k := kind + ":" + v
		if seen[k] {
			return &ErrBadCSR{Rule: fmt.Sprintf("duplicate SAN %s %q", kind, v)}
		}
		seen[k] = true
		return nil
	}
	allow := func(kind, v string) error {
		if !ps.sanTypes[kind] {
			return &ErrPolicy{Name: v, Reason: fmt.Sprintf("profile %s does not allow %s names", ps.name, kind)}
		}
		return nil
	}
	for _, d := range csr.DNSNames {
		if err := checkDNSName(d); err != nil {
			return identifiers{}, &ErrBadCSR{Rule: fmt.Sprintf("malformed DNS SAN %q: %v", d, err)}
		}
		d = strings.ToLower(d)
		if err := dup("DNS", d); err != nil {
			return identifiers{}, err
		}
		if err := allow("dns", d); err != nil {
			return identifiers{}, err
		}
		ids.dns = append(ids.dns, d)
	}
	for _, ip := range csr.IPAddresses {
		if err := dup("IP", ip.String()); err != nil {
			return identifiers{}, err
		}
		if err := allow("ip", ip.String()); err != nil {
			return identifiers{}, err
		}
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		ids.ips = append(ids.ips, ip)
	}
	for _, e := range csr.EmailAddresses {
		if err := checkEmail(e); err != nil {
			return identifiers{}, &ErrBadCSR{Rule: fmt.Sprintf("malformed email SAN %q: %v", e, err)}
		}
		if err := dup("email", strings.ToLower(e)); err != nil {
			return identifiers{}, err
		}
		if err := allow("email", e); err != nil {
			return identifiers{}, err
		}
		ids.emails = append(ids.emails, e)
	}
	for _, u := range csr.URIs {
		if !u.IsAbs() || u.Opaque != "" && u.Scheme == "" {
			return identifiers{}, &ErrBadCSR{Rule: fmt.Sprintf("malformed URI SAN %q: not an absolute URI", u.String())}
		}
		if err := dup("URI", u.String()); err != nil {
			return identifiers{}, err
		}
		if err := allow("uri", u.String()); err != nil {
			return identifiers{}, err
		}
		ids.uris = append(ids.uris, u)
	}

	cn := csr.Subject.CommonName
	if ps.server && cn != "" {
		// A TLS server certificate's CN must be one of its names (BR
		// 7.1.4.3); a CN that is not among the SANs is a name request.
		// The subject carries the name as its SAN does (lower case; an
		// IPv6 address as RFC 5952 writes it, a v4-mapped one as IPv4),
		// or the CN would not be taken exactly from the SAN (BR 7.1.4.3).
		if ip := net.ParseIP(cn); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			if !seen["IP:"+ip.String()] {
				if err := allow("ip", cn); err != nil {
					return identifiers{}, err
				}
				ids.ips = append(ids.ips, ip)
			}
			ids.subjectCN = ip.String()
		} else {
			if err := checkDNSName(cn); err != nil {
				return identifiers{}, &ErrBadCSR{Rule: fmt.Sprintf("common name %q is not a DNS name or IP address: %v", cn, err)}
			}
			l := strings.ToLower(cn)
			if !seen["DNS:"+l] {
				if err := allow("dns", l); err != nil {
					return identifiers{}, err
				}
				ids.dns = append(ids.dns, l)
			}
			ids.subjectCN = l
		}
	}
	if !ps.server && ps.p.KeepCN && cn != "" {
		if len(cn) > 64 {
			return identifiers{}, &ErrBadCSR{Rule: "common name longer than 64 characters"}
		}
		names, err := cnNames(cn)
		if err != nil {
			return identifiers{}, err
		}
		ids.cn = names
		ids.subjectCN = cn
	}
	if !ps.p.KeepCN {
		ids.subjectCN = ""
	}
	n := ids.count()
	if n == 0 && !(ps.p.KeepCN && cn != "" && !ps.server) {
		return identifiers{}, &ErrBadCSR{Rule: "no names: the CSR has no subject alternative name the profile can use"}
	}
	if n > ps.p.MaxSANs {
		return identifiers{}, &ErrBadCSR{Rule: fmt.Sprintf("%d names exceed profile %s's limit of %d", n, ps.name, ps.p.MaxSANs)}
	}
	return ids, nil
}

// errLooksLikeIP is checkDNSName's refusal of a dotted name whose last
// label is a number: inet_aton reads "10.1" or "010.0.0.1" as an address,
// and no top-level label is all digits. (A kept common name is held to
// the narrower inet_aton rule instead: see cnNames.)
var errLooksLikeIP = errors.New("looks like an IP address, not a DNS name")

// checkDNSName accepts LDH host names (one label is fine: this is a private
// PKI), optionally with a leading "*." wildcard label.
func checkDNSName(n string) error {
	if n == "" {
		return errors.New("empty name")
	}
	if len(n) > 253 {
		return errors.New("longer than 253 characters")
	}
	if strings.HasSuffix(n, ".") {
		return errors.New("trailing dot")
	}
	labels := strings.Split(n, ".")
	for i, l := range labels {
		if l == "*" && i == 0 && len(labels) > 1 {
			continue
		}
		if l == "" {
			return errors.New("empty label")
		}
		if len(l) > 63 {
			return errors.New("label longer than 63 characters")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with a hyphen", l)
		}
		for j := 0; j < len(l); j++ {
			ch := l[j]
			if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-') {
				if ch == '*' {
					return errors.New("wildcard only allowed as the whole leftmost label")
				}
				return fmt.Errorf("invalid character %q", ch)
			}
		}
	}
	if len(labels) > 1 {
		last := labels[len(labels)-1]
		allDigits := true
		for j := 0; j < len(last); j++ {
			if last[j] < '0' || last[j] > '9' {
				allDigits = false
			}
		}
		if allDigits {
			return errLooksLikeIP
		}
	}
	return nil
}

func checkEmail(e string) error {
	at := strings.LastIndexByte(e, '@')
	if at <= 0 || at == len(e)-1 {
		return errors.New("want local@domain")
	}
	for i := 0; i < at; i++ {
		if e[i] <= ' ' || e[i] >= 0x7f || e[i] == '@' {
			return errors.New("invalid character in local part")
		}
	}
	return checkDNSName(e[at+1:])
}

// cnNames returns the names a common name kept outside a server profile
// carries, for the name policy: an IP address, an email address, or a DNS
// name; nil for free text ("Jane Doe", a single word such as "payroll",
// which cannot be told from free text, or "v1.0", "agent-1.2": dotted, but
// ending in a number, so no host name, and no address either).
//
// A CN is read the way a relying party or another tool might read it:
// without surrounding space or trailing dots, and case-insensitively. If it
// reads as a name, it must be written in that name's form as a client
// resolves it (no surrounding space, no trailing dot; an address as net.IP
// prints it): "www.bank.example." would otherwise be free text to the
// policy and www.bank.example to a client. Such a CN is refused with an
// error that names the form to use. Case is left as written for DNS names
// and mail domains ("John.Smith"): the policy checks the lower-cased name,
// which is the name any client resolves, so case hides nothing from it.
func cnNames(cn string) (*identifiers, error) {
	t := strings.TrimRight(strings.TrimSpace(cn), ".")
	var ids *identifiers
	var canon, kind string
	anyCase := false
	if ip := net.ParseIP(t); ip != nil {
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		canon, kind = ip.String(), "IP address"
		ids = &identifiers{ips: []net.IP{ip}}
	} else if head := atonHead(t); strings.Contains(head, ".") && inetAtonParses(head) {
		// "010.0.0.1", "10.1" or "0xa.1": an address to inet_aton, none
		// to the policy. (A dotless number is free text, as a word is.)
		return nil, &ErrBadCSR{Rule: fmt.Sprintf("common name %q reads as an IP address but is not one in canonical form; write the address as Go's net.IP prints it", cn)}
	} else if at := strings.LastIndexByte(t, '@'); at >= 0 {
		if checkEmail(t) != nil {
			return nil, nil
		}
		canon, kind, anyCase = t[:at+1]+strings.ToLower(t[at+1:]), "email address", true
		ids = &identifiers{emails: []string{canon}}
	} else if err := checkDNSName(t); err == nil && (strings.Contains(t, ".") || t != strings.TrimSpace(cn)) {
		// One label is a name only when written as one ("payroll.").
		canon, kind, anyCase = strings.ToLower(t), "DNS name", true
		ids = &identifiers{dns: []string{canon}}
	} else {
		return nil, nil
	}
	if cn != canon && !(anyCase && strings.EqualFold(cn, canon)) {
		return nil, &ErrBadCSR{Rule: fmt.Sprintf("common name %q reads as the %s %s but is not written in its canonical form; use %q", cn, kind, canon, canon)}
	}
	return ids, nil
}

// atonHead is the part of s that inet_aton reads: glibc's stops at the
// first white space and ignores the rest ("10.0.0.1 backup" is 10.0.0.1).
func atonHead(s string) string {
	if i := strings.IndexAny(s, " \t\n\v\f\r"); i >= 0 {
		return s[:i]
	}
	return s
}

// inetAtonParses reports whether inet_aton (glibc, BSD) reads s as an IPv4
// address: one to four parts separated by dots, each a C integer constant
// (decimal, octal with a leading 0, hexadecimal with 0x), every part but
// the last at most 255 and the last filling the remaining bytes ("10.1" is
// 10.0.0.1, "10.0.258" is 10.0.1.2).
func inetAtonParses(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return false
	}
	for i, p := range parts {
		v, ok := parseCUint32(p)
		if !ok {
			return false
		}
		if i < len(parts)-1 && v > 0xff {
			return false
		}
		if i == len(parts)-1 && uint64(v) > 0xffffffff>>(8*uint(len(parts)-1)) {
			return false
		}
	}
	return true
}

// parseCUint32 parses s as strtoul(s, NULL, 0) does, requiring all of s to
// be used and the value to fit in 32 bits.
func parseCUint32(s string) (uint32, bool) {
	base := uint64(10)
	switch {
	case len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'):
		base, s = 16, s[2:]
	case len(s) > 1 && s[0] == '0':
		base, s = 8, s[1:]
	}
	if s == "" {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		var d uint64
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case c >= 'a' && c <= 'f':
			d = uint64(c-'a') + 10
		case c >= 'A' && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, false
		}
		if d >= base {
			return 0, false
		}
		if v = v*base + d; v > 0xffffffff {
			return 0, false
		}
	}
	return uint32(v), true
}
