// Package quorum holds the backend-neutral quorum machinery of an hsmca
// module: Feldman verifiable secret sharing (split a partition secret into N
// shares with threshold M, check one share on its own against public
// commitments, recover the secret from M shares) and the collection state
// machine that a partition runs while custodians present their shares
// (collecting window, duplicate detection, k-of-M progress, failure counting
// and a lockout that survives restarts, kept in the module's running time
// by BoltLockoutStore).
//
// The package never stores a secret: it hands the recovered secret to the
// backend, which derives its keys from it (hsm/soft) or logs in with it
// (hsm/pkcs11), and forgets the presented shares as soon as the quorum is
// reached, the window expires or the caller resets it.
//
// Sharing is over the scalar field of the Ristretto255 group
// (github.com/cloudflare/circl/secretsharing), whose operations are constant
// time. A secret, a share value and a commitment element are each 32 bytes.
package quorum

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/secretsharing"
)

// SecretSize is the length of a secret and of a share value, in bytes.
const SecretSize = 32

// elementSize is the length of one encoded commitment element.
const elementSize = 32

// commitmentsVersion prefixes the serialised commitments so that a later
// group or layout can be told apart.
const commitmentsVersion = 1

// MaxShares is the largest N (share indices are 1..255 on paper).
const MaxShares = 255

var suite = group.Ristretto255

// Dealing is the result of splitting a secret.
type Dealing struct {
	// Secret is the shared secret (a canonical scalar encoding). Callers
	// derive keys from it and must not store it.
	Secret []byte
	// Values holds the share values; Values[i] is the share with index i+1.
	Values [][]byte
	// Commitments are the public Feldman commitments (see
	// MarshalCommitments' layout); store them with the partition so that
	// each share can be verified on its own.
	Commitments []byte
}

// Deal splits secret into n shares with threshold m (any m shares recover
// it, m-1 reveal nothing). A nil secret means a fresh random one drawn from
// rnd; a given secret must be a canonical 32-byte scalar (one returned by an
// earlier Deal).
func Deal(rnd io.Reader, secret []byte, n, m int) (*Dealing, error) {
	if err := checkNM(n, m); err != nil {
		return nil, err
	}
	var s group.Scalar
	if secret == nil {
		s = suite.RandomNonZeroScalar(rnd)
	} else {
		var err error
		if s, err = parseScalar(secret); err != nil {
			return nil, fmt.Errorf("quorum: secret: %w", err)
		}
		if s.IsZero() {
			return nil, errors.New("quorum: secret is zero")
		}
	}
	ss := secretsharing.New(rnd, uint(m-1), s)
	shares := ss.Share(uint(n))
	d := &Dealing{Values: make([][]byte, n)}
	var err error
	if d.Secret, err = s.MarshalBinary(); err != nil {
		return nil, fmt.Errorf("quorum: encode secret: %w", err)
	}
	for i, sh := range shares {
		if d.Values[i], err = sh.Value.MarshalBinary(); err != nil {
			return nil, fmt.Errorf("quorum: encode share: %w", err)
		}
	}
	if d.Commitments, err = marshalCommitments(ss.CommitSecret()); err != nil {
		return nil, err
	}
	return d, nil
}

func checkNM(n, m int) error {
	if n < 1 || n > MaxShares {
		return fmt.Errorf("quorum: number of shares %d out of range 1..%d", n, MaxShares)
	}
	if m < 1 || m > n {
		return fmt.Errorf("quorum: threshold %d out of range 1..%d", m, n)
	}
	return nil
}

func parseScalar(b []byte) (group.Scalar, error) {
	if len(b) != SecretSize {
		return nil, fmt.Errorf("want %d bytes, got %d", SecretSize, len(b))
	}
	s := suite.NewScalar()
	if err := s.UnmarshalBinary(b); err != nil {
		return nil, errors.New("not a canonical scalar")
	}
	return s, nil
}

