package cluster

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// realisticRepos makes n repository names shaped like real ones:
// org/project/component with common words, numbers and separators.
func realisticRepos(n int) []string {
	r := rand.New(rand.NewPCG(42, 7))
	orgs := []string{"library", "acme", "infra", "team-a", "team-b", "ml", "ci", "prod", "dev", "platform"}
	words := []string{"api", "web", "worker", "db", "cache", "proxy", "auth", "billing", "search", "ingest",
		"frontend", "backend", "gateway", "scheduler", "metrics", "logs", "base", "tools", "runner", "agent"}
	seen := map[string]bool{}
	var out []string
	for len(out) < n {
		name := orgs[r.IntN(len(orgs))] + "/" + words[r.IntN(len(words))]
		switch r.IntN(3) {
		case 0:
			name += fmt.Sprintf("-%d", r.IntN(5000))
		case 1:
			name += "/" + words[r.IntN(len(words))] + fmt.Sprintf("%d", r.IntN(3000))
		default:
			name += fmt.Sprintf("_v%d/%s", r.IntN(100), words[r.IntN(len(words))])
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out
}

func members(n int) []string {
	ms := make([]string, n)
	for i := range ms {
		ms[i] = fmt.Sprintf("10.0.%d.%d:5000", i/250, i%250+1)
	}
	return ms
}

// TestRingBalanceRealistic: over 100k realistic names the busiest member
// owns at most 2% more than the mean for 3 to 8 members and 8% for 64, as
// a uniform hash does.
func TestRingBalanceRealistic(t *testing.T) {
	if testing.Short() {
		t.Skip("100k names per member count; skipped with -short")
	}
	repos := realisticRepos(100_000)
	key := []byte("0123456789abcdef")
	for _, tc := range []struct {
		n     int
		limit float64
	}{{3, 1.02}, {4, 1.02}, {5, 1.02}, {6, 1.02}, {7, 1.02}, {8, 1.02}, {64, 1.08}} {
		ring, err := NewRing(members(tc.n), key)
		if err != nil {
			t.Fatal(err)
		}
		count := map[string]int{}
		for _, r := range repos {
			count[ring.Owner(r)]++
		}
		maxN := 0
		for _, c := range count {
			maxN = max(maxN, c)
		}
		mean := float64(len(repos)) / float64(tc.n)
		if got := float64(maxN) / mean; got > tc.limit {
			t.Errorf("%d members: max/mean %.4f > %.2f", tc.n, got, tc.limit)
		} else {
			t.Logf("%d members: max/mean %.4f", tc.n, got)
		}
	}
}

// TestRingMovementRealistic: adding or removing one member moves at most
// 1/N + 1% of the repositories.
func TestRingMovementRealistic(t *testing.T) {
	if testing.Short() {
		t.Skip("100k names; skipped with -short")
	}
	repos := realisticRepos(100_000)
	key := []byte("0123456789abcdef")
	for _, n := range []int{3, 4, 8, 16} {
		small, _ := NewRing(members(n), key)
		big, _ := NewRing(members(n+1), key)
		moved := 0
		for _, r := range repos {
			if small.Owner(r) != big.Owner(r) {
				moved++
			}
		}
		frac := float64(moved) / float64(len(repos))
		// Adding the (n+1)th member, or removing it again, moves the same
		// repositories: the ones it owns in the bigger ring.
		if limit := 1/float64(n+1) + 0.01; frac > limit {
			t.Errorf("%d -> %d members: %.4f of repos moved, limit %.4f", n, n+1, frac, limit)
		} else {
			t.Logf("%d <-> %d members: %.4f moved", n, n+1, frac)
		}
	}
}
