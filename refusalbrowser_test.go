package caddylock

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// findChromium returns a headless Chromium from PATH, or skips the test
// (fails it when CI is set: .ci/run installs chromium-headless-shell).
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "chrome-headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	// Debian's chromium-headless-shell lives outside PATH on some releases.
	for _, p := range []string{"/usr/lib/chromium/chrome-headless-shell", "/usr/lib/chromium/headless_shell"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	msg := "no headless Chromium in PATH (install Debian's chromium-headless-shell or chromium to run the browser test)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// postFormInBrowser opens the form at formURL in a headless Chromium
// that lives until the test ends, clicks its #save button, and returns
// the browser's context and the answer to the form's submission.
func postFormInBrowser(t *testing.T, bin, formURL string) (context.Context, formAnswer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.Flag("disable-dev-shm-usage", true))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)
	if err := chromedp.Do(bctx, chromedp.Navigate(formURL), chromedp.WaitVisible("#save")); err != nil {
		t.Fatalf("browser, opening the form: %v", err)
	}
	resp, err := chromedp.RunResponse(bctx, chromedp.Click("#save"))
	if err != nil {
		t.Fatalf("browser, posting the form: %v", err)
	}
	return bctx, formAnswer{Status: resp.Status, MimeType: resp.MimeType, Headers: resp.Headers}
}

// formAnswer is what the browser got for a form's submission.
type formAnswer struct {
	Status   int64
	MimeType string
	Headers  map[string]any
}

// TestRefusalPageInBrowser posts a form, in a real headless Chromium,
// to a path whose write is held: the browser shows the refusal page
// with that path and the configured seconds, and its button goes back
// to the form through the history rather than loading it anew.
func TestRefusalPageInBrowser(t *testing.T) {
	bin := findChromium(t)
	b := newBackend(t)
	const form = `<!DOCTYPE html><html lang="en"><head><title>Edit report</title></head><body>` +
		`<form method="post" action="/docs/q3 <report>.txt"><input name="text" value="new"><button id="save" type="submit">Save</button></form></body></html>`
	url := startCaddy(t, "@form path /form\nhandle @form {\n header Content-Type \"text/html; charset=utf-8\"\n respond `"+form+"` 200\n}\n"+
		"handle {\n lock {\n  zone browser\n  retry_after 9s\n }\n reverse_proxy {backend}\n}", b)

	before := time.Now()
	done := holdWrite(t, b, http.MethodPut, url+"/docs/q3%20%3Creport%3E.txt", "w")
	defer func() {
		b.open("w")
		<-done
	}()

	bctx, resp := postFormInBrowser(t, bin, url+"/form")
	if resp.Status != http.StatusLocked || resp.Headers["Retry-After"] != "9" || !strings.HasPrefix(resp.MimeType, "text/html") {
		t.Fatalf("the browser got %d, Retry-After %v, %s; want 423, 9 and the page", resp.Status, resp.Headers["Retry-After"], resp.MimeType)
	}
	run := func(a chromedp.Action[string]) string {
		t.Helper()
		v, err := chromedp.Run(bctx, a)
		if err != nil {
			t.Fatalf("browser: %v", err)
		}
		return v
	}
	title := run(chromedp.Title())
	text := run(chromedp.Evaluate[string](`document.body.innerText`))
	key := run(chromedp.Text("#key"))
	retry := run(chromedp.Text("#retry-seconds"))
	held := run(chromedp.Text("#held"))
	histBefore, err := chromedp.Run(bctx, chromedp.Evaluate[int](`history.length`))
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	shown := time.Since(before)
	t.Logf("the browser shows:\n%s", text)
	if title != "423 Resource is locked" {
		t.Errorf("title %q, want 423 Resource is locked", title)
	}
	if !strings.Contains(text, "Resource is locked") || !strings.Contains(text, "Try again") {
		t.Errorf("page text lacks its heading or when to try again:\n%s", text)
	}
	if key != "/docs/q3 <report>.txt" {
		t.Errorf("locked key shown as %q, want /docs/q3 <report>.txt", key)
	}
	if !strings.Contains(text, "/docs/q3 <report>.txt (exclusive lock)") {
		t.Errorf("page text does not name the locked path:\n%s", text)
	}
	if retry != "9" || !regexp.MustCompile(`in 9 seconds`).MatchString(text) {
		t.Errorf("try again in %q seconds, want 9 (retry_after):\n%s", retry, text)
	}
	if h, err := strconv.ParseFloat(held, 64); err != nil || h < 0 || h > shown.Seconds()+0.05 {
		t.Errorf("held for %q seconds, want between 0 and %.1f (the hold began at most that long ago)", held, shown.Seconds())
	}
	if writes, _, _ := b.counts(); writes != 1 {
		t.Errorf("%d writes reached the backend, want only the held one: the form's POST went through", writes)
	}

	if err := chromedp.Do(bctx, chromedp.Click("#back"), chromedp.WaitVisible("#save")); err != nil {
		t.Fatalf("browser, going back: %v", err)
	}
	loc := run(chromedp.Location())
	histAfter, err := chromedp.Run(bctx, chromedp.Evaluate[int](`history.length`))
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	if !strings.HasSuffix(loc, "/form") {
		t.Errorf("the button went to %s, want the form", loc)
	}
	if histAfter != histBefore {
		t.Errorf("history grew from %d to %d entries: the button loaded the form anew instead of going back (script blocked?)", histBefore, histAfter)
	}
	if writes, _, _ := b.counts(); writes != 1 {
		t.Errorf("%d writes reached the backend after going back, want 1: the form was resubmitted", writes)
	}
}

