package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
)

// BenchmarkCAIssueWrites measures the two durable writes of an issuance
// (ReserveSerial, then StoreIssued), from one goroutine and from several.
func BenchmarkCAIssueWrites(b *testing.B) {
	for _, par := range []int{0, 8} {
		b.Run(fmt.Sprintf("par=%d", par), func(b *testing.B) {
			s, _ := openTemp(b)
			ctx := context.Background()
			der := make([]byte, 700)
			na := time.Now().Add(time.Hour)
			var n atomicCounter
			one := func() error {
				serial := fmt.Sprintf("1%036x", n.next())
				r := rec(serial, "i1", na)
				r.DER = der
				if err := s.ReserveSerial(ctx, r); err != nil {
					return err
				}
				return s.StoreIssued(ctx, serial, der, nil)
			}
			b.ResetTimer()
			if par == 0 {
				for i := 0; i < b.N; i++ {
					if err := one(); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := one(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

type atomicCounter struct{ v atomic.Uint64 }

func (c *atomicCounter) next() uint64 { return c.v.Add(1) }

// crashChildEnv makes the test binary a child that writes CA records to
// the store named by its value until it is killed.
const crashChildEnv = "HSMCA_STORE_CRASH_CHILD"

// TestCALogCrashChild is the child of TestCALogCrash; it does nothing in a
// normal run.
func TestCALogCrashChild(t *testing.T) {
	path := os.Getenv(crashChildEnv)
	if path == "" {
		t.Skip("only run as TestCALogCrash's child")
	}
	s, err := Open(path)
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	var outMu sync.Mutex
	say := func(kind, serial string) {
		outMu.Lock()
		defer outMu.Unlock()
		os.Stdout.WriteString(kind + " " + serial + "\n")
	}
	round := os.Getenv(crashChildEnv + "_ROUND")
	ctx := context.Background()
	na := time.Now().Add(time.Hour).UTC()
	deadline := time.Now().Add(20 * time.Second) // the parent kills it long before
	var wg sync.WaitGroup
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				serial := fmt.Sprintf("%s%02x%08x", round, g, i)
				if err := s.ReserveSerial(ctx, rec(serial, "i1", na)); err != nil {
					say("ERR", err.Error())
					return
				}
				say("R", serial)
				if i%7 == 3 {
					continue // stays pending
				}
				if err := s.StoreIssued(ctx, serial, []byte("final-"+serial), nil); err != nil {
					say("ERR", err.Error())
					return
				}
				say("I", serial)
				if i%5 == 0 {
					_, err := s.UpdateRevocation(ctx, serial, func(r *ca.Record) error {
						r.Status, r.RevokedAt, r.Reason = ca.StatusRevoked, time.Now().UTC(), ca.ReasonKeyCompromise
						return nil
					})
					if err != nil {
						say("ERR", err.Error())
						return
					}
					say("V", serial)
				}
			}
		}(g)
	}
	wg.Wait()
	os.Exit(0)
}

// TestCALogCrash kills (SIGKILL) a child process that writes CA records
// from several goroutines, at a different moment each round, reopens the
// store and checks that every write the child saw acknowledged is there:
// reserved serials, final certificates, revocations (in the record and in
// the revoked index). Each round's store holds the earlier rounds', so
// replays of crashed logs are checked again after later crashes.
func TestCALogCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	path := filepath.Join(t.TempDir(), "ca.db")
	acked := map[string]string{} // serial -> strongest acknowledged state: R, I, V
	rank := map[string]int{"R": 1, "I": 2, "V": 3}
	for round := 1; round <= 6; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCALogCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+path, fmt.Sprintf("%s_ROUND=%x", crashChildEnv, round))
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill after a number of acknowledged writes that differs per
		// round, or after 10 s whatever happened.
		killAfter := 40 + round*137%500
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		timeout := time.After(10 * time.Second)
		n := 0
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break read
				}
				kind, serial, _ := strings.Cut(l, " ")
				if kind == "ERR" {
					t.Fatalf("round %d: child: %s", round, serial)
				}
				if rank[kind] > rank[acked[serial]] {
					acked[serial] = kind
				}
				if n++; n == killAfter {
					cmd.Process.Signal(syscall.SIGKILL)
				}
			case <-timeout:
				cmd.Process.Signal(syscall.SIGKILL)
				break read
			}
		}
		for range lines { // what the child wrote before it died
		}
		cmd.Wait()
		if n < killAfter {
			t.Fatalf("round %d: child stopped after %d acknowledged writes", round, n)
		}
		// The parent's own lines were all read: every acknowledged write
		// is in acked.
		s, err := Open(path)
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		checkAcked(t, s, acked)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: killed after %d acknowledged writes; %d serials on record", round, n, len(acked))
	}
	if segs, _ := filepath.Glob(path + caLogSuffix + "*"); len(segs) > 0 {
		t.Errorf("log segments left after Close: %v", segs)
	}
}

