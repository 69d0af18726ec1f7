package s3

import (
	"bytes"
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
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/berthreg/berth/pkg/storage"
)

const (
	stateFile       = "state.json"
	dataFile        = "data" // key of the multipart upload
	tailPrefix      = "tail-"
	idLen           = 32 // hex of 128 random bits
	maxTailSegments = 32
)

// state is a session's state.json.
type state struct {
	Repo      string    `json:"repo"`
	StartedAt time.Time `json:"startedAt"`
	PartSize  int64     `json:"partSize"` // of every part; fixed when the session starts
	UploadID  string    `json:"multipartUploadId,omitempty"`
	Parts     []string  `json:"parts,omitempty"` // ETags of parts 1..n
	Tail      []segment `json:"tail,omitempty"`  // bytes after the parts, in order
	Size      int64     `json:"size"`
	Hash      []byte    `json:"sha256"`              // sha256 state (MarshalBinary) of all Size bytes
	UpdatedAt time.Time `json:"updatedAt,omitempty"` // last write of the state
}

// segment is a tail object, named relative to the session.
type segment struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

func (st *state) tailSize() int64 {
	var n int64
	for _, s := range st.Tail {
		n += s.Size
	}
	return n
}

// clone copies st deeply enough to be changed and persisted.
func (st state) clone() state {
	st.Parts = append([]string(nil), st.Parts...)
	st.Tail = append([]segment(nil), st.Tail...)
	return st
}

// NewUpload starts a session for repo: it writes state.json with
// If-None-Match: *. The multipart upload is created with the first part.
func (d *Driver) NewUpload(ctx context.Context, repo string) (storage.Upload, error) {
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	var raw [idLen / 2]byte
	rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	u := &upload{d: d, id: id, h: sha256.New(), open: true}
	st := state{Repo: repo, StartedAt: time.Now().UTC().Truncate(time.Millisecond), PartSize: d.partSize}
	d.acquire(id) // unknown to anyone else: cannot be busy
	if err := u.persist(ctx, st); err != nil {
		d.release(id)
		return nil, err
	}
	return u, nil
}

// Upload resumes session id of repo: ErrUploadUnknown when there is no
// such session of repo, ErrUploadBusy while another Upload of this Driver
// holds it.
func (d *Driver) Upload(ctx context.Context, repo, id string) (storage.Upload, error) {
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	if !validID(id) {
		return nil, fmt.Errorf("s3: upload %q: %w", id, storage.ErrUploadUnknown)
	}
	if !d.acquire(id) {
		return nil, fmt.Errorf("s3: upload %s: %w", id, storage.ErrUploadBusy)
	}
	st, etag, err := d.loadState(ctx, id)
	if err == nil && st.Repo != repo {
		err = fmt.Errorf("s3: upload %s of %s: %w", id, repo, storage.ErrUploadUnknown)
	}
	if err != nil {
		d.release(id)
		return nil, err
	}
	u := &upload{d: d, id: id, st: st, etag: etag, h: sha256.New(), open: true}
	if err := u.rollback(); err != nil {
		d.release(id)
		return nil, fmt.Errorf("s3: upload %s: hash state: %w", id, err)
	}
	return u, nil
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

func (d *Driver) sessionKey(id, name string) string { return d.key(uploadsDir, id, name) }

// loadState reads state.json of session id and its ETag.
func (d *Driver) loadState(ctx context.Context, id string) (state, string, error) {
	var st state
	js, etag, err := d.readSmall(ctx, d.sessionKey(id, stateFile))
	switch {
	case err != nil:
		return st, "", fmt.Errorf("s3: upload %s: %w", id, err)
	case js == nil:
		return st, "", fmt.Errorf("s3: upload %s: %w", id, storage.ErrUploadUnknown)
	}
	if err := json.Unmarshal(js, &st); err != nil {
		return st, "", fmt.Errorf("s3: upload %s: %s: %w", id, stateFile, err)
	}
	return st, etag, nil
}

// upload is a held session; one request uses it at a time.
type upload struct {
	d    *Driver
	id   string
	st   state     // as persisted
	etag string    // of state.json as persisted; "" before it exists
	h    hash.Hash // sha256; of st.Size bytes between Appends
	open bool      // false once closed or ended
	lost error     // set when another writer changed the session
}

func (u *upload) ID() string           { return u.id }
func (u *upload) Size() int64          { return u.st.Size }
func (u *upload) StartedAt() time.Time { return u.st.StartedAt }

// persist writes next as state.json, conditional on the state being the
// one u last wrote or read. On success next becomes u.st.
func (u *upload) persist(ctx context.Context, next state) error {
	h, err := u.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return fmt.Errorf("s3: upload %s: %w", u.id, err)
	}
	next.Hash = h
	next.UpdatedAt = time.Now().UTC().Truncate(time.Millisecond)
	js, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("s3: upload %s: %w", u.id, err)
	}
	key := u.d.sessionKey(u.id, stateFile)
	in := &s3.PutObjectInput{
		Bucket: &u.d.bucket, Key: &key, Body: bytes.NewReader(js),
		ContentLength: aws.Int64(int64(len(js))), ContentType: aws.String("application/json"),
	}
	if u.etag == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(u.etag)
	}
	out, err := u.d.c.PutObject(ctx, in)
	if isConflict(err) {
		// A retried request can fail on its own first attempt's write.
		if now, etag, rerr := u.d.readSmall(ctx, key); rerr == nil && bytes.Equal(now, js) {
			u.st, u.etag = next, etag
			return nil
		}
	}
	switch {
	case err == nil:
	case isConflict(err):
		u.lost = fmt.Errorf("s3: upload %s: state changed by another writer: %w", u.id, storage.ErrUploadBusy)
		return u.lost
	case isNotFound(err):
		u.lost = fmt.Errorf("s3: upload %s: ended by another writer: %w", u.id, storage.ErrUploadUnknown)
		return u.lost
	default:
		return u.d.fail(ctx, "upload "+u.id+": write state", err)
	}
	if out.ETag == nil { // conditional writes need it; AWS and versitygw send it
		return fmt.Errorf("s3: upload %s: write state: no ETag in the response", u.id)
	}
	u.st, u.etag = next, *out.ETag
	return nil
}

