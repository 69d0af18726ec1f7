// Package dynamo implements meta.Store (and meta.BlobLocator) on Amazon
// DynamoDB, so every member of a Berth cluster shares one metadata store.
//
// # Tables and items
//
// Four tables, created on demand (PAY_PER_REQUEST), all keyed by a string
// partition key "pk" and a string sort key "sk". The Config field and zot's
// key for each name are given in brackets.
//
//	RepoMetaTable [RepoMetaTable, repoMetaTablename]
//	  pk=<repo>            sk="repo"                          repository item:
//	                         gen     generation of the data partitions below
//	                         ver     index.json version the data was derived from
//	                         busy    string set: tokens of writes in flight
//	                         pver    version of a finished write waiting for busy to drain
//	                         mixed   set when writes of two processes overlapped
//	                         listed  set once the catalog entry is written
//	  pk="#catalog"        sk=<repo>                          catalog entry: gen
//	  pk=<repo>#<gen>      sk="tag#"<tag>                     tag: digest
//	  pk=<repo>#<gen>      sk="ref#"<subject>"#"<referrer>    referrer link (no attributes)
//
//	ImageMetaTable [ImageMetaTable, imageMetaTablename]
//	  pk=<repo>#<gen>      sk=<digest>                        manifest record: mediaType,
//	                                                          size, artifactType, subject,
//	                                                          annotations
//
//	RepoBlobsTable [RepoBlobsTable, repoBlobsInfoTablename]
//	  pk=<blob digest>     sk=<repo>                          blob location hint
//
//	VersionTable [VersionTable, versionTablename]
//	  pk="berth"           sk="schema"                        schema: layout version (N)
//
// '#' never occurs in an OCI repository name, so the key spaces cannot
// collide; names holding '#' are refused. DynamoDB orders sort keys by
// their UTF-8 bytes, so Query gives the byte-wise order that catalog and
// tag pagination need: Repos is a Query on the catalog partition, Tags a
// Query on the "tag#" range of the data partition. Every read that must be
// current is a consistent read.
//
// # Writes without transactions
//
// Each write touches several items and DynamoDB-compatible test servers
// lack TransactWriteItems, so a write is a short protocol around the
// repository item (see txn.go):
//
//  1. begin: one UpdateItem adds a random token to busy (creating the
//     repository with a fresh gen if needed) and returns gen;
//  2. the data items of partition <repo>#<gen> are written, each with a
//     condition where two writers could clash (a tag is removed only if it
//     still names the deleted digest, a manifest delete only if present);
//  3. end, the last step: the token leaves busy and, if no other write is
//     in flight, ver is set — in one conditional UpdateItem on the common
//     path. A write that finishes while others are in flight parks its
//     version in pver; the last one out records it.
//
// So ver only names a version once every write that started before it has
// finished. A process dying between 1 and 3 leaves its token in busy and
// ver stale for good, which Berth's startup rebuild detects (ver differs
// from storage) and repairs with ReplaceRepo. When writes from two
// processes overlap their relative order is unknown, so the last one out
// records "stale:"+version instead: the repository is rebuilt at next
// start rather than trusted. Writes from one process are ordered by the
// caller and do not mark it.
//
// ReplaceRepo writes the new content into a fresh generation, then flips
// gen and ver in one conditional update (clearing busy) and finally deletes
// the old generation's items, so readers never see a half-replaced
// repository and a crash leaves only unreachable items behind. DeleteRepo
// deletes the repository item (conditioned on gen), then the data items.
// A write that loses its generation to ReplaceRepo or DeleteRepo notices
// at step 3 and starts again on the new generation, marking the version
// stale. Items a racing or crashed write leaves under a dead generation
// are unreachable and cost only storage.
//
// A tag never names a deleted manifest for long: PutManifest re-reads the
// manifest after writing its tags and withdraws them if a concurrent
// DeleteManifest removed it, and DeleteManifest sweeps the tags naming the
// digest both before and after deleting the record.
package dynamo

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/meta"
)

// Default table names.
const (
	DefaultRepoMetaTable  = "BerthRepoMeta"
	DefaultImageMetaTable = "BerthImageMeta"
	DefaultRepoBlobsTable = "BerthRepoBlobs"
	DefaultVersionTable   = "BerthVersion"
)

// Tuning.
const (
	maxAttempts   = 5                // SDK retries per request (standard retryer)
	maxRestarts   = 4                // restarts of a write that lost its generation
	commitTimeout = 30 * time.Second // bound on a write once started
	createTimeout = 2 * time.Minute  // bound on waiting for new tables
)

