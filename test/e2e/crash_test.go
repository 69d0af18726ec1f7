package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCrashSafety kills the registry with SIGKILL in the middle of work
// and checks that, after a restart, everything acknowledged is intact and
// nothing partial is visible.
func TestCrashSafety(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be string) {
		t.Run("upload", func(t *testing.T) { testCrashUpload(t, be) })
		t.Run("crane-pushes", func(t *testing.T) { testCrashCranePushes(t, be) })
		t.Run("manifest-puts", func(t *testing.T) { testCrashManifestPuts(t, be) })
	})
}

// killingReader serves data and, once killAt bytes were handed out, kills
// the registry (waiting for it to be gone) and fails the body.
type killingReader struct {
	data   []byte
	off    int
	killAt int
	kill   func()
}

func (k *killingReader) Read(p []byte) (int, error) {
	if k.off >= k.killAt {
		k.kill()
		return 0, errors.New("registry killed on purpose")
	}
	n := copy(p, k.data[k.off:min(k.killAt, len(k.data))])
	k.off += n
	return n, nil
}

func testCrashUpload(t *testing.T, be string) {
	defer timed(t)()
	r := startRegistry(t, regOpts{Backend: be})
	const repo = "crash/upload"
	const size = 256 << 20
	data := make([]byte, size)
	seed := [32]byte{1, 2, 3}
	_, _ = rand.NewChaCha8(seed).Read(data)
	sum := sha256.Sum256(data)
	dgst := "sha256:" + hex.EncodeToString(sum[:])
	blobPath := filepath.Join(r.StorageRoot(), repo, "blobs", "sha256", hex.EncodeToString(sum[:]))

	res := r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
	if res.Status != http.StatusAccepted {
		t.Fatalf("POST upload: %s", res)
	}
	upload := r.location(t, res)
	killAt := 64<<20 + rand.IntN(128<<20)
	body := &killingReader{data: data, killAt: killAt, kill: r.Kill9}
	req, err := http.NewRequest("PATCH", upload, io.NopCloser(body)) // no length: a streamed PATCH
	must(t, err)
	req.Header.Set("Content-Type", "application/octet-stream")
	hres, err := (&http.Client{Timeout: 5 * time.Minute}).Do(req)
	if err == nil {
		b, _ := io.ReadAll(hres.Body)
		hres.Body.Close()
		t.Fatalf("streamed PATCH cut at %d bytes answered %d %s; want a broken connection", killAt, hres.StatusCode, b)
	}
	sent := body.off
	t.Logf("killed the registry after %d MiB of a 256 MiB streamed PATCH (%v)", sent>>20, err)

	if _, err := os.Stat(blobPath); !os.IsNotExist(err) {
		t.Errorf("after the kill, the blob file exists: %v", err)
	}
	requireStorageOK(t, r.StorageRoot())

	r.Restart()
	if res := r.do(t, "HEAD", "/v2/"+repo+"/blobs/"+dgst, nil, nil); res.Status != 404 {
		t.Errorf("HEAD of the unfinished blob after restart: %d, want 404", res.Status)
	}
	st := r.do(t, "GET", upload, nil, nil)
	if st.Status != http.StatusNoContent {
		t.Fatalf("upload status after restart: %s, want 204", st)
	}
	offset := parseRangeEnd(t, st.Header.Get("Range"))
	t.Logf("upload status after restart: Range %q (%d of %d bytes sent survived)", st.Header.Get("Range"), offset, sent)
	if offset > int64(sent) {
		t.Fatalf("upload claims %d bytes, only %d were sent", offset, sent)
	}
	upload = r.location(t, st)

	// Finish from the reported offset: one PATCH with the rest, then PUT.
	rest := data[offset:]
	res = r.do(t, "PATCH", upload, map[string]string{
		"Content-Type":  "application/octet-stream",
		"Content-Range": fmt.Sprintf("%d-%d", offset, size-1),
	}, rest)
	if res.Status != http.StatusAccepted {
		t.Fatalf("PATCH of the remaining %d bytes: %s", len(rest), res)
	}
	if got := res.Header.Get("Range"); got != fmt.Sprintf("0-%d", size-1) {
		t.Errorf("Range after the last chunk %q, want 0-%d", got, size-1)
	}
	if res := r.do(t, "HEAD", "/v2/"+repo+"/blobs/"+dgst, nil, nil); res.Status != 404 {
		t.Errorf("HEAD before the closing PUT: %d, want 404", res.Status)
	}
	res = r.do(t, "PUT", withQuery(r.location(t, res), "digest="+dgst), nil, nil)
	if res.Status != http.StatusCreated {
		t.Fatalf("closing PUT: %s", res)
	}
	head := r.do(t, "HEAD", "/v2/"+repo+"/blobs/"+dgst, nil, nil)
	if head.Status != 200 || head.Header.Get("Content-Length") != strconv.Itoa(size) {
		t.Errorf("HEAD finished blob: %s", head)
	}
	hr, err := http.Get(r.URL + "/v2/" + repo + "/blobs/" + dgst)
	must(t, err)
	h := sha256.New()
	n, err := io.Copy(h, hr.Body)
	hr.Body.Close()
	if err != nil || n != size || "sha256:"+hex.EncodeToString(h.Sum(nil)) != dgst {
		t.Errorf("GET finished blob: %d bytes, err %v, digest %x", n, err, h.Sum(nil))
	}
	if blobs := requireStorageOK(t, r.StorageRoot()); blobs != 1 {
		t.Errorf("storage holds %d blob files, want exactly the one finished blob", blobs)
	}
}

