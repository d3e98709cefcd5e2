// Package ct obtains and checks Certificate Transparency evidence for hsmca's
// certificates (RFC 6962).
//
// The CA signs a precertificate (a certificate carrying the critical poison
// extension, RFC 6962 section 3.1) and hands its chain to a Submitter. The
// Submitter posts it to every configured log with add-pre-chain (section
// 4.1) in parallel, with a per-attempt timeout, bounded retries on 5xx, 429
// and network errors, and one overall deadline. Each returned SCT is checked
// against its log's public key over the precertificate signature input
// (issuer key hash and TBSCertificate without the poison) before it is used;
// an SCT that does not verify is dropped and reported. The result is judged
// against a policy: at least MinSCTs SCTs from at least MinOperators distinct
// log operators. The CA then builds the final certificate with the SCT list
// extension (section 3.3, SCTListExtension).
//
// VerifyEmbedded checks the SCTs embedded in an issued certificate, for the
// CLI (`hsmca ct verify`) and for auditors.
//
// The package never signs certificates and never sees CA keys; it does not
// import ca: it satisfies ca.SCTSource structurally. It talks to logs only
// through github.com/google/certificate-transparency-go.
package ct
