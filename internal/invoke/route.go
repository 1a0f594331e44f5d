package invoke

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/state"
)

// invokeMargin is added to a function's timeout to bound the whole
// invocation: the agent enforces the timeout itself; the margin covers a
// cold start (fetching and unpacking the bundle, starting the runtime)
// and the round trips.
const invokeMargin = 30 * time.Second

// agentInvokePath is the agents' invoke endpoint.
const agentInvokePath = "/v1/agent/functions/invoke"

// errUnreachable marks an agent that could not be dialled: the request
// never reached it, so another agent may be tried safely.
var errUnreachable = errors.New("invoke: agent unreachable")

// Invoke runs one invocation synchronously and returns the agent's
// result: a function that failed is a result with FunctionError set, not
// an error. Errors: state.ErrNotFound (function or version),
// httpapi.ErrTooManyRequests (concurrency used up), [ErrNoAgent],
// [ErrAgent], or the context's error.
func (v *Invoker) Invoke(ctx context.Context, req *Request) (*api.SandboxResult, error) {
	fn, err := v.cfg.Catalog.Function(req.Cluster, req.Function)
	if err != nil {
		return nil, err
	}
	fv := fn.Version(req.Version)
	if fv == nil {
		return nil, fmt.Errorf("%w: function %s of cluster %s has no version %d", state.ErrNotFound, fn.Name, fn.Cluster, req.Version)
	}
	if req.RequestID == "" {
		req.RequestID = v.newRequestID()
	}
	return v.invoke(ctx, fn, fv, req)
}

// invoke runs an invocation of a resolved function version under the
// function's concurrency limit; req.RequestID is set.
func (v *Invoker) invoke(ctx context.Context, fn *api.Function, fv *api.FunctionVersion, req *Request) (*api.SandboxResult, error) {
	st := v.state(fn.Cluster, fn.Name)
	conf := fv.Config.Resolved()
	if !st.acquire(conf.Concurrency) {
		v.metrics.throttles.WithLabelValues(st.label).Inc()
		return nil, fmt.Errorf("%w: function %s of cluster %s already runs %d invocations routed by this server, its concurrency limit",
			httpapi.ErrTooManyRequests, fn.Name, fn.Cluster, conf.Concurrency)
	}
	defer st.release()
	ctx, cancel := context.WithTimeout(ctx, conf.Timeout.D()+invokeMargin)
	defer cancel()

	start := v.now()
	meta, err := st.encodeInvocation(fn, fv, req)
	if err != nil {
		return nil, err
	}
	res, cold, err := v.route(ctx, st, fn.Cluster, fv.Version, conf.Concurrency, meta, req.Payload)
	if err != nil {
		return nil, err
	}
	kind := "warm"
	if cold {
		kind = "cold"
		v.metrics.coldStarts.WithLabelValues(st.label).Inc()
	} else {
		v.metrics.warmHits.WithLabelValues(st.label).Inc()
	}
	v.metrics.seconds.WithLabelValues(kind).Observe(v.now().Sub(start).Seconds())
	return res, nil
}

// candidate is an agent that declined a probe, with its load.
type candidate struct {
	agent Agent
	load  int
}

// route probes agents for a warm sandbox and falls back to a cold start
// (see the package comment). meta is the invocation's encoded JSON
// document, without Start; cold reports whether the result came from a
// sandbox started for it. Each agent is sent its share of the function's
// concurrency limit (see shareOut); when every agent runs its share
// already, the invocation is throttled (httpapi.ErrTooManyRequests).
func (v *Invoker) route(ctx context.Context, st *fnState, cluster string, version, limit int, meta, payload []byte) (res *api.SandboxResult, cold bool, err error) {
	agents, shares := shareOut(v.cfg.Catalog.Agents(cluster), limit, st.label)
	if len(agents) == 0 {
		return nil, false, fmt.Errorf("%w: cluster %s has no ready node", ErrNoAgent, cluster)
	}
	atShare := 0
	throttled := func() error {
		v.metrics.throttles.WithLabelValues(st.label).Inc()
		return fmt.Errorf("%w: function %s runs %d invocations on the agents of cluster %s, its concurrency limit",
			httpapi.ErrTooManyRequests, st.label, limit, cluster)
	}
	order, first := v.probeOrder(agents, st.hint(version))

	probes := 0
	defer func() { v.metrics.probes.Observe(float64(probes)) }()
	var declined []candidate
	tried := 0
	for i := range order {
		if probes >= v.cfg.MaxProbes {
			break
		}
		if i >= first {
			v.shuffle(order, i, i+1) // a random one of the agents left
		}
		a := order[i]
		tried++
		r, err := v.call(ctx, a, meta, payload, false, shares[a.Node])
		if errors.Is(err, errUnreachable) {
			v.metrics.unreachable.Inc()
			v.log.Warn("function agent unreachable", "node", a.Node, "addr", a.Addr, "err", err)
			continue
		}
		probes++
		if errors.Is(err, errAgentRefused) {
			continue // busy or draining: it ran nothing, and is no cold start candidate
		}
		if err != nil {
			return nil, false, err
		}
		if !r.Declined {
			st.setHint(version, a.Addr)
			return r, r.Cold, nil
		}
		if r.AtShare {
			atShare++ // not a cold start candidate either
			continue
		}
		declined = append(declined, candidate{a, r.Load})
	}

	// Cold start: the least loaded of the agents that declined (ties in
	// random order: they were probed in random order and the sort is
	// stable), then the agents not probed yet, in random order.
	slices.SortStableFunc(declined, func(a, b candidate) int { return a.load - b.load })
	next := make([]Agent, 0, len(order))
	for _, c := range declined {
		next = append(next, c.agent)
	}
	v.shuffle(order, tried, len(order))
	next = append(next, order[tried:]...)
	var last error
	for _, a := range next {
		r, err := v.call(ctx, a, meta, payload, true, shares[a.Node])
		switch {
		case errors.Is(err, errUnreachable):
			v.metrics.unreachable.Inc()
			v.log.Warn("function agent unreachable", "node", a.Node, "addr", a.Addr, "err", err)
			last = err
			continue
		case errors.Is(err, errAgentRefused):
			// The agent could not start a sandbox (no room): the
			// function did not run, try another.
			last = err
			continue
		case err != nil:
			return nil, false, err
		case r.Declined && r.AtShare:
			atShare++
			last = fmt.Errorf("agent %s runs its share of the function's concurrency limit", a.Node)
			continue
		case r.Declined:
			last = fmt.Errorf("agent %s declined even a cold start", a.Node)
			continue
		}
		st.setHint(version, a.Addr)
		return r, r.Cold, nil
	}
	if atShare == len(agents) {
		return nil, false, throttled()
	}
	return nil, false, fmt.Errorf("%w: no agent of cluster %s could run it (%d tried; last: %v)", ErrNoAgent, cluster, len(next), last)
}

