package functions

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
)

// agentURL returns the URL of an agent's endpoint.
func (s *Service) agentURL(addr, pathQuery string) string {
	return s.cfg.AgentScheme + "://" + addr + pathQuery
}

// callAgent sends one request to an agent within agentTimeout and decodes
// a JSON answer into out (when out is not nil).
func (s *Service) callAgent(ctx context.Context, method, addr, pathQuery string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.agentURL(addr, pathQuery), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.agents.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("functions: %s %s: %s: %s", method, pathQuery, resp.Status, bytes.TrimSpace(msg))
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// gather GETs pathQuery from every agent at once, each within
// agentTimeout. It returns the answers by node name and the names of the
// nodes that did not answer (or failed), sorted.
func gather[T any](ctx context.Context, s *Service, agents []Agent, pathQuery string) (map[string]*T, []string) {
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		answers = map[string]*T{}
		missing []string
	)
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := new(T)
			err := s.callAgent(ctx, http.MethodGet, a.Addr, pathQuery, nil, out)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				s.log.Debug("agent did not answer", "node", a.Node, "path", pathQuery, "err", err)
				missing = append(missing, a.Node)
				return
			}
			answers[a.Node] = out
		}()
	}
	wg.Wait()
	sort.Strings(missing)
	return answers, missing
}
