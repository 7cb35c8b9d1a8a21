package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"
)

// OpenLocker returns an empty in-flight lock table of a zone, with
// hierarchy or without, and the given max_locks and max_waiters (values
// <= 0 mean the defaults, as lockstore.Limits reads them). Each call is a
// zone of its own; the function closes what it opened with t.Cleanup,
// where a store may also check that nothing is left behind.
type OpenLocker func(t *testing.T, hierarchy bool, maxLocks, maxWaiters int) lockstore.Locker

// Locker runs the contract of lockstore.Locker and lockstore.Lease on
// the tables that open returns, one subtest per rule.
func Locker(t *testing.T, open OpenLocker) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T, OpenLocker)
	}{
		{"ExclusiveShared", lockerExclusiveShared},
		{"ReleaseTwice", lockerReleaseTwice},
		{"Hierarchy", lockerHierarchy},
		{"NoHierarchy", lockerNoHierarchy},
		{"HierarchyDepthBound", lockerDepthBound},
		{"FIFO", lockerFIFO},
		{"NoOvertaking", lockerNoOvertaking},
		{"SharedWaitersGrantedTogether", lockerSharedWaitersTogether},
		{"WaitTimeout", lockerWaitTimeout},
		{"ContextEndsWhileQueued", lockerContextEnds},
		{"ReleaseWakesAcrossLevels", lockerWakesAcrossLevels},
		{"MaxWaiters", lockerMaxWaiters},
		{"MaxLocks", lockerMaxLocks},
		{"FullTableReportsConflict", lockerFullReportsConflict},
		{"SetLimits", lockerSetLimits},
		{"Queued", lockerQueued},
		{"HeldLocks", lockerHeldLocks},
		{"InvalidKind", lockerInvalidKind},
		{"NeverGrantedTwice", lockerNeverGrantedTwice},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(t, open) })
	}
}

func lockerExclusiveShared(t *testing.T, open OpenLocker) {
	l := open(t, false, 0, 0)
	a := acquire(t, l, "/a", lockstore.Exclusive)
	c := conflict(t, l, "/a", lockstore.Exclusive)
	if c.Key != "/a" || c.Kind != lockstore.Exclusive || c.Below || c.RetryAfter < time.Second || c.HeldFor <= 0 {
		t.Fatalf("conflict = %+v, want the exclusive lock on /a, Retry-After at least 1s", c)
	}
	if c.Error() == "" {
		t.Fatal("a conflict without a message")
	}
	if c := conflict(t, l, "/a", lockstore.Shared); c.Kind != lockstore.Exclusive {
		t.Fatalf("conflict = %+v, want the exclusive lock", c)
	}
	b := acquire(t, l, "/b", lockstore.Exclusive) // distinct keys do not conflict
	a.Release()
	s1 := acquire(t, l, "/a", lockstore.Shared)
	s2 := acquire(t, l, "/a", lockstore.Shared) // shared locks coexist
	if c := conflict(t, l, "/a", lockstore.Exclusive); c.Kind != lockstore.Shared || c.Key != "/a" {
		t.Fatalf("conflict = %+v, want the shared lock on /a", c)
	}
	s1.Release()
	conflict(t, l, "/a", lockstore.Exclusive) // one shared holder is left
	s2.Release()
	b.Release()
	x := acquire(t, l, "/a", lockstore.Exclusive)
	if c := conflict(t, l, "/a", lockstore.Shared); c.Kind != lockstore.Exclusive {
		t.Fatalf("conflict = %+v, want the exclusive lock", c)
	}
	x.Release()
	waitEmpty(t, l)
}

func lockerReleaseTwice(t *testing.T, open OpenLocker) {
	l := open(t, false, 0, 0)
	a := acquire(t, l, "/k", lockstore.Exclusive)
	a.Release()
	a.Release() // a second release changes nothing
	b := acquire(t, l, "/k", lockstore.Exclusive)
	a.Release() // a stale lease does not release the key's next holder
	conflict(t, l, "/k", lockstore.Exclusive)
	var wg sync.WaitGroup
	for range 4 { // nor do releases racing each other
		wg.Add(1)
		go func() { defer wg.Done(); a.Release() }()
	}
	wg.Wait()
	conflict(t, l, "/k", lockstore.Shared)
	if h := heldLocks(t, l)["/k"]; h.Holders != 1 || h.Kind != lockstore.Exclusive {
		t.Fatalf("/k listed as %+v, want one exclusive holder", h)
	}
	for range 2 { // the holder's own release, twice and at once
		wg.Add(1)
		go func() { defer wg.Done(); b.Release() }()
	}
	wg.Wait()
	acquire(t, l, "/k", lockstore.Exclusive).Release()
	waitEmpty(t, l)
}

