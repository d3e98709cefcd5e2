// Package hsm defines hsmca's single-tenant HSM module: named partitions, each
// with its own custodian set (N shares, threshold M), its own keys and its own
// activation state.
//
// A partition starts sealed. Custodians present shares one at a time
// (Partition.AddShare); once M valid, distinct shares are in, the partition is
// active and its keys sign. Activation lives only in the memory of the process
// that opened the module: opening a module always leaves every partition
// sealed. A per-operation partition (root keys) seals itself again once the
// signatures of the operation it was activated for are spent.
//
// This package owns the contract only. Backends implement it: hsm/soft (pure
// Go, one bbolt file) and hsm/pkcs11 (any PKCS#11 token). The rest of hsmca
// sees a key only as a crypto.Signer whose Sign fails with ErrSealed while its
// partition is sealed; it never learns which backend holds the key.
package hsm

import (
	"crypto"
	"errors"
	"fmt"
	"time"
)

// KeyType names the key algorithms a partition can generate.
type KeyType string

// Key types, spelled as on the command line.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	RSA2048   KeyType = "rsa-2048"
	RSA3072   KeyType = "rsa-3072"
	RSA4096   KeyType = "rsa-4096"
	Ed25519   KeyType = "ed25519"
)

// KeyTypes lists every KeyType in a stable order (for help texts and tests).
var KeyTypes = []KeyType{ECDSAP256, ECDSAP384, RSA2048, RSA3072, RSA4096, Ed25519}

// ParseKeyType returns the KeyType for s or an error naming the valid types.
func ParseKeyType(s string) (KeyType, error) {
	for _, t := range KeyTypes {
		if string(t) == s {
			return t, nil
		}
	}
	return "", fmt.Errorf("hsm: unknown key type %q (want one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519)", s)
}

// Policy says when an active partition seals itself.
type Policy string

const (
	// PolicyOnline partitions stay active until sealed explicitly or the
	// process ends. The usual policy for the issuing partition.
	PolicyOnline Policy = "online"
	// PolicyPerOperation partitions seal themselves once the signatures of
	// the operation they were activated for are spent (one by default; see
	// Partition.SetOperationSignatures). The usual policy for root keys.
	PolicyPerOperation Policy = "per-operation"
)

// ParsePolicy returns the Policy for s.
func ParsePolicy(s string) (Policy, error) {
	switch Policy(s) {
	case PolicyOnline, PolicyPerOperation:
		return Policy(s), nil
	}
	return "", fmt.Errorf("hsm: unknown policy %q (want online or per-operation)", s)
}

// State is a partition's activation state.
type State string

const (
	StateSealed     State = "sealed"     // no share presented, keys unusable
	StateCollecting State = "collecting" // k of M shares in, keys unusable
	StateActive     State = "active"     // quorum reached, keys sign
)

// KeyInfo describes a key held in a partition. It never carries private
// material.
type KeyInfo struct {
	ID         string           `json:"id"` // lower-case hex, unique within the module
	Label      string           `json:"label"`
	Type       KeyType          `json:"type"`
	Exportable bool             `json:"exportable"`
	Created    time.Time        `json:"created"`
	Public     crypto.PublicKey `json:"-"`
}

// PartitionStatus is a snapshot of one partition.
type PartitionStatus struct {
	Name      string `json:"name"`
	Policy    Policy `json:"policy"`
	State     State  `json:"state"`
	Threshold int    `json:"threshold"` // M
	Shares    int    `json:"shares"`    // N
	Presented int    `json:"presented"` // k: valid distinct shares presented so far
	// CollectingUntil is when presented shares are forgotten if the quorum
	// is not reached (zero unless collecting).
	CollectingUntil time.Time `json:"collecting_until,omitzero"`
	// LockedUntil is set while the partition refuses shares after repeated
	// bad ones.
	LockedUntil time.Time `json:"locked_until,omitzero"`
	// FailedShares counts bad shares in the current lockout window.
	FailedShares int `json:"failed_shares"`
	Keys         int `json:"keys"`
	// SignaturesLeft is, for an active per-operation partition, how many
	// signatures remain before it seals itself; -1 when unlimited.
	SignaturesLeft int `json:"signatures_left"`
	// Generation counts re-shares; shares of an older generation are refused.
	Generation int `json:"generation"`
}

