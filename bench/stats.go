package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// percentile returns the q-quantile (0 < q <= 1) of sorted by the
// nearest-rank method: the smallest value with at least q of the values
// at or below it. It is 0 for no values.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// spread is the median of a set of values with its min and max: how the
// results of the pairs of a run are summarised.
type spread struct {
	med, min, max float64
	n             int
}

func spreadOf(xs []float64) spread {
	if len(xs) == 0 {
		return spread{med: math.NaN(), min: math.NaN(), max: math.NaN()}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{med: med, min: s[0], max: s[len(s)-1], n: len(s)}
}

// ratio formats a spread of ratios as "0.98 (0.95–1.01)".
func (s spread) ratio() string {
	if s.n == 0 {
		return "—"
	}
	if s.n == 1 {
		return fmt.Sprintf("%.2f", s.med)
	}
	return fmt.Sprintf("%.2f (%.2f–%.2f)", s.med, s.min, s.max)
}

// durations formats a spread of durations as "167µs (150µs–180µs)".
func (s spread) durations() string {
	if s.n == 0 {
		return "—"
	}
	med := fmtDur(time.Duration(s.med))
	if s.n == 1 {
		return med
	}
	return fmt.Sprintf("%s (%s–%s)", med, fmtDur(time.Duration(s.min)), fmtDur(time.Duration(s.max)))
}

// counts formats a spread of counts as "12 (11–13)".
func (s spread) counts() string {
	if s.n == 0 {
		return "—"
	}
	if s.n == 1 || s.min == s.max {
		return fmt.Sprintf("%.0f", s.med)
	}
	return fmt.Sprintf("%.0f (%.0f–%.0f)", s.med, s.min, s.max)
}

// fmtDur prints a latency with three significant digits.
func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.3gms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.3gµs", float64(d)/float64(time.Microsecond))
	}
}

// fmtRate prints a rate per second.
func fmtRate(r float64) string {
	if r >= 1000 {
		return fmt.Sprintf("%.0f", r)
	}
	return fmt.Sprintf("%.3g", r)
}

// fmtBytes prints a size in MiB.
func fmtBytes(b float64) string {
	return fmt.Sprintf("%.1f MiB", b/(1<<20))
}