// shareOut divides a function's concurrency limit over the agents of its
// cluster, as Spread divides provisioned sandboxes: every server computes
// the same shares from the same ready agents, so that the agents, each
// refusing more than its share at once, hold the whole cluster to the
// limit without the servers talking to each other. Agents whose share is
// zero (more agents than the limit) are left out. key is the function.
func shareOut(agents []Agent, limit int, key string) ([]Agent, map[string]int) {
	agents = slices.Clone(agents)
	slices.SortFunc(agents, func(a, b Agent) int { return strings.Compare(a.Node, b.Node) })
	names := make([]string, len(agents))
	for i, a := range agents {
		names[i] = a.Node
	}
	shares := Spread(limit, names, key)
	return slices.DeleteFunc(agents, func(a Agent) bool { return shares[a.Node] == 0 }), shares
}

// Spread divides n over nodes as evenly as possible: each node gets
// n/len(nodes), and the remainder goes one each to the nodes following
// an offset drawn from key (the function), so that the remainders of a
// cluster's functions do not all land on its first nodes. The result
// depends only on its arguments; nodes must be sorted. Nodes that get
// none are left out.
func Spread(n int, nodes []string, key string) map[string]int {
	out := map[string]int{}
	if n <= 0 || len(nodes) == 0 {
		return out
	}
	base, rem := n/len(nodes), n%len(nodes)
	h := fnv.New32a()
	h.Write([]byte(key))
	off := int(h.Sum32() % uint32(len(nodes)))
	for i, node := range nodes {
		c := base
		if (i-off+len(nodes))%len(nodes) < rem {
			c++
		}
		if c > 0 {
			out[node] = c
		}
	}
	return out
}

// probeOrder returns the agents in probe order: the hinted one first when
// it is still a ready agent (first is then 1), then the others, which the
// caller shuffles as it goes (a lazy Fisher-Yates shuffle: only the
// agents actually asked cost a random number).
func (v *Invoker) probeOrder(agents []Agent, hint string) (order []Agent, first int) {
	order = slices.Clone(agents)
	if hint != "" {
		if i := slices.IndexFunc(order, func(a Agent) bool { return a.Addr == hint }); i >= 0 {
			order[0], order[i] = order[i], order[0]
			first = 1
		}
	}
	return order, first
}

// shuffle puts a uniformly random choice of order[from:] into
// order[from:to] (a partial Fisher-Yates shuffle).
func (v *Invoker) shuffle(order []Agent, from, to int) {
	n := len(order)
	for i := from; i < to && i < n-1; i++ {
		j := i + int(v.rand()%uint64(n-i))
		order[i], order[j] = order[j], order[i]
	}
}

// errAgentRefused: the agent answered 503 (or 429): it did not run the
// function and another agent may.
var errAgentRefused = errors.New("invoke: agent cannot run the function now")

