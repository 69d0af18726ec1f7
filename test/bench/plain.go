package main

// The plain baselines: a minimal Go HTTP server, run in a child process
// (this binary re-executed with -plain-serve) so that, like Berth, it has
// its own runtime and competes with the client for the CPUs the same way.
//
//	PUT /hash?digest=D    sha256 of the body checked against D, nothing stored
//	PUT /write?digest=D   the same, plus the body written to a temp file in
//	                      DIR, fsynced, renamed into place and DIR fsynced:
//	                      the work a registry must do to store durably
//	GET /file?path=P      http.ServeFile(P)

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

const plainBuf = 256 << 10 // the same copy buffer as Berth's fs driver

// plainServe is the child's main: it serves dir until killed.
func plainServe(dir string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /hash", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		if _, err := copyHashed(h, nil, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		checkDigest(w, r, h)
	})
	mux.HandleFunc("PUT /write", func(w http.ResponseWriter, r *http.Request) {
		if err := plainWrite(w, r, dir); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("GET /file", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, r.URL.Query().Get("path"))
	})
	fmt.Println(ln.Addr().String())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second}
	return hs.Serve(ln)
}

func plainWrite(w http.ResponseWriter, r *http.Request, dir string) error {
	f, err := os.CreateTemp(dir, "upload-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op once renamed
	defer f.Close()
	h := sha256.New()
	if _, err := copyHashed(h, f, r.Body); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if !checkDigest(w, r, h) {
		return nil
	}
	dst := filepath.Join(dir, "blob-"+strings.TrimPrefix(r.URL.Query().Get("digest"), "sha256:"))
	if err := os.Rename(f.Name(), dst); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// copyHashed reads r to EOF through a fixed buffer into h and, when f is
// not nil, f: the loop Berth's fs driver runs.
func copyHashed(h hash.Hash, f *os.File, r io.Reader) (int64, error) {
	buf := make([]byte, plainBuf)
	var n int64
	for {
		m, err := r.Read(buf)
		if m > 0 {
			h.Write(buf[:m])
			if f != nil {
				if _, werr := f.Write(buf[:m]); werr != nil {
					return n, werr
				}
			}
			n += int64(m)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// checkDigest answers 201 when the body hashed to ?digest=, else 400.
func checkDigest(w http.ResponseWriter, r *http.Request, h hash.Hash) bool {
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if want := r.URL.Query().Get("digest"); got != want {
		http.Error(w, "digest mismatch: got "+got+", want "+want, http.StatusBadRequest)
		return false
	}
	w.WriteHeader(http.StatusCreated)
	return true
}

// plainProc is a running plain server child.
type plainProc struct {
	cmd  *exec.Cmd
	base string // http://host:port
	dir  string
}

func startPlain(dir string) (*plainProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-plain-serve", dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("plain server did not start: %w", err)
	}
	return &plainProc{cmd: cmd, base: "http://" + strings.TrimSpace(line), dir: dir}, nil
}

func (p *plainProc) pid() int { return p.cmd.Process.Pid }

func (p *plainProc) stop() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}
