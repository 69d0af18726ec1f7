// Package cluster shards repositories over the members of a Berth cluster
// and forwards requests to the member that owns a repository.
//
// Ownership is rendezvous (highest-random-weight) hashing: every member gets
// a score SipHash-2-4(hashKey, member "\x00" repo) and the highest score owns
// the repository. Adding or removing one of N members moves only about 1/N
// of the repositories, and the ranking gives every repository a natural
// second choice when its owner is down.
package cluster

import (
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/dchest/siphash"
)

// Ring ranks members for repositories. It is immutable and safe for
// concurrent use.
type Ring struct {
	members []string
	k0, k1  uint64
}

// NewRing returns a ring over members keyed with the 16-byte hashKey.
func NewRing(members []string, hashKey []byte) (*Ring, error) {
	if len(hashKey) != 16 {
		return nil, fmt.Errorf("cluster: hashKey must be exactly 16 bytes, got %d", len(hashKey))
	}
	if len(members) == 0 {
		return nil, fmt.Errorf("cluster: no members")
	}
	ms := append([]string(nil), members...)
	return &Ring{
		members: ms,
		k0:      binary.LittleEndian.Uint64(hashKey[:8]),
		k1:      binary.LittleEndian.Uint64(hashKey[8:]),
	}, nil
}

// Members returns the members in configuration order.
func (r *Ring) Members() []string { return append([]string(nil), r.members...) }

// score is member's weight for repo.
func (r *Ring) score(member, repo string) uint64 {
	b := make([]byte, 0, len(member)+1+len(repo))
	b = append(b, member...)
	b = append(b, 0)
	b = append(b, repo...)
	return siphash.Hash(r.k0, r.k1, b)
}

// Owner returns the member that owns repo.
func (r *Ring) Owner(repo string) string {
	best, bestScore := "", uint64(0)
	for _, m := range r.members {
		if s := r.score(m, repo); best == "" || s > bestScore || (s == bestScore && m < best) {
			best, bestScore = m, s
		}
	}
	return best
}

// Rank returns every member ordered by preference for repo: the owner
// first, then the failover order.
func (r *Ring) Rank(repo string) []string {
	type ms struct {
		m string
		s uint64
	}
	all := make([]ms, len(r.members))
	for i, m := range r.members {
		all[i] = ms{m, r.score(m, repo)}
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].s != all[j].s {
			return all[i].s > all[j].s
		}
		return all[i].m < all[j].m
	})
	out := make([]string, len(all))
	for i, x := range all {
		out[i] = x.m
	}
	return out
}
