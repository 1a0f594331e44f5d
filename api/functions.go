package api

import (
	"archive/zip"
	"regexp"
	"strconv"
	"time"
)

// Functions: code bundles invoked on demand in warm, reused sandboxes of a
// cluster (see docs/internals.md, "Functions"). A function's configuration
// and its versions live in the Raft state; invocations do not go through
// Raft.

// Function limits, as in AWS Lambda where Lambda has one.
const (
	MaxFunctionNameLen       = 64
	MinFunctionMemoryMiB     = 128
	MaxFunctionMemoryMiB     = 10240
	DefaultFunctionMemoryMiB = 128
	DefaultFunctionTimeout   = 3 * time.Second
	MaxFunctionTimeout       = 900 * time.Second
	// DefaultFunctionConcurrency caps a function's simultaneous
	// invocations when its configuration sets no limit.
	DefaultFunctionConcurrency = 100
	MaxFunctionConcurrency     = 10000
	// MaxProvisioned caps --provisioned N.
	MaxProvisioned = 1000
	// DefaultAsyncRetries is how many times an Event invocation is retried
	// after a function error or timeout before it goes to the dead-letter
	// queue; MaxAsyncRetries caps the setting (Lambda's limits).
	DefaultAsyncRetries = 2
	MaxAsyncRetries     = 2
	// MaxInvokePayload is the largest request or response payload.
	MaxInvokePayload = 6 << 20
	// MaxBundleBytes is the largest bundle (zip) a deploy accepts;
	// MaxBundleUnpackedBytes and MaxBundleFiles bound what it unpacks to
	// on every node of the cluster (Lambda's 250 MB).
	MaxBundleBytes         = 50 << 20
	MaxBundleUnpackedBytes = 250 << 20
	MaxBundleFiles         = 20000
	// MaxFunctionEnvBytes caps the total size of a function's environment.
	MaxFunctionEnvBytes = 4096
	// LogTailBytes is how much of an invocation's log X-Amz-Log-Result
	// carries.
	LogTailBytes = 4096
	// ProvisionedAuto is the value of FunctionConfig.Provisioned that
	// sizes the ready set from the function's recent concurrency.
	ProvisionedAuto = "auto"
	// BundleBootstrap is the executable a bundle must hold at its root.
	BundleBootstrap = "bootstrap"
)

