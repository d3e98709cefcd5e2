package acme

import (
	"math"
	"sync"
	"time"
)

// limiter holds token buckets per key (account or client IP). Memory is
// bounded: when the table is full, buckets that have refilled completely
// carry no information and are dropped; if that frees too little, the table
// starts over (erring on the side of letting clients through).
type limiter struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

const limiterMax = 100000

func newLimiter(now func() time.Time) *limiter {
	return &limiter{now: now, m: make(map[string]*bucket)}
}

// allow takes one token from key's bucket (rate per second, burst); a rate
// <= 0 disables the limit. When the bucket holds less than a token it
// takes none and returns how long until it holds one (for Retry-After).
func (l *limiter) allow(key string, rate float64, burst int) (bool, time.Duration) {
	if rate <= 0 {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[key]
	if b == nil {
		if len(l.m) >= limiterMax {
			l.pruneLocked(now, rate, burst)
		}
		b = &bucket{tokens: float64(burst), last: now}
		l.m[key] = b
	} else {
		b.tokens += now.Sub(b.last).Seconds() * rate
		if b.tokens > float64(burst) {
			b.tokens = float64(burst)
		}
		b.last = now
	}
	if b.tokens < 1 {
		return false, time.Duration(math.Ceil((1 - b.tokens) / rate * float64(time.Second)))
	}
	b.tokens--
	return true, 0
}

func (l *limiter) pruneLocked(now time.Time, rate float64, burst int) {
	for k, b := range l.m {
		if b.tokens+now.Sub(b.last).Seconds()*rate >= float64(burst) {
			delete(l.m, k)
		}
	}
	if len(l.m) >= limiterMax*3/4 {
		l.m = make(map[string]*bucket)
	}
}
