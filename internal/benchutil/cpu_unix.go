//go:build unix

package benchutil

import (
	"syscall"
	"time"
)

// ProcessCPU is the user and system CPU time of the whole process so far
// (getrusage: every thread, cgo code included).
func ProcessCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
