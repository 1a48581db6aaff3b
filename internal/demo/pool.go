package demo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/client"
	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/deploy"
	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/localaws"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/pki"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/stage/record"
	"github.com/slipway-ci/slipway/internal/warm"
)

// warmPool shows a warm pool on this machine: the lease store on DynamoDB
// Local, VMs that are agent processes, refill bringing them up, a stage
// leasing one, running steps on it and releasing it, and refill replacing it.
func warmPool(ctx context.Context, out io.Writer, agentPath string, say func(string, ...any)) error {
	dir, err := os.MkdirTemp("", "slipway-demo-pool-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	db := localaws.DynamoDB(os.Getenv(localaws.DynamoDBEndpointEnv))
	table := fmt.Sprintf("slipway-demo-%d", time.Now().UnixNano())
	if err := ddb.CreateTable(ctx, db, table); err != nil {
		return err
	}
	defer func() {
		_, _ = db.DeleteTable(context.Background(), &dynamodb.DeleteTableInput{TableName: aws.String(table)})
	}()
	store := &lease.Store{DB: db, Table: table}
	stages := &record.Store{DB: db, Table: table}

	key, err := pki.GenerateKey()
	if err != nil {
		return err
	}
	ca, err := pki.EnsureCA(ctx, &deploy.CARecord{DB: db, Table: table}, key, "Slipway demo CA", time.Hour)
	if err != nil {
		return err
	}
	// The orchestrator's short-lived client certificate, from the same CA.
	clientKey, err := pki.GenerateKey()
	if err != nil {
		return err
	}
	clientCert, err := ca.IssueClient(clientKey.Public(), 15*time.Minute, time.Now())
	if err != nil {
		return err
	}
	certFn := client.StaticCertificate(tls.Certificate{Certificate: [][]byte{clientCert.Raw}, PrivateKey: clientKey})
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)

	local := &fleet.Local{Dir: filepath.Join(dir, "vms"), AgentPath: agentPath}
	defer local.Close()
	p := pool.Pool{
		Name: "demo", OS: "linux", Arch: "amd64", InstanceTypes: []string{"local.agent"},
		AMI: "ami-00000000000000000", Subnets: []string{"subnet-00000000"}, SecurityGroups: []string{"sg-00000000"},
		MinIdle: 2, MaxInstances: 3,
		MaxVMLifetime: pool.Duration{Duration: time.Hour}, BootBudget: pool.Duration{Duration: time.Minute},
	}
	keeper := &warm.Keeper{
		Books: store, Fleet: local, Pools: []pool.Pool{p}, CA: ca,
		Prober:  &warm.AgentProber{RootCAs: roots, Certificate: certFn},
		Metrics: &metrics.Emitter{W: io.Discard, Deployment: "demo"},
	}

	say("warm pool %q on DynamoDB Local (table %s): min idle %d, max %d; each VM an agent process", p.Name, table, p.MinIdle, p.MaxInstances)
	if err := refillUntilIdle(ctx, out, keeper, store, p.MinIdle); err != nil {
		return err
	}

	say("stage: lease a VM for it (one transaction with the stage record), run steps on it")
	deadline := time.Now().Add(30 * time.Minute)
	st, err := stages.CreateStage(ctx, record.NewStage{ID: "pool-stage", Pool: p.Name, SpecHash: "demo", Deadline: deadline})
	if err != nil {
		return err
	}
	vm, _, err := stages.LeaseForStage(ctx, st, deadline)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "leased %s (agent at %s) until %s\n", vm.LaunchID, vm.Address, vm.LeaseDeadline.Format(time.TimeOnly))
	c, err := client.New(client.Config{Addr: vm.Address, LaunchID: vm.LaunchID, RootCAs: roots, Certificate: certFn})
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.BindStage(ctx, &agentapi.Stage{ID: st.ID, Env: map[string]string{"VM": vm.LaunchID}}); err != nil {
		return err
	}
	for _, step := range []struct {
		id   string
		spec agentapi.Step
	}{
		{"where", agentapi.Step{Script: `echo "running on $VM, workspace $SLIPWAY_WORKSPACE"`}},
		{"build", agentapi.Step{Script: "printf 'int main(){return 0;}' > main.c; ls -l main.c"}},
	} {
		say("step %s", step.id)
		if err := runAndShow(ctx, out, c, st.ID, step.id, &step.spec); err != nil {
			return err
		}
	}
	say("stage: destroy on the agent, release the lease (exactly once), terminate the VM")
	if err := destroyAndShow(ctx, out, c, st.ID); err != nil {
		return err
	}
	released, err := stages.ReleaseStage(ctx, st.ID, "succeeded", "")
	if err != nil {
		return err
	}
	if err := local.Terminate(ctx, released.InstanceID); err != nil {
		return err
	}
	if err := store.Remove(ctx, p.Name, released.LaunchID, lease.Releasing); err != nil {
		return err
	}
	if _, err := stages.ReleaseStage(ctx, st.ID, "succeeded", ""); err != nil {
		fmt.Fprintf(out, "a second release is refused: %v\n", err)
	}

	say("refill: the pool is warm again")
	return refillUntilIdle(ctx, out, keeper, store, p.MinIdle)
}

// refillUntilIdle runs refill passes, as the scheduled function would, until
// the pool has idle VMs.
func refillUntilIdle(ctx context.Context, out io.Writer, k *warm.Keeper, store *lease.Store, idle int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		reports, err := k.Refill(ctx)
		if err != nil {
			return err
		}
		r := reports[0]
		if r.Launched > 0 || r.BecameIdle > 0 {
			fmt.Fprintf(out, "refill: launched %d, became idle %d\n", r.Launched, r.BecameIdle)
		}
		if r.Idle >= idle {
			d, err := store.Depth(ctx, r.Pool)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "pool %s: %s\n", r.Pool, d)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the pool did not warm up in 30 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
