package config

import (
	"fmt"
	"net/url"
	"strings"
)

// Storage and cache driver names.
const (
	DriverFilesystem = "filesystem" // storage.storageDriver.name: local directory (the default)
	DriverS3         = "s3"         // storage.storageDriver.name: S3-compatible object store
	CacheBoltDB      = "boltdb"     // storage.cacheDriver.name: local bbolt file (the default)
	CacheDynamoDB    = "dynamodb"   // storage.cacheDriver.name: DynamoDB tables
)

// MinS3ChunkSize is the smallest storage.storageDriver.chunksize, the S3
// minimum multipart part size (5 MiB).
const MinS3ChunkSize = 5 << 20

// StorageConfig is where images live and how garbage is collected.
type StorageConfig struct {
	// RootDirectory is the local directory holding the repositories (and
	// the boltdb metadata unless cacheDriver.rootDir says otherwise).
	// Default "./data".
	RootDirectory string `json:"rootDirectory"`
	// Dedupe must stay false: Berth keeps blobs per repository. Default
	// false.
	Dedupe *bool `json:"dedupe,omitempty"`
	// GC turns on garbage collection of unreferenced blobs and untagged
	// manifests. Default true.
	GC *bool `json:"gc,omitempty"`
	// GCDelay is how old an unreferenced blob must be before it is
	// collected, so in-flight pushes keep theirs. Default 1h.
	GCDelay Duration `json:"gcDelay"`
	// GCInterval is the time between collection runs; 0 means no periodic
	// run. Default 1h.
	GCInterval Duration `json:"gcInterval"`
	// Retention deletes tags and manifests by policy during GC. Nil keeps
	// every tag.
	Retention *RetentionConfig `json:"retention,omitempty"`
	// StorageDriver selects the blob store. Nil means the filesystem under
	// RootDirectory.
	StorageDriver *StorageDriverConfig `json:"storageDriver,omitempty"`
	// CacheDriver selects the metadata database. Nil means boltdb under
	// RootDirectory.
	CacheDriver *CacheDriverConfig `json:"cacheDriver,omitempty"`
}

// RetentionConfig is zot's retention: which tags to keep during GC.
type RetentionConfig struct {
	// DryRun logs what would be deleted and deletes nothing.
	DryRun bool `json:"dryRun"`
	// Delay is how old an untagged manifest or an orphan referrer must be
	// before it is deleted. Default: storage.gcDelay.
	Delay Duration `json:"delay"`
	// Policies are tried in order; the first with a repository glob that
	// matches a repository applies to it. A repository no policy matches
	// keeps all its tags and loses its untagged manifests.
	Policies []RetentionPolicy `json:"policies"`
}

// RetentionPolicy applies to the repositories matching one of its globs.
type RetentionPolicy struct {
	// Repositories are globs (path.Match syntax, "**" crosses "/"). A
	// policy without any matches no repository, as in zot.
	Repositories []string `json:"repositories"`
	// DeleteReferrers deletes referrers whose subject is gone.
	DeleteReferrers bool `json:"deleteReferrers"`
	// DeleteUntagged deletes manifests no tag points to. Default true.
	DeleteUntagged *bool `json:"deleteUntagged,omitempty"`
	// KeepTags decides which tags stay: a tag is kept when any entry keeps
	// it and deleted when none does. Empty keeps every tag.
	KeepTags []KeepTagsPolicy `json:"keepTags"`
}

// KeepTagsPolicy keeps the tags matching Patterns: all of them when no
// criterion is set, else those meeting at least one criterion set.
type KeepTagsPolicy struct {
	// Patterns are regular expressions on the tag; empty matches every tag.
	Patterns []string `json:"patterns"`
	// PulledWithin keeps tags pulled within this long.
	PulledWithin *Duration `json:"pulledWithin,omitempty"`
	// PushedWithin keeps tags pushed within this long.
	PushedWithin *Duration `json:"pushedWithin,omitempty"`
	// MostRecentlyPushedCount keeps the N most recently pushed tags.
	MostRecentlyPushedCount int `json:"mostRecentlyPushedCount"`
	// MostRecentlyPulledCount keeps the N most recently pulled tags.
	MostRecentlyPulledCount int `json:"mostRecentlyPulledCount"`
}

