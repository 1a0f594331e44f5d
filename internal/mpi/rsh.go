package mpi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/shoal-dev/shoal/api"
)

// PostLaunch sends a launch request (a [LaunchRequest] or a
// [PeerLaunchRequest]) to an agent and returns the body of frames it
// streams back. A refusal (any non-2xx answer) is an *api.Error carrying
// the agent's message. Cancelling ctx, or closing the body before its end,
// makes the agent kill the command.
func PostLaunch(ctx context.Context, client *http.Client, url string, header http.Header, req any) (io.ReadCloser, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("mpi: %w", err)
	}
	for k, v := range header {
		hr.Header[k] = v
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("mpi: launch request to %s: %w", url, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var eb api.ErrorBody
		if json.Unmarshal(b, &eb) == nil && eb.Error.Message != "" {
			return nil, &api.Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
		}
		return nil, &api.Error{Status: resp.StatusCode, Code: api.CodeInternal,
			Message: fmt.Sprintf("%s answered %s: %s", url, resp.Status, strings.TrimSpace(string(b)))}
	}
	return resp.Body, nil
}

// RSH is `shoal mpi rsh HOST COMMAND...`, the remote-launch agent mpirun
// calls: it asks the agent at agentAddr (SHOAL_AGENT_ADDR) to run command
// on host in the same job, for the run whose secret is given
// (SHOAL_RUN_SECRET), copies the command's output to stdout and stderr and
// returns its exit status, reaching the agent through client. Like ssh, it returns an error (the caller
// prints it and exits 255) when the command could not be run.
func RSH(ctx context.Context, client *http.Client, agentAddr, secret, host string, command []string, stdout, stderr io.Writer) (int, error) {
	if agentAddr == "" || secret == "" {
		return -1, fmt.Errorf("mpi rsh: SHOAL_AGENT_ADDR and SHOAL_RUN_SECRET must be set; it runs only inside a task of an mpi job")
	}
	if host == "" || len(command) == 0 {
		return -1, fmt.Errorf("mpi rsh: usage: shoal mpi rsh HOST COMMAND...")
	}
	if !strings.Contains(agentAddr, "://") {
		agentAddr = "http://" + agentAddr
	}
	h := http.Header{}
	h.Set(api.RunSecretHeader, secret)
	body, err := PostLaunch(ctx, client, strings.TrimSuffix(agentAddr, "/")+"/v1/local/launch", h,
		LaunchRequest{Host: host, Command: command})
	if err != nil {
		return -1, fmt.Errorf("mpi rsh: %s: %w", host, err)
	}
	defer body.Close()
	status, err := Follow(body, stdout, stderr)
	if err != nil {
		return -1, fmt.Errorf("mpi rsh: %s: %w", host, err)
	}
	return status, nil
}
