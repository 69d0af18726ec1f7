package cluster

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeResolver answers from a table. IP literals resolve to themselves, as
// with net.Resolver. failFirst[host] lookups fail before the host resolves;
// a host missing from hosts never resolves.
type fakeResolver struct {
	mu        sync.Mutex
	hosts     map[string][]string
	failFirst map[string]int
	calls     map[string]int
	// onLookup, when set, is told each lookup and its count (under mu).
	onLookup func(host string, n int)
}

func (r *fakeResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.calls == nil {
		r.calls = map[string]int{}
	}
	r.calls[host]++
	if r.onLookup != nil {
		r.onLookup(host, r.calls[host])
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); ip != nil {
		return []net.IPAddr{{IP: ip}}, nil
	}
	if r.calls[host] <= r.failFirst[host] {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true, IsTemporary: true}
	}
	addrs, ok := r.hosts[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []net.IPAddr
	for _, a := range addrs {
		out = append(out, net.IPAddr{IP: net.ParseIP(a)})
	}
	return out, nil
}

func (r *fakeResolver) count(host string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[host]
}

func ips(s ...string) []net.IP {
	var out []net.IP
	for _, a := range s {
		out = append(out, net.ParseIP(a))
	}
	return out
}

// Hosts of a three-member cluster on 10.1.0.0/24; this process is b.
func clusterHosts() map[string][]string {
	return map[string][]string{
		"a.berth":   {"10.1.0.1"},
		"b.berth":   {"10.1.0.2", "fd00::2"},
		"c.berth":   {"10.1.0.3"},
		"self-name": {"10.1.0.2"},
		"vip":       {"10.1.0.100"},
	}
}

