package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// op is one client command of the failover load.
type op struct {
	kind       string // pull or push
	entry      string // host the client talked to
	repo, tag  string
	start, end time.Time
	err        error
	out        string
	digest     string // pull: what was pulled; push: what was pushed
}

// TestClusterFailover kills -9 one member while crane pulls (and pushes)
// run through HAProxy and through a surviving member, then restarts it.
func TestClusterFailover(t *testing.T) {
	defer timed(t)()
	crane := tool(t, "crane")
	c := startCluster(t, clusterOpts{LB: true})
	env := clientEnv(t)
	work := t.TempDir()
	var tars []string
	for i := 0; i < 8; i++ {
		p := filepath.Join(work, fmt.Sprintf("l%d.tar", i))
		writeLayerTar(t, p, 32<<10+i*40<<10)
		tars = append(tars, p)
	}

	// 12 repositories, their v1 pushed through member 1.
	marks := c.marks()
	var repos []string
	want := map[string]string{} // repo:tag -> digest
	for i := 0; i < 12; i++ {
		repo := fmt.Sprintf("fo/r%02d", i)
		repos = append(repos, repo)
		out := runStdout(t, crane, "append", "--insecure", "--oci-empty-base", "-f", tars[i%len(tars)], "-t", c.Members[0].Host+"/"+repo+":v1")
		_, d, _ := strings.Cut(strings.TrimSpace(out), "@")
		want[repo+":v1"] = d
	}
	time.Sleep(100 * time.Millisecond)
	owner := map[string]string{}
	count := map[string]int{}
	for repo, s := range storedBy(c.requests(t, marks)) {
		if len(s) != 1 {
			t.Fatalf("%s stored by %v before the kill, want one member", repo, s)
		}
		for m := range s {
			owner[repo] = m
			count[m]++
		}
	}
	// The victim is the member owning the most repositories; the client
	// talks to HAProxy and to the first other member ("survivor").
	victim := c.Members[0]
	for _, m := range c.Members {
		if count[m.Host] > count[victim.Host] {
			victim = m
		}
	}
	var survivors []*reg
	for _, m := range c.Members {
		if m != victim {
			survivors = append(survivors, m)
		}
	}
	surv := survivors[0]
	var victimRepos []string
	for _, r := range repos {
		if owner[r] == victim.Host {
			victimRepos = append(victimRepos, r)
		}
	}
	victimName := fmt.Sprintf("m%d", slices.Index(c.Members, victim)+1)
	t.Logf("owners: %v; victim %s (%s) owns %v; clients use HAProxy and %s", count, victimName, victim.Host, victimRepos, surv.Host)

	// Upload sessions that outlive their owner: started on the victim
	// (through HAProxy) before the kill, continued on the member serving
	// in its place during the outage, finished on the victim after its
	// restart. Sessions live in the bucket, so any member can go on.
	var sessions []*session
	for i, repo := range victimRepos {
		if i == 2 {
			break
		}
		sessions = append(sessions, startSession(t, c.LBReg, repo, []int{6<<20 + 123, 3 << 20, 1<<20 + 7}))
	}

	// The load: two pullers through HAProxy, one through the survivor, one
	// pusher alternating between them; each records every command.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	results := make(chan []op, 4)
	puller := func(entry string, seed int) {
		var ops []op
		for i := seed; ctx.Err() == nil; i++ {
			repo := repos[i%len(repos)]
			dir := filepath.Join(work, fmt.Sprintf("pull-%s-%d-%d", entry, seed, i))
			o := op{kind: "pull", entry: entry, repo: repo, tag: "v1", start: time.Now()}
			res := execCmd(context.Background(), env, work, time.Minute, crane, "pull", "--insecure", "--format", "oci", entry+"/"+repo+":v1", dir)
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
			ops = append(ops, o)
		}
		results <- ops
	}
	pusher := func() {
		var ops []op
		for i := 0; ctx.Err() == nil; i++ {
			entry := c.LB.Host
			if i%2 == 1 {
				entry = surv.Host
			}
			repo := repos[(i/2)%len(repos)] // each repository via both entries
			tag := fmt.Sprintf("p%d", i)
			o := op{kind: "push", entry: entry, repo: repo, tag: tag, start: time.Now()}
			res := execCmd(context.Background(), env, work, time.Minute, crane, "append", "--insecure", "--oci-empty-base",
				"-f", tars[i%len(tars)], "-t", entry+"/"+repo+":"+tag)
			o.end, o.err, o.out = time.Now(), res.Err, res.Combined
			if o.err == nil {
				_, o.digest, _ = strings.Cut(strings.TrimSpace(res.Stdout), "@")
			}
			ops = append(ops, o)
		}
		results <- ops
	}
	go puller(c.LB.Host, 0)
	go puller(c.LB.Host, 5)
	go puller(surv.Host, 2)
	go pusher()

	time.Sleep(1500 * time.Millisecond)
	// Watch detection: HAProxy's view and the survivors' logs.
	detected := make(chan map[string]time.Duration, 1)
	killStart := time.Now()
	victim.Kill9()
	killEnd := time.Now()
	go func() {
		got := map[string]time.Duration{}
		for time.Since(killStart) < 25*time.Second && len(got) < 1+len(survivors) {
			if _, ok := got["haproxy"]; !ok {
				if st, err := c.LB.status(); err == nil && strings.HasPrefix(st[victimName], "DOWN") {
					got["haproxy"] = time.Since(killStart)
				}
			}
			for _, s := range survivors {
				if _, ok := got[s.Host]; !ok {
					if up, _ := peerState(s, victim.Host); !up {
						got[s.Host] = time.Since(killStart)
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		detected <- got
	}()
	time.Sleep(5 * time.Second)
	stop()
	var ops []op
	for i := 0; i < 4; i++ {
		ops = append(ops, <-results...)
	}
	det := <-detected
	t.Logf("kill -9 of %s took %s; detection after the kill: %v", victim.Host, killEnd.Sub(killStart), det)
	for _, who := range append([]string{"haproxy"}, survivors[0].Host, survivors[1].Host) {
		if d, ok := det[who]; !ok || d > 20*time.Second {
			t.Errorf("%s did not see %s down within 20s of the kill (after %v)", who, victim.Host, d)
		}
	}

	// Judge every command. A command may fail only if it was running at
	// the moment of the kill AND some request of it could have been on the
	// killed member then: a request in flight on a process that dies gets a
	// reset connection, and neither HAProxy (retries cover only failed
	// connects) nor a forwarding member (which retries only requests whose
	// owner refused the connection) can replay it. A command could have had
	// a request there when it went through HAProxy (round robin spreads its
	// requests over all members) or when its repository is owned by the
	// killed member (a member forwards there). Everything else - every
	// command started after the kill, and every command on the survivor for
	// repositories the victim does not own - must succeed: new connections
	// to the dead member are refused, and HAProxy (retries + redispatch) and
	// the members (mark down, next member) fail over.
	var pulls, pushes, failed, excused int
	for _, o := range ops {
		if o.kind == "pull" {
			pulls++
		} else {
			pushes++
		}
		inFlight := o.start.Before(killEnd) && o.end.After(killStart)
		touches := o.entry == c.LB.Host || owner[o.repo] == victim.Host
		if o.err != nil {
			failed++
			if inFlight && touches {
				excused++
				t.Logf("excused: %s %s/%s:%s via %s (%s - %s, in flight at the kill): %v", o.kind, o.entry, o.repo, o.tag, o.entry,
					o.start.Sub(killStart).Round(time.Millisecond), o.end.Sub(killStart).Round(time.Millisecond), o.err)
				continue
			}
			t.Errorf("%s of %s:%s via %s failed (started %s after the kill, ended %s after; in flight at the kill: %v; may touch the victim: %v): %v\n%s",
				o.kind, o.repo, o.tag, o.entry, o.start.Sub(killStart).Round(time.Millisecond), o.end.Sub(killStart).Round(time.Millisecond),
				inFlight, touches, o.err, tailString(o.out, 10))
			continue
		}
		if o.kind == "pull" && o.digest != want[o.repo+":v1"] {
			t.Errorf("pull of %s:v1 via %s: digest %s, want %s", o.repo, o.entry, o.digest, want[o.repo+":v1"])
		}
		if o.kind == "push" {
			want[o.repo+":"+o.tag] = o.digest
		}
	}
	var after int
	for _, o := range ops {
		if o.start.After(killEnd) {
			after++
		}
	}
	t.Logf("load: %d pulls, %d pushes, %d started after the kill; %d failed, %d of them excused", pulls, pushes, after, failed, excused)
	// For the record: error answers the members gave during the load
	// (clients may have retried them).
	errs := map[string]int{}
	for _, l := range c.requests(t, marks) {
		if l.num("status") >= 500 {
			errs[fmt.Sprintf("%s %s %d owner=%q", l.On, l.str("method"), l.num("status"), l.str("owner"))]++
		}
	}
	t.Logf("5xx answers logged by the survivors during the load: %v", errs)
	// Requests a survivor retried after a failed forward to the dead
	// member: its access line's "owner" must name the member that served
	// the request (the one that logged the req_id without "owner"), or be
	// absent when it served the request itself - not the dead member.
	retried := map[string]string{} // req_id -> member that retried
	for _, m := range survivors {
		for _, l := range m.logSince(t, marks[m.Host]) {
			if l.str("message") == "retrying on the next member" {
				retried[l.str("req_id")] = m.Host
			}
		}
	}
	loadLines := c.requests(t, marks)
	servedBy := map[string]string{}
	for _, l := range loadLines {
		if !l.has("owner") {
			servedBy[l.str("req_id")] = l.On
		}
	}
	for _, l := range loadLines {
		if retried[l.str("req_id")] != l.On || !l.has("owner") {
			continue
		}
		by := servedBy[l.str("req_id")]
		if by == "" && l.str("owner") == l.On {
			continue // served locally and says so
		}
		if l.str("owner") != by {
			if by == "" {
				by = l.On + " itself (no other member logged the req_id)"
			}
			t.Errorf("%s retried %s %s (req_id %s) after failing to reach %s; %s served it, but the access line says owner %q: %v",
				l.On, l.str("method"), l.str("path"), l.str("req_id"), victim.Host, by, l.str("owner"), l.logLine)
		}
	}
	t.Logf("%d requests were retried on the next member after a failed forward", len(retried))

	// The sessions go on through a survivor, from where they stood.
	for _, ss := range sessions {
		ss.next(t, surv)
	}

	// Repositories of the dead member are served by one other member.
	outageMarks := c.marks()
	for i, repo := range victimRepos {
		for _, e := range []*reg{c.LBReg, survivors[0], survivors[1]} {
			ref := e.Host + "/" + repo + ":v1"
			res := execCmd(context.Background(), env, work, time.Minute, crane, "digest", "--insecure", ref)
			if d := strings.TrimSpace(res.Stdout); res.Err != nil || d != want[repo+":v1"] {
				t.Errorf("during the outage, crane digest %s: %q (%v), want %s", ref, d, res.Err, want[repo+":v1"])
			}
		}
		dir := filepath.Join(work, "outage-pull-"+strconv.Itoa(i))
		run(t, crane, "pull", "--insecure", "--format", "oci", survivors[1].Host+"/"+repo+":v1", dir)
		if d := layoutDigest(t, dir, ""); d != want[repo+":v1"] {
			t.Errorf("during the outage, pull of %s:v1 via %s: %s, want %s", repo, survivors[1].Host, d, want[repo+":v1"])
		}
		for j, e := range []*reg{survivors[0], c.LBReg} {
			tag := fmt.Sprintf("outage%d", j)
			out := runStdout(t, crane, "append", "--insecure", "--oci-empty-base", "-f", tars[(i+j)%len(tars)], "-t", e.Host+"/"+repo+":"+tag)
			_, d, _ := strings.Cut(strings.TrimSpace(out), "@")
			want[repo+":"+tag] = d
		}
	}
	time.Sleep(100 * time.Millisecond)
	outageLines := c.requests(t, outageMarks)
	failoverOwner := map[string]string{}
	for _, repo := range victimRepos {
		s := storedBy(outageLines)[repo]
		if len(s) != 1 {
			t.Errorf("during the outage, %s's manifest PUTs were stored by %v, want exactly one member", repo, s)
			continue
		}
		for m, k := range s {
			failoverOwner[repo] = m
			if k != 2 {
				t.Errorf("during the outage, %s stored %d of the 2 manifest PUTs of %s", m, k, repo)
			}
		}
		for _, l := range outageLines {
			if l.str("repo") == repo && l.has("owner") && l.str("owner") != failoverOwner[repo] {
				t.Errorf("during the outage, %s forwarded %s %s to %s, but %s serves it", l.On, l.str("method"), l.str("path"), l.str("owner"), failoverOwner[repo])
			}
		}
	}
	t.Logf("during the outage the victim's repositories were served by %v", failoverOwner)

	// Restart: HAProxy and the survivors see it up, and it owns its
	// repositories again.
	restartAt := time.Now()
	victim.start()
	c.LB.waitStatus(t, map[string]string{"m1": "UP", "m2": "UP", "m3": "UP"}, 10*time.Second)
	c.waitPeersUp(t, nil, 10*time.Second)
	t.Logf("restarted %s; HAProxy and members see it up after %s", victim.Host, time.Since(restartAt).Round(time.Millisecond))
	backMarks := c.marks()
	for i, repo := range victimRepos {
		out := runStdout(t, crane, "append", "--insecure", "--oci-empty-base", "-f", tars[i%len(tars)], "-t", surv.Host+"/"+repo+":back")
		_, d, _ := strings.Cut(strings.TrimSpace(out), "@")
		want[repo+":back"] = d
	}
	time.Sleep(100 * time.Millisecond)
	backLines := c.requests(t, backMarks)
	for _, repo := range victimRepos {
		if s := storedBy(backLines)[repo]; len(s) != 1 || s[victim.Host] != 1 {
			t.Errorf("after the restart, %s's manifest PUT was stored by %v, want its owner %s", repo, s, victim.Host)
		}
		for _, l := range backLines {
			if l.str("repo") == repo && l.On == surv.Host && l.str("owner") != victim.Host {
				t.Errorf("after the restart, %s logged %s %s for %s with owner %q, want %s", surv.Host, l.str("method"), l.str("path"), repo, l.str("owner"), victim.Host)
			}
		}
	}

	// The sessions end on their owner again.
	for _, ss := range sessions {
		ss.next(t, victim)
		ss.finish(t, c.LBReg)
		for _, e := range c.entries() {
			ss.check(t, e)
		}
	}

	// A second outage: what the owner wrote after coming back is what the
	// member standing in for it serves now (no stale state from the first
	// outage).
	//
	// And the first request with a body that a member forwards to the dead
	// owner: the owner refuses the connection, so no byte of it reached
	// anyone and the member can serve it in the owner's place, as it does
	// for requests without a body. Only requests in flight on the dead
	// member may fail. (An upload going on through a member is the case:
	// skopeo does not retry a failed PATCH.)
	late := startSession(t, surv, victimRepos[0], []int{1 << 20, 1 << 20})
	victim.Kill9()
	killedAgain := time.Now()
	chunk := late.data[late.sent:]
	res := surv.do(t, "PATCH", late.path, map[string]string{
		"Content-Type":  "application/octet-stream",
		"Content-Range": fmt.Sprintf("%d-%d", late.sent, len(late.data)-1),
	}, chunk)
	patchAfter := time.Since(killedAgain).Round(time.Millisecond)
	// A GET right after, through the other survivor (which has not tried
	// the dead member yet): it is retried on the next member, and the
	// access line of the forwarding member names who served it.
	other := survivors[1]
	get := other.do(t, "GET", "/v2/"+victimRepos[0]+"/manifests/v1", map[string]string{"Accept": mtManifest}, nil)
	if get.Status != 200 || sha256Digest(get.Body) != want[victimRepos[0]+":v1"] {
		t.Errorf("GET %s:v1 via %s right after its owner was killed: %s", victimRepos[0], other.Host, get)
	}
	time.Sleep(100 * time.Millisecond)
	getID := get.Header.Get("X-Request-Id")
	var getLine logLine
	getServer := ""
	for _, m := range survivors {
		for _, l := range m.logSince(t, 0) {
			if l.str("req_id") != getID || l.str("message") != "request" {
				continue
			}
			if m == other {
				getLine = l
			} else if !l.has("owner") {
				getServer = m.Host
			}
		}
	}
	switch {
	case getLine == nil:
		t.Errorf("no access line on %s for the GET %s", other.Host, getID)
	case getServer == "" && getLine.has("owner") && getLine.str("owner") != other.Host:
		t.Errorf("%s served the GET (req_id %s) itself after failing to reach %s, but its access line says owner %q: %v",
			other.Host, getID, victim.Host, getLine.str("owner"), getLine)
	case getServer != "" && getLine.str("owner") != getServer:
		t.Errorf("%s forwarded the GET (req_id %s) to %s after failing to reach %s, but its access line says owner %q: %v",
			other.Host, getID, getServer, victim.Host, getLine.str("owner"), getLine)
	}
	if res.Status != http.StatusAccepted {
		t.Errorf("PATCH via %s to an upload of %s, %s after its owner %s was killed (nothing in flight there): %s; want 202 from the next member",
			surv.Host, late.repo, patchAfter, victim.Host, res)
		for _, l := range surv.logSince(t, 0) {
			if l.str("req_id") == res.Header.Get("X-Request-Id") {
				t.Logf("%s log: %v", surv.Host, l)
			}
		}
		// Go on as a client would after a while.
		time.Sleep(1100 * time.Millisecond)
		res = surv.do(t, "GET", late.path, nil, nil)
		if res.Status == http.StatusNoContent && res.Header.Get("Range") == fmt.Sprintf("0-%d", late.sent-1) {
			late.path = uploadPath(t, res)
			late.next(t, surv)
		} else {
			t.Fatalf("upload status after the failed PATCH: %s", res)
		}
	} else {
		late.sent = len(late.data)
		late.path = uploadPath(t, res)
	}
	late.finish(t, surv)
	sessions = append(sessions, late)
	for _, e := range append([]*reg{c.LBReg}, survivors...) {
		for _, repo := range victimRepos {
			ref := e.Host + "/" + repo + ":back"
			res := execCmd(context.Background(), env, work, time.Minute, crane, "digest", "--insecure", ref)
			if d := strings.TrimSpace(res.Stdout); res.Err != nil || d != want[repo+":back"] {
				t.Errorf("second outage: crane digest %s: %q (%v), want %s", ref, d, res.Err, want[repo+":back"])
			}
			tags := listTags(t, e, repo)
			for _, tag := range []string{"v1", "outage0", "outage1", "back"} {
				if !slices.Contains(tags, tag) {
					t.Errorf("second outage: tags of %s via %s lack %s: %q", repo, c.name(e), tag, tags)
				}
			}
		}
		for _, ss := range sessions {
			ss.check(t, e)
		}
	}
	victim.start()
	c.LB.waitStatus(t, map[string]string{"m1": "UP", "m2": "UP", "m3": "UP"}, 10*time.Second)
	c.waitPeersUp(t, nil, 10*time.Second)

	// Everything acknowledged - before, during and after the outage - pulls
	// with the same digest from every member and HAProxy, with every blob.
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, e := range c.entries() {
		for _, k := range keys {
			repo, tag, _ := strings.Cut(k, ":")
			res := e.do(t, "GET", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Accept": mtManifest}, nil)
			if res.Status != 200 || sha256Digest(res.Body) != want[k] {
				t.Errorf("GET %s via %s: %d digest %s, want %s", k, c.name(e), res.Status, sha256Digest(res.Body), want[k])
				continue
			}
			var m struct {
				Config struct {
					Digest string `json:"digest"`
					Size   int    `json:"size"`
				} `json:"config"`
				Layers []struct {
					Digest string `json:"digest"`
					Size   int    `json:"size"`
				} `json:"layers"`
			}
			must(t, json.Unmarshal(res.Body, &m))
			for _, b := range append(m.Layers, m.Config) {
				h := e.do(t, "HEAD", "/v2/"+repo+"/blobs/"+b.Digest, nil, nil)
				if h.Status != 200 || h.Header.Get("Content-Length") != strconv.Itoa(b.Size) {
					t.Errorf("HEAD blob %s of %s via %s: %d length %q, want 200 %d", b.Digest, k, c.name(e), h.Status, h.Header.Get("Content-Length"), b.Size)
				}
			}
		}
		// And one full pull per endpoint of something pushed during the outage.
		if len(victimRepos) > 0 {
			ref := e.Host + "/" + victimRepos[0] + ":outage0"
			dir := filepath.Join(t.TempDir(), "final")
			run(t, crane, "pull", "--insecure", "--format", "oci", ref, dir)
			if d := layoutDigest(t, dir, ""); d != want[victimRepos[0]+":outage0"] {
				t.Errorf("pull %s: %s, want %s", ref, d, want[victimRepos[0]+":outage0"])
			}
		}
	}
	t.Logf("%d acknowledged tags verified through %d endpoints", len(keys), len(c.entries()))
	requireStorageOK(t, c.StorageRoot())
}

// session is a chunked blob upload driven by raw HTTP, one chunk per call
// to next, through whichever endpoint the test picks.
type session struct {
	repo   string
	data   []byte
	chunks []int
	sent   int
	path   string // upload URL path (and query) from the last Location
	digest string
}

// startSession POSTs an upload to repo through e and sends the first chunk.
func startSession(t *testing.T, e *reg, repo string, chunks []int) *session {
	t.Helper()
	total := 0
	for _, n := range chunks {
		total += n
	}
	ss := &session{repo: repo, data: randBytes(t, total), chunks: chunks}
	ss.digest = sha256Digest(ss.data)
	res := e.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
	if res.Status != http.StatusAccepted {
		t.Fatalf("POST upload to %s via %s: %s", repo, e.Host, res)
	}
	ss.path = uploadPath(t, res)
	ss.next(t, e)
	return ss
}

// uploadPath is the path and query of a Location header, to be sent to
// any endpoint.
func uploadPath(t *testing.T, res *resp) string {
	t.Helper()
	loc := res.Header.Get("Location")
	if loc == "" {
		t.Fatalf("no Location in %s", res)
	}
	if i := strings.Index(loc, "://"); i >= 0 {
		rest := loc[i+3:]
		if j := strings.Index(rest, "/"); j >= 0 {
			return rest[j:]
		}
	}
	return loc
}

// next checks the upload status through e and sends the next chunk there.
func (ss *session) next(t *testing.T, e *reg) {
	t.Helper()
	if ss.sent > 0 {
		st := e.do(t, "GET", ss.path, nil, nil)
		if st.Status != http.StatusNoContent || st.Header.Get("Range") != fmt.Sprintf("0-%d", ss.sent-1) {
			t.Fatalf("upload %s of %s via %s: status %s, want 204 Range 0-%d", ss.path, ss.repo, e.Host, st, ss.sent-1)
		}
		ss.path = uploadPath(t, st)
	}
	k := 0
	for i, off := 0, 0; i < len(ss.chunks); i++ {
		if off == ss.sent {
			k = i
			break
		}
		off += ss.chunks[i]
	}
	chunk := ss.data[ss.sent : ss.sent+ss.chunks[k]]
	res := e.do(t, "PATCH", ss.path, map[string]string{
		"Content-Type":  "application/octet-stream",
		"Content-Range": fmt.Sprintf("%d-%d", ss.sent, ss.sent+len(chunk)-1),
	}, chunk)
	if res.Status != http.StatusAccepted {
		t.Fatalf("PATCH chunk %d (%d bytes at %d) of %s via %s: %s", k, len(chunk), ss.sent, ss.repo, e.Host, res)
	}
	ss.sent += len(chunk)
	if got := res.Header.Get("Range"); got != fmt.Sprintf("0-%d", ss.sent-1) {
		t.Errorf("PATCH chunk %d of %s via %s: Range %q, want 0-%d", k, ss.repo, e.Host, got, ss.sent-1)
	}
	ss.path = uploadPath(t, res)
}

// finish closes the upload through e.
func (ss *session) finish(t *testing.T, e *reg) {
	t.Helper()
	if ss.sent != len(ss.data) {
		t.Fatalf("finish: %d of %d bytes sent", ss.sent, len(ss.data))
	}
	res := e.do(t, "PUT", withQuery(ss.path, "digest="+ss.digest), nil, nil)
	if res.Status != http.StatusCreated {
		t.Fatalf("closing PUT of the upload to %s via %s: %s", ss.repo, e.Host, res)
	}
}

// check reads the finished blob back through e.
func (ss *session) check(t *testing.T, e *reg) {
	t.Helper()
	res := e.do(t, "GET", "/v2/"+ss.repo+"/blobs/"+ss.digest, nil, nil)
	if res.Status != 200 || sha256Digest(res.Body) != ss.digest {
		t.Errorf("GET blob %s of %s via %s: %d, %d bytes hashing to %s", ss.digest, ss.repo, e.Host, res.Status, len(res.Body), sha256Digest(res.Body))
	}
}
