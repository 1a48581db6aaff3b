// Package lease keeps the warm pools' books in DynamoDB: one item per VM,
// written before the VM is launched, and one capacity item per pool. Every
// change is a conditional write, so no VM ever serves two stages and a pool
// never holds more VMs than its max, whatever runs concurrently.
//
// A VM item moves launching → provisioning → idle → leased → releasing and is
// then removed (the capacity it held returned in the same transaction). A
// launch that fails, a boot that fails and an idle VM that is retired leave
// the line early, always through releasing (or straight from launching when
// no instance exists) to removal.
package lease

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/slipway-ci/slipway/internal/ddb"
)

// State is where a VM is in its life.
type State string

// VM states.
const (
	// Launching: the item and its capacity exist; the instance may not.
	Launching State = "launching"
	// Provisioning: the instance exists and boots; its agent is not yet healthy.
	Provisioning State = "provisioning"
	// Idle: healthy and free; listed in the idle index.
	Idle State = "idle"
	// Leased: serving one stage until released or its lease deadline.
	Leased State = "leased"
	// Releasing: being terminated; removed once the instance is gone.
	Releasing State = "releasing"
)

// Errors of the store. Callers use errors.Is.
var (
	// ErrNoIdle means the pool has no idle VM to lease right now.
	ErrNoIdle = errors.New("no idle vm in the pool")
	// ErrPoolFull means recording another VM would exceed the pool's max.
	ErrPoolFull = errors.New("pool is at its max")
	// ErrExists means a VM with this launch id is already recorded.
	ErrExists = errors.New("vm already recorded")
	// ErrNotFound means there is no such VM item.
	ErrNotFound = errors.New("vm not found")
	// ErrState means the VM is not in the state the change requires.
	ErrState = errors.New("vm is not in the required state")
	// ErrNotHolder means the stage does not hold the VM's lease.
	ErrNotHolder = errors.New("stage does not hold the lease")
	// ErrReleased means the stage's lease was already released.
	ErrReleased = errors.New("lease already released")
)

// VM is one VM's item.
type VM struct {
	Pool     string
	LaunchID string
	State    State
	// InstanceID, Address and InstanceType are known from provisioning on.
	InstanceID   string
	Address      string
	InstanceType string
	// Stage holds the lease from leased on (and is kept while releasing).
	Stage         string
	LeaseDeadline time.Time
	CreatedAt     time.Time
	// StateAt is when the VM entered its state.
	StateAt time.Time
	// Version counts the item's changes.
	Version int64
	// MissingSince is when reconcile first found the VM's instance gone; zero
	// while it is there.
	MissingSince time.Time
}

// Store is the lease store over one table.
type Store struct {
	DB    ddb.DB
	Table string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Candidates is how many idle VMs a lease reads at a time (default 8).
	Candidates int32
}

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

var launchIDPattern = regexp.MustCompile(`^vm-[0-9a-f]{20}$`)

// NewLaunchID returns a random launch id: "vm-" and 20 hex digits. It names
// the VM item, the VM's certificate and the EC2 client token, and its
// randomness spreads concurrent lessees over the idle index.
func NewLaunchID() string {
	var b [10]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return "vm-" + hex.EncodeToString(b[:])
}

// ValidateLaunchID reports whether id has the form NewLaunchID makes.
func ValidateLaunchID(id string) error {
	if !launchIDPattern.MatchString(id) {
		return fmt.Errorf("launch id %q: want vm- and 20 hex digits", id)
	}
	return nil
}

func checkPool(pool string) error {
	if pool == "" {
		return errors.New("pool name is empty")
	}
	return nil
}
