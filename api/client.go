package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Error codes carried in ErrorDetail.Code. They are stable.
const (
	CodeInvalid     = "invalid_argument"
	CodeNotFound    = "not_found"
	CodeConflict    = "conflict"
	CodeUnavailable = "unavailable"
	CodeTooLarge    = "too_large"
	CodeInternal    = "internal"
	CodeNoLeader    = "no_leader"
	CodeNoCapacity  = "insufficient_capacity"
	// CodeUnauthorized: no token, or a token no server knows (401).
	CodeUnauthorized = "unauthorized"
	// CodeForbidden: a known token that may not do this, such as a
	// cluster's token reaching outside its cluster (403).
	CodeForbidden = "forbidden"
	// CodeTooManyRequests: a limit such as a function's concurrency is
	// used up; try again later (429).
	CodeTooManyRequests = "too_many_requests"
)

// IndexHeader carries the state index a read reflects; pass it back as
// ?index= to block until something newer exists.
const IndexHeader = "X-Shoal-Index"

// Error is an error response from the server.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// IsNotFound reports whether err is a not_found response.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == CodeNotFound
}

// Client talks to one or more Shoal servers. It tries the servers in turn
// when one cannot be reached. It is safe for concurrent use.
type Client struct {
	HTTP  *http.Client
	Token string

	mu      sync.Mutex
	addrs   []string
	current int
}

// NewClient returns a client for the given server addresses ("host:port" or
// "http://host:port"). It needs at least one.
func NewClient(addrs []string, token string) *Client {
	return NewTLSClient(addrs, token, nil)
}

// NewTLSClient is [NewClient] for servers that serve TLS: with tlsConf
// not nil, an address without a scheme means https://host:port, and
// tlsConf says which servers to trust (and which certificate to present).
// An explicit http:// address stays plain HTTP.
func NewTLSClient(addrs []string, token string, tlsConf *tls.Config) *Client {
	c := &Client{
		Token: token,
		HTTP: &http.Client{Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:     tlsConf,
			TLSHandshakeTimeout: 5 * time.Second,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		}},
	}
	scheme := "http://"
	if tlsConf != nil {
		scheme = "https://"
	}
	for _, a := range addrs {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if !strings.Contains(a, "://") {
			a = scheme + a
		}
		c.addrs = append(c.addrs, strings.TrimRight(a, "/"))
	}
	return c
}

// Close releases the client's idle connections.
func (c *Client) Close() {
	c.HTTP.CloseIdleConnections()
}

// Addr returns the address currently in use.
func (c *Client) Addr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.addrs) == 0 {
		return ""
	}
	return c.addrs[c.current]
}

func (c *Client) rotate(from int) {
	c.mu.Lock()
	if c.current == from && len(c.addrs) > 0 {
		c.current = (c.current + 1) % len(c.addrs)
	}
	c.mu.Unlock()
}

// QueryOptions make a read block until the state index exceeds Index, for
// at most Wait.
type QueryOptions struct {
	Index uint64
	Wait  time.Duration
}

func (q *QueryOptions) values(v url.Values) url.Values {
	if q == nil {
		return v
	}
	if v == nil {
		v = url.Values{}
	}
	if q.Index > 0 {
		v.Set("index", strconv.FormatUint(q.Index, 10))
	}
	if q.Wait > 0 {
		v.Set("wait", q.Wait.String())
	}
	return v
}

// Do sends one request and decodes the JSON answer into out (when not nil).
// It returns the index header of the answer. Connection failures move on to
// the next server; an answer from a server is never retried.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, in, out any) (uint64, error) {
	resp, err := c.send(ctx, method, path, query, in)
	if err != nil {
		return 0, err
	}
	defer func() {
		// A body closed before its end closes its connection too: read
		// what is left (a JSON answer's final newline, or an answer
		// nobody asked to decode) so that the connection is reused.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()
	idx, _ := strconv.ParseUint(resp.Header.Get(IndexHeader), 10, 64)
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return idx, fmt.Errorf("decoding answer from %s %s: %w", method, path, err)
		}
	}
	return idx, nil
}