// StorageDriverConfig is the blob store. The keys are the lower-case ones
// zot passes to distribution's s3 driver.
type StorageDriverConfig struct {
	// Name is "filesystem" or "s3".
	Name string `json:"name"`
	// RootDirectory is the key prefix inside the bucket (s3).
	RootDirectory string `json:"rootdirectory,omitempty"`
	// Region is the AWS region (s3, required).
	Region string `json:"region,omitempty"`
	// Bucket is the bucket name (s3, required).
	Bucket string `json:"bucket,omitempty"`
	// RegionEndpoint is a custom endpoint URL such as a MinIO server (s3).
	RegionEndpoint string `json:"regionendpoint,omitempty"`
	// ForcePathStyle uses path-style bucket URLs (s3).
	ForcePathStyle bool `json:"forcepathstyle,omitempty"`
	// Secure uses HTTPS to the endpoint (s3). Default true.
	Secure *bool `json:"secure,omitempty"`
	// SkipVerify skips TLS certificate verification (s3).
	SkipVerify bool `json:"skipverify,omitempty"`
	// AccessKey and SecretKey are static credentials (s3); when both are
	// empty the AWS default credential chain is used.
	AccessKey string `json:"accesskey,omitempty"`
	// SecretKey goes with AccessKey.
	SecretKey string `json:"secretkey,omitempty"`
	// ChunkSize is the multipart upload part size in bytes (s3), at least
	// 5 MiB. Default 10 MiB.
	ChunkSize int64 `json:"chunksize,omitempty"`
	// Redirect answers blob GETs with a redirect to a pre-signed URL (s3).
	Redirect bool `json:"redirect,omitempty"`
}

// CacheDriverConfig is the metadata database (tags, referrers, pull times).
type CacheDriverConfig struct {
	// Name is "boltdb" or "dynamodb".
	Name string `json:"name"`
	// RootDir is the directory of the bolt file (boltdb). Empty means
	// storage.rootDirectory.
	RootDir string `json:"rootDir,omitempty"`
	// Endpoint is a custom DynamoDB endpoint URL (dynamodb).
	Endpoint string `json:"endpoint,omitempty"`
	// Region is the AWS region (dynamodb, required).
	Region string `json:"region,omitempty"`
	// RepoMetaTablename is the repository table (dynamodb).
	RepoMetaTablename string `json:"repoMetaTablename,omitempty"`
	// ImageMetaTablename is the manifest/index table (dynamodb).
	ImageMetaTablename string `json:"imageMetaTablename,omitempty"`
	// RepoBlobsInfoTablename is the per-repository blob table (dynamodb).
	RepoBlobsInfoTablename string `json:"repoBlobsInfoTablename,omitempty"`
	// UserDataTablename is the user data table (dynamodb).
	UserDataTablename string `json:"userDataTablename,omitempty"`
	// APIKeyTablename is the API key table (dynamodb).
	APIKeyTablename string `json:"apiKeyTablename,omitempty"`
	// VersionTablename is the schema version table (dynamodb).
	VersionTablename string `json:"versionTablename,omitempty"`
}

// DriverName returns the storage driver in use: storageDriver.name, or
// "filesystem" when there is no storageDriver block.
func (s StorageConfig) DriverName() string {
	if s.StorageDriver == nil {
		return DriverFilesystem
	}
	return s.StorageDriver.Name
}

// CacheName returns the metadata database in use: cacheDriver.name, or
// "boltdb" when there is no cacheDriver block.
func (s StorageConfig) CacheName() string {
	if s.CacheDriver == nil {
		return CacheBoltDB
	}
	return s.CacheDriver.Name
}

// GCEnabled reports whether garbage collection is on (gc unset means on).
func (s StorageConfig) GCEnabled() bool { return s.GC == nil || *s.GC }

