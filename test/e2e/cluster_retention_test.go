package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// cxAction is one line of `registry gc` output (or JSON action).
type cxAction struct {
	Repo string `json:"repo"`
	Kind string `json:"kind"`
	Ref  string `json:"ref"`
	Size int64  `json:"size"`
}

func (a cxAction) key() string { return a.Repo + " " + a.Kind + " " + a.Ref }

// gcCLI runs `registry gc` with args against the first member's config and
// returns its actions: from --json output, or parsed from the text lines
// ("removed|would remove KIND REPO REF SIZE").
func (c *cluster) cxGC(t *testing.T, args ...string) []cxAction {
	t.Helper()
	out, stderr := c.cxCLI(t, append(append([]string{"gc"}, args...), c.Members[0].cfgPath)...)
	if slices.Contains(args, "--json") {
		var rep struct {
			Repos   int        `json:"repos"`
			Actions []cxAction `json:"actions"`
			Errors  []string   `json:"errors"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("registry gc %v: output is not JSON: %v\n%s", args, err, out)
		}
		if len(rep.Errors) > 0 {
			t.Errorf("registry gc %v: errors %v", args, rep.Errors)
		}
		return rep.Actions
	}
	verb := "removed "
	if slices.Contains(args, "--dry-run") {
		verb = "would remove "
	}
	var acts []cxAction
	summary := false
	for _, l := range lines(out) {
		rest, ok := strings.CutPrefix(l, verb)
		if !ok {
			if strings.Contains(l, " repositories, ") && strings.Contains(l, " objects, ") {
				summary = true
				continue
			}
			t.Errorf("registry gc %v: unexpected output line %q", args, l)
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 4 {
			t.Errorf("registry gc %v: bad line %q", args, l)
			continue
		}
		var n int64
		fmt.Sscan(f[3], &n)
		acts = append(acts, cxAction{Kind: f[0], Repo: f[1], Ref: f[2], Size: n})
	}
	if !summary {
		t.Errorf("registry gc %v: no summary line in\n%s", args, out)
	}
	if !strings.Contains(stderr, "] ") {
		t.Errorf("registry gc %v: no progress lines on stderr: %q", args, stderr)
	}
	return acts
}

func cxActionSet(acts []cxAction) map[string]cxAction {
	out := map[string]cxAction{}
	for _, a := range acts {
		out[a.key()] = a
	}
	return out
}

// cxRetCase is one retention case: one repository, tags pushed in rounds
// (one round per second, so push times differ in S3's one-second
// resolution), the tags pulled (in order) and the tags that must survive.
type cxRetCase struct {
	name     string
	repo     string
	policy   map[string]any
	rounds   [][]string // tags pushed per round
	pulls    []string
	untagged int // manifests pushed by digest only
	survive  []string
	// keepManifests: manifests the retention removed a tag from stay
	// (deleteUntagged false).
	keepManifests bool
}

// TestClusterRetention runs a table of retention policies (one config, one
// policy per glob) over a cluster with periodic collection off, and
// collects with `registry gc CONFIG` beside the servers. Pulls go through
// every member and HAProxy; pull times reach metadata in batches, so the
// owners of the pulled repositories are restarted gracefully (SIGTERM
// flushes them) before the pass. A dry run first prints exactly what the
// real run then removes (also for one repository with --repo); afterwards
// every member serves exactly the surviving tags with their digests. Last,
// a blob younger than gcDelay survives a pass.
func TestClusterRetention(t *testing.T) {
	defer timed(t)()
	cases := []cxRetCase{
		{name: "keep last 2 pushed", repo: "ret/lastn/team/app",
			policy: map[string]any{"keepTags": []map[string]any{{"mostRecentlyPushedCount": 2}}},
			rounds: [][]string{{"t1"}, {"t2"}, {"t3"}, {"t4"}}, survive: []string{"t3", "t4"}},
		{name: "keep tags matching patterns", repo: "ret/pattern/app",
			policy: map[string]any{"keepTags": []map[string]any{{"patterns": []string{`v[0-9]+\.[0-9]+`, "release-.*"}}}},
			rounds: [][]string{{"v1.0", "v2.1", "release-x", "dev", "latest", "v1", "xv1.0"}}, survive: []string{"release-x", "v1.0", "v2.1"}},
		{name: "keep pulled within 1h", repo: "ret/pulled/app",
			policy: map[string]any{"keepTags": []map[string]any{{"pulledWithin": "1h"}}},
			rounds: [][]string{{"p1", "p2", "p3", "p4"}}, pulls: []string{"p1", "p3"}, survive: []string{"p1", "p3"}},
		{name: "keep 2 most recently pulled", repo: "ret/mostpulled/app",
			policy: map[string]any{"keepTags": []map[string]any{{"mostRecentlyPulledCount": 2}}},
			rounds: [][]string{{"q1", "q2", "q3", "q4"}}, pulls: []string{"q2", "q4", "q3", "q1"}, survive: []string{"q1", "q3"}},
		{name: "pattern rules with different criteria", repo: "ret/mixed/app",
			policy: map[string]any{"keepTags": []map[string]any{
				{"patterns": []string{"prod-.*"}, "pulledWithin": "1h"},
				{"patterns": []string{"dev-.*"}, "mostRecentlyPushedCount": 1},
				{"patterns": []string{"stable"}}}},
			rounds: [][]string{{"prod-1", "dev-1", "stable"}, {"prod-2", "dev-2", "other"}}, pulls: []string{"prod-1"},
			survive: []string{"dev-2", "prod-1", "stable"}},
		{name: "a tag any rule keeps stays", repo: "ret/overlap/app",
			policy: map[string]any{"keepTags": []map[string]any{
				{"patterns": []string{"v.*"}, "mostRecentlyPushedCount": 1},
				{"pushedWithin": "1h"}}},
			rounds: [][]string{{"v1"}, {"v2", "latest"}}, survive: []string{"latest", "v1", "v2"}},
		{name: "deleteUntagged false keeps the manifests", repo: "ret/keepuntagged/app",
			policy: map[string]any{"deleteUntagged": false, "keepTags": []map[string]any{{"patterns": []string{"v.*"}}}},
			rounds: [][]string{{"v1", "x1"}}, untagged: 1, survive: []string{"v1"}, keepManifests: true},
		{name: "no policy: every tag stays, untagged manifests go", repo: "ret-none/app",
			rounds: [][]string{{"a", "b"}}, untagged: 1, survive: []string{"a", "b"}},
	}
	var policies []map[string]any
	for _, tc := range cases {
		if tc.policy == nil {
			continue
		}
		// One policy per case: "ret/<case>/**" (the repositories sit deeper).
		seg := strings.Split(tc.repo, "/")
		p := map[string]any{"repositories": []string{seg[0] + "/" + seg[1] + "/**"}}
		for k, v := range tc.policy {
			p[k] = v
		}
		policies = append(policies, p)
	}
	c := startCluster(t, clusterOpts{LB: true, Storage: map[string]any{
		"gcDelay": "1s", "gcInterval": "0s",
		"retention": map[string]any{"policies": policies},
	}})
	entries := c.entries()

	// Push in rounds a second apart; each tag its own image.
	imgs := map[string]*cxImg{} // repo:tag -> image
	untagged := map[string][]*cxImg{}
	maxRounds := 0
	for _, tc := range cases {
		maxRounds = max(maxRounds, len(tc.rounds))
	}
	for r := 0; r < maxRounds; r++ {
		if r > 0 {
			time.Sleep(1100 * time.Millisecond)
		}
		for i, tc := range cases {
			if r >= len(tc.rounds) {
				continue
			}
			for j, tag := range tc.rounds[r] {
				img := cxImage(tc.repo+":"+tag, cxLayer(t, 1024+j))
				img.push(t, entries[(i+j+r)%len(entries)], tc.repo, tag)
				imgs[tc.repo+":"+tag] = img
			}
		}
	}
	for i, tc := range cases {
		for k := 0; k < tc.untagged; k++ {
			img := cxImage(tc.repo+"@untagged", cxLayer(t, 900))
			img.push(t, entries[i%len(entries)], tc.repo, img.Digest)
			untagged[tc.repo] = append(untagged[tc.repo], img)
		}
	}
	// Pulls through rotating entries, a few milliseconds apart (pull times
	// are kept to the millisecond).
	pulled := map[string]bool{}
	for i, tc := range cases {
		for j, tag := range tc.pulls {
			time.Sleep(20 * time.Millisecond)
			e := entries[(i+j)%len(entries)]
			res := e.do(t, "GET", "/v2/"+tc.repo+"/manifests/"+tag, map[string]string{"Accept": syncAccept}, nil)
			if res.Status != 200 || sha256Digest(res.Body) != imgs[tc.repo+":"+tag].Digest {
				t.Fatalf("pull %s:%s via %s: %s", tc.repo, tag, c.name(e), res)
			}
			pulled[tc.repo] = true
		}
	}
	// The owners of pulled repositories flush their pulls when stopped.
	restart := map[string]bool{}
	for repo := range pulled {
		restart[c.cxOwner(t, repo)] = true
	}
	for _, h := range cxKeys(restart) {
		m := c.member(h)
		m.terminate(t, 30*time.Second)
		if cxDynaliteDied(200 * time.Millisecond) {
			t.Fatalf("dynalite died (ECONNRESET on an aborted request) when %s exited on SIGTERM: the member quit with DynamoDB writes in flight, i.e. before its pull times were flushed", h)
		}
		m.start()
	}
	c.waitPeersUp(t, nil, 10*time.Second)
	c.LB.waitStatus(t, map[string]string{"m1": "UP", "m2": "UP", "m3": "UP"}, 10*time.Second)
	time.Sleep(1100 * time.Millisecond) // everything is older than gcDelay

	// Expected removals: the tags outside retention, then the manifests
	// (and their blobs) nothing keeps.
	wantTags := map[string]bool{}
	wantMans := map[string]bool{}
	for _, tc := range cases {
		var all []string
		for _, r := range tc.rounds {
			all = append(all, r...)
		}
		for _, tag := range all {
			if !slices.Contains(tc.survive, tag) {
				wantTags[tc.repo+" tag "+tag] = true
				if !tc.keepManifests {
					wantMans[tc.repo+" manifest "+imgs[tc.repo+":"+tag].Digest] = true
				}
			}
		}
		for _, u := range untagged[tc.repo] {
			if !tc.keepManifests {
				wantMans[tc.repo+" manifest "+u.Digest] = true
			}
		}
	}

	var dry, dryOne, real []cxAction
	t.Run("dry run prints what the real run removes", func(t *testing.T) {
		dry = c.cxGC(t, "--dry-run")
		dryOne = c.cxGC(t, "--dry-run", "--json", "--repo", cases[1].repo)
		// Nothing changed.
		if again := c.cxGC(t, "--dry-run", "--json"); cxSetDiff(cxActionSet(dry), cxActionSet(again)) != "" {
			t.Errorf("a second dry run differs: %s", cxSetDiff(cxActionSet(dry), cxActionSet(again)))
		}
		real = c.cxGC(t, "--json")
		if d := cxSetDiff(cxActionSet(dry), cxActionSet(real)); d != "" {
			t.Errorf("dry run vs real run: the real run %s", strings.NewReplacer("missing", "did not remove", "unexpected", "also removed").Replace(d))
		}
		for k, a := range cxActionSet(dry) {
			if r, ok := cxActionSet(real)[k]; ok && r.Size != a.Size {
				t.Errorf("%s: dry run says %d bytes, real run %d", k, a.Size, r.Size)
			}
		}
		one := map[string]cxAction{}
		for k, a := range cxActionSet(real) {
			if a.Repo == cases[1].repo {
				one[k] = a
			}
		}
		if d := cxSetDiff(one, cxActionSet(dryOne)); d != "" || len(one) == 0 {
			t.Errorf("dry run --repo %s vs the real run's actions on it (%d): %s", cases[1].repo, len(one), d)
		}
		if again := c.cxGC(t, "--dry-run", "--json"); len(again) != 0 {
			t.Errorf("a dry run after the real run still finds %d actions: %v", len(again), again)
		}
		t.Logf("dry run: %d actions, real run: %d, --repo %s: %d", len(dry), len(real), cases[1].repo, len(dryOne))
	})

	t.Run("survivors", func(t *testing.T) {
		got := map[string]bool{}
		for _, a := range real {
			if a.Kind == "tag" || a.Kind == "manifest" {
				got[a.key()] = true
			}
		}
		want := map[string]bool{}
		for k := range wantTags {
			want[k] = true
		}
		for k := range wantMans {
			want[k] = true
		}
		if d := cxSetDiff(want, got); d != "" {
			t.Errorf("tags and manifests removed: %s", d)
		}
		for _, tc := range cases {
			for _, tag := range tc.pulls {
				if slices.Contains(tc.survive, tag) && got[tc.repo+" tag "+tag] {
					t.Errorf("%s: %s:%s was pulled through the cluster, its owner %s then stopped with SIGTERM and restarted, yet the pass removed the tag as not pulled: the pull time never reached metadata",
						tc.name, tc.repo, tag, c.cxOwner(t, tc.repo))
				}
			}
		}
		for _, tc := range cases {
			for _, e := range entries {
				tags := cxTags(t, e, tc.repo)
				if !slices.Equal(tags, tc.survive) {
					t.Errorf("%s: tags via %s %q, want %q", tc.name, c.name(e), tags, tc.survive)
				}
				for _, tag := range tc.survive {
					if !slices.Contains(tags, tag) {
						continue // reported above
					}
					want := imgs[tc.repo+":"+tag]
					res := e.do(t, "GET", "/v2/"+tc.repo+"/manifests/"+tag, map[string]string{"Accept": syncAccept}, nil)
					if res.Status != 200 || sha256Digest(res.Body) != want.Digest {
						t.Errorf("%s: GET %s:%s via %s: %d digest %s, want %s", tc.name, tc.repo, tag, c.name(e), res.Status, sha256Digest(res.Body), want.Digest)
					}
					for d := range want.Blobs() {
						if res := e.do(t, "HEAD", "/v2/"+tc.repo+"/blobs/"+d, nil, nil); res.Status != 200 {
							t.Errorf("%s: blob %s of %s:%s via %s: %d", tc.name, d, tc.repo, tag, c.name(e), res.Status)
						}
					}
				}
			}
			// Removed manifests answer 404; kept ones (deleteUntagged false) 200.
			for k := range imgs {
				repo, tag, _ := strings.Cut(k, ":")
				if repo != tc.repo || slices.Contains(tc.survive, tag) {
					continue
				}
				res := c.LBReg.do(t, "GET", "/v2/"+repo+"/manifests/"+imgs[k].Digest, map[string]string{"Accept": syncAccept}, nil)
				if want := map[bool]int{true: 200, false: 404}[tc.keepManifests]; res.Status != want {
					t.Errorf("%s: manifest of the removed tag %s: %d, want %d", tc.name, k, res.Status, want)
				}
			}
		}
		requireStorageOK(t, c.StorageRoot())
	})

	// A blob younger than gcDelay (1s) is not a candidate: upload one late
	// in a second (S3 keeps times to the second) and collect at once.
	t.Run("young blob survives", func(t *testing.T) {
		const repo = "ret-young/app"
		img := cxImage("young", cxLayer(t, 2048))
		img.push(t, c.LBReg, repo, "v1")
		// Upload late in a second, then collect just after the next one
		// starts: the blob is ~0.15s old, its stored time (whole seconds)
		// up to ~0.95s older.
		var blob []byte
		var uploaded time.Time
		for try := 0; ; try++ {
			for ns := time.Now().Nanosecond(); ns < 880e6 || ns > 920e6; ns = time.Now().Nanosecond() {
				time.Sleep(2 * time.Millisecond)
			}
			blob = randBytes(t, 4096)
			c.LBReg.pushBlob(t, repo, blob)
			uploaded = time.Now()
			if uploaded.Nanosecond() > 880e6 || try == 5 {
				break // acknowledged within the same second
			}
		}
		time.Sleep(time.Duration(1e9-uploaded.Nanosecond()) + 30*time.Millisecond)
		acts := c.cxGC(t, "--json", "--repo", repo)
		age := time.Since(uploaded)
		if age >= time.Second {
			t.Logf("the pass ended %s after the upload, beyond gcDelay: nothing to conclude", age)
			return
		}
		for _, a := range acts {
			if a.Ref == sha256Digest(blob) {
				t.Errorf("registry gc removed blob %s of %s at most %s after its upload was acknowledged (uploaded at %s), with gcDelay 1s: %v",
					a.Ref, repo, age.Round(time.Millisecond), uploaded.Format("15:04:05.000"), a)
			}
		}
		if res := c.LBReg.do(t, "HEAD", "/v2/"+repo+"/blobs/"+sha256Digest(blob), nil, nil); res.Status != 200 {
			t.Errorf("blob uploaded %s before a pass with gcDelay 1s: HEAD %d", age.Round(time.Millisecond), res.Status)
		}
	})
}
