package pool

import (
	"os"
	"slices"
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

// The published example file: the multi-AZ pool's subnets come from its
// zone_details, the other providers are left out with a note, and what the
// converted file still lacks is said by the check.
func TestImportPublishedExample(t *testing.T) {
	data, err := os.ReadFile("testdata/drone-runner-aws/pool_example.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, notes, err := ImportDrone(data)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range cfg.Pools {
		names = append(names, p.Name)
	}
	if !slices.Equal(names, []string{"ubuntu-aws", "linux-amd64-multitenant"}) {
		t.Fatalf("pools %v", names)
	}
	mt := cfg.Pools[1]
	if !slices.Equal(mt.Subnets, []string{"subnet-base-a", "subnet-base-b"}) || !slices.Equal(mt.SecurityGroups, []string{"sg-base"}) ||
		mt.KeyPair != "kp" || mt.RootVolume.SizeGB != 100 || !slices.Equal(mt.InstanceTypes, []string{"t3.large"}) {
		t.Errorf("multi-AZ pool %+v", mt)
	}
	joined := strings.Join(notes, "\n")
	for _, want := range []string{
		`instance ubuntu-gcp: type "google": only amazon instances convert`,
		"instance linux-amd64-multitenant: tenants",
		"instance ubuntu-aws: no subnet_id or zone_details",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("notes lack %q:\n%s", want, joined)
		}
	}
	if strings.Contains(joined, "zone_details not converted") {
		t.Errorf("zone_details noted as not converted:\n%s", joined)
	}
	out, err := Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), `type: ""`) {
		t.Errorf("an empty disk type is written:\n%s", out)
	}
	if _, err := Parse(out); err == nil || !strings.Contains(err.Error(), `ami: "ami-base"`) {
		t.Errorf("the converted example's problems: %v", err)
	}
}

func TestImportCarriesWhatSlipwayHas(t *testing.T) {
	cfg, notes, err := ImportDrone([]byte(`version: "1"
instances:
  - name: multi
    type: amazon
    limit: 4
    spec:
      ami: ami-0123456789abcdef0
      size: c6i.large
      size_alt: c5.large
      market_type: SPOT
      zone_details:
        - {availability_zone: eu-west-1a, subnet_id: subnet-0a1b2c3d4e5f60001}
      network:
        security_groups: [sg-0a1b2c3d4e5f60001]
        vpc_security_groups: [sg-0a1b2c3d4e5f60002, sg-0a1b2c3d4e5f60001]
        zone_details:
          - {availability_zone: eu-west-1b, subnet_id: subnet-0a1b2c3d4e5f60002, private_ip: true}
  - name: odd-market
    type: amazon
    spec: {ami: ami-0123456789abcdef0, size: c6i.large, market_type: reserved}
`))
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Pools[0]
	if !slices.Equal(p.InstanceTypes, []string{"c6i.large", "c5.large"}) || !p.Spot.Enabled ||
		!slices.Equal(p.Subnets, []string{"subnet-0a1b2c3d4e5f60002", "subnet-0a1b2c3d4e5f60001"}) ||
		!slices.Equal(p.SecurityGroups, []string{"sg-0a1b2c3d4e5f60001", "sg-0a1b2c3d4e5f60002"}) {
		t.Errorf("pool %+v", p)
	}
	joined := strings.Join(notes, "\n")
	if !strings.Contains(joined, `instance odd-market: market_type "reserved": want spot or on-demand`) || cfg.Pools[1].Spot.Enabled {
		t.Errorf("an unknown market type: %v\n%s", cfg.Pools[1].Spot, joined)
	}
	for _, bad := range []string{"size_alt not converted", "vpc_security_groups not converted", "zone_details not converted"} {
		if strings.Contains(joined, bad) {
			t.Errorf("notes say %q:\n%s", bad, joined)
		}
	}
}

func TestImportSaysWhatIsWrongInTheUsersTerms(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", "the file is empty"},
		{"version: \"1\"\ninstances:\n  - name: a\n    type: amazon\n---\ninstances: []\n", "line 6: a second YAML document"},
		{"instances:\n  name: a\n", "line 2: cannot read a mapping as a list of instances"},
	} {
		_, _, err := ImportDrone([]byte(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "pool.drone") || strings.Contains(err.Error(), "EOF") {
			t.Errorf("%q: err = %v, want %q", tt.in, err, tt.want)
		}
	}
	if _, err := Parse([]byte("version: \"1\"\ninstances: []\n")); err == nil || !strings.Contains(err.Error(), "slipway pools import") {
		t.Errorf("a drone file given to the check: %v", err)
	}
}

func TestUnknownInstanceTypes(t *testing.T) {
	p := Pool{InstanceTypes: []string{"t3.large", "t3.hugee", "c7g.xlarge"}}
	if got := p.UnknownInstanceTypes(); !slices.Equal(got, []string{"t3.hugee"}) {
		t.Errorf("unknown %v", got)
	}
}

func TestImportPublishedCompilerPool(t *testing.T) {
	data, err := os.ReadFile("testdata/drone-runner-aws/compiler_drone_pool.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := ImportDrone(data)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Pools[0]
	if len(cfg.Pools) != 1 || p.Name != "ubuntu" || p.MinIdle != 1 || p.MaxInstances != 100 ||
		!slices.Equal(p.InstanceTypes, []string{"t2.micro"}) || !slices.Equal(p.SecurityGroups, []string{"sg-0f5aaeb48d35162a4"}) || p.Tags["cat"] != "dog" {
		t.Errorf("pools %+v", cfg.Pools)
	}
	// It names no subnet: usable once deployed by the CDK stack, which
	// gives the functions' subnets.
	out, _ := Marshal(cfg)
	if _, err := ParseFor(out, Network{Subnets: []string{"subnet-0a1b2c3d4e5f60001"}}); err != nil {
		t.Errorf("with the deployment's subnets: %v", err)
	}
}
