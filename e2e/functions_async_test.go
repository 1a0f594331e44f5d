package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// flaky is a shell bootstrap that fails every invocation while FAIL=1 and
// answers {"ok":true} otherwise.
const flaky = `#!/bin/sh
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/invocation"
while :; do
  id=$(curl -sS -D - -o event.json "$api/next" | tr -d '\r' | sed -n 's/^[Ll]ambda-[Rr]untime-[Aa]ws-[Rr]equest-[Ii]d: //p')
  echo "handling $id"
  if [ "$FAIL" = 1 ]; then
    curl -sS -o /dev/null -X POST -d '{"errorMessage":"failing on purpose","errorType":"Flaky"}' "$api/$id/error"
  else
    curl -sS -o /dev/null -X POST -d '{"ok":true}' "$api/$id/response"
  fi
done
`

// ranOK reports whether the logs hold a successful run of request id.
func ranOK(t *testing.T, in *testutil.Installation, cluster, name, id string) (bool, string) {
	recs, err := in.Client.FunctionLogs(context.Background(), cluster, name, time.Time{}, id)
	if err != nil {
		return false, err.Error()
	}
	var outcomes []string
	for _, r := range recs {
		if r.Outcome == "ok" {
			return true, ""
		}
		outcomes = append(outcomes, r.Outcome)
	}
	return false, fmt.Sprintf("runs of %s: %v", id, outcomes)
}

// TestFunctionEventsAndDeadLetters: Event invocations are queued and run;
// one that fails every attempt lands in the dead-letter queue with its
// error and attempt count, and a redrive after a fixed version succeeds.
func TestFunctionEventsAndDeadLetters(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 1})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	bundle := writeBytes(t, "flaky.zip", testutil.ZipBundle(t, map[string]testutil.BundleFile{"bootstrap": {Data: []byte(flaky), Mode: 0o755}}))
	mustShoal(t, in, "fn", "deploy", "flaky", "--cluster", "c1", "--zip", bundle, "--env", "FAIL=0")

	r := invoke(t, in, "c1", "flaky", &api.InvokeOptions{Type: api.InvokeEvent, Payload: []byte(`{"n":1}`)})
	if r.StatusCode != 202 || r.RequestID == "" {
		t.Fatalf("Event: status %d, request id %q", r.StatusCode, r.RequestID)
	}
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) { return ranOK(t, in, "c1", "flaky", r.RequestID) })

	mustShoal(t, in, "fn", "update", "flaky", "--env", "FAIL=1", "--retries", "2")
	out := mustShoal(t, in, "fn", "invoke", "flaky", "--async", "--payload", `{"n":2}`)
	var failing string
	if _, err := fmt.Sscanf(out, "Event %s queued", &failing); err != nil {
		t.Fatalf("shoal fn invoke --async printed %q", out)
	}
	var dead []*api.DeadLetter
	testutil.WaitFor(t, 60*time.Second, func() (bool, string) {
		dead = nil
		json.Unmarshal([]byte(mustShoal(t, in, "fn", "dlq", "list", "flaky", "-o", "json")), &dead)
		return len(dead) == 1, fmt.Sprintf("%d dead letters", len(dead))
	})
	d := dead[0]
	if d.Attempts != 3 || d.ErrorType != "Flaky" || !strings.Contains(d.ErrorMessage, "failing on purpose") || string(d.Payload) != `{"n":2}` {
		t.Errorf("dead letter %+v, want 3 attempts of Flaky with the payload", d)
	}
	if d.ID != failing {
		t.Errorf("dead letter id %s, want the request id %s printed by shoal fn invoke --async", d.ID, failing)
	}
	if show := mustShoal(t, in, "fn", "dlq", "show", "flaky", "--id", d.ID); !strings.Contains(show, "failing on purpose") {
		t.Errorf("shoal fn dlq show: %s", show)
	}

	mustShoal(t, in, "fn", "update", "flaky", "--env", "FAIL=0")
	mustShoal(t, in, "fn", "dlq", "redrive", "flaky")
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) { return ranOK(t, in, "c1", "flaky", d.ID) })
	if out := mustShoal(t, in, "fn", "dlq", "list", "flaky", "-o", "json"); strings.Contains(out, d.ID) {
		t.Errorf("the redriven dead letter is still listed: %s", out)
	}
}