// parseRangeEnd turns an upload Range header "0-E" into the byte count.
// "0-0" is ambiguous (0 or 1 byte); it is read as 0.
func parseRangeEnd(t *testing.T, h string) int64 {
	t.Helper()
	a, b, ok := strings.Cut(strings.TrimPrefix(h, "bytes="), "-")
	end, err := strconv.ParseInt(b, 10, 64)
	if !ok || a != "0" || err != nil || end < 0 {
		t.Fatalf("bad upload Range header %q", h)
	}
	if end == 0 {
		return 0
	}
	return end + 1
}

type push struct {
	ref    string
	digest string
	ok     bool
	out    string
}

func testCrashCranePushes(t *testing.T, be string) {
	defer timed(t)()
	crane := tool(t, "crane")
	r := startRegistry(t, regOpts{Backend: be})
	env := clientEnv(t)
	dir := t.TempDir()
	const n = 50
	tars := make([]string, n)
	for i := range tars {
		tars[i] = filepath.Join(dir, fmt.Sprintf("l%d.tar", i))
		writeLayerTar(t, tars[i], 64<<10+rand.IntN(448<<10))
	}
	killAfter := 5 + rand.IntN(35) // pushes completed before the kill
	var killed atomic.Bool
	var completed atomic.Int32
	pushes := make([]push, 0, n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n && !killed.Load(); i++ {
			ref := fmt.Sprintf("%s/crash/r%d:t%d", r.Host, i%5, i)
			res := execCmd(context.Background(), env, dir, time.Minute, crane, "append", "--oci-empty-base", "-f", tars[i], "-t", ref)
			p := push{ref: ref, ok: res.Err == nil, out: res.Combined}
			if p.ok {
				_, p.digest, _ = strings.Cut(strings.TrimSpace(res.Stdout), "@")
			}
			pushes = append(pushes, p)
			completed.Add(1)
		}
	}()
	for completed.Load() < int32(killAfter) {
		select {
		case <-done:
			t.Fatalf("all pushes ended before the kill: %+v", pushes)
		case <-time.After(5 * time.Millisecond):
		}
	}
	time.Sleep(time.Duration(rand.IntN(80)) * time.Millisecond) // land inside a push
	killed.Store(true)
	r.Kill9()
	<-done
	var ok int
	for _, p := range pushes {
		if p.ok {
			ok++
		}
	}
	t.Logf("killed after %d completed pushes; %d of %d pushes exited 0", killAfter, ok, len(pushes))
	requireStorageOK(t, r.StorageRoot())

	r.Restart()
	requireStorageOK(t, r.StorageRoot())
	repos := map[string]bool{}
	for _, p := range pushes {
		if !p.ok {
			continue
		}
		if !strings.HasPrefix(p.digest, "sha256:") {
			t.Errorf("crane append %s printed no digest: %s", p.ref, p.out)
			continue
		}
		repos[strings.TrimPrefix(p.ref[:strings.LastIndex(p.ref, ":")], r.Host+"/")] = true
		res := execCmd(context.Background(), env, dir, time.Minute, crane, "validate", "--remote", p.ref)
		if res.Err != nil {
			t.Errorf("acknowledged push %s does not validate after restart: %v\n%s", p.ref, res.Err, res.Combined)
			continue
		}
		res = execCmd(context.Background(), env, dir, time.Minute, crane, "digest", p.ref)
		if got := strings.TrimSpace(res.Stdout); res.Err != nil || got != p.digest {
			t.Errorf("%s: digest after restart %q (%v), want %s", p.ref, got, res.Err, p.digest)
		}
	}
	for repo := range repos {
		tags := listTags(t, r, repo)
		for _, tag := range tags {
			if res := r.do(t, "HEAD", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Accept": mtManifest}, nil); res.Status != 200 {
				t.Errorf("listed tag %s:%s does not resolve after restart: %d", repo, tag, res.Status)
			}
		}
	}
	// One full pull to a tarball, as a user would.
	for _, p := range pushes {
		if p.ok {
			run(t, crane, "pull", p.ref, filepath.Join(dir, "pulled.tar"))
			break
		}
	}
}

