package fs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/storage"
)

const (
	infoFile  = "info.json"
	dataFile  = "data"
	stateFile = "hashstate"
	idLen     = 32 // hex of 128 random bits
)

// sessionInfo is a session's info.json.
type sessionInfo struct {
	Repo      string    `json:"repo"`
	StartedAt time.Time `json:"startedAt"`
}

// hashState is a session's hashstate: the sha256 state of data[:Offset].
type hashState struct {
	Offset int64  `json:"offset"`
	State  []byte `json:"state"`
}

// NewUpload starts a session for repo. The session directory is built
// under _tmp and renamed into _uploads, so it appears whole or not at all.
func (d *Driver) NewUpload(ctx context.Context, repo string) (storage.Upload, error) {
	if _, err := d.repoDir(repo); err != nil {
		return nil, err
	}
	var raw [idLen / 2]byte
	rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	info := sessionInfo{Repo: repo, StartedAt: time.Now().UTC()}

	tmp, err := os.MkdirTemp(filepath.Join(d.root, tmpDir), "upload-*")
	if err != nil {
		return nil, fmt.Errorf("fs: %w", err)
	}
	if err := initSession(tmp, info); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	d.acquire(id) // unknown to anyone else: cannot be busy
	dir := d.sessionDir(id)
	if err := os.Rename(tmp, dir); err != nil {
		d.release(id)
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("fs: %w", err)
	}
	u, err := d.openSession(ctx, id, info)
	if err == nil {
		err = syncDir(filepath.Dir(dir))
	}
	if err != nil {
		if u != nil {
			u.f.Close()
		}
		d.release(id)
		os.RemoveAll(dir)
		return nil, err
	}
	return u, nil
}

func initSession(dir string, info sessionInfo) error {
	js, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	for name, content := range map[string][]byte{infoFile: js, dataFile: nil} {
		if err := writeSynced(filepath.Join(dir, name), content); err != nil {
			return err
		}
	}
	return syncDir(dir)
}

func writeSynced(name string, content []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	_, err = f.Write(content)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fs: write %s: %w", name, err)
	}
	return nil
}

// Upload resumes session id of repo: ErrUploadUnknown when there is no
// such session of repo, ErrUploadBusy while another Upload holds it.
func (d *Driver) Upload(ctx context.Context, repo, id string) (storage.Upload, error) {
	if _, err := d.repoDir(repo); err != nil {
		return nil, err
	}
	info, err := d.readInfo(id)
	if err != nil {
		return nil, err
	}
	if info.Repo != repo {
		return nil, fmt.Errorf("fs: upload %s of %s: %w", id, repo, storage.ErrUploadUnknown)
	}
	if !d.acquire(id) {
		return nil, fmt.Errorf("fs: upload %s: %w", id, storage.ErrUploadBusy)
	}
	u, err := d.openSession(ctx, id, info)
	if err != nil {
		d.release(id)
		return nil, err
	}
	return u, nil
}

// Uploads calls fn for every upload session in storage, open or not, in no
// order: for expiry by StartedAt. A session in use is still reported; a
// collector should end it through Upload, which reports ErrUploadBusy.
func (d *Driver) Uploads(ctx context.Context, fn func(repo, id string, lastActive time.Time) error) error {
	entries, err := os.ReadDir(filepath.Join(d.root, uploadsDir))
	if err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		id := e.Name()
		info, err := d.readInfo(id)
		if errors.Is(err, storage.ErrUploadUnknown) {
			continue // ended meanwhile
		}
		if err != nil {
			d.log.Warn().Err(err).Str("upload", id).Msg("failed to read upload session")
			continue
		}
		last := info.StartedAt
		if fi, err := os.Stat(filepath.Join(d.sessionDir(id), dataFile)); err == nil && fi.ModTime().After(last) {
			last = fi.ModTime()
		}
		if err := fn(info.Repo, id, last); err != nil {
			return err
		}
	}
	return nil
}

func validID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func (d *Driver) sessionDir(id string) string { return filepath.Join(d.root, uploadsDir, id) }

