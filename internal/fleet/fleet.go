// Package fleet launches, lists and terminates the build VMs: on EC2, or as
// agent processes on this machine for `slipway local`. Both implement
// Provider; refill, reap and reconcile use nothing else.
package fleet

import (
	"context"
	"errors"
	"time"

	"github.com/slipway-ci/slipway/internal/pool"
)

// Tags every instance carries, so that reconcile finds this deployment's
// instances and ties each to its VM item.
const (
	TagDeployment = "slipway:deployment"
	TagPool       = "slipway:pool"
	TagLaunchID   = "slipway:launch-id"
	// TagLaunchTemplateID is the tag EC2 itself puts on an instance launched
	// from a launch template; the aws: prefix is reserved, so no caller can
	// set or change it.
	TagLaunchTemplateID = "aws:ec2launchtemplate:id"
)

// State is an instance's state as the provider reports it.
type State string

// Instance states (EC2's names).
const (
	Pending      State = "pending"
	Running      State = "running"
	ShuttingDown State = "shutting-down"
	Terminated   State = "terminated"
)

// Gone reports whether the instance no longer runs and never will.
func (s State) Gone() bool { return s == ShuttingDown || s == Terminated }

// Instance is one VM as the provider sees it.
type Instance struct {
	ID       string
	LaunchID string
	Pool     string
	State    State
	// Address is where the agent listens: host:port.
	Address      string
	InstanceType string
	LaunchedAt   time.Time
}

// Boot is what a VM needs to start its agent: the files the user data
// writes, and the user's own additions.
type Boot struct {
	LaunchID string
	// CertPEM and KeyPEM are the VM's server certificate and key; ClientCAPEM
	// the CA of the orchestrator's client certificates.
	CertPEM, KeyPEM, ClientCAPEM []byte
	// AgentURL is where the VM downloads the agent binary; empty means the
	// image has it at AgentPath already.
	AgentURL  string
	AgentPath string
	// Port is the agent's port (9079).
	Port int
	// ExtraUserData is the pool's own script, run after the agent is installed.
	ExtraUserData string
}

// LaunchRequest asks for one VM of a pool.
type LaunchRequest struct {
	Pool *pool.Pool
	Boot Boot
}

// Provider launches and terminates VMs.
type Provider interface {
	// Launch starts one VM. It is idempotent per launch id: repeating a
	// launch that succeeded returns the same instance.
	Launch(ctx context.Context, req LaunchRequest) (*Instance, error)
	// Terminate ends instances; ids that no longer exist count as done.
	Terminate(ctx context.Context, ids ...string) error
	// List returns this deployment's instances, terminated ones included
	// while the provider still reports them.
	List(ctx context.Context) ([]Instance, error)
}

// ErrNoCapacity means no instance type, subnet or market of the pool had
// capacity.
var ErrNoCapacity = errors.New("no capacity for the pool's instance types")

// DefaultPort is the agent's port.
const DefaultPort = 9079
