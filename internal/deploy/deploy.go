// Package deploy wires one deployment's parts from its settings: the
// records (VMs, stages, the CA certificate), the CA (its key in KMS) and the orchestrator's identity, the
// keeper of the warm pools, the secret sealer, and the dependencies every
// handler shares. The functions build it from their environment and the AWS
// SDK's clients; `slipway local` from the local stand-ins' clients. Either
// way the same parts are made the same way.
package deploy

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/kmssigner"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/logarchive"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/pki"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/secret"
	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/internal/stage/record"
	"github.com/slipway-ci/slipway/internal/warm"
)

// Settings are a deployment's names: its table, keys, state machine and
// functions.
type Settings struct {
	// Deployment names the deployment in metrics and instance tags.
	Deployment string
	Table      string
	// CAKeyID is the CA's KMS key (ECC_NIST_P256, SIGN_VERIFY); SecretsKeyID
	// the symmetric key that stage secrets are sealed with.
	CAKeyID, SecretsKeyID string
	StateMachineARN       string
	// CleanupFunction and RefillFunction are invoked asynchronously (a
	// DELETE's release, the refill after a release).
	CleanupFunction, RefillFunction string
	// AgentURL is where VMs download the agent ("" when images have it).
	AgentURL string
	// LogBucket is the S3 bucket of the step log archive.
	LogBucket string
	// ReconcileGrace is how long reconcile waits before it believes a fleet
	// that lists an instance missing or an orphan (default warm.DefaultGrace:
	// EC2's listing is eventually consistent). A fleet that lists exactly
	// what runs needs less patience.
	ReconcileGrace time.Duration
}

// check reports every missing setting.
func (s Settings) check() error {
	var errs []error
	for name, v := range map[string]string{
		"deployment": s.Deployment, "table": s.Table, "CA key": s.CAKeyID, "secrets key": s.SecretsKeyID,
		"state machine": s.StateMachineARN, "cleanup function": s.CleanupFunction, "refill function": s.RefillFunction,
	} {
		if v == "" {
			errs = append(errs, fmt.Errorf("deployment: the %s is not set", name))
		}
	}
	return errors.Join(errs...)
}

// KMS is what the deployment needs of KMS: signing with the CA key, data
// keys and decryption for stage secrets; *kms.Client satisfies it.
type KMS interface {
	kmssigner.API
	secret.DataKeys
	secret.Decrypter
}

// Clients are the services a deployment talks to.
type Clients struct {
	DynamoDB   ddb.DB
	KMS        KMS
	Executions stage.Executions
	Invoker    stage.Invoker
	Fleet      fleet.Provider
	// Logs is the step log archive.
	Logs logarchive.Archive
}

// Deployment is the wired deployment.
type Deployment struct {
	Settings
	VMs      *lease.Store
	Stages   *record.Store
	CA       *pki.CA
	Identity *pki.Identity
	Keeper   *warm.Keeper
	Deps     *stage.Deps
}

// caLifetime is the CA certificate's: it is made once, by the first
// function that needs it.
const caLifetime = 10 * 365 * 24 * time.Hour

// Build wires a deployment. It reads the CA key's public half and the CA
// certificate (creating it the first time), and issues the orchestrator's
// client certificate: the calls a function makes once, at its cold start.
func Build(ctx context.Context, s Settings, c Clients, pools []pool.Pool, tuning stage.Settings, logs, metricsOut io.Writer) (*Deployment, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if c.Logs == nil {
		return nil, errors.New("deployment: no step log archive")
	}
	logger := slog.New(slog.NewJSONHandler(logs, nil)).With("deployment", s.Deployment)
	vms := &lease.Store{DB: c.DynamoDB, Table: s.Table}
	stages := &record.Store{DB: c.DynamoDB, Table: s.Table}
	signer, err := kmssigner.New(ctx, c.KMS, s.CAKeyID)
	if err != nil {
		return nil, err
	}
	ca, err := pki.EnsureCA(ctx, &CARecord{DB: c.DynamoDB, Table: s.Table}, signer, "Slipway "+s.Deployment+" CA", caLifetime)
	if err != nil {
		return nil, err
	}
	identity := &pki.Identity{CA: ca}
	if _, err := identity.Certificate(); err != nil {
		return nil, fmt.Errorf("orchestrator certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	emitter := &metrics.Emitter{W: metricsOut, Deployment: s.Deployment}
	keeper := &warm.Keeper{
		Books: vms, Fleet: c.Fleet, Pools: pools, CA: ca,
		Prober:  &warm.AgentProber{RootCAs: roots, Certificate: identity.Certificate},
		Metrics: emitter, Logger: logger, AgentURL: s.AgentURL, Grace: s.ReconcileGrace,
	}
	deps := &stage.Deps{
		Stages: stages, VMs: vms, Keeper: keeper, Pools: pools,
		Sealer: &secret.Sealer{KMS: c.KMS, KeyID: s.SecretsKeyID}, Opener: &secret.Opener{KMS: c.KMS},
		Agents:     &stage.Agents{Roots: roots, Certificate: identity.Certificate},
		Executions: c.Executions, StateMachineARN: s.StateMachineARN,
		Invoker: c.Invoker, CleanupFunction: s.CleanupFunction, RefillFunction: s.RefillFunction,
		Logs: c.Logs, Metrics: emitter, Logger: logger, Settings: tuning,
	}
	return &Deployment{Settings: s, VMs: vms, Stages: stages, CA: ca, Identity: identity, Keeper: keeper, Deps: deps}, nil
}

// RefillReport is what the refill function answers.
type RefillReport struct {
	warm.Report
	Watched *stage.Watched `json:"watched,omitempty"`
}

// Refill is the refill function: the pools (warm.Keeper.Handle) and, on
// its schedule (a request for no pool in particular), the stages that are
// not progressing (stage.Watchdog).
func (d *Deployment) Refill(ctx context.Context, req warm.Request) (RefillReport, error) {
	r, err := d.Keeper.Handle(ctx, req)
	out := RefillReport{Report: r}
	if req.Pool == "" {
		w, werr := stage.NewWatchdog(d.Deps).Check(ctx)
		out.Watched = &w
		err = errors.Join(err, werr)
	}
	return out, err
}