func (d *Driver) readInfo(id string) (sessionInfo, error) {
	var info sessionInfo
	if !validID(id) {
		return info, fmt.Errorf("fs: upload %q: %w", id, storage.ErrUploadUnknown)
	}
	js, err := os.ReadFile(filepath.Join(d.sessionDir(id), infoFile))
	if err != nil {
		if isNotExist(err) {
			return info, fmt.Errorf("fs: upload %s: %w", id, storage.ErrUploadUnknown)
		}
		return info, fmt.Errorf("fs: %w", err)
	}
	if err := json.Unmarshal(js, &info); err != nil {
		return info, fmt.Errorf("fs: upload %s: %s: %w", id, infoFile, err)
	}
	return info, nil
}

func (d *Driver) acquire(id string) bool { return d.sessions.Acquire(id) }

func (d *Driver) release(id string) { d.sessions.Release(id) }

// openSession opens the data file of a held session and restores the
// running hash: from hashstate when it describes a prefix of the data
// (hashing only the rest), else by hashing all of it.
func (d *Driver) openSession(ctx context.Context, id string, info sessionInfo) (*upload, error) {
	dir := d.sessionDir(id)
	f, err := os.OpenFile(filepath.Join(dir, dataFile), os.O_RDWR, 0)
	if err != nil {
		if isNotExist(err) {
			// Ended, or a crash came between Commit's rename and the
			// session's removal: remove what is left.
			if err := os.RemoveAll(dir); err != nil {
				d.log.Warn().Err(err).Str("upload", id).Msg("failed to remove ended upload session")
			}
			return nil, fmt.Errorf("fs: upload %s: %w", id, storage.ErrUploadUnknown)
		}
		return nil, fmt.Errorf("fs: %w", err)
	}
	u := &upload{d: d, id: id, repo: info.Repo, startedAt: info.StartedAt, dir: dir, f: f, h: sha256.New()}
	if err := u.restore(ctx); err != nil {
		f.Close()
		return nil, err
	}
	return u, nil
}

func (u *upload) restore(ctx context.Context) error {
	fi, err := u.f.Stat()
	if err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	u.size = fi.Size()
	var from int64
	if st, err := u.loadState(); err != nil {
		u.d.log.Warn().Err(err).Str("upload", u.id).Msg("failed to load hash state, rehashing")
	} else if st.Offset <= u.size {
		from = st.Offset
	} else {
		u.h.Reset() // data shorter than the state: rehash it all
	}
	if from == u.size {
		return nil
	}
	u.d.log.Debug().Str("upload", u.id).Int64("from", from).Int64("size", u.size).Msg("rehashing upload")
	buf := u.d.getBuf()
	defer u.d.bufs.Put(buf)
	sr := io.NewSectionReader(u.f, from, u.size-from)
	if _, err := io.CopyBuffer(u.h, ctxReader{ctx, sr}, *buf); err != nil {
		return fmt.Errorf("fs: upload %s: rehash: %w", u.id, err)
	}
	return nil
}

// loadState restores u.h from hashstate; a missing file is offset 0.
func (u *upload) loadState() (hashState, error) {
	var st hashState
	js, err := os.ReadFile(filepath.Join(u.dir, stateFile))
	if isNotExist(err) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(js, &st); err != nil {
		return st, err
	}
	if err := u.h.(encoding.BinaryUnmarshaler).UnmarshalBinary(st.State); err != nil {
		u.h.Reset()
		return st, err
	}
	return st, nil
}

// upload is a held session; one request uses it at a time.
type upload struct {
	d         *Driver
	id        string
	repo      string
	startedAt time.Time
	dir       string
	f         *os.File  // data, nil once closed or ended
	size      int64     // bytes in data
	h         hash.Hash // sha256 of data[:size]
}

func (u *upload) ID() string           { return u.id }
func (u *upload) Size() int64          { return u.size }
func (u *upload) StartedAt() time.Time { return u.startedAt }

// Append copies r to the data file through a fixed buffer, hashing exactly
// the bytes written. Whatever was written stays, even when r fails: the
// data is fsynced and the hash state saved before returning.
func (u *upload) Append(ctx context.Context, r io.Reader) (int64, error) {
	if u.f == nil {
		return 0, u.closedErr()
	}
	buf := u.d.getBuf()
	defer u.d.bufs.Put(buf)
	var n int64
	var err error
	for err == nil {
		if err = ctx.Err(); err != nil {
			break
		}
		var m int
		m, err = r.Read(*buf)
		if m > 0 {
			w, werr := u.f.WriteAt((*buf)[:m], u.size)
			u.h.Write((*buf)[:w])
			u.size += int64(w)
			n += int64(w)
			if werr != nil {
				u.f.Truncate(u.size) // drop any unreported tail
				err = werr
			}
		}
	}
	if err == io.EOF {
		err = nil
	}
	if n > 0 {
		if serr := u.persist(); serr != nil {
			err = errors.Join(err, serr)
		}
	}
	if err != nil {
		return n, fmt.Errorf("fs: upload %s: append: %w", u.id, err)
	}
	return n, nil
}

