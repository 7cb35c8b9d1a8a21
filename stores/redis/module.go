package redisstore

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/cfgarg"
	"github.com/caddy-lock/caddy-lock/lockstore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Store{})
}

// Values of Store.OnError.
const (
	OnErrorFailClosed = "fail_closed"
	OnErrorFailOpen   = "fail_open"
)

// Store keeps the lock tables of zones in Redis, so that every Caddy
// instance configured with the same Redis, key prefix and zone shares
// them: a write through one instance is refused by the others while it
// runs. Module ID http.handlers.lock.stores.redis.
type Store struct {
	// The connection, key prefix, lease and timeout. Addresses,
	// master_name, username, password and key_prefix may use global
	// placeholders such as {env.REDIS_PASSWORD}.
	Config

	// TLS enables TLS to Redis with these options (the same as
	// reverse_proxy's transport); an empty object means TLS with the
	// system's roots, verifying the host of the first address.
	TLS *reverseproxy.TLSConfig `json:"tls,omitempty"`

	// OnError says what happens to a request that needs a lock while
	// Redis cannot be reached within timeout: "fail_closed" (default)
	// refuses it with 503, Retry-After and a problem+json body;
	// "fail_open" lets it through without a lock. Both are counted in
	// caddy_lock_requests_total (results "unavailable" and "fail_open")
	// and logged at most every 10s.
	OnError string `json:"on_error,omitempty"`

	tableKey string
	logger   *zap.Logger
}

// idlePoll is how often a zone being closed checks whether its last
// lease was released.
const idlePoll = 100 * time.Millisecond

// CaddyModule returns the Caddy module information.
func (Store) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.lock.stores.redis",
		New: func() caddy.Module { return new(Store) },
	}
}

// Provision resolves placeholders, fixes the table key and prepares TLS.
func (s *Store) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	for i, a := range s.Addresses {
		s.Addresses[i] = repl.ReplaceKnown(a, "")
	}
	for _, f := range []*string{&s.MasterName, &s.Username, &s.Password, &s.KeyPrefix} {
		if strings.Contains(*f, "{") {
			// A placeholder that resolves to nothing is a setup
			// mistake (an unset variable), not an empty password.
			v := repl.ReplaceKnown(*f, "")
			if v == "" {
				return fmt.Errorf("redis lock store: %q resolves to an empty value", *f)
			}
			*f = v
		}
	}
	// Here, not in Validate: withDefaults takes a negative value for
	// unset, and Caddy validates after provisioning.
	if s.Lease < 0 || s.Timeout < 0 || s.PoolSize < 0 {
		return errors.New("redis lock store: lease, timeout and pool_size must not be negative")
	}
	s.Config = s.Config.withDefaults()
	// The key covers everything that decides which tables are reached
	// and how leases behave, but not on_error, which is each handler's
	// own. It is hashed so that the password appears nowhere.
	tk := struct {
		Config
		TLS *reverseproxy.TLSConfig `json:"tls,omitempty"`
	}{s.Config, s.TLS}
	b, err := json.Marshal(tk)
	if err != nil {
		return fmt.Errorf("redis lock store: encoding table key: %w", err)
	}
	sum := sha256.Sum256(b)
	s.tableKey = "redis:" + hex.EncodeToString(sum[:12])
	if s.TLS != nil {
		tc, err := s.TLS.MakeTLSClientConfig(ctx)
		if err != nil {
			return fmt.Errorf("redis lock store: tls: %w", err)
		}
		s.Config.TLS, s.Config.TLSConfig = true, tc
	}
	registerMetrics(ctx, ctx.Logger())
	ctx.Logger().Debug("lock store in redis", zap.Strings("addresses", s.Addresses),
		zap.String("key_prefix", s.KeyPrefix), zap.Duration("lease", time.Duration(s.Lease)),
		zap.Duration("timeout", time.Duration(s.Timeout)), zap.String("on_error", s.OnError))
	return nil
}

