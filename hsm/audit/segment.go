package audit

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"
	"unicode/utf8"

	"github.com/hsmca/hsmca/hsm"
)

// The segment file holds the signature records, in sequence order, and the
// two slots of the signed head that the flusher keeps. Layout:
//
//	0:     segMagic | u8 len(context) | context, zero-padded to 480 bytes
//	480:   segment ID (16 random bytes; zeros in segments made before IDs)
//	512:   head slot 0 (256 bytes)
//	768:   head slot 1 (256 bytes)
//	1024:  frames, one per record, in sequence order, then zeros to the end
//	       of the file (space allocated ahead of the records)
//	frame: u32 len(body) | u32 CRC-32C(body) | body
//	body:  u8 kind (1: sign) | u64 seq | i64 time (Unix ns) | [32]byte record hash |
//	       u8 len | partition | u8 len | key ID | u8 len | hash name | u8 len | digest
//	slot:  u32 CRC-32C(rest) | u64 count | [32]byte hash | i64 segment end |
//	       i64 offset of the last frame | [64]byte Ed25519 head signature | zeros
//
// Integers are big-endian. The record hash is the one recordHash computes
// for the same record as an hsm.AuditEvent (type "sign", fields digest (hex),
// hash, key), so a signature record is one link of the single chain that
// also runs through the records in the database. The CRCs tell a frame or
// slot damaged by a crash (torn) from a well-formed one; they are no
// defence against tampering, the hash chain and the head signature are.
//
// Eight zero bytes where a frame header would be end the records; every
// byte after them must be zero too, otherwise the segment ends in a torn
// record (a crash during a copy, or a power loss that kept a later page and
// lost an earlier one). A segment of format v2 (records up to the end of the
// file, no space allocated ahead) is the same but for the magic, and Open
// upgrades it in place.
//
// The segment ID ties the file to the module database: the database
// records it with the first database record after the segment is created
// (see Open), so a segment that is missing, re-created or replaced by
// another file is found. Segments made before IDs get one, and the
// database its record, at the next database record.
//
// The slots alternate, so a torn slot write leaves the other one. A slot is
// written after the sync that made its records durable and becomes durable
// itself with the next sync, so a head never outlives the records it
// covers.

const (
	segMagic   = "hsmca audit segment v3\x00"
	segMagicV2 = "hsmca audit segment v2\x00"
)

const (
	segHeaderLen   = 1024
	segIDOffset    = 480
	segIDLen       = 16
	slotOffset     = 512
	slotLen        = 256
	frameHeaderLen = 8
	kindSign       = 1
	bodyFixedLen   = 1 + 8 + 8 + 32 + 4 // kind, seq, time, hash, four lengths
	maxField       = 255
	maxBodyLen     = bodyFixedLen + 4*maxField
	maxFrameLen    = frameHeaderLen + maxBodyLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// segHeader is the segment's identifying first bytes; the context binds
// the segment to one module.
func segHeader(ctx string) []byte { return segHeaderMagic(segMagic, ctx) }

func segHeaderMagic(magic, ctx string) []byte {
	h := append([]byte(magic), byte(len(ctx)))
	return append(h, ctx...)
}

// encodeSlot encodes a signed head for a slot.
func encodeSlot(h *storedHead) []byte {
	b := make([]byte, slotLen)
	binary.BigEndian.PutUint64(b[4:], h.Count)
	if hash, err := hex.DecodeString(h.Hash); err == nil && len(hash) == 32 {
		copy(b[12:44], hash)
	}
	binary.BigEndian.PutUint64(b[44:], uint64(h.Segment))
	binary.BigEndian.PutUint64(b[52:], uint64(h.SegmentLast))
	copy(b[60:124], h.Sig)
	binary.BigEndian.PutUint32(b, crc32.Checksum(b[4:], castagnoli))
	return b
}

// decodeSlot returns the head in a slot, or nil for a slot never written
// or torn (its CRC does not match).
func decodeSlot(b []byte) *storedHead {
	if len(b) != slotLen || crc32.Checksum(b[4:], castagnoli) != binary.BigEndian.Uint32(b) {
		return nil
	}
	return &storedHead{
		Count:       binary.BigEndian.Uint64(b[4:]),
		Hash:        hex.EncodeToString(b[12:44]),
		Segment:     int64(binary.BigEndian.Uint64(b[44:])),
		SegmentLast: int64(binary.BigEndian.Uint64(b[52:])),
		Sig:         append([]byte(nil), b[60:124]...),
	}
}

// signRecord is a decoded segment frame.
type signRecord struct {
	seq       uint64
	time      int64
	hash      [32]byte
	partition string
	key       string
	hashName  string
	digest    []byte
}

// event converts the record to an hsm.AuditEvent with the given previous
// hash.
func (r *signRecord) event(prev [32]byte) hsm.AuditEvent {
	return hsm.AuditEvent{
		Seq:       r.seq,
		Time:      time.Unix(0, r.time).UTC(),
		Type:      "sign",
		Partition: r.partition,
		Fields:    map[string]string{"key": r.key, "digest": hex.EncodeToString(r.digest), "hash": r.hashName},
		Prev:      hex.EncodeToString(prev[:]),
		Hash:      hex.EncodeToString(r.hash[:]),
	}
}

// checkSignFields validates what BeginSign records.
func checkSignFields(partition, key, hashName string, digest []byte) error {
	switch {
	case key == "" || hashName == "" || len(digest) == 0:
		return errors.New("audit: a signature record needs a key ID, a hash name and a digest")
	case len(partition) > maxField || len(key) > maxField || len(hashName) > maxField || len(digest) > maxField:
		return fmt.Errorf("audit: a signature record's fields are limited to %d bytes each", maxField)
	case !utf8.ValidString(partition) || !utf8.ValidString(key) || !utf8.ValidString(hashName):
		return errors.New("audit: a signature record's partition, key ID and hash name must be UTF-8")
	}
	return nil
}

// signHash is recordHash for a "sign" event with fields digest (hex), hash
// and key, computed without building the event: it runs for every
// signature.
func signHash(seq uint64, t int64, partition, key, hashName string, digest []byte, prev *[32]byte) [32]byte {
	var buf [768]byte
	b := append(buf[:0], recordDomain...)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint64(b, uint64(t))
	b = appendString(b, "sign")
	b = appendString(b, partition)
	b = binary.BigEndian.AppendUint32(b, 3) // fields, in sorted order
	b = appendString(b, "digest")
	b = binary.BigEndian.AppendUint32(b, uint32(2*len(digest)))
	b = hex.AppendEncode(b, digest)
	b = appendString(b, "hash")
	b = appendString(b, hashName)
	b = appendString(b, "key")
	b = appendString(b, key)
	b = append(b, prev[:]...)
	return sha256.Sum256(b)
}

// appendSignFrame appends one frame. The fields must have passed
// checkSignFields.
func appendSignFrame(b []byte, seq uint64, t int64, h *[32]byte, partition, key, hashName string, digest []byte) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0) // length and CRC, set below
	b = append(b, kindSign)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint64(b, uint64(t))
	b = append(b, h[:]...)
	b = append(b, byte(len(partition)))
	b = append(b, partition...)
	b = append(b, byte(len(key)))
	b = append(b, key...)
	b = append(b, byte(len(hashName)))
	b = append(b, hashName...)
	b = append(b, byte(len(digest)))
	b = append(b, digest...)
	body := b[start+frameHeaderLen:]
	binary.BigEndian.PutUint32(b[start:], uint32(len(body)))
	binary.BigEndian.PutUint32(b[start+4:], crc32.Checksum(body, castagnoli))
	return b
}

