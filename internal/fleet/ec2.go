package fleet

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/smithy-go"

	"github.com/slipway-ci/slipway/internal/pool"
)

// EC2API is the part of the EC2 client the provider uses; *ec2.Client
// satisfies it.
type EC2API interface {
	RunInstances(ctx context.Context, params *ec2.RunInstancesInput, optFns ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error)
	TerminateInstances(ctx context.Context, params *ec2.TerminateInstancesInput, optFns ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error)
	DescribeInstances(ctx context.Context, params *ec2.DescribeInstancesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	DescribeImages(ctx context.Context, params *ec2.DescribeImagesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error)
}

// SSMAPI resolves AMIs named by an SSM parameter; *ssm.Client satisfies it.
type SSMAPI interface {
	GetParameter(ctx context.Context, params *ssm.GetParameterInput, optFns ...func(*ssm.Options)) (*ssm.GetParameterOutput, error)
}

// Presigner makes the download URL of an agent binary in S3;
// *s3.PresignClient satisfies it.
type Presigner interface {
	PresignGetObject(ctx context.Context, params *s3.GetObjectInput, optFns ...func(*s3.PresignOptions)) (*v4.PresignedHTTPRequest, error)
}

// Object is an S3 object.
type Object struct {
	Bucket string `json:"bucket"`
	Key    string `json:"key"`
}

// EC2 launches build VMs on EC2.
type EC2 struct {
	EC2 EC2API
	SSM SSMAPI
	// Deployment names this deployment in the slipway:deployment tag.
	Deployment string
	// LaunchTemplates optionally names a launch template per pool, by id;
	// the pool's settings override what it holds. With templates, the
	// deployment's instances are those launched from them: EC2 tags each
	// with its template's id (aws:ec2launchtemplate:id), a tag no caller can
	// set, so an instance someone else tagged as the deployment's is not
	// listed (and the functions' role may not terminate it).
	LaunchTemplates map[string]string
	// Agents optionally holds the agent binary per platform ("linux/arm64")
	// in S3: a VM whose boot names no agent URL downloads its platform's
	// through a URL presigned for its boot budget, so the bucket stays
	// private and the VM's instance profile needs no S3 access.
	Agents  map[string]Object
	Presign Presigner

	mu     sync.Mutex
	images map[string]imageInfo // by the pool's AMI setting
}

var _ Provider = (*EC2)(nil)

type imageInfo struct {
	id, rootDevice string
	at             time.Time
}

// imageCacheTTL is how long a resolved AMI is reused: an SSM path moves
// when a new image is published, rarely.
const imageCacheTTL = 10 * time.Minute

// capacityCodes are the RunInstances errors after which another instance
// type, subnet or market may still work.
var capacityCodes = []string{
	"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity", "Unsupported",
	"InsufficientFreeAddressesInSubnet", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded",
	"InsufficientReservedInstanceCapacity", "UnfulfillableCapacity",
}

func errorCode(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode()
	}
	return ""
}

// noCapacityRetries keeps the SDK from retrying capacity errors (EC2 answers
// some with a 5xx): the next instance type or subnet is a better retry.
type noCapacityRetries struct{ aws.RetryerV2 }

func (r noCapacityRetries) IsErrorRetryable(err error) bool {
	return !slices.Contains(capacityCodes, errorCode(err)) && r.RetryerV2.IsErrorRetryable(err)
}

func withoutCapacityRetries(o *ec2.Options) {
	if v2, ok := o.Retryer.(aws.RetryerV2); ok {
		o.Retryer = noCapacityRetries{v2}
	}
}

// Launch runs one instance for the request. It tries the markets (spot,
// then on-demand if the pool allows), the instance types in order, and the
// subnets starting from one picked by the launch id, until one has capacity.
// Each attempt's client token is the launch id (with the attempt number
// after the first), so a retried Launch never starts a second instance.
func (e *EC2) Launch(ctx context.Context, req LaunchRequest) (*Instance, error) {
	p := req.Pool
	if req.Boot.AgentURL == "" && len(e.Agents) > 0 {
		url, err := e.agentURL(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("launch %s: %w", req.Boot.LaunchID, err)
		}
		req.Boot.AgentURL = url
	}
	userData, err := e.userData(p, req.Boot)
	if err != nil {
		return nil, err
	}
	img, err := e.image(ctx, p.AMI)
	if err != nil {
		return nil, fmt.Errorf("launch %s: %w", req.Boot.LaunchID, err)
	}
	markets := []types.MarketType{""}
	if p.Spot.Enabled {
		markets = []types.MarketType{types.MarketTypeSpot}
		if p.Spot.FallBackToOnDemand() {
			markets = append(markets, "")
		}
	}
	subnets := rotate(p.Subnets, req.Boot.LaunchID)
	var tried []string
	attempt := 0
	for _, market := range markets {
		for _, itype := range p.InstanceTypes {
			for _, subnet := range subnets {
				token := req.Boot.LaunchID
				if attempt > 0 {
					token += "-" + strconv.Itoa(attempt)
				}
				attempt++
				in := e.runInput(p, req.Boot.LaunchID, img, itype, subnet, market, token, userData)
				out, err := e.EC2.RunInstances(ctx, in, withoutCapacityRetries)
				if err == nil {
					if len(out.Instances) != 1 {
						return nil, fmt.Errorf("launch %s: EC2 returned %d instances", req.Boot.LaunchID, len(out.Instances))
					}
					inst := fromEC2(out.Instances[0], req.Boot.Port)
					return &inst, nil
				}
				code := errorCode(err)
				if !slices.Contains(capacityCodes, code) {
					return nil, fmt.Errorf("launch %s (%s in %s): %w", req.Boot.LaunchID, itype, subnet, err)
				}
				tried = append(tried, fmt.Sprintf("%s/%s/%s: %s", marketName(market), itype, subnet, code))
			}
		}
	}
	return nil, fmt.Errorf("launch %s: %w (tried %s)", req.Boot.LaunchID, ErrNoCapacity, strings.Join(tried, ", "))
}

