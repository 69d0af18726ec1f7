package dynamo

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// dynalite is the DynamoDB-compatible server the tests run against.
type dynalite struct {
	endpoint string
	cmd      *exec.Cmd
	done     chan struct{} // closed when the process has exited
}

var (
	// fast is a dynalite whose tables become ACTIVE at once; nil with
	// serverErr set when it could not be started.
	fast      *dynalite
	serverErr error
	// tableSeq makes table-name prefixes unique within the run.
	tableSeq atomic.Int64

	zerologNop = zerolog.Nop()
)

func TestMain(m *testing.M) {
	flag.Parse()
	fast, serverErr = startDynalite("--createTableMs", "0")
	code := m.Run()
	if fast != nil {
		fast.stop()
	}
	os.Exit(code)
}

// dynalitePath finds the dynalite launcher installed by scripts/tools.sh.
func dynalitePath() (string, error) {
	if p := os.Getenv("BERTH_DYNALITE"); p != "" {
		return p, nil
	}
	p, err := filepath.Abs(filepath.Join("..", "..", "..", ".tools", "bin", "dynalite"))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("dynalite not found at %s (run scripts/tools.sh): %w", p, err)
	}
	if _, err := exec.LookPath("node"); err != nil {
		return "", fmt.Errorf("dynalite needs node on PATH: %w", err)
	}
	return p, nil
}

// startDynalite runs an in-memory dynalite on a free loopback port with
// extra flags and waits until it accepts connections.
func startDynalite(extra ...string) (*dynalite, error) {
	path, err := dynalitePath()
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	_ = l.Close()
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(path, append([]string{"--host", "127.0.0.1", "--port", port}, extra...)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start dynalite: %w", err)
	}
	d := &dynalite{endpoint: "http://" + addr, cmd: cmd, done: make(chan struct{})}
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(d.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("dynalite exited before answering: %v", exitErr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, errors.New("dynalite did not answer within 15s")
		}
	}
}

// stop kills the server (by its own pid) and reaps it.
func (d *dynalite) stop() {
	_ = d.cmd.Process.Kill()
	<-d.done
}

// server returns the shared fast server, skipping (-short) or failing the
// test when it is unavailable.
func server(tb testing.TB) *dynalite {
	tb.Helper()
	if fast == nil {
		if testing.Short() {
			tb.Skipf("no dynalite: %v", serverErr)
		}
		tb.Fatalf("no dynalite (run scripts/tools.sh): %v", serverErr)
	}
	return fast
}

// testConfig returns a config on d with tables named after a fresh prefix.
func testConfig(d *dynalite) Config {
	p := fmt.Sprintf("t%03d", tableSeq.Add(1))
	return Config{
		Endpoint: d.endpoint, Region: "us-east-1", AccessKey: "fake", SecretKey: "fake",
		RepoMetaTable: p + "RepoMeta", ImageMetaTable: p + "ImageMeta",
		RepoBlobsTable: p + "RepoBlobs", VersionTable: p + "Version",
	}
}

// open opens a Store on cfg, closed at cleanup.
func open(tb testing.TB, cfg Config) *Store {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := New(ctx, cfg, zerolog.New(zerolog.NewTestWriter(tb)).Level(zerolog.InfoLevel))
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// newStore opens a Store on fresh tables of the fast server.
func newStore(tb testing.TB) *Store {
	tb.Helper()
	return open(tb, testConfig(server(tb)))
}
