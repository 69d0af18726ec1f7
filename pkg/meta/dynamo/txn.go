package dynamo

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/berthreg/berth/pkg/meta"
)

// Repository item attributes (see the package doc).
const (
	attrGen    = "gen"
	attrVer    = "ver"
	attrBusy   = "busy"
	attrPVer   = "pver"
	attrMixed  = "mixed"
	attrListed = "listed"
	attrDigest = "digest"
)

// errLost reports that a write's generation was replaced or deleted while
// it ran (ReplaceRepo, DeleteRepo); the write starts again.
var errLost = errors.New("repository generation changed during the write")

// txn is one registered write on a repository.
type txn struct {
	repo, gen, tok string
}

// pk is the partition of the write's data items.
func (t txn) pk() string { return dataPK(t.repo, t.gen) }

// beginFlags tune begin.
type beginFlags uint8

const (
	fCreate  beginFlags = 1 << iota // create the repository if unknown
	fStale                          // the write's order is unknown: mark the version stale
	fReplace                        // ReplaceRepo: never mark (its flip clears everything)
)

// outcome is how a write ended.
type outcome uint8

const (
	done       outcome = iota // succeeded
	failedNoop                // failed without changing any item
	failedMid                 // failed after possibly changing items
)

// begin registers a write on repo (step 1 of the protocol) and returns
// its generation. Without fCreate an unknown repository is
// meta.ErrNotFound and nothing is written.
func (s *Store) begin(ctx context.Context, repo string, f beginFlags) (txn, error) {
	t := txn{repo: repo, tok: s.id + "." + randHex(6)}
	in := &dynamodb.UpdateItemInput{
		TableName:                 &s.repoTable,
		Key:                       itemKey(repo, repoSK),
		UpdateExpression:          aws.String("SET #gen = if_not_exists(#gen, :gen) ADD #busy :tok"),
		ExpressionAttributeNames:  names(attrGen, attrBusy),
		ExpressionAttributeValues: item{":gen": str(randHex(8)), ":tok": strSet(t.tok)},
		ReturnValues:              types.ReturnValueAllNew,
	}
	if f&fCreate == 0 {
		in.ConditionExpression = aws.String("attribute_exists(#gen)")
	}
	out, err := s.db.UpdateItem(ctx, in)
	if isCondFailed(err) {
		return t, meta.ErrNotFound
	}
	if err != nil {
		return t, fmt.Errorf("begin write: %w", err)
	}
	t.gen = getS(out.Attributes, attrGen)
	if _, ok := out.Attributes[attrListed]; !ok {
		if err := s.list(ctx, t); err != nil {
			s.end(ctx, t, "", failedNoop)
			return t, err
		}
	}
	if f&fReplace != 0 {
		return t, nil
	}
	stale := f&fStale != 0
	for _, b := range getSS(out.Attributes, attrBusy) {
		stale = stale || !strings.HasPrefix(b, s.id+".")
	}
	if _, marked := out.Attributes[attrMixed]; stale && !marked {
		_, err := s.updateRepo(ctx, t, "SET #mixed = :true", "contains(#busy, :tok)",
			item{":true": &types.AttributeValueMemberBOOL{Value: true}, ":tok": str(t.tok)}, attrMixed, attrBusy)
		if err != nil {
			s.end(ctx, t, "", failedNoop)
			if isCondFailed(err) {
				return t, errLost
			}
			return t, fmt.Errorf("mark overlapping write: %w", err)
		}
	}
	return t, nil
}

// end finishes t (step 3, the last of every write). For a successful write
// version is what it brings the repository to: recorded at once when t is
// the only write in flight, else parked in pver for the last one out. It
// returns errLost when the generation went away meanwhile. Failed writes
// record no version; one that may have changed items marks the repository
// so the version in force ends up stale.
func (s *Store) end(ctx context.Context, t txn, version string, o outcome) error {
	tok := str(t.tok)
	if o == done {
		_, err := s.updateRepo(ctx, t, "SET #ver = :ver REMOVE #busy, #pver",
			"contains(#busy, :tok) AND size(#busy) = :one AND attribute_not_exists(#mixed)",
			item{":ver": str(version), ":tok": tok, ":one": num(1)}, attrVer, attrBusy, attrPVer, attrMixed)
		if !isCondFailed(err) {
			return err
		}
	}
	update, vals, attrs := "DELETE #busy :set", item{":set": strSet(t.tok), ":tok": tok}, []string{attrBusy}
	switch o {
	case done:
		update, vals[":ver"], attrs = "SET #pver = :ver "+update, str(version), append(attrs, attrPVer)
	case failedMid:
		update, vals[":true"], attrs = "SET #mixed = :true "+update, &types.AttributeValueMemberBOOL{Value: true}, append(attrs, attrMixed)
	}
	it, err := s.updateRepo(ctx, t, update, "contains(#busy, :tok)", vals, attrs...)
	switch {
	case isCondFailed(err) && o == done:
		return errLost
	case isCondFailed(err):
		return nil // the generation is gone, and with it what t wrote
	case err != nil:
		if o != done {
			s.log.Warn().Err(err).Str("repo", t.repo).Msg("failed to end a failed write; its version stays stale")
		}
		return fmt.Errorf("end write: %w", err)
	case len(getSS(it, attrBusy)) > 0:
		return nil // not the last one out
	}
	return s.settle(ctx, t, it)
}

