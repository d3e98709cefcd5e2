package ct

import (
	"bytes"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"

	ctgo "github.com/google/certificate-transparency-go"
	"github.com/google/certificate-transparency-go/tls"
	ctx509 "github.com/google/certificate-transparency-go/x509"
)

var (
	// OIDPoison is the precertificate poison extension (RFC 6962 section
	// 3.1).
	OIDPoison = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 3}
	// OIDSCTList is the embedded SCT list extension (RFC 6962 section 3.3).
	OIDSCTList = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 2}
)

// PoisonExtension marks a certificate as a precertificate: critical, with
// an ASN.1 NULL value (RFC 6962 section 3.1), so that no RFC 5280 validator
// accepts it as a certificate. Copy it into the template's ExtraExtensions.
var PoisonExtension = pkix.Extension{Id: OIDPoison, Critical: true, Value: []byte{0x05, 0x00}}

// maxSCTList is the largest TLS-encoded SCT list that fits the 16-bit
// length prefix of RFC 6962 section 3.3.
const maxSCTList = 1<<16 - 1

// SCTListExtension returns the non-critical extension that embeds scts (each
// a TLS-serialised SignedCertificateTimestamp as GetSCTs returns them) in a
// certificate: an OCTET STRING wrapping the TLS SignedCertificateTimestampList
// (RFC 6962 section 3.3). Each SCT must parse; the list must not be empty.
func SCTListExtension(scts [][]byte) (pkix.Extension, error) {
	if len(scts) == 0 {
		return pkix.Extension{}, errors.New("ct: no SCTs to embed")
	}
	var list ctx509.SignedCertificateTimestampList
	for i, s := range scts {
		if _, err := ParseSCT(s); err != nil {
			return pkix.Extension{}, fmt.Errorf("ct: SCT %d: %w", i, err)
		}
		list.SCTList = append(list.SCTList, ctx509.SerializedSCT{Val: s})
	}
	raw, err := tls.Marshal(list)
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("ct: encode SCT list: %w", err)
	}
	if len(raw)-2 > maxSCTList {
		return pkix.Extension{}, fmt.Errorf("ct: SCT list too long (%d bytes)", len(raw))
	}
	val, err := asn1.Marshal(raw)
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("ct: encode SCT list: %w", err)
	}
	return pkix.Extension{Id: OIDSCTList, Value: val}, nil
}

// ParseSCTList parses the value of an SCT list extension (the OCTET STRING
// wrapping a TLS SignedCertificateTimestampList) and returns the serialised
// SCTs it holds. It checks the framing, not the SCTs; use ParseSCT on each.
func ParseSCTList(extValue []byte) ([][]byte, error) {
	var raw []byte
	rest, err := asn1.Unmarshal(extValue, &raw)
	if err != nil {
		return nil, fmt.Errorf("ct: SCT list extension: %w", err)
	}
	if len(rest) != 0 {
		return nil, errors.New("ct: SCT list extension: trailing data after OCTET STRING")
	}
	var list ctx509.SignedCertificateTimestampList
	rest, err = tls.Unmarshal(raw, &list)
	if err != nil {
		return nil, fmt.Errorf("ct: SCT list: %w", err)
	}
	if len(rest) != 0 {
		return nil, errors.New("ct: SCT list: trailing data")
	}
	out := make([][]byte, 0, len(list.SCTList))
	for _, s := range list.SCTList {
		out = append(out, s.Val)
	}
	return out, nil
}

// ParseSCT parses one TLS-serialised SignedCertificateTimestamp (RFC 6962
// section 3.2). Only version 1 is accepted and no trailing data is allowed.
func ParseSCT(b []byte) (*ctgo.SignedCertificateTimestamp, error) {
	var sct ctgo.SignedCertificateTimestamp
	rest, err := tls.Unmarshal(b, &sct)
	if err != nil {
		return nil, fmt.Errorf("ct: parse SCT: %w", err)
	}
	if len(rest) != 0 {
		return nil, errors.New("ct: parse SCT: trailing data")
	}
	if sct.SCTVersion != ctgo.V1 {
		return nil, fmt.Errorf("ct: parse SCT: unsupported version %d", sct.SCTVersion)
	}
	return &sct, nil
}

// serializeSCT returns the TLS encoding of sct.
func serializeSCT(sct *ctgo.SignedCertificateTimestamp) ([]byte, error) {
	b, err := tls.Marshal(*sct)
	if err != nil {
		return nil, fmt.Errorf("ct: encode SCT: %w", err)
	}
	return b, nil
}

// MatchesPrecert checks that finalDER is the certificate that precertDER
// promised (RFC 6962 section 3.1): the TBSCertificate of the final
// certificate without its SCT list must equal the precertificate's
// TBSCertificate without its poison, byte for byte, so serial, names, key,
// validity and every other extension are the same. Run it before storing a
// final certificate.
func MatchesPrecert(precertDER, finalDER []byte) error {
	pre, err := parseCT(precertDER)
	if err != nil {
		return fmt.Errorf("ct: precertificate: %w", err)
	}
	fin, err := parseCT(finalDER)
	if err != nil {
		return fmt.Errorf("ct: final certificate: %w", err)
	}
	if !pre.IsPrecertificate() {
		return errors.New("ct: precertificate has no poison extension")
	}
	if fin.IsPrecertificate() {
		return errors.New("ct: final certificate carries the poison extension")
	}
	preTBS, err := ctx509.RemoveCTPoison(pre.RawTBSCertificate)
	if err != nil {
		return fmt.Errorf("ct: precertificate: %w", err)
	}
	finTBS := fin.RawTBSCertificate
	hasList := false
	for _, e := range fin.Extensions {
		hasList = hasList || e.Id.String() == OIDSCTList.String()
	}
	if hasList {
		if finTBS, err = ctx509.RemoveSCTList(fin.RawTBSCertificate); err != nil {
			return fmt.Errorf("ct: final certificate: %w", err)
		}
	}
	if !bytes.Equal(preTBS, finTBS) {
		return errors.New("ct: final certificate does not match its precertificate (TBS differs beyond poison and SCT list)")
	}
	return nil
}

// parseCT parses DER with the CT-aware x509 fork, tolerating its non-fatal
// errors (which it reports for things like unknown critical extensions).
func parseCT(der []byte) (*ctx509.Certificate, error) {
	c, err := ctx509.ParseCertificate(der)
	if c != nil && err != nil && !ctx509.IsFatal(err) {
		err = nil
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}
