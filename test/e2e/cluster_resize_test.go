package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	berthcluster "github.com/berthreg/berth/pkg/cluster"
)

// TestClusterResize grows a serving cluster from 3 members to 4 and shrinks
// it back to 3 while crane pulls and pushes run through HAProxy and
// directly against every member, and checks that no request fails, that
// every repository stays readable from every member with the same digests,
// that the repositories whose owner moved are served by their new owner,
// and that chunked uploads survive their repository moving twice.
//
// Members learn the new list one at a time, a second and a half apart, so
// requests cross members that disagree about the membership: some members
// reload on SIGHUP (their file is rewritten with its old modification
// time, so only the signal can make them notice) and one by noticing the
// file change (no signal: the file is polled every 2 s).
func TestClusterResize(t *testing.T) {
	defer timed(t)()
	crane := tool(t, "crane")
	const ip4 = "127.0.0.4"
	c := startCluster(t, clusterOpts{LB: true, SpareIPs: []string{ip4}})
	m1, m2, m3 := c.Members[0], c.Members[1], c.Members[2]
	var three []string
	for _, m := range c.Members {
		three = append(three, m.Host)
	}
	host4 := fmt.Sprintf("%s:%d", ip4, c.Port)
	four := append(slices.Clone(three), host4)
	ring3, ring4 := cmRing(t, three), cmRing(t, four)

	// 20 repositories, 5 of which member 4 will own (about 1/4, as
	// rendezvous hashing moves them). Every member owns some of the rest.
	var repos, moving []string
	for i := 0; len(repos) < 20; i++ {
		repo := fmt.Sprintf("resize/r%03d", i)
		if mv := ring4.Owner(repo) == host4; (mv && len(moving) < 5) || (!mv && len(repos)-len(moving) < 15) {
			repos = append(repos, repo)
			if mv {
				moving = append(moving, repo)
			}
		}
	}
	owned := map[string]int{}
	for _, r := range repos {
		owned[ring3.Owner(r)]++
	}
	t.Logf("owners with 3 members: %v; moving to %s with 4: %v", owned, host4, moving)

	work := t.TempDir()
	load := &resizeLoad{t: t, crane: crane, env: clientEnv(t), work: work, repos: repos,
		want: map[string]string{}, workers: map[string]*loadWorker{}}
	for i := 0; i < 48; i++ {
		p := filepath.Join(work, fmt.Sprintf("l%02d.tar", i))
		writeLayerTar(t, p, 8<<10+i*512)
		load.tars = append(load.tars, p)
	}
	manifests := map[string][]byte{}
	for _, repo := range repos {
		d, man := c.LBReg.pushImage(t, repo, "v1")
		load.want[repo+":v1"] = d
		manifests[repo] = man
	}

	// Chunked uploads to repositories that will move: started on their
	// owner before the change, continued on member 4 after growing,
	// finished on their owner again after shrinking.
	var sessions []*session
	for _, repo := range moving[:2] {
		sessions = append(sessions, startSession(t, c.LBReg, repo, []int{1 << 20, 1<<20 + 3, 512<<10 + 7}))
	}

	start := c.marks()
	load.add(c.LB.Host)
	for _, m := range c.Members {
		load.add(m.Host)
	}
	time.Sleep(time.Second)

	// reload rewrites each member's file, one at a time: by SIGHUP (file
	// modification time kept) or by the poll (no signal), and checks what
	// each member logs about the change.
	reload := func(phase string, order []*reg, hup []bool, members []string, from, to *berthcluster.Ring) {
		t.Helper()
		for i, m := range order {
			off := m.logSize()
			sent := time.Now()
			setMembers(t, m, members, hup[i])
			// Generous limits for a slow machine: with its modification
			// time kept, only the signal can make a SIGHUP member reload.
			how := "file poll"
			limit := 10 * time.Second
			if hup[i] {
				how = "SIGHUP"
				m.signal(t, syscall.SIGHUP)
			}
			l := waitMembersChanged(t, m, off, members, 15*time.Second)
			took := time.Since(sent)
			t.Logf("%s: %s switched to %d members by %s after %s: %v", phase, m.Host, len(members), how, took.Round(time.Millisecond), l)
			if took > limit {
				t.Errorf("%s: %s took %s to apply the new members by %s, want under %s", phase, m.Host, took, how, limit)
			}
			var want []string
			for _, r := range repos {
				if from.Owner(r) != to.Owner(r) {
					want = append(want, r)
				}
			}
			if !l.has("repos_moved") || l.num("repos_moved") != len(want) {
				t.Errorf("%s: %s logged repos_moved %v, want %d: %v", phase, m.Host, l["repos_moved"], len(want), l)
			}
			var got []string
			for _, ml := range m.logSince(t, off) {
				if ml.str("message") != "repository owner moved" {
					continue
				}
				got = append(got, ml.str("repo"))
				if r := ml.str("repo"); ml.str("from") != from.Owner(r) || ml.str("to") != to.Owner(r) {
					t.Errorf("%s: %s logged %s moving from %s to %s, want %s to %s", phase, m.Host, r, ml.str("from"), ml.str("to"), from.Owner(r), to.Owner(r))
				}
			}
			sort.Strings(got)
			if !slices.Equal(got, want) {
				t.Errorf("%s: %s logged the owner of %v moving, want %v", phase, m.Host, got, want)
			}
			if i < len(order)-1 {
				time.Sleep(1500 * time.Millisecond) // a window where members disagree
			}
		}
	}

	// checkOwners tags every repository's v1 manifest as phase (a manifest
	// PUT) through HAProxy and member direct, then checks in the access logs
	// that each of these PUTs was stored by the repository's owner in ring
	// (PUT 201 without an "owner" field), and only there. The load's
	// manifest PUTs are left out: one routed under the old view before the
	// last switch may finish after the mark.
	checkOwners := func(phase string, ring *berthcluster.Ring, direct *reg) {
		t.Helper()
		marks := c.marks()
		for i, repo := range repos {
			e := c.LBReg
			if i%2 == 1 {
				e = direct
			}
			res := e.do(t, "PUT", "/v2/"+repo+"/manifests/"+phase, map[string]string{"Content-Type": mtManifest}, manifests[repo])
			if res.Status != http.StatusCreated {
				t.Fatalf("%s: PUT %s:%s via %s: %s", phase, repo, phase, c.name(e), res)
			}
			load.setWant(repo+":"+phase, sha256Digest(manifests[repo]))
		}
		phaseLines := func() []reqLine {
			var out []reqLine
			for _, l := range c.requests(t, marks) {
				if strings.HasSuffix(l.str("path"), "/manifests/"+phase) {
					out = append(out, l)
				}
			}
			return out
		}
		// Every PUT got its 201; its log lines follow within moments.
		for deadline := time.Now().Add(10 * time.Second); len(storedBy(phaseLines())) < len(repos) && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
		}
		stored := storedBy(phaseLines())
		for _, repo := range repos {
			want := ring.Owner(repo)
			if s := stored[repo]; len(s) != 1 || s[want] == 0 {
				t.Errorf("%s: manifest PUTs of %s stored by %v, want only its owner %s", phase, repo, s, want)
			}
		}
	}

	// 3 -> 4: member 4 starts with the 4-member list, then members 1 and 2
	// get SIGHUP and member 3 notices its file.
	phaseAdd := time.Now()
	m4 := newRegistry(t, regOpts{Store: c.Store, Addr: ip4, Port: c.Port,
		Extra: map[string]any{"cluster": map[string]any{"members": four, "hashKey": clusterHashKey}}})
	m4.start()
	c.Members = append(c.Members, m4)
	load.add(m4.Host)
	time.Sleep(time.Second)
	addMarks := c.marks()
	reload("3->4", []*reg{m1, m2, m3}, []bool{true, true, false}, four, ring3, ring4)
	logWindow(t, "3->4", c.requests(t, addMarks), moving)
	checkOwners("after-add", ring4, m4)
	for _, ss := range sessions {
		ss.next(t, m1) // forwarded to member 4, which now owns the repository
	}
	for _, repo := range moving {
		if ring4.Owner(repo) != m4.Host {
			t.Fatalf("%s: owner %s", repo, ring4.Owner(repo))
		}
	}
	time.Sleep(time.Second)
	load.verify(t, c, "after growing to 4", "v1", "after-add")

	// 4 -> 3: clients stop using member 4 (as when it leaves DNS or the
	// load balancer), members 3 and 2 get SIGHUP and member 1 notices its
	// file, then member 4 stops.
	phaseRemove := time.Now()
	load.remove(m4.Host)
	removeMarks := c.marks()
	reload("4->3", []*reg{m3, m2, m1}, []bool{true, true, false}, three, ring4, ring3)
	logWindow(t, "4->3", c.requests(t, removeMarks), moving)
	time.Sleep(300 * time.Millisecond)
	m4.terminate(t, 15*time.Second)
	c.Members = c.Members[:3]
	checkOwners("after-remove", ring3, m2)
	for _, ss := range sessions {
		ss.next(t, c.LBReg)
		ss.finish(t, m3)
		for _, e := range c.entries() {
			ss.check(t, e)
		}
	}
	time.Sleep(time.Second)
	load.stop()
	end := time.Now()

	// Judge the load: no client command failed.
	type key struct{ phase, entry, kind string }
	counts := map[key]int{}
	failed := 0
	for _, o := range load.ops {
		phase := "before"
		switch {
		case o.start.After(phaseRemove):
			phase = "shrink"
		case o.start.After(phaseAdd):
			phase = "grow"
		}
		counts[key{phase, o.entry, o.kind}]++
		if o.err != nil {
			failed++
			t.Errorf("%s (%s phase) of %s:%s via %s failed (%s - %s after the start of the phase): %v\n%s", o.kind, phase, o.repo, o.tag, o.entry,
				o.start.Sub(phaseAdd).Round(time.Millisecond), o.end.Sub(phaseAdd).Round(time.Millisecond), o.err, tailString(o.out, 10))
		}
		if o.err == nil && o.kind == "pull" && o.digest != o.wantDigest {
			t.Errorf("pull of %s:v1 via %s: digest %s, want %s", o.repo, o.entry, o.digest, o.wantDigest)
		}
	}
	keys := make([]key, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
	var summary []string
	for _, k := range keys {
		summary = append(summary, fmt.Sprintf("%s/%s/%s=%d", k.phase, k.entry, k.kind, counts[k]))
	}
	t.Logf("load over %s: %d commands, %d failed: %s", end.Sub(phaseAdd).Round(time.Millisecond), len(load.ops), failed, strings.Join(summary, " "))

	// No member answered an error or misrouted a request (clients retry
	// some errors, so the client results alone could hide them).
	problems, known := problemLines(t, append(slices.Clone(c.Members), m4), start)
	for _, p := range problems {
		t.Errorf("during the resize: %s", p)
	}
	if known > 0 {
		t.Logf("%d requests failed with versitygw's ExistingObjectIsDirectory race (versitygw#1988; clients retried them)", known)
	}
	requireNoPanic(t, m1, m2, m3, m4)

	// Everything acknowledged pulls from every member with the same digest.
	load.verify(t, c, "after shrinking to 3")
	for i, repo := range append(slices.Clone(moving[:3]), repos[len(repos)-3:]...) {
		e := c.Members[i%3]
		dir := filepath.Join(t.TempDir(), "final")
		run(t, crane, "pull", "--insecure", "--format", "oci", e.Host+"/"+repo+":after-add", dir)
		if d := layoutDigest(t, dir, ""); d != load.want[repo+":after-add"] {
			t.Errorf("pull %s:after-add via %s: %s, want %s", repo, e.Host, d, load.want[repo+":after-add"])
		}
	}
	requireStorageOK(t, c.StorageRoot())
	c.requireNoMisroutes(t)
}

