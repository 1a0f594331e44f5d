package agent

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/taskdns"
)

// Task names. A task of a cluster network reaches another running task of
// its cluster by name: "<job>-<group>-<index>" (say "train-12-worker-3"),
// or "<job>-<index>" for a job of one group (say "train-12-3"), where job
// is the job's id. The node's firewall sends the tasks' DNS queries to the
// agent's resolver (package taskdns) on the gateway, which answers these
// names from the servers' view of the cluster's tasks and relays other
// names to the host's resolvers when the cluster has egress.

// nameCacheTTL is how long the resolver trusts what it read of a job.
const nameCacheTTL = 2 * time.Second

// nameResolver answers the names of one cluster's tasks.
type nameResolver struct {
	client  *api.Client
	cluster string

	mu     sync.Mutex
	jobs   []*api.Job
	jobsAt time.Time
	tasks  map[string]taskAddrs // job/group -> index -> address
}

type taskAddrs struct {
	at    time.Time
	addrs map[int]netip.Addr
}

// lookup resolves label, a lowercased first label of a query name.
func (n *nameResolver) lookup(ctx context.Context, label string) ([]netip.Addr, bool, error) {
	jobs, err := n.clusterJobs(ctx)
	if err != nil {
		return nil, false, err
	}
	for _, j := range jobs {
		rest, ok := strings.CutPrefix(label, strings.ToLower(j.ID)+"-")
		if !ok {
			continue
		}
		group, index, ok := n.splitTask(j, rest)
		if !ok {
			continue
		}
		addrs, err := n.groupAddrs(ctx, j.ID, group)
		if err != nil {
			return nil, true, err
		}
		if a, ok := addrs[index]; ok {
			return []netip.Addr{a}, true, nil
		}
		return nil, true, nil // the job's name, but no running task
	}
	return nil, false, nil
}

// splitTask reads "<group>-<index>", or "<index>" for a job of one group.
func (n *nameResolver) splitTask(j *api.Job, rest string) (group string, index int, ok bool) {
	cut := strings.LastIndexByte(rest, '-')
	if i, err := strconv.Atoi(rest[cut+1:]); err == nil && i >= 0 {
		index = i
	} else {
		return "", 0, false
	}
	if cut < 0 {
		if len(j.Groups) != 1 {
			return "", 0, false
		}
		return j.Groups[0].Name, index, true
	}
	for _, g := range j.Groups {
		if strings.ToLower(g.Name) == rest[:cut] {
			return g.Name, index, true
		}
	}
	return "", 0, false
}

// clusterJobs lists the cluster's jobs, from the cache when fresh.
func (n *nameResolver) clusterJobs(ctx context.Context) ([]*api.Job, error) {
	n.mu.Lock()
	if time.Since(n.jobsAt) < nameCacheTTL {
		defer n.mu.Unlock()
		return n.jobs, nil
	}
	n.mu.Unlock()
	jobs, _, err := n.client.Jobs(ctx, n.cluster, nil)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.jobs, n.jobsAt = jobs, time.Now()
	n.mu.Unlock()
	return jobs, nil
}

// groupAddrs maps the running tasks of a job's group to their addresses.
func (n *nameResolver) groupAddrs(ctx context.Context, job, group string) (map[int]netip.Addr, error) {
	key := job + "/" + group
	n.mu.Lock()
	if c, ok := n.tasks[key]; ok && time.Since(c.at) < nameCacheTTL {
		n.mu.Unlock()
		return c.addrs, nil
	}
	n.mu.Unlock()
	addrs := map[int]netip.Addr{}
	for offset := 0; ; {
		page, _, err := n.client.JobTasks(ctx, job, &api.TaskFilter{Group: group, State: api.TaskRunning,
			Limit: api.MaxTaskLimit, Offset: offset}, nil)
		if err != nil {
			return nil, err
		}
		for _, t := range page.Tasks {
			if a, err := netip.ParseAddr(t.Addr); err == nil && t.Cluster == n.cluster {
				addrs[t.Index] = a
			}
		}
		if page.NextOffset == 0 {
			break
		}
		offset = page.NextOffset
	}
	n.mu.Lock()
	if n.tasks == nil {
		n.tasks = map[string]taskAddrs{}
	}
	n.tasks[key] = taskAddrs{at: time.Now(), addrs: addrs}
	n.mu.Unlock()
	return addrs, nil
}

// startResolver serves the cluster's names on the gateway. Other names are
// relayed to the host's resolvers only when the cluster has egress.
func (a *Agent) startResolver(gw netip.Addr, cluster string, egress bool) (*taskdns.Server, error) {
	var upstream []string
	if egress {
		upstream = taskdns.Upstreams("/etc/resolv.conf")
	}
	r := &nameResolver{client: a.client, cluster: cluster}
	return taskdns.Serve(taskdns.Config{Addr: netip.AddrPortFrom(gw, 53).String(), Lookup: r.lookup,
		Upstream: upstream, Log: a.log})
}
