package harnessrunner

import "encoding/json"

// The wire types of the Harness delegate's VM runner API. Two sources, both
// read for facts only (neither module can be a dependency, see docs/harness.md):
//
//   - the client: harness-core's request beans, which the delegate serialises
//     with Retrofit's default Jackson mapper, so every declared field arrives,
//     null when unset, booleans and numbers always
//     (950-delegate-tasks-beans/src/main/java/io/harness/delegate/beans/ci/vm/runner/
//     SetupVmRequest.java, ExecuteStepRequest.java, DestroyVmRequest.java, and
//     how 930-delegate-tasks/.../citasks/vm/ and 933-ci-commons/.../vm/VmExecuteStepUtils.java
//     fill them, at vigneswara-propelo/harness-core 1dcec145, 2023-12-26);
//   - the server it calls: drone-runners/drone-runner-aws command/harness
//     (f7e1ac71, 2026-08-21) and harness/lite-engine api/api.go and
//     engine/spec/spec.go (21311ead, 2026-08-21), for the fields newer
//     delegates send.
//
// Bodies are decoded as the runner decodes them: a field no type here
// declares is ignored, and logged once by its path (decode.go), so a Harness
// upgrade does not stop every build. A declared field Slipway cannot honour,
// and whose value would change what runs, is declared as Unsupported: any
// value but JSON's zero ("", 0, false, null, [], {} or an object of zeros) is
// refused by its path.

// Unsupported is a field the drop-in refuses unless it is zero.
type Unsupported json.RawMessage

// MarshalJSON writes the raw value back (null when absent).
func (u Unsupported) MarshalJSON() ([]byte, error) {
	if len(u) == 0 {
		return []byte("null"), nil
	}
	return u, nil
}

// UnmarshalJSON keeps the raw value.
func (u *Unsupported) UnmarshalJSON(b []byte) error {
	*u = append((*u)[:0], b...)
	return nil
}

// SetupRequest is the body of POST /setup: the runner's SetupVMRequest with
// its embedded CapacityReservationRequest.
type SetupRequest struct {
	ID              string            `json:"id"` // the stage runtime id
	PoolID          string            `json:"pool_id"`
	FallbackPoolIDs []string          `json:"fallback_pool_ids"`
	Tags            map[string]string `json:"tags"`
	Context         Context           `json:"context"`
	// ReservationTimeout is in milliseconds; it bounds the wait for a VM.
	ReservationTimeout int64 `json:"timeout"`

	ResourceClass             Unsupported `json:"resource_class"`
	VMImageConfig             Unsupported `json:"vm_image_config"`
	StorageConfig             Unsupported `json:"storage_config"`
	Zone                      Unsupported `json:"zone"`
	NestedVirtualization      Unsupported `json:"nested_virtualization"`
	ReservationPerPoolTimeout Unsupported `json:"reservation_per_pool_timeout"`

	Setup         LESetupRequest `json:"setup_request"`
	LogKey        string         `json:"log_key"`
	CorrelationID string         `json:"correlation_id"`
	InstanceInfo  InstanceInfo   `json:"instance_info"`
	// InfraType is the delegate's kind of infrastructure ("VM"); logged.
	InfraType string `json:"infra_type"`

	GitspaceAgentConfig   Unsupported `json:"gitspace_agent_config"`
	IsMarkedForInfraReset Unsupported `json:"is_marked_for_infra_reset"`
	SkipCloudVMCleanup    Unsupported `json:"skip_cloud_vm_cleanup"`
}

// Context is what the delegate says about the pipeline behind a request;
// the drop-in logs it.
type Context struct {
	AccountID           string `json:"account_id,omitempty"`
	OrgID               string `json:"org_id,omitempty"`
	ProjectID           string `json:"project_id,omitempty"`
	PipelineID          string `json:"pipeline_id,omitempty"`
	PipelineExecutionID string `json:"pipeline_execution_id,omitempty"`
	RunSequence         int    `json:"run_sequence,omitempty"`
	IsFreeAccount       bool   `json:"is_free_account,omitempty"`
	TaskID              string `json:"task_id,omitempty"`
}

