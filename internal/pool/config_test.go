package pool

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLoadExample(t *testing.T) {
	cfg, err := Load("testdata/pools.yaml")
	if err != nil {
		t.Fatal(err)
	}
	linux, ok := cfg.Pool("linux-amd64")
	if !ok {
		t.Fatal("no linux-amd64 pool")
	}
	if linux.AMI != "resolve:ssm:/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id" {
		t.Errorf("ami %q: an SSM path becomes resolve:ssm:", linux.AMI)
	}
	if linux.MaxVMLifetime.Duration != 6*time.Hour || !linux.Spot.Enabled || !linux.Spot.FallBackToOnDemand() {
		t.Errorf("linux pool %+v", linux)
	}
	win, _ := cfg.Pool("windows")
	if win.BootBudget.Duration != DefaultWindowsBudget || win.RootVolume.SizeGB != DefaultVolumeGB || win.RootVolume.Type != "gp3" || win.MaxVMLifetime.Duration != DefaultMaxVMLifetime {
		t.Errorf("windows defaults %+v", win)
	}
}

func TestWarmTargetFollowsTheSchedule(t *testing.T) {
	cfg, err := Load("testdata/pools.yaml")
	if err != nil {
		t.Fatal(err)
	}
	linux, _ := cfg.Pool("linux-amd64")
	berlin, _ := time.LoadLocation("Europe/Berlin")
	tests := []struct {
		name string
		at   time.Time
		want int
	}{
		{name: "monday 09:30 Berlin", at: time.Date(2026, 11, 23, 9, 30, 0, 0, berlin), want: 10},
		{name: "monday 18:59 Berlin", at: time.Date(2026, 11, 23, 18, 59, 59, 0, berlin), want: 10},
		{name: "monday 19:00 Berlin", at: time.Date(2026, 11, 23, 19, 0, 0, 0, berlin), want: 1},
		{name: "saturday noon", at: time.Date(2026, 11, 28, 12, 0, 0, 0, berlin), want: 1},
		{name: "night", at: time.Date(2026, 11, 28, 3, 0, 0, 0, berlin), want: 0},
		{name: "same instant in UTC", at: time.Date(2026, 11, 23, 8, 30, 0, 0, time.UTC), want: 10},
	}
	for _, tt := range tests {
		if got := linux.WarmTarget(tt.at); got != tt.want {
			t.Errorf("%s: warm target %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestBadPoolFilesNameEveryProblem(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{name: "empty", yaml: "", want: []string{"empty"}},
		{name: "no pools", yaml: "pools: []\n", want: []string{"defines no pool"}},
		{name: "not yaml", yaml: "pools: [\n", want: []string{"not YAML"}},
		{
			name: "unknown keys everywhere",
			yaml: `pools:
  - name: a
    os: linux
    arch: amd64
    instanc_types: [c6i.large]
    ami: ami-0123456789abcdef0
    subnets: [subnet-0a1b2c3d]
    security_groups: [sg-0a1b2c3d]
    max_instances: 1
    root_volume: {size: 10}
    schedule: [{cron: "* * * * *", tz: UTC}]
extra: 1
`,
			want: []string{`line 5: pools[a]: unknown key "instanc_types"`, `pools[a].root_volume: unknown key "size"`, `pools[a].schedule[0]: unknown key "tz"`, `top level: unknown key "extra"`, "pool a: instance_types: give at least one"},
		},
		{
			name: "bad values, all reported",
			yaml: `pools:
  - name: Bad_Name
    os: macos
    arch: amd64
    instance_types: [large, c6i.large, c6i.large]
    ami: my-image
    subnets: [sn-1]
    security_groups: []
    max_instances: 0
    min_idle: -1
    max_vm_lifetime: 1m
    boot_budget: forever
    root_volume: {size_gb: 2, type: ssd}
    schedule: [{cron: "61 * * * *", time_zone: Mars/Olympus, min_idle: 5}]
    spot: {on_demand_fallback: false}
    tags: {"aws:x": "1", "slipway:pool": "x"}
`,
			want: []string{`line 12: pools[Bad_Name].boot_budget: "forever" is not a duration`, `pool Bad_Name: os: "macos"`, `pool Bad_Name: tags: key "aws:x"`},
		},
		{
			name: "bad values after a good decode",
			yaml: `pools:
  - name: Bad_Name
    os: macos
    arch: arm
    instance_types: [large, c6i.large, c6i.large]
    ami: my-image
    subnets: [sn-1]
    security_groups: []
    max_instances: 0
    min_idle: -1
    max_vm_lifetime: 1m
    root_volume: {size_gb: 2, type: ssd}
    schedule: [{cron: "61 * * * *", time_zone: Mars/Olympus, min_idle: 5}]
    spot: {on_demand_fallback: false}
    tags: {"aws:x": "1", "slipway:pool": "x"}
  - name: bad_name
    os: windows
    arch: arm64
    instance_types: [m6i.large]
    ami: ami-0123456789abcdef0
    subnets: [subnet-0a1b2c3d]
    security_groups: [sg-0a1b2c3d]
    max_instances: 2
    min_idle: 3
`,
			want: []string{
				`pool Bad_Name: name: "Bad_Name"`,
				`pool Bad_Name: os: "macos"`,
				`pool Bad_Name: instance_types: "large"`,
				`pool Bad_Name: instance_types: "c6i.large" is listed twice`,
				`pool Bad_Name: ami: "my-image"`,
				`pool Bad_Name: subnets: "sn-1"`,
				`pool Bad_Name: security_groups: give`,
				`pool Bad_Name: max_instances: 0`,
				`pool Bad_Name: min_idle: -1`,
				`pool Bad_Name: max_vm_lifetime: 1m0s`,
				`pool Bad_Name: root_volume.size_gb: 2`,
				`pool Bad_Name: root_volume.type: "ssd"`,
				`pool Bad_Name: schedule[0].cron: "61 * * * *"`,
				`pool Bad_Name: schedule[0].time_zone: "Mars/Olympus"`,
				`pool Bad_Name: spot.on_demand_fallback`,
				`pool Bad_Name: tags: key "aws:x"`,
				`pool Bad_Name: tags: key "slipway:pool"`,
				`pool bad_name: arch: "arm64": Windows pools are amd64`,
				`pool bad_name: min_idle: 3`,
			},
		},
		{
			name: "duplicate names",
			yaml: `pools:
  - {name: a, os: linux, arch: amd64, instance_types: [c6i.large], ami: ami-0123456789abcdef0, subnets: [subnet-0a1b2c3d], security_groups: [sg-0a1b2c3d], max_instances: 1}
  - {name: a, os: linux, arch: amd64, instance_types: [c6i.large], ami: ami-0123456789abcdef0, subnets: [subnet-0a1b2c3d], security_groups: [sg-0a1b2c3d], max_instances: 1}
`,
			want: []string{`pool a: name: "a" is used by another pool too`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("accepted: %+v", cfg)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q; it says:\n%v", w, err)
				}
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{"pools: []", "pools:\n  - name: a\n    os: linux\n", "pools: [{name: a, schedule: [{cron: '* * * * *'}]}]"} {
		f.Add([]byte(seed))
	}
	if data, err := os.ReadFile("testdata/pools.yaml"); err == nil {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err == nil && len(cfg.Pools) == 0 {
			t.Fatal("accepted a file without pools")
		}
	})
}

func TestADeploymentCompletesEveryPoolsNetwork(t *testing.T) {
	file := []byte(`pools:
  - {name: own, os: linux, arch: arm64, instance_types: [c7g.large], ami: ami-0123456789abcdef0,
     subnets: [subnet-0a1b2c3d4e5f60001], security_groups: [sg-0a1b2c3d4e5f60009], max_instances: 2}
  - {name: bare, os: windows, arch: amd64, instance_types: [m6i.large], ami: ami-0123456789abcdef0, max_instances: 2}
`)
	if _, err := Parse(file); err == nil || !strings.Contains(err.Error(), "pool bare: subnets") {
		t.Fatalf("a pool without subnets outside a deployment: err = %v", err)
	}
	net := Network{Subnets: []string{"subnet-0f0f0f0f0f0f0f0f1", "subnet-0f0f0f0f0f0f0f0f2"}, SecurityGroups: []string{"sg-0f0f0f0f0f0f0f0f3", "sg-0a1b2c3d4e5f60009"}}
	cfg, err := ParseFor(file, net)
	if err != nil {
		t.Fatal(err)
	}
	own, bare := cfg.Pools[0], cfg.Pools[1]
	if !slices.Equal(own.Subnets, []string{"subnet-0a1b2c3d4e5f60001"}) || !slices.Equal(bare.Subnets, net.Subnets) {
		t.Errorf("subnets: own %v, bare %v: a pool's own subnets win, the deployment's fill in", own.Subnets, bare.Subnets)
	}
	if want := []string{"sg-0a1b2c3d4e5f60009", "sg-0f0f0f0f0f0f0f0f3"}; !slices.Equal(own.SecurityGroups, want) {
		t.Errorf("own security groups = %v, want %v (the deployment's added once)", own.SecurityGroups, want)
	}
	if !slices.Equal(bare.SecurityGroups, net.SecurityGroups) {
		t.Errorf("bare security groups = %v, want %v", bare.SecurityGroups, net.SecurityGroups)
	}
}
