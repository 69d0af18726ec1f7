// Package s3 is the storage driver for S3 and S3-compatible servers. Every
// repository is an OCI image layout under the key prefix, as with the fs
// driver:
//
//	<prefix>/<repo>/oci-layout                   {"imageLayoutVersion":"1.0.0"}
//	<prefix>/<repo>/index.json                   written by PutIndex only
//	<prefix>/<repo>/blobs/<alg>/<hex>            blobs and manifests
//	<prefix>/_uploads/<id>/state.json            session state (see below)
//	<prefix>/_uploads/<id>/tail-<seq>-<rand>     bytes not yet making a full part
//	<prefix>/_uploads/<id>/data                  key of the session's multipart upload
//
// Repository name components start with [a-z0-9], so "_uploads" never
// collides with a repository.
//
// # Uploads
//
// An upload streams into an S3 multipart upload of fixed-size parts
// (Config.PartSize). Appends of any size work: bytes that do not yet fill a
// part are stored as small tail objects, at most maxTailSegments of them,
// read back (less than one part) when the next part fills. Each Append holds
// a single pooled part buffer, whatever the blob size. The multipart upload
// is created with the first full part; smaller blobs never use one.
//
// state.json records the repository, start time, multipart upload id, the
// ETags of the uploaded parts, the tail objects, the size and the SHA-256
// state of all bytes received. It is rewritten after every part and at the
// end of every Append, so that another process, or this one after a
// restart, continues the session where it stood.
//
// A blob key is written only when its content is verified: a blob smaller
// than one part is checked in memory and written with one PutObject; a
// larger one is checked with the running SHA-256 before the multipart upload
// is completed onto the data key (sha512: by reading the completed object
// back), and then copied server side to its blob key (CopyObject, or
// UploadPartCopy above 5 GiB). The largest blob is 10,000 parts.
//
// # Concurrency
//
// Within a Driver a session is held by one Upload at a time (ErrUploadBusy).
// Across processes, state.json is written with If-Match on the ETag it had
// when the session was loaded (If-None-Match: * when it is created), so of
// two writers of one session only the first to persist wins; the other gets
// ErrUploadBusy and its Upload is unusable. The loser may have overwritten a
// part of the winner before noticing; S3 then refuses to complete the upload
// (InvalidPart) and the session must be cancelled: content is never
// corrupted silently. Tail objects have unique names, so losers cannot
// overwrite them.
//
// PutIndex is a compare-and-set on index.json: it reads the object (ETag
// and bytes, whose SHA-256 is the version), compares the version with the
// expected one, and writes with If-Match: <ETag> (If-None-Match: * for a new
// repository). A 412 or 409 from S3 is ErrIndexConflict, so concurrent
// writers in any number of processes never lose an update. This needs an S3
// server honouring conditional PutObject: AWS S3 does since 2024, and
// versitygw v1.8.0 does (If-Match and If-None-Match: *, both atomic under
// concurrent writers; tested in this package), so no lock object is needed.
// A conditional write that fails with 412 is read back: if the object holds
// exactly the bytes written, an earlier attempt of the same (retried)
// request landed, and the write counts as done.
//
// Requests are retried by the SDK's standard retryer (5 attempts,
// exponential backoff with jitter up to 5 s); failures that persist
// (throttling, 5xx, connection errors) wrap ErrUnavailable.
//
// Beyond storage.Driver and storage.UploadLister, the driver offers
// RedirectURL (presigned blob GETs, when Config.Redirect is set) and
// AbortStale (removal of abandoned sessions and multipart uploads).
package s3

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/logging"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/storage"
)

// ErrUnavailable marks a request to S3 that failed after retries because
// the service is unreachable, throttling or failing (5xx).
var ErrUnavailable = storage.ErrUnavailable

const (
	uploadsDir = "_uploads"
	layoutFile = storage.LayoutFile
	indexFile  = storage.IndexFile
	blobsDir   = storage.BlobsDir
	layoutJSON = `{"imageLayoutVersion":"1.0.0"}`

	// DefaultPartSize is the multipart part size when Config.PartSize is 0.
	DefaultPartSize = 10 << 20
	// MinPartSize is S3's smallest part (except the last one).
	MinPartSize = 5 << 20
	maxPartSize = 5 << 30
	maxParts    = 10000

	maxAttempts = 5
	maxBackoff  = 5 * time.Second
	// finishTimeout bounds writes that run after the client's context
	// ended (persisting an Append) or must not be torn (Commit).
	finishTimeout = 10 * time.Minute
)

