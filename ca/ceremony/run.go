package ceremony

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// KeyRef describes a module key without private material.
type KeyRef struct {
	ID     string
	Label  string
	Type   string
	Public crypto.PublicKey
}

// Keys is how a ceremony reaches the HSM module. The CLI implements it over
// package hsm.
type Keys interface {
	// Activate brings partition to the active state for an operation that
	// needs the given number of signatures (a per-operation partition
	// seals itself after them), gathering the custodians' quorum. An
	// already active online partition needs nothing.
	Activate(partition string, signatures int) error
	// GenerateKey makes a non-exportable key in an active partition.
	GenerateKey(partition, keyType, label string) (KeyRef, error)
	// Key describes an existing key (by label or ID); works while sealed.
	Key(partition, key string) (KeyRef, error)
	// Signer returns the key as a crypto.Signer.
	Signer(partition, key string) (crypto.Signer, error)
	// Seal seals partition (a no-op when it is sealed already).
	Seal(partition string) error
	// AuditHead is the module audit log's position (record count and head
	// hash), quoted in the transcript before and after.
	AuditHead() (count uint64, hash string, err error)
}

// Options are Run's dependencies.
type Options struct {
	Keys  Keys
	Clock func() time.Time // nil: time.Now
	Rand  io.Reader        // nil: crypto/rand
	// Progress receives one line per step (for the operator watching);
	// nil discards.
	Progress io.Writer
}

// Transcript is what a ceremony did, for the record. Its String form is what
// `hsmca ceremony run` prints.
type Transcript struct {
	File        string
	FileSHA256  string
	Kind        string
	Description string
	Started     time.Time
	Finished    time.Time
	AuditBefore AuditPosition
	AuditAfter  AuditPosition
	// Keys are the keys the ceremony generated or used.
	Keys []TranscriptKey
	// Outputs are the files written, with their SHA-256 fingerprints.
	Outputs []TranscriptOutput
	// Checks are the verifications that passed.
	Checks []string
}

// AuditPosition is a position in the module's audit log.
type AuditPosition struct {
	Count uint64
	Hash  string
}

// TranscriptKey is one key a ceremony touched.
type TranscriptKey struct {
	Role      string // "generated", "subject", "issuer"
	Partition string
	ID        string
	Label     string
	Type      string
	SPKI      string // SHA-256 of the SubjectPublicKeyInfo, hex
}

// TranscriptOutput is one file a ceremony wrote.
type TranscriptOutput struct {
	What        string // certificate, crl, public key
	Path        string
	SHA256      string // of the DER
	Subject     string `json:",omitempty"`
	Serial      string `json:",omitempty"`
	NotBefore   time.Time
	NotAfter    time.Time
	Description string `json:",omitempty"`
}

// String renders the transcript as plain text, one fact per line.
func (t *Transcript) String() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "ceremony transcript\n")
	fmt.Fprintf(&b, "  file:          %s\n", t.File)
	fmt.Fprintf(&b, "  file sha256:   %s\n", t.FileSHA256)
	fmt.Fprintf(&b, "  kind:          %s\n", t.Kind)
	if t.Description != "" {
		fmt.Fprintf(&b, "  description:   %s\n", t.Description)
	}
	fmt.Fprintf(&b, "  started:       %s\n", t.Started.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "  finished:      %s\n", t.Finished.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "  audit before:  record %d, head %s\n", t.AuditBefore.Count, t.AuditBefore.Hash)
	fmt.Fprintf(&b, "  audit after:   record %d, head %s\n", t.AuditAfter.Count, t.AuditAfter.Hash)
	for _, k := range t.Keys {
		fmt.Fprintf(&b, "  key (%s): partition=%s id=%s label=%s type=%s spki-sha256=%s\n", k.Role, k.Partition, k.ID, k.Label, k.Type, k.SPKI)
	}
	for _, o := range t.Outputs {
		fmt.Fprintf(&b, "  output (%s): %s sha256=%s", o.What, o.Path, o.SHA256)
		if o.Serial != "" {
			fmt.Fprintf(&b, " serial=%s", o.Serial)
		}
		if o.Subject != "" {
			fmt.Fprintf(&b, " subject=%q", o.Subject)
		}
		if !o.NotAfter.IsZero() {
			fmt.Fprintf(&b, " valid=%s..%s", o.NotBefore.UTC().Format(time.RFC3339), o.NotAfter.UTC().Format(time.RFC3339))
		}
		if o.Description != "" {
			fmt.Fprintf(&b, " %s", o.Description)
		}
		b.WriteByte('\n')
	}
	for _, c := range t.Checks {
		fmt.Fprintf(&b, "  verified: %s\n", c)
	}
	return b.String()
}