// InitOptions configures a new partition.
type InitOptions struct {
	Partition string
	Shares    int // N, 1..255
	Threshold int // M, 1..N
	Policy    Policy
	// CollectWindow is how long presented shares are kept before the quorum
	// is reached; zero means 15 minutes.
	CollectWindow time.Duration
	// MaxFailures bad shares within LockoutDuration lock the partition for
	// LockoutDuration; zeros mean 5 and 15 minutes.
	MaxFailures     int
	LockoutDuration time.Duration
}

// Module is one single-tenant HSM module. Implementations are safe for
// concurrent use.
type Module interface {
	// ID identifies the module; shares and wrapped keys name it.
	ID() string
	// Backend is "soft" or "pkcs11".
	Backend() string
	// InitPartition creates a partition and returns its N shares. It refuses
	// a name that exists already.
	InitPartition(opts InitOptions) ([]Share, error)
	// Partition returns an existing partition or ErrNoPartition.
	Partition(name string) (Partition, error)
	// Partitions lists the partitions' names in creation order.
	Partitions() ([]string, error)
	// Audit returns the module's audit log.
	Audit() AuditLog
	// Close seals every partition and releases the module.
	Close() error
}

// Partition is one partition of a module.
type Partition interface {
	Name() string
	Status() (PartitionStatus, error)

	// AddShare presents one custodian share. It returns the status after the
	// share was counted, so callers can show "k of M". A bad share returns a
	// *ShareError naming the share's index; a share presented twice returns
	// ErrDuplicateShare; while locked out, *LockedError.
	AddShare(s Share) (PartitionStatus, error)
	// SetOperationSignatures sets how many signatures the next activation of
	// a per-operation partition allows before it seals itself (default 1).
	// It fails on an online partition.
	SetOperationSignatures(n int) error
	// Seal forgets the partition's secrets at once and drops presented
	// shares. Sealing a sealed partition is not an error.
	Seal() error

	// GenerateKey makes a key inside the partition. Requires active.
	GenerateKey(typ KeyType, label string, exportable bool) (KeyInfo, error)
	// Keys lists the partition's keys; works while sealed.
	Keys() ([]KeyInfo, error)
	// Key returns one key's info by ID or label, or ErrKeyNotFound.
	Key(idOrLabel string) (KeyInfo, error)
	// Signer returns the key as a crypto.Signer. The signer may be obtained
	// while sealed; its Sign returns ErrSealed until the partition is active.
	Signer(idOrLabel string) (crypto.Signer, error)
	// DestroyKey deletes a key. Requires active.
	DestroyKey(idOrLabel string) error

	// Reshare makes a new share set (n shares, threshold m); shares of the
	// previous set stop working. Requires active. The new shares exist
	// only in the returned slice: a caller that must store them before
	// they replace the old ones uses StagedResharer where the backend
	// offers it.
	Reshare(n, m int) ([]Share, error)

	// TransportKey returns this partition's public transport key (an age
	// X25519 recipient string). Keys exported to this partition are
	// encrypted to it. Works while sealed.
	TransportKey() (string, error)
	// ExportKey wraps an exportable key for another module's partition,
	// given its transport key. Requires active; refuses a non-exportable key
	// with ErrNotExportable. The blob never holds plaintext key material.
	ExportKey(idOrLabel, transportKey string) ([]byte, error)
	// ImportKey unwraps a blob made by ExportKey for this partition.
	// Requires active.
	ImportKey(blob []byte) (KeyInfo, error)
}

// StagedResharer is implemented by partitions whose re-share comes in two
// steps (hsm/soft), so that the caller can store the new shares durably
// before they replace the old ones: if storing them fails, the partition
// keeps its current shares.
type StagedResharer interface {
	// PrepareReshare deals a new share set (n shares, threshold m)
	// without putting it in force. Requires active.
	PrepareReshare(n, m int) (PendingReshare, error)
}

// PendingReshare is a share set dealt by PrepareReshare and not yet in
// force: until Commit returns nil the partition's current shares work and
// the new ones do not.
type PendingReshare interface {
	// Shares returns the new set; the caller owns it.
	Shares() []Share
	// Commit puts the new set in force; the previous shares stop working.
	// An error means nothing changed: the current shares still work and
	// the new ones never will. Commit fails if the partition was sealed or
	// re-shared since PrepareReshare. The one exception wraps
	// ErrReshareIncomplete: the change failed part way and could not be
	// undone, and the caller must keep the new shares as well as the old.
	Commit() error
	// Discard forgets the pending set's secrets; after Commit it does
	// nothing. Call it when the set will not be committed.
	Discard()
}

