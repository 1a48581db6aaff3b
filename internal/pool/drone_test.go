package pool

import (
	"os"
	"strings"
	"testing"
)

func TestImportDrone(t *testing.T) {
	data, err := os.ReadFile("testdata/drone-pool.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, notes, err := ImportDrone(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Pools) != 2 {
		t.Fatalf("%d pools, want 2 (the google one left out)", len(cfg.Pools))
	}
	u := cfg.Pools[0]
	if u.Name != "ubuntu-aws" || u.MinIdle != 2 || u.MaxInstances != 8 || u.InstanceTypes[0] != "t3.large" ||
		u.Subnets[0] != "subnet-0ab15b3a2c3b1c2d3" || u.RootVolume.SizeGB != 40 || !u.Spot.Enabled ||
		u.KeyPair != "ci-key" || u.Tags["team"] != "platform" || !strings.Contains(u.UserData, "#cloud-config") {
		t.Errorf("ubuntu pool %+v", u)
	}
	joined := strings.Join(notes, "\n")
	for _, want := range []string{
		`instance Ubuntu_AWS: name "Ubuntu_AWS" becomes "ubuntu-aws"`,
		"instance Ubuntu_AWS: spec.account.access_key_id not converted: functions use their IAM role",
		"instance Ubuntu_AWS: spec.account.region not converted",
		"instance Ubuntu_AWS: spec.hibernate not converted",
		"instance Ubuntu_AWS: spec.disk.iops not converted",
		"instance Ubuntu_AWS: default not converted",
		"instance windows: no subnet_id",
		"instance windows: no limit: max_instances set to 4",
		`instance gcp: type "google": only amazon instances convert`,
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("notes lack %q; they are:\n%s", want, joined)
		}
	}
	if strings.Contains(joined, "example-secret") {
		t.Error("a note repeats a secret from the drone file")
	}
	// The converted file reads back, and checking it names what is missing.
	out, err := Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse(out)
	if err == nil || !strings.Contains(err.Error(), "pool windows: subnets: give the subnets") {
		t.Fatalf("check of the converted file: %v\n%s", err, out)
	}
	if strings.Contains(err.Error(), "pool ubuntu-aws") {
		t.Fatalf("the complete pool has problems: %v", err)
	}
}

func TestImportDroneRejectsOtherFiles(t *testing.T) {
	for _, in := range []string{"", "pools: []", "instances: 3", "[1, 2"} {
		if _, _, err := ImportDrone([]byte(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	cfg, err := Load("testdata/pools.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	a, _ := again.Pool("linux-amd64")
	if a.MaxVMLifetime.Duration != cfg.Pools[0].MaxVMLifetime.Duration || len(a.Schedule) != 2 {
		t.Fatalf("round trip changed the pool: %+v", a)
	}
}
