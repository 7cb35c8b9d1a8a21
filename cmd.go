package caddylock

// The `caddy lock` command: the admin API (admin.go) from the command
// line, so an operator can list, take and remove locks without writing
// curl calls and JSON by hand. It finds the admin endpoint as `caddy
// reload` does and talks to it with Caddy's own request helper.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "lock",
		Usage: "list|maintenance|unlock [--address <interface>] [--config <path> [--adapter <name>]]",
		Short: "Lists, takes and removes caddy-lock's locks through the admin API",
		Long: `
Talks to the admin API of caddy-lock (/lock/ on Caddy's admin endpoint) of a
running Caddy:

  caddy lock list [--zone <zone>] [--json]
  caddy lock maintenance <zone> <path> --timeout 10m [--depth infinity] [--drain 30s]
  caddy lock unlock <zone> <token-or-prefix>

As for 'caddy reload', the admin endpoint is taken from --address if given,
otherwise from the config file (--config, --adapter, or a Caddyfile in the
current directory), otherwise the default (localhost:2019).
`,
		CobraFunc: setupLockCommand,
	})
}

// setupLockCommand adds the subcommands and their flags to cmd; the tests
// run it on a command of their own.
func setupLockCommand(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringP("config", "c", "", "Configuration file to read the admin address from")
	pf.StringP("adapter", "a", "", "Name of config adapter to apply")
	pf.String("address", "", "Address of the administration listener, if different from config")

	list := &cobra.Command{
		Use:   "list [--zone <zone>] [--json]",
		Short: "Lists every lock: explicit ones and those held by requests in flight",
		Args:  cobra.NoArgs,
		RunE:  runLock(lockList),
	}
	list.Flags().String("zone", "", "Only the locks of this zone")
	list.Flags().Bool("json", false, "Print the admin API's JSON instead of a table")

	maint := &cobra.Command{
		Use:   "maintenance <zone> <path> --timeout <duration> [--depth infinity|0] [--drain <duration>]",
		Short: "Takes a maintenance lock: every write under <path> gets 423 until it ends",
		Long: `Takes an explicit lock on <path> in <zone> for --timeout. New writes under
it are refused at once; the command returns when the writes already in flight
under it are done, or after --drain (default 30s). Remove it earlier with
'caddy lock unlock <zone> <token-prefix>'.`,
		Args: cobra.ExactArgs(2),
		RunE: runLock(lockMaintenance),
	}
	mf := maint.Flags()
	mf.String("timeout", "", "How long the lock lasts, such as 10m (required)")
	mf.String("depth", "infinity", `"infinity" (the path and everything below it) or "0"`)
	mf.String("drain", "", "How long to wait, at most, for writes in flight under the lock (default 30s; 0: no wait)")
	mf.String("owner", "", "Who takes the lock, shown in listings and WebDAV lock discovery")
	mf.String("scope", "exclusive", `"exclusive" or "shared"`)
	mf.Bool("json", false, "Print the admin API's JSON answer")
	_ = maint.MarkFlagRequired("timeout")

	unlock := &cobra.Command{
		Use:   "unlock <zone> <token-or-prefix>",
		Short: "Removes an explicit lock, by its token or the token prefix that list shows",
		Args:  cobra.ExactArgs(2),
		RunE:  runLock(lockUnlock),
	}

	cmd.AddCommand(list, maint, unlock)
}

// runLock resolves the admin address and runs f. Usage is printed for
// mistakes in the arguments only, not for errors of the admin API.
func runLock(f func(c *cobra.Command, admin string, args []string) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		c.SilenceUsage = true
		admin, err := lockAdminAddress(c)
		if err != nil {
			return err
		}
		return f(c, admin, args)
	}
}