// InstanceInfo is the VM as setup describes it; the delegate hands it back
// with every step and destroy, and the drop-in routes by the stage id only.
type InstanceInfo struct {
	ID                string `json:"id"`
	Name              string `json:"name"`
	IPAddress         string `json:"ip_address"`
	Port              int64  `json:"port"`
	OS                string `json:"os"`
	Arch              string `json:"arch"`
	Provider          string `json:"provider"`
	PoolName          string `json:"pool_name"`
	Zone              string `json:"zone"`
	StorageIdentifier string `json:"storage_identifier"`
	CAKey             []byte `json:"ca_key"`
	CACert            []byte `json:"ca_cert"`
	TLSKey            []byte `json:"tls_key"`
	TLSCert           []byte `json:"tls_cert"`
	ProxyURL          string `json:"proxy_url,omitempty"`
}

// LESetupRequest is lite-engine's api.SetupRequest.
type LESetupRequest struct {
	Envs    map[string]string `json:"envs"`
	Network Network           `json:"network"`
	Volumes []Volume          `json:"volumes"`
	// Secrets are values to mask; the steps get them through their envs.
	Secrets           []string   `json:"secrets"`
	LogConfig         LogConfig  `json:"log_config"`
	TIConfig          TIConfig   `json:"ti_config"`
	Files             []File     `json:"files"`
	MountDockerSocket *bool      `json:"mount_docker_socket"`
	MtlsConfig        MtlsConfig `json:"mtls_config"`
	// Timeout is the stage's, in seconds.
	Timeout int64 `json:"timeout"`
	// TTY asks lite-engine for a terminal; steps write to pipes on Slipway,
	// which changes how programs colour their output, not what runs.
	TTY bool `json:"tty"`

	VMImageConfig       Unsupported `json:"vm_image_config"`
	LELogKey            Unsupported `json:"le_log_key"`
	MemoryMetricsLogKey Unsupported `json:"memory_metrics_log_key"`
	EgressPolicy        Unsupported `json:"egress_policy"`
}

// Network is the docker network lite-engine would create; Slipway's
// containers use the VM's network, so only its name matters.
type Network struct {
	ID      string            `json:"id"`
	Labels  map[string]string `json:"labels"`
	Options map[string]string `json:"options"`
}

// Volume is lite-engine's spec.Volume.
type Volume struct {
	HostPath *HostPathVolume `json:"host"`
	EmptyDir Unsupported     `json:"temp"`
}

// HostPathVolume is a directory of the VM; the drop-in takes it as the
// stage's workspace.
type HostPathVolume struct {
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	Path     string            `json:"path"`
	Create   bool              `json:"create"`
	Remove   bool              `json:"remove"`
	Labels   map[string]string `json:"labels"`
	ReadOnly Unsupported       `json:"read_only"`
}

// VolumeMount mounts a volume into a container step.
type VolumeMount struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

// File is lite-engine's spec.File: written on the VM before the steps.
type File struct {
	Path  string      `json:"path"`
	Mode  uint32      `json:"mode"`
	Data  string      `json:"data"`
	IsDir Unsupported `json:"is_dir"`
}

// LogConfig says where the Harness log service is. The drop-in streams
// every step's log there itself; the token never leaves this process.
type LogConfig struct {
	AccountID         string      `json:"account_id"`
	IndirectUpload    bool        `json:"indirect_upload"`
	URL               string      `json:"url"`
	Token             string      `json:"token"`
	TrimNewLineSuffix bool        `json:"trim_new_line_suffix"`
	SanitizeConfig    Unsupported `json:"sanitize_config"`
	SkipOpeningStream bool        `json:"skip_opening_stream"`
	SkipClosingStream bool        `json:"skip_closing_stream"`
	// DualLoggingEnabled also writes the lines to lite-engine's own log; the
	// drop-in has no such log, and Slipway keeps every step's log anyway.
	DualLoggingEnabled bool `json:"dual_logging_enabled"`
}

// TIConfig is Harness Test Intelligence's service. Reports are parsed by
// Slipway's agent and summed up in the step's log instead (see docs/harness.md).
type TIConfig struct {
	URL          string `json:"url"`
	Token        string `json:"token"`
	AccountID    string `json:"account_id"`
	OrgID        string `json:"org_id"`
	ProjectID    string `json:"project_id"`
	PipelineID   string `json:"pipeline_id"`
	StageID      string `json:"stage_id"`
	BuildID      string `json:"build_id"`
	Repo         string `json:"repo"`
	Sha          string `json:"sha"`
	SourceBranch string `json:"source_branch"`
	TargetBranch string `json:"target_branch"`
	CommitBranch string `json:"commit_branch"`
	CommitLink   string `json:"commit_link"`
}

