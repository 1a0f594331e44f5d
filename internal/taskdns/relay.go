package taskdns

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// relayTimeout is how long one upstream has to answer a relayed query.
const relayTimeout = 2 * time.Second

var (
	errNoUpstream = errors.New("taskdns: no upstream answered")
	errBadReply   = errors.New("taskdns: upstream reply does not match the query")
)

// relay sends req unchanged to the upstreams in order, over TCP when tcp is
// true, and returns the first reply, unchanged too. Each upstream has
// relayTimeout to answer.
func (h *handler) relay(ctx context.Context, req []byte, id uint16, tcp bool) ([]byte, error) {
	errs := []error{errNoUpstream}
	for _, up := range h.upstreams {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		resp, err := exchange(ctx, up, req, id, tcp, h.relayTimeout)
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", up, err))
	}
	return nil, errors.Join(errs...)
}

// exchange sends one query to upstream and waits for the reply with the same
// ID. Over UDP, stray datagrams with another ID are skipped; the socket is
// connected, so only upstream's own datagrams arrive.
func exchange(ctx context.Context, upstream string, req []byte, id uint16, tcp bool, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	network := "udp"
	if tcp {
		network = "tcp"
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, upstream)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	// Server.Close cancels ctx; unblock the reads at once rather than at the deadline.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()

	if tcp {
		if err := writeTCPMsg(c, req); err != nil {
			return nil, err
		}
		resp, err := readTCPMsg(c)
		if err != nil {
			return nil, err
		}
		if !isReplyTo(resp, id) {
			return nil, errBadReply
		}
		return resp, nil
	}

	if _, err := c.Write(req); err != nil {
		return nil, err
	}
	buf := make([]byte, maxMsgSize)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if isReplyTo(buf[:n], id) {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

// isReplyTo reports whether msg has a DNS header marking it as the response
// with the given ID.
func isReplyTo(msg []byte, id uint16) bool {
	var p dnsmessage.Parser
	hdr, err := p.Start(msg)
	return err == nil && hdr.Response && hdr.ID == id
}

// Upstreams reads the nameserver lines of the resolv.conf file at path and
// returns their addresses as "ip:53", in order and without duplicates. It
// skips loopback nameservers (a stub resolver on the host is not the one to
// relay to) and IPv6 ones (the tasks' networks are IPv4). A file that cannot
// be read has no nameservers.
func Upstreams(resolvConf string) []string {
	data, err := os.ReadFile(resolvConf)
	if err != nil {
		return nil
	}
	var out []string
	seen := make(map[netip.Addr]bool)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		a = a.Unmap()
		if !a.Is4() || a.IsLoopback() || a.IsUnspecified() || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, netip.AddrPortFrom(a, 53).String())
	}
	return out
}