func lockerHierarchy(t *testing.T, open OpenLocker) {
	for _, tc := range []struct {
		held, want string
		conflict   bool
	}{
		{"/a", "/a/b", true},
		{"/a/b", "/a", true},
		{"/a", "/a/b/c/d", true},
		{"/a/b/c/d", "/a", true},
		{"/", "/x", true},
		{"/x/y", "/", true},
		{"/a", "/ab", false},
		{"/ab", "/a", false},
		{"/a/b", "/a/c", false},
		{"/a/b", "/a/bc", false},
		{"x", "x/y", false}, // keys not rooted at "/" have no hierarchy
	} {
		t.Run(tc.held+" vs "+tc.want, func(t *testing.T) {
			l := open(t, true, 0, 0)
			if !l.Hierarchy() {
				t.Fatal("a table opened with hierarchy says it has none")
			}
			h := acquire(t, l, tc.held, lockstore.Exclusive)
			if !tc.conflict {
				acquire(t, l, tc.want, lockstore.Exclusive).Release()
				h.Release()
				waitEmpty(t, l)
				return
			}
			for _, kind := range []lockstore.Kind{lockstore.Exclusive, lockstore.Shared} {
				c := conflict(t, l, tc.want, kind)
				if c.Kind != lockstore.Exclusive {
					t.Fatalf("conflict = %+v, want the exclusive lock", c)
				}
				if lockstore.Below(tc.want, tc.held) && (c.Key != tc.held || c.Below) {
					t.Fatalf("conflict = %+v, want the lock on the ancestor %s", c, tc.held)
				}
				if lockstore.Below(tc.held, tc.want) && (c.Key != tc.want || !c.Below) {
					t.Fatalf("conflict = %+v, want a lock below %s", c, tc.want)
				}
			}
			h.Release()
			acquire(t, l, tc.want, lockstore.Exclusive).Release()
			waitEmpty(t, l)
		})
	}

	// Shared locks nest; an exclusive one fits neither under nor over
	// them.
	t.Run("shared", func(t *testing.T) {
		l := open(t, true, 0, 0)
		s1 := acquire(t, l, "/a", lockstore.Shared)
		s2 := acquire(t, l, "/a/b", lockstore.Shared)
		if c := conflict(t, l, "/a/b/c", lockstore.Exclusive); c.Kind != lockstore.Shared || c.Below {
			t.Fatalf("conflict = %+v, want a shared lock above", c)
		}
		if c := conflict(t, l, "/", lockstore.Exclusive); c.Kind != lockstore.Shared || !c.Below || c.Key != "/" {
			t.Fatalf("conflict = %+v, want a shared lock below /", c)
		}
		acquire(t, l, "/a/c", lockstore.Shared).Release()
		acquire(t, l, "/b", lockstore.Exclusive).Release()
		s1.Release()
		s2.Release()
		acquire(t, l, "/", lockstore.Exclusive).Release()
		waitEmpty(t, l)
	})
}

func lockerNoHierarchy(t *testing.T, open OpenLocker) {
	l := open(t, false, 0, 0)
	if l.Hierarchy() {
		t.Fatal("a table opened without hierarchy says it has one")
	}
	var leases []lockstore.Lease
	for _, k := range []string{"/a", "/a/b", "/", "/a/b/c"} {
		leases = append(leases, acquire(t, l, k, lockstore.Exclusive))
	}
	for _, ls := range leases {
		ls.Release()
	}
	waitEmpty(t, l)
}

func lockerDepthBound(t *testing.T, open OpenLocker) {
	l := open(t, true, 0, 0)
	acquire(t, l, deepKey(lockstore.MaxHierarchyDepth), lockstore.Exclusive).Release()
	ls, err := l.Acquire(context.Background(), lockstore.Request{Key: deepKey(lockstore.MaxHierarchyDepth + 1), Kind: lockstore.Shared})
	if !errors.Is(err, lockstore.ErrTooDeep) {
		if ls != nil {
			ls.Release()
		}
		t.Fatalf("acquire at %d segments: %v, want ErrTooDeep", lockstore.MaxHierarchyDepth+1, err)
	}
	if want := fmt.Sprint(lockstore.MaxHierarchyDepth+1, " segments"); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say how deep the key is (%s)", err, want)
	}
	waitEmpty(t, l)

	// A zone without hierarchy walks no ancestors and bounds nothing.
	flat := open(t, false, 0, 0)
	acquire(t, flat, deepKey(8000), lockstore.Exclusive).Release()
	waitEmpty(t, flat)
}

