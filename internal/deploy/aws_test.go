package deploy_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/slipway-ci/slipway/internal/deploy"
	"github.com/slipway-ci/slipway/internal/fleet"
)

func TestFleetFromEnv(t *testing.T) {
	env := map[string]string{
		deploy.EnvSubnets:          "subnet-0f0f0f0f0f0f0f0f1, subnet-0f0f0f0f0f0f0f0f2",
		deploy.EnvVMSecurityGroups: "sg-0f0f0f0f0f0f0f0f3",
		deploy.EnvLaunchTemplates:  `{"linux":"lt-0123456789abcdef0"}`,
		deploy.EnvAgentObjects:     `{"linux/arm64":{"bucket":"assets","key":"abc"}}`,
	}
	f, err := deploy.FleetFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.Network.Subnets, []string{"subnet-0f0f0f0f0f0f0f0f1", "subnet-0f0f0f0f0f0f0f0f2"}) ||
		!slices.Equal(f.Network.SecurityGroups, []string{"sg-0f0f0f0f0f0f0f0f3"}) {
		t.Errorf("network %+v", f.Network)
	}
	if !maps.Equal(f.LaunchTemplates, map[string]string{"linux": "lt-0123456789abcdef0"}) ||
		!maps.Equal(f.Agents, map[string]fleet.Object{"linux/arm64": {Bucket: "assets", Key: "abc"}}) {
		t.Errorf("templates %v, agents %v", f.LaunchTemplates, f.Agents)
	}

	none, err := deploy.FleetFromEnv(func(string) string { return "" })
	if err != nil || len(none.Network.Subnets)+len(none.LaunchTemplates)+len(none.Agents) != 0 {
		t.Errorf("an empty environment: %+v, %v", none, err)
	}

	env[deploy.EnvLaunchTemplates] = `["linux"]`
	env[deploy.EnvAgentObjects] = `{"linux/arm64":{"bucket":"assets"}}`
	_, err = deploy.FleetFromEnv(func(k string) string { return env[k] })
	for _, want := range []string{deploy.EnvLaunchTemplates + ": want a JSON object", deploy.EnvAgentObjects + ": linux/arm64: want a bucket and a key"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to say %q", err, want)
		}
	}
}
