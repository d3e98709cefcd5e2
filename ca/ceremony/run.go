package ceremony

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"time"

	"github.com/hsmca/hsmca/ca"
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
	// PartitionPolicy is the partition's activation policy:
	// PolicyPerOperation or PolicyOnline. Works while sealed.
	PartitionPolicy(partition string) (string, error)
	// Signer returns the key as a crypto.Signer.
	Signer(partition, key string) (crypto.Signer, error)
	// Seal seals partition (a no-op when it is sealed already).
	Seal(partition string) error
	// AuditHead is the module audit log's position (record count and head
	// hash), quoted in the transcript before and after.
	AuditHead() (count uint64, hash string, err error)
}

// Partition policies as Keys.PartitionPolicy names them (hsm.Policy).
const (
	// PolicyPerOperation partitions seal themselves after the signatures
	// of one operation; a root key must live in one.
	PolicyPerOperation = "per-operation"
	// PolicyOnline partitions stay active until sealed.
	PolicyOnline = "online"
)

// ErrNotPerOperation is returned when a root ceremony names a key in a
// partition that is not per-operation: such a root key could sign again,
// without a fresh quorum, for as long as its partition stays active.
var ErrNotPerOperation = errors.New("ceremony: a root key must be in a per-operation partition")

// GeneratedKeyError is the error of a ceremony that failed after it had
// generated its key. The module keeps the key (a ceremony never deletes
// one); the transcript names it too. The operator destroys it, or certifies
// it in a corrected ceremony with key.existing: true.
type GeneratedKeyError struct {
	Partition string
	Key       KeyRef
	Err       error
}

func (e *GeneratedKeyError) Error() string {
	return fmt.Sprintf("%v (key %s, label %s, was generated in partition %s before the failure and stays there)", e.Err, e.Key.ID, e.Key.Label, e.Partition)
}

func (e *GeneratedKeyError) Unwrap() error { return e.Err }

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
	// Error is why the ceremony failed; empty when it succeeded. A failed
	// ceremony's transcript is a record too: it names the keys generated
	// before the failure and the audit positions.
	Error string `json:",omitempty"`
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
	if t.Error != "" {
		fmt.Fprintf(&b, "  FAILED: %s\n", t.Error)
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
	// activated are the partitions this ceremony activated.
	activated map[string]bool
	// generated is the key this ceremony generated, if any: a failure
	// after it leaves the key in the module, and the error says so.
	generated *TranscriptKey
}

