// Package pkcs11 is hsmca's PKCS#11 backend of the hsm module API: each
// partition is a PKCS#11 token (SoftHSM2 in tests; CloudHSM, YubiHSM 2, Luna
// or nShield in production) addressed by an RFC 7512 "pkcs11:" URI.
//
// The quorum holds the token's user PIN. At init the backend logs in once
// with the operator's current PIN, replaces it with a long random PIN derived
// from a fresh secret, splits that secret M of N with hsm/quorum and forgets
// both. Activation recombines the shares in memory, derives the PIN and logs
// in; sealing logs out, closes every session and wipes the PIN. Keys are
// generated on the token as sensitive and non-extractable, so this backend
// never exports key material; their public halves and metadata are kept in
// the module directory so that keys stay listable while sealed.
//
// The module directory holds pkcs11.json (token URIs, library path,
// partition settings, share commitments), pkcs11.db (a bbolt file with
// the lockout state, the key metadata and the hash-chained audit log of
// hsm/audit) and audit.seg (the audit log's segment of signature records,
// see hsm/audit). A lockout lasts its full duration of the module's
// running time, which the module keeps across restarts: setting the clock
// forward while the module is closed does not end it (see
// quorum.BoltLockoutStore).
//
// PKCS#11 needs cgo. A binary built with CGO_ENABLED=0 still has this
// package (ParseURI works everywhere) but Open and Init return an error that
// says PKCS#11 support is not compiled in.
package pkcs11
