package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// passRepoSum adds up the repos of m's pass lines in the first limit
// bytes of its log.
func cxPassRepoSum(t *testing.T, m *reg, limit int64) int {
	t.Helper()
	b, err := os.ReadFile(m.LogPath)
	must(t, err)
	if int64(len(b)) > limit {
		b = b[:limit]
	}
	n := 0
	for _, ln := range strings.Split(string(b), "\n") {
		var l logLine
		if json.Unmarshal([]byte(ln), &l) == nil && l.str("message") == "garbage collection pass" {
			n += l.num("repos")
		}
	}
	return n
}

// remoteExp reads repo:tag's manifest through e and returns what it
// references.
func cxRemoteExp(t *testing.T, e *reg, repo, tag string) cxExp {
	t.Helper()
	res := e.do(t, "GET", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Accept": syncAccept}, nil)
	if res.Status != 200 {
		t.Fatalf("GET %s:%s: %s", repo, tag, res)
	}
	var m struct {
		Config cxDesc   `json:"config"`
		Layers []cxDesc `json:"layers"`
	}
	must(t, json.Unmarshal(res.Body, &m))
	x := cxExp{name: repo + ":" + tag, digest: sha256Digest(res.Body), blobs: map[string]int64{sha256Digest(res.Body): int64(len(res.Body))}}
	x.manifests = []string{x.digest}
	for _, d := range append(m.Layers, m.Config) {
		x.blobs[d.Digest] = int64(d.Size)
	}
	return x
}

// cxStressTag is the last acknowledged state of one tag of TestClusterGCStress.
type cxStressTag struct {
	digest string // "" after an acknowledged untag
	blobs  map[string]int64
	by     string // which client and op
}

// cxStressStats counts what the stress clients did.
type cxStressStats struct {
	mu       sync.Mutex
	attempts map[string]int // op -> attempts
	acked    map[string]int // op -> acknowledged
	failures map[string]int // op + error code -> failures a client retried
	gaveUp   int
}

func (s *cxStressStats) add(m map[string]int, k string) {
	s.mu.Lock()
	m[k]++
	s.mu.Unlock()
}

// TestClusterGCStress runs clients that push images reusing a pool of
// layers (HEAD then skip, as real clients do, sometimes pausing between
// the HEAD and the manifest, sometimes mounting from another repository),
// retag earlier manifests and untag, through every member and HAProxy,
// while every member collects every 200ms with gcDelay 1ms; crane pushes
// reusing the same layer tars run beside them. A push may be refused while
// a collection races it (the client retries, counted); afterwards every
// acknowledged tag not moved since pulls through every member and HAProxy
// with its digest and every blob, and crane validates a sample.
func TestClusterGCStress(t *testing.T) {
	defer timed(t)()
	crane := tool(t, "crane")
	c := startCluster(t, clusterOpts{LB: true, Storage: map[string]any{"gcDelay": "1ms", "gcInterval": "200ms"}})
	entries := c.entries()
	const (
		clients   = 4
		repos     = 6
		tagsEach  = 3
		maxPushes = 500
		maxTime   = 30 * time.Second
	)
	pool := make([][]byte, 8)
	for i := range pool {
		pool[i] = cxLayer(t, 2<<10+i*700)
	}
	work := t.TempDir()
	var tars []string
	for i := 0; i < 4; i++ {
		p := filepath.Join(work, fmt.Sprintf("t%d.tar", i))
		writeLayerTar(t, p, 8<<10+i*1024)
		tars = append(tars, p)
	}
	env := clientEnv(t)

	st := &cxStressStats{attempts: map[string]int{}, acked: map[string]int{}, failures: map[string]int{}}
	var (
		mu     sync.Mutex
		final  = map[string]cxStressTag{} // repo:tag -> last acknowledged state
		pushes atomic.Int64
	)
	deadline := time.Now().Add(maxTime)
	done := func() bool { return pushes.Load() >= maxPushes || time.Now().After(deadline) }
	var wg sync.WaitGroup
	for g := 0; g < clients; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			type pushed struct {
				repo string
				img  *cxImg
			}
			var history []pushed
			for n := 0; !done(); n++ {
				repo := fmt.Sprintf("stress/r%d", rng.IntN(repos))
				tag := fmt.Sprintf("g%d-t%d", g, rng.IntN(tagsEach))
				e := entries[rng.IntN(len(entries))]
				key := repo + ":" + tag
				roll := rng.IntN(100)
				var op string
				var img *cxImg
				switch {
				case roll < 15:
					op = "untag"
				case roll < 30 && len(history) > 0:
					op = "retag" // an earlier manifest, maybe collected since
					h := history[rng.IntN(len(history))]
					repo, key, img = h.repo, h.repo+":"+tag, h.img
				case roll < 40:
					op = "mount"
				default:
					op = "push"
				}
				if img == nil {
					a, b := rng.IntN(len(pool)), rng.IntN(len(pool))
					img = cxImage(fmt.Sprintf("g%d-%d", g, n), pool[a], pool[b])
				}
				st.add(st.attempts, op)
				var err error
				for try := 0; try < 6; try++ {
					switch op {
					case "untag":
						var res *resp
						res, err = e.try("DELETE", "/v2/"+repo+"/manifests/"+tag, nil, nil)
						if err == nil && res.Status != http.StatusAccepted && res.Status != http.StatusNotFound {
							err = &cxStatusError{"DELETE tag", res}
						}
					case "retag":
						// First the manifest alone, as a client copying a known
						// image would; if its blobs went, push it all again.
						var res *resp
						res, err = e.try("PUT", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Content-Type": img.MediaType}, img.Manifest)
						if err == nil && res.Status != http.StatusCreated {
							err = &cxStatusError{"PUT manifest", res}
						}
						if err != nil {
							st.add(st.failures, op+" manifest-only "+cxErrCode(err))
							err = cxStressPush(e, repo, tag, img, rng, "")
						}
					case "mount":
						from := fmt.Sprintf("stress/r%d", rng.IntN(repos))
						err = cxStressPush(e, repo, tag, img, rng, from)
					default:
						err = cxStressPush(e, repo, tag, img, rng, "")
					}
					if err == nil {
						break
					}
					st.add(st.failures, op+" "+cxErrCode(err))
					time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
				}
				if err != nil {
					st.mu.Lock()
					st.gaveUp++
					st.mu.Unlock()
					t.Errorf("client %d: %s %s via %s failed 6 times, last: %v", g, op, key, e.Host, err)
					continue
				}
				st.add(st.acked, op)
				mu.Lock()
				if op == "untag" {
					final[key] = cxStressTag{by: fmt.Sprintf("client %d untag", g)}
				} else {
					final[key] = cxStressTag{digest: img.Digest, blobs: img.Blobs(), by: fmt.Sprintf("client %d %s via %s", g, op, c.name(e))}
					history = append(history, pushed{repo, img})
					pushes.Add(1)
				}
				mu.Unlock()
			}
		}()
	}
	// crane: the same layer tars again and again through HAProxy.
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := mrand.New(mrand.NewPCG(99, uint64(time.Now().UnixNano())))
		for n := 0; !done(); n++ {
			repo := fmt.Sprintf("stress/crane%d", rng.IntN(2))
			tag := fmt.Sprintf("c-t%d", rng.IntN(tagsEach))
			a, b := rng.IntN(len(tars)), rng.IntN(len(tars))
			ref := c.LBReg.Host + "/" + repo + ":" + tag
			st.add(st.attempts, "crane")
			var res cmdResult
			for try := 0; try < 6; try++ {
				res = execCmd(context.Background(), env, work, time.Minute, crane, "append", "--insecure", "--oci-empty-base", "-f", tars[a], "-f", tars[b], "-t", ref)
				if res.Err == nil {
					break
				}
				code := "other"
				for _, k := range []string{"MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN", "BLOB_UPLOAD_UNKNOWN", "MANIFEST_UNKNOWN"} {
					if strings.Contains(res.Combined, k) {
						code = k
						break
					}
				}
				st.add(st.failures, "crane "+code)
			}
			if res.Err != nil {
				t.Errorf("crane append %s failed 6 times, last: %v\n%s", ref, res.Err, res.Combined)
				continue
			}
			_, d, _ := strings.Cut(strings.TrimSpace(res.Stdout), "@")
			st.add(st.acked, "crane")
			mu.Lock()
			final[repo+":"+tag] = cxStressTag{digest: d, by: "crane " + strings.Join([]string{filepath.Base(tars[a]), filepath.Base(tars[b])}, "+")}
			pushes.Add(1)
			mu.Unlock()
		}
	}()
	start := time.Now()
	wg.Wait()
	ran := time.Since(start)

	// Let collections run on what is left, then verify.
	time.Sleep(1 * time.Second)
	removed := c.cxMetrics(t, "berth_gc_removed_total", `kind="blob"`)
	mans := c.cxMetrics(t, "berth_gc_removed_total", `kind="manifest"`)
	passes := c.cxMetrics(t, "berth_gc_pass_duration_seconds_count")
	present, gone, blobsChecked := 0, 0, 0
	for _, key := range cxKeys(final) {
		f := final[key]
		repo, tag, _ := strings.Cut(key, ":")
		for i, e := range entries {
			res := e.do(t, "GET", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Accept": syncAccept}, nil)
			if f.digest == "" {
				if res.Status != http.StatusNotFound {
					t.Errorf("%s (untagged by %s) via %s: %d, want 404", key, f.by, c.name(e), res.Status)
				}
				continue
			}
			if res.Status != 200 || sha256Digest(res.Body) != f.digest {
				t.Errorf("ACKNOWLEDGED %s = %s (%s) via %s: %d digest %s: %s", key, f.digest, f.by, c.name(e), res.Status, sha256Digest(res.Body), res)
				continue
			}
			blobs := f.blobs
			if blobs == nil { // crane: read from the manifest
				blobs = cxRemoteExp(t, e, repo, tag).blobs
			}
			for d, n := range blobs {
				if d == f.digest {
					continue
				}
				blobsChecked++
				res := e.do(t, "GET", "/v2/"+repo+"/blobs/"+d, nil, nil)
				if res.Status != 200 || sha256Digest(res.Body) != d || int64(len(res.Body)) != n {
					t.Errorf("ACKNOWLEDGED %s (%s): blob %s via %s: %d, %d bytes hashing to %s", key, f.by, d, c.name(e), res.Status, len(res.Body), sha256Digest(res.Body))
				}
			}
			if i == (present%len(entries)) && present%5 == 0 {
				out := execCmd(context.Background(), env, work, time.Minute, crane, "validate", "--insecure", "--remote", e.Host+"/"+key)
				if out.Err != nil {
					t.Errorf("crane validate --remote %s via %s: %v\n%s", key, c.name(e), out.Err, out.Combined)
				}
			}
		}
		if f.digest == "" {
			gone++
		} else {
			present++
		}
	}
	st.mu.Lock()
	t.Logf("ran %s: attempts %v, acknowledged %v (%d pushes), retried failures %v, gave up %d",
		ran.Round(time.Millisecond), st.attempts, st.acked, pushes.Load(), st.failures, st.gaveUp)
	st.mu.Unlock()
	t.Logf("verified %d tags present (%d blob reads through %d endpoints) and %d untagged; collected: blobs %v, manifests %v, passes %v",
		present, blobsChecked, len(entries), gone, removed, mans, passes)
	if pushes.Load() < 100 {
		t.Errorf("only %d acknowledged pushes in %s: too few to exercise the race", pushes.Load(), ran)
	}
	if cxSum(removed) == 0 || cxSum(mans) == 0 {
		t.Errorf("the collectors removed nothing (blobs %v, manifests %v): the stress did not race collection", removed, mans)
	}
	requireStorageOK(t, c.StorageRoot())
}

