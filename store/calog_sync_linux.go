package store

import (
	"os"
	"syscall"
)

// fdatasync makes f's data durable, and its size, without the other
// metadata an fsync also writes.
func fdatasync(f *os.File) error {
	conn, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := conn.Control(func(fd uintptr) { serr = syscall.Fdatasync(int(fd)) }); err != nil {
		return err
	}
	return serr
}
