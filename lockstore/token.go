package lockstore

import "crypto/subtle"

// SameToken compares a submitted lock token with a stored one in time
// that depends only on their lengths, so that timing does not tell how
// much of a guess was right. Every comparison of a lock token, in a store
// or in the handler, goes through it or TokenIn.
func SameToken(submitted, stored string) bool {
	return subtle.ConstantTimeCompare([]byte(submitted), []byte(stored)) == 1
}

// TokenIn reports whether stored is among the submitted tokens, each
// compared in constant time (and all of them compared, so that the time
// does not tell which one matched).
func TokenIn(submitted []string, stored string) bool {
	found := false
	for _, t := range submitted {
		if SameToken(t, stored) {
			found = true
		}
	}
	return found
}