// send issues a request with in as its JSON body (none when in is nil)
// and returns a 2xx response, or an error.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, in any) (*http.Response, error) {
	if in == nil {
		return c.sendRaw(ctx, method, path, query, nil, nil, false)
	}
	body, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	return c.sendRaw(ctx, method, path, query, body, http.Header{"Content-Type": {"application/json"}}, false)
}

// sendRaw is [Client.send] for a body sent as it is (nil: none), with
// header added to the request.
//
// With once, the request goes to another server only when it could not
// be sent at all (the server could not be dialled): a request that may
// have been served (a function invocation) is not sent twice.
func (c *Client) sendRaw(ctx context.Context, method, path string, query url.Values, body []byte, header http.Header, once bool) (*http.Response, error) {
	c.mu.Lock()
	n := len(c.addrs)
	c.mu.Unlock()
	if n == 0 {
		return nil, errors.New("api: no server address configured")
	}
	var lastErr error
	for try := 0; try < n; try++ {
		c.mu.Lock()
		cur := c.current
		base := c.addrs[cur]
		c.mu.Unlock()
		u := base + path
		if len(query) > 0 {
			u += "?" + query.Encode()
		}
		req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		if c.Token != "" {
			req.Header.Set("Authorization", "Bearer "+c.Token)
		}
		resp, err := c.HTTP.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			lastErr = fmt.Errorf("cannot reach shoal server at %s: %w", base, err)
			if errors.As(err, new(x509.UnknownAuthorityError)) {
				lastErr = fmt.Errorf("%w (trust the installation's CA with --ca-cert or SHOAL_CACERT)", lastErr)
			}
			c.rotate(cur)
			if op := (*net.OpError)(nil); once && !(errors.As(err, &op) && op.Op == "dial") {
				return nil, lastErr
			}
			continue
		}
		if resp.StatusCode >= 300 {
			defer resp.Body.Close()
			return nil, decodeError(resp)
		}
		return resp, nil
	}
	return nil, lastErr
}

func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb ErrorBody
	if json.Unmarshal(b, &eb) == nil && eb.Error.Message != "" {
		return &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	msg := fmt.Sprintf("server answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	if resp.StatusCode == http.StatusBadRequest && strings.Contains(string(b), "HTTPS server") {
		// Go's TLS listeners answer a plain HTTP request so.
		msg += " (the server uses TLS: give an https:// address, or the installation's CA with --ca-cert or SHOAL_CACERT)"
	}
	return &Error{Status: resp.StatusCode, Code: CodeInternal, Message: msg}
}

