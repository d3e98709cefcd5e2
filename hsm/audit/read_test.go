package audit

import (
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Readers (Head, Events) run while Append grows the database. Append holds
// l.mu across its write transaction, and bbolt's remap on growth waits for
// every open read transaction, so a reader that took l.mu inside its read
// transaction deadlocked both for good. The test fails after 20 seconds
// instead of hanging the suite.
func TestReadersDuringGrowingAppendsDoNotDeadlock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "module.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(db, newKey(t), Options{Context: "module-1"})
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 256<<10) // each record grows the file
	var stop atomic.Bool
	var readers sync.WaitGroup
	for i := range runtime.GOMAXPROCS(0) + 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for !stop.Load() {
				var err error
				if i%2 == 0 {
					_, err = l.Head()
				} else {
					_, err = l.Events(1, 1)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	const appends = 200
	done := make(chan int, 1)
	go func() {
		i := 0
		for ; i < appends; i++ {
			if _, err := l.Append("test", "p", map[string]string{"blob": big}); err != nil {
				t.Error(err)
				break
			}
		}
		done <- i
	}()
	select {
	case n := <-done:
		stop.Store(true)
		readers.Wait()
		if n != appends {
			t.Fatalf("%d of %d appends", n, appends)
		}
		if err := l.Close(); err != nil {
			t.Error(err)
		}
		db.Close()
	case <-time.After(20 * time.Second):
		// The deadlocked goroutines cannot be stopped; the log and the
		// database are left open.
		buf := make([]byte, 1<<20)
		t.Fatalf("Append and the readers deadlocked; goroutines:\n%s", buf[:runtime.Stack(buf, true)])
	}
}
