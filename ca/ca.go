// Package ca is hsmca's certificate authority core: profiles and name
// policy, lint-then-sign issuance, revocation, CRLs and OCSP responses.
//
// The CA reaches issuer keys only as crypto.Signer (it never imports hsm)
// and persists through the small Store interface it declares (store
// implements it). Issuance follows DESIGN.md §3: the template is signed with
// a throwaway key of the issuer's key type and that copy is linted (zlint
// plus our own checks), and the copy is recorded in the store, with its
// serial, as pending. With fewer issuances in flight than CPUs the record
// is written while the lints run (its flush overlaps them) and a copy the
// lints refuse has its record marked refused (never signed); otherwise
// only a clean copy is recorded. Either way the issuer key signs only once
// the copy passed every lint and its record is durable: it signs that
// very TBSCertificate (the bytes that were linted, not a re-encoding of
// the template), the signature is verified under the issuer certificate's
// key, the module's audit record of the signature is made durable
// (AuditSyncer), and only then is the final certificate stored. Whatever
// happens in between, every serial that may carry a real signature is on
// record and can be revoked. Before any of this, the CSR is checked; an
// RSA subject key must also have exponent 65537, no prime factor below
// 1000 and primes not so close that Fermat's method finds them
// (goodkey.go).
//
// With Certificate Transparency on for a profile, the recorded and signed
// object is first an RFC 6962 precertificate, whose audit record is made
// durable before it goes to the logs; SCTs from the SCTSource go into the
// final certificate.
package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zmap/zlint/v3/lint"

	"github.com/hsmca/hsmca/internal/p256verify"
)

// SCTSource obtains Signed Certificate Timestamps for a precertificate
// (RFC 6962 §3.1). chain[0] is the precertificate DER, then the issuer chain
// up to the root. scts are TLS-serialised SignedCertificateTimestamp
// structures, each already verified against its log's key. err != nil means
// the policy (min SCTs from distinct operators) was not met and names each
// log's failure; scts still holds what did arrive.
type SCTSource interface {
	GetSCTs(ctx context.Context, chain [][]byte) (scts [][]byte, err error)
}

// Issuer is an issuing CA: its certificate, the chain above it (up to and
// including the root) and its key, reached only as a crypto.Signer.
type Issuer struct {
	Name   string
	Cert   *x509.Certificate
	Chain  []*x509.Certificate
	Signer crypto.Signer
}

// Options are New's optional dependencies; zero values are usable.
type Options struct {
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// Rand is the randomness for serials; nil means crypto/rand.
	Rand io.Reader
	// Logger receives issuance events; nil discards them.
	Logger *slog.Logger
	// SCTs is required if any profile has CT mode embed or best-effort.
	SCTs SCTSource
	// OCSPResponders optionally maps an issuer name to a delegated OCSP
	// responder (RFC 6960 §4.2.2.2) that signs that issuer's responses
	// instead of the issuer key.
	OCSPResponders map[string]OCSPResponder
}

// OCSPResponder is a delegated OCSP signer: a certificate issued by the
// issuer with the id-kp-OCSPSigning extended key usage, and its key.
type OCSPResponder struct {
	Cert   *x509.Certificate
	Signer crypto.Signer
}

// CA issues, revokes and publishes status for certificates. It is safe for
// concurrent use.
type CA struct {
	cfg           Config
	profiles      map[string]*profileState
	issuers       map[string]*issuerState
	issuerOrder   []string
	defaultIssuer string
	store         Store
	clock         func() time.Time
	rand          io.Reader
	randMu        sync.Mutex
	log           *slog.Logger
	scts          SCTSource
	ocsp          ocspCache
	caPolicy      compiledPolicy
	crlRegistry   lint.Registry
	// crlMu serialises GenerateCRL, so that a CRL number is never given
	// to an older snapshot of the revoked list than a lower number's.
	crlMu sync.Mutex

	// inflight counts issuances in progress; overlapRecord decides from
	// it whether an issuance records its copy while linting it (see
	// lintAndReserve). Tests replace overlapRecord to force either way.
	inflight      atomic.Int32
	overlapRecord func(inflight int32) bool
}