// runner carries one ceremony's state.
type runner struct {
	f     *File
	opts  Options
	clock func() time.Time
	rand  io.Reader
	t     *Transcript
}

// Run performs the ceremony f describes. On success every output has been
// written and verified; on failure nothing has been written (outputs are
// checked before any key is touched and written only at the end) except
// that a key the ceremony generated stays in the module, which the
// transcript of the error names.
func Run(ctx context.Context, f *File, opts Options) (*Transcript, error) {
	if opts.Keys == nil {
		return nil, errors.New("ceremony: no module")
	}
	r := &runner{f: f, opts: opts, clock: opts.Clock, rand: opts.Rand}
	if r.clock == nil {
		r.clock = time.Now
	}
	if r.rand == nil {
		r.rand = rand.Reader
	}
	s := &f.Spec
	if err := s.Validate(); err != nil {
		return nil, err
	}
	for _, out := range []string{s.Outputs.Certificate, s.Outputs.PublicKey, s.Outputs.CRL} {
		if out == "" {
			continue
		}
		if _, err := os.Stat(out); err == nil {
			return nil, fmt.Errorf("ceremony: output %s already exists; a ceremony never overwrites (move it away or name another output)", out)
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("ceremony: output %s: %w", out, err)
		}
		if dir := filepath.Dir(out); dir != "" {
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return nil, fmt.Errorf("ceremony: output directory %s does not exist", dir)
			}
		}
	}
	r.t = &Transcript{File: f.Path, FileSHA256: f.SHA256, Kind: s.Kind, Description: s.Description, Started: r.clock()}
	count, hash, err := opts.Keys.AuditHead()
	if err != nil {
		return nil, fmt.Errorf("ceremony: audit head: %w", err)
	}
	r.t.AuditBefore = AuditPosition{count, hash}

	switch s.Kind {
	case KindKey:
		err = r.key(ctx)
	case KindRoot:
		err = r.root(ctx)
	case KindIntermediate:
		err = r.intermediate(ctx)
	case KindCrossSign:
		err = r.crossSign(ctx)
	case KindCRL:
		err = r.crl(ctx)
	}
	// Seal everything this ceremony may have activated, whatever happened.
	for _, p := range r.partitions() {
		if serr := opts.Keys.Seal(p); serr != nil && err == nil {
			err = fmt.Errorf("ceremony: seal %s: %w", p, serr)
		}
	}
	if err != nil {
		return r.t, err
	}
	count, hash, err = opts.Keys.AuditHead()
	if err != nil {
		return r.t, fmt.Errorf("ceremony: audit head: %w", err)
	}
	r.t.AuditAfter = AuditPosition{count, hash}
	r.t.Finished = r.clock()
	return r.t, nil
}

func (r *runner) partitions() []string {
	s := &r.f.Spec
	var ps []string
	for _, p := range []string{s.Key.Partition, s.Issuer.Partition} {
		if p != "" && (len(ps) == 0 || ps[0] != p) {
			ps = append(ps, p)
		}
	}
	return ps
}

func (r *runner) progress(format string, args ...any) {
	if r.opts.Progress != nil {
		fmt.Fprintf(r.opts.Progress, format+"\n", args...)
	}
}

