package lease

import (
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/ddb"
)

// move is a conditional change of a VM item's state: it sets the state, the
// time of the change and the next version, on the condition that the item is
// in state from, plus what the particular move adds.
type move struct {
	from, to State
	ddb.Change
}

// moveUpdate is the move as an Update of a transaction.
func (s *Store) moveUpdate(pool, launchID string, m move, now time.Time) *types.Update {
	return ddb.Change{
		Set:   []string{"#st = :to", "#sa = :now", "#v = #v + :one"},
		Cond:  "#st = :from",
		Names: map[string]string{"#st": attrState, "#sa": attrStateAt, "#v": attrVersion},
		Values: map[string]types.AttributeValue{
			":from": ddb.Str(string(m.from)), ":to": ddb.Str(string(m.to)), ":now": ddb.Millis(now), ":one": ddb.Num(1),
		},
	}.With(m.Change).Update(s.Table, vmKey(pool, launchID))
}

// leaseMove gives an idle VM to a stage until deadline.
func leaseMove(stageID string, deadline time.Time) move {
	return move{
		from: Idle, to: Leased,
		Change: ddb.Change{
			Set:    []string{"#stage = :stage", "#dl = :dl"},
			Remove: []string{"#idle"},
			Names:  map[string]string{"#stage": attrStage, "#dl": attrLeaseDeadline, "#idle": ddb.AttrIdlePK},
			Values: map[string]types.AttributeValue{":stage": ddb.Str(stageID), ":dl": ddb.Millis(deadline)},
		},
	}
}

// releaseMove ends the lease the stage holds.
func releaseMove(stageID string) move {
	return move{
		from: Leased, to: Releasing,
		Change: ddb.Change{
			Cond:   "#stage = :stage",
			Names:  map[string]string{"#stage": attrStage},
			Values: map[string]types.AttributeValue{":stage": ddb.Str(stageID)},
		},
	}
}

// LeaseUpdate gives the idle VM to the stage until deadline, as an item of a
// transaction that writes the stage's record too (internal/stage/record).
func (s *Store) LeaseUpdate(pool, launchID, stageID string, deadline, now time.Time) *types.Update {
	return s.moveUpdate(pool, launchID, leaseMove(stageID, deadline), now)
}

// ReleaseUpdate moves the VM the stage holds to releasing, as an item of a
// transaction that writes the stage's record too (internal/stage/record).
func (s *Store) ReleaseUpdate(pool, launchID, stageID string, now time.Time) *types.Update {
	return s.moveUpdate(pool, launchID, releaseMove(stageID), now)
}
