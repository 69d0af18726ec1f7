package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthreg/berth/test/e2e/testproc"
)

// Storage backends a registry can run on.
const (
	backendFS       = "fs"       // storage.rootDirectory + boltdb metadata
	backendS3Dynamo = "s3dynamo" // s3 (versitygw) + dynamodb (dynalite)
)

var backends = []string{backendFS, backendS3Dynamo}

// forEachBackend runs f as a subtest per backend (TestX/fs, TestX/s3dynamo),
// logging how long each took.
func forEachBackend(t *testing.T, f func(t *testing.T, be string)) {
	t.Helper()
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			defer timed(t)()
			f(t, be)
		})
	}
}

// timed returns a func that logs the time since timed was called.
func timed(t *testing.T) func() {
	start := time.Now()
	return func() { t.Logf("timing: %s took %s", t.Name(), time.Since(start).Round(time.Millisecond)) }
}

// S3 credentials of the shared versitygw.
const (
	s3AccessKey = "berthe2e"
	s3SecretKey = "berthe2e-secret"
	s3Prefix    = "berth" // storageDriver.rootdirectory
)

// proc is a helper server process (versitygw, dynalite, haproxy, a
// registry) started by the tests; it dies with the test binary.
type proc = testproc.Proc

// startProc starts one (see testproc.Start).
var startProc = testproc.Start