// agentURL presigns the download of the pool's platform's agent binary,
// valid for the pool's boot budget: the VM fetches it while it boots.
func (e *EC2) agentURL(ctx context.Context, p *pool.Pool) (string, error) {
	platform := p.OS + "/" + p.Arch
	obj, ok := e.Agents[platform]
	if !ok {
		return "", fmt.Errorf("pool %s: the deployment has no agent binary for %s", p.Name, platform)
	}
	if e.Presign == nil {
		return "", errors.New("no S3 presigner for the agent's download URL")
	}
	budget := p.BootBudget.Duration
	if budget <= 0 {
		budget = pool.DefaultBootBudget
	}
	req, err := e.Presign.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(obj.Bucket), Key: aws.String(obj.Key)},
		s3.WithPresignExpires(budget))
	if err != nil {
		return "", fmt.Errorf("presign the agent download s3://%s/%s: %w", obj.Bucket, obj.Key, err)
	}
	return req.URL, nil
}

func marketName(m types.MarketType) string {
	if m == "" {
		return "on-demand"
	}
	return string(m)
}

// rotate starts the subnet list at an index picked by the launch id, so a
// pool's VMs spread over its availability zones.
func rotate(subnets []string, launchID string) []string {
	if len(subnets) == 0 {
		return nil
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(launchID))
	i := int(h.Sum32() % uint32(len(subnets)))
	return append(slices.Clone(subnets[i:]), subnets[:i]...)
}

func (e *EC2) userData(p *pool.Pool, b Boot) (string, error) {
	b.ExtraUserData = p.UserData
	render := LinuxUserData
	if p.OS == "windows" {
		render = WindowsUserData
	}
	data, err := render(b)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(data), nil
}

func (e *EC2) runInput(p *pool.Pool, launchID string, img imageInfo, itype, subnet string, market types.MarketType, token, userData string) *ec2.RunInstancesInput {
	tags := []types.Tag{
		{Key: aws.String(TagDeployment), Value: aws.String(e.Deployment)},
		{Key: aws.String(TagPool), Value: aws.String(p.Name)},
		{Key: aws.String(TagLaunchID), Value: aws.String(launchID)},
		{Key: aws.String("Name"), Value: aws.String("slipway-" + p.Name + "-" + launchID)},
	}
	for _, k := range slices.Sorted(maps.Keys(p.Tags)) {
		tags = append(tags, types.Tag{Key: aws.String(k), Value: aws.String(p.Tags[k])})
	}
	in := &ec2.RunInstancesInput{
		MinCount:         aws.Int32(1),
		MaxCount:         aws.Int32(1),
		ImageId:          aws.String(img.id),
		InstanceType:     types.InstanceType(itype),
		SubnetId:         aws.String(subnet),
		SecurityGroupIds: p.SecurityGroups,
		ClientToken:      aws.String(token),
		UserData:         aws.String(userData),
		MetadataOptions: &types.InstanceMetadataOptionsRequest{
			HttpTokens:   types.HttpTokensStateRequired,
			HttpEndpoint: types.InstanceMetadataEndpointStateEnabled,
			// 2: steps' containers on a bridge network are one hop further.
			HttpPutResponseHopLimit: aws.Int32(2),
		},
		BlockDeviceMappings: []types.BlockDeviceMapping{{
			DeviceName: aws.String(img.rootDevice),
			Ebs: &types.EbsBlockDevice{
				VolumeSize:          aws.Int32(int32(p.RootVolume.SizeGB)),
				VolumeType:          types.VolumeType(p.RootVolume.Type),
				Encrypted:           aws.Bool(true),
				DeleteOnTermination: aws.Bool(true),
			},
		}},
		TagSpecifications: []types.TagSpecification{
			{ResourceType: types.ResourceTypeInstance, Tags: tags},
			{ResourceType: types.ResourceTypeVolume, Tags: tags},
		},
		// An instance that shuts itself down is gone, not stopped.
		InstanceInitiatedShutdownBehavior: types.ShutdownBehaviorTerminate,
	}
	if market != "" {
		in.InstanceMarketOptions = &types.InstanceMarketOptionsRequest{
			MarketType: market,
			SpotOptions: &types.SpotMarketOptions{
				SpotInstanceType:             types.SpotInstanceTypeOneTime,
				InstanceInterruptionBehavior: types.InstanceInterruptionBehaviorTerminate,
			},
		}
	}
	if p.IAMInstanceProfile != "" {
		if strings.HasPrefix(p.IAMInstanceProfile, "arn:") {
			in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Arn: aws.String(p.IAMInstanceProfile)}
		} else {
			in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: aws.String(p.IAMInstanceProfile)}
		}
	}
	if p.KeyPair != "" {
		in.KeyName = aws.String(p.KeyPair)
	}
	if lt := e.LaunchTemplates[p.Name]; lt != "" {
		// $Latest: the deployment updates the template in place, and a
		// template's default version stays the first unless set.
		in.LaunchTemplate = &types.LaunchTemplateSpecification{LaunchTemplateId: aws.String(lt), Version: aws.String("$Latest")}
	}
	return in
}