// logWindow logs which members served (without forwarding) requests for
// the moving repositories while the members disagreed.
func logWindow(t *testing.T, phase string, lines []reqLine, moving []string) {
	served := map[string]int{}
	for _, l := range lines {
		if slices.Contains(moving, l.str("repo")) && !l.has("owner") {
			served[l.On]++
		}
	}
	t.Logf("%s: while members disagreed, requests for the moving repositories were served by %v", phase, served)
}

func cmRing(t *testing.T, members []string) *berthcluster.Ring {
	t.Helper()
	r, err := berthcluster.NewRing(members, []byte(clusterHashKey))
	must(t, err)
	return r
}

// resizeLoad runs one worker per entry (HAProxy or a member): crane pulls
// of the repositories' v1 in turn, every fourth command a crane push of a
// new tag. Each command is recorded.
type resizeLoad struct {
	t     *testing.T
	crane string
	env   []string
	work  string
	tars  []string
	repos []string
	seq   atomic.Int64

	mu      sync.Mutex
	want    map[string]string // repo:tag -> digest, every acknowledged push
	ops     []loadOp
	workers map[string]*loadWorker
}

type loadWorker struct {
	cancel context.CancelFunc
	done   chan struct{}
}

type loadOp struct {
	kind, entry, repo, tag string
	start, end             time.Time
	err                    error
	out                    string
	digest, wantDigest     string
}

