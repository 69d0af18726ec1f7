package s3

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/storage"
	"github.com/berthreg/berth/pkg/storage/storagetest"
)

// The tests run against versitygw (posix backend), started by TestMain on a
// free loopback port over a temp directory.
const (
	testAccess = "berthtest"
	testSecret = "berthtestsecret"
)

var (
	testEndpoint string // http://127.0.0.1:<port>, "" when versitygw is missing under -short
	bucketSeq    atomic.Int64
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	bin := findVersitygw()
	if bin == "" {
		if testing.Short() {
			return m.Run() // tests skip
		}
		fmt.Fprintln(os.Stderr, "FAIL: versitygw not found: run scripts/tools.sh (it installs .tools/bin/versitygw), or set VERSITYGW; -short skips these tests")
		return 1
	}
	dir, err := os.MkdirTemp("", "berth-s3-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	stop, endpoint, err := startVersitygw(bin, dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start versitygw:", err)
		return 1
	}
	defer stop()
	testEndpoint = endpoint
	return m.Run()
}

func findVersitygw() string {
	if p, ok := os.LookupEnv("VERSITYGW"); ok {
		if _, err := os.Stat(p); err != nil {
			return ""
		}
		return p
	}
	if p, err := filepath.Abs("../../../.tools/bin/versitygw"); err == nil {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	p, _ := exec.LookPath("versitygw")
	return p
}

// startVersitygw runs versitygw over dir/data and waits until it accepts
// connections. stop kills it (by its pid) and waits for it.
func startVersitygw(bin, dir string) (stop func(), endpoint string, err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	addr := l.Addr().String()
	l.Close()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		return nil, "", err
	}
	logf, err := os.Create(filepath.Join(dir, "versitygw.log"))
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(bin, "--port", addr, "--access", testAccess, "--secret", testSecret,
		"--quiet", "--keep-alive", "posix", data)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, "", err
	}
	stop = func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	}
	for deadline := time.Now().Add(15 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return stop, "http://" + addr, nil
		}
		if time.Now().After(deadline) {
			stop()
			log, _ := os.ReadFile(logf.Name())
			return nil, "", fmt.Errorf("no answer on %s: %v\n%s", addr, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func needServer(t testing.TB) {
	t.Helper()
	if testEndpoint == "" {
		t.Skip("versitygw not installed (run scripts/tools.sh)")
	}
}

// newBucket returns a bucket name no other test uses.
func newBucket() string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("berth-%d-%s", bucketSeq.Add(1), hex.EncodeToString(b[:]))
}

func testConfig(bucket string) Config {
	return Config{
		Bucket: bucket, Endpoint: testEndpoint, ForcePathStyle: true,
		AccessKey: testAccess, SecretKey: testSecret, PartSize: MinPartSize,
	}
}

func newTestDriver(t testing.TB, cfg Config) *Driver {
	t.Helper()
	needServer(t)
	d, err := New(context.Background(), cfg, zerolog.Nop())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d
}

func TestDriver(t *testing.T) {
	needServer(t)
	t.Run("OwnBucket", func(t *testing.T) {
		storagetest.Run(t, func(t *testing.T) storage.Driver {
			return newTestDriver(t, testConfig(newBucket()))
		})
	})
	t.Run("SharedBucketPrefix", func(t *testing.T) {
		bucket := newBucket()
		var seq atomic.Int64
		storagetest.Run(t, func(t *testing.T) storage.Driver {
			cfg := testConfig(bucket)
			cfg.Prefix = fmt.Sprintf("/registry/t%d/", seq.Add(1))
			return newTestDriver(t, cfg)
		})
	})
}

func TestNewConfig(t *testing.T) {
	needServer(t)
	ctx := context.Background()
	for _, cfg := range []Config{{}, {Bucket: "b", PartSize: 1 << 20}, {Bucket: "b", PartSize: 6 << 30}} {
		if _, err := New(ctx, cfg, zerolog.Nop()); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	// An existing bucket is fine; so is an endpoint without a scheme.
	cfg := testConfig(newBucket())
	newTestDriver(t, cfg)
	cfg.Endpoint = testEndpoint[len("http://"):]
	d := newTestDriver(t, cfg)
	if d.partSize != MinPartSize {
		t.Fatalf("partSize = %d", d.partSize)
	}
	cfg.PartSize = 0
	if d := newTestDriver(t, cfg); d.partSize != DefaultPartSize {
		t.Fatalf("default partSize = %d", d.partSize)
	}
}

func TestUnavailable(t *testing.T) {
	needServer(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	cfg := testConfig("nobody-home")
	cfg.Endpoint = "http://" + addr
	start := time.Now()
	_, err = newDriver(context.Background(), cfg, zerolog.Nop(), 10*time.Millisecond)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("New against a closed port: %v, want ErrUnavailable", err)
	}
	t.Logf("gave up after %v: %v", time.Since(start), err)

	// 5xx and throttling are retried, then reported as ErrUnavailable.
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>slow down</Message></Error>`)
	}))
	defer srv.Close()
	cfg.Endpoint = srv.URL
	_, err = newDriver(context.Background(), cfg, zerolog.Nop(), 10*time.Millisecond)
	if !errors.Is(err, ErrUnavailable) || calls.Load() != maxAttempts {
		t.Fatalf("New against a throttling server: %v after %d requests, want ErrUnavailable after %d", err, calls.Load(), maxAttempts)
	}

	// A server that never answers: each request gives up after
	// ResponseTimeout, and the operation fails as unavailable.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	cfg.Endpoint = "http://" + silent.Addr().String()
	cfg.ResponseTimeout = 100 * time.Millisecond
	if _, err = newDriver(context.Background(), cfg, zerolog.Nop(), 10*time.Millisecond); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("New against a server that never answers: %v, want ErrUnavailable", err)
	}

	// A refused request (bad credentials) is not unavailability.
	cfg = testConfig(newBucket())
	cfg.SecretKey = "wrong"
	_, err = New(context.Background(), cfg, zerolog.Nop())
	if err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("New with a wrong secret: %v, want an error other than ErrUnavailable", err)
	}
}

// listKeys lists every key under prefix in d's bucket.
func listKeys(t testing.TB, d *Driver, prefix string) []string {
	t.Helper()
	var keys []string
	p := s3.NewListObjectsV2Paginator(d.c, &s3.ListObjectsV2Input{Bucket: &d.bucket, Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return keys
}

// multipartUploads counts the multipart uploads in progress under prefix.
func multipartUploads(t testing.TB, d *Driver, prefix string) int {
	t.Helper()
	out, err := d.c.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{
		Bucket: &d.bucket, Prefix: aws.String(prefix),
	})
	if err != nil {
		t.Fatal(err)
	}
	return len(out.Uploads)
}