// Run performs the ceremony f describes. Everything that can be checked
// without the module's signature is checked before the module is touched
// or a key is generated: the file, the outputs, the issuer's validity and
// path length, and a lint of the certificate with a throwaway key of the
// requested type. On success every output has been written and verified.
// On failure no output has been written (all are written together at the
// end, or none) and the returned transcript, when not nil, records what
// happened up to the failure; a key the ceremony generated before it
// failed stays in the module, and the error is then a *GeneratedKeyError
// that names it.
func Run(ctx context.Context, f *File, opts Options) (*Transcript, error) {
	if opts.Keys == nil {
		return nil, errors.New("ceremony: no module")
	}
	r := &runner{f: f, opts: opts, clock: opts.Clock, rand: opts.Rand, activated: map[string]bool{}}
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
	if err := checkOutputs(s.Outputs.Certificate, s.Outputs.PublicKey, s.Outputs.CRL); err != nil {
		return nil, err
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
	count, hash, herr := opts.Keys.AuditHead()
	if herr == nil {
		r.t.AuditAfter = AuditPosition{count, hash}
	} else if err == nil {
		err = fmt.Errorf("ceremony: audit head: %w", herr)
	}
	r.t.Finished = r.clock()
	if err != nil {
		if g := r.generated; g != nil {
			err = &GeneratedKeyError{Partition: g.Partition, Key: KeyRef{ID: g.ID, Label: g.Label, Type: g.Type}, Err: err}
		}
		r.t.Error = err.Error()
		return r.t, err
	}
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

// existingKey looks up the ceremony's existing key (this works while the
// partition is sealed) and, when key.type is given, checks that the key
// has that type: a file that says rsa-4096 must not certify a P-256 key.
func (r *runner) existingKey() (KeyRef, error) {
	k := r.f.Spec.Key
	ref, err := r.opts.Keys.Key(k.Partition, k.Label)
	if err != nil {
		return ref, fmt.Errorf("ceremony: key %s in %s: %w", k.Label, k.Partition, err)
	}
	if got := keyTypeOf(ref.Public); k.Type != "" && got != k.Type {
		return ref, fmt.Errorf("ceremony: key.type is %s, but the existing key %s in partition %s is %s; correct key.type or name another key", k.Type, k.Label, k.Partition, got)
	}
	r.addKey("subject", k.Partition, ref)
	return ref, nil
}

// generateKey activates the key's partition for signatures signatures (at
// least one activation: generating needs an active partition) and
// generates the ceremony's key. From here on a failure leaves the key.
func (r *runner) generateKey(signatures int) (KeyRef, error) {
	k := r.f.Spec.Key
	if err := r.activate(k.Partition, max(signatures, 1)); err != nil {
		return KeyRef{}, err
	}
	r.progress("generating %s key %q in partition %s", k.Type, k.Label, k.Partition)
	ref, err := r.opts.Keys.GenerateKey(k.Partition, k.Type, k.Label)
	if err != nil {
		return ref, fmt.Errorf("ceremony: generate key %s in %s: %w", k.Label, k.Partition, err)
	}
	r.addKey("generated", k.Partition, ref)
	g := r.t.Keys[len(r.t.Keys)-1]
	r.generated = &g
	return ref, nil
}

// activate activates partition for an operation of signatures signatures,
// once per ceremony.
func (r *runner) activate(partition string, signatures int) error {
	if r.activated[partition] {
		return nil
	}
	r.progress("partition %s: quorum needed for an operation of %d signature(s)", partition, signatures)
	if err := r.opts.Keys.Activate(partition, signatures); err != nil {
		return fmt.Errorf("ceremony: activate %s: %w", partition, err)
	}
	r.activated[partition] = true
	return nil
}

// requirePerOperation refuses a root key in a partition that is not
// per-operation (DESIGN.md §2: every use of a root key needs a fresh
// quorum).
func (r *runner) requirePerOperation(partition string) error {
	policy, err := r.opts.Keys.PartitionPolicy(partition)
	if err != nil {
		return fmt.Errorf("ceremony: partition %s: %w", partition, err)
	}
	if policy != PolicyPerOperation {
		return fmt.Errorf("%w: partition %s is %s, so the root key could sign again without a fresh quorum", ErrNotPerOperation, partition, policy)
	}
	r.check("partition %s is %s", partition, policy)
	return nil
}

func (r *runner) addKey(role, partition string, k KeyRef) {
	typ := k.Type
	if typ == "" {
		typ = keyTypeOf(k.Public)
	}
	r.t.Keys = append(r.t.Keys, TranscriptKey{Role: role, Partition: partition, ID: k.ID, Label: k.Label, Type: typ, SPKI: spkiHash(k.Public)})
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
	var ref KeyRef
	var err error
	if r.f.Spec.Key.Existing {
		ref, err = r.existingKey()
	} else {
		ref, err = r.generateKey(0)
	}
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(ref.Public)
	if err != nil {
		return fmt.Errorf("ceremony: %w", err)
	}
	out := r.f.Spec.Outputs.PublicKey
	return r.write(output{path: out, blockType: "PUBLIC KEY", der: der, record: r.outputRecord("public key", out, der, nil)})
}

// syncAudit makes the audit record of the module's signature durable
// before anything the signature made is written (ca.SyncAudit): a power
// loss must not keep a certificate whose signature the module's log lost.
func (r *runner) syncAudit(signer crypto.Signer) error {
	if err := ca.SyncAudit(signer); err != nil {
		return fmt.Errorf("ceremony: the module signed, but the audit record of its signature could not be made durable, so nothing was written: %w", err)
	}
	r.check("audit record of the module signature is durable")
	return nil
}

func (r *runner) check(format string, args ...any) {
	r.t.Checks = append(r.t.Checks, fmt.Sprintf(format, args...))
}

// outputRecord is the transcript entry of one output.
func (r *runner) outputRecord(what, path string, der []byte, cert *x509.Certificate) TranscriptOutput {
	sum := sha256.Sum256(der)
	o := TranscriptOutput{What: what, Path: path, SHA256: hex.EncodeToString(sum[:])}
	if cert != nil {
		o.Subject = cert.Subject.String()
		o.Serial = fmt.Sprintf("%x", cert.SerialNumber)
		o.NotBefore, o.NotAfter = cert.NotBefore, cert.NotAfter
	}
	return o
}

// write writes outs (all or none, see writeOutputs) and records them in
// the transcript.
func (r *runner) write(outs ...output) error {
	if err := writeOutputs(outs); err != nil {
		return err
	}
	for _, o := range outs {
		r.t.Outputs = append(r.t.Outputs, o.record)
	}
	return nil
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
