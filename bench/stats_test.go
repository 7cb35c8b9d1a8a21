package main

import (
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 100; i++ {
		s = append(s, time.Duration(i))
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50}, {0.99, 99}, {1, 100}, {0.001, 1}} {
		if got := percentile(s, c.q); got != c.want {
			t.Errorf("percentile(1..100, %v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of nothing = %v, want 0", got)
	}
}

func TestSpreadMedianMinMax(t *testing.T) {
	s := spreadOf([]float64{3, 1, 2, 5, 4})
	if s.med != 3 || s.min != 1 || s.max != 5 || s.n != 5 {
		t.Errorf("spreadOf(3 1 2 5 4) = %+v, want median 3, min 1, max 5", s)
	}
	if got := spreadOf([]float64{1, 4}).med; got != 2.5 {
		t.Errorf("median of 1 and 4 = %v, want 2.5", got)
	}
	if got := s.ratio(); got != "3.00 (1.00–5.00)" {
		t.Errorf("ratio() = %q", got)
	}
}

func TestSpreadDurations(t *testing.T) {
	ms := func(xs ...float64) []float64 {
		for i := range xs {
			xs[i] *= float64(time.Millisecond)
		}
		return xs
	}
	for _, c := range []struct {
		xs   []float64
		want string
	}{
		{nil, "—"},
		{ms(0.167), "167µs"},
		{ms(2, 1, 3), "2ms (1ms–3ms)"},
	} {
		if got := spreadOf(c.xs).durations(); got != c.want {
			t.Errorf("durations of %v = %q, want %q", c.xs, got, c.want)
		}
	}
}
