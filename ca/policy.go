package ca

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
)

// compiledPolicy is a NamePolicy ready for matching.
type compiledPolicy struct {
	allowDNS, denyDNS []string // lower case, no leading dot
	allowIP, denyIP   []*net.IPNet
	allowEmail        []string
}

func compilePolicy(np NamePolicy) (compiledPolicy, error) {
	var cp compiledPolicy
	var bad error
	norm := func(field string, in []string) []string {
		out := make([]string, 0, len(in))
		for _, s := range in {
			v := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "."), "."))
			// Entries are matched against names as certificates carry
			// them: LDH labels (IDNs as punycode A-labels), no wildcard,
			// no trailing dot. Anything else would silently never match.
			if err := checkDNSName(v); err != nil || strings.HasPrefix(v, "*") {
				if bad == nil {
					bad = fmt.Errorf("ca: name policy %s: %q is not a DNS suffix (LDH labels, IDNs as xn-- A-labels, no wildcard)", field, s)
				}
				continue
			}
			out = append(out, v)
		}
		return out
	}
	cp.allowDNS = norm("allowed_dns_suffixes", np.AllowedDNSSuffixes)
	cp.denyDNS = norm("denied_dns_suffixes", np.DeniedDNSSuffixes)
	cp.allowEmail = norm("allowed_email_domains", np.AllowedEmailDomains)
	if bad != nil {
		return cp, bad
	}
	for _, r := range np.AllowedIPRanges {
		_, n, err := net.ParseCIDR(r)
		if err != nil {
			return cp, fmt.Errorf("ca: bad IP range %q", r)
		}
		cp.allowIP = append(cp.allowIP, n)
	}
	for _, r := range np.DeniedIPRanges {
		_, n, err := net.ParseCIDR(r)
		if err != nil {
			return cp, fmt.Errorf("ca: bad IP range %q", r)
		}
		cp.denyIP = append(cp.denyIP, n)
	}
	return cp, nil
}

// hasSuffix reports whether name is suffix or ends in "."+suffix.
func hasSuffix(name, suffix string) bool {
	return name == suffix || strings.HasSuffix(name, "."+suffix)
}

func (cp compiledPolicy) check(ids identifiers, where string) error {
	if ids.cn != nil {
		if err := cp.check(*ids.cn, where+" (common name)"); err != nil {
			return err
		}
	}
	for _, u := range ids.uris {
		// A URI names its host: it answers to the DNS or IP rules. One
		// without a host (a URN) cannot be placed under an allowed suffix.
		host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
		var hid identifiers
		switch ip := net.ParseIP(host); {
		case host == "":
			if len(cp.allowDNS) > 0 {
				return &ErrPolicy{Name: u.String(), Reason: fmt.Sprintf("%s allows only names under %s, and this URI names no host", where, strings.Join(cp.allowDNS, ", "))}
			}
			continue
		case ip != nil:
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			hid.ips = []net.IP{ip}
		default:
			hid.dns = []string{host}
		}
		if err := cp.check(hid, where); err != nil {
			var pe *ErrPolicy
			if errors.As(err, &pe) {
				pe.Name = u.String() + " (host " + pe.Name + ")"
			}
			return err
		}
	}
	for _, d := range ids.dns {
		base := strings.TrimPrefix(d, "*.")
		for _, s := range cp.denyDNS {
			// A wildcard whose base sits above a denied suffix would
			// cover names under it: *.corp covers x.secret.corp.
			if hasSuffix(base, s) || (strings.HasPrefix(d, "*.") && hasSuffix(s, base)) {
				return &ErrPolicy{Name: d, Reason: fmt.Sprintf("%s denies DNS names under %q", where, s)}
			}
		}
		if len(cp.allowDNS) > 0 && !anySuffix(base, cp.allowDNS) {
			return &ErrPolicy{Name: d, Reason: fmt.Sprintf("%s allows only DNS names under %s", where, strings.Join(cp.allowDNS, ", "))}
		}
	}
	for _, ip := range ids.ips {
		for _, n := range cp.denyIP {
			if n.Contains(ip) {
				return &ErrPolicy{Name: ip.String(), Reason: fmt.Sprintf("%s denies IP addresses in %s", where, n)}
			}
		}
		if len(cp.allowIP) > 0 && !anyNet(ip, cp.allowIP) {
			return &ErrPolicy{Name: ip.String(), Reason: fmt.Sprintf("%s allows only IP addresses in %s", where, netsString(cp.allowIP))}
		}
	}
	for _, e := range ids.emails {
		dom := strings.ToLower(e[strings.LastIndexByte(e, '@')+1:])
		for _, s := range cp.denyDNS {
			if hasSuffix(dom, s) {
				return &ErrPolicy{Name: e, Reason: fmt.Sprintf("%s denies names under %q", where, s)}
			}
		}
		if len(cp.allowEmail) > 0 && !anySuffix(dom, cp.allowEmail) {
			return &ErrPolicy{Name: e, Reason: fmt.Sprintf("%s allows only email domains %s", where, strings.Join(cp.allowEmail, ", "))}
		}
	}
	return nil
}