func lockerFIFO(t *testing.T, open OpenLocker) {
	eachHierarchy(t, func(t *testing.T, hierarchy bool) {
		l := open(t, hierarchy, 0, 0)
		first := acquire(t, l, "/doc", lockstore.Exclusive)
		const n = 6
		order := make(chan int, n)
		var wg sync.WaitGroup
		for i := range n {
			kind := lockstore.Exclusive
			if i == 2 || i == 3 {
				kind = lockstore.Shared // consecutive shared waiters may run together
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ls, err := l.Acquire(context.Background(), lockstore.Request{Key: "/doc", Kind: kind, Wait: time.Minute})
				if err != nil {
					t.Errorf("waiter %d: %v", i, err)
					return
				}
				order <- i
				ls.Release()
			}()
			waitQueued(t, l, "/doc", i+1) // queue them in a known order
		}
		// A newcomer does not overtake the queue, even when it does
		// not wait.
		conflict(t, l, "/doc", lockstore.Exclusive)
		first.Release()
		wg.Wait()
		close(order)
		var got []int
		for i := range order {
			got = append(got, i)
		}
		for i, v := range got {
			if i != v && !(i >= 2 && i <= 3 && v >= 2 && v <= 3) {
				t.Fatalf("grant order %v, want arrival order", got)
			}
		}
		if len(got) != n {
			t.Fatalf("granted %v, want all %d waiters", got, n)
		}
		waitEmpty(t, l)
	})
}

func lockerNoOvertaking(t *testing.T, open OpenLocker) {
	// A queued writer keeps newcomers out, even shared ones.
	t.Run("behind a waiter", func(t *testing.T) {
		l := open(t, false, 0, 0)
		held := acquire(t, l, "/doc", lockstore.Exclusive)
		got := attempt(context.Background(), l, "/doc", lockstore.Shared)
		waitQueued(t, l, "/doc", 1)
		if c := conflict(t, l, "/doc", lockstore.Shared); c.Key != "/doc" {
			t.Fatalf("conflict = %+v, want the lock on /doc", c)
		}
		held.Release()
		if err := <-got; err != nil {
			t.Fatalf("the waiter: %v", err)
		}
		waitEmpty(t, l)
	})
	// While a writer waits behind a reader, a new reader, which the
	// held lock alone would let in, is refused: granted, it would keep
	// the writer waiting for as long as readers keep coming.
	t.Run("reader behind a queued writer", func(t *testing.T) {
		for _, hierarchy := range []bool{false, true} {
			l := open(t, hierarchy, 0, 0)
			r1 := acquire(t, l, "/doc", lockstore.Shared)
			writer := acquireAsync(t, l, "/doc", lockstore.Exclusive)
			waitQueued(t, l, "/doc", 1)
			if c := conflict(t, l, "/doc", lockstore.Shared); c.Key != "/doc" {
				t.Fatalf("conflict = %+v, want the lock on /doc", c)
			}
			r1.Release()
			w := received(t, writer, "the queued writer")
			if !w.Queued() {
				t.Error("the writer's lease says it did not queue")
			}
			w.Release()
			waitEmpty(t, l)
		}
	})
	// With hierarchy, a queue on a key keeps newcomers on that key out
	// also while an ancestor is what blocks its head.
	t.Run("behind a waiter blocked above", func(t *testing.T) {
		l := open(t, true, 0, 0)
		parent := acquire(t, l, "/p", lockstore.Shared)
		child := acquire(t, l, "/p/c", lockstore.Shared)
		waiter := attempt(context.Background(), l, "/p/c", lockstore.Exclusive)
		waitQueued(t, l, "/p/c", 1)
		child.Release() // now only the parent's lock blocks the waiter
		conflict(t, l, "/p/c", lockstore.Shared)
		parent.Release()
		if err := <-waiter; err != nil {
			t.Fatalf("the waiter: %v", err)
		}
		waitEmpty(t, l)
	})
}

