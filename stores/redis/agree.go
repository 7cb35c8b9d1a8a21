package redisstore

// Zone agreement across Caddy instances: every instance that shares a
// zone's tables in Redis must read keys the same way. One with hierarchy
// and one without, or one folding case and one not, would not see each
// other's locks (PUT /a passes while /a/b is being written), and nothing
// else would say so. Within one config checkZoneTable refuses such a mix;
// across instances, each records its settings in Redis and refuses to
// load when a live instance has recorded others.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// thisInstance names this process among the instances of a zone: a
// reload, which runs the old config and the new one side by side in one
// process, may change a setting; another process may not.
var thisInstance = func() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

// minAgreeTTL is the least time an instance's record of its settings
// outlives the instance (or its last contact with Redis).
const minAgreeTTL = 30 * time.Second

// ZoneSettingsError means another live instance shares the zone's tables
// with a setting that differs from this one's.
type ZoneSettingsError struct {
	Zone, Table     string
	Setting         string // the first setting that differs
	Theirs, Ours    string // its values
	OtherInstance   string
	RecordExpiresIn time.Duration // unless the other instance renews it
	SettingsKey     string        // the Redis key of the records
}

func (e *ZoneSettingsError) Error() string {
	return fmt.Sprintf("lock zone %q: another Caddy instance (%s) shares its lock table %s in Redis with %s=%s, "+
		"this one has %s=%s: they would not see each other's locks (hierarchy is on with webdav). Give every instance "+
		"the same settings; to change one, stop or reload every instance sharing the zone, or delete the Redis key %s "+
		"(the other instance's record expires in %s unless it renews it, every lease/3 while it runs)",
		e.Zone, e.OtherInstance, e.Table, e.Setting, e.Theirs, e.Setting, e.Ours, e.SettingsKey, e.RecordExpiresIn.Round(time.Second))
}

// agreeScript records an instance's settings for a zone unless another
// live instance recorded different ones.
//
// KEYS: settings hash (instance → settings), expiry sorted set (instance →
// ms); ARGV: instance, settings, ttl ms. Returns {1} when recorded, or
// {0, other instance, its settings, ms left of its record}.
var agreeScript = redis.NewScript(scriptTime + lua("agree"))

// zoneSettingsString encodes what the instances of a zone must agree on.
func zoneSettingsString(hierarchy, caseInsensitive bool) string {
	return fmt.Sprintf("hierarchy=%t case_insensitive=%t", hierarchy, caseInsensitive)
}

// agreeTTL is how long an instance's record outlives its last renewal.
func (l *Locker) agreeTTL() time.Duration { return max(3*l.lease, minAgreeTTL) }

// Agree records this instance's settings for the zone (its hierarchy, and
// caseInsensitive of its handlers) and keeps them recorded while the
// locker is open. It returns a *ZoneSettingsError when another live
// instance recorded different ones. When Redis cannot be reached it
// returns nil: the renewal records them (or logs the disagreement) once
// Redis answers.
func (l *Locker) Agree(ctx context.Context, caseInsensitive bool) error {
	settings := zoneSettingsString(l.hierarchy, caseInsensitive)
	err := l.agree(ctx, settings)
	if err != nil && !isZoneSettingsError(err) {
		caddy.Log().Named("http.handlers.lock.stores.redis").Warn("could not check the zone's settings against other instances; will retry",
			zap.String("zone", l.zone), zap.Error(err))
		err = nil
	}
	if err == nil {
		l.settings.Store(&settings)
	}
	return err
}

func isZoneSettingsError(err error) bool {
	_, ok := err.(*ZoneSettingsError)
	return ok
}

func (l *Locker) agree(ctx context.Context, settings string) error {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	v, err := agreeScript.Run(ctx, l.client, []string{l.kSettings, l.kSettingsExp},
		l.instance, settings, l.agreeTTL().Milliseconds()).Slice()
	if err != nil {
		return fmt.Errorf("redis lock zone settings: %w: %w", storeErr(err), err)
	}
	if ok, _ := v[0].(int64); ok == 1 {
		return nil
	}
	if len(v) != 4 {
		return fmt.Errorf("redis lock zone settings: %w: %w", lockstore.ErrStoreFailed, &badReplyError{v})
	}
	other, _ := v[1].(string)
	theirs, _ := v[2].(string)
	left, _ := v[3].(int64)
	e := &ZoneSettingsError{Zone: l.zone, Table: strings.TrimSuffix(l.kSettings, ":settings"), OtherInstance: other,
		RecordExpiresIn: time.Duration(left) * time.Millisecond, SettingsKey: l.kSettings}
	// Name the first setting that differs.
	ours, their := strings.Fields(settings), strings.Fields(theirs)
	e.Setting, e.Ours, e.Theirs = "settings", settings, theirs
	for _, o := range ours {
		on, ov, _ := strings.Cut(o, "=")
		tv := "(unknown)"
		for _, t := range their {
			if tn, x, _ := strings.Cut(t, "="); tn == on {
				tv = x
			}
		}
		if tv != ov {
			e.Setting, e.Ours, e.Theirs = on, ov, tv
			break
		}
	}
	return e
}

// renewSettings renews this instance's record of the zone's settings; a
// disagreement found now (the other instance's record had expired while
// this one could not reach Redis) cannot be refused any more, so it is
// logged as an error, on every renewal until it is resolved.
func (l *Locker) renewSettings() {
	s := l.settings.Load()
	if s == nil {
		return
	}
	if err := l.agree(l.ctx, *s); isZoneSettingsError(err) {
		caddy.Log().Named("http.handlers.lock.stores.redis").Error("lock zone settings differ between instances", zap.Error(err))
	}
}

// forgetScript removes an instance's record if it still holds the given
// settings (a reload that changed them has recorded new ones since).
//
// KEYS: settings hash, expiry sorted set; ARGV: instance, settings.
var forgetScript = redis.NewScript(lua("forget"))

// forgetSettings removes this locker's record of its settings, so that an
// instance restarted with other settings is not refused until the record
// expires. Best effort: an instance that dies leaves its record to expire.
func (l *Locker) forgetSettings() {
	s := l.settings.Load()
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	_ = forgetScript.Run(ctx, l.client, []string{l.kSettings, l.kSettingsExp}, l.instance, *s).Err()
}
