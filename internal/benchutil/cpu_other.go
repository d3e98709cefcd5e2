//go:build !unix

package benchutil

import (
	"errors"
	"time"
)

// ProcessCPU is not available here.
func ProcessCPU() (time.Duration, error) {
	return 0, errors.New("benchutil: process CPU time is not available on this system")
}