// marshalCommitments lays out commitments as one version byte followed by
// M elements of 32 bytes each.
func marshalCommitments(c secretsharing.SecretCommitment) ([]byte, error) {
	out := make([]byte, 1, 1+len(c)*elementSize)
	out[0] = commitmentsVersion
	for _, e := range c {
		b, err := e.MarshalBinaryCompress()
		if err != nil {
			return nil, fmt.Errorf("quorum: encode commitment: %w", err)
		}
		if len(b) != elementSize {
			return nil, fmt.Errorf("quorum: commitment element is %d bytes", len(b))
		}
		out = append(out, b...)
	}
	return out, nil
}

// ParseCommitments decodes commitments made by Deal and returns the
// threshold M they were made for.
func ParseCommitments(b []byte) (threshold int, err error) {
	c, err := parseCommitments(b)
	if err != nil {
		return 0, err
	}
	return len(c), nil
}

func parseCommitments(b []byte) (secretsharing.SecretCommitment, error) {
	if len(b) < 1+elementSize || b[0] != commitmentsVersion || (len(b)-1)%elementSize != 0 {
		return nil, errors.New("quorum: malformed commitments")
	}
	n := (len(b) - 1) / elementSize
	if n > MaxShares {
		return nil, errors.New("quorum: malformed commitments: too many elements")
	}
	c := make(secretsharing.SecretCommitment, n)
	for i := range c {
		e := suite.NewElement()
		if err := e.UnmarshalBinary(b[1+i*elementSize : 1+(i+1)*elementSize]); err != nil {
			return nil, fmt.Errorf("quorum: malformed commitment element %d", i)
		}
		c[i] = e
	}
	return c, nil
}

// ErrShareMismatch says that a share value does not match the commitments:
// it was mistyped past its checksum, altered, or belongs to another dealing.
var ErrShareMismatch = errors.New("quorum: share does not match the commitments")

// VerifyShare checks one share value (index 1..N) against the commitments,
// without any other share. It returns ErrShareMismatch for a share that is
// well formed but wrong, and another error for one that is malformed.
func VerifyShare(commitments []byte, index int, value []byte) error {
	c, err := parseCommitments(commitments)
	if err != nil {
		return err
	}
	sh, err := makeShare(index, value)
	if err != nil {
		return err
	}
	if !secretsharing.Verify(uint(len(c)-1), sh, c) {
		return ErrShareMismatch
	}
	return nil
}

func makeShare(index int, value []byte) (secretsharing.Share, error) {
	if index < 1 || index > MaxShares {
		return secretsharing.Share{}, fmt.Errorf("quorum: share index %d out of range 1..%d", index, MaxShares)
	}
	v, err := parseScalar(value)
	if err != nil {
		return secretsharing.Share{}, fmt.Errorf("quorum: share value: %w", err)
	}
	id := suite.NewScalar()
	id.SetUint64(uint64(index))
	return secretsharing.Share{ID: id, Value: v}, nil
}

// Recover combines at least M shares (index → value) into the secret and
// checks the result against the commitments, so a wrong secret is never
// returned. Callers verify each share with VerifyShare first to name a bad
// one; Recover only says that the set is wrong.
func Recover(commitments []byte, shares map[int][]byte) ([]byte, error) {
	c, err := parseCommitments(commitments)
	if err != nil {
		return nil, err
	}
	m := len(c)
	if len(shares) < m {
		return nil, fmt.Errorf("quorum: %d shares presented, %d needed", len(shares), m)
	}
	list := make([]secretsharing.Share, 0, len(shares))
	for idx, v := range shares {
		sh, err := makeShare(idx, v)
		if err != nil {
			return nil, err
		}
		list = append(list, sh)
	}
	s, err := secretsharing.Recover(uint(m-1), list)
	if err != nil {
		return nil, fmt.Errorf("quorum: recover: %w", err)
	}
	// The first commitment is secret·G: compare in constant time.
	want, err := c[0].MarshalBinaryCompress()
	if err != nil {
		return nil, fmt.Errorf("quorum: encode commitment: %w", err)
	}
	got, err := suite.NewElement().MulGen(s).MarshalBinaryCompress()
	if err != nil {
		return nil, fmt.Errorf("quorum: encode commitment: %w", err)
	}
	if subtle.ConstantTimeCompare(want, got) != 1 {
		return nil, ErrShareMismatch
	}
	return s.MarshalBinary()
}
