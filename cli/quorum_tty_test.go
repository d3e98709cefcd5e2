//go:build linux

package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hsmca/hsmca/hsm"
)

// openPTY opens a pseudo-terminal pair: what is written to master is
// typed on slave.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("open pts: %v", err)
	}
	return m, s
}

// TestShareFromTerminalIsPrompted: "--share -" with stdin on a terminal
// prompts and reads the typed share without echo. It used to read the
// terminal like a file: no prompt, the share echoed on the screen, and a
// wait for end-of-file that nothing announced.
func TestShareFromTerminalIsPrompted(t *testing.T) {
	_, shares := newSoftPartition(t, 3, 2)
	master, slave := openPTY(t)
	defer master.Close()
	defer slave.Close()
	go io.Copy(io.Discard, master) // the terminal's output (echo, if any)

	stderr := &syncBuffer{}
	e := &env{stdin: slave, stdout: io.Discard, stderr: stderr}
	type result struct {
		s   hsm.Share
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := readShareFile(e, "-", nil)
		done <- result{s, err}
	}()

	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "input is hidden") {
		if time.Now().After(deadline) {
			master.Close() // ends a read that waits for end-of-file
			slave.Close()
			<-done
			t.Fatalf("no prompt for the share on the terminal; stderr: %q", stderr.String())
		}
		time.Sleep(10 * time.Millisecond) // polling the prompt of another goroutine
	}
	// The custodian pastes the share and ends with an empty line.
	if _, err := master.Write([]byte(hsm.EncodeText(shares[1]) + "\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("typed share: %v", r.err)
		}
		if r.s.Index != shares[1].Index || r.s.Partition != "issuing" {
			t.Fatalf("typed share decoded as index %d of %q", r.s.Index, r.s.Partition)
		}
	case <-time.After(10 * time.Second):
		master.Close()
		slave.Close()
		t.Fatal("the typed share was not read within 10s")
	}
}