// Validate checks the configuration.
func (s *Store) Validate() error {
	if len(s.Addresses) == 0 {
		return errors.New("redis lock store: at least one address is required")
	}
	for _, a := range s.Addresses {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("redis lock store: address %q: %w", a, err)
		}
	}
	switch s.OnError {
	case "", OnErrorFailClosed, OnErrorFailOpen:
	default:
		return fmt.Errorf("redis lock store: on_error must be %s or %s, got %q", OnErrorFailClosed, OnErrorFailOpen, s.OnError)
	}
	if strings.ContainsAny(s.KeyPrefix, "{}") {
		return fmt.Errorf("redis lock store: key_prefix %q must not contain '{' or '}'", s.KeyPrefix)
	}
	if s.Lease < 2*s.Timeout {
		return fmt.Errorf("redis lock store: lease %s must be at least twice the timeout %s",
			time.Duration(s.Lease), time.Duration(s.Timeout))
	}
	if s.DB < 0 || s.PoolSize < 0 {
		return errors.New("redis lock store: db and pool_size must not be negative")
	}
	if s.DB != 0 && len(s.Addresses) > 1 && s.MasterName == "" {
		return errors.New("redis lock store: db must be 0 with several addresses (Redis Cluster has only database 0)")
	}
	return nil
}

// TableKey implements Store.
func (s *Store) TableKey() string { return s.tableKey }

// FailOpen implements Store.
func (s *Store) FailOpen() bool { return s.OnError == OnErrorFailOpen }

// OpenZone implements Store: one client per zone, whose commands are
// timed for the metrics, a Locker and a LockStore over it.
func (s *Store) OpenZone(zone string, hierarchy bool) (lockstore.ZoneTables, error) {
	client, err := NewClient(s.Config)
	if err != nil {
		return lockstore.ZoneTables{}, err
	}
	client.AddHook(metricsHook{zone: zone})
	locker, err := NewLocker(client, zone, s.Config, hierarchy, 0, 0)
	if err != nil {
		client.Close()
		return lockstore.ZoneTables{}, err
	}
	explicit, err := NewLockStore(client, zone, s.Config)
	if err != nil {
		return lockstore.ZoneTables{}, errors.Join(err, locker.Close(), client.Close())
	}
	return lockstore.ZoneTables{
		Locker:   locker,
		Explicit: explicit,
		Close: func() error {
			// Requests of the config being unloaded may still be
			// writing: their leases are renewed until they let go.
			// Each is bounded by its handler's max_hold.
			go func() {
				for !locker.Idle() {
					time.Sleep(idlePoll)
				}
				if err := errors.Join(locker.Close(), client.Close()); err != nil {
					s.logger.Warn("closing redis lock store", zap.String("zone", zone), zap.Error(err))
				}
			}()
			return nil
		},
		Drain: true,
	}, nil
}

