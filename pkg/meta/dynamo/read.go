package dynamo

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/berthreg/berth/pkg/meta"
)

// Every read below is consistent: the repository item first (its gen
// names the data partition), then the data items.

// Manifest returns the record of digest in repo, or an error wrapping
// meta.ErrNotFound.
func (s *Store) Manifest(ctx context.Context, repo, digest string) (meta.Manifest, error) {
	m, err := s.manifest(ctx, repo, digest)
	if err != nil {
		return meta.Manifest{}, fmt.Errorf("dynamo: manifest %s@%s: %w", repo, digest, err)
	}
	return m, nil
}

func (s *Store) manifest(ctx context.Context, repo, digest string) (meta.Manifest, error) {
	gen, err := s.gen(ctx, repo)
	if err != nil {
		return meta.Manifest{}, err
	}
	return s.manifestIn(ctx, dataPK(repo, gen), digest)
}

// manifestIn reads digest's record from partition pk.
func (s *Store) manifestIn(ctx context.Context, pk, digest string) (meta.Manifest, error) {
	if digest == "" {
		return meta.Manifest{}, meta.ErrNotFound
	}
	it, err := s.getItem(ctx, s.imageTable, itemKey(pk, digest))
	if err != nil {
		return meta.Manifest{}, fmt.Errorf("read manifest: %w", err)
	}
	if it == nil {
		return meta.Manifest{}, meta.ErrNotFound
	}
	return decodeManifest(it)
}

// Tag resolves tag in repo to its manifest record. It returns an error
// wrapping meta.ErrNotFound when the repository or tag is unknown, or when
// the tag points at a manifest the store does not hold.
func (s *Store) Tag(ctx context.Context, repo, tag string) (meta.Manifest, error) {
	m, err := s.tag(ctx, repo, tag)
	if err != nil {
		return meta.Manifest{}, fmt.Errorf("dynamo: tag %s:%s: %w", repo, tag, err)
	}
	return m, nil
}

func (s *Store) tag(ctx context.Context, repo, tag string) (meta.Manifest, error) {
	gen, err := s.gen(ctx, repo)
	if err != nil {
		return meta.Manifest{}, err
	}
	if tag == "" {
		return meta.Manifest{}, meta.ErrNotFound
	}
	pk := dataPK(repo, gen)
	it, err := s.getItem(ctx, s.repoTable, itemKey(pk, tagPrefix+tag))
	if err != nil {
		return meta.Manifest{}, fmt.Errorf("read tag: %w", err)
	}
	if it == nil {
		return meta.Manifest{}, meta.ErrNotFound
	}
	digest := getS(it, attrDigest)
	m, err := s.manifestIn(ctx, pk, digest)
	if errors.Is(err, meta.ErrNotFound) {
		return meta.Manifest{}, fmt.Errorf("manifest %s: %w", digest, err)
	}
	return m, err
}

// Tags lists repo's tags in lexical (byte) order strictly after last, at
// most n of them (all when n < 0), as one or more Queries of the "tag#"
// range. The result is never nil. It returns an error wrapping
// meta.ErrNotFound when the repository is unknown.
func (s *Store) Tags(ctx context.Context, repo, last string, n int) ([]string, error) {
	tags, err := s.tags(ctx, repo, last, n)
	if err != nil {
		return nil, fmt.Errorf("dynamo: tags %s: %w", repo, err)
	}
	return tags, nil
}

