package redisstore

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/redis/go-redis/v9"
)

// releaseScript deletes a holder if the token still matches, updates the
// average hold time and notifies waiters. Running it twice is a no-op the
// second time.
//
// KEYS: exp held info meta wexp; ARGV: member, key, channel, how long it
// was held in µs ("" when unknown). Returns 1 if the holder was removed,
// else 0. The script's file holds holdWindowMark where
// lockstore.HoldWindow goes, substituted once here. It reads the server
// clock only when the hold is unknown: a lease measures its own (one
// round trip longer than Redis would, which the average in ms hardly
// sees), and that spares the grant time's read and the clock's.
var releaseScript = redis.NewScript(strings.Replace(lua("release"), holdWindowMark, strconv.Itoa(lockstore.HoldWindow), 1))

// release deletes a holder from Redis if it is still there, waiting at
// most the timeout. held is how long it was held, negative when unknown.
func (l *Locker) release(member, key string, held time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	var us any = ""
	if held >= 0 {
		us = held.Microseconds()
	}
	_ = l.batch.run(ctx, releaseScript, l.holderKeys(), member, key, l.channel, us).Err()
}

// renewScript extends the leases that are still live and returns the
// 1-based positions of those that are not (expired or gone).
//
// KEYS: exp; ARGV: lease ms, members...
var renewScript = redis.NewScript(scriptTime + lua("renew"))

func (l *Locker) renewLoop() {
	defer l.wg.Done()
	t := time.NewTicker(l.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
			l.renew()
			l.renewSettings()
		}
	}
}

// renew extends all live leases of this locker, one script call per batch.
func (l *Locker) renew() {
	l.mu.Lock()
	all := make([]*Lease, 0, len(l.leases))
	for _, ls := range l.leases {
		all = append(all, ls)
	}
	l.mu.Unlock()
	for len(all) > 0 {
		n := min(len(all), renewBatchSize)
		l.renewBatch(all[:n])
		all = all[n:]
	}
}

func (l *Locker) renewBatch(batch []*Lease) {
	args := make([]any, 0, len(batch)+1)
	args = append(args, l.lease.Milliseconds())
	for _, ls := range batch {
		args = append(args, ls.member)
	}
	sent := l.now()
	ctx, cancel := context.WithTimeout(l.ctx, l.timeout)
	lost, err := renewScript.Run(ctx, l.client, []string{l.kExp}, args...).Int64Slice()
	cancel()
	if err != nil {
		// Redis did not answer. It lets a lease go no earlier than a
		// full lease after its last confirmed renewal was sent; the next
		// try comes a tick from now and may take the whole timeout. A
		// lease that try could not save is given up now, before Redis
		// can grant it to anybody else, while a request not yet sent
		// upstream can still be stopped.
		late := l.now() + int64(l.lease/3+l.timeout)
		for _, ls := range batch {
			if late-ls.confirmed.Load() >= int64(l.lease) {
				l.lose(ls)
			}
		}
		return
	}
	gone := make(map[int]bool, len(lost))
	for _, i := range lost {
		gone[int(i)-1] = true
	}
	for i, ls := range batch {
		if gone[i] {
			l.lose(ls)
		} else {
			ls.confirmed.Store(sent)
		}
	}
}

func (l *Locker) lose(ls *Lease) {
	if ls.released.Load() {
		return
	}
	l.untrack(ls)
	ls.markLost()
}