func lockerSharedWaitersTogether(t *testing.T, open OpenLocker) {
	l := open(t, false, 0, 0)
	w := acquire(t, l, "/doc", lockstore.Exclusive)
	var inside, peak atomic.Int32
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ls, err := l.Acquire(context.Background(), lockstore.Request{Key: "/doc", Kind: lockstore.Shared, Wait: time.Minute})
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			<-release
			inside.Add(-1)
			ls.Release()
		}()
		waitQueued(t, l, "/doc", i+1)
	}
	w.Release()
	waitFor(t, "the three shared waiters to hold the lock together", func() bool { return peak.Load() == 3 })
	if h := heldLocks(t, l)["/doc"]; h.Kind != lockstore.Shared || h.Holders != 3 {
		t.Errorf("/doc listed as %+v, want 3 shared holders", h)
	}
	close(release)
	wg.Wait()
	waitEmpty(t, l)
}

func lockerWaitTimeout(t *testing.T, open OpenLocker) {
	eachHierarchy(t, func(t *testing.T, hierarchy bool) {
		l := open(t, hierarchy, 0, 0)
		held := acquire(t, l, "/a", lockstore.Exclusive)
		key := "/a"
		if hierarchy {
			key = "/a/b" // blocked by the ancestor
		}
		const wait = 100 * time.Millisecond
		start := time.Now()
		_, err := l.Acquire(context.Background(), lockstore.Request{Key: key, Kind: lockstore.Exclusive, Wait: wait})
		var c *lockstore.ConflictError
		if !errors.As(err, &c) || c.Key != "/a" {
			t.Fatalf("after waiting: %v, want a conflict on /a", err)
		}
		if d := time.Since(start); d < wait || d > patience {
			t.Fatalf("gave up after %s, want the wait of %s", d, wait)
		}
		// Its place in the queue is gone.
		if h := heldLocks(t, l)["/a"]; h.Waiting != 0 {
			t.Fatalf("/a listed as %+v after the waiter gave up", h)
		}
		held.Release()
		acquire(t, l, key, lockstore.Exclusive).Release()
		waitEmpty(t, l)
	})
}

// A request whose context ends while it is queued returns the context's
// error and frees its place at once: the one behind it moves up and gets
// the lock.
func lockerContextEnds(t *testing.T, open OpenLocker) {
	eachHierarchy(t, func(t *testing.T, hierarchy bool) {
		l := open(t, hierarchy, 0, 0)
		held := acquire(t, l, "/c", lockstore.Exclusive)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		first := attempt(ctx, l, "/c", lockstore.Exclusive)
		waitQueued(t, l, "/c", 1)
		second := acquireAsync(t, l, "/c", lockstore.Exclusive)
		waitQueued(t, l, "/c", 2)
		cancel()
		select {
		case err := <-first:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("the cancelled waiter: %v, want context.Canceled", err)
			}
		case <-time.After(patience):
			t.Fatal("the cancelled waiter did not return")
		}
		waitQueued(t, l, "/c", 1)
		held.Release()
		received(t, second, "the waiter behind the cancelled one").Release()
		waitEmpty(t, l)

		// A deadline is an end too.
		held = acquire(t, l, "/c", lockstore.Exclusive)
		dctx, dcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer dcancel()
		if _, err := l.Acquire(dctx, lockstore.Request{Key: "/c", Kind: lockstore.Exclusive, Wait: time.Minute}); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("waiter past its deadline: %v, want context.DeadlineExceeded", err)
		}
		held.Release()
		waitEmpty(t, l)
	})

	// With hierarchy, also when the head of the queue is blocked by an
	// ancestor: the one behind takes its place and is woken by the
	// ancestor's release.
	t.Run("blocked above", func(t *testing.T) {
		l := open(t, true, 0, 0)
		parent := acquire(t, l, "/a", lockstore.Shared)
		child := acquire(t, l, "/a/b", lockstore.Shared)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		first := attempt(ctx, l, "/a/b", lockstore.Exclusive)
		waitQueued(t, l, "/a/b", 1)
		second := acquireAsync(t, l, "/a/b", lockstore.Exclusive)
		waitQueued(t, l, "/a/b", 2)
		child.Release() // the ancestor's lock is left in the way
		cancel()
		if err := <-first; !errors.Is(err, context.Canceled) {
			t.Fatalf("the cancelled waiter: %v, want context.Canceled", err)
		}
		parent.Release()
		received(t, second, "the waiter behind the cancelled one").Release()
		waitEmpty(t, l)
	})
}