// persist fsyncs the data, then records the hash state for its size.
func (u *upload) persist() error {
	if err := u.f.Sync(); err != nil {
		return err
	}
	state, err := u.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return err
	}
	js, err := json.Marshal(hashState{Offset: u.size, State: state})
	if err != nil {
		return err
	}
	return u.d.writeFile(filepath.Join(u.dir, stateFile), func(f *os.File) error {
		_, err := f.Write(js)
		return err
	})
}

// Commit verifies the data against dgst and renames it into the blobs of
// the session's repository. A mismatch ends the session.
func (u *upload) Commit(ctx context.Context, dgst digest.Digest) (storage.BlobInfo, error) {
	if u.f == nil {
		return storage.BlobInfo{}, u.closedErr()
	}
	dst, err := u.d.blobPath(u.repo, dgst)
	if err != nil {
		return storage.BlobInfo{}, err
	}
	got, err := u.digest(ctx, dgst.Algorithm())
	if err != nil {
		return storage.BlobInfo{}, err
	}
	if got != dgst {
		u.end()
		return storage.BlobInfo{}, fmt.Errorf("fs: upload %s is %s, expected %s: %w", u.id, got, dgst, storage.ErrDigestMismatch)
	}
	// Past the check nothing waits on the client: a rename cannot tear.
	if err := u.f.Sync(); err != nil {
		return storage.BlobInfo{}, fmt.Errorf("fs: %w", err)
	}
	if err := u.d.ensureLayout(u.repo, dgst.Algorithm()); err != nil {
		return storage.BlobInfo{}, err
	}
	if err := os.Rename(u.f.Name(), dst); err != nil {
		return storage.BlobInfo{}, fmt.Errorf("fs: %w", err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return storage.BlobInfo{}, err
	}
	fi, err := u.f.Stat()
	u.end()
	if err != nil {
		return storage.BlobInfo{}, fmt.Errorf("fs: %w", err)
	}
	return storage.BlobInfo{Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// digest is the digest of the data: the running hash for sha256, a pass
// over the file otherwise.
func (u *upload) digest(ctx context.Context, alg digest.Algorithm) (digest.Digest, error) {
	if alg == digest.SHA256 {
		return digest.NewDigest(alg, u.h), nil
	}
	h := alg.Hash()
	buf := u.d.getBuf()
	defer u.d.bufs.Put(buf)
	sr := io.NewSectionReader(u.f, 0, u.size)
	if _, err := io.CopyBuffer(h, ctxReader{ctx, sr}, *buf); err != nil {
		return "", fmt.Errorf("fs: upload %s: %w", u.id, err)
	}
	return digest.NewDigest(alg, h), nil
}

// Cancel removes the session.
func (u *upload) Cancel(ctx context.Context) error {
	if u.f == nil {
		return u.closedErr()
	}
	return u.end()
}

// Close releases the session for the next request.
func (u *upload) Close() error {
	if u.f == nil {
		return nil
	}
	err := u.f.Close()
	u.f = nil
	u.d.release(u.id)
	return err
}

// end removes the session and releases it. The directory first moves to
// _tmp, so that a crash cannot leave half a session in _uploads.
func (u *upload) end() error {
	u.f.Close()
	u.f = nil
	defer u.d.release(u.id)
	gone := filepath.Join(u.d.root, tmpDir, "ended-"+u.id)
	err := os.Rename(u.dir, gone)
	if err == nil {
		err = syncDir(filepath.Dir(u.dir))
		if rerr := os.RemoveAll(gone); rerr != nil {
			u.d.log.Warn().Err(rerr).Str("upload", u.id).Msg("failed to remove ended upload session")
		}
	}
	if err != nil {
		u.d.log.Warn().Err(err).Str("upload", u.id).Msg("failed to end upload session")
		return fmt.Errorf("fs: end upload %s: %w", u.id, err)
	}
	return nil
}

func (u *upload) closedErr() error {
	return fmt.Errorf("fs: upload %s is closed: %w", u.id, storage.ErrUploadUnknown)
}
