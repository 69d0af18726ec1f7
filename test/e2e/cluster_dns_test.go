package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClusterDNSRoundRobin pushes with skopeo and crane to reg.test:P, a
// name that resolves to all three members, with no load balancer: first
// with a private /etc/hosts listing the members in a rotated order per
// command (each command enters through one member), then through a DNS
// server rotating its answer on every query (each new connection may land
// on another member, so one upload can start on one member and finish on
// another). Everything pulls back through the other members.
func TestClusterDNSRoundRobin(t *testing.T) {
	if err := unshareAvailable(); err != nil {
		t.Skipf("needs a private mount namespace to give clients their own /etc/hosts: %v", err)
	}
	defer timed(t)()
	crane, skopeo := tool(t, "crane"), tool(t, "skopeo")
	c := startCluster(t, clusterOpts{})
	host := fmt.Sprintf("reg.test:%d", c.Port)
	work := t.TempDir()

	// pushAll pushes 10 images with each client; with wantSplit, at least
	// one skopeo push must have entered through several members.
	pushAll := func(t *testing.T, prefix string, wantSplit bool, etc func(i int) (hosts, resolv string)) {
		marks := c.marks()
		type pushed struct{ repo, digest, first string }
		var all []pushed
		for i := 0; i < 10; i++ {
			hosts, resolv := etc(i)
			first := memberIPs[i%3]
			lt := filepath.Join(work, fmt.Sprintf("%s-l%d.tar", prefix, i))
			writeLayerTar(t, lt, 256<<10+i*1024)
			// crane: a new 1-layer image per push.
			repo := fmt.Sprintf("%s/crane%d", prefix, i)
			out := runStdout(t, inPrivateEtc(hosts, resolv, crane, "append", "--insecure", "--oci-empty-base", "-f", lt, "-t", host+"/"+repo+":v1")...)
			_, d, _ := strings.Cut(strings.TrimSpace(out), "@")
			all = append(all, pushed{repo, d, first})
			// skopeo: a docker-archive made offline, so every push uploads new blobs.
			arch := filepath.Join(work, fmt.Sprintf("%s-img%d.tar", prefix, i))
			run(t, crane, "append", "--oci-empty-base", "-f", lt, "-t", "example.test/img:v1", "-o", arch)
			repo = fmt.Sprintf("%s/skopeo%d", prefix, i)
			df := filepath.Join(work, fmt.Sprintf("%s-digest%d", prefix, i))
			run(t, inPrivateEtc(hosts, resolv, skopeo, "--insecure-policy", "copy", "--dest-tls-verify=false", "--digestfile", df,
				"docker-archive:"+arch, "docker://"+host+"/"+repo+":v1")...)
			b, err := os.ReadFile(df)
			must(t, err)
			all = append(all, pushed{repo, strings.TrimSpace(string(b)), first})
		}
		// Where did the clients' requests enter? (Requests that arrived
		// forwarded share their req_id with the forwarder's line.)
		time.Sleep(100 * time.Millisecond)
		lines := c.requests(t, marks)
		fwd := map[string]bool{}
		for _, l := range lines {
			if l.has("owner") {
				fwd[l.str("req_id")] = true
			}
		}
		entries := map[string]map[string]int{} // repo -> entry member -> requests
		total := map[string]int{}
		for _, l := range lines {
			if !strings.HasPrefix(l.str("repo"), prefix+"/") || (!l.has("owner") && fwd[l.str("req_id")]) {
				continue
			}
			if entries[l.str("repo")] == nil {
				entries[l.str("repo")] = map[string]int{}
			}
			entries[l.str("repo")][l.On]++
			total[l.On]++
		}
		multi := 0
		for _, p := range all {
			if strings.Contains(p.repo, "/skopeo") && len(entries[p.repo]) > 1 {
				multi++
			}
		}
		t.Logf("%s: requests entered per member %v; skopeo pushes spread over several members: %d of 10", prefix, total, multi)
		if len(total) < 2 {
			t.Errorf("%s: every request entered through one member %v: the name did not rotate", prefix, total)
		}
		if wantSplit && multi == 0 {
			t.Errorf("%s: no skopeo push had requests on several members: the per-connection rotation was not exercised", prefix)
		}
		// Pull back through the members the hosts order did not put first
		// (with DNS rotation, through the two others of a fixed rotation).
		for i, p := range all {
			for _, m := range c.Members {
				if m.Addr == p.first {
					continue
				}
				ref := m.Host + "/" + p.repo + ":v1"
				if d := strings.TrimSpace(runStdout(t, crane, "digest", "--insecure", ref)); d != p.digest {
					t.Errorf("%s: digest %s, pushed %s", ref, d, p.digest)
				}
				if i%4 == 0 {
					dir := filepath.Join(t.TempDir(), "pull")
					run(t, crane, "pull", "--insecure", "--format", "oci", ref, dir)
					if d := layoutDigest(t, dir, ""); d != p.digest {
						t.Errorf("pull %s: %s, pushed %s", ref, d, p.digest)
					}
				}
			}
		}
		requireStorageOK(t, c.StorageRoot())
	}

	t.Run("hosts-file", func(t *testing.T) {
		defer timed(t)()
		pushAll(t, "dns-hosts", false, func(i int) (string, string) {
			var b strings.Builder
			b.WriteString("127.0.0.1 localhost\n")
			for j := 0; j < 3; j++ {
				fmt.Fprintf(&b, "%s reg.test\n", memberIPs[(i+j)%3])
			}
			p := filepath.Join(work, fmt.Sprintf("hosts%d", i))
			must(t, os.WriteFile(p, []byte(b.String()), 0o644))
			return p, ""
		})
	})

	t.Run("dns-rotation", func(t *testing.T) {
		defer timed(t)()
		// The resolver on a private loopback address, port 53 (clients
		// cannot be given another port).
		dnsIP := fmt.Sprintf("127.53.%d.%d", 1+time.Now().UnixNano()%250, 1+os.Getpid()%250)
		dns := startDNS(t, dnsIP+":53", "reg.test", memberIPs)
		hosts := filepath.Join(work, "hosts-dns")
		must(t, os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644))
		resolv := filepath.Join(work, "resolv.conf")
		must(t, os.WriteFile(resolv, []byte("nameserver "+dnsIP+"\noptions timeout:2 attempts:2\n"), 0o644))
		pushAll(t, "dns-rr", true, func(int) (string, string) { return hosts, resolv })
		dns.mu.Lock()
		t.Logf("DNS server answered %d A queries", dns.queries)
		dns.mu.Unlock()
	})
	c.requireNoMisroutes(t)
}
