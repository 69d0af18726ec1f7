package cluster

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"
)

// Resolver looks up host addresses (net.DefaultResolver in production).
type Resolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// FindSelf returns the member that names this process: its port equals the
// listening port and its host resolves to the listening address, or, when
// listening on all interfaces, to an address of a local interface. Names
// that do not resolve yet are retried until ctx ends; it is an error when no
// member or several members match.
func FindSelf(ctx context.Context, members []string, listen string, res Resolver, localIPs []net.IP) (string, error) {
	lhost, lport, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("cluster: listening address %q: %w", listen, err)
	}
	var want []net.IP
	if ip := net.ParseIP(lhost); ip != nil && !ip.IsUnspecified() {
		want = []net.IP{ip}
	} else if lhost != "" && ip == nil {
		addrs, err := res.LookupIPAddr(ctx, lhost)
		if err != nil {
			return "", fmt.Errorf("cluster: resolve http.address %q: %w", lhost, err)
		}
		for _, a := range addrs {
			want = append(want, a.IP)
		}
	} else {
		want = localIPs
	}
	delay := 200 * time.Millisecond
	for {
		var matches, unresolved []string
		for _, m := range members {
			host, port, err := net.SplitHostPort(m)
			if err != nil {
				return "", fmt.Errorf("cluster: member %q: %w", m, err)
			}
			if port != lport {
				continue
			}
			addrs, err := res.LookupIPAddr(ctx, host)
			if err != nil {
				unresolved = append(unresolved, m)
				continue
			}
			if anyEqual(addrs, want) {
				matches = append(matches, m)
			}
		}
		switch {
		case len(matches) > 1:
			return "", fmt.Errorf("cluster: several members match this process (%s): give each member its own address", strings.Join(matches, ", "))
		case len(matches) == 1 && len(unresolved) == 0:
			return matches[0], nil
		case len(unresolved) == 0:
			return "", fmt.Errorf("cluster: no member matches this process listening on %s", listen)
		}
		select {
		case <-ctx.Done():
			if len(matches) == 1 {
				return matches[0], nil
			}
			return "", fmt.Errorf("cluster: members %s do not resolve and no other member matches %s: %w", strings.Join(unresolved, ", "), listen, ctx.Err())
		case <-time.After(delay):
		}
		if delay < 5*time.Second {
			delay *= 2
		}
	}
}

func anyEqual(addrs []net.IPAddr, want []net.IP) bool {
	for _, a := range addrs {
		for _, w := range want {
			if a.IP.Equal(w) {
				return true
			}
		}
	}
	return false
}

// LocalIPs lists the addresses of this host's interfaces.
func LocalIPs() ([]net.IP, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var ips []net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			ips = append(ips, n.IP)
		}
	}
	return ips, nil
}