// Config configures a Driver.
type Config struct {
	Bucket   string
	Region   string // default us-east-1 when Endpoint is set
	Endpoint string // regionendpoint, e.g. http://127.0.0.1:7070; empty: AWS
	// Prefix is the key prefix everything is stored under (rootdirectory).
	Prefix         string
	ForcePathStyle bool
	// Secure selects https when Endpoint has no scheme.
	Secure     bool
	SkipVerify bool
	// AccessKey and SecretKey are static credentials; empty: the SDK's
	// default credential chain.
	AccessKey, SecretKey string
	// PartSize is the multipart part size: default 10 MiB, at least 5 MiB.
	// It is also the memory an Append holds.
	PartSize int64
	// Redirect enables RedirectURL (presigned GETs for blobs).
	Redirect bool
	// ResponseTimeout bounds the wait for S3's response headers once a
	// request is sent (0: DefaultResponseTimeout). A request that gets no
	// answer is retried, then the operation fails as ErrUnavailable,
	// instead of hanging with a repository's lock held.
	ResponseTimeout time.Duration
}

// DefaultResponseTimeout is Config.ResponseTimeout's default: generous,
// since completing a multipart upload on some servers answers only once
// the parts are joined.
const DefaultResponseTimeout = 2 * time.Minute

var (
	_ storage.Driver       = (*Driver)(nil)
	_ storage.UploadLister = (*Driver)(nil)
)

// Driver stores repositories in an S3 bucket. It is safe for concurrent
// use, and several Drivers (processes) may share one bucket and prefix.
type Driver struct {
	c        *s3.Client
	presign  *s3.PresignClient
	bucket   string
	prefix   string // "" or ends with "/"
	partSize int64
	redirect bool
	log      zerolog.Logger
	bufs     sync.Pool // *[]byte of partSize

	// Server-side copy: CopyObject up to maxCopy, else UploadPartCopy in
	// parts of copyPart. Fields so that tests can lower them.
	maxCopy, copyPart int64

	sessions storage.SessionLocks // upload ids held by an open Upload
	layouts  sync.Map             // repo -> struct{}: oci-layout known to exist
}

// New connects to the bucket, creating it if missing.
func New(ctx context.Context, cfg Config, log zerolog.Logger) (*Driver, error) {
	return newDriver(ctx, cfg, log, maxBackoff)
}

func newDriver(ctx context.Context, cfg Config, log zerolog.Logger, backoff time.Duration) (*Driver, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: bucket is required")
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultPartSize
	}
	if cfg.PartSize < MinPartSize || cfg.PartSize > maxPartSize {
		return nil, fmt.Errorf("s3: part size %d: must be between 5 MiB and 5 GiB", cfg.PartSize)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	if cfg.Region == "" && cfg.Endpoint != "" {
		cfg.Region = "us-east-1"
	}

	hc := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.MaxIdleConnsPerHost = 64
		tr.ResponseHeaderTimeout = cmp.Or(cfg.ResponseTimeout, DefaultResponseTimeout)
		if cfg.SkipVerify {
			tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // asked for by config
		}
	})
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(hc),
		config.WithRetryer(func() aws.Retryer {
			r := retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = maxAttempts
				o.MaxBackoff = backoff
			})
			// Some S3-compatible servers on a filesystem (versitygw's posix
			// backend) answer a PutObject 409 ExistingObjectIsDirectory when
			// a concurrent delete removes the directory being written into;
			// the write succeeds when tried again.
			return retry.AddWithErrorCodes(r, "ExistingObjectIsDirectory")
		}),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKey != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: load aws config: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("s3: region is required (config or AWS_REGION)")
	}
	endpoint := cfg.Endpoint
	if endpoint != "" && !strings.Contains(endpoint, "://") {
		scheme := "http://"
		if cfg.Secure {
			scheme = "https://"
		}
		endpoint = scheme + endpoint
	}
	log = log.With().Str("component", "storage-s3").Logger()
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.Logger = sdkLogger(log)
		o.UsePathStyle = cfg.ForcePathStyle
		// Blobs are verified against their SHA-256 digest by the registry;
		// the SDK's extra CRC on every upload and download only costs CPU.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
	})

	d := &Driver{
		c:        client,
		presign:  s3.NewPresignClient(client),
		bucket:   cfg.Bucket,
		prefix:   prefix,
		partSize: cfg.PartSize,
		redirect: cfg.Redirect,
		log:      log,
		maxCopy:  5 << 30,
		copyPart: 1 << 30,
	}
	d.bufs.New = func() any { b := make([]byte, d.partSize); return &b }
	if err := d.ensureBucket(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// ensureBucket creates the bucket unless it exists.
func (d *Driver) ensureBucket(ctx context.Context) error {
	_, err := d.c.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &d.bucket})
	if err == nil {
		return nil
	}
	if !isNotFound(err) && apiCode(err) != "NoSuchBucket" {
		return d.fail(ctx, "head bucket "+d.bucket, err)
	}
	_, err = d.c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &d.bucket})
	switch apiCode(err) {
	case "":
		d.log.Info().Str("bucket", d.bucket).Msg("created bucket")
		return nil
	case "BucketAlreadyOwnedByYou", "BucketAlreadyExists":
		// Created meanwhile by another member. (BucketAlreadyExists from
		// AWS can also mean someone else's: then requests fail with 403.)
		return nil
	}
	return d.fail(ctx, "create bucket "+d.bucket, err)
}