// MtlsConfig is the client certificate for the log service.
type MtlsConfig struct {
	ClientCert        string      `json:"client_cert"` // base64 PEM
	ClientCertKey     string      `json:"client_cert_key"`
	ClientCertDirPath Unsupported `json:"client_cert_dir_path"`
}

// SetupResponse answers POST /setup.
type SetupResponse struct {
	IPAddress             string       `json:"ip_address"`
	InstanceID            string       `json:"instance_id"`
	GitspacesPortMappings map[int]int  `json:"gitspaces_port_mappings"`
	InstanceInfo          InstanceInfo `json:"instance_info"`
}

// StepRequest is the body of POST /step: the runner's ExecuteVMRequest.
type StepRequest struct {
	StageRuntimeID string `json:"stage_runtime_id"`
	// InstanceID, IPAddress and PoolID name the VM; the drop-in routes by
	// the stage, which holds exactly one VM.
	InstanceID    string       `json:"instance_id"`
	IPAddress     string       `json:"ip_address"`
	PoolID        string       `json:"pool_id"`
	CorrelationID string       `json:"correlation_id"`
	TaskID        string       `json:"task_id"`
	InfraType     string       `json:"infra_type"`
	Distributed   bool         `json:"distributed"`
	Step          StartStep    `json:"start_step_request"`
	InstanceInfo  InstanceInfo `json:"instance_info"`
}

// StartStep is lite-engine's api.StartStepRequest.
type StartStep struct {
	ID             string            `json:"id"`
	StageRuntimeID string            `json:"stage_runtime_id"`
	Envs           map[string]string `json:"environment"`
	Name           string            `json:"name"`
	LogKey         string            `json:"log_key"`
	LogDrone       Unsupported       `json:"log_drone"`
	Secrets        []string          `json:"secrets"`
	WorkingDir     string            `json:"working_dir"`
	Kind           string            `json:"kind"` // "" or Run, RunTest; RunTestsV2 is refused
	Run            RunConfig         `json:"run"`
	RunTest        RunTestConfig     `json:"run_test"`
	LogConfig      LogConfig         `json:"log_config"`
	TIConfig       TIConfig          `json:"ti_config"`
	MtlsConfig     MtlsConfig        `json:"mtls_config"`
	OutputVars     []string          `json:"output_vars"`
	Outputs        []OutputV2        `json:"outputs"`
	TestReport     TestReport        `json:"test_report"`
	Timeout        int64             `json:"timeout"` // seconds
	// MountDockerSocket: host steps reach the VM's docker anyway; a
	// container step cannot be given the socket.
	MountDockerSocket *bool `json:"mount_docker_socket"`
	// DeleteTempStepFiles: Slipway removes its step files with the stage.
	DeleteTempStepFiles bool `json:"delete_temp_step_files"`
	// ProcessConfig tunes how lite-engine ends a step's processes; Slipway
	// always ends the whole process tree (see docs/harness.md).
	ProcessConfig ProcessConfig `json:"process_config"`

	Image      string        `json:"image"`
	Pull       string        `json:"pull"`
	User       string        `json:"user"`
	MemLimit   int64         `json:"mem_limit"`
	Network    string        `json:"network"`
	Volumes    []VolumeMount `json:"volumes"`
	Privileged bool          `json:"privileged"`
	// Auth is the registry login for Image.
	Auth ImageAuth `json:"auth"`
	// Detach runs the step in the background for the rest of the stage: a
	// Background step, or a service dependency the initialize task starts.
	Detach bool `json:"detach"`
	// PortBindings map a host port to a container port ("8080": "80").
	PortBindings map[string]string `json:"port_bindings"`

	EgressPolicy       Unsupported `json:"egress_policy"`
	RunTestsV2         Unsupported `json:"run_test_v2"`
	SoftStop           Unsupported `json:"soft_stop"`
	AnnotationsConfig  Unsupported `json:"annotations_config"`
	OutputVarFile      Unsupported `json:"output_var_file"`
	SecretVarFile      Unsupported `json:"secret_var_file"`
	ScratchDir         Unsupported `json:"scratch_dir"`
	CPUPeriod          Unsupported `json:"cpu_period"`
	CPUQuota           Unsupported `json:"cpu_quota"`
	CPUShares          Unsupported `json:"cpu_shares"`
	CPUSet             Unsupported `json:"cpu_set"`
	Devices            Unsupported `json:"devices"`
	DNS                Unsupported `json:"dns"`
	DNSSearch          Unsupported `json:"dns_search"`
	ExtraHosts         Unsupported `json:"extra_hosts"`
	IgnoreStdout       Unsupported `json:"ignore_stderr"` // sic: upstream swaps the two tags
	IgnoreStderr       Unsupported `json:"ignore_stdout"`
	Labels             Unsupported `json:"labels"`
	MemSwapLimit       Unsupported `json:"memswap_limit"`
	Networks           Unsupported `json:"networks"`
	NetworkAliases     Unsupported `json:"network_aliases"`
	ShmSize            Unsupported `json:"shm_size"`
	Files              Unsupported `json:"files"`
	StepStatus         Unsupported `json:"step_status"`
	WorkloadIdentities Unsupported `json:"workload_identities"`
	WITokenGenerateURL Unsupported `json:"wi_token_generate_url"`
}