type profileState struct {
	name     string
	p        Profile
	registry lint.Registry
	linters  certLinters // registry's certificate lints, prepared once
	policy   compiledPolicy
	keyTypes map[string]bool
	sanTypes map[string]bool
	server   bool // has serverAuth
}

type issuerState struct {
	Issuer
	chainDER [][]byte // issuer cert first, then Chain
	// lintParent is a copy of the issuer certificate whose public key is
	// the throwaway key's, so that x509.CreateCertificate accepts it.
	lintParent *x509.Certificate
	lintKey    crypto.Signer
	keyType    string
	// sigAlgo is the signature algorithm crypto/x509 picks for the
	// issuer's key type, sigAlgDER its AlgorithmIdentifier encoding.
	sigAlgo   x509.SignatureAlgorithm
	sigAlgDER []byte
	// p256 verifies the issuer key's ECDSA P-256 signatures with a table
	// of the key's multiples (about half the time of crypto/x509's check);
	// nil for other key types.
	p256 *p256verify.Key
	// ocsp signs OCSP responses: the issuer itself or a delegated
	// responder.
	ocspCert   *x509.Certificate
	ocspSigner crypto.Signer
	delegated  bool
}

// New builds a CA from a validated config, the issuers (one per
// cfg.Issuers entry, matched by name) and a store. It checks that each
// signer's public key is the issuer certificate's, that each issuer
// certificate is a CA, and builds each profile's lint registry once.
func New(cfg Config, issuers []Issuer, st Store, opts Options) (*CA, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if st == nil {
		return nil, errors.New("ca: a store is required")
	}
	c := &CA{
		cfg:      cfg,
		profiles: map[string]*profileState{},
		issuers:  map[string]*issuerState{},
		store:    st,
		clock:    opts.Clock,
		rand:     opts.Rand,
		log:      opts.Logger,
		scts:     opts.SCTs,

		overlapRecord: recordWhileLinting,
	}
	if c.clock == nil {
		c.clock = time.Now
	}
	if c.rand == nil {
		c.rand = rand.Reader
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.ocsp.init()
	var err error
	if c.caPolicy, err = compilePolicy(cfg.Policy); err != nil {
		return nil, err
	}
	if c.crlRegistry, err = buildCRLRegistry(); err != nil {
		return nil, err
	}

	byName := map[string]Issuer{}
	for _, is := range issuers {
		if _, dup := byName[is.Name]; dup {
			return nil, fmt.Errorf("ca: issuer %q given twice", is.Name)
		}
		byName[is.Name] = is
	}
	for _, ic := range cfg.Issuers {
		is, ok := byName[ic.Name]
		if !ok {
			return nil, fmt.Errorf("ca: issuer %q is configured but no certificate/signer was given", ic.Name)
		}
		delete(byName, ic.Name)
		st, err := newIssuerState(is)
		if err != nil {
			return nil, err
		}
		c.issuers[is.Name] = st
		c.issuerOrder = append(c.issuerOrder, is.Name)
	}
	for name := range byName {
		return nil, fmt.Errorf("ca: issuer %q is not in the config", name)
	}
	for name, r := range opts.OCSPResponders {
		st, ok := c.issuers[name]
		if !ok {
			return nil, fmt.Errorf("ca: OCSP responder for unknown issuer %q", name)
		}
		if err := checkResponder(st, r); err != nil {
			return nil, err
		}
		st.ocspCert, st.ocspSigner, st.delegated = r.Cert, r.Signer, true
	}
	c.defaultIssuer = cfg.DefaultIssuer
	if c.defaultIssuer == "" {
		c.defaultIssuer = c.issuerOrder[0]
	}

	for name, p := range cfg.EffectiveProfiles() {
		ps, err := newProfileState(name, p)
		if err != nil {
			return nil, err
		}
		if p.CT.Mode != CTOff && c.scts == nil {
			return nil, fmt.Errorf("ca: profile %q asks for certificate transparency (mode %s) but no SCT source is configured", name, p.CT.Mode)
		}
		// A source that stops collecting at its own minimum could never
		// give a profile more SCTs than that.
		if m, ok := c.scts.(interface{ MinSCTs() int }); ok && p.CT.Mode != CTOff && p.CT.MinSCTs > m.MinSCTs() {
			return nil, fmt.Errorf("ca: profile %q asks for %d SCTs (ct.min_scts) but the CT client stops at %d; raise the top-level ct.min_scts or lower the profile's", name, p.CT.MinSCTs, m.MinSCTs())
		}
		c.profiles[name] = ps
	}
	return c, nil
}

func newIssuerState(is Issuer) (*issuerState, error) {
	if is.Cert == nil || is.Signer == nil {
		return nil, fmt.Errorf("ca: issuer %q: certificate and signer are required", is.Name)
	}
	if !is.Cert.IsCA || !is.Cert.BasicConstraintsValid {
		return nil, fmt.Errorf("ca: issuer %q: certificate is not a CA certificate", is.Name)
	}
	if is.Cert.KeyUsage != 0 && is.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("ca: issuer %q: certificate lacks the keyCertSign usage", is.Name)
	}
	if len(is.Cert.SubjectKeyId) == 0 {
		return nil, fmt.Errorf("ca: issuer %q: certificate has no subject key identifier", is.Name)
	}
	pub, ok := is.Signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(is.Cert.PublicKey) {
		return nil, fmt.Errorf("ca: issuer %q: signer public key does not match the issuer certificate", is.Name)
	}
	kt, err := keyTypeOf(is.Cert.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("ca: issuer %q: %w", is.Name, err)
	}
	key, err := throwawayKey(kt)
	if err != nil {
		return nil, fmt.Errorf("ca: issuer %q: throwaway %s key: %w", is.Name, kt, err)
	}
	parent := *is.Cert
	parent.PublicKey = key.Public()
	algo, algDER, err := probeSignatureAlgorithm(&parent, key)
	if err != nil {
		return nil, fmt.Errorf("ca: issuer %q: %w", is.Name, err)
	}
	st := &issuerState{Issuer: is, lintParent: &parent, lintKey: key, keyType: kt, sigAlgo: algo, sigAlgDER: algDER, ocspCert: is.Cert, ocspSigner: is.Signer}
	if pub, ok := is.Cert.PublicKey.(*ecdsa.PublicKey); ok && algo == x509.ECDSAWithSHA256 && pub.Curve == elliptic.P256() {
		// 6-bit windows: a 260 KiB table, built once per issuer in
		// about 1.5 ms, for every certificate's signature check.
		if st.p256, err = p256verify.New(pub, 6); err != nil {
			return nil, fmt.Errorf("ca: issuer %q: %w", is.Name, err)
		}
	}
	st.chainDER = append(st.chainDER, is.Cert.Raw)
	for _, c := range is.Chain {
		st.chainDER = append(st.chainDER, c.Raw)
	}
	return st, nil
}

