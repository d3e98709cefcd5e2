package ct

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// ParseCertificates reads certificates from PEM ("CERTIFICATE" blocks, in
// order, other blocks ignored) or from a single DER certificate. The CLI
// uses it for CERT.pem and --issuer files.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] == 0x30 {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, fmt.Errorf("ct: parse DER certificate: %w", err)
		}
		return []*x509.Certificate{c}, nil
	}
	var out []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ct: parse certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("ct: no certificate found (want PEM CERTIFICATE blocks or DER)")
	}
	return out, nil
}
