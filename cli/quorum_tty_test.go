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

	"filippo.io/age"
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
// prompts and reads the typed share without echo: the text form, and an
// armored age share with --identity. It used to read the terminal like a
// file: no prompt, the share echoed on the screen, and a wait for
// end-of-file that nothing announced.
func TestShareFromTerminalIsPrompted(t *testing.T) {
	_, shares := newSoftPartition(t, 3, 2)
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	armored, err := hsm.EncodeAge(shares[2], id.Recipient().String())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		typed string
		ids   []age.Identity
		want  hsm.Share
	}{
		{"text", hsm.EncodeText(shares[1]), nil, shares[1]},
		{"age", string(armored), []age.Identity{id}, shares[2]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			master, slave := openPTY(t)
			defer master.Close()
			screen := &syncBuffer{}
			copied := make(chan struct{})
			go func() { // what the terminal shows: the echo, if any
				io.Copy(screen, master)
				close(copied)
			}()

			stderr := &syncBuffer{}
			e := &env{stdin: slave, stdout: io.Discard, stderr: stderr}
			type result struct {
				s   hsm.Share
				err error
			}
			done := make(chan result, 1)
			go func() {
				s, err := readShareFile(e, "-", tc.ids)
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
			if _, err := master.Write([]byte(strings.TrimRight(tc.typed, "\n") + "\n\n")); err != nil {
				t.Fatal(err)
			}
			select {
			case r := <-done:
				if r.err != nil {
					t.Fatalf("typed share: %v", r.err)
				}
				if r.s.Index != tc.want.Index || r.s.Partition != "issuing" {
					t.Fatalf("typed share decoded as index %d of %q", r.s.Index, r.s.Partition)
				}
			case <-time.After(10 * time.Second):
				master.Close()
				slave.Close()
				t.Fatal("the typed share was not read within 10s")
			}
			// Closing the terminal's other end ends the copy once everything
			// the terminal showed has been read.
			slave.Close()
			select {
			case <-copied:
			case <-time.After(10 * time.Second):
				t.Fatal("the terminal's output did not end")
			}
			line := strings.SplitN(strings.TrimSpace(tc.typed), "\n", 2)[0]
			if strings.Contains(screen.String(), line) {
				t.Fatalf("the share was echoed on the terminal: %q", screen.String())
			}
		})
	}
}
