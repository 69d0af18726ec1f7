package glob

import "testing"

func TestMatch(t *testing.T) {
	cases := []struct {
		pattern, name string
		want          bool
	}{
		{"library/*", "library/alpine", true},
		{"library/*", "library/a/b", false},
		{"library/**", "library/a/b", true},
		{"library/**", "library", true},
		{"**", "a/b/c", true},
		{"**/alpine", "x/y/alpine", true},
		{"**/alpine", "alpine", true},
		{"a/**/c", "a/b/x/c", true},
		{"a/**/c", "a/c", true},
		{"a/**/c", "a/b/d", false},
		{"infra/*", "prod/x", false},
		{"a/[", "a/[", false},
		{"exact", "exact", true},
		{"exact", "exact/more", false},
	}
	for _, c := range cases {
		if got := Match(c.pattern, c.name); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
}
