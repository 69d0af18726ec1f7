package dynamo

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/berthreg/berth/pkg/meta"
)

// PutManifest upserts m in repo (creating the repository), points every tag
// in tags at m.Digest, indexes m as a referrer of m.Subject and records
// version as the last step.
func (s *Store) PutManifest(ctx context.Context, repo string, m meta.Manifest, tags []string, version string) error {
	err := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := checkRepo(repo); err != nil {
			return err
		}
		if m.Digest == "" {
			return errors.New("empty digest")
		}
		if slices.Contains(tags, "") {
			return errors.New("empty tag")
		}
		ctx, cancel := detach(ctx)
		defer cancel()
		return s.write(ctx, repo, fCreate, version, func(t txn) (bool, error) {
			return true, s.putManifest(ctx, t, m, tags)
		})
	}()
	if err != nil {
		return fmt.Errorf("dynamo: put manifest %s@%s: %w", repo, m.Digest, err)
	}
	return nil
}

// putManifest writes m, its referrer link and its tags into t's
// generation. If a concurrent DeleteManifest removed m meanwhile, it
// withdraws the tags it wrote (those still naming m) so none is left
// dangling: either it sees m gone here, or DeleteManifest's second tag
// sweep, which follows the record's deletion, sees the tags.
func (s *Store) putManifest(ctx context.Context, t txn, m meta.Manifest, tags []string) error {
	pk := t.pk()
	it, err := encodeManifest(pk, m)
	if err != nil {
		return err
	}
	out, err := s.db.PutItem(ctx, &dynamodb.PutItemInput{
		TableName: &s.imageTable, Item: it, ReturnValues: types.ReturnValueAllOld,
	})
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	if old := getS(out.Attributes, "subject"); old != "" && old != m.Subject {
		if err := s.deleteItem(ctx, s.repoTable, itemKey(pk, refSK(old, m.Digest))); err != nil {
			return fmt.Errorf("remove referrer link: %w", err)
		}
	}
	if m.Subject != "" {
		_, err := s.db.PutItem(ctx, &dynamodb.PutItemInput{
			TableName: &s.repoTable, Item: itemKey(pk, refSK(m.Subject, m.Digest)),
		})
		if err != nil {
			return fmt.Errorf("write referrer link: %w", err)
		}
	}
	if len(tags) == 0 {
		return nil
	}
	tags = slices.Compact(slices.Sorted(slices.Values(tags)))
	reqs := make([]types.WriteRequest, len(tags))
	for i, tag := range tags {
		reqs[i] = putReq(withAttr(itemKey(pk, tagPrefix+tag), attrDigest, str(m.Digest)))
	}
	if err := s.batchWrite(ctx, s.repoTable, reqs); err != nil {
		return fmt.Errorf("write tags: %w", err)
	}
	still, err := s.getItem(ctx, s.imageTable, itemKey(pk, m.Digest))
	if err != nil {
		return fmt.Errorf("re-read manifest: %w", err)
	}
	if still == nil {
		for _, tag := range tags {
			if _, err := s.untagIf(ctx, pk, tag, m.Digest); err != nil {
				return err
			}
		}
	}
	return nil
}

// DeleteManifest removes digest from repo with every tag pointing at it and
// its referrer link, records version and returns the removed tags in
// lexical order. Referrers whose subject is digest are kept, and so is the
// repository, even if it ends up empty. It returns an error wrapping
// meta.ErrNotFound (and changes nothing) when the repository or manifest
// is unknown.
func (s *Store) DeleteManifest(ctx context.Context, repo, digest, version string) ([]string, error) {
	var removed []string
	err := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if checkRepo(repo) != nil || digest == "" {
			return meta.ErrNotFound
		}
		ctx, cancel := detach(ctx)
		defer cancel()
		return s.write(ctx, repo, 0, version, func(t txn) (bool, error) {
			var err error
			removed, err = s.deleteManifest(ctx, t, digest)
			return !errors.Is(err, meta.ErrNotFound), err
		})
	}()
	if err != nil {
		return nil, fmt.Errorf("dynamo: delete manifest %s@%s: %w", repo, digest, err)
	}
	return removed, nil
}

