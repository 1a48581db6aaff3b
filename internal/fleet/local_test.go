package fleet_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/pki"
)

func TestLocalInstancesAreRealAgents(t *testing.T) {
	dir := t.TempDir()
	agentBin := agenttest.BuildAgent(t)
	ca, err := pki.InitDir(filepath.Join(dir, "pki"), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	local := &fleet.Local{Dir: filepath.Join(dir, "vms"), AgentPath: agentBin}
	defer local.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	orch := agenttest.NewOrchestrator(t, ca)
	var insts []*fleet.Instance
	for range 2 {
		id := lease.NewLaunchID()
		vmKey, _ := pki.GenerateKey()
		cert, err := ca.IssueServer(id, vmKey.Public(), time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, _ := pki.KeyPEM(vmKey)
		req := fleet.LaunchRequest{Pool: testPool(nil), Boot: fleet.Boot{
			LaunchID: id, CertPEM: pki.CertPEM(cert), KeyPEM: keyPEM, ClientCAPEM: pki.CertPEM(ca.Cert), Port: fleet.DefaultPort,
		}}
		inst, err := local.Launch(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		again, err := local.Launch(ctx, req)
		if err != nil || again.ID != inst.ID {
			t.Fatalf("a repeated launch: %+v %v", again, err)
		}
		info, err := os.Stat(filepath.Join(dir, "vms", id, "etc", fleet.KeyFile))
		if err != nil || info.Mode().Perm() != 0o600 {
			t.Fatalf("key file: %v %v", info, err)
		}
		if _, err := orch.Client(t, inst.Address, id).WaitHealthy(ctx, 20*time.Second, 50*time.Millisecond); err != nil {
			t.Fatalf("agent %s at %s: %v", id, inst.Address, err)
		}
		insts = append(insts, inst)
	}
	if err := local.Terminate(ctx, insts[0].ID, "local-unknown"); err != nil {
		t.Fatal(err)
	}
	list, err := local.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]fleet.State{}
	for _, in := range list {
		states[in.ID] = in.State
	}
	if states[insts[0].ID] != fleet.Terminated || states[insts[1].ID] != fleet.Running {
		t.Fatalf("states %v", states)
	}
	if _, err := os.Stat(filepath.Join(dir, "vms", insts[0].LaunchID)); !os.IsNotExist(err) {
		t.Fatalf("terminated instance's folder still there: %v", err)
	}
}