// Stream sends a request and returns the body of a 2xx answer for the
// caller to read and close.
func (c *Client) Stream(ctx context.Context, method, path string, query url.Values) (io.ReadCloser, error) {
	resp, err := c.send(ctx, method, path, query, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

func esc(s string) string { return url.PathEscape(s) }

// --- status ---

// Leader returns the Raft address of the current leader.
func (c *Client) Leader(ctx context.Context) (string, error) {
	var s string
	_, err := c.Do(ctx, "GET", "/v1/status/leader", nil, nil, &s)
	return s, err
}

// Peers returns the Raft addresses of the voting servers.
func (c *Client) Peers(ctx context.Context) ([]string, error) {
	var s []string
	_, err := c.Do(ctx, "GET", "/v1/status/peers", nil, nil, &s)
	return s, err
}

// Servers lists the control-plane servers.
func (c *Client) Servers(ctx context.Context) ([]ServerInfo, error) {
	var s []ServerInfo
	_, err := c.Do(ctx, "GET", "/v1/status/servers", nil, nil, &s)
	return s, err
}

// --- nodes ---

// RegisterNode registers or re-registers a node.
func (c *Client) RegisterNode(ctx context.Context, r *NodeRegistration) error {
	_, err := c.Do(ctx, "PUT", "/v1/nodes/"+esc(r.Name), nil, r, nil)
	return err
}

// Heartbeat tells the servers the node is alive.
func (c *Client) Heartbeat(ctx context.Context, node string, hb *Heartbeat) (*HeartbeatResponse, error) {
	var r HeartbeatResponse
	_, err := c.Do(ctx, "PUT", "/v1/nodes/"+esc(node)+"/heartbeat", nil, hb, &r)
	return &r, err
}

// NodeWork returns the node and the runs it should have, blocking per q;
// tasks changed after index since come in full.
func (c *Client) NodeWork(ctx context.Context, node string, since uint64, q *QueryOptions) (*NodeWork, uint64, error) {
	var w NodeWork
	v := url.Values{}
	v.Set("since", strconv.FormatUint(since, 10))
	idx, err := c.Do(ctx, "GET", "/v1/nodes/"+esc(node)+"/work", q.values(v), nil, &w)
	return &w, idx, err
}

// UpdateTasks reports task state changes.
func (c *Client) UpdateTasks(ctx context.Context, u *TaskUpdates) error {
	_, err := c.Do(ctx, "PUT", "/v1/nodes/"+esc(u.Node)+"/tasks", nil, u, nil)
	return err
}

// Nodes lists all nodes.
func (c *Client) Nodes(ctx context.Context, q *QueryOptions) ([]*Node, uint64, error) {
	var n []*Node
	idx, err := c.Do(ctx, "GET", "/v1/nodes", q.values(nil), nil, &n)
	return n, idx, err
}

// Node returns one node.
func (c *Client) Node(ctx context.Context, name string) (*Node, error) {
	var n Node
	_, err := c.Do(ctx, "GET", "/v1/nodes/"+esc(name), nil, nil, &n)
	return &n, err
}

// DrainNode starts (or with Disable stops) draining a node.
func (c *Client) DrainNode(ctx context.Context, name string, r *DrainRequest) error {
	_, err := c.Do(ctx, "PUT", "/v1/nodes/"+esc(name)+"/drain", nil, r, nil)
	return err
}

// Pool returns the pool summary.
func (c *Client) Pool(ctx context.Context, q *QueryOptions) (*PoolStatus, uint64, error) {
	var p PoolStatus
	idx, err := c.Do(ctx, "GET", "/v1/pool", q.values(nil), nil, &p)
	return &p, idx, err
}

// --- clusters ---

// CreateCluster reserves nodes for a new cluster.
func (c *Client) CreateCluster(ctx context.Context, r *ClusterRequest) (*Cluster, error) {
	var cl Cluster
	_, err := c.Do(ctx, "POST", "/v1/clusters", nil, r, &cl)
	return &cl, err
}

// Clusters lists clusters.
func (c *Client) Clusters(ctx context.Context, q *QueryOptions) ([]*Cluster, uint64, error) {
	var cl []*Cluster
	idx, err := c.Do(ctx, "GET", "/v1/clusters", q.values(nil), nil, &cl)
	return cl, idx, err
}

// Cluster returns one cluster.
func (c *Client) Cluster(ctx context.Context, name string, q *QueryOptions) (*Cluster, uint64, error) {
	var cl Cluster
	idx, err := c.Do(ctx, "GET", "/v1/clusters/"+esc(name), q.values(nil), nil, &cl)
	return &cl, idx, err
}

// ResizeCluster changes the number of nodes of a cluster.
func (c *Client) ResizeCluster(ctx context.Context, name string, nodes int) (*Cluster, error) {
	var cl Cluster
	_, err := c.Do(ctx, "PUT", "/v1/clusters/"+esc(name), nil, &ClusterResize{Nodes: nodes}, &cl)
	return &cl, err
}

// RotateClusterToken replaces a cluster's API token and returns the
// cluster with the new one; the old token stops working at once.
func (c *Client) RotateClusterToken(ctx context.Context, name string) (*Cluster, error) {
	var cl Cluster
	_, err := c.Do(ctx, "POST", "/v1/clusters/"+esc(name)+"/token", nil, nil, &cl)
	return &cl, err
}

// DeleteCluster stops a cluster's work and returns its nodes to the pool.
func (c *Client) DeleteCluster(ctx context.Context, name string) error {
	_, err := c.Do(ctx, "DELETE", "/v1/clusters/"+esc(name), nil, nil, nil)
	return err
}

// --- jobs ---

// SubmitJob submits a job.
func (c *Client) SubmitJob(ctx context.Context, spec *JobSpec) (*JobSubmitResponse, error) {
	var r JobSubmitResponse
	_, err := c.Do(ctx, "POST", "/v1/jobs", nil, spec, &r)
	return &r, err
}

// Jobs lists jobs, optionally of one cluster.
func (c *Client) Jobs(ctx context.Context, cluster string, q *QueryOptions) ([]*Job, uint64, error) {
	var j []*Job
	v := url.Values{}
	if cluster != "" {
		v.Set("cluster", cluster)
	}
	idx, err := c.Do(ctx, "GET", "/v1/jobs", q.values(v), nil, &j)
	return j, idx, err
}

// Job returns one job's summary with all its tasks in Tasks, fetched page
// by page after the summary (so a task may be newer than the summary).
// Meant for small jobs and tests: a large job's tasks are better read with
// [Client.JobTasks].
func (c *Client) Job(ctx context.Context, id string, q *QueryOptions) (*Job, uint64, error) {
	j, idx, err := c.JobSummary(ctx, id, q)
	if err != nil {
		return j, idx, err
	}
	f := &TaskFilter{Limit: MaxTaskLimit}
	for {
		p, _, err := c.JobTasks(ctx, id, f, nil)
		if err != nil {
			return j, idx, err
		}
		j.Tasks = append(j.Tasks, p.Tasks...)
		if p.NextOffset == 0 {
			return j, idx, nil
		}
		f.Offset = p.NextOffset
	}
}

// JobSummary returns a job's summary (counts by state and group, events,
// failing tasks), without its task list: cheap to watch.
func (c *Client) JobSummary(ctx context.Context, id string, q *QueryOptions) (*Job, uint64, error) {
	var j Job
	idx, err := c.Do(ctx, "GET", "/v1/jobs/"+esc(id), q.values(nil), nil, &j)
	return &j, idx, err
}

// JobTasks returns one page of a job's tasks that match f (nil: the first
// page of all tasks).
func (c *Client) JobTasks(ctx context.Context, id string, f *TaskFilter, q *QueryOptions) (*TaskPage, uint64, error) {
	v := url.Values{}
	if f != nil {
		if f.State != "" {
			v.Set("state", f.State)
		}
		if f.Group != "" {
			v.Set("group", f.Group)
		}
		if f.Limit != 0 {
			v.Set("limit", strconv.Itoa(f.Limit))
		}
		if f.Offset != 0 {
			v.Set("offset", strconv.Itoa(f.Offset))
		}
	}
	var p TaskPage
	idx, err := c.Do(ctx, "GET", "/v1/jobs/"+esc(id)+"/tasks", q.values(v), nil, &p)
	return &p, idx, err
}

// CancelJob stops a job's tasks.
func (c *Client) CancelJob(ctx context.Context, id string) error {
	_, err := c.Do(ctx, "DELETE", "/v1/jobs/"+esc(id), nil, nil, nil)
	return err
}

// Logs streams the output of task index of group (empty: the job's first
// group); stream is "stdout" (the default) or "stderr". With follow, it
// streams until the task ends or ctx is done.
func (c *Client) Logs(ctx context.Context, job, group string, task int, stream string, follow bool) (io.ReadCloser, error) {
	v := url.Values{}
	if group != "" {
		v.Set("group", group)
	}
	v.Set("task", strconv.Itoa(task))
	if stream != "" {
		v.Set("stream", stream)
	}
	if follow {
		v.Set("follow", "true")
	}
	return c.Stream(ctx, "GET", "/v1/jobs/"+esc(job)+"/logs", v)
}
