//go:build !unix

package davtest

import "time"

// ProcessCPU is the CPU time the process has used: not read here.
func ProcessCPU() time.Duration { return 0 }
