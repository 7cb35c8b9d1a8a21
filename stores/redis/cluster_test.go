package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-lock/caddy-lock/internal/testsupport"
	"github.com/caddy-lock/caddy-lock/lockstore"
	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// startRedisCluster starts a Redis Cluster of two primaries, each serving
// half of the slots, and returns their addresses.
func startRedisCluster(t *testing.T) []string {
	t.Helper()
	ctx := context.Background()
	var nodes []*testRedis
	var clients []*redis.Client
	for range 2 {
		n := startRedis(t, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000")
		c := redis.NewClient(&redis.Options{Addr: n.Addr})
		t.Cleanup(func() { c.Close() })
		nodes, clients = append(nodes, n), append(clients, c)
	}
	for i, r := range [][2]int{{0, 8191}, {8192, 16383}} {
		if err := clients[i].Do(ctx, "CLUSTER", "ADDSLOTSRANGE", r[0], r[1]).Err(); err != nil {
			t.Fatalf("assigning slots: %v", err)
		}
	}
	if err := clients[0].Do(ctx, "CLUSTER", "MEET", "127.0.0.1", nodes[1].Port()).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the cluster to form", func() bool {
		for _, c := range clients {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok\r\n") || !strings.Contains(info, "cluster_known_nodes:2\r\n") {
				return false
			}
		}
		return true
	})
	return []string{nodes[0].Addr, nodes[1].Addr}
}

// The lock table and the explicit lock store on a Redis Cluster (several
// addresses make a cluster client): a zone's keys share one hash tag, so
// its scripts run on the node that owns the slot, for zones on either node.
func TestRedisClusterMode(t *testing.T) {
	addrs := startRedisCluster(t)
	cfg := Config{Addresses: addrs, Lease: caddy.Duration(2 * time.Second), Timeout: caddy.Duration(500 * time.Millisecond)}
	newClient := func() redis.UniversalClient {
		c, err := NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, ok := c.(*redis.ClusterClient); !ok {
			t.Fatalf("%d addresses gave a %T", len(addrs), c)
		}
		return c
	}
	c1, c2 := newClient(), newClient()

	// One zone whose slot is on each node.
	ctx := context.Background()
	var zoneOn [2]string
	for i := 0; zoneOn[0] == "" || zoneOn[1] == ""; i++ {
		z := fmt.Sprintf("z%d", i)
		slot, err := c1.ClusterKeySlot(ctx, "{"+DefaultKeyPrefix+":"+z+"}").Result()
		if err != nil {
			t.Fatal(err)
		}
		if node := slot / 8192; zoneOn[node] == "" {
			zoneOn[node] = z
		}
	}
	for node, zone := range zoneOn {
		t.Run(fmt.Sprintf("node%d", node), func(t *testing.T) {
			l1, err := NewLocker(c1, zone, cfg, true, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer l1.Close()
			l2, err := NewLocker(c2, zone, cfg, true, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer l2.Close()
			held := redisAcquire(t, l1, "/a", lockstore.Exclusive)
			testsupport.Conflict(t, l2, "/a/b", lockstore.Shared)
			// A waiter on the other client is woken by the release.
			got := make(chan error, 1)
			go func() {
				ls, err := l2.Acquire(ctx, lockstore.Request{Key: "/a/b", Kind: lockstore.Exclusive, Wait: 5 * time.Second})
				if err == nil {
					ls.Release()
				}
				got <- err
			}()
			waitFor(t, 3*time.Second, "the waiter to queue", func() bool { return redisStats(t, l1).Waiting == 1 })
			held.Release()
			if err := <-got; err != nil {
				t.Fatalf("waiter: %v", err)
			}

			s1, err := NewLockStore(c1, zone, cfg)
			if err != nil {
				t.Fatal(err)
			}
			s2, err := NewLockStore(c2, zone, cfg)
			if err != nil {
				t.Fatal(err)
			}
			l := testsupport.MustCreate(t, s1, testsupport.XLock("/docs", lockstore.Exclusive, lockstore.DepthInfinity))
			if _, err := s2.Create(ctx, testsupport.XLock("/docs/x", lockstore.Shared, lockstore.DepthZero)); !errors.As(err, new(*lockstore.LockConflictError)) {
				t.Fatalf("explicit lock through the other client: %v", err)
			}
			if all, err := s2.List(ctx); err != nil || len(all) != 1 || all[0].Token != l.Token {
				t.Fatalf("list: %v %v", testsupport.Roots(all), err)
			}
			if n, err := s2.RemoveUnder(ctx, "/docs"); err != nil || n != 1 {
				t.Fatalf("remove under: %d %v", n, err)
			}
		})
	}
}