// subjectKey generates the ceremony's key or looks up the existing one.
// The partition is activated for signatures signatures (the root's
// self-signature, or none).
func (r *runner) subjectKey(signatures int) (KeyRef, error) {
	k := r.f.Spec.Key
	var ref KeyRef
	var err error
	if k.Existing {
		ref, err = r.opts.Keys.Key(k.Partition, k.Label)
		if err != nil {
			return ref, fmt.Errorf("ceremony: key %s in %s: %w", k.Label, k.Partition, err)
		}
		if signatures > 0 {
			if err := r.activate(k.Partition, signatures); err != nil {
				return ref, err
			}
		}
		r.addKey("subject", k.Partition, ref)
		return ref, nil
	}
	if err := r.activate(k.Partition, max(signatures, 1)); err != nil {
		return ref, err
	}
	r.progress("generating %s key %q in partition %s", k.Type, k.Label, k.Partition)
	ref, err = r.opts.Keys.GenerateKey(k.Partition, k.Type, k.Label)
	if err != nil {
		return ref, fmt.Errorf("ceremony: generate key %s in %s: %w", k.Label, k.Partition, err)
	}
	r.addKey("generated", k.Partition, ref)
	return ref, nil
}

func (r *runner) activate(partition string, signatures int) error {
	r.progress("partition %s: quorum needed for an operation of %d signature(s)", partition, signatures)
	if err := r.opts.Keys.Activate(partition, signatures); err != nil {
		return fmt.Errorf("ceremony: activate %s: %w", partition, err)
	}
	return nil
}

func (r *runner) addKey(role, partition string, k KeyRef) {
	r.t.Keys = append(r.t.Keys, TranscriptKey{Role: role, Partition: partition, ID: k.ID, Label: k.Label, Type: k.Type, SPKI: spkiHash(k.Public)})
}

// issuer loads the issuer's certificate and checks it belongs to the key.
func (r *runner) issuer() (*x509.Certificate, KeyRef, error) {
	is := r.f.Spec.Issuer
	cert, err := readCertificate(is.Certificate)
	if err != nil {
		return nil, KeyRef{}, err
	}
	ref, err := r.opts.Keys.Key(is.Partition, is.Key)
	if err != nil {
		return nil, KeyRef{}, fmt.Errorf("ceremony: issuer key %s in %s: %w", is.Key, is.Partition, err)
	}
	if !publicKeysEqual(cert.PublicKey, ref.Public) {
		return nil, KeyRef{}, fmt.Errorf("ceremony: issuer certificate %s does not belong to key %s in partition %s", is.Certificate, is.Key, is.Partition)
	}
	if !cert.IsCA {
		return nil, KeyRef{}, fmt.Errorf("ceremony: issuer certificate %s is not a CA certificate", is.Certificate)
	}
	r.addKey("issuer", is.Partition, ref)
	return cert, ref, nil
}

func (r *runner) key(context.Context) error {
	ref, err := r.subjectKey(0)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(ref.Public)
	if err != nil {
		return fmt.Errorf("ceremony: %w", err)
	}
	if err := writeOutput(r.f.Spec.Outputs.PublicKey, "PUBLIC KEY", der, 0o644); err != nil {
		return err
	}
	r.addOutput("public key", r.f.Spec.Outputs.PublicKey, der, nil)
	return nil
}

func (r *runner) root(context.Context) error {
	s := &r.f.Spec
	ref, err := r.subjectKey(1)
	if err != nil {
		return err
	}
	tmpl, err := r.caTemplate(s.Certificate, nil, true)
	if err != nil {
		return err
	}
	signer, err := r.opts.Keys.Signer(s.Key.Partition, ref.ID)
	if err != nil {
		return fmt.Errorf("ceremony: %w", err)
	}
	der, err := r.lintAndSign(tmpl, tmpl, ref.Public, signer, keyTypeOf(ref.Public))
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("ceremony: parse result: %w", err)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return fmt.Errorf("ceremony: root self-signature does not verify: %w", err)
	}
	r.check("self-signature of %s verifies", cert.Subject)
	if !publicKeysEqual(cert.PublicKey, ref.Public) {
		return errors.New("ceremony: root certificate's key is not the module key")
	}
	r.check("certificate key equals module key %s", ref.ID)
	if err := verifyChain(cert, cert, nil); err != nil {
		return err
	}
	return r.writeCert(der, cert)
}