// TestRefusalPagePreconditionInBrowser posts a form, which cannot say
// which version it edits, in a real headless Chromium to a zone with
// require_if_match: the browser shows the 428 page, which says to reload
// before saving (not to submit the same form again), and nothing reaches
// the backend.
func TestRefusalPagePreconditionInBrowser(t *testing.T) {
	bin := findChromium(t)
	b := newBackend(t)
	const form = `<!DOCTYPE html><html lang="en"><head><title>Edit note</title></head><body>` +
		`<form method="post" action="/notes/7"><input name="text" value="new"><button id="save" type="submit">Save</button></form></body></html>`
	url := startCaddy(t, "@form path /form\nhandle @form {\n header Content-Type \"text/html; charset=utf-8\"\n respond `"+form+"` 200\n}\n"+
		"handle {\n lock {\n  zone browser428\n  require_if_match\n }\n reverse_proxy {backend}\n}", b)

	bctx, resp := postFormInBrowser(t, bin, url+"/form")
	if resp.Status != http.StatusPreconditionRequired || !strings.HasPrefix(resp.MimeType, "text/html") {
		t.Fatalf("the browser got %d, %s; want 428 and the page", resp.Status, resp.MimeType)
	}
	title, err := chromedp.Run(bctx, chromedp.Title())
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	text, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	t.Logf("the browser shows:\n%s", text)
	if title != "428 Precondition required" {
		t.Errorf("title %q, want 428 Precondition required", title)
	}
	if !strings.Contains(text, "This page must be reloaded before saving") || !strings.Contains(text, "reload the page to get the current version") {
		t.Errorf("page does not say to reload before saving:\n%s", text)
	}
	if strings.Contains(text, "submit again") || strings.Contains(text, "Try again") {
		t.Errorf("page tells to submit the same form again:\n%s", text)
	}
	if err := chromedp.Do(bctx, chromedp.Click("#back"), chromedp.WaitVisible("#save")); err != nil {
		t.Fatalf("browser, going back: %v", err)
	}
	if writes, _, _ := b.counts(); writes != 0 {
		t.Errorf("%d writes reached the backend, want none", writes)
	}
}
