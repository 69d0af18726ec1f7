package cluster

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/dchest/siphash"
)

var (
	testKey     = []byte("loremipsumdolors") // zot's documented example key
	testMembers = []string{"10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.3:5000"}
)

func mustRing(t testing.TB, members []string, key []byte) *Ring {
	t.Helper()
	r, err := NewRing(members, key)
	if err != nil {
		t.Fatalf("NewRing(%v): %v", members, err)
	}
	return r
}

// repoNames returns n distinct, realistic repository names.
func repoNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("team-%d/app-%d", i%97, i)
	}
	return out
}

func memberNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("berth-%d.berth.svc:5000", i)
	}
	return out
}

func TestNewRingErrors(t *testing.T) {
	tests := []struct {
		name    string
		members []string
		key     []byte
		wantErr string
	}{
		{"nil key", testMembers, nil, "16 bytes"},
		{"short key", testMembers, make([]byte, 15), "16 bytes"},
		{"long key", testMembers, make([]byte, 17), "16 bytes"},
		{"hex-ish 32-byte key", testMembers, []byte("00112233445566778899aabbccddeeff"), "16 bytes"},
		{"nil members", nil, testKey, "no members"},
		{"empty members", []string{}, testKey, "no members"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRing(tc.members, tc.key)
			if err == nil {
				t.Fatalf("NewRing = %v, nil; want error containing %q", r, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestRingSingleMember(t *testing.T) {
	r := mustRing(t, []string{"only:5000"}, testKey)
	for _, repo := range []string{"", "a", "library/alpine"} {
		if got := r.Owner(repo); got != "only:5000" {
			t.Errorf("Owner(%q) = %q", repo, got)
		}
		if got := r.Rank(repo); !slices.Equal(got, []string{"only:5000"}) {
			t.Errorf("Rank(%q) = %v", repo, got)
		}
	}
}

func TestRingCopiesMembers(t *testing.T) {
	in := slices.Clone(testMembers)
	r := mustRing(t, in, testKey)
	before := r.Owner("library/alpine")
	in[0], in[1], in[2] = "x:1", "y:1", "z:1"
	if got := r.Members(); !slices.Equal(got, testMembers) {
		t.Fatalf("Members() = %v after the caller changed its slice, want %v", got, testMembers)
	}
	if got := r.Owner("library/alpine"); got != before {
		t.Fatalf("Owner changed to %q after the caller changed its slice", got)
	}
	out := r.Members()
	out[0] = "mutated"
	if got := r.Members()[0]; got != testMembers[0] {
		t.Fatalf("Members() exposes the ring's slice: %q", got)
	}
}

func TestRingDeterministic(t *testing.T) {
	repos := repoNames(500)
	a := mustRing(t, testMembers, testKey)
	b := mustRing(t, testMembers, slices.Clone(testKey))
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 5 {
		shuffled := slices.Clone(testMembers)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		c := mustRing(t, shuffled, testKey)
		for _, repo := range repos {
			want := a.Owner(repo)
			if got := a.Owner(repo); got != want {
				t.Fatalf("Owner(%q) not stable: %q then %q", repo, want, got)
			}
			if got := b.Owner(repo); got != want {
				t.Fatalf("Owner(%q) differs between two rings with equal inputs: %q vs %q", repo, want, got)
			}
			if got := c.Owner(repo); got != want {
				t.Fatalf("shuffle %d (%v): Owner(%q) = %q, want %q: member order must not matter", i, shuffled, repo, got, want)
			}
			if got, wantRank := c.Rank(repo), a.Rank(repo); !slices.Equal(got, wantRank) {
				t.Fatalf("shuffle %d: Rank(%q) = %v, want %v", i, repo, got, wantRank)
			}
		}
	}
}

// TestRingVectors pins the owners for a fixed key and member list. A change
// here remaps repositories on a running cluster during a rolling upgrade:
// it must be deliberate.
func TestRingVectors(t *testing.T) {
	r := mustRing(t, testMembers, testKey)
	vectors := []struct {
		repo string
		rank []string
	}{
		{"library/alpine", []string{"10.0.0.3:5000", "10.0.0.1:5000", "10.0.0.2:5000"}},
		{"zot-test", []string{"10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.3:5000"}},
		{"debian", []string{"10.0.0.3:5000", "10.0.0.1:5000", "10.0.0.2:5000"}},
		{"ubuntu", []string{"10.0.0.3:5000", "10.0.0.2:5000", "10.0.0.1:5000"}},
		{"busybox", []string{"10.0.0.1:5000", "10.0.0.3:5000", "10.0.0.2:5000"}},
		{"a/b/c", []string{"10.0.0.3:5000", "10.0.0.1:5000", "10.0.0.2:5000"}},
		{"", []string{"10.0.0.2:5000", "10.0.0.3:5000", "10.0.0.1:5000"}},
	}
	for _, v := range vectors {
		if got := r.Owner(v.repo); got != v.rank[0] {
			t.Errorf("Owner(%q) = %q, want %q", v.repo, got, v.rank[0])
		}
		if got := r.Rank(v.repo); !slices.Equal(got, v.rank) {
			t.Errorf("Rank(%q) = %v, want %v", v.repo, got, v.rank)
		}
	}

	// Raw scores: SipHash-2-4 keyed with the 16 raw key bytes (k0 = bytes
	// 0-7, k1 = 8-15, little endian) over member "\x00" repo.
	scores := []struct {
		member, repo string
		want         uint64
	}{
		{"10.0.0.1:5000", "library/alpine", 0xe6bd17c067e7894b},
		{"10.0.0.1:5000", "zot-test", 0xf5cbf9e34b0bc6ff},
		{"10.0.0.1:5000", "ubuntu", 0x220006f71d1c64b9},
	}
	for _, s := range scores {
		if got := r.score(s.member, s.repo); got != s.want {
			t.Errorf("score(%q, %q) = %#x, want %#x", s.member, s.repo, got, s.want)
		}
	}
}

// TestRingHashInput recomputes ownership from the documented definition,
// independently of ring.go, for many repos and a random key.
func TestRingHashInput(t *testing.T) {
	// SipHash-2-4 primitive vector (key 00..0f, empty message).
	var k [16]byte
	for i := range k {
		k[i] = byte(i)
	}
	if got := siphash.Hash(binary.LittleEndian.Uint64(k[:8]), binary.LittleEndian.Uint64(k[8:]), nil); got != 0x726fdb47dd0e0e31 {
		t.Fatalf("siphash primitive vector = %#x", got)
	}

	key := []byte("0123456789abcdef")
	members := memberNames(5)
	r := mustRing(t, members, key)
	k0, k1 := binary.LittleEndian.Uint64(key[:8]), binary.LittleEndian.Uint64(key[8:])
	for _, repo := range repoNames(300) {
		type ms struct {
			m string
			s uint64
		}
		var all []ms
		for _, m := range members {
			all = append(all, ms{m, siphash.Hash(k0, k1, []byte(m+"\x00"+repo))})
		}
		slices.SortFunc(all, func(a, b ms) int {
			if a.s != b.s {
				if a.s > b.s {
					return -1
				}
				return 1
			}
			return strings.Compare(a.m, b.m)
		})
		var want []string
		for _, x := range all {
			want = append(want, x.m)
		}
		if got := r.Rank(repo); !slices.Equal(got, want) {
			t.Fatalf("Rank(%q) = %v, want %v (SipHash(key, member\\x00repo), highest first)", repo, got, want)
		}
	}

	// The key matters.
	other := mustRing(t, members, []byte("fedcba9876543210"))
	diff := 0
	for _, repo := range repoNames(1000) {
		if r.Owner(repo) != other.Owner(repo) {
			diff++
		}
	}
	if diff < 600 { // expected 4/5 of 1000
		t.Errorf("changing the hashKey moved only %d of 1000 repos; the key does not seem to be used", diff)
	}
}

func TestRingRank(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5, 8} {
		members := memberNames(n)
		r := mustRing(t, members, testKey)
		firsts := map[string]int{}
		for _, repo := range repoNames(400) {
			rank := r.Rank(repo)
			if len(rank) != n {
				t.Fatalf("n=%d: Rank(%q) has %d elements", n, repo, len(rank))
			}
			if rank[0] != r.Owner(repo) {
				t.Fatalf("n=%d: Rank(%q)[0] = %q, Owner = %q", n, repo, rank[0], r.Owner(repo))
			}
			if got, want := slices.Sorted(slices.Values(rank)), slices.Sorted(slices.Values(members)); !slices.Equal(got, want) {
				t.Fatalf("n=%d: Rank(%q) = %v is not a permutation of %v", n, repo, rank, members)
			}
			if n > 1 {
				firsts[rank[1]]++
			}
		}
		// The second choice is spread over the others too (failover load).
		if n > 2 && len(firsts) != n {
			t.Errorf("n=%d: second choices only on %d members", n, len(firsts))
		}
	}
}

func TestRingBalance(t *testing.T) {
	const repos = 10000
	for _, n := range []int{3, 5} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			r := mustRing(t, memberNames(n), testKey)
			count := map[string]int{}
			for _, repo := range repoNames(repos) {
				count[r.Owner(repo)]++
			}
			fair := float64(repos) / float64(n)
			for _, m := range memberNames(n) {
				if c := float64(count[m]); c < 0.85*fair || c > 1.15*fair {
					t.Errorf("%s owns %d repos, fair share %.0f ±15%%: %v", m, count[m], fair, count)
				}
			}
		})
	}
}

// moved compares two rings over repos and returns the moved fraction and,
// per destination, how many moved there.
func moved(before, after *Ring, repos []string) (float64, map[string]int) {
	to := map[string]int{}
	n := 0
	for _, repo := range repos {
		if a, b := before.Owner(repo), after.Owner(repo); a != b {
			n++
			to[b]++
		}
	}
	return float64(n) / float64(len(repos)), to
}

func TestRingMovementOnAdd(t *testing.T) {
	repos := repoNames(10000)
	three := memberNames(3)
	four := memberNames(4)
	newMember := four[3]
	r3, r4 := mustRing(t, three, testKey), mustRing(t, four, testKey)
	frac, to := moved(r3, r4, repos)
	if frac < 0.20 || frac > 0.30 {
		t.Errorf("adding a 4th member moved %.1f%% of repos, want 20-30%%", 100*frac)
	}
	for dst, n := range to {
		if dst != newMember {
			t.Errorf("%d repos moved to old member %s; only the new member %s may gain repos", n, dst, newMember)
		}
	}
	// Rank is stable too: removing the new member from the 4-ring's ranking
	// yields the 3-ring's ranking.
	for _, repo := range repos[:500] {
		got := slices.DeleteFunc(r4.Rank(repo), func(m string) bool { return m == newMember })
		if want := r3.Rank(repo); !slices.Equal(got, want) {
			t.Fatalf("Rank(%q): 4-ring without new member %v, 3-ring %v", repo, got, want)
		}
	}
}

func TestRingMovementOnRemove(t *testing.T) {
	repos := repoNames(10000)
	five := memberNames(5)
	for _, gone := range []int{0, 2, 4} {
		t.Run(five[gone], func(t *testing.T) {
			rest := slices.Delete(slices.Clone(five), gone, gone+1)
			before, after := mustRing(t, five, testKey), mustRing(t, rest, testKey)
			lost := 0
			gained := map[string]int{}
			for _, repo := range repos {
				a, b := before.Owner(repo), after.Owner(repo)
				if a == five[gone] {
					lost++
					gained[b]++
					if b != before.Rank(repo)[1] {
						t.Fatalf("%q moved to %s, not to its second choice %s", repo, b, before.Rank(repo)[1])
					}
					continue
				}
				if a != b {
					t.Fatalf("%q moved from %s to %s although its owner stayed", repo, a, b)
				}
			}
			// The removed member's repos spread over all the others.
			for _, m := range rest {
				if gained[m] < lost/len(rest)/2 {
					t.Errorf("%s took only %d of the %d orphaned repos: %v", m, gained[m], lost, gained)
				}
			}
		})
	}
}

// TestRingVersusModulo shows why Berth does not use zot's hash mod N.
func TestRingVersusModulo(t *testing.T) {
	repos := repoNames(10000)
	k0, k1 := binary.LittleEndian.Uint64(testKey[:8]), binary.LittleEndian.Uint64(testKey[8:])
	modMoved := 0
	for _, repo := range repos {
		h := siphash.Hash(k0, k1, []byte(repo))
		if h%3 != h%4 {
			modMoved++
		}
	}
	modFrac := float64(modMoved) / float64(len(repos))
	ringFrac, _ := moved(mustRing(t, memberNames(3), testKey), mustRing(t, memberNames(4), testKey), repos)
	if modFrac < 0.65 {
		t.Errorf("mod N moved only %.1f%% going 3→4 members; expected ~75%%", 100*modFrac)
	}
	if ringFrac*2.5 > modFrac {
		t.Errorf("rendezvous moved %.1f%%, mod N %.1f%%: want rendezvous at most 40%% of mod N", 100*ringFrac, 100*modFrac)
	}
	t.Logf("3→4 members: rendezvous moved %.1f%%, hash mod N moved %.1f%%", 100*ringFrac, 100*modFrac)
}
