package dynamo

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/berthreg/berth/pkg/meta"
)

// Last pull times live in the RepoBlobs table, one item per manifest:
//
//	pk="pull#"<repo>     sk=<digest>                        at: last pull, Unix milliseconds (N)
//
// Blob location hints there have a digest as pk, which never starts with
// "pull#", so the key spaces cannot collide.
const (
	pullPrefix = "pull#"
	attrAt     = "at"
	// pullWriters bounds the concurrent writes of one RecordPulls.
	pullWriters = 8
)

var _ meta.PullRecorder = (*Store)(nil)

// RecordPulls stores the last pull time of each digest of repo, keeping
// the later of the stored and the given time: each write is conditional
// (attribute_not_exists(at) OR at < :t), so concurrent recorders in any
// number of processes never move a time backwards.
func (s *Store) RecordPulls(ctx context.Context, repo string, pulls map[string]time.Time) error {
	err := ctx.Err()
	if err == nil {
		err = checkRepo(repo)
	}
	if err != nil {
		return fmt.Errorf("dynamo: record pulls of %s: %w", repo, err)
	}
	sem := make(chan struct{}, pullWriters)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for d, t := range pulls {
		if d == "" {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := s.recordPull(ctx, repo, d, t); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dynamo: record pulls of %s: %w", repo, err)
	}
	return nil
}

// recordPull writes one pull time unless a later one is stored.
func (s *Store) recordPull(ctx context.Context, repo, digest string, at time.Time) error {
	_, err := s.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 &s.blobTable,
		Key:                       itemKey(pullPrefix+repo, digest),
		UpdateExpression:          aws.String("SET #at = :t"),
		ConditionExpression:       aws.String("attribute_not_exists(#at) OR #at < :t"),
		ExpressionAttributeNames:  names(attrAt),
		ExpressionAttributeValues: item{":t": millis(at)},
	})
	if err != nil && !isCondFailed(err) {
		return fmt.Errorf("%s: %w", digest, err)
	}
	return nil
}

// Pulls returns the last pull time per digest of repo (an empty map when
// none was recorded).
func (s *Store) Pulls(ctx context.Context, repo string) (map[string]time.Time, error) {
	err := ctx.Err()
	if err == nil {
		err = checkRepo(repo)
	}
	if err != nil {
		return nil, fmt.Errorf("dynamo: pulls of %s: %w", repo, err)
	}
	out := map[string]time.Time{}
	in := &dynamodb.QueryInput{
		TableName:                 &s.blobTable,
		KeyConditionExpression:    aws.String("#pk = :pk"),
		ProjectionExpression:      aws.String("#sk, #at"),
		ExpressionAttributeNames:  names(attrPK, attrSK, attrAt),
		ExpressionAttributeValues: item{":pk": str(pullPrefix + repo)},
	}
	err = s.queryPages(ctx, in, noLimit, func(items []item) (bool, error) {
		for _, it := range items {
			n, ok := it[attrAt].(*types.AttributeValueMemberN)
			if !ok {
				continue
			}
			ms, err := strconv.ParseInt(n.Value, 10, 64)
			if err != nil {
				continue
			}
			out[getS(it, attrSK)] = time.UnixMilli(ms)
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("dynamo: pulls of %s: %w", repo, err)
	}
	return out, nil
}

// millis encodes t as Unix milliseconds.
func millis(t time.Time) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(t.UnixMilli(), 10)}
}
