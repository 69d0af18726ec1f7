package registry_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/meta/dynamo"
	"github.com/berthreg/berth/pkg/storage/s3"
)

// The two-member race test runs against real S3 and DynamoDB stand-ins:
// versitygw (posix backend) and dynalite, installed by scripts/tools.sh
// into .tools/bin (or named by VERSITYGW and BERTH_DYNALITE), started per
// test on free loopback ports and killed by their pid at cleanup. Missing
// servers fail the test, unless -short.

const (
	s3Access = "berthtest"
	s3Secret = "berthtestsecret"
)

// tool finds a server binary: env names an explicit path, else
// .tools/bin/name, else PATH.
func tool(t *testing.T, env, name string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := filepath.Abs(filepath.Join("..", "..", ".tools", "bin", name)); err == nil {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if testing.Short() {
		t.Skipf("%s not installed (run scripts/tools.sh)", name)
	}
	t.Fatalf("%s not found: run scripts/tools.sh (it installs .tools/bin/%s) or set %s; -short skips this test", name, name, env)
	return ""
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// startServer runs cmd, waits until addr accepts connections and kills the
// process (by its pid) at cleanup.
func startServer(t *testing.T, cmd *exec.Cmd, addr string) {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), filepath.Base(cmd.Path)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		logf.Close()
	})
	for deadline := time.Now().Add(20 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			out, _ := os.ReadFile(logf.Name())
			t.Fatalf("%s exited before answering:\n%s", cmd.Path, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logf.Name())
			t.Fatalf("%s: no answer on %s: %v\n%s", cmd.Path, addr, err, out)
		}
	}
}

// startS3 runs versitygw over a temp dir and returns its endpoint.
func startS3(t *testing.T) string {
	t.Helper()
	bin := tool(t, "VERSITYGW", "versitygw")
	data := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	startServer(t, exec.Command(bin, "--port", addr, "--access", s3Access, "--secret", s3Secret,
		"--quiet", "--keep-alive", "posix", data), addr)
	return "http://" + addr
}

// startDynamo runs an in-memory dynalite and returns its endpoint.
func startDynamo(t *testing.T) string {
	t.Helper()
	bin := tool(t, "BERTH_DYNALITE", "dynalite")
	if _, err := exec.LookPath("node"); err != nil {
		if testing.Short() {
			t.Skip("dynalite needs node on PATH")
		}
		t.Fatalf("dynalite needs node on PATH: %v", err)
	}
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	startServer(t, exec.Command(bin, "--host", "127.0.0.1", "--port", port, "--createTableMs", "0"), addr)
	return "http://" + addr
}

// openS3 opens a driver on bucket of the server at endpoint.
func openS3(t *testing.T, endpoint, bucket string) *s3.Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := s3.New(ctx, s3.Config{
		Bucket: bucket, Endpoint: endpoint, ForcePathStyle: true,
		AccessKey: s3Access, SecretKey: s3Secret, PartSize: s3.MinPartSize,
	}, zerolog.Nop())
	if err != nil {
		t.Fatalf("s3.New: %v", err)
	}
	return d
}

// openDynamo opens a metadata store on the tables named by prefix.
func openDynamo(t *testing.T, endpoint, prefix string) *dynamo.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := dynamo.New(ctx, dynamo.Config{
		Endpoint: endpoint, Region: "us-east-1", AccessKey: "fake", SecretKey: "fake",
		RepoMetaTable: prefix + "RepoMeta", ImageMetaTable: prefix + "ImageMeta",
		RepoBlobsTable: prefix + "RepoBlobs", VersionTable: prefix + "Version",
	}, zerolog.Nop())
	if err != nil {
		t.Fatalf("dynamo.New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}
