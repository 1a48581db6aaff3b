package record_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// The store counts an item's bytes as DynamoDB does: an item of exactly
// MaxItemBytes by its count is taken, one byte more refused, for each kind
// of value the store writes.
func TestItemSizeIsCountedAsDynamoDBCountsIt(t *testing.T) {
	s := newStore(t)
	db := awstest.Client(t)
	ctx := ctxT(t)
	for _, kind := range []string{"binary", "string set", "numbers"} {
		for _, over := range []int{0, 1} {
			item := map[string]types.AttributeValue{
				"pk": &types.AttributeValueMemberS{Value: "SIZE#" + kind}, "sk": &types.AttributeValueMemberS{Value: fmt.Sprint(over)},
				"n": &types.AttributeValueMemberN{Value: "1700000000123"}, "flag": &types.AttributeValueMemberBOOL{Value: true},
			}
			fill := record.MaxItemBytes - record.ItemBytes(item) + over
			switch kind {
			case "binary":
				item["b"] = &types.AttributeValueMemberB{Value: bytes.Repeat([]byte{7}, fill-len("b"))}
			case "string set":
				ids := []string{strings.Repeat("x", fill-len("ids")-64*99)}
				for i := range 99 {
					ids = append(ids, fmt.Sprintf("%064d", i))
				}
				item["ids"] = &types.AttributeValueMemberSS{Value: ids}
			case "numbers":
				for i, v := range []string{"0", "7", "10", "100", "12", "123", "-5", "5.5", "0.05", "-120.25", "1700000000123", "99999999999", "1000001"} {
					item[fmt.Sprint("n", i)] = &types.AttributeValueMemberN{Value: v}
				}
				rest := record.MaxItemBytes - record.ItemBytes(item) + over
				item["s"] = &types.AttributeValueMemberS{Value: strings.Repeat("é", (rest-1)/2) + strings.Repeat("a", (rest-1)%2)}
			}
			if got, want := record.ItemBytes(item), record.MaxItemBytes+over; got != want {
				t.Fatalf("%s: built %d bytes, want %d", kind, got, want)
			}
			_, err := db.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(s.stageRecords.Table), Item: item})
			if over == 0 && err != nil {
				t.Errorf("%s: an item of %d bytes by our count was refused: %v", kind, record.MaxItemBytes, err)
			}
			if over == 1 && err == nil {
				t.Errorf("%s: an item of %d bytes by our count was taken: we count less than DynamoDB", kind, record.MaxItemBytes+1)
			}
		}
	}
}

func TestRecordsOverTheItemLimit(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	deadline := time.Now().Add(time.Hour)
	tooLarge := func(t *testing.T, err error, name string, parts ...string) {
		t.Helper()
		var e *record.RecordTooLargeError
		if !errors.As(err, &e) {
			t.Fatalf("want a RecordTooLargeError for %s, got %v", name, err)
		}
		for _, want := range append([]string{name}, parts...) {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%q does not name %q", err, want)
			}
		}
	}

	// Settings and secrets that each fit but not together.
	ns := newStage("big", deadline)
	ns.Spec = bytes.Repeat([]byte("s"), 250<<10)
	ns.Sealed = bytes.Repeat([]byte("k"), 150<<10)
	_, err := s.CreateStage(ctx, ns)
	tooLarge(t, err, "the record of stage big", "settings (env, files, steps) 256004", "secrets (sealed) 153606")
	if _, err := s.GetStage(ctx, "big"); !errors.Is(err, record.ErrStageNotFound) {
		t.Fatalf("a refused create left a record: %v", err)
	}

	// A group too large is named, with every other problem of the create.
	ns = newStage("big-group", deadline, group("g0", false, "a"), group("g1", false, "b"))
	ns.Groups[1].Spec = bytes.Repeat([]byte("g"), 300<<10)
	ns.Groups[1].Sealed = bytes.Repeat([]byte("k"), 110<<10)
	_, err = s.CreateStage(ctx, ns)
	tooLarge(t, err, "the record of group 1 of stage big-group", "secrets (sealed)")
	if strings.Contains(err.Error(), "group 0") {
		t.Errorf("a group that fits is named: %v", err)
	}

	// Many groups that each fit, over a transaction's 4 MiB together.
	var groups []record.NewGroup
	for i := range 12 {
		g := group(fmt.Sprint("g", i), false, fmt.Sprint("s", i))
		g.Spec = bytes.Repeat([]byte("g"), 380<<10)
		groups = append(groups, g)
	}
	_, err = s.CreateStage(ctx, newStage("many", deadline, groups...))
	tooLarge(t, err, "the records of stage many (written in one transaction)")

	// The largest record that fits is written, and takes the writes that
	// come later (a lease, an end with a long reason).
	ns = newStage("fits", deadline)
	ns.Spec = bytes.Repeat([]byte("s"), record.MaxItemBytes-(16<<10)-400)
	if _, err := s.CreateStage(ctx, ns); err != nil {
		t.Fatalf("a stage record under the limit: %v", err)
	}
	if _, err := s.EndStage(ctx, "fits", "failed", strings.Repeat("why? ", 10000)); err != nil {
		t.Fatalf("end with a long reason: %v", err)
	}
	if got := stageRecord(t, s, "fits").Reason; len(got) > 2<<10 || !strings.HasPrefix(got, "why? why?") {
		t.Errorf("reason kept: %d bytes", len(got))
	}

	// Step ids added group by group grow the stage's record: the group that
	// would take it over is refused, naming the ids.
	ns = newStage("grows", deadline)
	ns.Spec = bytes.Repeat([]byte("s"), record.MaxItemBytes-(16<<10)-6000)
	if _, err := s.CreateStage(ctx, ns); err != nil {
		t.Fatal(err)
	}
	var added int
	for i := range 10 {
		var ids []string
		for j := range 20 {
			ids = append(ids, fmt.Sprintf("%02d-%061d", i, j))
		}
		if _, _, err = s.AddGroup(ctx, "grows", nil, group(fmt.Sprint("g", i), false, ids...)); err != nil {
			break
		}
		added++
	}
	if added != 4 {
		t.Errorf("%d groups of 20 ids added before the record was full, want 4 (6000 bytes of room)", added)
	}
	tooLarge(t, err, "the record of stage grows", "step ids")
	if r, err := s.StageRecords(ctx, "grows"); err != nil || len(r.Groups) != added || r.Stage.Groups != added {
		t.Fatalf("records after the refused add: %d groups, stage says %d, %v", len(r.Groups), r.Stage.Groups, err)
	}

	// A group's end over a transaction's limit is refused before it is sent.
	st, err := s.CreateStage(ctx, newStage("ends", deadline, group("g0", true, "a")))
	if err != nil {
		t.Fatal(err)
	}
	end := record.GroupEnd{State: "succeeded", StartedAt: time.Now(), EndedAt: time.Now()}
	for i := range 12 {
		end.Steps = append(end.Steps, record.StepRecord{ID: fmt.Sprint("s", i), State: "succeeded", Result: bytes.Repeat([]byte("r"), 380<<10)})
	}
	_, err = s.FinishGroup(ctx, st, 0, end)
	tooLarge(t, err, "the end of group 0 of stage ends")
}