// image resolves the pool's AMI setting to an image id and its root device
// name (needed to size the root volume), through SSM for a parameter path.
func (e *EC2) image(ctx context.Context, ami string) (imageInfo, error) {
	e.mu.Lock()
	cached, ok := e.images[ami]
	e.mu.Unlock()
	if ok && time.Since(cached.at) < imageCacheTTL {
		return cached, nil
	}
	id := ami
	if path, isSSM := strings.CutPrefix(ami, "resolve:ssm:"); isSSM {
		if e.SSM == nil {
			return imageInfo{}, fmt.Errorf("ami %s: no SSM client to resolve it", ami)
		}
		out, err := e.SSM.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(path)})
		if err != nil {
			return imageInfo{}, fmt.Errorf("resolve ami %s: %w", path, err)
		}
		id = aws.ToString(out.Parameter.Value)
	}
	out, err := e.EC2.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{id}})
	if err != nil {
		return imageInfo{}, fmt.Errorf("describe ami %s: %w", id, err)
	}
	if len(out.Images) != 1 || aws.ToString(out.Images[0].RootDeviceName) == "" {
		return imageInfo{}, fmt.Errorf("describe ami %s: no such image, or no root device", id)
	}
	info := imageInfo{id: id, rootDevice: aws.ToString(out.Images[0].RootDeviceName), at: time.Now()}
	e.mu.Lock()
	if e.images == nil {
		e.images = map[string]imageInfo{}
	}
	e.images[ami] = info
	e.mu.Unlock()
	return info, nil
}

var missingIDs = regexp.MustCompile(`i-[0-9a-f]+`)

// Terminate ends instances. EC2 fails the whole call when one id is
// unknown; those ids count as terminated and the rest is asked again.
func (e *EC2) Terminate(ctx context.Context, ids ...string) error {
	for len(ids) > 0 {
		_, err := e.EC2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids})
		if err == nil {
			return nil
		}
		if errorCode(err) != "InvalidInstanceID.NotFound" {
			return fmt.Errorf("terminate %s: %w", strings.Join(ids, ", "), err)
		}
		missing := missingIDs.FindAllString(err.Error(), -1)
		rest := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return slices.Contains(missing, id) })
		if len(rest) == len(ids) {
			return nil // EC2 named none of ours: all are gone
		}
		ids = rest
	}
	return nil
}

// List returns this deployment's instances, all pages.
func (e *EC2) List(ctx context.Context) ([]Instance, error) {
	var out []Instance
	filters := []types.Filter{{Name: aws.String("tag:" + TagDeployment), Values: []string{e.Deployment}}}
	if len(e.LaunchTemplates) > 0 {
		templates := slices.Sorted(maps.Values(e.LaunchTemplates))
		filters = append(filters, types.Filter{Name: aws.String("tag:" + TagLaunchTemplateID), Values: slices.Compact(templates)})
	}
	p := ec2.NewDescribeInstancesPaginator(e.EC2, &ec2.DescribeInstancesInput{Filters: filters})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list instances: %w", err)
		}
		for _, r := range page.Reservations {
			for _, in := range r.Instances {
				out = append(out, fromEC2(in, DefaultPort))
			}
		}
	}
	return out, nil
}

func fromEC2(in types.Instance, port int) Instance {
	inst := Instance{
		ID:           aws.ToString(in.InstanceId),
		InstanceType: string(in.InstanceType),
		LaunchedAt:   aws.ToTime(in.LaunchTime),
	}
	if ip := aws.ToString(in.PrivateIpAddress); ip != "" {
		inst.Address = net.JoinHostPort(ip, strconv.Itoa(port))
	}
	if in.State != nil {
		inst.State = State(in.State.Name)
	}
	for _, t := range in.Tags {
		switch aws.ToString(t.Key) {
		case TagLaunchID:
			inst.LaunchID = aws.ToString(t.Value)
		case TagPool:
			inst.Pool = aws.ToString(t.Value)
		}
	}
	return inst
}
