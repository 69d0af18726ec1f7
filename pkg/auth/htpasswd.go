package auth

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// htpasswdCheckEvery is how often, at most, the file is checked for changes.
const htpasswdCheckEvery = time.Second

// Cache of successful Basic authentications: clients send their password
// with every request, and a bcrypt comparison costs tens of milliseconds.
const (
	cacheTTL     = 5 * time.Minute
	cacheEntries = 4096
)

// dummyHash is compared against when the user is unknown, so that an
// unknown user takes as long as a wrong password.
// It is computed on first use, not at program start.
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("berth: no such user"), bcrypt.DefaultCost)
	return h
})

// htTable is one load of the file.
type htTable struct {
	users map[string][]byte // user -> bcrypt hash
	info  os.FileInfo       // nil when the file could not be read
	gen   uint64
}

// htpasswd authenticates users against an htpasswd file of bcrypt entries,
// reloading it when it changes.
type htpasswd struct {
	path string
	log  zerolog.Logger
	now  func() time.Time

	table     atomic.Pointer[htTable]
	checking  sync.Mutex   // one goroutine checks the file at a time
	nextCheck atomic.Int64 // unix nanoseconds

	cacheKey []byte
	cacheMu  sync.Mutex
	cache    map[[32]byte]cacheEntry
}

type cacheEntry struct {
	gen     uint64
	expires time.Time
}

// newHTPasswd loads path; any unusable line is an error at start.
func newHTPasswd(path string, log zerolog.Logger, now func() time.Time) (*htpasswd, error) {
	h := &htpasswd{path: path, log: log, now: now, cache: map[[32]byte]cacheEntry{}}
	h.cacheKey = make([]byte, 32)
	if _, err := rand.Read(h.cacheKey); err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("htpasswd: %w", err)
	}
	users, bad, err := readHTPasswd(path)
	if err != nil {
		return nil, fmt.Errorf("htpasswd: %w", err)
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("htpasswd %s: %s", path, strings.Join(bad, "; "))
	}
	h.table.Store(&htTable{users: users, info: fi, gen: 1})
	h.nextCheck.Store(now().Add(htpasswdCheckEvery).UnixNano())
	log.Info().Str("path", path).Int("users", len(users)).Msg("htpasswd loaded")
	return h, nil
}

// readHTPasswd parses the file. bad describes the lines that were skipped
// (never their content beyond the line number and user).
func readHTPasswd(path string) (map[string][]byte, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	users := map[string][]byte{}
	var bad []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 64<<10)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		switch {
		case !ok || user == "":
			bad = append(bad, fmt.Sprintf("line %d: want user:hash", n))
			continue
		case users[user] != nil:
			bad = append(bad, fmt.Sprintf("line %d: user %q listed again", n, user))
			continue
		}
		hash = strings.TrimSpace(hash)
		if _, err := bcrypt.Cost([]byte(hash)); err != nil || !strings.HasPrefix(hash, "$2") {
			bad = append(bad, fmt.Sprintf("line %d: user %q: not a bcrypt hash (use htpasswd -B)", n, user))
			continue
		}
		users[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	return users, bad, nil
}

// current returns the table, reloading the file first when it changed (at
// most one stat per htpasswdCheckEvery, by one goroutine; the others keep
// using the current table meanwhile).
func (h *htpasswd) current() *htTable {
	now := h.now()
	if now.UnixNano() >= h.nextCheck.Load() && h.checking.TryLock() {
		defer h.checking.Unlock()
		if now.UnixNano() >= h.nextCheck.Load() {
			h.reload()
			h.nextCheck.Store(now.Add(htpasswdCheckEvery).UnixNano())
		}
	}
	return h.table.Load()
}

// reload rereads the file when its identity, size or mtime changed. A file
// that cannot be read leaves nobody authenticated (fail closed) until it
// can; skipped lines are logged and their users cannot log in.
func (h *htpasswd) reload() {
	old := h.table.Load()
	fi, err := os.Stat(h.path)
	if err == nil && old.info != nil && os.SameFile(old.info, fi) &&
		fi.ModTime().Equal(old.info.ModTime()) && fi.Size() == old.info.Size() {
		return
	}
	var users map[string][]byte
	var bad []string
	if err == nil {
		users, bad, err = readHTPasswd(h.path)
	}
	if err != nil {
		if old.info != nil {
			h.log.Error().Err(err).Str("path", h.path).Msg("htpasswd unreadable; refusing every password until it is back")
		}
		h.table.Store(&htTable{users: map[string][]byte{}, gen: old.gen + 1})
		return
	}
	for _, b := range bad {
		h.log.Error().Str("path", h.path).Str("problem", b).Msg("htpasswd line skipped")
	}
	h.table.Store(&htTable{users: users, info: fi, gen: old.gen + 1})
	h.log.Info().Str("path", h.path).Int("users", len(users)).Msg("htpasswd reloaded")
}

// check reports whether user's password is pass.
func (h *htpasswd) check(user, pass string) bool {
	t := h.current()
	key := h.key(user, pass)
	now := h.now()
	h.cacheMu.Lock()
	e, ok := h.cache[key]
	h.cacheMu.Unlock()
	if ok && e.gen == t.gen && now.Before(e.expires) {
		return true
	}
	hash, known := t.users[user]
	if !known {
		_ = bcrypt.CompareHashAndPassword(dummyHash(), []byte(pass))
		return false
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil {
		return false
	}
	h.cacheMu.Lock()
	if len(h.cache) >= cacheEntries {
		clear(h.cache)
	}
	h.cache[key] = cacheEntry{gen: t.gen, expires: now.Add(cacheTTL)}
	h.cacheMu.Unlock()
	return true
}

// key is a keyed MAC of the credentials: the cache never holds a password
// or anything an attacker without the process's random key could test
// guesses against.
func (h *htpasswd) key(user, pass string) [32]byte {
	m := hmac.New(sha256.New, h.cacheKey)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(user)))
	m.Write(n[:])
	m.Write([]byte(user))
	m.Write([]byte(pass))
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}
