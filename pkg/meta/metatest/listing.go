package metatest

import (
	"fmt"
	"testing"

	"github.com/berthreg/berth/pkg/meta"
)

// pageCase is one Tags/Repos call and its expected result.
type pageCase struct {
	last string
	n    int
	want []string
}

// pageCases returns the pagination table for the sorted list all (at
// least four entries).
func pageCases(all []string) []pageCase {
	return []pageCase{
		{"", -1, all},
		{"", -7, all},
		{"", 0, nil},
		{all[0], 0, nil},
		{"", 2, all[:2]},
		{"", len(all), all},
		{"", len(all) + 100, all},
		{all[0], 2, all[1:3]},
		{all[1], -1, all[2:]},
		{all[len(all)-2], 5, all[len(all)-1:]},
		{all[len(all)-1], -1, nil},      // last is the final entry
		{all[len(all)-1] + "~", 3, nil}, // last past the end
		{"\x7f", -1, nil},               // after everything printable
		{all[0] + "\x00", -1, all[1:]},  // between entries
		{" ", 2, all[:2]},               // before everything
	}
}

// testTagsPagination pages through tags with every last/n combination.
func testTagsPagination(t *testing.T, s meta.Store) {
	ctx := t.Context()
	all := []string{"1.0", "1.1", "1.10", "2.0", "latest", "v1", "v2"}
	a, b := image("a"), image("b")
	put(t, s, "r", a, "1", "1.10", "v2", "1.0", "latest")
	put(t, s, "r", b, "2", "v1", "2.0", "1.1")
	put(t, s, "empty", image("c"), "1") // repository without tags

	for _, pc := range pageCases(all) {
		got, err := s.Tags(ctx, "r", pc.last, pc.n)
		if err != nil {
			t.Fatalf("Tags(r, %q, %d): %v", pc.last, pc.n, err)
		}
		wantList(t, fmt.Sprintf("Tags(r, %q, %d)", pc.last, pc.n), got, pc.want)
	}
	for _, n := range []int{-1, 0, 3} {
		got, err := s.Tags(ctx, "empty", "", n)
		if err != nil {
			t.Fatalf("Tags(empty, %d): %v", n, err)
		}
		wantList(t, fmt.Sprintf("Tags(empty, %d)", n), got, nil)
	}
}

// testReposPagination pages through repository names.
func testReposPagination(t *testing.T, s meta.Store) {
	ctx := t.Context()
	got, err := s.Repos(ctx, "", -1)
	if err != nil {
		t.Fatalf("Repos on empty store: %v", err)
	}
	wantList(t, "Repos on empty store", got, nil)

	all := []string{"alpine", "busybox", "library/alpine", "library/ubuntu", "z/y/x"}
	for i, name := range []string{"z/y/x", "library/ubuntu", "alpine", "library/alpine", "busybox"} {
		put(t, s, name, image(name), fmt.Sprint(i))
	}
	for _, pc := range pageCases(all) {
		got, err := s.Repos(ctx, pc.last, pc.n)
		if err != nil {
			t.Fatalf("Repos(%q, %d): %v", pc.last, pc.n, err)
		}
		wantList(t, fmt.Sprintf("Repos(%q, %d)", pc.last, pc.n), got, pc.want)
	}
}

// testLexicalOrder checks byte-wise order where separators interleave:
// '-' (0x2d) < '.' (0x2e) < '/' (0x2f) < '_' (0x5f) < letters.
func testLexicalOrder(t *testing.T, s meta.Store) {
	ctx := t.Context()
	repos := []string{"a", "a-b", "a.b", "a/b", "a/b/c", "a_b", "ab", "b"}
	for i, name := range []string{"b", "a/b/c", "a_b", "a", "ab", "a/b", "a.b", "a-b"} {
		put(t, s, name, image(name), fmt.Sprint(i))
	}
	got, err := s.Repos(ctx, "", -1)
	if err != nil {
		t.Fatalf("Repos: %v", err)
	}
	wantList(t, "Repos", got, repos)
	got, err = s.Repos(ctx, "a", 3)
	if err != nil {
		t.Fatalf("Repos(a, 3): %v", err)
	}
	wantList(t, "Repos(a, 3)", got, []string{"a-b", "a.b", "a/b"})

	tags := []string{"0", "A", "Z", "_x", "a", "a-b", "a.b", "a_b", "b"}
	put(t, s, "a", image("a"), "9", "b", "a_b", "Z", "a.b", "0", "_x", "a", "A", "a-b")
	wantTags(t, s, "a", tags...)
}