// waitTCP waits until addr accepts connections or p exits.
func waitTCP(p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if p.Exited() {
			return fmt.Errorf("%s exited during startup:\n%s", p.Name, tailFile(p.Log, 20))
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %s: %v\n%s", p.Name, addr, timeout, err, tailFile(p.Log, 20))
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// errExited is pollReady's answer when the process exits first.
var errExited = errors.New("exited during startup")

// pollReady polls url with client every 50ms until it answers 200 (nil),
// p exits (errExited) or timeout passes (an error with the last failure).
func pollReady(client *http.Client, url string, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if p.Exited() {
			return errExited
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready on %s after %s (last: %v)", url, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sharedServers are one versitygw and one dynalite for the whole package,
// started on first use and stopped by TestMain. Every registry gets its own
// bucket and tables, so tests never see each other's data.
var sharedServers struct {
	mu     sync.Mutex
	dir    string
	s3     *proc
	s3Dir  string // versitygw's posix root: one directory per bucket
	s3URL  string
	ddb    *proc
	ddbURL string
	err    error
}

func sharedS3Dynamo(t *testing.T) (s3URL, s3Dir, ddbURL string) {
	t.Helper()
	s := &sharedServers
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil && (s.s3 == nil || s.s3.Exited() || s.ddb == nil || s.ddb.Exited()) {
		s.err = startSharedServers(t)
	}
	if s.err != nil {
		t.Fatalf("s3dynamo backend: %v", s.err)
	}
	return s.s3URL, s.s3Dir, s.ddbURL
}

func startSharedServers(t *testing.T) error {
	s := &sharedServers
	vgw, dyn := tool(t, "versitygw"), tool(t, "dynalite")
	if s.dir == "" {
		dir, err := os.MkdirTemp("", "berth-e2e-backends-")
		if err != nil {
			return err
		}
		s.dir = dir
	}
	s.s3.Kill()
	s.ddb.Kill()
	start := time.Now()
	s.s3Dir = filepath.Join(s.dir, "s3")
	if err := os.MkdirAll(s.s3Dir, 0o755); err != nil {
		return err
	}
	s3Port, ddbPort := freePort(t), freePort(t)
	env := append(os.Environ(), "ROOT_ACCESS_KEY="+s3AccessKey, "ROOT_SECRET_KEY="+s3SecretKey)
	var err error
	s.s3, err = startProc("versitygw", filepath.Join(s.dir, "versitygw.log"), env,
		vgw, "--port", fmt.Sprintf("127.0.0.1:%d", s3Port), "posix", s.s3Dir)
	if err != nil {
		return err
	}
	s.ddb, err = startProc("dynalite", filepath.Join(s.dir, "dynalite.log"), os.Environ(),
		dyn, "--host", "127.0.0.1", "--port", fmt.Sprint(ddbPort),
		"--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0")
	if err != nil {
		return err
	}
	s.s3URL = fmt.Sprintf("http://127.0.0.1:%d", s3Port)
	s.ddbURL = fmt.Sprintf("http://127.0.0.1:%d", ddbPort)
	if err := waitTCP(s.s3, fmt.Sprintf("127.0.0.1:%d", s3Port), 20*time.Second); err != nil {
		return err
	}
	if err := waitTCP(s.ddb, fmt.Sprintf("127.0.0.1:%d", ddbPort), 20*time.Second); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "e2e: versitygw on %s (posix %s) and dynalite on %s up in %s\n",
		s.s3URL, s.s3Dir, s.ddbURL, time.Since(start).Round(time.Millisecond))
	return nil
}

// stopSharedServers runs after all tests.
func stopSharedServers() {
	s := &sharedServers
	s.mu.Lock()
	defer s.mu.Unlock()
	s.s3.Kill()
	s.ddb.Kill()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// store is the storage of one registry (or of all members of a cluster).
type store struct {
	Kind string

	// s3dynamo only.
	S3URL, S3Dir, DDBURL string
	Bucket               string
	Tables               map[string]string // config key -> table name
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newStore returns fresh storage of the given backend: for s3dynamo a new
// bucket and new tables on the shared servers.
func newStore(t *testing.T, kind string) *store {
	t.Helper()
	s := &store{Kind: kind}
	switch kind {
	case backendFS:
	case backendS3Dynamo:
		s.S3URL, s.S3Dir, s.DDBURL = sharedS3Dynamo(t)
		id := randHex(6)
		s.Bucket = "berth-e2e-" + id
		// The bucket's files go when the test ends (kept when it failed).
		t.Cleanup(func() {
			if !t.Failed() {
				os.RemoveAll(filepath.Join(s.S3Dir, s.Bucket))
			}
		})
		s.Tables = map[string]string{
			"repoMetaTablename":      "e2e" + id + "RepoMeta",
			"imageMetaTablename":     "e2e" + id + "ImageMeta",
			"repoBlobsInfoTablename": "e2e" + id + "RepoBlobs",
			"versionTablename":       "e2e" + id + "Version",
		}
	default:
		t.Fatalf("unknown backend %q", kind)
	}
	return s
}

// config returns the storage section for a registry whose local root is root.
func (s *store) config(root string) map[string]any {
	st := map[string]any{"rootDirectory": root}
	if s.Kind == backendS3Dynamo {
		st["storageDriver"] = map[string]any{
			"name": "s3", "rootdirectory": "/" + s3Prefix, "region": "us-east-1", "bucket": s.Bucket,
			"regionendpoint": s.S3URL, "forcepathstyle": true, "secure": false,
			"accesskey": s3AccessKey, "secretkey": s3SecretKey, "chunksize": 5 << 20,
		}
		cd := map[string]any{"name": "dynamodb", "endpoint": s.DDBURL, "region": "us-east-1"}
		for k, v := range s.Tables {
			cd[k] = v
		}
		st["cacheDriver"] = cd
	}
	return st
}

// env is what the registry process needs on top of the environment.
func (s *store) env() []string {
	if s.Kind != backendS3Dynamo {
		return nil
	}
	// DynamoDB credentials come from the SDK's default chain.
	return []string{"AWS_ACCESS_KEY_ID=berthe2e", "AWS_SECRET_ACCESS_KEY=berthe2e", "AWS_EC2_METADATA_DISABLED=true"}
}

// repoRoot is the directory holding one directory (an OCI layout) per
// repository: root itself on fs, the bucket's key prefix in versitygw's
// posix directory on s3.
func (s *store) repoRoot(root string) string {
	if s.Kind == backendS3Dynamo {
		return filepath.Join(s.S3Dir, s.Bucket, s3Prefix)
	}
	return root
}

// requireLayout checks, by listing the directory, that repo is stored as
// an OCI image layout under dir (on s3: the bucket keys
// <prefix>/<repo>/{oci-layout,index.json,blobs/sha256/...}) with tag
// pointing at dgst and every listed blob present.
func requireLayout(t *testing.T, dir, repo, tag, dgst string, blobs ...string) {
	t.Helper()
	lay := filepath.Join(dir, filepath.FromSlash(repo))
	if _, err := os.Stat(filepath.Join(lay, "oci-layout")); err != nil {
		t.Errorf("layout of %s: %v", repo, err)
	}
	if d := layoutDigest(t, lay, tag); d != dgst {
		t.Errorf("layout of %s: index.json says %s:%s is %s, want %s", repo, repo, tag, d, dgst)
	}
	for _, b := range append([]string{dgst}, blobs...) {
		alg, hx, _ := strings.Cut(b, ":")
		if _, err := os.Stat(filepath.Join(lay, "blobs", alg, hx)); err != nil {
			t.Errorf("layout of %s: blob %s: %v", repo, b, err)
		}
	}
}
