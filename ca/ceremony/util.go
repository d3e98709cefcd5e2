package ceremony

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/hsmca/hsmca/ca"
)

var extKeyUsages = map[string]x509.ExtKeyUsage{
	"server-auth":      x509.ExtKeyUsageServerAuth,
	"client-auth":      x509.ExtKeyUsageClientAuth,
	"code-signing":     x509.ExtKeyUsageCodeSigning,
	"email-protection": x509.ExtKeyUsageEmailProtection,
	"ocsp-signing":     x509.ExtKeyUsageOCSPSigning,
	"time-stamping":    x509.ExtKeyUsageTimeStamping,
}

// keyAlgorithm checks a key type name.
func keyAlgorithm(t string) (string, error) {
	switch t {
	case "ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519":
		return t, nil
	case "":
		return "", fmt.Errorf("ceremony: key.type is required (ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519)")
	}
	return "", fmt.Errorf("ceremony: unknown key.type %q (want ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519)", t)
}

// keyTypeOf names a public key's type in key-type spelling.
func keyTypeOf(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return "ecdsa-p256"
		case elliptic.P384():
			return "ecdsa-p384"
		}
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen())
	case ed25519.PublicKey:
		return "ed25519"
	}
	return "unknown"
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

// spkiHash is the hex SHA-256 of the key's SubjectPublicKeyInfo.
func spkiHash(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// subjectKeyID is the first 160 bits of the SHA-256 of the key's
// subjectPublicKey bits (RFC 7093 §2 method 1).
func subjectKeyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	var spki struct {
		Algorithm asn1.RawValue
		Key       asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil
	}
	sum := sha256.Sum256(spki.Key.Bytes)
	return sum[:20]
}

func parseOID(s string) (x509.OID, error) {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return x509.OID{}, fmt.Errorf("bad OID %q", s)
	}
	var arcs []uint64
	for _, p := range parts {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return x509.OID{}, fmt.Errorf("bad OID %q", s)
		}
		arcs = append(arcs, n)
	}
	return x509.OIDFromInts(arcs)
}

func parseCIDR(s string) (*net.IPNet, error) {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		return nil, fmt.Errorf("bad CIDR %q", s)
	}
	return n, nil
}

func parseSerial(s string) (string, error) { return ca.ParseSerial(s) }

// parseReason accepts the RFC 5280 reason names; unlike leaf revocation, a
// ceremony CRL may also list a CA with cACompromise.
func parseReason(s string) (int, error) {
	if strings.EqualFold(s, "cACompromise") || strings.EqualFold(s, "ca-compromise") {
		return 2, nil
	}
	return ca.ParseReason(s)
}

func randReader() io.Reader { return rand.Reader }
