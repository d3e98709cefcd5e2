package hsm

// Share is one custodian's share of a partition's secret. Value is the
// verifiable-secret-sharing share (see hsm/quorum); the other fields say
// where the share belongs so that a share of another module, partition or
// generation is refused before any arithmetic.
//
// Shares travel as text (EncodeText/DecodeText, with a checksum that catches
// a typo) or age-encrypted to a custodian (EncodeAge/DecodeAge).
type Share struct {
	Module     string // module ID
	Partition  string
	Generation int    // re-share generation; starts at 1
	Index      int    // 1..N
	Threshold  int    // M
	Custodian  string // optional name, informational
	Value      []byte
}