func checkAcked(t *testing.T, s *Store, acked map[string]string) {
	t.Helper()
	ctx := context.Background()
	revoked := map[string]bool{}
	entries, err := s.RevokedSerials(ctx, "i1")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		revoked[e.Serial] = true
	}
	all, err := s.ListCerts(ctx, ca.Query{})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, r := range all {
		listed[r.Serial] = true
	}
	for serial, kind := range acked {
		r, err := s.CertBySerial(ctx, serial)
		if err != nil {
			t.Fatalf("acknowledged %s of %s lost: %v", kind, serial, err)
		}
		if !listed[serial] {
			t.Errorf("%s not listed", serial)
		}
		if kind == "I" || kind == "V" {
			if !r.Final || string(r.DER) != "final-"+serial {
				t.Errorf("acknowledged final certificate of %s lost: %+v", serial, r)
			}
		}
		if kind == "V" && (r.Status != ca.StatusRevoked || !revoked[serial]) {
			t.Errorf("acknowledged revocation of %s lost: status %s, indexed %v", serial, r.Status, revoked[serial])
		}
	}
}

// TestCALogReplay checks Open's handling of segments a crash left: every
// whole frame is folded into bbolt in log order, a torn frame at the end
// of the newest written segment (a write never acknowledged) is dropped,
// and a bad frame anywhere else makes Open refuse the store.
func TestCALogReplay(t *testing.T) {
	na := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	frame := func(r ca.Record) []byte {
		enc, err := caEncodeRecord(r)
		if err != nil {
			t.Fatal(err)
		}
		return appendFrame(nil, r.Serial, enc)
	}
	issued := rec("1b", "i1", na)
	issued.Status, issued.Final, issued.DER = ca.StatusValid, true, []byte("final-1b")
	revoked := issued
	revoked.Status, revoked.RevokedAt, revoked.Reason = ca.StatusRevoked, na.Add(-time.Hour), ca.ReasonSuperseded
	seg1 := append(frame(rec("1a", "i1", na)), frame(rec("1b", "i1", na))...)
	seg2 := append(frame(issued), frame(revoked)...)
	torn := frame(rec("1c", "i1", na))
	torn = torn[:len(torn)-3]
	pad := func(b []byte) []byte { return append(append([]byte(nil), b...), make([]byte, 4096)...) }
	cat := func(a, b []byte) []byte { return append(append([]byte(nil), a...), b...) }
	badCRC := frame(rec("1d", "i1", na))
	badCRC[len(badCRC)-1] ^= 0xff

	tests := []struct {
		name     string
		segs     [][]byte
		wantErr  bool
		want     []string // serials on record
		notWant  []string
		revoked1 bool // 1b revoked
	}{
		{"whole frames", [][]byte{seg1, seg2}, false, []string{"1a", "1b"}, nil, true},
		{"torn tail", [][]byte{seg1, append(append([]byte(nil), seg2...), torn...)}, false, []string{"1a", "1b"}, []string{"1c"}, true},
		{"torn tail before an empty segment", [][]byte{seg1, append(append([]byte(nil), seg2...), torn...), nil}, false, []string{"1a", "1b"}, []string{"1c"}, true},
		{"bad checksum at the tail", [][]byte{append(append([]byte(nil), seg1...), badCRC...)}, false, []string{"1a", "1b"}, []string{"1d"}, false},
		{"bad frame in an older segment", [][]byte{append(append([]byte(nil), seg1...), badCRC...), seg2}, true, nil, nil, false},
		// Segments are created full of zeros; frames end at the first
		// zero header.
		{"zero-filled segments", [][]byte{pad(seg1), pad(seg2), pad(nil)}, false, []string{"1a", "1b"}, nil, true},
		{"torn tail before zeros", [][]byte{pad(seg1), pad(cat(seg2, torn))}, false, []string{"1a", "1b"}, []string{"1c"}, true},
		// A batch's later pages can reach the disk before its earlier
		// ones; none of it was acknowledged.
		{"frame after zeros at the tail", [][]byte{pad(seg1), cat(pad(seg2), frame(rec("1e", "i1", na)))}, false, []string{"1a", "1b"}, []string{"1e"}, true},
		{"frame after zeros in an older segment", [][]byte{cat(pad(seg1), frame(rec("1e", "i1", na))), pad(seg2)}, true, nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ca.db")
			s, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			for i, seg := range tt.segs {
				if err := os.WriteFile(fmt.Sprintf("%s%s%d", path, caLogSuffix, 10+i), seg, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			s, err = Open(path)
			if tt.wantErr {
				if err == nil {
					s.Close()
					t.Fatal("Open accepted a corrupt log")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			for _, serial := range tt.want {
				if _, err := s.CertBySerial(ctx, serial); err != nil {
					t.Errorf("%s: %v", serial, err)
				}
			}
			for _, serial := range tt.notWant {
				if _, err := s.CertBySerial(ctx, serial); !errors.Is(err, ca.ErrUnknownSerial) {
					t.Errorf("%s from a torn frame: %v", serial, err)
				}
			}
			r, _ := s.CertBySerial(ctx, "1b")
			entries, _ := s.RevokedSerials(ctx, "i1")
			if tt.revoked1 != (r.Status == ca.StatusRevoked) || tt.revoked1 != (len(entries) == 1) {
				t.Errorf("1b: status %s, revoked index %v", r.Status, entries)
			}
			if tt.revoked1 && string(r.DER) != "final-1b" {
				t.Errorf("1b DER %q", r.DER)
			}
			// The next segment number is past the replayed ones.
			if err := s.ReserveSerial(ctx, rec("2a", "i1", na)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCALogFoldWhileWriting writes, rewrites and reads records from
// several goroutines while folds run, and checks that every reader sees
// the latest acknowledged state.
func TestCALogFoldWhileWriting(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	na := time.Now().Add(time.Hour).UTC()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 150; i++ {
				serial := fmt.Sprintf("3%02x%04x", g, i)
				if err := s.ReserveSerial(ctx, rec(serial, "i1", na)); err != nil {
					errs <- err
					return
				}
				if r, err := s.CertBySerial(ctx, serial); err != nil || r.Status != ca.StatusPending {
					errs <- fmt.Errorf("%s after reserve: %v %v", serial, r.Status, err)
					return
				}
				if i%10 == 0 {
					if err := s.calog.fold(); err != nil {
						errs <- err
						return
					}
				}
				if err := s.StoreIssued(ctx, serial, []byte("f"+serial), nil); err != nil {
					errs <- err
					return
				}
				if r, err := s.CertBySerial(ctx, serial); err != nil || !r.Final || string(r.DER) != "f"+serial {
					errs <- fmt.Errorf("%s after issue: %+v %v", serial, r, err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	all, err := s.ListCerts(ctx, ca.Query{Status: []ca.Status{ca.StatusValid}})
	if err != nil || len(all) != 8*150 {
		t.Fatalf("ListCerts: %d records, %v", len(all), err)
	}
}

// TestCAUpdatePanicReleasesStore checks that a panicking update function
// becomes an error and leaves the store usable.
func TestCAUpdatePanicReleasesStore(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	na := time.Now().Add(time.Hour).UTC()
	if err := s.ReserveSerial(ctx, rec("4a", "i1", na)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateRevocation(ctx, "4a", func(*ca.Record) error { panic("boom") }); err == nil {
		t.Fatal("panicking update reported no error")
	}
	if err := s.StoreIssued(ctx, "4a", []byte("f"), nil); err != nil {
		t.Fatalf("store unusable after a panicking update: %v", err)
	}
}