// FunctionConfig is a function's settings. Zero values mean the defaults
// above; Resolved fills them in.
type FunctionConfig struct {
	// Handler is passed to the runtime as _HANDLER; the bundle's bootstrap
	// decides what it means.
	Handler   string   `json:"handler,omitempty"`
	MemoryMiB int      `json:"memory_mib,omitempty"`
	Timeout   Duration `json:"timeout,omitempty"`
	// Concurrency caps the function's simultaneous invocations.
	Concurrency int `json:"concurrency,omitempty"`
	// Provisioned is "" or "0" (none), a count of sandboxes kept
	// initialised at all times, or "auto" (sized from recent concurrency).
	Provisioned string            `json:"provisioned,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	// Retries is how many times an Event invocation is retried; nil means
	// DefaultAsyncRetries.
	Retries *int `json:"retries,omitempty"`
}

// Resolved returns c with every default filled in.
func (c FunctionConfig) Resolved() FunctionConfig {
	if c.MemoryMiB == 0 {
		c.MemoryMiB = DefaultFunctionMemoryMiB
	}
	if c.Timeout == 0 {
		c.Timeout = Duration(DefaultFunctionTimeout)
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultFunctionConcurrency
	}
	if c.Provisioned == "" {
		c.Provisioned = "0"
	}
	if c.Retries == nil {
		r := DefaultAsyncRetries
		c.Retries = &r
	}
	return c
}

// ProvisionedCount returns the fixed number of provisioned sandboxes and
// whether the count is automatic instead.
func (c FunctionConfig) ProvisionedCount() (n int, auto bool) {
	if c.Provisioned == ProvisionedAuto {
		return 0, true
	}
	n, _ = strconv.Atoi(c.Provisioned)
	return n, false
}

var functionName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// ValidateFunctionName checks a function name: 1 to 64 letters, digits,
// '-' or '_', as Lambda allows.
func ValidateFunctionName(field, s string) error {
	switch {
	case s == "":
		return invalid(field, "must not be empty")
	case len(s) > MaxFunctionNameLen:
		return invalid(field, "%q is %d characters long; at most %d are allowed", s, len(s), MaxFunctionNameLen)
	case !functionName.MatchString(s):
		return invalid(field, "%q may contain only letters, digits, '-' and '_'", s)
	}
	return nil
}

// Validate checks c, naming the first problem.
func (c FunctionConfig) Validate() error {
	if c.MemoryMiB != 0 && (c.MemoryMiB < MinFunctionMemoryMiB || c.MemoryMiB > MaxFunctionMemoryMiB) {
		return invalid("memory_mib", "%d MiB is out of range: it must be between %d and %d", c.MemoryMiB, MinFunctionMemoryMiB, MaxFunctionMemoryMiB)
	}
	if t := c.Timeout.D(); t != 0 && (t < time.Second || t > MaxFunctionTimeout || t%time.Second != 0) {
		return invalid("timeout", "%s is out of range: it must be a whole number of seconds between 1s and %s", t, MaxFunctionTimeout)
	}
	if c.Concurrency < 0 || c.Concurrency > MaxFunctionConcurrency {
		return invalid("concurrency", "%d is out of range: it must be between 1 and %d (0: the default, %d)", c.Concurrency, MaxFunctionConcurrency, DefaultFunctionConcurrency)
	}
	if c.Provisioned != "" && c.Provisioned != ProvisionedAuto {
		n, err := strconv.Atoi(c.Provisioned)
		if err != nil || n < 0 || n > MaxProvisioned {
			return invalid("provisioned", "%q must be a count between 0 and %d, or %q", c.Provisioned, MaxProvisioned, ProvisionedAuto)
		}
	}
	if c.Retries != nil && (*c.Retries < 0 || *c.Retries > MaxAsyncRetries) {
		return invalid("retries", "%d is out of range: it must be between 0 and %d", *c.Retries, MaxAsyncRetries)
	}
	size := 0
	for k, v := range c.Env {
		if !envName.MatchString(k) {
			return invalid("env", "%q is not a valid variable name", k)
		}
		if reservedFunctionEnv(k) {
			return invalid("env", "%s is set by Shoal for every function and may not be set", k)
		}
		size += len(k) + len(v)
	}
	if size > MaxFunctionEnvBytes {
		return invalid("env", "the variables take %d bytes; at most %d are allowed", size, MaxFunctionEnvBytes)
	}
	return nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// reservedFunctionEnv reports whether the runtime sets the variable k.
func reservedFunctionEnv(k string) bool {
	switch k {
	case "AWS_LAMBDA_RUNTIME_API", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
		"AWS_LAMBDA_FUNCTION_VERSION", "_HANDLER", "LAMBDA_TASK_ROOT", "AWS_REGION", "AWS_DEFAULT_REGION",
		"AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY":
		return true
	}
	return false
}

// FunctionDeploy is the body of PUT
// /v1/clusters/{cluster}/functions/{name}: a new version of the function,
// made from Zip (a zip bundle holding an executable "bootstrap" at its
// root) or, when Zip is empty on an update, from the latest version's
// bundle with the new configuration.
type FunctionDeploy struct {
	Cluster string `json:"cluster"`
	// Zip is the bundle; JSON carries it in base64.
	Zip    []byte         `json:"zip,omitempty"`
	Config FunctionConfig `json:"config"`
	// Update requires the function to exist already (shoal fn update);
	// otherwise a deploy creates it or adds a version.
	Update bool `json:"update,omitempty"`
	// KeepConfig, on an update, starts from the latest version's
	// configuration and changes only the fields Config sets.
	KeepConfig bool `json:"keep_config,omitempty"`
}

// FunctionVersion is one immutable version of a function.
type FunctionVersion struct {
	Version int `json:"version"`
	// Bundle is the DFS path of the version's zip, under the cluster's
	// root; SHA256 is its hex digest and Size its length.
	Bundle  string         `json:"bundle"`
	SHA256  string         `json:"sha256"`
	Size    int64          `json:"size"`
	Config  FunctionConfig `json:"config"` // resolved
	Created time.Time      `json:"created"`
}

// Function is a function and its versions (oldest first).
type Function struct {
	Name        string             `json:"name"`
	Cluster     string             `json:"cluster"`
	Latest      int                `json:"latest"`
	Versions    []*FunctionVersion `json:"versions"`
	Created     time.Time          `json:"created"`
	Updated     time.Time          `json:"updated"`
	CreateIndex uint64             `json:"create_index"`
	ModifyIndex uint64             `json:"modify_index"`
}

// Version returns version v of f, or the latest when v is 0; nil when f
// has no such version.
func (f *Function) Version(v int) *FunctionVersion {
	if v == 0 {
		v = f.Latest
	}
	for _, fv := range f.Versions {
		if fv.Version == v {
			return fv
		}
	}
	return nil
}

// FunctionStatus is GET /v1/clusters/{cluster}/functions/{name}/status:
// the function with what its cluster's agents report of its sandboxes and
// invocations.
type FunctionStatus struct {
	Function *Function `json:"function"`
	// ProvisionedTarget is the number of sandboxes kept ready now (the
	// fixed count, or the forecast of "auto").
	ProvisionedTarget int            `json:"provisioned_target"`
	Sandboxes         []*SandboxInfo `json:"sandboxes"`
	// Invocations served, and how many found a warm sandbox; WarmHitRate
	// is their ratio (0 when there were none).
	Invocations uint64  `json:"invocations"`
	WarmHits    uint64  `json:"warm_hits"`
	ColdStarts  uint64  `json:"cold_starts"`
	WarmHitRate float64 `json:"warm_hit_rate"`
	// DeadLetters is the number of Event invocations in the dead-letter
	// queue; Queued the number waiting to run.
	DeadLetters uint64 `json:"dead_letters"`
	Queued      uint64 `json:"queued"`
	// Unreachable lists the cluster's ready nodes whose agents did not
	// answer in time: their sandboxes and counts are missing above.
	Unreachable []string `json:"unreachable,omitempty"`
}

// Sandbox states.
const (
	SandboxStarting = "starting" // bootstrap started, not yet waiting on /next
	SandboxIdle     = "idle"     // waiting on /next
	SandboxBusy     = "busy"     // running an invocation
)

// SandboxInfo describes one function sandbox on a node.
type SandboxInfo struct {
	ID          string    `json:"id"`
	Node        string    `json:"node"`
	Function    string    `json:"function"`
	Cluster     string    `json:"cluster"`
	Version     int       `json:"version"`
	State       string    `json:"state"`
	Provisioned bool      `json:"provisioned"`
	Started     time.Time `json:"started"`
	LastUsed    time.Time `json:"last_used,omitzero"`
	Invocations uint64    `json:"invocations"`
	Addr        string    `json:"addr,omitempty"` // its address on the cluster network
}

// Invocation types (X-Amz-Invocation-Type).
const (
	InvokeRequestResponse = "RequestResponse"
	InvokeEvent           = "Event"
	InvokeDryRun          = "DryRun"
)

// FunctionResult is what shoal fn invoke prints with -o json.
type FunctionResult struct {
	RequestID     string `json:"request_id"`
	StatusCode    int    `json:"status_code"`
	FunctionError string `json:"function_error,omitempty"`
	Version       string `json:"executed_version,omitempty"`
	Payload       []byte `json:"-"`
	LogTail       string `json:"log_tail,omitempty"`
}

// FunctionLogRecord is one invocation's log, as shoal fn logs shows it.
type FunctionLogRecord struct {
	RequestID string    `json:"request_id"`
	Function  string    `json:"function"`
	Version   int       `json:"version"`
	Node      string    `json:"node"`
	Sandbox   string    `json:"sandbox"`
	Start     time.Time `json:"start"`
	End       time.Time `json:"end,omitzero"`
	// Outcome is "ok", "error", "timeout", "oom" or "crash".
	Outcome string `json:"outcome,omitempty"`
	Log     string `json:"log"`
}

// DeadLetter is an Event invocation that failed every attempt.
type DeadLetter struct {
	ID       string `json:"id"` // the invocation's request id
	Function string `json:"function"`
	Cluster  string `json:"cluster"`
	Version  int    `json:"version"` // 0: the latest at each attempt
	Payload  []byte `json:"payload,omitempty"`
	// ErrorType and ErrorMessage are the last attempt's error.
	ErrorType    string    `json:"error_type"`
	ErrorMessage string    `json:"error_message"`
	Attempts     int       `json:"attempts"`
	Enqueued     time.Time `json:"enqueued"`
	Failed       time.Time `json:"failed"`
}

// Redrive is the body of POST
// /v1/clusters/{cluster}/functions/{name}/dlq/redrive: the dead
// letters to submit again (all of them when IDs is empty).
type Redrive struct {
	IDs []string `json:"ids,omitempty"`
}

// RedriveResult lists the dead letters submitted again.
type RedriveResult struct {
	Redriven []string `json:"redriven"`
}

// The servers and the agents of a function's cluster speak the following
// over the agents' HTTP port (mutual TLS; only servers may call them).

// SandboxInvocation is the body of POST /v1/agent/functions/invoke: one
// invocation for the agent to run in a warm sandbox of the version. It
// travels as a framed body (see WriteFramed), the payload raw after it.
type SandboxInvocation struct {
	RequestID string           `json:"request_id"`
	Function  string           `json:"function"`
	Cluster   string           `json:"cluster"`
	Version   *FunctionVersion `json:"version"`
	Payload   []byte           `json:"-"` // the frame's payload
	// Start lets the agent start a sandbox when none of the version is
	// idle (a cold start). Without it the agent declines at once (409
	// with Declined set) and the server probes another agent.
	Start bool `json:"start,omitempty"`
	// Tail asks for the last LogTailBytes of the invocation's log.
	Tail bool `json:"tail,omitempty"`
	// ClientContext is the JSON document a synchronous caller passed in
	// X-Amz-Client-Context (decoded), handed to the runtime in the
	// Lambda-Runtime-Client-Context header of /next; empty: none.
	ClientContext string `json:"client_context,omitempty"`
	// Share, when set, is how many invocations of the function the agent
	// may run at once: its share of the function's concurrency limit.
	// At its share the agent declines (409 with Declined and AtShare).
	Share int `json:"share,omitempty"`
}

// SandboxResult is the agent's answer to a SandboxInvocation, a framed
// body like it.
type SandboxResult struct {
	// Declined: the agent had no idle sandbox of the version and was not
	// asked to start one, or (AtShare) it runs its share of the
	// function's concurrency limit already.
	Declined bool `json:"declined,omitempty"`
	AtShare  bool `json:"at_share,omitempty"`
	// Load is the number of busy function sandboxes on the agent, all
	// functions counted, for the servers' least-loaded choice.
	Load    int    `json:"load"`
	Node    string `json:"node"`
	Sandbox string `json:"sandbox,omitempty"`
	// Cold: a sandbox was started for this invocation.
	Cold bool `json:"cold,omitempty"`
	// Payload is the function's response, or, when FunctionError is set,
	// Lambda's {"errorMessage","errorType"} error document; the frame's
	// payload.
	Payload       []byte   `json:"-"`
	FunctionError string   `json:"function_error,omitempty"` // "" or "Unhandled"
	ErrorType     string   `json:"error_type,omitempty"`
	LogTail       []byte   `json:"log_tail,omitempty"`
	Duration      Duration `json:"duration"`
}

// ProvisionedSet is the body of PUT /v1/agent/functions/provisioned: the
// whole set of provisioned sandboxes the leader wants on the agent. The
// agent keeps Count sandboxes of each entry initialised, starting new
// ones when some end, and drops provisioned sandboxes of entries no
// longer listed (they become on-demand sandboxes, reclaimed when idle).
type ProvisionedSet struct {
	Functions []*ProvisionedFunction `json:"functions"`
}

// ProvisionedFunction is one entry of a ProvisionedSet.
type ProvisionedFunction struct {
	Function string           `json:"function"`
	Cluster  string           `json:"cluster"`
	Version  *FunctionVersion `json:"version"`
	Count    int              `json:"count"`
}

// SandboxReport is GET /v1/agent/functions: an agent's function
// sandboxes and counters.
type SandboxReport struct {
	Node      string              `json:"node"`
	Sandboxes []*SandboxInfo      `json:"sandboxes"`
	Functions []*FunctionCounters `json:"functions"`
}

// FunctionCounters are one agent's counts for one function since the
// agent started.
type FunctionCounters struct {
	Function    string `json:"function"`
	Cluster     string `json:"cluster"`
	Invocations uint64 `json:"invocations"`
	WarmHits    uint64 `json:"warm_hits"`
	ColdStarts  uint64 `json:"cold_starts"`
	Busy        int    `json:"busy"`
	// Peaks holds the largest number of the function's sandboxes busy at
	// once on the agent in each of the last ForecastSlots slots of
	// ForecastSlot, the current slot first. PeakSlot numbers the current
	// slot (Unix time / ForecastSlot), so that the servers add up the
	// agents' peaks of the same moments.
	Peaks    []int `json:"peaks"`
	PeakSlot int64 `json:"peak_slot"`
}

// "auto" provisioning looks at the last ForecastSlots slots of
// ForecastSlot each (10 minutes).
const (
	ForecastSlot  = 5 * time.Second
	ForecastSlots = 120
)

// CheckBundleSize checks what the entries of a bundle declare they unpack
// to (archive/zip refuses an entry longer than it declares).
func CheckBundleSize(files []*zip.File) error {
	if len(files) > MaxBundleFiles {
		return invalid("zip", "the bundle holds %d entries; at most %d are allowed", len(files), MaxBundleFiles)
	}
	var total uint64
	for _, f := range files {
		total += f.UncompressedSize64
		if total > MaxBundleUnpackedBytes {
			return invalid("zip", "the bundle unpacks to more than %d bytes, the most allowed", MaxBundleUnpackedBytes)
		}
	}
	return nil
}
