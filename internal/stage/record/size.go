package record

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// DynamoDB's limits on what one write carries: an item of 400 KB, a
// transaction's items of 4 MB together (binary units). A write over them is a
// ValidationException, which would surface as an internal error; the store
// measures its records first and says which parts are too large.
const (
	MaxItemBytes     = 400 << 10
	MaxTransactBytes = 4 << 20
	// stageReserve is room left in a stage's record at creation and at each
	// added group for what later writes set on it: the VM, its address and
	// boot id, the result, a reason of at most maxReasonBytes, times.
	stageReserve = 16 << 10
	// groupReserve is room left in a group's record for its end.
	groupReserve = 1 << 10
	// maxReasonBytes bounds a stage's recorded reason (a step's error, a
	// cause Step Functions passed on).
	maxReasonBytes = 2 << 10
)

// RecordTooLargeError means a write would take records over DynamoDB's item
// limit, or a transaction over its aggregate limit: each is named.
type RecordTooLargeError struct {
	Records []OversizeRecord
}

// OversizeRecord is a record, or a transaction, too large to write. Parts
// are a record's largest attributes, largest first.
type OversizeRecord struct {
	// Record names it: "the record of stage s1", "the record of group 2 of
	// stage s1", or a transaction.
	Record       string
	Bytes, Limit int
	Parts        []RecordPart
}

// RecordPart is an attribute of a record, named by what it holds, and its
// size as DynamoDB counts it.
type RecordPart struct {
	Name  string
	Bytes int
}

func (e *RecordTooLargeError) Error() string {
	says := make([]string, len(e.Records))
	for i, r := range e.Records {
		says[i] = fmt.Sprintf("%s would be %d bytes, over %d", r.Record, r.Bytes, r.Limit)
		if len(r.Parts) > 0 {
			parts := make([]string, len(r.Parts))
			for j, p := range r.Parts {
				parts[j] = fmt.Sprintf("%s %d", p.Name, p.Bytes)
			}
			says[i] += " (" + strings.Join(parts, ", ") + ")"
		}
	}
	return strings.Join(says, "; ")
}

// tooLarge is nil when every record fits, else the error naming those that
// do not.
func tooLarge(records ...*OversizeRecord) error {
	e := &RecordTooLargeError{}
	for _, r := range records {
		if r != nil {
			e.Records = append(e.Records, *r)
		}
	}
	if len(e.Records) == 0 {
		return nil
	}
	return e
}

// partNames say what the attributes that can grow hold; the others are
// named as stored.
var partNames = map[string]string{
	attrSpec: "settings (env, files, steps)", attrSealed: "secrets (sealed)", attrStepIDs: "step ids", attrStepResult: "step result",
}

func partName(attr string) string { return cmp.Or(partNames[attr], attr) }

// checkItemSize says whether an item is over limit, naming its parts of at
// least 1 KiB (or its largest, if none is).
func checkItemSize(record string, item map[string]types.AttributeValue, limit int) *OversizeRecord {
	n := itemBytes(item)
	if n <= limit {
		return nil
	}
	var parts []RecordPart
	for name, v := range item {
		parts = append(parts, RecordPart{Name: partName(name), Bytes: len(name) + valueBytes(v)})
	}
	slices.SortFunc(parts, func(a, b RecordPart) int { return cmp.Or(b.Bytes-a.Bytes, strings.Compare(a.Name, b.Name)) })
	keep := 1
	for keep < len(parts) && parts[keep].Bytes >= 1<<10 {
		keep++
	}
	return &OversizeRecord{Record: record, Bytes: n, Limit: limit, Parts: parts[:keep]}
}

// checkTransactSize says whether a transaction's items are over
// MaxTransactBytes together (an update counts as its key: the store's
// updates set a few small attributes).
func checkTransactSize(what string, writes []types.TransactWriteItem) *OversizeRecord {
	total := 0
	for _, w := range writes {
		switch {
		case w.Put != nil:
			total += itemBytes(w.Put.Item)
		case w.Update != nil:
			total += itemBytes(w.Update.Key)
		}
	}
	if total > MaxTransactBytes {
		return &OversizeRecord{Record: what, Bytes: total, Limit: MaxTransactBytes}
	}
	return nil
}

// itemBytes is an item's size as DynamoDB counts it: each attribute's name
// and value.
func itemBytes(item map[string]types.AttributeValue) int {
	n := 0
	for name, v := range item {
		n += len(name) + valueBytes(v)
	}
	return n
}

// valueBytes is a value's size by DynamoDB's documented rules: strings their
// UTF-8 bytes, binaries their raw bytes, numbers a byte per two significant
// digits plus one, booleans and nulls one byte, lists and maps 3 bytes plus
// a byte per element, sets the sum of their elements.
func valueBytes(v types.AttributeValue) int {
	switch v := v.(type) {
	case *types.AttributeValueMemberS:
		return len(v.Value)
	case *types.AttributeValueMemberB:
		return len(v.Value)
	case *types.AttributeValueMemberN:
		return numberBytes(v.Value)
	case *types.AttributeValueMemberBOOL, *types.AttributeValueMemberNULL:
		return 1
	case *types.AttributeValueMemberSS:
		return sum(v.Value, func(s string) int { return len(s) })
	case *types.AttributeValueMemberNS:
		return sum(v.Value, numberBytes)
	case *types.AttributeValueMemberBS:
		return sum(v.Value, func(b []byte) int { return len(b) })
	case *types.AttributeValueMemberL:
		n := 3
		for _, e := range v.Value {
			n += 1 + valueBytes(e)
		}
		return n
	case *types.AttributeValueMemberM:
		n := 3
		for k, e := range v.Value {
			n += 1 + len(k) + valueBytes(e)
		}
		return n
	}
	return 0
}

func sum[T any](xs []T, size func(T) int) int {
	n := 0
	for _, x := range xs {
		n += size(x)
	}
	return n
}

// numberBytes counts a number as DynamoDB stores it: base-100 digits
// aligned on the decimal point, leading and trailing zero pairs dropped, one
// byte per pair, one for the exponent and one more for a negative number
// ("5.5" is 05|50: 3 bytes; "-5" 3). DynamoDB Local counts exactly so; AWS's
// documentation gives the same rule as approximate.
func numberBytes(s string) int {
	n := 1
	if rest, neg := strings.CutPrefix(s, "-"); neg {
		s, n = rest, 2
	}
	exp := 0
	if mantissa, e, ok := strings.Cut(strings.ToLower(s), "e"); ok {
		s = mantissa
		exp, _ = strconv.Atoi(e)
	}
	whole, frac, _ := strings.Cut(s, ".")
	digits := strings.TrimLeft(whole+frac, "0")
	point := len(digits) - len(frac) + exp // digits before the decimal point
	digits = strings.TrimRight(digits, "0")
	if digits == "" {
		return 1
	}
	if point%2 != 0 {
		digits = "0" + digits
	}
	return n + (len(digits)+1)/2
}

// truncateReason keeps a reason within maxReasonBytes, on a rune boundary.
func truncateReason(s string) string {
	if len(s) <= maxReasonBytes {
		return s
	}
	cut := maxReasonBytes - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
