package audit

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A segment cut short under a running log makes the next copy into the
// mapped file fault (SIGBUS); the signer gets an error instead of the
// process dying, and the log refuses from then on.
func TestMappedSegmentFaultIsAnError(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour})
	e.sign(t, 0)
	if err := os.Truncate(e.segPath(), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.log.BeginSign("issuing", "k1", "SHA-256", digestOf(1)); err == nil {
		t.Fatal("a record was accepted into a segment cut short")
	}
	if _, err := e.log.BeginSign("issuing", "k1", "SHA-256", digestOf(2)); err == nil {
		t.Fatal("log accepted a signature after a failed write")
	}
}

// The segment is allocated ahead of its records while the log is open, and
// Close gives the space back.
func TestSegmentSpaceAllocatedAhead(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour})
	e.sign(t, 0)
	st, err := os.Stat(e.segPath())
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() < growStep {
		t.Fatalf("segment is %d bytes while open, want at least %d allocated", st.Size(), growStep)
	}
	e.log.mu.Lock()
	end := e.log.off
	e.log.mu.Unlock()
	e.close()
	if st, err = os.Stat(e.segPath()); err != nil || st.Size() != end {
		t.Fatalf("segment after Close: %v bytes (%v), want %d", st.Size(), err, end)
	}
}

// BenchmarkSegmentSync measures, outside the log, what one flush costs on
// the file system at hand: 40 records (about 5 ms of signatures) copied
// into a mapped segment, then one sync, then a pause of one flush
// interval, with the space ahead allocated as
// the log does it (fallocate: unwritten extents) or written with zeros
// first, and synced with fsync or fdatasync. It reports the sync's wall
// time (sync-ns) and the copy's (copy-ns) per flush. On the 2-core build
// VM (ext4), zeros made both slower, so the log keeps fallocate (see
// docs/hsm.md).
func BenchmarkSegmentSync(b *testing.B) {
	for _, space := range []string{"fallocate", "zeros"} {
		for _, call := range []string{"fsync", "fdatasync"} {
			b.Run(space+"/"+call, func(b *testing.B) {
				const size = 16 << 20
				rec := make([]byte, 130)
				for i := range rec {
					rec[i] = byte(i + 1)
				}
				var f *os.File
				var m []byte
				off := size
				var syncTime, copyTime time.Duration
				for b.Loop() {
					if off+40*len(rec) > size {
						b.StopTimer()
						if m != nil {
							syscall.Munmap(m)
							f.Close()
						}
						f, m = mappedSpace(b, space, size)
						off = 0
						b.StartTimer()
					}
					t0 := time.Now()
					for range 40 {
						copy(m[off:], rec)
						off += len(rec)
					}
					t1 := time.Now()
					var err error
					if call == "fsync" {
						err = f.Sync()
					} else {
						err = syscall.Fdatasync(int(f.Fd()))
					}
					if err != nil {
						b.Fatal(err)
					}
					syncTime += time.Since(t1)
					copyTime += t1.Sub(t0)
					// The flush interval: writeback and the journal
					// settle between flushes as they do in the log.
					b.StopTimer()
					time.Sleep(DefaultFlushInterval)
					b.StartTimer()
				}
				b.StopTimer()
				syscall.Munmap(m)
				f.Close()
				b.ReportMetric(float64(syncTime.Nanoseconds())/float64(b.N), "sync-ns")
				b.ReportMetric(float64(copyTime.Nanoseconds())/float64(b.N), "copy-ns")
			})
		}
	}
}

// mappedSpace creates a file of size bytes allocated as space says, synced,
// and maps it.
func mappedSpace(b *testing.B, space string, size int64) (*os.File, []byte) {
	f, err := os.CreateTemp(b.TempDir(), "seg")
	if err != nil {
		b.Fatal(err)
	}
	if space == "fallocate" {
		err = allocate(f, 0, size)
	} else {
		zeros := make([]byte, 1<<20)
		for at := int64(0); at < size && err == nil; at += int64(len(zeros)) {
			_, err = f.WriteAt(zeros, at)
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		b.Fatal(err)
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		b.Fatal(err)
	}
	return f, m
}

// A record that ends within a frame header's length of the allocated end
// of the segment must not read as torn after a kill -9 (which leaves the
// allocated size: no truncate at Close). The writer keeps room for a zero
// header after the last record, for each possible shortfall.
func TestRecordEndingNearAllocationNotTorn(t *testing.T) {
	for gap := int64(1); gap < frameHeaderLen; gap++ {
		t.Run(fmt.Sprintf("gap%d", gap), func(t *testing.T) {
			e := newEnvOpts(t, Options{FlushInterval: time.Hour})
			var h [32]byte
			frameLen := func(partition string) int64 {
				return int64(len(appendSignFrame(nil, 1, 1, &h, partition, "k", "h", []byte{1})))
			}
			base := frameLen("p")
			for i := 0; ; i++ {
				e.log.mu.Lock()
				var size int64 // 0 until the first write readies the segment
				if e.log.w != nil {
					size = e.log.w.size
				}
				off := e.log.off
				e.log.mu.Unlock()
				// Pad the partition name so that the record ends gap
				// bytes before the allocation's end, once that fits.
				if pad := size - off - gap - base; size > 0 && pad >= 0 && pad < 200 {
					tk, err := e.log.BeginSign("p"+strings.Repeat("p", int(pad)), "k", "h", []byte{1})
					if err == nil {
						err = e.log.Wait(tk)
					}
					if err != nil {
						t.Fatal(err)
					}
					break
				}
				e.sign(t, i)
			}
			e.crash(t)
			e2 := e.reopen(t)
			if _, err := e2.log.Verify(); err != nil {
				t.Fatalf("a log killed with its last record %d bytes before the allocation's end reads as damaged: %v", gap, err)
			}
		})
	}
}