// rollback resets the running hash to the persisted state.
func (u *upload) rollback() error {
	if u.st.Hash == nil {
		u.h.Reset()
		return nil
	}
	return u.h.(encoding.BinaryUnmarshaler).UnmarshalBinary(u.st.Hash)
}

// loadTail reads the tail objects into p, which is st.tailSize() long.
func (u *upload) loadTail(ctx context.Context, p []byte) error {
	for _, s := range u.st.Tail {
		key := u.d.sessionKey(u.id, s.Name)
		out, err := u.d.c.GetObject(ctx, &s3.GetObjectInput{Bucket: &u.d.bucket, Key: &key})
		if err != nil {
			if isNotFound(err) {
				return fmt.Errorf("s3: upload %s: %s is missing: %w", u.id, s.Name, storage.ErrUploadUnknown)
			}
			return u.d.fail(ctx, "upload "+u.id+": read "+s.Name, err)
		}
		_, err = io.ReadFull(out.Body, p[:s.Size])
		out.Body.Close()
		if err != nil {
			return u.d.fail(ctx, "upload "+u.id+": read "+s.Name, err)
		}
		p = p[s.Size:]
	}
	return nil
}

// deleteSegments removes tail objects that state no longer references,
// best effort: the end of the session removes any left.
func (u *upload) deleteSegments(ctx context.Context, segs []segment) {
	keys := make([]string, len(segs))
	for i, s := range segs {
		keys[i] = u.d.sessionKey(u.id, s.Name)
	}
	if err := u.d.deleteKeys(ctx, keys); err != nil {
		u.d.log.Warn().Err(err).Str("upload", u.id).Msg("failed to delete tail objects")
	}
}

// endSession removes session id: it aborts its multipart upload, then
// deletes state.json (the session is gone from then on) and every other
// object of the session.
func (d *Driver) endSession(ctx context.Context, id, uploadID string) error {
	if uploadID != "" {
		key := d.sessionKey(id, dataFile)
		_, err := d.c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &d.bucket, Key: &key, UploadId: &uploadID})
		if err != nil && !isNoSuchUpload(err) {
			return d.fail(ctx, "upload "+id+": abort multipart upload", err)
		}
	}
	if err := d.deleteKeys(ctx, []string{d.sessionKey(id, stateFile)}); err != nil {
		return err
	}
	var keys []string
	p := s3.NewListObjectsV2Paginator(d.c, &s3.ListObjectsV2Input{Bucket: &d.bucket, Prefix: aws.String(d.sessionKey(id, ""))})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return d.fail(ctx, "upload "+id+": list", err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return d.deleteKeys(ctx, keys)
}

// deleteKeys deletes keys, 1000 per request; missing keys are no error.
func (d *Driver) deleteKeys(ctx context.Context, keys []string) error {
	for len(keys) > 0 {
		batch := keys[:min(len(keys), 1000)]
		keys = keys[len(batch):]
		objs := make([]types.ObjectIdentifier, len(batch))
		for i, k := range batch {
			objs[i] = types.ObjectIdentifier{Key: aws.String(k)}
		}
		out, err := d.c.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: &d.bucket, Delete: &types.Delete{Objects: objs, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return d.fail(ctx, "delete", err)
		}
		for _, e := range out.Errors {
			if aws.ToString(e.Code) != "NoSuchKey" {
				return fmt.Errorf("s3: delete %s: %s: %s", aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message))
			}
		}
	}
	return nil
}