// RunConfig is what a Run step executes: entrypoint then commands, as argv.
type RunConfig struct {
	Commands   []string    `json:"commands"`
	Entrypoint []string    `json:"entrypoint"`
	Binary     Unsupported `json:"binary"`
}

// RunTestConfig is a Run Tests step (kind RunTest): the build tool runs the
// tests, between the pre and post commands.
type RunTestConfig struct {
	Args                 string   `json:"args"`
	Entrypoint           []string `json:"entrypoint"`
	PreCommand           string   `json:"pre_command"`
	PostCommand          string   `json:"post_command"`
	BuildTool            string   `json:"build_tool"`
	Language             string   `json:"language"`
	Packages             string   `json:"packages"`
	Namespaces           string   `json:"namespaces"`
	RunOnlySelectedTests bool     `json:"run_only_selected_tests"`
	TestAnnotations      string   `json:"test_annotations"`
	BuildEnvironment     string   `json:"build_environment"`
	FrameworkVersion     string   `json:"framework_version"`
	TestSplitStrategy    string   `json:"test_split_strategy"`
	ParallelizeTests     bool     `json:"parallelize_tests"`
	TestGlobs            string   `json:"test_globs"`
}

// ImageAuth is a registry login.
type ImageAuth struct {
	Address  string `json:"address"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// OutputV2 declares an output (in a request: Key is its name, Value the
// shell variable it is read from) or carries one back (Value its value).
type OutputV2 struct {
	Key   string `json:"key,omitempty"`
	Value string `json:"value"`
	Type  string `json:"type,omitempty"` // STRING or SECRET
}

// Output types, as the CI manager names them.
const (
	OutputString = "STRING"
	OutputSecret = "SECRET"
)

// TestReport names the JUnit files of a step.
type TestReport struct {
	Kind  string `json:"kind"` // "" or Junit
	Junit struct {
		Paths []string `json:"paths"`
	} `json:"junit"`
}

// ProcessConfig is lite-engine's spec.ProcessConfig.
type ProcessConfig struct {
	WaitOnProcessGroup                 bool `json:"wait_on_process_group"`
	KillProcessOnContextCancel         bool `json:"kill_process_on_context_cancel"`
	KillProcessMaxSigtermAttempts      int  `json:"kill_process_max_sigterm_attempts"`
	KillProcessRetryIntervalSecs       int  `json:"kill_process_retry_interval_secs"`
	KillProcessUseExplicitTreeStrategy bool `json:"kill_process_use_explicit_tree_strategy"`
}

// PollStepResponse answers POST /step: lite-engine's api.PollStepResponse.
type PollStepResponse struct {
	Exited    bool              `json:"exited,omitempty"`
	ExitCode  int               `json:"exit_code,omitempty"`
	Error     string            `json:"error,omitempty"`
	OOMKilled bool              `json:"oom_killed,omitempty"`
	Outputs   map[string]string `json:"outputs,omitempty"`
	OutputV2  []OutputV2        `json:"outputV2,omitempty"`
}

// DestroyRequest is the body of POST /destroy, in the legacy shape the
// runner's handler decodes.
type DestroyRequest struct {
	ID                 string       `json:"id"` // the stage runtime id
	InstanceID         string       `json:"instance_id"`
	PoolID             string       `json:"pool_id"`
	CorrelationID      string       `json:"correlation_id"`
	InstanceInfo       InstanceInfo `json:"instance_info"`
	InfraType          string       `json:"infra_type"`
	StorageCleanupType Unsupported  `json:"storage_cleanup_type"`
}