func (l *resizeLoad) setWant(k, d string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.want[k] = d
}

// add starts a worker sending commands to entry.
func (l *resizeLoad) add(entry string) {
	ctx, cancel := context.WithCancel(context.Background())
	w := &loadWorker{cancel: cancel, done: make(chan struct{})}
	l.mu.Lock()
	l.workers[entry] = w
	seed := len(l.workers) * 7
	l.mu.Unlock()
	go func() {
		defer close(w.done)
		for i := seed; ctx.Err() == nil; i++ {
			repo := l.repos[i%len(l.repos)]
			o := loadOp{kind: "pull", entry: entry, repo: repo, tag: "v1", start: time.Now()}
			if i%4 == 3 {
				n := l.seq.Add(1)
				o.kind, o.tag = "push", fmt.Sprintf("w%d", n)
				res := execCmd(context.Background(), l.env, l.work, time.Minute, l.crane, "append", "--insecure", "--oci-empty-base",
					"-f", l.tars[int(n)%len(l.tars)], "-t", entry+"/"+repo+":"+o.tag)
				o.end, o.err, o.out = time.Now(), res.Err, res.Combined
				if o.err == nil {
					_, o.digest, _ = strings.Cut(strings.TrimSpace(res.Stdout), "@")
					l.setWant(repo+":"+o.tag, o.digest)
				}
			} else {
				l.mu.Lock()
				o.wantDigest = l.want[repo+":v1"]
				l.mu.Unlock()
				dir := filepath.Join(l.work, fmt.Sprintf("pull-%s-%d", strings.ReplaceAll(entry, ":", "_"), i))
				res := execCmd(context.Background(), l.env, l.work, time.Minute, l.crane, "pull", "--insecure", "--format", "oci", entry+"/"+repo+":v1", dir)
				o.end, o.err, o.out = time.Now(), res.Err, res.Combined
				if o.err == nil {
					idx, err := readIndex(filepath.Join(dir, "index.json"))
					if err != nil || len(idx.Manifests) != 1 {
						o.err = fmt.Errorf("pulled layout: %v %+v", err, idx)
					} else {
						o.digest = idx.Manifests[0].Digest
					}
				}
				os.RemoveAll(dir)
			}
			l.mu.Lock()
			l.ops = append(l.ops, o)
			l.mu.Unlock()
			select { // leave the machine some room: 2 cores run everything
			case <-ctx.Done():
			case <-time.After(150 * time.Millisecond):
			}
		}
	}()
}