// key joins the prefix and path elements.
func (d *Driver) key(elem ...string) string { return d.prefix + strings.Join(elem, "/") }

// blobKey is the key of dgst in repo; it validates both.
func (d *Driver) blobKey(repo string, dgst digest.Digest) (string, error) {
	if err := checkRepo(repo); err != nil {
		return "", err
	}
	if err := storage.ValidateDigest(dgst); err != nil {
		return "", fmt.Errorf("s3: %w", err)
	}
	return d.key(repo, blobsDir, dgst.Algorithm().String(), dgst.Encoded()), nil
}

func checkRepo(repo string) error {
	if !validRepo(repo) {
		return fmt.Errorf("s3: invalid repository name %q: %w", repo, storage.ErrNameInvalid)
	}
	return nil
}

func validRepo(repo string) bool { return storage.ValidRepoPath(repo) }

func validComponent(c string, first bool) bool { return storage.ValidRepoComponent(c, first) }

// ensureLayout writes repo's oci-layout file unless it exists.
func (d *Driver) ensureLayout(ctx context.Context, repo string) error {
	if _, ok := d.layouts.Load(repo); ok {
		return nil
	}
	key := d.key(repo, layoutFile)
	_, err := d.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &d.bucket, Key: &key})
	if isNotFound(err) {
		_, err = d.c.PutObject(ctx, &s3.PutObjectInput{
			Bucket: &d.bucket, Key: &key, Body: strings.NewReader(layoutJSON),
			ContentType: aws.String("application/json"),
		})
	}
	if err != nil {
		return d.fail(ctx, "write "+key, err)
	}
	d.layouts.Store(repo, struct{}{})
	return nil
}

// sdkLogger sends the SDK's log lines to log: its warnings as warnings,
// the rest (such as "Response has no supported checksum") at debug level.
func sdkLogger(log zerolog.Logger) logging.Logger {
	return logging.LoggerFunc(func(c logging.Classification, format string, v ...any) {
		ev := log.Debug()
		if c == logging.Warn {
			ev = log.Warn()
		}
		ev.Str("sdk", fmt.Sprintf(format, v...)).Msg("aws sdk message")
	})
}

// maxSmall bounds objects read whole: index.json and state.json.
const maxSmall = 64 << 20

// readSmall reads the object key whole, with its ETag; nil data and no
// error when it does not exist.
func (d *Driver) readSmall(ctx context.Context, key string) ([]byte, string, error) {
	out, err := d.c.GetObject(ctx, &s3.GetObjectInput{Bucket: &d.bucket, Key: &key})
	if err != nil {
		if isNotFound(err) {
			return nil, "", nil
		}
		return nil, "", d.fail(ctx, "get "+key, err)
	}
	defer out.Body.Close()
	data, err := io.ReadAll(io.LimitReader(out.Body, maxSmall+1))
	if err == nil && len(data) > maxSmall {
		err = fmt.Errorf("larger than %d bytes", maxSmall)
	}
	if err != nil {
		return nil, "", d.fail(ctx, "get "+key, err)
	}
	if data == nil {
		data = []byte{}
	}
	return data, aws.ToString(out.ETag), nil
}

func (d *Driver) getBuf() *[]byte { return d.bufs.Get().(*[]byte) }

func (d *Driver) acquire(id string) bool { return d.sessions.Acquire(id) }

func (d *Driver) release(id string) { d.sessions.Release(id) }

func (d *Driver) held(id string) bool { return d.sessions.Held(id) }