// gated is a shell bootstrap that answers each invocation only once the
// file $GATE exists.
const gated = `#!/bin/sh
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/invocation"
while :; do
  id=$(curl -sS -D - -o event.json "$api/next" | tr -d '\r' | sed -n 's/^[Ll]ambda-[Rr]untime-[Aa]ws-[Rr]equest-[Ii]d: //p')
  echo "holding $id"
  while [ ! -e "$GATE" ]; do sleep 0.1; done
  curl -sS -o /dev/null -X POST -d '{"ok":true}' "$api/$id/response"
done
`

// TestFunctionEventsSurviveLeaderKill: Event invocations acknowledged
// with 202 all run to completion although the Raft leader and an agent
// running some of them are killed with kill -9 while they are queued or
// running (the queue is replicated over the three servers; what the dead
// server was running is delivered again, what the dead agent was running
// is run again on the other).
func TestFunctionEventsSurviveLeaderKill(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Servers: 3, Agents: 2})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2")
	gate := filepath.Join(t.TempDir(), "gate")
	bundle := writeBytes(t, "gated.zip", testutil.ZipBundle(t, map[string]testutil.BundleFile{"bootstrap": {Data: []byte(gated), Mode: 0o755}}))
	mustShoal(t, in, "fn", "deploy", "gated", "--cluster", "c1", "--zip", bundle, "--env", "GATE="+gate, "--timeout", "60s")

	// The replicated queue opens once the three servers' JetStream has
	// a quorum; until then an Event gets 503 (ServiceException), which
	// clients retry.
	var ids []string
	for i := 0; i < 10; i++ {
		testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
			r, err := in.Client.InvokeFunction(context.Background(), "c1", "gated", &api.InvokeOptions{Type: api.InvokeEvent, Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))})
			if err != nil {
				return false, err.Error()
			}
			if r.StatusCode != 202 {
				t.Fatalf("Event %d: status %d", i, r.StatusCode)
			}
			ids = append(ids, r.RequestID)
			return true, ""
		})
	}
	// Both agents run events (held at the gate) before the kills.
	var busyNode string
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		nodes := map[string]bool{}
		for _, sb := range fnStatus(t, in, "gated").Sandboxes {
			if sb.State == api.SandboxBusy {
				nodes[sb.Node], busyNode = true, sb.Node
			}
		}
		return len(nodes) == 2, fmt.Sprintf("events running on %d nodes", len(nodes))
	})
	old := in.Leader()
	in.Servers[old].Kill9()
	in.Agent(busyNode).Kill9()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		testutil.WaitFor(t, 120*time.Second, func() (bool, string) { return ranOK(t, in, "c1", "gated", id) })
	}
	in.Servers[old].Restart(t)
}

// TestFunctionEventFinishesAcrossRestart: a server stopped (SIGTERM) while
// it runs an event lets the event finish and acknowledges it before it
// exits: after a restart nothing is queued and the function ran once.
func TestFunctionEventFinishesAcrossRestart(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 1})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	gate := filepath.Join(t.TempDir(), "gate")
	bundle := writeBytes(t, "gated.zip", testutil.ZipBundle(t, map[string]testutil.BundleFile{"bootstrap": {Data: []byte(gated), Mode: 0o755}}))
	mustShoal(t, in, "fn", "deploy", "gated", "--cluster", "c1", "--zip", bundle, "--env", "GATE="+gate, "--timeout", "60s")
	r, err := in.Client.InvokeFunction(context.Background(), "c1", "gated", &api.InvokeOptions{Type: api.InvokeEvent, Payload: []byte(`{}`)})
	if err != nil || r.StatusCode != 202 {
		t.Fatalf("Event: %v %+v", err, r)
	}
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		for _, sb := range fnStatus(t, in, "gated").Sandboxes {
			if sb.State == api.SandboxBusy {
				return true, ""
			}
		}
		return false, "the event is not running yet"
	})
	go func() {
		time.Sleep(time.Second) // the server is shutting down by then
		os.WriteFile(gate, nil, 0o644)
	}()
	t0 := time.Now()
	in.Servers[0].Stop()
	if d := time.Since(t0); d < time.Second {
		t.Errorf("the server stopped after %s, before the event it ran could finish", d)
	}
	in.Servers[0].Restart(t)
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) { return ranOK(t, in, "c1", "gated", r.RequestID) })
	st := fnStatus(t, in, "gated")
	if st.Queued != 0 {
		t.Errorf("%d events queued after the restart; want 0 (the one that finished acknowledged)", st.Queued)
	}
	recs, err := in.Client.FunctionLogs(context.Background(), "c1", "gated", time.Time{}, r.RequestID)
	if err != nil || len(recs) != 1 {
		t.Errorf("runs of the event: %d (%v); want exactly 1", len(recs), err)
	}
}