// settle records the parked version once no write is in flight (it, the
// repository item as left by the last one out), as "stale:"+version when
// writes of several processes overlapped. A write that begins meanwhile
// makes the conditions fail: settling is then its job.
func (s *Store) settle(ctx context.Context, t txn, it item) error {
	pver := getS(it, attrPVer)
	_, mixed := it[attrMixed]
	var err error
	switch {
	case pver == "" && !mixed:
		return nil
	case pver == "":
		_, err = s.updateRepo(ctx, t, "REMOVE #mixed", "attribute_not_exists(#busy)", nil, attrMixed, attrBusy)
	default:
		v := pver
		if mixed {
			v = stalePrefix + pver
			s.log.Warn().Str("repo", t.repo).Msg("writes of several processes overlapped; version marked stale for rebuild")
		}
		_, err = s.updateRepo(ctx, t, "SET #ver = :ver REMOVE #pver, #mixed",
			"attribute_not_exists(#busy) AND #pver = :pver",
			item{":ver": str(v), ":pver": str(pver)}, attrVer, attrPVer, attrMixed, attrBusy)
	}
	if err != nil && !isCondFailed(err) {
		return fmt.Errorf("record version: %w", err)
	}
	return nil
}

// updateRepo updates t's repository item provided its generation is still
// t.gen and cond (if any) holds, returning the item as updated. attrs are
// the attribute names the expressions use besides gen, as #name.
func (s *Store) updateRepo(ctx context.Context, t txn, update, cond string, vals item, attrs ...string) (item, error) {
	c := "#gen = :gen"
	if cond != "" {
		c += " AND " + cond
	}
	v := item{":gen": str(t.gen)}
	maps.Copy(v, vals)
	out, err := s.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 &s.repoTable,
		Key:                       itemKey(t.repo, repoSK),
		UpdateExpression:          &update,
		ConditionExpression:       &c,
		ExpressionAttributeNames:  names(append(attrs, attrGen)...),
		ExpressionAttributeValues: v,
		ReturnValues:              types.ReturnValueAllNew,
	})
	if err != nil {
		return nil, err
	}
	return out.Attributes, nil
}

// write runs op as one registered write on repo, starting again (marked
// stale) on the new generation when ReplaceRepo or DeleteRepo took t's.
// op reports whether it may have changed items when it fails.
func (s *Store) write(ctx context.Context, repo string, f beginFlags, version string, op func(txn) (bool, error)) error {
	for attempt := 0; ; attempt++ {
		t, err := s.begin(ctx, repo, f)
		if errors.Is(err, errLost) && attempt < maxRestarts {
			f |= fStale
			continue
		}
		if err != nil {
			return err
		}
		if dirty, err := op(t); err != nil {
			o := failedNoop
			if dirty {
				o = failedMid
			}
			_ = s.end(ctx, t, "", o) // logged inside
			return err
		}
		err = s.end(ctx, t, version, done)
		if !errors.Is(err, errLost) || attempt == maxRestarts {
			return err
		}
		s.log.Debug().Str("repo", repo).Int("attempt", attempt).Msg("repository replaced during a write, retrying")
		f |= fStale
	}
}

// repoItem reads repo's item; meta.ErrNotFound when unknown.
func (s *Store) repoItem(ctx context.Context, repo string) (item, error) {
	it, err := s.getItem(ctx, s.repoTable, itemKey(repo, repoSK))
	if err != nil {
		return nil, fmt.Errorf("read repository item: %w", err)
	}
	if it == nil {
		return nil, meta.ErrNotFound
	}
	return it, nil
}

// list writes repo's catalog entry, then flags the repository as listed,
// so a crash in between is repaired by the next write.
func (s *Store) list(ctx context.Context, t txn) error {
	_, err := s.db.PutItem(ctx, &dynamodb.PutItemInput{
		TableName: &s.repoTable,
		Item:      withAttr(itemKey(catalogPK, t.repo), attrGen, str(t.gen)),
	})
	if err != nil {
		return fmt.Errorf("add catalog entry: %w", err)
	}
	_, err = s.updateRepo(ctx, t, "SET #listed = :true", "",
		item{":true": &types.AttributeValueMemberBOOL{Value: true}}, attrListed)
	if err != nil && !isCondFailed(err) {
		return fmt.Errorf("flag catalog entry: %w", err)
	}
	return nil
}

// unlist removes repo's catalog entry unless the repository exists. The
// delete is conditioned on the entry's gen as read first, so an entry a
// concurrent creator rewrites after our checks survives.
func (s *Store) unlist(ctx context.Context, repo string) error {
	entry, err := s.getItem(ctx, s.repoTable, itemKey(catalogPK, repo))
	if err != nil || entry == nil {
		return err
	}
	if _, err := s.repoItem(ctx, repo); !errors.Is(err, meta.ErrNotFound) {
		return err // exists (nil) or unknown
	}
	_, err = s.db.DeleteItem(ctx, &dynamodb.DeleteItemInput{
		TableName:                 &s.repoTable,
		Key:                       itemKey(catalogPK, repo),
		ConditionExpression:       aws.String("#gen = :gen"),
		ExpressionAttributeNames:  names(attrGen),
		ExpressionAttributeValues: item{":gen": str(getS(entry, attrGen))},
	})
	if err != nil && !isCondFailed(err) {
		return fmt.Errorf("remove catalog entry: %w", err)
	}
	return nil
}