// Uploads calls fn for every upload session, open or not, in no order.
func (d *Driver) Uploads(ctx context.Context, fn func(repo, id string, lastActive time.Time) error) error {
	dir := d.key(uploadsDir) + "/"
	p := s3.NewListObjectsV2Paginator(d.c, &s3.ListObjectsV2Input{
		Bucket: &d.bucket, Prefix: aws.String(dir), Delimiter: aws.String("/"),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return d.fail(ctx, "list uploads", err)
		}
		for _, cp := range page.CommonPrefixes {
			id := strings.TrimSuffix(strings.TrimPrefix(aws.ToString(cp.Prefix), dir), "/")
			if !validID(id) {
				continue
			}
			st, _, err := d.loadState(ctx, id)
			if errors.Is(err, storage.ErrUploadUnknown) {
				continue // ended meanwhile, or objects without a session
			}
			if err != nil {
				d.log.Warn().Err(err).Str("upload", id).Msg("failed to read upload session")
				continue
			}
			last := st.StartedAt
			if st.UpdatedAt.After(last) {
				last = st.UpdatedAt
			}
			if err := fn(st.Repo, id, last); err != nil {
				return err
			}
		}
	}
	return nil
}

// AbortStale ends upload sessions not written for olderThan (state.json is
// rewritten by every Append), except those held by this Driver, and aborts
// multipart uploads under _uploads/ initiated before then that no session
// refers to. It returns how many sessions and orphaned multipart uploads it
// removed.
//
// owns, when not nil, limits the work to sessions of repositories this
// process is responsible for (in a cluster, the ones it owns: only the
// owner knows whether a session is in use). Leftovers whose repository is
// unknown are judged by the name "_uploads/<id>", so exactly one member
// takes each.
func (d *Driver) AbortStale(ctx context.Context, olderThan time.Duration, owns func(repo string) bool) (int, error) {
	if owns == nil {
		owns = func(string) bool { return true }
	}
	cutoff := time.Now().Add(-olderThan)
	dir := d.key(uploadsDir) + "/"
	latest := map[string]time.Time{} // session id -> newest object
	p := s3.NewListObjectsV2Paginator(d.c, &s3.ListObjectsV2Input{Bucket: &d.bucket, Prefix: aws.String(dir)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return 0, d.fail(ctx, "list uploads", err)
		}
		for _, o := range page.Contents {
			id, _, _ := strings.Cut(strings.TrimPrefix(aws.ToString(o.Key), dir), "/")
			if t := aws.ToTime(o.LastModified); t.After(latest[id]) {
				latest[id] = t
			}
		}
	}
	n := 0
	ended := map[string]bool{}
	for id, t := range latest {
		if !t.Before(cutoff) || !validID(id) || !d.acquire(id) {
			continue
		}
		st, _, err := d.loadState(ctx, id)
		mine := (err == nil && owns(st.Repo)) || (errors.Is(err, storage.ErrUploadUnknown) && owns(uploadsDir+"/"+id))
		if !mine {
			d.release(id)
			continue
		}
		err = d.endSession(ctx, id, st.UploadID)
		d.release(id)
		if err != nil {
			return n, err
		}
		d.log.Debug().Str("upload", id).Time("lastWrite", t).Msg("removed stale upload session")
		ended[id] = true
		n++
	}

	mp := s3.NewListMultipartUploadsPaginator(d.c, &s3.ListMultipartUploadsInput{Bucket: &d.bucket, Prefix: aws.String(dir)})
	for mp.HasMorePages() {
		page, err := mp.NextPage(ctx)
		if err != nil {
			return n, d.fail(ctx, "list multipart uploads", err)
		}
		for _, m := range page.Uploads {
			key, uploadID := aws.ToString(m.Key), aws.ToString(m.UploadId)
			id, _, _ := strings.Cut(strings.TrimPrefix(key, dir), "/")
			if ended[id] || !aws.ToTime(m.Initiated).Before(cutoff) {
				continue
			}
			st, _, err := d.loadState(ctx, id)
			switch {
			case err == nil && st.UploadID == uploadID:
				continue // a live session's
			case err != nil && !errors.Is(err, storage.ErrUploadUnknown):
				return n, err
			case err == nil && !owns(st.Repo), err != nil && !owns(uploadsDir+"/"+id):
				continue // another member's to judge
			}
			_, err = d.c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &d.bucket, Key: &key, UploadId: &uploadID})
			if err != nil && !isNoSuchUpload(err) {
				return n, d.fail(ctx, "abort multipart upload of "+key, err)
			}
			d.log.Debug().Str("key", key).Msg("aborted orphaned multipart upload")
			n++
		}
	}
	return n, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