// deleteManifest sweeps the tags naming digest, deletes its record and
// link, then sweeps the tags again (see putManifest).
func (s *Store) deleteManifest(ctx context.Context, t txn, digest string) ([]string, error) {
	pk := t.pk()
	key := itemKey(pk, digest)
	cur, err := s.getItem(ctx, s.imageTable, key)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	if cur == nil {
		return nil, meta.ErrNotFound
	}
	removed, err := s.untagAll(ctx, pk, digest)
	if err != nil {
		return nil, err
	}
	out, err := s.db.DeleteItem(ctx, &dynamodb.DeleteItemInput{
		TableName: &s.imageTable, Key: key, ReturnValues: types.ReturnValueAllOld,
	})
	if err != nil {
		return nil, fmt.Errorf("delete manifest: %w", err)
	}
	if out.Attributes != nil {
		cur = out.Attributes
	}
	if subject := getS(cur, "subject"); subject != "" {
		if err := s.deleteItem(ctx, s.repoTable, itemKey(pk, refSK(subject, digest))); err != nil {
			return nil, fmt.Errorf("remove referrer link: %w", err)
		}
	}
	more, err := s.untagAll(ctx, pk, digest)
	if err != nil {
		return nil, err
	}
	return slices.Compact(slices.Sorted(slices.Values(append(removed, more...)))), nil
}