// With hierarchy, a release wakes the waiters it unblocks on keys above
// and below the one it frees, without their wait running out.
func lockerWakesAcrossLevels(t *testing.T, open OpenLocker) {
	t.Run("waiter below", func(t *testing.T) {
		l := open(t, true, 0, 0)
		parent := acquire(t, l, "/a", lockstore.Shared)
		child := acquire(t, l, "/a/b", lockstore.Shared)
		waiter := acquireAsync(t, l, "/a/b", lockstore.Exclusive)
		waitQueued(t, l, "/a/b", 1)
		child.Release() // the ancestor's lock is left in the way
		parent.Release()
		received(t, waiter, "the waiter below").Release()
		waitEmpty(t, l)
	})
	t.Run("waiter above", func(t *testing.T) {
		l := open(t, true, 0, 0)
		parent := acquire(t, l, "/a", lockstore.Shared)
		child := acquire(t, l, "/a/b", lockstore.Shared)
		waiter := acquireAsync(t, l, "/a", lockstore.Exclusive)
		waitQueued(t, l, "/a", 1)
		parent.Release() // the lock below is left in the way
		child.Release()
		received(t, waiter, "the waiter above").Release()
		waitEmpty(t, l)
	})
}

func lockerMaxWaiters(t *testing.T, open OpenLocker) {
	l := open(t, false, 0, 2)
	held := acquire(t, l, "/m", lockstore.Exclusive)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waiters []<-chan error
	for i := range 2 {
		waiters = append(waiters, attempt(ctx, l, "/m", lockstore.Exclusive))
		waitQueued(t, l, "/m", i+1)
	}
	// A third is refused at once, whatever its wait.
	start := time.Now()
	ls, err := l.Acquire(context.Background(), lockstore.Request{Key: "/m", Kind: lockstore.Exclusive, Wait: time.Minute})
	if !errors.As(err, new(*lockstore.ConflictError)) {
		if ls != nil {
			ls.Release()
		}
		t.Fatalf("third waiter: %v, want an immediate conflict", err)
	}
	if d := time.Since(start); d > patience/2 {
		t.Fatalf("third waiter refused after %s, want at once", d)
	}
	// Other keys have queues of their own.
	other := acquire(t, l, "/n", lockstore.Exclusive)
	waiters = append(waiters, attempt(ctx, l, "/n", lockstore.Exclusive))
	waitQueued(t, l, "/n", 1)
	cancel()
	for _, w := range waiters {
		if err := <-w; !errors.Is(err, context.Canceled) {
			t.Fatalf("a waiter: %v, want context.Canceled", err)
		}
	}
	held.Release()
	other.Release()
	waitEmpty(t, l)
}

func lockerMaxLocks(t *testing.T, open OpenLocker) {
	l := open(t, false, 3, 0)
	a := acquire(t, l, "/1", lockstore.Exclusive)
	b := acquire(t, l, "/2", lockstore.Exclusive)
	c := acquire(t, l, "/3", lockstore.Shared)
	// Full for a free key, and for another holder of a shared lock.
	full(t, l, lockstore.Request{Key: "/4", Kind: lockstore.Exclusive})
	full(t, l, lockstore.Request{Key: "/3", Kind: lockstore.Shared})
	// Nothing was evicted.
	for _, k := range []string{"/1", "/2", "/3"} {
		conflict(t, l, k, lockstore.Exclusive)
	}
	b.Release()
	// A waiter takes a place too.
	waiter := attempt(context.Background(), l, "/1", lockstore.Exclusive)
	waitQueued(t, l, "/1", 1)
	full(t, l, lockstore.Request{Key: "/5", Kind: lockstore.Exclusive})
	a.Release()
	if err := <-waiter; err != nil {
		t.Fatalf("the waiter: %v", err)
	}
	c.Release()
	waitEmpty(t, l)
	// Every place can be used again.
	var leases []lockstore.Lease
	for i := range 3 {
		leases = append(leases, acquire(t, l, fmt.Sprintf("/k%d", i), lockstore.Exclusive))
	}
	full(t, l, lockstore.Request{Key: "/other", Kind: lockstore.Exclusive})
	for _, ls := range leases {
		ls.Release()
	}
	waitEmpty(t, l)
}

