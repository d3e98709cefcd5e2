// Package benchutil holds small helpers shared by the benchmarks of
// several packages.
package benchutil

import "slices"

// Median is the middle value of xs (the mean of the two middle ones for
// an even count; 0 for none). xs is sorted in place.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	m := len(xs) / 2
	if len(xs)%2 == 0 {
		return (xs[m-1] + xs[m]) / 2
	}
	return xs[m]
}