// check validates the storage section.
func (s StorageConfig) check(p *problems) {
	if s.RootDirectory == "" {
		p.add("storage.rootDirectory", "must not be empty")
	}
	if s.Dedupe != nil && *s.Dedupe {
		p.add("storage.dedupe", "not supported: Berth keeps blobs per repository; set it to false")
	}
	checkNonNegative(p, "storage.gcDelay", s.GCDelay)
	checkNonNegative(p, "storage.gcInterval", s.GCInterval)
	if r := s.Retention; r != nil {
		r.check(p)
	}
	if d := s.StorageDriver; d != nil {
		d.check(p)
	}
	if c := s.CacheDriver; c != nil {
		c.check(p)
	}
}

// check validates storage.retention.
func (r *RetentionConfig) check(p *problems) {
	checkNonNegative(p, "storage.retention.delay", r.Delay)
	for i, pol := range r.Policies {
		field := fmt.Sprintf("storage.retention.policies[%d]", i)
		for j, g := range pol.Repositories {
			checkGlob(p, fmt.Sprintf("%s.repositories[%d]", field, j), g)
		}
		for j, k := range pol.KeepTags {
			kf := fmt.Sprintf("%s.keepTags[%d]", field, j)
			for n, pat := range k.Patterns {
				checkRegex(p, fmt.Sprintf("%s.patterns[%d]", kf, n), pat)
			}
			if k.PulledWithin != nil {
				checkNonNegative(p, kf+".pulledWithin", *k.PulledWithin)
			}
			if k.PushedWithin != nil {
				checkNonNegative(p, kf+".pushedWithin", *k.PushedWithin)
			}
			if k.MostRecentlyPushedCount < 0 {
				p.add(kf+".mostRecentlyPushedCount", "must not be negative, got %d", k.MostRecentlyPushedCount)
			}
			if k.MostRecentlyPulledCount < 0 {
				p.add(kf+".mostRecentlyPulledCount", "must not be negative, got %d", k.MostRecentlyPulledCount)
			}
		}
	}
}

// check validates storage.storageDriver.
func (d *StorageDriverConfig) check(p *problems) {
	const field = "storage.storageDriver"
	switch d.Name {
	case DriverFilesystem:
		for _, kv := range [][2]string{
			{"rootdirectory", d.RootDirectory}, {"region", d.Region}, {"bucket", d.Bucket},
			{"regionendpoint", d.RegionEndpoint}, {"accesskey", d.AccessKey}, {"secretkey", d.SecretKey},
		} {
			if kv[1] != "" {
				p.add(field+"."+kv[0], "only used by the s3 driver; the filesystem driver stores under storage.rootDirectory")
			}
		}
	case DriverS3:
		if d.Bucket == "" {
			p.add(field+".bucket", "required by the s3 driver")
		}
		if d.Region == "" {
			p.add(field+".region", "required by the s3 driver")
		}
		if d.RegionEndpoint != "" {
			checkHTTPURL(p, field+".regionendpoint", d.RegionEndpoint)
		}
		if (d.AccessKey == "") != (d.SecretKey == "") {
			p.add(field, "accesskey and secretkey must both be set or both be empty")
		}
		if d.ChunkSize != 0 && d.ChunkSize < MinS3ChunkSize {
			p.add(field+".chunksize", "must be at least %d bytes (5 MiB), got %d", MinS3ChunkSize, d.ChunkSize)
		}
	default:
		p.add(field+".name", "must be %q or %q, got %q", DriverFilesystem, DriverS3, d.Name)
	}
}

// check validates storage.cacheDriver.
func (c *CacheDriverConfig) check(p *problems) {
	const field = "storage.cacheDriver"
	switch c.Name {
	case CacheBoltDB:
	case CacheDynamoDB:
		if c.Region == "" {
			p.add(field+".region", "required by the dynamodb driver")
		}
		if c.Endpoint != "" {
			checkHTTPURL(p, field+".endpoint", c.Endpoint)
		}
	default:
		p.add(field+".name", "must be %q or %q, got %q", CacheBoltDB, CacheDynamoDB, c.Name)
	}
}

// checkHTTPURL records a problem unless raw is an absolute http(s) URL.
func checkHTTPURL(p *problems, field, raw string) {
	u, err := url.Parse(raw)
	if err != nil || (!strings.EqualFold(u.Scheme, "http") && !strings.EqualFold(u.Scheme, "https")) || u.Host == "" {
		p.add(field, "must be an http:// or https:// URL with a host, got %q", raw)
	}
}
