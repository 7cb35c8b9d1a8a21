package redisstore

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// storeErr says why a call to Redis failed: ErrStoreFailed when Redis
// answered with an error or an answer that makes no sense, else (no
// answer: refused or broken connection, timeout, closed client)
// ErrStoreUnavailable. A few errors that Redis answers are outages all
// the same, which only its operator or a failover brings about and clear
// up: loading its data set, a read-only replica, a master or cluster
// down, resharding (TRYAGAIN), too many clients.
func storeErr(err error) error {
	var reply redis.Error
	var bad *badReplyError
	switch {
	case errors.As(err, &bad):
		return lockstore.ErrStoreFailed
	case !errors.As(err, &reply):
		return lockstore.ErrStoreUnavailable
	case redis.IsLoadingError(err), redis.IsReadOnlyError(err), redis.IsMasterDownError(err),
		redis.IsClusterDownError(err), redis.IsTryAgainError(err), redis.IsMaxClientsError(err):
		return lockstore.ErrStoreUnavailable
	}
	return lockstore.ErrStoreFailed
}

// badReplyError is a script reply of an unexpected shape.
type badReplyError struct{ reply any }

func (e *badReplyError) Error() string { return fmt.Sprintf("unexpected script reply %.100v", e.reply) }

// Defaults for Config.
const (
	DefaultKeyPrefix = "caddy-lock"
	DefaultLease     = 15 * time.Second
	DefaultTimeout   = 500 * time.Millisecond
	DefaultPoolSize  = 10
)

// Config says how to reach the Redis server(s) that hold the lock
// table shared by several Caddy instances, and how long locks live there.
type Config struct {
	// Addresses are host:port pairs. One address means a single Redis
	// node; several mean a Redis Cluster, unless MasterName is set, in
	// which case they are Sentinel addresses.
	Addresses []string `json:"addresses,omitempty"`
	// MasterName is the Sentinel master name; it selects Sentinel mode.
	MasterName string `json:"master_name,omitempty"`
	// Username for Redis ACL authentication (Redis 6+); optional.
	Username string `json:"username,omitempty"`
	// Password for Redis authentication; optional.
	Password string `json:"password,omitempty"`
	// DB is the database number (single node and Sentinel only).
	DB int `json:"db,omitempty"`
	// KeyPrefix starts every Redis key and channel name the lock table
	// uses; default "caddy-lock". It must not contain '{' or '}'.
	KeyPrefix string `json:"key_prefix,omitempty"`
	// Lease is how long a lock survives in Redis without being renewed;
	// a Caddy instance that dies loses its locks after at most this long.
	// Live locks are renewed every Lease/3. Default 15s; at least twice
	// Timeout.
	Lease caddy.Duration `json:"lease,omitempty"`
	// Timeout bounds every Redis call (dial, read, write and the whole
	// call including retries); default 500ms. Past it the lock request
	// fails with ErrStoreUnavailable.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// PoolSize is the number of connections per Redis node; default 10.
	PoolSize int `json:"pool_size,omitempty"`
	// TLS enables TLS to Redis (with TLSConfig if set, else defaults).
	// In JSON and the Caddyfile, the store module's tls option sets it.
	TLS bool `json:"-"`
	// TLSConfig is the TLS client configuration used when TLS is set;
	// nil means Go's defaults. Without a ServerName, the host of the
	// first address is verified.
	TLSConfig *tls.Config `json:"-"`
}

func (c Config) withDefaults() Config {
	if c.KeyPrefix == "" {
		c.KeyPrefix = DefaultKeyPrefix
	}
	if c.Lease <= 0 {
		c.Lease = caddy.Duration(DefaultLease)
	}
	if c.Timeout <= 0 {
		c.Timeout = caddy.Duration(DefaultTimeout)
	}
	if c.PoolSize <= 0 {
		c.PoolSize = DefaultPoolSize
	}
	return c
}

// NewClient returns a go-redis client for cfg with short timeouts
// suited to lock calls: dial, read, write and pool waits are all bounded by
// cfg.Timeout, and context deadlines are honoured. The caller owns the
// client and closes it after every Locker using it is closed.
//
// With cfg.MasterName, the same timeouts and retry bound the queries to
// the Sentinels, and a failover needs nothing more: every new connection
// asks a Sentinel for the current master, so dials reach the promoted
// replica as soon as a Sentinel names it, and the Sentinel's
// +switch-master message closes pooled connections to the old master.
// After pool_size failed dials in a row, go-redis stops dialing and probes
// once a second, so locking resumes up to a second after Redis (or the new
// master) can be reached.
func NewClient(cfg Config) (redis.UniversalClient, error) {
	cfg = cfg.withDefaults()
	if len(cfg.Addresses) == 0 {
		return nil, errors.New("redis lock store: no addresses")
	}
	timeout := time.Duration(cfg.Timeout)
	opts := &redis.UniversalOptions{
		Addrs:      cfg.Addresses,
		MasterName: cfg.MasterName,
		Username:   cfg.Username,
		Password:   cfg.Password,
		DB:         cfg.DB,
		// One retry: scripts are idempotent, but more retries only
		// spend the call's time budget.
		MaxRetries:            1,
		DialTimeout:           timeout,
		DialerRetries:         1,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		ContextTimeoutEnabled: true,
		PoolSize:              cfg.PoolSize,
		PoolTimeout:           timeout,
		// Avoid handshake commands that older servers reject.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if cfg.TLS {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLSConfig != nil {
			tc = cfg.TLSConfig.Clone()
		}
		if tc.ServerName == "" && !tc.InsecureSkipVerify {
			host, _, err := net.SplitHostPort(cfg.Addresses[0])
			if err != nil {
				return nil, fmt.Errorf("redis lock store: address %q: %w", cfg.Addresses[0], err)
			}
			tc.ServerName = host
		}
		opts.TLSConfig = tc
	}
	return redis.NewUniversalClient(opts), nil
}
