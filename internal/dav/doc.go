// Package dav parses and writes what WebDAV locking (RFC 4918) puts on the
// wire: the If, Timeout, Depth and Lock-Token headers, the LOCK request
// body, the XML of lock responses and precondition errors, and the
// lock properties added to a backend's PROPFIND answer. It knows nothing
// of HTTP handling or of where locks are kept; the handler at the root of
// the module does both.
package dav