func TestFindSelf(t *testing.T) {
	localB := ips("127.0.0.1", "::1", "10.1.0.2", "fd00::2", "fe80::1")
	tests := []struct {
		name     string
		members  []string
		listen   string
		local    []net.IP
		want     string
		wantErr  []string // substrings of the error
		hostsMod func(map[string][]string)
	}{
		{
			name:    "specific listen IP",
			members: []string{"a.berth:5000", "b.berth:5000", "c.berth:5000"},
			listen:  "10.1.0.2:5000",
			want:    "b.berth:5000",
		},
		{
			name:    "specific listen IP ignores local interfaces",
			members: []string{"a.berth:5000", "b.berth:5000", "c.berth:5000"},
			listen:  "10.1.0.1:5000",
			local:   localB, // interfaces say b, the listen address says a
			want:    "a.berth:5000",
		},
		{
			name:    "IP literal members",
			members: []string{"10.1.0.1:5000", "10.1.0.2:5000", "10.1.0.3:5000"},
			listen:  "10.1.0.3:5000",
			want:    "10.1.0.3:5000",
		},
		{
			name:    "IPv6 listen address",
			members: []string{"a.berth:5000", "b.berth:5000", "c.berth:5000"},
			listen:  "[fd00::2]:5000",
			want:    "b.berth:5000",
		},
		{
			name:    "IPv6 literal member",
			members: []string{"[fd00::1]:5000", "[fd00::2]:5000"},
			listen:  "[fd00::2]:5000",
			want:    "[fd00::2]:5000",
		},
		{
			name:    "listen host name",
			members: []string{"a.berth:5000", "b.berth:5000", "c.berth:5000"},
			listen:  "self-name:5000",
			want:    "b.berth:5000",
		},
		{
			name:    "unspecified IPv4 listen uses local IPs",
			members: []string{"a.berth:5000", "b.berth:5000", "c.berth:5000"},
			listen:  "0.0.0.0:5000",
			local:   localB,
			want:    "b.berth:5000",
		},
		{
			name:    "unspecified IPv6 listen uses local IPs",
			members: []string{"a.berth:5000", "b.berth:5000", "c.berth:5000"},
			listen:  "[::]:5000",
			local:   localB,
			want:    "b.berth:5000",
		},
		{
			name:    "empty listen host uses local IPs",
			members: []string{"a.berth:5000", "b.berth:5000", "c.berth:5000"},
			listen:  ":5000",
			local:   localB,
			want:    "b.berth:5000",
		},
		{
			name:    "port mismatch ignored",
			members: []string{"a.berth:5000", "b.berth:6000", "self-name:5000", "c.berth:5000"},
			listen:  ":5000",
			local:   localB,
			want:    "self-name:5000",
		},
		{
			name:    "same host several ports",
			members: []string{"10.1.0.2:9000", "10.1.0.2:9001", "10.1.0.2:9002"},
			listen:  "10.1.0.2:9001",
			want:    "10.1.0.2:9001",
		},
		{
			name:    "unresolvable member on another port is not waited for",
			members: []string{"b.berth:5000", "nowhere:6000"},
			listen:  ":5000",
			local:   localB,
			want:    "b.berth:5000",
		},
		{
			name:    "several matches",
			members: []string{"a.berth:5000", "b.berth:5000", "self-name:5000"},
			listen:  ":5000",
			local:   localB,
			wantErr: []string{"several", "b.berth:5000", "self-name:5000"},
		},
		{
			name:    "several matches by IP and name",
			members: []string{"10.1.0.2:5000", "b.berth:5000"},
			listen:  "10.1.0.2:5000",
			wantErr: []string{"several", "10.1.0.2:5000", "b.berth:5000"},
		},
		{
			name:    "no match",
			members: []string{"a.berth:5000", "c.berth:5000", "vip:5000"},
			listen:  ":5000",
			local:   localB,
			wantErr: []string{"no member", ":5000"},
		},
		{
			name:    "no match on port",
			members: []string{"a.berth:5000", "b.berth:5000"},
			listen:  ":5001",
			local:   localB,
			wantErr: []string{"no member"},
		},
		{
			name:    "member without port",
			members: []string{"a.berth:5000", "b.berth"},
			listen:  ":5000",
			local:   localB,
			wantErr: []string{"b.berth"},
		},
		{
			name:    "bad listen address",
			members: []string{"a.berth:5000"},
			listen:  "5000",
			local:   localB,
			wantErr: []string{"5000"},
		},
		{
			name:    "listen host does not resolve",
			members: []string{"a.berth:5000"},
			listen:  "nowhere:5000",
			wantErr: []string{"nowhere"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res := &fakeResolver{hosts: clusterHosts()}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			got, err := FindSelf(ctx, tc.members, tc.listen, res, tc.local)
			if el := time.Since(start); el > time.Second {
				t.Errorf("took %s; nothing here needs retries", el)
			}
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("FindSelf = %q, want error mentioning %q", got, tc.wantErr)
				}
				for _, s := range tc.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not mention %q", err, s)
					}
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("FindSelf = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestFindSelfRetriesUnresolved(t *testing.T) {
	t.Parallel()
	t.Run("peer resolves late", func(t *testing.T) {
		t.Parallel()
		res := &fakeResolver{hosts: clusterHosts(), failFirst: map[string]int{"c.berth": 2}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := FindSelf(ctx, []string{"a.berth:5000", "b.berth:5000", "c.berth:5000"}, "10.1.0.2:5000", res, nil)
		if err != nil || got != "b.berth:5000" {
			t.Fatalf("FindSelf = %q, %v", got, err)
		}
		if n := res.count("c.berth"); n != 3 {
			t.Errorf("c.berth looked up %d times, want 3 (2 failures, then success)", n)
		}
	})
	t.Run("own name resolves late", func(t *testing.T) {
		t.Parallel()
		res := &fakeResolver{hosts: clusterHosts(), failFirst: map[string]int{"b.berth": 2}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := FindSelf(ctx, []string{"a.berth:5000", "b.berth:5000", "c.berth:5000"}, ":5000", res, ips("10.1.0.2"))
		if err != nil || got != "b.berth:5000" {
			t.Fatalf("FindSelf = %q, %v", got, err)
		}
	})
	t.Run("late name turns out to be a second match", func(t *testing.T) {
		t.Parallel()
		res := &fakeResolver{hosts: clusterHosts(), failFirst: map[string]int{"self-name": 1}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := FindSelf(ctx, []string{"a.berth:5000", "b.berth:5000", "self-name:5000"}, ":5000", res, ips("10.1.0.2"))
		if err == nil || !strings.Contains(err.Error(), "b.berth:5000") || !strings.Contains(err.Error(), "self-name:5000") {
			t.Fatalf("FindSelf = %q, %v; want a several-matches error", got, err)
		}
	})
	t.Run("peer never resolves, self found", func(t *testing.T) {
		t.Parallel()
		// The ctx ends once pending.berth has been retried, whatever the
		// scheduling delays; the deadline is only a backstop.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res := &fakeResolver{hosts: clusterHosts(), onLookup: func(host string, n int) {
			if host == "pending.berth" && n == 2 {
				cancel()
			}
		}}
		got, err := FindSelf(ctx, []string{"a.berth:5000", "b.berth:5000", "pending.berth:5000"}, ":5000", res, ips("10.1.0.2"))
		if err != nil || got != "b.berth:5000" {
			t.Fatalf("FindSelf = %q, %v; want self when ctx ends", got, err)
		}
		if !errors.Is(ctx.Err(), context.Canceled) {
			t.Errorf("ctx ended with %v; want FindSelf to retry pending.berth before the backstop deadline", ctx.Err())
		}
		if n := res.count("pending.berth"); n != 2 {
			t.Errorf("pending.berth looked up %d times; want 2 (a retry, then ctx ends)", n)
		}
	})
	t.Run("nothing resolves", func(t *testing.T) {
		t.Parallel()
		res := &fakeResolver{}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		got, err := FindSelf(ctx, []string{"x.berth:5000", "y.berth:5000"}, ":5000", res, ips("10.1.0.2"))
		if err == nil {
			t.Fatalf("FindSelf = %q, want error", got)
		}
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "x.berth:5000") || !strings.Contains(err.Error(), "y.berth:5000") {
			t.Errorf("error %q: want the unresolved members and the ctx error", err)
		}
	})
	t.Run("ctx already done", func(t *testing.T) {
		t.Parallel()
		res := &fakeResolver{hosts: clusterHosts()}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		got, err := FindSelf(ctx, []string{"a.berth:5000", "b.berth:5000"}, ":5000", res, ips("10.1.0.2"))
		if err == nil {
			t.Fatalf("FindSelf = %q with a canceled ctx and no resolver answers, want error", got)
		}
	})
}

// TestFindSelfReal uses the real resolver and interfaces for loopback.
func TestFindSelfReal(t *testing.T) {
	t.Parallel()
	local, err := LocalIPs()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ip := range local {
		found = found || ip.Equal(net.ParseIP("127.0.0.1"))
	}
	if !found {
		t.Skipf("no 127.0.0.1 among local addresses %v", local)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	members := []string{"192.0.2.1:5000", "127.0.0.1:5000", "192.0.2.3:5000"}
	for _, listen := range []string{"127.0.0.1:5000", "0.0.0.0:5000", ":5000"} {
		got, err := FindSelf(ctx, members, listen, net.DefaultResolver, local)
		if err != nil || got != "127.0.0.1:5000" {
			t.Errorf("listen %s: FindSelf = %q, %v", listen, got, err)
		}
	}
	_, err = FindSelf(ctx, members, "127.0.0.1:5001", net.DefaultResolver, local)
	if err == nil {
		t.Error("port 5001 matched a member on 5000")
	}
}
