package dynamo

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
)

// AddBlob records that repo holds digest: one item (pk=digest, sk=repo)
// of the RepoBlobs table. Re-adding is harmless.
func (s *Store) AddBlob(ctx context.Context, repo, digest string) error {
	err := ctx.Err()
	if err == nil && (repo == "" || digest == "") {
		err = errors.New("empty repository or digest")
	}
	if err == nil {
		_, err = s.db.PutItem(ctx, &dynamodb.PutItemInput{
			TableName: &s.blobTable, Item: itemKey(digest, repo),
		})
	}
	if err != nil {
		return fmt.Errorf("dynamo: add blob %s@%s: %w", repo, digest, err)
	}
	return nil
}

// BlobRepos lists, in lexical order, up to n repositories recorded as
// holding digest (all when n < 0). The result is never nil.
func (s *Store) BlobRepos(ctx context.Context, digest string, n int) ([]string, error) {
	out := []string{}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("dynamo: blob repos of %s: %w", digest, err)
	}
	if n == 0 || digest == "" {
		return out, nil
	}
	in := &dynamodb.QueryInput{
		TableName:                 &s.blobTable,
		KeyConditionExpression:    aws.String("#pk = :pk"),
		ProjectionExpression:      aws.String("#sk"),
		ExpressionAttributeNames:  names(attrPK, attrSK),
		ExpressionAttributeValues: item{":pk": str(digest)},
	}
	err := s.queryPages(ctx, in, func() int { return want(n, len(out), 0) }, func(items []item) (bool, error) {
		for _, it := range items {
			out = append(out, getS(it, attrSK))
			if len(out) == n {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("dynamo: blob repos of %s: %w", digest, err)
	}
	return out, nil
}
