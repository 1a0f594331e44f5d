package invoke

import "github.com/prometheus/client_golang/prometheus"

// metrics are the invoke path's Prometheus series. The function label is
// "cluster/name" and is only set for functions that exist, so that a
// caller cannot grow the series with made-up names.
type metrics struct {
	invocations *prometheus.CounterVec // function, type, outcome
	warmHits    *prometheus.CounterVec // function
	coldStarts  *prometheus.CounterVec // function
	throttles   *prometheus.CounterVec // function
	probes      prometheus.Histogram
	unreachable prometheus.Counter
	seconds     *prometheus.HistogramVec // start: warm|cold
}

// Invocation outcomes (the outcome label).
const (
	outcomeOK            = "ok"
	outcomeFunctionError = "function_error"
	outcomeThrottled     = "throttled"
	outcomeUnavailable   = "unavailable"
	outcomeError         = "error"
	outcomeEnqueued      = "enqueued"
	outcomeDryRun        = "dry_run"
	outcomeInvalid       = "invalid"
)

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		invocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_server_fn_invocations_total",
			Help: "Function invocations this server handled, by function, invocation type and outcome."},
			[]string{"function", "type", "outcome"}),
		warmHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_server_fn_warm_hits_total",
			Help: "Invocations this server routed that ran in an already warm sandbox."},
			[]string{"function"}),
		coldStarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_server_fn_cold_starts_total",
			Help: "Invocations this server routed for which an agent started a sandbox."},
			[]string{"function"}),
		throttles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_server_fn_throttles_total",
			Help: "Invocations refused (429) because the function's concurrency was used up: by this server's own, or on every agent."},
			[]string{"function"}),
		probes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "shoal_server_fn_probes",
			Help:    "Agents asked for a warm sandbox per invocation (1: a warm hit on the first agent).",
			Buckets: []float64{0, 1, 2, 3, 4, 5, 8}}),
		unreachable: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_server_fn_unreachable_agents_total",
			Help: "Agents skipped while routing an invocation because they could not be dialled."}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "shoal_server_fn_invoke_seconds",
			Help:    "Time to route and run an invocation, from this server's side, by warm or cold start.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18)}, []string{"start"}),
	}
	if reg != nil {
		reg.MustRegister(m.invocations, m.warmHits, m.coldStarts, m.throttles, m.probes, m.unreachable, m.seconds)
	}
	return m
}
