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
)

// ensureTables creates the missing tables, waits for all to be ACTIVE and
// records or checks the layout version.
func (s *Store) ensureTables(ctx context.Context) error {
	tables := []string{s.repoTable, s.imageTable, s.blobTable, s.versionTable}
	errs := make([]error, len(tables))
	var wg sync.WaitGroup
	for i, name := range tables {
		wg.Go(func() { errs[i] = s.ensureTable(ctx, name) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return s.checkSchema(ctx)
}

// ensureTable creates table unless it exists (a concurrent creator is
// fine) and waits until it is ACTIVE.
func (s *Store) ensureTable(ctx context.Context, table string) error {
	out, err := s.db.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: &table})
	var notFound *types.ResourceNotFoundException
	switch {
	case err == nil && out.Table.TableStatus == types.TableStatusActive:
		return nil
	case errors.As(err, &notFound):
		if err := s.createTable(ctx, table); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("dynamo: describe table %s: %w", table, err)
	}
	w := dynamodb.NewTableExistsWaiter(s.db, func(o *dynamodb.TableExistsWaiterOptions) {
		o.MinDelay = 100 * time.Millisecond
		o.MaxDelay = 5 * time.Second
	})
	if err := w.Wait(ctx, &dynamodb.DescribeTableInput{TableName: &table}, createTimeout); err != nil {
		return fmt.Errorf("dynamo: wait for table %s: %w", table, err)
	}
	return nil
}

// createTable creates table with the common key schema, on demand.
func (s *Store) createTable(ctx context.Context, table string) error {
	_, err := s.db.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName:   &table,
		BillingMode: types.BillingModePayPerRequest,
		AttributeDefinitions: []types.AttributeDefinition{
			{AttributeName: aws.String(attrPK), AttributeType: types.ScalarAttributeTypeS},
			{AttributeName: aws.String(attrSK), AttributeType: types.ScalarAttributeTypeS},
		},
		KeySchema: []types.KeySchemaElement{
			{AttributeName: aws.String(attrPK), KeyType: types.KeyTypeHash},
			{AttributeName: aws.String(attrSK), KeyType: types.KeyTypeRange},
		},
	})
	var inUse *types.ResourceInUseException
	if errors.As(err, &inUse) {
		s.log.Debug().Str("table", table).Msg("table created concurrently")
		return nil
	}
	if err != nil {
		return fmt.Errorf("dynamo: create table %s: %w", table, err)
	}
	s.log.Info().Str("table", table).Msg("created table")
	return nil
}

// checkSchema records the layout version in a new version table, or
// refuses a layout newer than this code knows.
func (s *Store) checkSchema(ctx context.Context) error {
	key := itemKey(schemaPK, schemaSK)
	_, err := s.db.PutItem(ctx, &dynamodb.PutItemInput{
		TableName:                &s.versionTable,
		Item:                     withAttr(itemKey(schemaPK, schemaSK), "schema", num(schemaLayout)),
		ConditionExpression:      aws.String("attribute_not_exists(#pk)"),
		ExpressionAttributeNames: map[string]string{"#pk": attrPK},
	})
	if err == nil || !isCondFailed(err) {
		if err != nil {
			return fmt.Errorf("dynamo: record layout version: %w", err)
		}
		return nil
	}
	out, err := s.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: &s.versionTable, Key: key, ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return fmt.Errorf("dynamo: read layout version: %w", err)
	}
	n, ok := out.Item["schema"].(*types.AttributeValueMemberN)
	if !ok {
		return fmt.Errorf("dynamo: table %s: layout version missing", s.versionTable)
	}
	v, err := strconv.Atoi(n.Value)
	if err != nil || v > schemaLayout {
		return fmt.Errorf("dynamo: table %s: layout version %s, this build knows up to %d", s.versionTable, n.Value, schemaLayout)
	}
	return nil
}