// untagAll removes every tag of partition pk naming digest and returns
// their names.
func (s *Store) untagAll(ctx context.Context, pk, digest string) ([]string, error) {
	in := &dynamodb.QueryInput{
		TableName:                 &s.repoTable,
		KeyConditionExpression:    aws.String("#pk = :pk AND begins_with(#sk, :pre)"),
		FilterExpression:          aws.String("#digest = :d"),
		ProjectionExpression:      aws.String("#sk"),
		ExpressionAttributeNames:  names(attrPK, attrSK, attrDigest),
		ExpressionAttributeValues: item{":pk": str(pk), ":pre": str(tagPrefix), ":d": str(digest)},
	}
	var tags []string
	err := s.queryPages(ctx, in, noLimit, func(items []item) (bool, error) {
		for _, it := range items {
			tag := getS(it, attrSK)[len(tagPrefix):]
			ok, err := s.untagIf(ctx, pk, tag, digest)
			if err != nil {
				return false, err
			}
			if ok {
				tags = append(tags, tag)
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("remove tags: %w", err)
	}
	return tags, nil
}

// untagIf deletes tag of partition pk if it still names digest and
// reports whether it did.
func (s *Store) untagIf(ctx context.Context, pk, tag, digest string) (bool, error) {
	_, err := s.db.DeleteItem(ctx, &dynamodb.DeleteItemInput{
		TableName:                 &s.repoTable,
		Key:                       itemKey(pk, tagPrefix+tag),
		ConditionExpression:       aws.String("#digest = :d"),
		ExpressionAttributeNames:  names(attrDigest),
		ExpressionAttributeValues: item{":d": str(digest)},
	})
	if isCondFailed(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("remove tag %s: %w", tag, err)
	}
	return true, nil
}

// DeleteTag removes tag from repo and records version. It returns an error
// wrapping meta.ErrNotFound (and changes nothing) when the repository or
// tag is unknown.
func (s *Store) DeleteTag(ctx context.Context, repo, tag, version string) error {
	err := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if checkRepo(repo) != nil || tag == "" {
			return meta.ErrNotFound
		}
		ctx, cancel := detach(ctx)
		defer cancel()
		return s.write(ctx, repo, 0, version, func(t txn) (bool, error) {
			_, err := s.db.DeleteItem(ctx, &dynamodb.DeleteItemInput{
				TableName:                &s.repoTable,
				Key:                      itemKey(t.pk(), tagPrefix+tag),
				ConditionExpression:      aws.String("attribute_exists(#sk)"),
				ExpressionAttributeNames: names(attrSK),
			})
			if isCondFailed(err) {
				return false, meta.ErrNotFound
			}
			return true, err
		})
	}()
	if err != nil {
		return fmt.Errorf("dynamo: delete tag %s:%s: %w", repo, tag, err)
	}
	return nil
}

// ReplaceRepo replaces everything known of r.Name with r: it writes r into
// a fresh generation (batches of 25), then switches the repository to it
// and records r.Version in one conditional update, and finally deletes the
// old generation. The repository is created if unknown.
func (s *Store) ReplaceRepo(ctx context.Context, r meta.Repo) error {
	if err := s.replaceRepo(ctx, r); err != nil {
		return fmt.Errorf("dynamo: replace repo %s: %w", r.Name, err)
	}
	return nil
}

func (s *Store) replaceRepo(ctx context.Context, r meta.Repo) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkRepo(r.Name); err != nil {
		return err
	}
	for _, m := range r.Manifests {
		if m.Digest == "" {
			return errors.New("manifest with empty digest")
		}
	}
	if _, ok := r.Tags[""]; ok {
		return errors.New("empty tag")
	}
	ctx, cancel := detach(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		t, err := s.begin(ctx, r.Name, fCreate|fReplace)
		if err != nil {
			return err
		}
		gen := randHex(8)
		if err := s.writeGen(ctx, r, dataPK(r.Name, gen)); err != nil {
			s.sweepGen(ctx, r.Name, gen)
			_ = s.end(ctx, t, "", failedNoop)
			return err
		}
		_, err = s.updateRepo(ctx, t, "SET #gen = :new, #ver = :ver REMOVE #busy, #pver, #mixed",
			"contains(#busy, :tok)", item{":new": str(gen), ":ver": str(r.Version), ":tok": str(t.tok)},
			attrVer, attrBusy, attrPVer, attrMixed)
		if err == nil {
			s.sweepGen(ctx, r.Name, t.gen)
			return nil
		}
		s.sweepGen(ctx, r.Name, gen)
		if !isCondFailed(err) || attempt == maxRestarts {
			return fmt.Errorf("switch generation: %w", err)
		}
	}
}

// writeGen writes r's manifests, referrer links and tags into partition pk.
func (s *Store) writeGen(ctx context.Context, r meta.Repo, pk string) error {
	byDigest := make(map[string]meta.Manifest, len(r.Manifests))
	for _, m := range r.Manifests {
		byDigest[m.Digest] = m // the last record of a digest wins
	}
	var images, repos []types.WriteRequest
	for _, m := range byDigest {
		it, err := encodeManifest(pk, m)
		if err != nil {
			return err
		}
		images = append(images, putReq(it))
		if m.Subject != "" {
			repos = append(repos, putReq(itemKey(pk, refSK(m.Subject, m.Digest))))
		}
	}
	for tag, digest := range r.Tags {
		repos = append(repos, putReq(withAttr(itemKey(pk, tagPrefix+tag), attrDigest, str(digest))))
	}
	if err := s.batchWrite(ctx, s.imageTable, images); err != nil {
		return fmt.Errorf("write manifests: %w", err)
	}
	if err := s.batchWrite(ctx, s.repoTable, repos); err != nil {
		return fmt.Errorf("write tags and links: %w", err)
	}
	return nil
}

// DeleteRepo forgets repo: it deletes the repository item (conditioned on
// its generation, so a concurrent ReplaceRepo is not undone blindly), then
// its data items and catalog entry. Deleting an unknown repository is not
// an error; it still removes a leftover catalog entry.
func (s *Store) DeleteRepo(ctx context.Context, repo string) error {
	if err := s.deleteRepo(ctx, repo); err != nil {
		return fmt.Errorf("dynamo: delete repo %s: %w", repo, err)
	}
	return nil
}

func (s *Store) deleteRepo(ctx context.Context, repo string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if checkRepo(repo) != nil {
		return nil
	}
	ctx, cancel := detach(ctx)
	defer cancel()
	for range maxRestarts {
		cur, err := s.repoItem(ctx, repo)
		if errors.Is(err, meta.ErrNotFound) {
			return s.unlist(ctx, repo)
		}
		if err != nil {
			return err
		}
		gen := getS(cur, attrGen)
		_, err = s.db.DeleteItem(ctx, &dynamodb.DeleteItemInput{
			TableName:                 &s.repoTable,
			Key:                       itemKey(repo, repoSK),
			ConditionExpression:       aws.String("#gen = :gen"),
			ExpressionAttributeNames:  names(attrGen),
			ExpressionAttributeValues: item{":gen": str(gen)},
		})
		if isCondFailed(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("delete repository item: %w", err)
		}
		s.sweepGen(ctx, repo, gen)
		return s.unlist(ctx, repo)
	}
	return errors.New("repository kept changing")
}

// deleteItem deletes the item at key, present or not.
func (s *Store) deleteItem(ctx context.Context, table string, key item) error {
	_, err := s.db.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: &table, Key: key})
	return err
}

// putReq is a batch put of it.
func putReq(it item) types.WriteRequest {
	return types.WriteRequest{PutRequest: &types.PutRequest{Item: it}}
}
