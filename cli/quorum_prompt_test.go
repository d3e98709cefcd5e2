package cli

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/hsm/soft"
)

// scriptedLines returns a readLine that hands out lines in order, then
// io.EOF, and counts how many were read.
func scriptedLines(lines []string) (func() ([]byte, error), *int) {
	n := 0
	return func() ([]byte, error) {
		if n >= len(lines) {
			return nil, io.EOF
		}
		n++
		return []byte(lines[n-1]), nil
	}, &n
}

func newSoftPartition(t *testing.T, n, m int) (hsm.Partition, []hsm.Share) {
	t.Helper()
	mod, err := soft.Open(t.TempDir(), soft.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mod.Close() })
	shares, err := mod.InitPartition(hsm.InitOptions{Partition: "issuing", Shares: n, Threshold: m, Policy: hsm.PolicyOnline})
	if err != nil {
		t.Fatal(err)
	}
	p, err := mod.Partition("issuing")
	if err != nil {
		t.Fatal(err)
	}
	return p, shares
}

// typed returns the lines a custodian types for share s, ended by an empty
// line.
func typed(s hsm.Share) []string {
	return append(strings.Split(strings.TrimRight(hsm.EncodeText(s), "\n"), "\n"), "")
}

func TestPromptQuorum(t *testing.T) {
	p, shares := newSoftPartition(t, 3, 2)
	var lines []string
	lines = append(lines, "", "", "garbage", "")   // a typo: refused before the partition sees it
	lines = append(lines, typed(shares[1])...)     // custodian 1
	lines = append(lines, typed(shares[1])...)     // the same share again
	lines = append(lines, typed(shares[2])[:3]...) // a custodian starts over...
	lines = append(lines, "")                      // ...and gives up: incomplete share
	lines = append(lines, typed(shares[0])...)     // never read: quorum is reached first
	readLine, _ := scriptedLines(lines)
	var stderr bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: &stderr}
	st, err := p.Status()
	if err != nil {
		t.Fatal(err)
	}
	err = promptQuorum(e, p, st, readLine)
	if err == nil {
		t.Fatalf("3 failed attempts should end the prompt; stderr:\n%s", stderr.String())
	}
	out := stderr.String()
	for _, w := range []string{"custodian 1 of 2", "typed share #1 not accepted", "share 1 of 2 accepted", "already presented", "custodian 2 of 2"} {
		if !strings.Contains(out, w) {
			t.Errorf("prompt output lacks %q:\n%s", w, out)
		}
	}
	value := strings.Fields(strings.SplitN(hsm.EncodeText(shares[1]), "value: ", 2)[1])[0]
	if strings.Contains(out, value) {
		t.Errorf("prompt output echoes share material:\n%s", out)
	}

	// A fresh prompt with two good shares activates.
	if err := p.Seal(); err != nil {
		t.Fatal(err)
	}
	readLine, read := scriptedLines(append(append(typed(shares[0]), typed(shares[2])...), typed(shares[1])...))
	stderr.Reset()
	st, _ = p.Status()
	if err := promptQuorum(e, p, st, readLine); err != nil {
		t.Fatalf("promptQuorum: %v\n%s", err, stderr.String())
	}
	if st, _ := p.Status(); st.State != hsm.StateActive {
		t.Fatalf("partition %s after the prompt", st.State)
	}
	if max := len(typed(shares[0])) + len(typed(shares[2])); *read > max {
		t.Errorf("prompt read %d lines, past the two shares' %d: it asked after the quorum", *read, max)
	}
	if !strings.Contains(stderr.String(), "share 2 of 2 accepted") || !strings.Contains(stderr.String(), "is active") {
		t.Errorf("prompt output:\n%s", stderr.String())
	}
}

func TestGatherQuorumWithoutTerminalIsUsageError(t *testing.T) {
	p, _ := newSoftPartition(t, 3, 2)
	e := &env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard}
	err := gatherQuorum(e, p, nil, nil)
	var u usageError
	if !errors.As(err, &u) || !strings.Contains(err.Error(), "2 of 3") {
		t.Fatalf("gatherQuorum without shares or terminal: %v", err)
	}
}
