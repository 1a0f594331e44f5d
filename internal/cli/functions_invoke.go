package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/api"
)

// fnLogPollInterval is how often shoal fn logs --follow asks for new
// records.
const fnLogPollInterval = 500 * time.Millisecond

func fnInvokeCmd(g *globals, f *fnFlags) *cobra.Command {
	var (
		payload, logType, out string
		clientContext         string
		async, dryRun         bool
		version               int
	)
	cmd := &cobra.Command{
		Use:   "invoke NAME [--payload JSON|@FILE|-] [--async] [--dry-run] [--version N] [--log-type Tail] [--client-context JSON] [--out FILE]",
		Short: "Invoke a function and print its response",
		Long: `Invoke a function, as Lambda's Invoke API does, and print its response payload
on standard output (or into --out FILE). The event is --payload: a JSON
document, @FILE to read one from a file, or - to read standard input (default:
{}); it may have at most 6 MiB.

--async queues the event (an Event invocation: retried on failure, then kept in
the dead-letter queue, see 'shoal fn dlq') and prints its request id; --dry-run
only checks that the function may be invoked. --log-type Tail prints the end of
the invocation's log on standard error. --client-context passes a JSON object
to the function's context (a synchronous invocation's only, as on Lambda).

When the function fails, its error document is printed as the response and the
exit status is 1.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o := &api.InvokeOptions{Type: api.InvokeRequestResponse, Version: version}
			switch {
			case async && dryRun:
				return errors.New("--async and --dry-run exclude each other")
			case async:
				o.Type = api.InvokeEvent
			case dryRun:
				o.Type = api.InvokeDryRun
			}
			if (async || dryRun) && (out != "" || clientContext != "") {
				return errors.New("--out and --client-context are for an invocation that answers: not with --async or --dry-run")
			}
			switch logType {
			case api.LogTypeTail:
				o.Tail = true
			case api.LogTypeNone:
			default:
				return fmt.Errorf("--log-type: %q is not %s or %s", logType, api.LogTypeTail, api.LogTypeNone)
			}
			if version < 0 {
				return fmt.Errorf("--version: %d is not a version number (0: the latest)", version)
			}
			var err error
			if o.Payload, err = readPayload(payload, cmd.InOrStdin()); err != nil {
				return err
			}
			if clientContext != "" {
				var obj map[string]json.RawMessage
				if json.Unmarshal([]byte(clientContext), &obj) != nil {
					return fmt.Errorf("--client-context: %q is not a JSON object", clientContext)
				}
				o.ClientContext = []byte(clientContext)
			}
			cl, cluster, name, err := fnTarget(cmd.Context(), g, f, args)
			if err != nil {
				return err
			}
			res, err := cl.InvokeFunction(cmd.Context(), cluster, name, o)
			if err != nil {
				return err
			}
			return printInvokeResult(g, name, res, out)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&payload, "payload", "", "the event: JSON, @FILE or - for standard input (default {})")
	fl.BoolVar(&async, "async", false, "queue the event (Event invocation) instead of waiting for the response")
	fl.BoolVar(&dryRun, "dry-run", false, "only check that the function may be invoked (DryRun invocation)")
	fl.IntVar(&version, "version", 0, "the version to run (default: the latest)")
	fl.StringVar(&logType, "log-type", api.LogTypeNone, "Tail prints the end of the invocation's log on standard error")
	fl.StringVar(&clientContext, "client-context", "", "a JSON object for the function's context (synchronous invocations)")
	fl.StringVar(&out, "out", "", "write the response payload to this file instead of standard output")
	addOutputFlag(cmd, g)
	return cmd
}

// readPayload returns the event of --payload spec: the JSON itself,
// "@FILE" for a file's content, "-" for stdin's, {} when spec is empty.
// It must be valid JSON of at most api.MaxInvokePayload bytes.
func readPayload(spec string, stdin io.Reader) ([]byte, error) {
	var b []byte
	var err error
	from := ""
	switch {
	case spec == "":
		return []byte("{}"), nil
	case spec == "-":
		from = " (standard input)"
		b, err = io.ReadAll(io.LimitReader(stdin, api.MaxInvokePayload+1))
	case strings.HasPrefix(spec, "@"):
		from = " (" + spec[1:] + ")"
		var fh *os.File
		if fh, err = os.Open(spec[1:]); err == nil {
			b, err = io.ReadAll(io.LimitReader(fh, api.MaxInvokePayload+1))
			fh.Close()
		}
	default:
		b = []byte(spec)
	}
	if err != nil {
		return nil, fmt.Errorf("--payload: %w", err)
	}
	if len(b) > api.MaxInvokePayload {
		return nil, fmt.Errorf("--payload%s: larger than %d bytes, the largest payload a function takes", from, api.MaxInvokePayload)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("--payload%s: not valid JSON: %v", from, err)
	}
	return b, nil
}

// invokeView is what shoal fn invoke -o json prints: the result with its
// payload, embedded as JSON when it is JSON and as a string otherwise.
type invokeView struct {
	*api.FunctionResult
	Payload any `json:"payload,omitempty"`
}

// printInvokeResult prints an invocation's result; a function error
// becomes an error (exit status 1) after its document is printed.
func printInvokeResult(g *globals, name string, res *api.FunctionResult, out string) error {
	if res.LogTail != "" {
		fmt.Fprint(g.stderr, res.LogTail)
		if !strings.HasSuffix(res.LogTail, "\n") {
			fmt.Fprintln(g.stderr)
		}
	}
	switch {
	case g.output == "json":
		v := invokeView{FunctionResult: res}
		if len(res.Payload) > 0 {
			if json.Valid(res.Payload) {
				v.Payload = json.RawMessage(res.Payload)
			} else {
				v.Payload = string(res.Payload)
			}
		}
		if err := printJSON(g.stdout, v); err != nil {
			return err
		}
	case res.StatusCode == 202:
		fmt.Fprintf(g.stdout, "Event %s queued for function %s.\n", dash(res.RequestID), name)
	case res.StatusCode == 204:
		fmt.Fprintf(g.stdout, "Dry run: function %s may be invoked.\n", name)
	case out != "":
		if err := os.WriteFile(out, res.Payload, 0o644); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
	default:
		g.stdout.Write(res.Payload)
		if len(res.Payload) > 0 && res.Payload[len(res.Payload)-1] != '\n' {
			fmt.Fprintln(g.stdout)
		}
	}
	if res.FunctionError == "" {
		return nil
	}
	var doc struct {
		ErrorMessage string `json:"errorMessage"`
		ErrorType    string `json:"errorType"`
	}
	json.Unmarshal(res.Payload, &doc)
	msg := fmt.Sprintf("function %s failed (%s error, request %s)", name, res.FunctionError, dash(res.RequestID))
	switch {
	case doc.ErrorType != "" || doc.ErrorMessage != "":
		msg += ": " + strings.TrimPrefix(doc.ErrorType+": "+doc.ErrorMessage, ": ")
	case out != "":
		msg += "; its error document is in " + out
	}
	return errors.New(msg)
}

func fnLogsCmd(g *globals, f *fnFlags) *cobra.Command {
	var (
		follow           bool
		since, requestID string
	)
	cmd := &cobra.Command{
		Use:   "logs NAME [--follow] [--since D] [--request-id ID]",
		Short: "Print a function's invocation logs",
		Long: `Print the logs of a function's invocations, oldest first, each line prefixed
with "[NODE SANDBOX] REQUEST-ID". --since takes a duration back from now (10m)
or a time (RFC 3339); --request-id shows one invocation. --follow keeps
printing new invocations (each once it has ended) until Ctrl-C.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			from, err := parseSince(since, time.Now())
			if err != nil {
				return err
			}
			cl, cluster, name, err := fnTarget(cmd.Context(), g, f, args)
			if err != nil {
				return err
			}
			if follow {
				return followLogs(cmd.Context(), g, cl, cluster, name, from, requestID, fnLogPollInterval)
			}
			recs, err := cl.FunctionLogs(cmd.Context(), cluster, name, from, requestID)
			if err != nil {
				return err
			}
			return g.view(recs, func() error {
				for _, r := range recs {
					printLogRecord(g.stdout, r)
				}
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&follow, "follow", "f", false, "keep printing new invocations until Ctrl-C")
	fl.StringVar(&since, "since", "", "only invocations started since then: a duration back from now (10m) or an RFC 3339 time")
	fl.StringVar(&requestID, "request-id", "", "only this invocation")
	addOutputFlag(cmd, g)
	return cmd
}

// parseSince reads --since: "" (from the start), a duration back from
// now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since: %s is negative; give how long ago, such as 10m", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since: %q is neither a duration (10m) nor an RFC 3339 time (2026-11-30T12:00:00Z)", s)
	}
	return t, nil
}