// Config configures the DynamoDB store.
type Config struct {
	// Endpoint is a custom endpoint URL (e.g. http://127.0.0.1:8000);
	// empty means AWS.
	Endpoint string
	// Region is the AWS region; empty means the SDK's default chain
	// (AWS_REGION, shared config). Required in the end.
	Region string
	// AccessKey and SecretKey are static credentials; empty means the
	// SDK's default credential chain.
	AccessKey, SecretKey string
	// RepoMetaTable holds repository items, the catalog, tags and
	// referrer links (zot: repoMetaTablename). Default "BerthRepoMeta".
	RepoMetaTable string
	// ImageMetaTable holds manifest records (zot: imageMetaTablename).
	// Default "BerthImageMeta".
	ImageMetaTable string
	// RepoBlobsTable holds blob location hints (zot:
	// repoBlobsInfoTablename). Default "BerthRepoBlobs".
	RepoBlobsTable string
	// VersionTable holds the layout version (zot: versionTablename).
	// Default "BerthVersion".
	VersionTable string
	// ResponseTimeout bounds the wait for DynamoDB's response headers once
	// a request is sent (0: 30 s).
	ResponseTimeout time.Duration
}

// defaultResponseTimeout is Config.ResponseTimeout's default.
const defaultResponseTimeout = 30 * time.Second

// withDefaults returns c with empty table names defaulted.
func (c Config) withDefaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.RepoMetaTable, DefaultRepoMetaTable)
	def(&c.ImageMetaTable, DefaultImageMetaTable)
	def(&c.RepoBlobsTable, DefaultRepoBlobsTable)
	def(&c.VersionTable, DefaultVersionTable)
	return c
}

// Store is a meta.Store on DynamoDB. It is safe for concurrent use, and any
// number of Stores (in any number of processes) may share the tables.
type Store struct {
	db  *dynamodb.Client
	log zerolog.Logger
	id  string // this Store's prefix of write tokens

	repoTable, imageTable, blobTable, versionTable string

	// pageLimit, when > 0, caps the Limit of every Query (tests use it to
	// cross DynamoDB pages).
	pageLimit int32
}

var (
	_ meta.Store       = (*Store)(nil)
	_ meta.BlobLocator = (*Store)(nil)
)

// New connects to DynamoDB, creates any missing table (tolerating a
// concurrent creator), waits until all are ACTIVE and checks the layout
// version.
func New(ctx context.Context, cfg Config, log zerolog.Logger) (*Store, error) {
	cfg = cfg.withDefaults()
	opts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = maxAttempts
				o.RateLimiter = ratelimit.None
			})
		}),
		// The SDK's client (it must stay a BuildableClient for
		// AWS_CA_BUNDLE), keeping more idle connections: a write is a
		// burst of requests.
		config.WithHTTPClient(awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConnsPerHost = 64
			// A request that gets no answer is retried, then fails as
			// unavailable, instead of hanging with a repository's lock held.
			t.ResponseHeaderTimeout = cmp.Or(cfg.ResponseTimeout, defaultResponseTimeout)
		})),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKey != "" || cfg.SecretKey != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("dynamo: load aws config: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("dynamo: no region configured")
	}
	s := &Store{
		db: dynamodb.NewFromConfig(awsCfg, func(o *dynamodb.Options) {
			if cfg.Endpoint != "" {
				o.BaseEndpoint = aws.String(cfg.Endpoint)
			}
		}),
		log:          log.With().Str("component", "dynamo").Logger(),
		id:           randHex(6),
		repoTable:    cfg.RepoMetaTable,
		imageTable:   cfg.ImageMetaTable,
		blobTable:    cfg.RepoBlobsTable,
		versionTable: cfg.VersionTable,
	}
	if err := s.ensureTables(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Close releases the Store, which holds nothing but pooled connections
// (they close when idle). The Store must not be used afterwards.
func (s *Store) Close() error {
	return nil
}

// Key vocabulary.
const (
	attrPK       = "pk"
	attrSK       = "sk"
	repoSK       = "repo"
	catalogPK    = "#catalog"
	tagPrefix    = "tag#"
	tagEnd       = "tag$" // just after every "tag#…" key
	refPrefix    = "ref#"
	stalePrefix  = "stale:"
	schemaPK     = "berth"
	schemaSK     = "schema"
	schemaLayout = 1
)

// dataPK is the partition of repo's data items in generation gen.
func dataPK(repo, gen string) string { return repo + "#" + gen }

// refSK is the sort key of the link from subject to referrer.
func refSK(subject, referrer string) string { return refPrefix + subject + "#" + referrer }

// checkRepo refuses names that cannot be stored.
func checkRepo(repo string) error {
	if repo == "" {
		return errors.New("empty repository name")
	}
	if strings.Contains(repo, "#") {
		return fmt.Errorf("repository name %q contains '#'", repo)
	}
	return nil
}

// randHex returns n random bytes in hex.
func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// detach returns a context for the commit section of a write: a client
// hang-up must not tear a multi-item write, but it stays bounded.
func detach(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
}