// stressPush pushes img to repo:tag through e like a client: each blob is
// HEADed and skipped when present (mounted from `from` when set), with a
// random pause before the manifest to widen the race with collection.
func cxStressPush(e *reg, repo, tag string, img *cxImg, rng *mrand.Rand, from string) error {
	blobs := append([][]byte{img.Config}, img.Layers...)
	for _, b := range blobs {
		d := sha256Digest(b)
		res, err := e.try("HEAD", "/v2/"+repo+"/blobs/"+d, nil, nil)
		if err != nil {
			return err
		}
		if res.Status == http.StatusOK {
			continue
		}
		if from != "" && from != repo {
			res, err := e.try("POST", "/v2/"+repo+"/blobs/uploads/?mount="+d+"&from="+from, nil, nil)
			if err != nil {
				return err
			}
			if res.Status == http.StatusCreated {
				continue
			}
			if res.Status != http.StatusAccepted {
				return &cxStatusError{"POST mount", res}
			}
			// Not mounted: a session was started; finish it with the blob.
			if err := cxFinishUpload(e, res, b); err != nil {
				return err
			}
			continue
		}
		if err := cxUpload(e, repo, b, false); err != nil {
			return err
		}
	}
	if rng.IntN(4) == 0 {
		time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
	}
	return img.putManifest(e, repo, tag)
}

// errCode names an error for the failure counts: its OCI code and status.
func cxErrCode(err error) string {
	if se, ok := err.(*cxStatusError); ok {
		return fmt.Sprintf("%s:%d:%s", se.What, se.Res.Status, se.code())
	}
	return "transport"
}

// ddbDied reports whether the shared dynalite exits within d (it dies on
// a request aborted mid-body).
func cxDynaliteDied(d time.Duration) bool {
	time.Sleep(d)
	s := &sharedServers
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ddb != nil && s.ddb.Exited()
}