// UnmarshalCaddyfile reads the store block. Syntax:
//
//	store redis {
//		address      <host:port...>
//		master_name  <name>
//		username     <user>
//		password     <password>
//		db           <n>
//		tls [{
//			ca                   <pem files...>
//			client_cert          <cert file> <key file>
//			server_name          <name>
//			insecure_skip_verify
//		}]
//		key_prefix   <prefix>
//		lease        <duration>
//		timeout      <duration>
//		pool_size    <n>
//		on_error     fail_closed|fail_open
//	}
func (s *Store) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store type
	if d.NextArg() {
		return d.Errf("lock: store redis: unexpected argument %q; settings go in a block", d.Val())
	}
	// Addresses add up.
	once := cfgarg.GivenOnce(d, "lock: store redis", "address", "addresses")
	for d.NextBlock(0) {
		sub := d.Val()
		if err := once(sub); err != nil {
			return err
		}
		switch sub {
		case "address", "addresses":
			addrs := d.RemainingArgs()
			if len(addrs) == 0 {
				return d.Errf("lock: store redis: %s: expected host:port (several for Redis Cluster or Sentinel)", sub)
			}
			for _, a := range addrs {
				if _, _, err := net.SplitHostPort(a); err != nil && !strings.Contains(a, "{") {
					return d.Errf("lock: store redis: %s: expected host:port, got %q", sub, a)
				}
			}
			s.Addresses = append(s.Addresses, addrs...)
		case "master_name", "username", "password", "key_prefix":
			v, err := cfgarg.One(d, "store redis: "+sub, "a value", "value (quote one with spaces)")
			if err != nil {
				return err
			}
			switch sub {
			case "master_name":
				s.MasterName = v
			case "username":
				s.Username = v
			case "password":
				s.Password = v
			default:
				if strings.ContainsAny(v, "{}") && !strings.HasPrefix(v, "{env.") {
					return d.Errf("lock: store redis: key_prefix: %q must not contain '{' or '}'", v)
				}
				s.KeyPrefix = v
			}
		case "db":
			v, err := cfgarg.One(d, "store redis: db", "a database number", "number")
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return d.Errf("lock: store redis: db: expected a database number (0 or more), got %q", v)
			}
			s.DB = n
		case "pool_size":
			n, err := cfgarg.Count(d, "store redis: pool_size")
			if err != nil {
				return err
			}
			s.PoolSize = n
		case "lease", "timeout":
			dur, err := cfgarg.PositiveDuration(d, "store redis: "+sub)
			if err != nil {
				return err
			}
			if sub == "lease" {
				s.Lease = dur
			} else {
				s.Timeout = dur
			}
		case "on_error":
			v, err := cfgarg.One(d, "store redis: on_error", OnErrorFailClosed+" or "+OnErrorFailOpen, "value")
			if err != nil {
				return err
			}
			if v != OnErrorFailClosed && v != OnErrorFailOpen {
				return d.Errf("lock: store redis: on_error: expected %s or %s, got %q", OnErrorFailClosed, OnErrorFailOpen, v)
			}
			s.OnError = v
		case "tls":
			if err := s.unmarshalTLS(d); err != nil {
				return err
			}
		default:
			return d.Errf("lock: store redis: unknown option %q; expected one of address, master_name, username, "+
				"password, db, tls, key_prefix, lease, timeout, pool_size, on_error", sub)
		}
	}
	// What Validate would refuse at load time, said with the line here.
	if len(s.Addresses) == 0 {
		return d.Errf("lock: store redis: expected at least one address (host:port) in the block")
	}
	if c := s.Config.withDefaults(); c.Lease < 2*c.Timeout {
		return d.Errf("lock: store redis: lease %s must be at least twice the timeout %s",
			time.Duration(c.Lease), time.Duration(c.Timeout))
	}
	return nil
}

// unmarshalTLS reads `tls` and its optional block.
func (s *Store) unmarshalTLS(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.Errf("lock: store redis: tls: unexpected argument %q; options go in a block", d.Val())
	}
	s.TLS = new(reverseproxy.TLSConfig)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		switch sub {
		case "ca":
			files := d.RemainingArgs()
			if len(files) == 0 {
				return d.Errf("lock: store redis: tls: ca: expected PEM files of trusted CA certificates")
			}
			raw, err := json.Marshal(map[string]any{"provider": "file", "pem_files": files})
			if err != nil {
				return d.Errf("lock: store redis: tls: ca: %v", err)
			}
			s.TLS.CARaw = raw
		case "client_cert":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("lock: store redis: tls: client_cert: expected a certificate file and a key file")
			}
			s.TLS.ClientCertificateFile, s.TLS.ClientCertificateKeyFile = args[0], args[1]
		case "server_name":
			v, err := cfgarg.One(d, "store redis: tls: server_name", "a host name", "name")
			if err != nil {
				return err
			}
			s.TLS.ServerName = v
		case "insecure_skip_verify":
			if d.NextArg() {
				return d.Errf("lock: store redis: tls: insecure_skip_verify takes no arguments")
			}
			s.TLS.InsecureSkipVerify = true
		default:
			return d.Errf("lock: store redis: tls: unknown option %q; expected ca, client_cert, server_name "+
				"or insecure_skip_verify", sub)
		}
	}
	return nil
}

// Interface guards
var (
	_ lockstore.Store       = (*Store)(nil)
	_ caddy.Provisioner     = (*Store)(nil)
	_ caddy.Validator       = (*Store)(nil)
	_ caddyfile.Unmarshaler = (*Store)(nil)
)