type ack struct{ tag, digest string }

func testCrashManifestPuts(t *testing.T, be string) {
	defer timed(t)()
	r := startRegistry(t, regOpts{Backend: be})
	const repo = "crash/manifests"
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	layer := randBytes(t, 4096)
	r.pushBlob(t, repo, config)
	r.pushBlob(t, repo, layer)

	var (
		mu     sync.Mutex
		acks   []ack
		next   atomic.Int64
		wg     sync.WaitGroup
		failed atomic.Int64
	)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				tag := fmt.Sprintf("t%d", i)
				m := imageManifest(config, [][]byte{layer}, map[string]string{"i": tag, "nonce": strconv.FormatUint(rand.Uint64(), 16)})
				res, err := r.try("PUT", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Content-Type": mtManifest}, m)
				if err != nil {
					failed.Add(1)
					return
				}
				if res.Status != http.StatusCreated {
					failed.Add(1)
					t.Errorf("PUT %s before the kill: %s", tag, res)
					return
				}
				d := sha256Digest(m)
				if got := res.Header.Get("Docker-Content-Digest"); got != d {
					t.Errorf("PUT %s: Docker-Content-Digest %q, want %s", tag, got, d)
				}
				mu.Lock()
				acks = append(acks, ack{tag, d})
				mu.Unlock()
			}
		}()
	}
	for next.Load() < 40 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
	r.Kill9()
	wg.Wait()
	t.Logf("killed during manifest PUTs: %d acknowledged, %d started", len(acks), next.Load())
	requireStorageOK(t, r.StorageRoot())

	r.Restart()
	requireStorageOK(t, r.StorageRoot())
	for _, a := range acks {
		for _, ref := range []string{a.tag, a.digest} {
			res := r.do(t, "GET", "/v2/"+repo+"/manifests/"+ref, map[string]string{"Accept": mtManifest}, nil)
			if res.Status != 200 || sha256Digest(res.Body) != a.digest {
				t.Errorf("acknowledged manifest %s (%s) after restart: %d, body digest %s", ref, a.digest, res.Status, sha256Digest(res.Body))
			}
		}
	}
	tags := listTags(t, r, repo)
	listed := map[string]bool{}
	for _, tag := range tags {
		listed[tag] = true
	}
	for _, a := range acks {
		if !listed[a.tag] {
			t.Errorf("acknowledged tag %s missing from tags/list after restart", a.tag)
		}
	}
	for _, tag := range tags {
		if res := r.do(t, "HEAD", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Accept": mtManifest}, nil); res.Status != 200 {
			t.Errorf("listed tag %s does not resolve after restart: %d", tag, res.Status)
		}
	}
}

// listTags reads every page of tags/list, failing on anything malformed.
func listTags(t *testing.T, r *reg, repo string) []string {
	t.Helper()
	var all []string
	u := "/v2/" + repo + "/tags/list"
	for page := 0; u != ""; page++ {
		if page > 1000 {
			t.Fatalf("tags/list of %s: more than 1000 pages", repo)
		}
		res := r.do(t, "GET", u, nil, nil)
		if res.Status != 200 {
			t.Fatalf("tags/list of %s: %s", repo, res)
		}
		var body struct {
			Name string   `json:"name"`
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(res.Body, &body); err != nil || body.Name != repo {
			t.Fatalf("tags/list of %s does not parse (%v): %s", repo, err, res)
		}
		all = append(all, body.Tags...)
		u = ""
		if link := res.Header.Get("Link"); link != "" {
			start, end := strings.Index(link, "<"), strings.Index(link, ">")
			if start < 0 || end < start {
				t.Fatalf("tags/list of %s: bad Link %q", repo, link)
			}
			u = link[start+1 : end]
		}
	}
	return all
}
