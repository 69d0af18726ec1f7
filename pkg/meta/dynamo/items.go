package dynamo

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/berthreg/berth/pkg/meta"
)

// item is one DynamoDB item.
type item = map[string]types.AttributeValue

// Batch sizes fixed by the DynamoDB API.
const (
	batchWriteMax = 25
	batchGetMax   = 100
)

func str(s string) types.AttributeValue { return &types.AttributeValueMemberS{Value: s} }
func num(n int) types.AttributeValue    { return &types.AttributeValueMemberN{Value: strconv.Itoa(n)} }
func strSet(s string) types.AttributeValue {
	return &types.AttributeValueMemberSS{Value: []string{s}}
}

// itemKey is the primary key pk, sk.
func itemKey(pk, sk string) item { return item{attrPK: str(pk), attrSK: str(sk)} }

// withAttr returns it with name set to v.
func withAttr(it item, name string, v types.AttributeValue) item {
	it[name] = v
	return it
}

// getS returns the string attribute name of it, "" if absent.
func getS(it item, name string) string {
	if v, ok := it[name].(*types.AttributeValueMemberS); ok {
		return v.Value
	}
	return ""
}

// getSS returns the string-set attribute name of it.
func getSS(it item, name string) []string {
	if v, ok := it[name].(*types.AttributeValueMemberSS); ok {
		return v.Value
	}
	return nil
}

// names maps each "#name" placeholder to its attribute name.
func names(attrs ...string) map[string]string {
	m := make(map[string]string, len(attrs))
	for _, a := range attrs {
		m["#"+a] = a
	}
	return m
}

// isCondFailed reports whether err is a failed condition expression.
func isCondFailed(err error) bool {
	var e *types.ConditionalCheckFailedException
	return errors.As(err, &e)
}

// manifestItem is the ImageMeta item of one manifest.
type manifestItem struct {
	PK           string            `dynamodbav:"pk"`
	SK           string            `dynamodbav:"sk"` // digest
	MediaType    string            `dynamodbav:"mediaType,omitempty"`
	Size         int64             `dynamodbav:"size"`
	ArtifactType string            `dynamodbav:"artifactType,omitempty"`
	Subject      string            `dynamodbav:"subject,omitempty"`
	Annotations  map[string]string `dynamodbav:"annotations,omitempty"`
}

// encodeManifest returns the item of m in partition pk.
func encodeManifest(pk string, m meta.Manifest) (item, error) {
	it, err := attributevalue.MarshalMap(manifestItem{
		PK: pk, SK: m.Digest, MediaType: m.MediaType, Size: m.Size,
		ArtifactType: m.ArtifactType, Subject: m.Subject, Annotations: m.Annotations,
	})
	if err != nil {
		return nil, fmt.Errorf("encode manifest %s: %w", m.Digest, err)
	}
	return it, nil
}

// decodeManifest parses a manifest item.
func decodeManifest(it item) (meta.Manifest, error) {
	var mi manifestItem
	if err := attributevalue.UnmarshalMap(it, &mi); err != nil {
		return meta.Manifest{}, fmt.Errorf("decode manifest: %w", err)
	}
	return meta.Manifest{
		Digest: mi.SK, MediaType: mi.MediaType, Size: mi.Size,
		ArtifactType: mi.ArtifactType, Subject: mi.Subject, Annotations: mi.Annotations,
	}, nil
}

// getItem reads one item consistently; nil when absent.
func (s *Store) getItem(ctx context.Context, table string, key item) (item, error) {
	out, err := s.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: &table, Key: key, ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return nil, err
	}
	return out.Item, nil
}

// limit caps a wanted page size (0: unbounded) by pageLimit and int32.
func (s *Store) limit(want int) *int32 {
	if want > math.MaxInt32 {
		want = 0
	}
	if s.pageLimit > 0 && (want <= 0 || int32(want) > s.pageLimit) {
		want = int(s.pageLimit)
	}
	if want <= 0 {
		return nil
	}
	return aws.Int32(int32(want))
}