// checkSignature verifies sig, made by the issuer key, over tbs (a
// TBSCertificate or TBSCertList) under the issuer certificate's key.
func (iss *issuerState) checkSignature(tbs, sig []byte) error {
	if iss.p256 != nil {
		h := sha256.Sum256(tbs)
		if !iss.p256.VerifyASN1(h[:], sig) {
			return errors.New("ECDSA verification failure")
		}
		return nil
	}
	return iss.Cert.CheckSignature(iss.sigAlgo, tbs, sig)
}

// checkResponder checks a delegated OCSP responder: issued by the issuer,
// OCSPSigning EKU, key matching its signer.
func checkResponder(st *issuerState, r OCSPResponder) error {
	if r.Cert == nil || r.Signer == nil {
		return fmt.Errorf("ca: issuer %q: OCSP responder needs a certificate and a signer", st.Name)
	}
	if err := r.Cert.CheckSignatureFrom(st.Cert); err != nil {
		return fmt.Errorf("ca: issuer %q: OCSP responder certificate is not issued by it: %w", st.Name, err)
	}
	hasEKU := false
	for _, e := range r.Cert.ExtKeyUsage {
		hasEKU = hasEKU || e == x509.ExtKeyUsageOCSPSigning
	}
	if !hasEKU {
		return fmt.Errorf("ca: issuer %q: OCSP responder certificate lacks the OCSPSigning extended key usage", st.Name)
	}
	pub, ok := r.Signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(r.Cert.PublicKey) {
		return fmt.Errorf("ca: issuer %q: OCSP responder signer does not match its certificate", st.Name)
	}
	return nil
}

