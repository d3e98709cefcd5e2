//go:build !linux

package audit

import "os"

// Outside Linux the segment's frames are written with one write(2) each,
// at the signer's BeginSign; the file holds no space beyond its records.

// segWriter puts frames into the segment. Its methods are called with the
// log's mu held.
type segWriter struct{ f *os.File }

func newSegWriter(f *os.File, _ int64) *segWriter { return &segWriter{f: f} }

func (w *segWriter) writeAt(b []byte, off int64) error {
	_, err := w.f.WriteAt(b, off)
	return err
}

func (w *segWriter) truncate(off int64) error { return w.f.Truncate(off) }

func (w *segWriter) close() error { return nil }