func anySuffix(name string, suffixes []string) bool {
	for _, s := range suffixes {
		if hasSuffix(name, s) {
			return true
		}
	}
	return false
}

func anyNet(ip net.IP, nets []*net.IPNet) bool {
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

func netsString(nets []*net.IPNet) string {
	s := make([]string, len(nets))
	for i, n := range nets {
		s[i] = n.String()
	}
	return strings.Join(s, ", ")
}

// checkPolicy applies the CA-wide policy, then the profile's.
func (c *CA) checkPolicy(ps *profileState, ids identifiers) error {
	if err := c.policy().check(ids, "CA policy"); err != nil {
		return err
	}
	return ps.policy.check(ids, "profile "+ps.name+" policy")
}

func (c *CA) policy() compiledPolicy { return c.caPolicy }

func newProfileState(name string, p Profile) (*profileState, error) {
	reg, err := buildRegistry(p.Lints, p.KeepCN)
	if err != nil {
		return nil, fmt.Errorf("ca: profile %s: %w", name, err)
	}
	linters, err := newCertLinters(reg)
	if err != nil {
		return nil, fmt.Errorf("ca: profile %s: %w", name, err)
	}
	pol, err := compilePolicy(p.Policy)
	if err != nil {
		return nil, fmt.Errorf("ca: profile %s: %w", name, err)
	}
	ps := &profileState{name: name, p: p, registry: reg, linters: linters, policy: pol, keyTypes: map[string]bool{}, sanTypes: map[string]bool{}}
	for _, k := range p.AllowedKeyTypes {
		ps.keyTypes[k] = true
	}
	for _, k := range p.SANTypes {
		ps.sanTypes[k] = true
	}
	for _, e := range p.ExtKeyUsages {
		if e == "serverAuth" {
			ps.server = true
		}
	}
	return ps, nil
}

var ekuByName = map[string]x509.ExtKeyUsage{
	"serverAuth":      x509.ExtKeyUsageServerAuth,
	"clientAuth":      x509.ExtKeyUsageClientAuth,
	"codeSigning":     x509.ExtKeyUsageCodeSigning,
	"emailProtection": x509.ExtKeyUsageEmailProtection,
	"timeStamping":    x509.ExtKeyUsageTimeStamping,
	"ocspSigning":     x509.ExtKeyUsageOCSPSigning,
}

func (ps *profileState) extKeyUsages() []x509.ExtKeyUsage {
	out := make([]x509.ExtKeyUsage, 0, len(ps.p.ExtKeyUsages))
	for _, e := range ps.p.ExtKeyUsages {
		out = append(out, ekuByName[e])
	}
	return out
}

// keyUsage maps the profile's key usages for a subject key. The usages
// that depend on what the key can do are set only for keys that can:
// keyEncipherment and dataEncipherment for RSA (BR 7.1.2.7.11; RFC 5480 §3
// forbids them for EC keys), keyAgreement for ECDSA (ECDH, RFC 5480 §3).
// An Ed25519 key only signs: RFC 8410 §5 allows digitalSignature and
// nonRepudiation (contentCommitment) in an end-entity certificate, nothing
// else.
func (ps *profileState) keyUsage(pub any) x509.KeyUsage {
	_, isRSA := pub.(*rsa.PublicKey)
	_, isEC := pub.(*ecdsa.PublicKey)
	var ku x509.KeyUsage
	for _, k := range ps.p.KeyUsages {
		switch k {
		case "digitalSignature":
			ku |= x509.KeyUsageDigitalSignature
		case "keyEncipherment":
			if isRSA {
				ku |= x509.KeyUsageKeyEncipherment
			}
		case "keyAgreement":
			if isEC {
				ku |= x509.KeyUsageKeyAgreement
			}
		case "contentCommitment":
			ku |= x509.KeyUsageContentCommitment
		case "dataEncipherment":
			if isRSA {
				ku |= x509.KeyUsageDataEncipherment
			}
		}
	}
	return ku
}
