package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
)

func shortTailRec(serial string, derLen int) ca.Record {
	return ca.Record{Serial: serial, Issuer: "issuing-1", Profile: "server", Status: ca.StatusPending,
		DER: make([]byte, derLen), NotBefore: time.Unix(1700000000, 0).UTC(), NotAfter: time.Unix(1800000000, 0).UTC(), Created: time.Unix(1700000000, 0).UTC()}
}

// A crash while a fold is between its segment switch and the removal of
// the old segment leaves two segments with data. If the old one's frames
// end 1..7 bytes before its preallocated end, Open must still accept it.
func TestCALogOldSegmentShortZeroTail(t *testing.T) {
	ctx := context.Background()
	dirA := t.TempDir()
	s := openFoldOnDemand(t, filepath.Join(dirA, "ca.db"))
	// Fill the first segment up to caSegMinBytes-4 bytes.
	i := 0
	for {
		s.calog.mu.Lock()
		left := caSegMinBytes - 4 - s.calog.off
		s.calog.mu.Unlock()
		if left == 0 {
			break
		}
		serial := fmt.Sprintf("a%04d", i)
		i++
		// Frame overhead for this record with no DER.
		enc, _ := caEncodeRecord(shortTailRec(serial, 0))
		over := int64(8 + 2 + len(serial) + len(enc))
		der := int64(4000)
		if left < over+4000+over+10 {
			der = left - over
		}
		if der < 0 {
			t.Fatalf("cannot hit the size exactly (left %d)", left)
		}
		if err := s.ReserveSerial(ctx, shortTailRec(serial, int(der))); err != nil {
			t.Fatal(err)
		}
	}
	dirB := t.TempDir()
	testHookFold = func(stage string) error {
		if stage != "remove" {
			return nil
		}
		// A write during the fold goes to the new segment; then the
		// machine loses power: copy what is on disk.
		if err := s.ReserveSerial(ctx, shortTailRec("b1", 10)); err != nil {
			t.Fatal(err)
		}
		ents, _ := os.ReadDir(dirA)
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(dirA, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dirB, e.Name()), b, 0o600); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(e.Name(), caLogSuffix) {
				t.Logf("crash image: %s", e.Name())
			}
		}
		return nil
	}
	t.Cleanup(func() { testHookFold = nil })
	if _, err := s.ListCerts(ctx, ca.Query{}); err != nil {
		t.Fatal(err)
	}
	testHookFold = nil
	s.Close()
	s2, err := Open(filepath.Join(dirB, "ca.db"))
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer s2.Close()
	if _, err := s2.CertBySerial(ctx, "b1"); err != nil {
		t.Fatalf("acknowledged write b1: %v", err)
	}
}

// TestReadFramesShortTail: fewer zero bytes than a frame header after the
// last frame are the end of the segment; other short tails are torn.
func TestReadFramesShortTail(t *testing.T) {
	enc, err := caEncodeRecord(shortTailRec("s1", 3))
	if err != nil {
		t.Fatal(err)
	}
	frame := appendFrame(nil, "s1", enc)
	for tail := 0; tail < 8; tail++ {
		data := append(append([]byte(nil), frame...), make([]byte, tail)...)
		n := 0
		if err := readFrames(data, func(string, []byte) error { n++; return nil }); err != nil || n != 1 {
			t.Fatalf("%d zero bytes after the frame: %d frames, %v", tail, n, err)
		}
	}
	data := append(append([]byte(nil), frame...), 0, 0, 7)
	if err := readFrames(data, func(string, []byte) error { return nil }); !errors.Is(err, errTornFrame) {
		t.Fatalf("a cut-short header after the frame: %v, want errTornFrame", err)
	}
}
