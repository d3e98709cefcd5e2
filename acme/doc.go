// Package acme is hsmca's ACME server: RFC 8555 with tls-alpn-01
// (RFC 8737), IP identifiers (RFC 8738), renewal information (RFC 9773) and
// certificate profiles. It owns the protocol — JWS checks, nonces,
// accounts, orders, authorizations, challenge validation, rate limits and
// problem documents — and nothing else: it never signs and never imports
// the CA or the HSM. It asks a CA interface it declares to check names,
// issue and revoke, and keeps all state in a Store interface it declares
// (store.Store implements it on bbolt), so a restart loses no account,
// order or authorization.
//
// Requests. Every POST is a flattened JWS whose protected header has an
// allowed algorithm (ES256, ES384, RS256, EdDSA), a nonce, the exact
// request URL and either a kid (an account URL) or, for newAccount and
// revokeCert only, a jwk. The body is size-limited; a problem document
// (RFC 7807, urn:ietf:params:acme:error:*) answers every refusal, and each
// answer carries a fresh Replay-Nonce.
//
// Nonces are AES-encrypted 64-bit counters checked against a fixed-size
// sliding window of used counters: no table grows with traffic. A clean
// Close saves the window so unused nonces survive a restart exactly once;
// a persisted reservation above every issued counter makes a crash refuse
// all earlier nonces rather than accept a replay (see nonce.go and
// docs/acme.md).
//
// Asynchrony. Answering a challenge runs the first validation attempt
// while the client waits (bounded) if one of the validation pool's slots
// is free; success costs one write. Otherwise the challenge is stored as
// processing with a work record and the attempts run on the pool, each
// with a timeout, a bounded number of times (the count is stored with
// each failure, so a restart does not renew it; an inline attempt that
// its bound or the client's disconnect cut short does not count): no
// more attempts run at once than the pool has workers. The http-01 and tls-alpn-01 ports and the DNS
// resolver are configurable so tests validate on loopback. Finalize starts
// issuance and waits briefly: a fast CA yields the valid order in the same
// answer (one durable write); otherwise the order is stored as processing,
// the client gets Retry-After, and issuance completes in the background. A
// CA that cannot sign (*UnavailableError, e.g. sealed awaiting quorum)
// yields 503 with Retry-After and leaves the order ready. A store error
// while a queued validation or a background issuance records its outcome
// is retried a few times with backoff; then the challenge or order becomes
// invalid with serverInternal, and a signed certificate is never requested
// again. At start, queued validations resume and orders a restart
// interrupted while processing become invalid with a problem that says to
// order again.
package acme
