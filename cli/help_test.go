package cli

import (
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// allCommands returns every command of the tree under root, root included,
// with cobra's completion command (help is cobra's own and has no flags).
func allCommands(root *cobra.Command) []*cobra.Command {
	out := []*cobra.Command{root}
	for _, c := range root.Commands() {
		if c.Name() == "help" {
			continue
		}
		out = append(out, allCommands(c)...)
	}
	return out
}

func testRoot() *cobra.Command {
	return newRoot(&env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard})
}

// TestEveryCommandHasExample: DESIGN.md §6 says every command has --help
// with an example, the command groups and cobra's completion command too.
func TestEveryCommandHasExample(t *testing.T) {
	for _, c := range allCommands(testRoot()) {
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("%q has no example in its --help", c.CommandPath())
		}
	}
}

// exampleCommands returns the hsmca command lines of an Example text:
// continuation lines joined, comments and pipes cut off.
func exampleCommands(example string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(example, "\n") {
		line = strings.TrimSpace(line)
		if cont := strings.HasSuffix(line, `\`); cont {
			cur.WriteString(strings.TrimSuffix(line, `\`) + " ")
			continue
		}
		cur.WriteString(line)
		full := cur.String()
		cur.Reset()
		if i := strings.Index(full, " #"); i >= 0 {
			full = full[:i]
		}
		if strings.HasPrefix(full, "hsmca ") {
			out = append(out, full)
		}
	}
	return out
}

// TestExamplesUseExistingFlags runs every example of every --help through
// the command tree: each must name a command that runs, and every --flag
// it uses must exist on that command.
func TestExamplesUseExistingFlags(t *testing.T) {
	root := testRoot()
	checked := 0
	for _, c := range allCommands(root) {
		for _, line := range exampleCommands(c.Example) {
			checked++
			words := strings.Fields(line)[1:]
			cmd := root
			descend := true
			for _, w := range words {
				if w == "|" || w == ">" || w == "<" || w == "--" {
					break
				}
				if strings.HasPrefix(w, "-") {
					descend = false
					name, _, _ := strings.Cut(strings.TrimLeft(w, "-"), "=")
					if !strings.HasPrefix(w, "--") {
						if cmd.Flags().ShorthandLookup(name) == nil && cmd.InheritedFlags().ShorthandLookup(name) == nil {
							t.Errorf("%s: example %q uses -%s, which %q does not have", c.CommandPath(), line, name, cmd.CommandPath())
						}
						continue
					}
					if cmd.Flags().Lookup(name) == nil && cmd.InheritedFlags().Lookup(name) == nil {
						t.Errorf("%s: example %q uses --%s, which %q does not have", c.CommandPath(), line, name, cmd.CommandPath())
					}
					continue
				}
				if !descend {
					continue
				}
				var next *cobra.Command
				for _, sub := range cmd.Commands() {
					if sub.Name() == w {
						next = sub
					}
				}
				if next == nil {
					descend = false
					continue
				}
				cmd = next
			}
			if !cmd.Runnable() {
				t.Errorf("%s: example %q names no runnable command (stops at %q)", c.CommandPath(), line, cmd.CommandPath())
			}
		}
	}
	if checked < 50 {
		t.Fatalf("only %d example lines found; the parser is broken", checked)
	}
}