// queryPages runs the consistent Query in page by page, calling fn with
// each page's items until fn returns false or the pages run out. want
// gives the Limit for the next page (0: none).
func (s *Store) queryPages(ctx context.Context, in *dynamodb.QueryInput, want func() int, fn func([]item) (bool, error)) error {
	in.ConsistentRead = aws.Bool(true)
	for {
		in.Limit = s.limit(want())
		out, err := s.db.Query(ctx, in)
		if err != nil {
			return err
		}
		more, err := fn(out.Items)
		if err != nil || !more || len(out.LastEvaluatedKey) == 0 {
			return err
		}
		in.ExclusiveStartKey = out.LastEvaluatedKey
	}
}

// noLimit is a want func for queryPages reading everything.
func noLimit() int { return 0 }

// batchWrite applies the requests to table, 25 at a time, resubmitting
// unprocessed ones with backoff.
func (s *Store) batchWrite(ctx context.Context, table string, reqs []types.WriteRequest) error {
	for len(reqs) > 0 {
		n := min(len(reqs), batchWriteMax)
		pending := map[string][]types.WriteRequest{table: reqs[:n]}
		for try := 0; len(pending) > 0; try++ {
			if try > 0 {
				if err := sleep(ctx, try); err != nil {
					return err
				}
			}
			out, err := s.db.BatchWriteItem(ctx, &dynamodb.BatchWriteItemInput{RequestItems: pending})
			if err != nil {
				return fmt.Errorf("batch write %s: %w", table, err)
			}
			pending = out.UnprocessedItems
		}
		reqs = reqs[n:]
	}
	return nil
}

// batchGet reads the items of keys from table consistently, 100 at a
// time, in no particular order. Absent items are missing.
func (s *Store) batchGet(ctx context.Context, table string, keys []item) ([]item, error) {
	found := make([]item, 0, len(keys))
	for len(keys) > 0 {
		n := min(len(keys), batchGetMax)
		pending := map[string]types.KeysAndAttributes{table: {Keys: keys[:n], ConsistentRead: aws.Bool(true)}}
		for try := 0; len(pending) > 0; try++ {
			if try > 0 {
				if err := sleep(ctx, try); err != nil {
					return nil, err
				}
			}
			out, err := s.db.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{RequestItems: pending})
			if err != nil {
				return nil, fmt.Errorf("batch get %s: %w", table, err)
			}
			found = append(found, out.Responses[table]...)
			pending = out.UnprocessedKeys
		}
		keys = keys[n:]
	}
	return found, nil
}

// sleep waits before retry number try (1, 2, …) of unprocessed batch items.
func sleep(ctx context.Context, try int) error {
	d := time.Duration(min(try, 8)) * 25 * time.Millisecond
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// sweep deletes every item of partition pk in table.
func (s *Store) sweep(ctx context.Context, table, pk string) error {
	in := &dynamodb.QueryInput{
		TableName:                 &table,
		KeyConditionExpression:    aws.String("#pk = :pk"),
		ProjectionExpression:      aws.String("#pk, #sk"),
		ExpressionAttributeNames:  names(attrPK, attrSK),
		ExpressionAttributeValues: item{":pk": str(pk)},
	}
	return s.queryPages(ctx, in, noLimit, func(items []item) (bool, error) {
		reqs := make([]types.WriteRequest, len(items))
		for i, it := range items {
			reqs[i] = types.WriteRequest{DeleteRequest: &types.DeleteRequest{Key: it}}
		}
		return true, s.batchWrite(ctx, table, reqs)
	})
}

// sweepGen deletes the data items of repo's generation gen in both tables,
// logging failures: what is left is unreachable.
func (s *Store) sweepGen(ctx context.Context, repo, gen string) {
	for _, table := range []string{s.repoTable, s.imageTable} {
		if err := s.sweep(ctx, table, dataPK(repo, gen)); err != nil {
			s.log.Warn().Err(err).Str("repo", repo).Str("table", table).Msg("failed to delete items of an old generation")
		}
	}
}
