// Package glob matches repository names against globs: path.Match syntax
// per "/"-separated segment, plus "**" for any number of segments.
package glob

import (
	"path"
	"strings"
)

// Match reports whether name matches pattern. A malformed pattern matches
// nothing (configuration validation rejects it beforehand).
func Match(pattern, name string) bool {
	return match(strings.Split(pattern, "/"), strings.Split(name, "/"))
}

func match(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			rest := pat[1:]
			for i := 0; i <= len(name); i++ {
				if match(rest, name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, err := path.Match(pat[0], name[0]); err != nil || !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}