// TestFunctionEventsExternalNATS: servers given --queue-url keep Event
// invocations and dead letters in that NATS (here a NATS server with
// JetStream started by the test, on loopback) and embed none: an event
// queued through one server runs after that server is killed with kill
// -9, and dead letters are listed through another.
func TestFunctionEventsExternalNATS(t *testing.T) {
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: natsserver.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), MaxPayload: 8 << 20, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("the NATS server did not start")
	}
	in := testutil.StartInstallation(t, testutil.Options{Servers: 3, Agents: 1, ServerArgs: []string{"--queue-url", ns.ClientURL()}})
	for i := range in.Servers {
		if strings.Contains(in.Servers[i].Log(), "JetStream") {
			t.Errorf("server %d started an embedded JetStream although it was given --queue-url", i)
		}
	}
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	gate := filepath.Join(t.TempDir(), "gate")
	bundle := writeBytes(t, "gated.zip", testutil.ZipBundle(t, map[string]testutil.BundleFile{"bootstrap": {Data: []byte(gated), Mode: 0o755}}))
	mustShoal(t, in, "fn", "deploy", "gated", "--cluster", "c1", "--zip", bundle, "--env", "GATE="+gate, "--timeout", "60s")

	// Queued through the leader, which is then killed: the event is in
	// the external NATS and another server runs it (again, after the ack
	// wait, when the leader was the one running it: the default retries
	// leave attempts for that).
	lead := in.Leader()
	c := in.NewClient([]string{in.Servers[lead].HTTPAddr}, in.Opts.Token)
	defer c.Close()
	var id string
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		r, err := c.InvokeFunction(context.Background(), "c1", "gated", &api.InvokeOptions{Type: api.InvokeEvent, Payload: []byte(`{}`)})
		if err != nil {
			return false, err.Error()
		}
		id = r.RequestID
		return r.StatusCode == 202, fmt.Sprintf("status %d", r.StatusCode)
	})
	in.Servers[lead].Kill9()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 90*time.Second, func() (bool, string) { return ranOK(t, in, "c1", "gated", id) })

	// A failing event's dead letter is kept there too.
	bundle = writeBytes(t, "flaky.zip", testutil.ZipBundle(t, map[string]testutil.BundleFile{"bootstrap": {Data: []byte(flaky), Mode: 0o755}}))
	mustShoal(t, in, "fn", "deploy", "flaky", "--cluster", "c1", "--zip", bundle, "--env", "FAIL=1", "--retries", "0")
	mustShoal(t, in, "fn", "invoke", "flaky", "--async", "--payload", `{"n":1}`)
	testutil.WaitFor(t, 60*time.Second, func() (bool, string) {
		var dead []*api.DeadLetter
		json.Unmarshal([]byte(mustShoal(t, in, "fn", "dlq", "list", "flaky", "-o", "json")), &dead)
		return len(dead) == 1, fmt.Sprintf("%d dead letters", len(dead))
	})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var streams []string
	names := js.StreamNames(context.Background())
	for n := range names.Name() {
		streams = append(streams, n)
	}
	if !slices.Contains(streams, "FN_EVENTS") || !slices.Contains(streams, "FN_DEAD") {
		t.Errorf("streams in the external NATS: %v, want FN_EVENTS and FN_DEAD", streams)
	}
	in.Servers[lead].Restart(t)
}