// call sends one invocation to an agent: a framed body of meta (the
// invocation's JSON document, without Start and Share, which call adds)
// and the payload. It returns the agent's result for 200 and 409
// (declined); errUnreachable when the agent could not be dialled;
// errAgentRefused for 503, 429 and a 409 that is no result (the node is
// not in the function's cluster yet); ErrAgent for anything else.
func (v *Invoker) call(ctx context.Context, a Agent, meta, payload []byte, start bool, share int) (*api.SandboxResult, error) {
	url := v.scheme + "://" + a.Addr + agentInvokePath
	// The document is encoded once per invocation; the fields that
	// differ between calls are spliced in before its closing brace.
	m := make([]byte, 0, len(meta)+32)
	m = strconv.AppendInt(append(append(m, meta[:len(meta)-1]...), `,"share":`...), int64(share), 10)
	if start {
		m = append(m, `,"start":true`...)
	}
	meta = append(m, '}')
	// net.Buffers, not io.MultiReader: the latter's WriteTo allocates
	// 32 KiB at each request when the transport drains the body.
	body := func() io.Reader { return &net.Buffers{meta, payload} }
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, body())
	if err != nil {
		return nil, err
	}
	req.ContentLength = int64(len(meta) + len(payload))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(body()), nil }
	req.Header["Content-Type"] = framedContentType
	req.Header[api.HeaderMetaLength] = []string{strconv.Itoa(len(meta))}
	resp, err := v.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			// The invocation's bound passed (or its caller gave up):
			// whether the function ran is unknown.
			return nil, fmt.Errorf("%w: %s: %w", ErrAgent, a.Node, context.Cause(ctx))
		}
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, fmt.Errorf("%w: %s (%s): %v", errUnreachable, a.Node, a.Addr, err)
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrAgent, a.Node, err)
	}
	defer resp.Body.Close()
	if (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusConflict) && api.IsFramed(resp.Header) {
		var r api.SandboxResult
		p, err := api.ReadFramed(resp.Header, resp.Body, api.MaxInvokePayload, &r)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: bad answer: %v", ErrAgent, a.Node, err)
		}
		r.Payload = p
		if resp.StatusCode == http.StatusConflict && !r.Declined {
			return nil, fmt.Errorf("%w: %s: a 409 that declines nothing", ErrAgent, a.Node)
		}
		return &r, nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var e api.ErrorBody
	if json.Unmarshal(msg, &e) == nil && e.Error.Message != "" {
		msg = []byte(e.Error.Message)
	}
	switch resp.StatusCode {
	case http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusConflict:
		// Not run: busy, draining, or (409 without a result) not yet
		// in the function's cluster, as just after it joined; another
		// agent may run it.
		return nil, fmt.Errorf("%w: %s: %s", errAgentRefused, a.Node, strings.TrimSpace(string(msg)))
	}
	return nil, fmt.Errorf("%w: %s answered %s: %s", ErrAgent, a.Node, resp.Status, strings.TrimSpace(string(msg)))
}

var (
	framedContentType = []string{api.ContentTypeFramed}
	jsonContentType   = []string{"application/json"}
)

// encodeInvocation encodes the JSON document of one invocation (the
// SandboxInvocation without its payload, which follows it raw), as
// json.Marshal would but with the version's encoding cached (a version
// is immutable): it is encoded once per invocation, whatever the number
// of probes.
func (s *fnState) encodeInvocation(fn *api.Function, fv *api.FunctionVersion, req *Request) ([]byte, error) {
	ver, err := s.versionJSON(fv)
	if err != nil {
		return nil, err
	}
	rid, _ := json.Marshal(req.RequestID)
	name, _ := json.Marshal(fn.Name)
	cluster, _ := json.Marshal(fn.Cluster)
	var cc []byte
	if req.ClientContext != "" {
		cc, _ = json.Marshal(req.ClientContext)
	}
	n := 100 + len(rid) + len(name) + len(cluster) + len(ver) + len(cc)
	b := make([]byte, 0, n)
	b = append(b, `{"request_id":`...)
	b = append(b, rid...)
	b = append(b, `,"function":`...)
	b = append(b, name...)
	b = append(b, `,"cluster":`...)
	b = append(b, cluster...)
	b = append(b, `,"version":`...)
	b = append(b, ver...)
	if req.Tail {
		b = append(b, `,"tail":true`...)
	}
	if cc != nil {
		b = append(b, `,"client_context":`...)
		b = append(b, cc...)
	}
	return append(b, '}'), nil
}

// versionJSON returns the cached encoding of fv. The cache holds the last
// version encoded and is keyed by the version's pointer and identity, so
// that a function deleted and created again never reuses a stale one.
func (s *fnState) versionJSON(fv *api.FunctionVersion) ([]byte, error) {
	s.mu.Lock()
	c := s.verCache
	s.mu.Unlock()
	if c != nil && (c.fv == fv || (c.version == fv.Version && c.sha == fv.SHA256 && c.created.Equal(fv.Created) && c.bundle == fv.Bundle)) {
		return c.json, nil
	}
	b, err := json.Marshal(fv)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.verCache = &versionCache{fv: fv, version: fv.Version, sha: fv.SHA256, bundle: fv.Bundle, created: fv.Created, json: b}
	s.mu.Unlock()
	return b, nil
}

// versionCache is one encoded FunctionVersion.
type versionCache struct {
	fv          *api.FunctionVersion
	version     int
	sha, bundle string
	created     time.Time
	json        []byte
}
