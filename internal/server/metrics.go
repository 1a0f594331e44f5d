package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/shoal-dev/shoal/api"
)

// metrics are one server's Prometheus metrics, in a registry of its own
// (no global state, so several servers can share a test process).
type metrics struct {
	reg          *prometheus.Registry
	applyLatency *prometheus.HistogramVec
	schedLatency prometheus.Histogram
	placements   prometheus.Counter
	heartbeats   prometheus.Counter
	isLeader     prometheus.Gauge
	// refused counts requests refused for their token, by reason.
	refused *prometheus.CounterVec
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		applyLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "shoal_raft_apply_seconds", Help: "Time to commit and apply one Raft entry, by entry type.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"type"}),
		schedLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "shoal_scheduler_plan_seconds", Help: "Time to compute and commit one scheduling plan.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		placements: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_scheduler_placements_total", Help: "Tasks placed on nodes."}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_heartbeats_total", Help: "Node heartbeats received by this server as leader."}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_raft_leader", Help: "1 if this server leads the Raft group."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_server_refused_total",
			Help: "API requests this server refused (401) for their token: malformed header, token required, unknown token."},
			[]string{"what", "reason"}),
	}
	m.reg.MustRegister(m.applyLatency, m.schedLatency, m.placements, m.heartbeats, m.isLeader, m.refused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stateCollector{s: s})
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

var (
	tasksDesc = prometheus.NewDesc("shoal_tasks", "Tasks by state, from this server's copy of the state.", []string{"state"}, nil)
	nodesDesc = prometheus.NewDesc("shoal_nodes", "Nodes by state.", []string{"state"}, nil)
	jobsDesc  = prometheus.NewDesc("shoal_jobs", "Jobs by state.", []string{"state"}, nil)

	dfsStoredDesc    = prometheus.NewDesc("shoal_dfs_stored_bytes", "Bytes stored on live data nodes, all replicas counted.", nil, nil)
	dfsLogicalDesc   = prometheus.NewDesc("shoal_dfs_logical_bytes", "Bytes of live files, each counted once.", nil, nil)
	dfsUnderDesc     = prometheus.NewDesc("shoal_dfs_chunks_under_replicated", "Chunks with fewer live replicas than their replication factor.", nil, nil)
	dfsUnavailDesc   = prometheus.NewDesc("shoal_dfs_chunks_unavailable", "Chunks with no live replica.", nil, nil)
	dfsMisplacedDesc = prometheus.NewDesc("shoal_dfs_chunks_misplaced", "Chunks whose live replicas span fewer zones than min(replication factor, zones with a ready data node).", nil, nil)
	dfsMovedDesc     = prometheus.NewDesc("shoal_dfs_moved_bytes_total", "Bytes copied by this server as leader to move mis-placed chunks back to full zone spread.", nil, nil)
	dfsRepairedDesc  = prometheus.NewDesc("shoal_dfs_repaired_bytes_total", "Bytes re-replicated by this server since it became leader; rate() gives the repair rate.", nil, nil)
	dfsRepairsDesc   = prometheus.NewDesc("shoal_dfs_repairs_running", "Chunk copies in flight.", nil, nil)
)

// stateCollector reads counts from the state store at scrape time.
type stateCollector struct{ s *Server }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- tasksDesc
	ch <- nodesDesc
	ch <- jobsDesc
	for _, d := range []*prometheus.Desc{dfsStoredDesc, dfsLogicalDesc, dfsUnderDesc, dfsUnavailDesc, dfsMisplacedDesc, dfsMovedDesc, dfsRepairedDesc, dfsRepairsDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	snap := c.s.store.Snapshot()
	var tasks api.TaskCounts
	jobs := map[string]int{api.JobPending: 0, api.JobRunning: 0, api.JobComplete: 0, api.JobFailed: 0, api.JobCancelled: 0}
	for _, j := range snap.Jobs(nil, "") {
		jobs[j.State]++
		tasks.Pending += j.Counts.Pending
		tasks.Running += j.Counts.Running
		tasks.Complete += j.Counts.Complete
		tasks.Failed += j.Counts.Failed
		tasks.Lost += j.Counts.Lost
		tasks.Cancelled += j.Counts.Cancelled
	}
	for st, v := range map[string]int{api.TaskPending: tasks.Pending, api.TaskRunning: tasks.Running,
		api.TaskComplete: tasks.Complete, api.TaskFailed: tasks.Failed, api.TaskLost: tasks.Lost, api.TaskCancelled: tasks.Cancelled} {
		ch <- prometheus.MustNewConstMetric(tasksDesc, prometheus.GaugeValue, float64(v), st)
	}
	for st, v := range jobs {
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.GaugeValue, float64(v), st)
	}
	nodes := map[string]int{api.NodeInitializing: 0, api.NodeReady: 0, api.NodeDraining: 0, api.NodeDown: 0}
	for _, n := range snap.Nodes(nil) {
		nodes[n.State]++
	}
	for st, v := range nodes {
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(v), st)
	}
	fs := c.s.fsStatus(snap, nil)
	ch <- prometheus.MustNewConstMetric(dfsStoredDesc, prometheus.GaugeValue, float64(fs.StoredBytes))
	ch <- prometheus.MustNewConstMetric(dfsLogicalDesc, prometheus.GaugeValue, float64(fs.LogicalBytes))
	ch <- prometheus.MustNewConstMetric(dfsUnderDesc, prometheus.GaugeValue, float64(fs.UnderReplicated))
	ch <- prometheus.MustNewConstMetric(dfsUnavailDesc, prometheus.GaugeValue, float64(fs.Unavailable))
	ch <- prometheus.MustNewConstMetric(dfsMisplacedDesc, prometheus.GaugeValue, float64(fs.Misplaced))
	ch <- prometheus.MustNewConstMetric(dfsMovedDesc, prometheus.CounterValue, float64(fs.MovedBytes))
	ch <- prometheus.MustNewConstMetric(dfsRepairedDesc, prometheus.CounterValue, float64(fs.RepairedBytes))
	ch <- prometheus.MustNewConstMetric(dfsRepairsDesc, prometheus.GaugeValue, float64(fs.RepairsRunning))
}