// remove stops entry's worker and waits for its command in flight.
func (l *resizeLoad) remove(entry string) {
	l.mu.Lock()
	w := l.workers[entry]
	delete(l.workers, entry)
	l.mu.Unlock()
	if w != nil {
		w.cancel()
		<-w.done
	}
}

func (l *resizeLoad) stop() {
	l.mu.Lock()
	var entries []string
	for e := range l.workers {
		entries = append(entries, e)
	}
	l.mu.Unlock()
	for _, e := range entries {
		l.remove(e)
	}
}

// verify reads every acknowledged tag (or only tags) through HAProxy and
// every member.
func (l *resizeLoad) verify(t *testing.T, c *cluster, when string, tags ...string) {
	t.Helper()
	l.mu.Lock()
	want := make(map[string]string, len(l.want))
	for k, v := range l.want {
		if _, tag, _ := strings.Cut(k, ":"); len(tags) == 0 || slices.Contains(tags, tag) {
			want[k] = v
		}
	}
	l.mu.Unlock()
	bad := 0
	for _, e := range c.entries() {
		for k, d := range want {
			repo, tag, _ := strings.Cut(k, ":")
			res, err := e.try("GET", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Accept": mtManifest}, nil)
			if err != nil || res.Status != http.StatusOK || sha256Digest(res.Body) != d {
				bad++
				if bad <= 20 {
					t.Errorf("%s: GET %s via %s: %v %v, want digest %s", when, k, c.name(e), res, err, d)
				}
			}
		}
	}
	t.Logf("%s: %d tags read through %d endpoints, %d bad", when, len(want), len(c.entries()), bad)
}