// lockAdminAddress finds the admin endpoint as `caddy reload` does, and
// says so when the config turns the endpoint off, rather than trying the
// default address.
func lockAdminAddress(c *cobra.Command) (string, error) {
	address, _ := c.Flags().GetString("address")
	if address != "" {
		return address, nil
	}
	configFlag, _ := c.Flags().GetString("config")
	adapter, _ := c.Flags().GetString("adapter")
	config, configFile, _, err := caddycmd.LoadConfig(configFlag, adapter)
	if err != nil {
		return "", fmt.Errorf("reading the config for the admin address: %w", err)
	}
	if len(config) > 0 {
		var cfg struct {
			Admin *caddy.AdminConfig `json:"admin"`
		}
		if err := json.Unmarshal(config, &cfg); err == nil && cfg.Admin != nil && cfg.Admin.Disabled {
			return "", fmt.Errorf("the admin API is off in %s (admin off): caddy lock needs it; turn it on, or give --address", configFile)
		}
	}
	addr, err := caddycmd.DetermineAdminAPIAddress("", config, configFile, adapter)
	if err != nil {
		return "", fmt.Errorf("finding the admin API address: %w", err)
	}
	return addr, nil
}

// lockAPIError is an error answer of the admin API.
type lockAPIError struct {
	Status  int
	Message string
}

func (e *lockAPIError) Error() string {
	return fmt.Sprintf("the admin API answered %d: %s", e.Status, e.Message)
}

// lockAdminRequest sends one request to the admin API and returns the
// answer's body. Caddy's helper flattens its errors to text, so an
// answer of the API (an error status) is told from a failure to reach it
// by the helper's wording.
func lockAdminRequest(admin, method, uri string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encoding the request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	resp, err := caddycmd.AdminAPIRequest(admin, method, uri, nil, rd)
	if err != nil {
		if rest, ok := strings.CutPrefix(err.Error(), "caddy responded with error: HTTP "); ok {
			code, msg, _ := strings.Cut(rest, ": ")
			status, _ := strconv.Atoi(code)
			var e struct {
				Error string `json:"error"`
			}
			if json.Unmarshal([]byte(msg), &e) == nil && e.Error != "" {
				msg = e.Error
			}
			return nil, &lockAPIError{Status: status, Message: strings.TrimSpace(msg)}
		}
		return nil, fmt.Errorf("cannot reach Caddy's admin API at %s: %v (is Caddy running, with the admin endpoint on?)", admin, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the answer of %s %s: %w", method, uri, err)
	}
	return data, nil
}

// notLockModule adds a hint to a 404 of GET /lock/, which Caddy answers
// when caddy-lock is not in the running binary.
func notLockModule(err error, admin string) error {
	var ae *lockAPIError
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		return fmt.Errorf("%w (does the Caddy at %s include caddy-lock?)", err, admin)
	}
	return err
}

func lockList(c *cobra.Command, admin string, _ []string) error {
	zone, _ := c.Flags().GetString("zone")
	asJSON, _ := c.Flags().GetBool("json")
	data, err := lockAdminRequest(admin, http.MethodGet, "/lock/", nil)
	if err != nil {
		return fmt.Errorf("listing the locks: %w", notLockModule(err, admin))
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("decoding the list of locks: %w", err)
	}
	var locks []adminLock
	// Raw entries are kept as they came, so --json shows every field.
	var keep []json.RawMessage
	for _, r := range raw {
		var l adminLock
		if err := json.Unmarshal(r, &l); err != nil {
			return fmt.Errorf("decoding the list of locks: %w", err)
		}
		if zone == "" || l.Zone == zone {
			locks = append(locks, l)
			keep = append(keep, r)
		}
	}
	out := c.OutOrStdout()
	if asJSON {
		if keep == nil {
			keep = []json.RawMessage{}
		}
		b, err := json.MarshalIndent(keep, "", "  ")
		if err != nil {
			return fmt.Errorf("encoding the list of locks: %w", err)
		}
		_, err = fmt.Fprintf(out, "%s\n", b)
		return err
	}
	if len(locks) == 0 {
		if zone != "" {
			_, err = fmt.Fprintf(out, "no locks in zone %s\n", zone)
		} else {
			_, err = fmt.Fprintln(out, "no locks")
		}
		return err
	}
	return writeLockTable(out, locks, time.Now())
}

