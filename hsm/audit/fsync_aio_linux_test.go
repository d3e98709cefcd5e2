//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le)

package audit

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The flusher syncs through AIO where the kernel has it, and a sync that
// fails there fails the flush like a failed fsync(2).
func TestAIOSync(t *testing.T) {
	s := newAIOSyncer()
	if s == nil {
		t.Skip("no Linux AIO here (io_setup or eventfd refused)")
	}
	defer s.close()
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 20 {
		if _, err := f.WriteAt([]byte{byte(i)}, int64(i)); err != nil {
			t.Fatal(err)
		}
		if err := s.sync(f); err != nil {
			t.Fatalf("sync %d: %v", i, err)
		}
	}
	f.Close()
	if err := s.sync(f); err == nil {
		t.Fatal("AIO sync of a closed file succeeded")
	}
}

// A log's flushes go through AIO, and a log whose segment fails under it
// refuses further signatures whichever way it syncs.
func TestLogSyncsThroughAIO(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Millisecond})
	e.log.flushMu.Lock()
	usesAIO := e.log.aio != nil
	e.log.flushMu.Unlock()
	if !usesAIO {
		if s := newAIOSyncer(); s != nil {
			s.close()
			t.Fatal("AIO is available but the log does not use it")
		}
		t.Skip("no Linux AIO here")
	}
	for i := range 50 {
		e.sign(t, i)
	}
	if err := e.log.Sync(); err != nil {
		t.Fatal(err)
	}
	e.log.flushMu.Lock()
	stillAIO := e.log.aio != nil
	e.log.flushMu.Unlock()
	if !stillAIO {
		t.Fatal("the log fell back to fsync(2) on a file system that has AIO fsync")
	}
	h, err := e.log.Verify()
	if err != nil || h.Count != 50 {
		t.Fatalf("verify: %+v, %v", h, err)
	}
}
