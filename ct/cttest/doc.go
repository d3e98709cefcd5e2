// Package cttest runs Certificate Transparency logs for tests: an
// in-process fake RFC 6962 log that signs real SCTs over the precertificate
// signature input and misbehaves on demand (FakeLog), and the real
// TesseraCT POSIX binary on loopback (TesseraCT). Tests of ct, ca and cli
// use it; production code never imports it.
//
// The fake log builds its signature input and strips the poison extension
// by hand (RFC 6962 section 3.2), independently of certificate-transparency-go,
// so that it checks the ct package rather than agreeing with it.
package cttest