func (s *Store) tags(ctx context.Context, repo, last string, n int) ([]string, error) {
	gen, err := s.gen(ctx, repo)
	if err != nil {
		return nil, err
	}
	out := []string{}
	if n == 0 {
		return out, nil
	}
	// BETWEEN is inclusive: the key of last itself, if any, is skipped.
	lo := tagPrefix + last
	in := &dynamodb.QueryInput{
		TableName:                 &s.repoTable,
		KeyConditionExpression:    aws.String("#pk = :pk AND #sk BETWEEN :lo AND :hi"),
		ProjectionExpression:      aws.String("#sk"),
		ExpressionAttributeNames:  names(attrPK, attrSK),
		ExpressionAttributeValues: item{":pk": str(dataPK(repo, gen)), ":lo": str(lo), ":hi": str(tagEnd)},
	}
	err = s.queryPages(ctx, in, func() int { return want(n, len(out), 1) }, func(items []item) (bool, error) {
		for _, it := range items {
			sk := getS(it, attrSK)
			if sk == lo || !strings.HasPrefix(sk, tagPrefix) {
				continue
			}
			out = append(out, sk[len(tagPrefix):])
			if len(out) == n {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tags: %w", err)
	}
	return out, nil
}

// Repos lists repository names in lexical (byte) order strictly after
// last, at most n of them (all when n < 0), as Queries of the catalog
// partition. Entries whose repository item is gone (left by a crash) are
// skipped. The result is never nil.
func (s *Store) Repos(ctx context.Context, last string, n int) ([]string, error) {
	repos, err := s.repos(ctx, last, n)
	if err != nil {
		return nil, fmt.Errorf("dynamo: repos: %w", err)
	}
	return repos, nil
}

func (s *Store) repos(ctx context.Context, last string, n int) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := []string{}
	if n == 0 {
		return out, nil
	}
	in := &dynamodb.QueryInput{
		TableName:                 &s.repoTable,
		KeyConditionExpression:    aws.String("#pk = :pk"),
		ProjectionExpression:      aws.String("#sk"),
		ExpressionAttributeNames:  names(attrPK, attrSK),
		ExpressionAttributeValues: item{":pk": str(catalogPK)},
	}
	if last != "" {
		in.KeyConditionExpression = aws.String("#pk = :pk AND #sk > :last")
		in.ExpressionAttributeValues[":last"] = str(last)
	}
	err := s.queryPages(ctx, in, func() int { return want(n, len(out), 0) }, func(items []item) (bool, error) {
		keys := make([]item, len(items))
		for i, it := range items {
			keys[i] = itemKey(getS(it, attrSK), repoSK)
		}
		found, err := s.batchGet(ctx, s.repoTable, keys)
		if err != nil {
			return false, err
		}
		live := make(map[string]bool, len(found))
		for _, it := range found {
			live[getS(it, attrPK)] = true
		}
		for _, it := range items {
			if name := getS(it, attrSK); live[name] {
				out = append(out, name)
				if len(out) == n {
					return false, nil
				}
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list catalog: %w", err)
	}
	return out, nil
}

// want is the page size still needed to collect n items having got, plus
// extra (Tags may skip last itself); 0 means unbounded.
func want(n, got, extra int) int {
	if n < 0 {
		return 0
	}
	return n - got + extra
}

// Referrers returns, ordered by digest, the manifest records of repo whose
// subject is digest. The result is an empty, non-nil slice when there are
// none, including for an unknown repository.
func (s *Store) Referrers(ctx context.Context, repo, digest string) ([]meta.Manifest, error) {
	out, err := s.referrers(ctx, repo, digest)
	if err != nil {
		return nil, fmt.Errorf("dynamo: referrers %s@%s: %w", repo, digest, err)
	}
	return out, nil
}

func (s *Store) referrers(ctx context.Context, repo, digest string) ([]meta.Manifest, error) {
	out := []meta.Manifest{}
	gen, err := s.gen(ctx, repo)
	if errors.Is(err, meta.ErrNotFound) || (err == nil && digest == "") {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	pk := dataPK(repo, gen)
	prefix := refSK(digest, "")
	in := &dynamodb.QueryInput{
		TableName:                 &s.repoTable,
		KeyConditionExpression:    aws.String("#pk = :pk AND begins_with(#sk, :pre)"),
		ProjectionExpression:      aws.String("#sk"),
		ExpressionAttributeNames:  names(attrPK, attrSK),
		ExpressionAttributeValues: item{":pk": str(pk), ":pre": str(prefix)},
	}
	var digests []string
	var keys []item
	err = s.queryPages(ctx, in, noLimit, func(items []item) (bool, error) {
		for _, it := range items {
			d := getS(it, attrSK)[len(prefix):]
			digests = append(digests, d)
			keys = append(keys, itemKey(pk, d))
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list referrer links: %w", err)
	}
	records, err := s.batchGet(ctx, s.imageTable, keys)
	if err != nil {
		return nil, err
	}
	found := make(map[string]item, len(records))
	for _, it := range records {
		found[getS(it, attrSK)] = it
	}
	for _, d := range digests {
		it, ok := found[d]
		if !ok {
			continue // link outliving its record (racing writes): skip
		}
		m, err := decodeManifest(it)
		if err != nil {
			return nil, err
		}
		if m.Subject == digest { // a link left by a racing re-put is stale
			out = append(out, m)
		}
	}
	return out, nil
}

// Version returns the index version repo was derived from, or "" and an
// error wrapping meta.ErrNotFound when the repository is unknown. It
// returns "" while a new repository's first write is in flight, and
// "stale:"+v after overlapping writes of several processes: both differ
// from any real version, so Berth's startup rebuild re-derives the
// repository.
func (s *Store) Version(ctx context.Context, repo string) (string, error) {
	it, err := s.repoFor(ctx, repo)
	if err != nil {
		return "", fmt.Errorf("dynamo: version %s: %w", repo, err)
	}
	return getS(it, attrVer), nil
}

// repoFor checks ctx and repo and reads repo's item.
func (s *Store) repoFor(ctx context.Context, repo string) (item, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if checkRepo(repo) != nil {
		return nil, meta.ErrNotFound
	}
	return s.repoItem(ctx, repo)
}

// gen returns the generation of repo's data partition.
func (s *Store) gen(ctx context.Context, repo string) (string, error) {
	it, err := s.repoFor(ctx, repo)
	if err != nil {
		return "", err
	}
	return getS(it, attrGen), nil
}
