package fleet_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/fleet/ec2fake"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/pki"
	"github.com/slipway-ci/slipway/internal/pool"
)

func testPool(mod func(*pool.Pool)) *pool.Pool {
	p := &pool.Pool{
		Name: "linux", OS: "linux", Arch: "amd64",
		InstanceTypes:  []string{"c6i.large", "c5.large"},
		AMI:            "ami-0123456789abcdef0",
		Subnets:        []string{"subnet-0000000a", "subnet-0000000b"},
		SecurityGroups: []string{"sg-00000001"},
		RootVolume:     pool.Volume{SizeGB: 60, Type: "gp3"},
		MaxInstances:   10,
		Tags:           map[string]string{"team": "ci"},
	}
	if mod != nil {
		mod(p)
	}
	return p
}

// boot makes a real certificate for launchID.
func boot(t *testing.T, launchID string) fleet.Boot {
	t.Helper()
	ca, err := pki.InitDir(t.TempDir(), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey()
	cert, err := ca.IssueServer(launchID, key.Public(), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pki.KeyPEM(key)
	return fleet.Boot{
		LaunchID: launchID, CertPEM: pki.CertPEM(cert), KeyPEM: keyPEM, ClientCAPEM: pki.CertPEM(ca.Cert),
		AgentURL: "https://artifacts.example/slipway-agent", Port: fleet.DefaultPort,
	}
}

func newEC2(t *testing.T) (*fleet.EC2, *ec2fake.Server) {
	t.Helper()
	fake := ec2fake.New()
	t.Cleanup(func() {
		fake.Close()
		if p := fake.Problems(); len(p) > 0 {
			t.Errorf("the fake EC2 refused requests: %v", p)
		}
	})
	return &fleet.EC2{EC2: fake.EC2Client(), SSM: fake.SSMClient(), Deployment: "test"}, fake
}

func TestLaunchSendsWhatEC2Needs(t *testing.T) {
	e, fake := newEC2(t)
	ctx := context.Background()
	id := lease.NewLaunchID()
	inst, err := e.Launch(ctx, fleet.LaunchRequest{Pool: testPool(nil), Boot: boot(t, id)})
	if err != nil {
		t.Fatal(err)
	}
	got := fake.Instances()
	if len(got) != 1 {
		t.Fatalf("%d instances", len(got))
	}
	in := got[0]
	if inst.ID != in.ID || inst.LaunchID != id || inst.Pool != "linux" || !strings.HasSuffix(inst.Address, ":9079") || inst.State != fleet.Pending {
		t.Errorf("returned %+v", inst)
	}
	if in.ClientToken != id {
		t.Errorf("client token %q, want the launch id", in.ClientToken)
	}
	for k, v := range map[string]string{fleet.TagDeployment: "test", fleet.TagPool: "linux", fleet.TagLaunchID: id, "team": "ci"} {
		if in.Tags[k] != v {
			t.Errorf("tag %s = %q, want %q", k, in.Tags[k], v)
		}
	}
	if in.HTTPTokens != "required" || !in.RootVolumeEncrypted || in.RootVolumeSize != 60 || in.Market != "on-demand" {
		t.Errorf("instance %+v", in)
	}
	ud := string(in.UserData)
	if !strings.HasPrefix(ud, "#!/bin/sh") || !strings.Contains(ud, id) || !strings.Contains(ud, "BEGIN PRIVATE KEY") ||
		!strings.Contains(ud, "https://artifacts.example/slipway-agent") {
		t.Errorf("user data does not install this VM's agent:\n%s", ud)
	}
}

func TestLaunchIsIdempotent(t *testing.T) {
	e, fake := newEC2(t)
	ctx := context.Background()
	req := fleet.LaunchRequest{Pool: testPool(nil), Boot: boot(t, lease.NewLaunchID())}
	a, err := e.Launch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.Launch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != b.ID || len(fake.Instances()) != 1 {
		t.Fatalf("a repeated launch made another instance: %s, %s", a.ID, b.ID)
	}
}

func TestLaunchFallsBack(t *testing.T) {
	tests := []struct {
		name       string
		pool       func(*pool.Pool)
		fail       func(ec2fake.RunRequest) string
		wantType   string
		wantMarket string
		wantErr    error
		wantCalls  int
	}{
		{
			name: "next instance type",
			fail: func(r ec2fake.RunRequest) string {
				if r.InstanceType == "c6i.large" {
					return "InsufficientInstanceCapacity"
				}
				return ""
			},
			wantType: "c5.large", wantMarket: "on-demand", wantCalls: 3,
		},
		{
			name: "next subnet",
			fail: func(r ec2fake.RunRequest) string {
				if r.SubnetID == "subnet-0000000a" {
					return "Unsupported"
				}
				return ""
			},
			wantType: "c6i.large", wantMarket: "on-demand",
		},
		{
			name: "spot, then on-demand",
			pool: func(p *pool.Pool) { p.Spot.Enabled = true },
			fail: func(r ec2fake.RunRequest) string {
				if r.Market == "spot" {
					return "InsufficientInstanceCapacity"
				}
				return ""
			},
			wantType: "c6i.large", wantMarket: "on-demand", wantCalls: 5,
		},
		{
			name: "spot without fallback",
			pool: func(p *pool.Pool) { no := false; p.Spot = pool.Spot{Enabled: true, OnDemandFallback: &no} },
			fail: func(r ec2fake.RunRequest) string {
				if r.Market == "spot" {
					return "SpotMaxPriceTooLow"
				}
				return ""
			},
			wantErr: fleet.ErrNoCapacity, wantCalls: 4,
		},
		{
			name:    "other errors stop at once",
			fail:    func(ec2fake.RunRequest) string { return "UnauthorizedOperation" },
			wantErr: errors.New("UnauthorizedOperation"), wantCalls: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, fake := newEC2(t)
			fake.Fail = tt.fail
			inst, err := e.Launch(context.Background(), fleet.LaunchRequest{Pool: testPool(tt.pool), Boot: boot(t, lease.NewLaunchID())})
			if tt.wantErr != nil {
				if err == nil || (!errors.Is(err, tt.wantErr) && !strings.Contains(err.Error(), tt.wantErr.Error())) {
					t.Fatalf("err %v, want %v", err, tt.wantErr)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				in := fake.Instances()[0]
				if inst.InstanceType != tt.wantType || in.Market != tt.wantMarket {
					t.Fatalf("got %s %s, want %s %s", inst.InstanceType, in.Market, tt.wantType, tt.wantMarket)
				}
			}
			// Capacity errors are not retried by the SDK: each attempt is one call.
			if tt.wantCalls > 0 && fake.Calls("RunInstances") != tt.wantCalls {
				t.Errorf("%d RunInstances calls, want %d", fake.Calls("RunInstances"), tt.wantCalls)
			}
		})
	}
}

func TestAMIFromSSM(t *testing.T) {
	e, fake := newEC2(t)
	fake.Parameters = map[string]string{"/aws/service/ubuntu/ami-id": "ami-0fedcba9876543210"}
	fake.Images = map[string]string{"ami-0fedcba9876543210": "/dev/sda1"}
	p := testPool(func(p *pool.Pool) { p.AMI = "resolve:ssm:/aws/service/ubuntu/ami-id" })
	for range 2 {
		if _, err := e.Launch(context.Background(), fleet.LaunchRequest{Pool: p, Boot: boot(t, lease.NewLaunchID())}); err != nil {
			t.Fatal(err)
		}
	}
	for _, in := range fake.Instances() {
		if in.ImageID != "ami-0fedcba9876543210" {
			t.Errorf("image %s", in.ImageID)
		}
	}
	if fake.Calls("ssm:GetParameter") != 1 || fake.Calls("DescribeImages") != 1 {
		t.Errorf("the AMI was resolved %d/%d times, want once (cached)", fake.Calls("ssm:GetParameter"), fake.Calls("DescribeImages"))
	}
}

func TestTerminateAndList(t *testing.T) {
	e, fake := newEC2(t)
	ctx := context.Background()
	var ids []string
	for range 12 {
		inst, err := e.Launch(ctx, fleet.LaunchRequest{Pool: testPool(nil), Boot: boot(t, lease.NewLaunchID())})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, inst.ID)
	}
	fake.AddInstance(ec2fake.Instance{Tags: map[string]string{fleet.TagDeployment: "another"}})
	all, err := e.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 12 {
		t.Fatalf("listed %d instances over pages, want this deployment's 12", len(all))
	}
	// Unknown ids count as terminated; the known ones end.
	if err := e.Terminate(ctx, ids[0], "i-00000000000000bad", ids[1]); err != nil {
		t.Fatal(err)
	}
	if err := e.Terminate(ctx, "i-00000000000000bad"); err != nil {
		t.Fatal(err)
	}
	for _, in := range fake.Instances() {
		gone := in.ID == ids[0] || in.ID == ids[1]
		if gone != (in.State == "shutting-down") {
			t.Errorf("%s is %s", in.ID, in.State)
		}
	}
}

// The CDK stack's way: each pool has a launch template and the agent
// binaries are S3 objects, downloaded through a URL presigned per launch.
func TestLaunchWithTheStacksTemplatesAndAgentObjects(t *testing.T) {
	e, fake := newEC2(t)
	templates := map[string]string{"linux": "lt-0123456789abcdef0", "windows": "lt-0fedcba9876543210"}
	e.LaunchTemplates = templates
	e.Agents = map[string]fleet.Object{
		"linux/amd64":   {Bucket: "assets", Key: "0a1b.agent-linux-amd64"},
		"windows/amd64": {Bucket: "assets", Key: "2c3d.agent-windows-amd64"},
	}
	e.Presign = s3.NewPresignClient(s3.NewFromConfig(aws.Config{
		Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", "session+token/="),
	}))
	ctx := context.Background()
	windows := testPool(func(p *pool.Pool) {
		p.Name, p.OS = "windows", "windows"
		p.BootBudget = pool.Duration{Duration: 20 * time.Minute}
	})
	for _, p := range []*pool.Pool{testPool(nil), windows} {
		b := boot(t, lease.NewLaunchID())
		b.AgentURL = ""
		if _, err := e.Launch(ctx, fleet.LaunchRequest{Pool: p, Boot: b}); err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
	}
	byPool := map[string]ec2fake.Instance{}
	for _, in := range fake.Instances() {
		byPool[in.Tags[fleet.TagPool]] = in
	}
	for name, want := range map[string]struct{ key, script, expires string }{
		"linux":   {"0a1b.agent-linux-amd64", "systemctl enable --now slipway-agent", "X-Amz-Expires=600"},
		"windows": {"2c3d.agent-windows-amd64", "New-Service -Name 'slipway-agent'", "X-Amz-Expires=1200"},
	} {
		in := byPool[name]
		if in.LaunchTemplate != templates[name]+"@$Latest" {
			t.Errorf("%s: launch template %q", name, in.LaunchTemplate)
		}
		ud := string(in.UserData)
		if !strings.Contains(ud, want.script) || !strings.Contains(ud, want.key+"?") ||
			!strings.Contains(ud, "X-Amz-Signature=") || !strings.Contains(ud, want.expires) {
			t.Errorf("%s: the user data does not download its platform's agent through a presigned URL (%s):\n%s", name, want.expires, ud)
		}
	}

	// The deployment's instances are those its templates launched: one
	// tagged as the deployment's by someone else is not (EC2's own tag,
	// which no caller can set, says which template launched an instance).
	fake.AddInstance(ec2fake.Instance{State: "running", Tags: map[string]string{
		fleet.TagDeployment: "test", fleet.TagPool: "linux", fleet.TagLaunchID: lease.NewLaunchID(),
	}})
	listed, err := e.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != 2 || len(fake.Instances()) != 3 {
		t.Errorf("listed %d of %d instances, want the 2 the templates launched: %+v", len(listed), len(fake.Instances()), listed)
	}

	arm := testPool(func(p *pool.Pool) { p.Name, p.Arch = "arm", "arm64" })
	b := boot(t, lease.NewLaunchID())
	b.AgentURL = ""
	if _, err := e.Launch(ctx, fleet.LaunchRequest{Pool: arm, Boot: b}); err == nil || !strings.Contains(err.Error(), "no agent binary for linux/arm64") {
		t.Errorf("a platform without an agent binary: err = %v", err)
	}
}