func (r *runner) intermediate(context.Context) error {
	s := &r.f.Spec
	issCert, issRef, err := r.issuer()
	if err != nil {
		return err
	}
	ref, err := r.subjectKey(0)
	if err != nil {
		return err
	}
	return r.certifyByIssuer(s.Certificate, nil, ref.Public, issCert, issRef, func(cert *x509.Certificate) error {
		if !publicKeysEqual(cert.PublicKey, ref.Public) {
			return errors.New("ceremony: intermediate certificate's key is not the module key")
		}
		r.check("certificate key equals module key %s", ref.ID)
		return nil
	})
}

func (r *runner) crossSign(context.Context) error {
	s := &r.f.Spec
	issCert, issRef, err := r.issuer()
	if err != nil {
		return err
	}
	subject, err := readCertificate(s.Certificate.Certificate)
	if err != nil {
		return err
	}
	if !subject.IsCA {
		return fmt.Errorf("ceremony: %s is not a CA certificate", s.Certificate.Certificate)
	}
	return r.certifyByIssuer(s.Certificate, subject, subject.PublicKey, issCert, issRef, func(cert *x509.Certificate) error {
		if !bytes.Equal(cert.RawSubject, subject.RawSubject) || !publicKeysEqual(cert.PublicKey, subject.PublicKey) {
			return errors.New("ceremony: cross-signed certificate's subject or key differs from the input")
		}
		r.check("subject and key equal those of %s", s.Certificate.Certificate)
		return nil
	})
}

// certifyByIssuer makes a CA certificate for pub signed by the issuer key
// (one signature of the issuer's partition), verifies it and writes it.
func (r *runner) certifyByIssuer(cs CertSpec, from *x509.Certificate, pub crypto.PublicKey, issCert *x509.Certificate, issRef KeyRef, extra func(*x509.Certificate) error) error {
	s := &r.f.Spec
	tmpl, err := r.caTemplate(cs, from, false)
	if err != nil {
		return err
	}
	// Go takes the authority key identifier from the issuer only when the
	// names differ; a cross-sign between same-named CAs needs it set.
	tmpl.AuthorityKeyId = issCert.SubjectKeyId
	if tmpl.NotAfter.After(issCert.NotAfter) {
		return fmt.Errorf("ceremony: certificate would outlive its issuer (issuer expires %s)", issCert.NotAfter.UTC().Format(time.RFC3339))
	}
	if err := r.activate(s.Issuer.Partition, 1); err != nil {
		return err
	}
	signer, err := r.opts.Keys.Signer(s.Issuer.Partition, issRef.ID)
	if err != nil {
		return fmt.Errorf("ceremony: %w", err)
	}
	der, err := r.lintAndSign(tmpl, issCert, pub, signer, keyTypeOf(issRef.Public))
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("ceremony: parse result: %w", err)
	}
	if err := cert.CheckSignatureFrom(issCert); err != nil {
		return fmt.Errorf("ceremony: signature by %s does not verify: %w", issCert.Subject, err)
	}
	r.check("signature by %s verifies", issCert.Subject)
	if err := extra(cert); err != nil {
		return err
	}
	if err := verifyChain(cert, issCert, nil); err != nil {
		return err
	}
	r.check("chains to %s", issCert.Subject)
	return r.writeCert(der, cert)
}