// writeLockTable prints locks as a table, one lock a line.
func writeLockTable(w io.Writer, locks []adminLock, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ZONE\tROOT\tKIND\tSCOPE\tDEPTH\tHELD/EXPIRES\tTOKEN\tOWNER")
	for _, l := range locks {
		kind, when, owner := "webdav", "", l.Owner
		switch {
		case l.InFlight:
			kind = "in-flight"
			when = "held " + roundDur(now.Sub(l.Created))
			if l.Waiting > 0 {
				when += fmt.Sprintf(", %d waiting", l.Waiting)
			}
			if l.Holders > 1 {
				owner = fmt.Sprintf("%d requests", l.Holders)
			} else {
				owner = "1 request"
			}
		case l.Creator == "admin":
			kind = "maintenance"
		}
		if !l.InFlight && l.Expires != nil {
			when = "expires in " + roundDur(l.Expires.Sub(now))
		}
		token := l.TokenPrefix
		if token == "" {
			token = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Zone, l.Root, kind, l.Scope, l.Depth, when, token, cell(owner))
	}
	return tw.Flush()
}

// cell makes a value fit one table cell: a WebDAV owner is XML that may
// span lines.
func cell(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "-"
	}
	if r := []rune(s); len(r) > 48 {
		return string(r[:47]) + "…"
	}
	return s
}

func roundDur(d time.Duration) string {
	if d < time.Second {
		return "0s"
	}
	return d.Round(time.Second).String()
}

func lockMaintenance(c *cobra.Command, admin string, args []string) error {
	zone, path := args[0], args[1]
	f := c.Flags()
	req := adminLockRequest{Path: path}
	req.Timeout, _ = f.GetString("timeout")
	req.Depth, _ = f.GetString("depth")
	req.Owner, _ = f.GetString("owner")
	req.Scope, _ = f.GetString("scope")
	if f.Changed("drain") {
		req.Drain, _ = f.GetString("drain")
	}
	asJSON, _ := f.GetBool("json")
	data, err := lockAdminRequest(admin, http.MethodPost, "/lock/"+url.PathEscape(zone), req)
	if err != nil {
		return fmt.Errorf("taking a maintenance lock on %s in zone %s: %w", path, zone, err)
	}
	out := c.OutOrStdout()
	if asJSON {
		_, err = fmt.Fprintf(out, "%s\n", bytes.TrimSpace(data))
		return err
	}
	var created struct {
		Token string `json:"token"`
		adminLock
		Running int `json:"writes_in_flight"`
	}
	if err := json.Unmarshal(data, &created); err != nil {
		return fmt.Errorf("decoding the answer: %w", err)
	}
	until := ""
	if created.Expires != nil {
		until = " until " + created.Expires.Local().Format(time.RFC3339)
	}
	fmt.Fprintf(out, "locked %s (depth %s, %s) in zone %s%s\n", created.Root, created.Depth, created.Scope, created.Zone, until)
	fmt.Fprintf(out, "token %s\n", created.Token)
	switch {
	case created.Running > 0:
		fmt.Fprintf(out, "warning: %d write(s) under the lock were still running when the drain ended\n", created.Running)
	case created.Running < 0:
		fmt.Fprintln(out, "warning: the writes in flight under the lock could not be listed")
	}
	_, err = fmt.Fprintf(out, "unlock with: caddy lock unlock %s %s\n", created.Zone, created.TokenPrefix)
	return err
}

func lockUnlock(c *cobra.Command, admin string, args []string) error {
	zone, token := args[0], args[1]
	data, err := lockAdminRequest(admin, http.MethodDelete, "/lock/"+url.PathEscape(zone)+"/"+url.PathEscape(token), nil)
	if err != nil {
		return fmt.Errorf("removing the lock %s of zone %s: %w", shownToken(token), zone, err)
	}
	var l adminLock
	if err := json.Unmarshal(data, &l); err != nil {
		return fmt.Errorf("decoding the answer: %w", err)
	}
	_, err = fmt.Fprintf(c.OutOrStdout(), "unlocked %s in zone %s (token %s)\n", l.Root, l.Zone, l.TokenPrefix)
	return err
}

// shownToken keeps a whole token out of messages (they end up in logs and
// terminals' scrollback), as the admin API's listing does.
func shownToken(t string) string {
	if len(t) > minTokenPrefix {
		return t[:minTokenPrefix] + "…"
	}
	return t
}
