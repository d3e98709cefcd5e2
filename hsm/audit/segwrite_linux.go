package audit

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"syscall"
)

// On Linux the segment's frames are copied into a shared memory mapping
// of the file: the copy puts the record in the kernel's page cache, the
// same pages a write(2) would fill, so a kill -9 right after it loses
// nothing, and a signature costs no system call. The file is allocated
// ahead of the records (fallocate, so that a later page fault never needs
// a block the disk no longer has) and the space after the last record
// reads as zeros. An fsync of the file syncs the mapped pages like
// written ones.

const (
	// growStep is how far ahead of the records the file is allocated.
	growStep = 1 << 20
	// mapWindow is the span of the file mapped at a time; records go at
	// its tail, and it moves on when they reach its end.
	mapWindow = 8 << 20
)

// segWriter puts frames into the segment. Its methods are called with the
// log's mu held.
type segWriter struct {
	f      *os.File
	size   int64  // the file's size: allocated space included
	mapOff int64  // file offset of m[0], a multiple of the page size
	m      []byte // the mapped window, nil before the first frame
}

func newSegWriter(f *os.File, size int64) *segWriter {
	return &segWriter{f: f, size: size}
}

// writeAt puts b at off, allocating and mapping the file as needed.
func (w *segWriter) writeAt(b []byte, off int64) error {
	end := off + int64(len(b))
	// The space after the last record must hold at least a zero frame
	// header: a reader after a kill -9 (no truncate at Close) tells the
	// end of the records by it, and a record that ended within a header's
	// length of the file's end would read as a torn one.
	if need := end + frameHeaderLen; need > w.size {
		// Allocate a whole step beyond the record, so that allocation
		// is rare.
		size := (need + growStep - 1) / growStep * growStep
		if err := allocate(w.f, w.size, size); err != nil {
			return fmt.Errorf("allocate segment space to %d: %w", size, err)
		}
		w.size = size
	}
	if w.m == nil || off < w.mapOff || end > w.mapOff+int64(len(w.m)) {
		if err := w.remap(off); err != nil {
			return err
		}
	}
	return copyGuarded(w.m[off-w.mapOff:], b)
}

// remap maps the window that starts at the page holding off.
func (w *segWriter) remap(off int64) error {
	if err := w.unmap(); err != nil {
		return err
	}
	page := int64(os.Getpagesize())
	start := off / page * page
	m, err := syscall.Mmap(int(w.f.Fd()), start, mapWindow, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map segment at %d: %w", start, err)
	}
	w.m, w.mapOff = m, start
	return nil
}

func (w *segWriter) unmap() error {
	if w.m == nil {
		return nil
	}
	err := syscall.Munmap(w.m)
	w.m = nil
	if err != nil {
		return fmt.Errorf("unmap segment: %w", err)
	}
	return nil
}

// truncate cuts the file at off, allocated space included (to cut off a
// torn end, or on Close).
func (w *segWriter) truncate(off int64) error {
	if err := w.f.Truncate(off); err != nil {
		return err
	}
	w.size = off
	return nil
}

// close unmaps the window; the file stays open.
func (w *segWriter) close() error { return w.unmap() }

// allocate extends f from size to newSize with blocks reserved on disk.
func allocate(f *os.File, size, newSize int64) error {
	err := syscall.Fallocate(int(f.Fd()), 0, size, newSize-size)
	if errors.Is(err, syscall.EOPNOTSUPP) {
		// A file system without fallocate: extend the file; a full disk
		// then shows as a fault on a later copy (see copyGuarded).
		err = f.Truncate(newSize)
	}
	return err
}

// copyGuarded copies b into the mapped dst. An I/O error on a mapped page,
// or a file cut short under the log, raises SIGBUS on the access; it is
// turned into an error (the log then refuses to sign) instead of killing
// the process.
func copyGuarded(dst, b []byte) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("fault writing the mapped segment: %v", r)
		}
	}()
	copy(dst, b)
	return nil
}