// printLogRecord prints one invocation's log (which holds Lambda's START,
// END and REPORT lines), each line prefixed with where and which
// invocation it came from, then its outcome.
func printLogRecord(w io.Writer, r *api.FunctionLogRecord) {
	prefix := fmt.Sprintf("[%s %s] %s", dash(r.Node), dash(r.Sandbox), dash(r.RequestID))
	if r.Log != "" {
		for _, line := range strings.Split(strings.TrimSuffix(r.Log, "\n"), "\n") {
			fmt.Fprintf(w, "%s %s\n", prefix, line)
		}
	}
	if !r.End.IsZero() {
		fmt.Fprintf(w, "%s -> %s in %s\n", prefix, dash(r.Outcome), r.End.Sub(r.Start).Round(time.Millisecond))
	}
}

// followLogs prints a function's invocation logs as they come, asking
// every interval for those started at or after the last one seen, until
// ctx ends (Ctrl-C). An invocation is printed once, when it has ended;
// with -o json each record is one line of JSON.
func followLogs(ctx context.Context, g *globals, cl *api.Client, cluster, name string, since time.Time, requestID string, interval time.Duration) error {
	// printed holds the invocations already printed that started at or
	// after cursor: the next answer includes them again.
	printed := map[string]time.Time{}
	cursor := since
	enc := json.NewEncoder(g.stdout)
	for {
		recs, err := cl.FunctionLogs(ctx, cluster, name, cursor, requestID)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			var apiErr *api.Error
			if errors.As(err, &apiErr) {
				return err
			}
			fmt.Fprintf(g.stderr, "lost contact with the server (%v); retrying\n", err)
		default:
			next := cursor
			var unfinished time.Time
			for _, r := range recs {
				if r.Start.After(next) {
					next = r.Start
				}
				if _, done := printed[r.RequestID]; done {
					continue
				}
				if r.End.IsZero() {
					if unfinished.IsZero() || r.Start.Before(unfinished) {
						unfinished = r.Start
					}
					continue
				}
				if g.output == "json" {
					enc.Encode(r)
				} else {
					printLogRecord(g.stdout, r)
				}
				printed[r.RequestID] = r.Start
			}
			// Ask again from the last start seen, but not past an
			// invocation still running, which is printed when it ends.
			if !unfinished.IsZero() && unfinished.Before(next) {
				next = unfinished
			}
			cursor = next
			for id, start := range printed {
				if start.Before(cursor) {
					delete(printed, id)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}