// throwawayKeys caches one throwaway key per key type for the life of the
// process, so that a CA rebuilt on a config reload does not pay for RSA key
// generation again. The keys sign only the linted copies, which are never
// handed out.
var throwawayKeys struct {
	sync.Mutex
	m map[string]crypto.Signer
}

// throwawayKey returns the cached throwaway key of type kt, making it on
// first use.
func throwawayKey(kt string) (crypto.Signer, error) {
	throwawayKeys.Lock()
	defer throwawayKeys.Unlock()
	if k, ok := throwawayKeys.m[kt]; ok {
		return k, nil
	}
	var k crypto.Signer
	var err error
	switch kt {
	case "ecdsa-p256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ecdsa-p384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ecdsa-p521":
		k, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "rsa-2048", "rsa-3072", "rsa-4096":
		bits := map[string]int{"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}[kt]
		k, err = rsa.GenerateKey(rand.Reader, bits)
	case "ed25519":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("unsupported issuer key type %s", kt)
	}
	if err != nil {
		return nil, err
	}
	if throwawayKeys.m == nil {
		throwawayKeys.m = map[string]crypto.Signer{}
	}
	throwawayKeys.m[kt] = k
	return k, nil
}

// keyTypeOf names a public key like the profiles do (ecdsa-p256, rsa-2048,
// ed25519); an RSA key of another size is named rsa-<bits>.
func keyTypeOf(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return "ecdsa-p256", nil
		case elliptic.P384():
			return "ecdsa-p384", nil
		case elliptic.P521():
			return "ecdsa-p521", nil
		}
		return "", fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen()), nil
	case ed25519.PublicKey:
		return "ed25519", nil
	}
	return "", fmt.Errorf("unsupported public key type %T", pub)
}

// Issuers returns the issuer names in configuration order.
func (c *CA) Issuers() []string { return append([]string(nil), c.issuerOrder...) }

// Issuer returns the named issuer ("" means the default) or ErrUnknownIssuer.
func (c *CA) Issuer(name string) (Issuer, error) {
	st, err := c.issuer(name)
	if err != nil {
		return Issuer{}, err
	}
	return st.Issuer, nil
}

func (c *CA) issuer(name string) (*issuerState, error) {
	if name == "" {
		name = c.defaultIssuer
	}
	st, ok := c.issuers[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownIssuer, name)
	}
	return st, nil
}

// Profiles returns the effective profiles (defaults filled in).
func (c *CA) Profiles() map[string]Profile {
	out := make(map[string]Profile, len(c.profiles))
	for n, p := range c.profiles {
		out[n] = p.p
	}
	return out
}

// Config returns the configuration the CA was built with.
func (c *CA) Config() Config { return c.cfg }

// LoadIssuer reads an issuer's certificate and chain from the PEM files ic
// names (relative paths are taken from baseDir) and pairs them with signer.
// It does not check the signer; New does.
func LoadIssuer(ic IssuerConfig, baseDir string, signer crypto.Signer) (Issuer, error) {
	certs, err := readPEMCerts(resolvePath(baseDir, ic.Certificate))
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: issuer %q: %w", ic.Name, err)
	}
	if len(certs) == 0 {
		return Issuer{}, fmt.Errorf("ca: issuer %q: %s holds no certificate", ic.Name, ic.Certificate)
	}
	is := Issuer{Name: ic.Name, Cert: certs[0], Chain: certs[1:], Signer: signer}
	if ic.Chain != "" {
		chain, err := readPEMCerts(resolvePath(baseDir, ic.Chain))
		if err != nil {
			return Issuer{}, fmt.Errorf("ca: issuer %q: chain: %w", ic.Name, err)
		}
		is.Chain = append(is.Chain, chain...)
	}
	return is, nil
}

func resolvePath(base, p string) string {
	if filepath.IsAbs(p) || base == "" {
		return p
	}
	return filepath.Join(base, p)
}

func readPEMCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParsePEMCertificates(b)
}

// ParsePEMCertificates parses every CERTIFICATE block in b and refuses other
// block types.
func ParsePEMCertificates(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for i := 0; i < 1000; i++ {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q (want CERTIFICATE)", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return nil, errors.New("too many PEM blocks")
}