// A full table still reports a conflict as a conflict (423, not 503) when
// the request would not queue; a request that would queue is refused as
// full, since its waiter needs a place.
func lockerFullReportsConflict(t *testing.T, open OpenLocker) {
	l := open(t, false, 2, 0)
	a := acquire(t, l, "/a", lockstore.Exclusive)
	b := acquire(t, l, "/b", lockstore.Shared)
	if c := conflict(t, l, "/a", lockstore.Shared); c.Key != "/a" || c.Kind != lockstore.Exclusive {
		t.Fatalf("conflict = %+v, want the exclusive lock on /a", c)
	}
	conflict(t, l, "/b", lockstore.Exclusive)
	for _, req := range []lockstore.Request{
		{Key: "/c", Kind: lockstore.Exclusive},
		{Key: "/b", Kind: lockstore.Shared},
		{Key: "/a", Kind: lockstore.Exclusive, Wait: time.Second},
	} {
		full(t, l, req)
	}
	a.Release()
	b.Release()
	waitEmpty(t, l)
}

// SetLimits applies to the grants that follow; held locks stay, and
// values <= 0 mean the defaults.
func lockerSetLimits(t *testing.T, open OpenLocker) {
	l := open(t, false, 0, 0)
	l.SetLimits(2, 1)
	a := acquire(t, l, "/a", lockstore.Exclusive)
	b := acquire(t, l, "/b", lockstore.Exclusive)
	full(t, l, lockstore.Request{Key: "/c", Kind: lockstore.Exclusive})
	l.SetLimits(3, 1)
	c := acquire(t, l, "/c", lockstore.Exclusive)
	l.SetLimits(1, 1) // below what is held: nothing is evicted
	for _, k := range []string{"/a", "/b", "/c"} {
		conflict(t, l, k, lockstore.Shared)
	}
	full(t, l, lockstore.Request{Key: "/d", Kind: lockstore.Exclusive})
	a.Release()
	b.Release()
	full(t, l, lockstore.Request{Key: "/d", Kind: lockstore.Exclusive})
	c.Release()
	waitEmpty(t, l)

	// max_waiters 1: one waiter queues, the next is refused at once.
	l.SetLimits(0, 1)
	held := acquire(t, l, "/w", lockstore.Exclusive)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiter := attempt(ctx, l, "/w", lockstore.Exclusive)
	waitQueued(t, l, "/w", 1)
	conflictAfterWait(t, l, "/w")
	cancel()
	<-waiter
	held.Release()
	waitEmpty(t, l)

	// The defaults: more than either limit set above.
	l.SetLimits(0, -1)
	var leases []lockstore.Lease
	for i := range 5 {
		leases = append(leases, acquire(t, l, fmt.Sprintf("/k%d", i), lockstore.Exclusive))
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	var waiters []<-chan error
	for i := range 3 {
		waiters = append(waiters, attempt(ctx, l, "/k0", lockstore.Exclusive))
		waitQueued(t, l, "/k0", i+1)
	}
	cancel()
	for _, w := range waiters {
		<-w
	}
	for _, ls := range leases {
		ls.Release()
	}
	waitEmpty(t, l)
}

// conflictAfterWait asks for key with a long wait and fails the test
// unless it is refused at once with a conflict.
func conflictAfterWait(t *testing.T, l lockstore.Locker, key string) {
	t.Helper()
	ls, err := l.Acquire(context.Background(), lockstore.Request{Key: key, Kind: lockstore.Exclusive, Wait: patience * 2})
	if !errors.As(err, new(*lockstore.ConflictError)) {
		if ls != nil {
			ls.Release()
		}
		t.Fatalf("waiter past max_waiters: %v, want a conflict", err)
	}
}

// Queued tells a lease granted at once from one granted after waiting:
// the handler's "waited" result rests on it, not on how long Acquire took.
func lockerQueued(t *testing.T, open OpenLocker) {
	l := open(t, false, 0, 0)
	first := acquire(t, l, "/q", lockstore.Exclusive)
	if first.Queued() {
		t.Fatal("a lease granted at once says it queued")
	}
	got := acquireAsync(t, l, "/q", lockstore.Exclusive)
	waitQueued(t, l, "/q", 1)
	first.Release()
	second := received(t, got, "the waiter")
	if !second.Queued() {
		t.Fatal("a lease granted after waiting says it did not queue")
	}
	second.Release()
	waitEmpty(t, l)
}

func lockerHeldLocks(t *testing.T, open OpenLocker) {
	l := open(t, false, 0, 0)
	if got := heldLocks(t, l); len(got) != 0 {
		t.Fatalf("an empty table lists %v", got)
	}
	before := time.Now()
	x := acquire(t, l, "/x", lockstore.Exclusive)
	s1 := acquire(t, l, "/s", lockstore.Shared)
	s2 := acquire(t, l, "/s", lockstore.Shared)
	after := time.Now()
	waiter := attempt(context.Background(), l, "/x", lockstore.Shared)
	waitQueued(t, l, "/x", 1)
	got := heldLocks(t, l)
	if len(got) != 2 {
		t.Fatalf("listing %+v, want /x and /s", got)
	}
	if h := got["/x"]; h.Kind != lockstore.Exclusive || h.Holders != 1 || h.Waiting != 1 {
		t.Errorf("/x listed as %+v, want exclusive, 1 holder, 1 waiting", h)
	}
	if h := got["/s"]; h.Kind != lockstore.Shared || h.Holders != 2 || h.Waiting != 0 {
		t.Errorf("/s listed as %+v, want shared, 2 holders", h)
	}
	for _, h := range got {
		// A store's clock may be another host's: a second of slack.
		if h.Since.Before(before.Add(-time.Second)) || h.Since.After(after.Add(time.Second)) {
			t.Errorf("%s held since %s, granted between %s and %s", h.Key, h.Since, before, after)
		}
	}
	x.Release()
	if err := <-waiter; err != nil {
		t.Fatalf("the waiter: %v", err)
	}
	s1.Release()
	if h := heldLocks(t, l)["/s"]; h.Holders != 1 {
		t.Errorf("/s listed as %+v after one release, want 1 holder", h)
	}
	s2.Release()
	waitEmpty(t, l)
}

func lockerInvalidKind(t *testing.T, open OpenLocker) {
	l := open(t, false, 0, 0)
	for _, kind := range []lockstore.Kind{0, 7} {
		ls, err := l.Acquire(context.Background(), lockstore.Request{Key: "/a", Kind: kind})
		if err == nil {
			ls.Release()
			t.Fatalf("a lock of kind %v was granted", kind)
		}
	}
	waitEmpty(t, l)
}

// Many goroutines take and release locks on a few related keys, waiting
// and not; independent counters check that no two conflicting leases
// ever overlap.
func lockerNeverGrantedTwice(t *testing.T, open OpenLocker) {
	keys := []string{"/", "/a", "/a/b", "/a/b/c", "/a/d", "/ab", "/e"}
	eachHierarchy(t, func(t *testing.T, hierarchy bool) {
		l := open(t, hierarchy, 0, 1000)
		related := func(a, b string) bool {
			return a == b || hierarchy && (lockstore.Below(a, b) || lockstore.Below(b, a))
		}
		var mu sync.Mutex
		holders := map[string]map[lockstore.Kind]int{}
		var wg sync.WaitGroup
		var granted atomic.Int64
		for g := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 200 {
					key := keys[(g*3+i)%len(keys)]
					kind := lockstore.Exclusive
					if (g+i)%3 == 0 {
						kind = lockstore.Shared
					}
					req := lockstore.Request{Key: key, Kind: kind}
					if g%2 == 0 {
						req.Wait = patience
					}
					ls, err := l.Acquire(context.Background(), req)
					if errors.As(err, new(*lockstore.ConflictError)) {
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					granted.Add(1)
					mu.Lock()
					for k, h := range holders {
						if related(k, key) && (h[lockstore.Exclusive] > 0 || kind == lockstore.Exclusive && h[lockstore.Shared] > 0) {
							t.Errorf("%s %s granted while %s is held %v", kind, key, k, h)
						}
					}
					if holders[key] == nil {
						holders[key] = map[lockstore.Kind]int{}
					}
					holders[key][kind]++
					mu.Unlock()
					if i%4 == 0 {
						// Hold a moment, so that others meet the lock.
						time.Sleep(100 * time.Microsecond)
					}
					mu.Lock()
					holders[key][kind]--
					mu.Unlock()
					ls.Release()
				}
			}()
		}
		wg.Wait()
		if granted.Load() == 0 {
			t.Fatal("nothing was granted")
		}
		waitEmpty(t, l)
	})
}
