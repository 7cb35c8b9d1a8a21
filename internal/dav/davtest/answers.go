// Package davtest makes the large PROPFIND answers that both the tests of
// internal/dav (the rewrite alone) and those of the handler (through
// Caddy) feed the multistatus rewrite, and measures the CPU they cost.
package davtest

import (
	"bytes"
	"fmt"
)

// DeepAnswer is a multistatus whose one response holds a dead property
// nested depth deep, every level declaring a namespace of its own.
func DeepAnswer(depth int) []byte {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/deep</D:href><D:propstat><D:prop>`)
	for i := range depth {
		fmt.Fprintf(&b, `<n%d:p xmlns:n%d="urn:%d">`, i, i, i)
	}
	for i := depth - 1; i >= 0; i-- {
		fmt.Fprintf(&b, `</n%d:p>`, i)
	}
	b.WriteString(`</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>`)
	return b.Bytes()
}

// WideAnswer is a multistatus of about size bytes: the members of
// /wide, as a file server lists them for allprop.
func WideAnswer(size int) []byte {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:">`)
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, `<D:response><D:href>/wide/f%d</D:href><D:propstat><D:prop><D:displayname>f%d</D:displayname>`+
			`<D:getcontentlength>1</D:getcontentlength><D:getlastmodified>Sat, 05 Dec 2026 01:00:00 GMT</D:getlastmodified><D:resourcetype/>`+
			`</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat><D:propstat><D:prop><D:lockdiscovery/></D:prop>`+
			`<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat></D:response>`, i, i)
	}
	b.WriteString(`</D:multistatus>`)
	return b.Bytes()
}

// DenseAnswer is a multistatus of about size bytes whose one response
// holds a dead property of many tiny elements.
func DenseAnswer(size int) []byte {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/dense</D:href><D:propstat><D:prop><x:p xmlns:x="urn:x">`)
	for b.Len() < size {
		b.WriteString(`<x:a/>`)
	}
	b.WriteString(`</x:p></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>`)
	return b.Bytes()
}