// AuditEvent is one record of the module's audit log.
type AuditEvent struct {
	Seq       uint64            `json:"seq"`
	Time      time.Time         `json:"time"`
	Type      string            `json:"type"` // init, share-accepted, share-rejected, activate, seal, lockout, key-generate, key-destroy, sign, export, import, reshare, commit-failed
	Partition string            `json:"partition,omitempty"`
	Fields    map[string]string `json:"fields,omitempty"` // key id, digest, share index, reason; never a secret
	Prev      string            `json:"prev"`             // hex SHA-256 of the previous record
	Hash      string            `json:"hash"`             // hex SHA-256 of this record
}

// AuditHead is the signed head of the audit log.
type AuditHead struct {
	Count     uint64 `json:"count"`
	Hash      string `json:"hash"`
	PublicKey string `json:"public_key"` // the module audit key (base64 Ed25519), printed at init for auditors to pin
}

// AuditSyncer is implemented by the signers of modules whose audit log
// syncs signature records in the background (both backends here). Between
// a signature and the next background sync (at most the log's flush
// interval) a power loss can take the signature's audit record. A caller
// that keeps what a signature produced durably (the CA storing a
// certificate or a CRL; ca.AuditSyncer is the same interface) calls
// SyncAudit before it hands that out: it
// returns once the records of every signature this module has released
// are durable. An error means the log failed first; treat the signature
// as unaudited and do not hand it out.
type AuditSyncer interface {
	SyncAudit() error
}

// AuditLog is the module's append-only, hash-chained event log.
type AuditLog interface {
	// Head returns the current count and head hash (the position that
	// ceremony transcripts quote).
	Head() (AuditHead, error)
	// Events returns records with Seq >= from, at most limit (0: all).
	Events(from uint64, limit int) ([]AuditEvent, error)
	// Verify checks every link of the chain and the head signature; it
	// returns the verified head or an *AuditError naming the first bad record.
	Verify() (AuditHead, error)
}

// Errors callers branch on.
var (
	ErrSealed          = errors.New("hsm: partition is sealed")
	ErrDuplicateShare  = errors.New("hsm: share already presented")
	ErrNoPartition     = errors.New("hsm: no such partition")
	ErrPartitionExists = errors.New("hsm: partition already exists")
	ErrKeyNotFound     = errors.New("hsm: key not found")
	ErrKeyExists       = errors.New("hsm: a key with that label already exists")
	ErrNotExportable   = errors.New("hsm: key is not exportable")
	ErrUnsupported     = errors.New("hsm: not supported by this backend")
	ErrModuleInUse     = errors.New("hsm: module is in use by another process")
	// ErrReshareIncomplete: a re-share's Commit failed part way and could
	// not be undone; keep both the previous and the new share files.
	ErrReshareIncomplete = errors.New("hsm: re-share failed part way and could not be undone")
)

// ShareError reports a share that was refused, naming its index (1-based,
// as printed on the share).
type ShareError struct {
	Index  int
	Reason string // e.g. "belongs to module X", "checksum mismatch", "does not match the commitments"
	// WrongModule is set when the share belongs to another module,
	// partition or share generation.
	WrongModule bool
}

func (e *ShareError) Error() string {
	if e.Index > 0 {
		return fmt.Sprintf("hsm: share %d rejected: %s", e.Index, e.Reason)
	}
	return "hsm: share rejected: " + e.Reason
}

// LockedError is returned while a partition refuses shares after repeated
// bad ones.
type LockedError struct {
	Partition string
	Until     time.Time
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("hsm: partition %s is locked until %s after repeated bad shares", e.Partition, e.Until.UTC().Format(time.RFC3339))
}

// KeyLoadError reports a stored key that failed to load (its attributes or
// ciphertext were altered). Other keys are unaffected.
type KeyLoadError struct {
	ID  string
	Err error
}

func (e *KeyLoadError) Error() string {
	return fmt.Sprintf("hsm: key %s failed to load (stored record altered or corrupt): %v", e.ID, e.Err)
}
func (e *KeyLoadError) Unwrap() error { return e.Err }

// AuditError names the first audit record that fails verification.
type AuditError struct {
	Seq    uint64
	Reason string
}

func (e *AuditError) Error() string {
	return fmt.Sprintf("hsm: audit log broken at record %d: %s", e.Seq, e.Reason)
}