func (r *runner) writeCert(der []byte, cert *x509.Certificate) error {
	out := r.f.Spec.Outputs.Certificate
	if err := writeOutput(out, "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	r.addOutput("certificate", out, der, cert)
	if pk := r.f.Spec.Outputs.PublicKey; pk != "" {
		spki, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
		if err != nil {
			return fmt.Errorf("ceremony: %w", err)
		}
		if err := writeOutput(pk, "PUBLIC KEY", spki, 0o644); err != nil {
			return err
		}
		r.addOutput("public key", pk, spki, nil)
	}
	return nil
}

func (r *runner) check(format string, args ...any) {
	r.t.Checks = append(r.t.Checks, fmt.Sprintf(format, args...))
}

func (r *runner) addOutput(what, path string, der []byte, cert *x509.Certificate) {
	sum := sha256.Sum256(der)
	o := TranscriptOutput{What: what, Path: path, SHA256: hex.EncodeToString(sum[:])}
	if cert != nil {
		o.Subject = cert.Subject.String()
		o.Serial = fmt.Sprintf("%x", cert.SerialNumber)
		o.NotBefore, o.NotAfter = cert.NotBefore, cert.NotAfter
	}
	r.t.Outputs = append(r.t.Outputs, o)
}

// serial returns a fresh positive serial of 159 random bits (RFC 5280 allows
// 20 octets; the top bit is clear so the DER stays positive).
func (r *runner) serial() (*big.Int, error) {
	b := make([]byte, 20)
	if _, err := io.ReadFull(r.rand, b); err != nil {
		return nil, fmt.Errorf("ceremony: serial: %w", err)
	}
	b[0] &= 0x7f
	if b[0] == 0 {
		b[0] = 0x01
	}
	return new(big.Int).SetBytes(b), nil
}

// caTemplate builds a CA certificate template from cs. For cross-sign, from
// supplies the subject.
func (r *runner) caTemplate(cs CertSpec, from *x509.Certificate, isRoot bool) (*x509.Certificate, error) {
	serial, err := r.serial()
	if err != nil {
		return nil, err
	}
	validity, _ := parseValidity(cs.Validity)
	notBefore := r.clock().UTC().Truncate(time.Second)
	if cs.NotBefore != "" {
		notBefore, _ = time.Parse(time.RFC3339, cs.NotBefore)
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		CRLDistributionPoints: cs.CRLURLs,
		IssuingCertificateURL: cs.IssuerURLs,
		OCSPServer:            cs.OCSPURLs,
	}
	if from != nil {
		t.RawSubject = from.RawSubject
		t.SubjectKeyId = from.SubjectKeyId
	} else {
		t.Subject = pkix.Name{
			CommonName:         cs.Subject.CommonName,
			Organization:       cs.Subject.Organization,
			OrganizationalUnit: cs.Subject.OrganizationalUnit,
			Country:            cs.Subject.Country,
			Province:           cs.Subject.Province,
			Locality:           cs.Subject.Locality,
		}
	}
	switch {
	case cs.PathLength != nil:
		t.MaxPathLen = *cs.PathLength
		t.MaxPathLenZero = *cs.PathLength == 0
	case isRoot:
		t.MaxPathLen = -1
	default:
		t.MaxPathLen = 0
		t.MaxPathLenZero = true
	}
	for _, e := range cs.ExtKeyUsages {
		t.ExtKeyUsage = append(t.ExtKeyUsage, extKeyUsages[e])
	}
	for _, p := range cs.Policies {
		oid, _ := parseOID(p)
		t.Policies = append(t.Policies, oid)
	}
	nc := cs.NameConstraints
	t.PermittedDNSDomainsCritical = nc.Critical
	t.PermittedDNSDomains = nc.PermittedDNS
	t.ExcludedDNSDomains = nc.ExcludedDNS
	t.PermittedEmailAddresses = nc.PermittedEmail
	t.ExcludedEmailAddresses = nc.ExcludedEmail
	for _, c := range nc.PermittedIP {
		n, _ := parseCIDR(c)
		t.PermittedIPRanges = append(t.PermittedIPRanges, n)
	}
	for _, c := range nc.ExcludedIP {
		n, _ := parseCIDR(c)
		t.ExcludedIPRanges = append(t.ExcludedIPRanges, n)
	}
	return t, nil
}

// verifyChain checks that cert chains to root with crypto/x509's own path
// building (any key usage: CA certificates may carry none).
func verifyChain(cert, issuer *x509.Certificate, intermediates []*x509.Certificate) error {
	roots := x509.NewCertPool()
	roots.AddCert(issuer)
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	_, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: cert.NotBefore.Add(time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("ceremony: result does not chain to %s: %w", issuer.Subject, err)
	}
	return nil
}

// writeOutput writes one PEM block to a new file; it refuses to replace an
// existing file even if one appeared since the ceremony started.
func writeOutput(path, blockType string, der []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("ceremony: write %s: %w", path, err)
	}
	if err := pem.Encode(f, &pem.Block{Type: blockType, Bytes: der}); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("ceremony: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("ceremony: write %s: %w", path, err)
	}
	return f.Close()
}

// readCertificate reads the first certificate of a PEM file.
func readCertificate(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("ceremony: %s holds no PEM certificate", path)
		}
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("ceremony: %s: %w", path, err)
			}
			return c, nil
		}
	}
}