// frameError is a frame that cannot be read. incomplete is set when the
// data ends inside the frame (a write cut short, or truncation).
type frameError struct {
	off        int64
	incomplete bool
	reason     string
}

func (e *frameError) Error() string {
	return fmt.Sprintf("audit: segment frame at offset %d: %s", e.off, e.reason)
}

// decodeBody parses a frame body whose CRC has been checked.
func decodeBody(body []byte, r *signRecord) error {
	if len(body) < bodyFixedLen || body[0] != kindSign {
		return errors.New("unknown record kind")
	}
	r.seq = binary.BigEndian.Uint64(body[1:])
	r.time = int64(binary.BigEndian.Uint64(body[9:]))
	copy(r.hash[:], body[17:49])
	rest := body[49:]
	var fields [4][]byte
	for i := range fields {
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return errors.New("field runs past the frame")
		}
		n := int(rest[0])
		fields[i], rest = rest[1:1+n], rest[1+n:]
	}
	if len(rest) != 0 {
		return errors.New("trailing bytes in the frame")
	}
	r.partition, r.key, r.hashName = string(fields[0]), string(fields[1]), string(fields[2])
	r.digest = append(r.digest[:0], fields[3]...)
	if err := checkSignFields(r.partition, r.key, r.hashName, r.digest); err != nil {
		return err
	}
	return nil
}

// segReader reads frames in order from one region of the segment.
type segReader struct {
	r    *bufio.Reader
	off  int64 // offset of the next frame
	end  int64
	body []byte
	// zeroEnds makes a zero frame header end the region (reading past the
	// records into the allocated space); otherwise it is a bad frame.
	zeroEnds bool
}

func newSegReader(ra io.ReaderAt, from, end int64) *segReader {
	return &segReader{r: bufio.NewReaderSize(io.NewSectionReader(ra, from, end-from), 64<<10), off: from, end: end}
}

// next reads the frame at s.off into r. It returns false at the end of the
// region, or a *frameError for a frame that cannot be read (s.off is then
// that frame's offset, and the reader must not be used further).
func (s *segReader) next(r *signRecord) (bool, error) {
	if s.off >= s.end {
		return false, nil
	}
	if s.end-s.off < frameHeaderLen {
		return false, &frameError{off: s.off, incomplete: true, reason: "the segment ends inside a frame header"}
	}
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(s.r, hdr[:]); err != nil {
		return false, s.readError(err)
	}
	if s.zeroEnds && hdr == [frameHeaderLen]byte{} {
		s.end = s.off
		return false, nil
	}
	n := int64(binary.BigEndian.Uint32(hdr[:]))
	if n < bodyFixedLen || n > maxBodyLen {
		return false, &frameError{off: s.off, reason: fmt.Sprintf("frame length %d out of range", n)}
	}
	if s.end-s.off-frameHeaderLen < n {
		return false, &frameError{off: s.off, incomplete: true, reason: "the segment ends inside a frame"}
	}
	if cap(s.body) < int(n) {
		s.body = make([]byte, maxBodyLen)
	}
	body := s.body[:n]
	if _, err := io.ReadFull(s.r, body); err != nil {
		return false, s.readError(err)
	}
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(hdr[4:]) {
		return false, &frameError{off: s.off, reason: "checksum mismatch"}
	}
	if err := decodeBody(body, r); err != nil {
		return false, &frameError{off: s.off, reason: err.Error()}
	}
	s.off += frameHeaderLen + n
	return true, nil
}

// readError reports a read that ended early: the file is shorter than the
// region (truncated).
func (s *segReader) readError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &frameError{off: s.off, incomplete: true, reason: "the segment ends inside a frame"}
	}
	return fmt.Errorf("audit: read segment: %w", err)
}
