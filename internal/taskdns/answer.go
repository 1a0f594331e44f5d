package taskdns

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Message sizes (RFC 1035 section 4.2.1, RFC 6891 section 6.2.5).
const (
	// maxMsgSize is the largest DNS message, bounded by TCP's length prefix.
	maxMsgSize = 65535
	// minUDPSize is the UDP payload every client accepts, and the only one
	// a client without EDNS accepts.
	minUDPSize = 512
	// maxUDPSize is the largest UDP answer sent and the payload size
	// advertised in our OPT record: large enough for any answer of the
	// cluster, small enough not to be fragmented on common paths.
	maxUDPSize = 1232
)

// handler turns one query message into its answer. It holds no sockets, so
// the fuzz test drives it directly.
type handler struct {
	lookup       func(ctx context.Context, label string) ([]netip.Addr, bool, error)
	upstreams    []string
	ttl          uint32 // seconds
	relayTimeout time.Duration
	log          *slog.Logger
}

func newHandler(cfg Config) *handler {
	ttl := cfg.TTL
	if ttl == 0 {
		ttl = defaultTTL
	}
	ttl = max(ttl, 0)
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &handler{
		lookup:       cfg.Lookup,
		upstreams:    append([]string(nil), cfg.Upstream...),
		ttl:          uint32(min(ttl/time.Second, 1<<31-1)),
		relayTimeout: relayTimeout,
		log:          log,
	}
}

// query is what respond keeps of a parsed request.
type query struct {
	hdr      dnsmessage.Header
	question dnsmessage.Question
	edns     bool // the request carried an OPT record
	limit    int  // the largest answer the client accepts
}

// respond answers req, a query received over TCP when tcp is true, over UDP
// otherwise. It returns nil for a message that must not be answered: one
// that does not parse, or is itself a response (answering those would let
// two servers bounce packets at each other forever).
func (h *handler) respond(ctx context.Context, req []byte, tcp bool) []byte {
	var p dnsmessage.Parser
	hdr, err := p.Start(req)
	if err != nil || hdr.Response {
		return nil
	}
	questions, err := p.AllQuestions()
	if err != nil {
		return nil
	}
	q := query{hdr: hdr, limit: maxMsgSize}
	if size, ok, err := ednsSize(&p); err != nil {
		return nil
	} else if ok {
		q.edns = true
		if !tcp {
			q.limit = min(max(size, minUDPSize), maxUDPSize)
		}
	} else if !tcp {
		q.limit = minUDPSize
	}

	if len(questions) != 1 {
		// RFC 9619: a query has exactly one question. The answer echoes none,
		// as there is no single one to echo.
		return q.reply(nil, dnsmessage.RCodeFormatError, false, nil)
	}
	q.question = questions[0]
	if hdr.OpCode != 0 {
		return q.reply(&q.question, dnsmessage.RCodeNotImplemented, false, nil)
	}

	if label, ok := clusterLabel(q.question); ok {
		lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
		addrs, claimed, err := h.lookup(lctx, label)
		cancel()
		if err != nil {
			h.log.Warn("taskdns: lookup failed", "label", label, "err", err)
			return q.reply(&q.question, dnsmessage.RCodeServerFailure, false, nil)
		}
		if claimed {
			return h.answerCluster(&q, addrs)
		}
	}

	if len(h.upstreams) == 0 {
		return q.reply(&q.question, dnsmessage.RCodeRefused, false, nil)
	}
	resp, err := h.relay(ctx, req, hdr.ID, tcp)
	if err != nil {
		h.log.Debug("taskdns: relay failed", "name", q.question.Name.String(), "err", err)
		return q.reply(&q.question, dnsmessage.RCodeServerFailure, false, nil)
	}
	return resp
}

// clusterLabel returns the lowercased first label of an Internet-class
// question, and false when the question cannot name a task: the root name,
// another class, or a first label with bytes other than letters, digits,
// '-' and '_' (Lookup never sees those).
func clusterLabel(q dnsmessage.Question) (string, bool) {
	if q.Class != dnsmessage.ClassINET {
		return "", false
	}
	name := q.Name.Data[:q.Name.Length]
	var label []byte
	for _, c := range name {
		switch {
		case c == '.':
			return string(label), len(label) > 0
		case 'A' <= c && c <= 'Z':
			label = append(label, c+('a'-'A'))
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
			label = append(label, c)
		default:
			return "", false
		}
	}
	// Parsed names always end with a dot; a name without one is not ours.
	return "", false
}

// answerCluster answers a question Lookup claimed: NXDOMAIN when the name
// has no address, else the addresses of the question's type (A or AAAA),
// which may be none (NODATA).
func (h *handler) answerCluster(q *query, addrs []netip.Addr) []byte {
	if len(addrs) == 0 {
		return q.reply(&q.question, dnsmessage.RCodeNameError, true, nil)
	}
	var records []dnsmessage.Resource
	for _, a := range addrs {
		a = a.Unmap()
		rh := dnsmessage.ResourceHeader{Name: q.question.Name, Class: dnsmessage.ClassINET, TTL: h.ttl}
		switch {
		case q.question.Type == dnsmessage.TypeA && a.Is4():
			rh.Type = dnsmessage.TypeA
			records = append(records, dnsmessage.Resource{Header: rh, Body: &dnsmessage.AResource{A: a.As4()}})
		case q.question.Type == dnsmessage.TypeAAAA && a.Is6():
			rh.Type = dnsmessage.TypeAAAA
			records = append(records, dnsmessage.Resource{Header: rh, Body: &dnsmessage.AAAAResource{AAAA: a.As16()}})
		}
	}
	return q.reply(&q.question, dnsmessage.RCodeSuccess, true, records)
}

// reply builds the answer to q with the given question (nil: none), rcode
// and answer records. An answer larger than q.limit is sent without its
// records and with the TC bit, so the client retries over TCP.
func (q *query) reply(question *dnsmessage.Question, rcode dnsmessage.RCode, authoritative bool, answers []dnsmessage.Resource) []byte {
	hdr := dnsmessage.Header{
		ID:                 q.hdr.ID,
		Response:           true,
		OpCode:             q.hdr.OpCode,
		Authoritative:      authoritative,
		RecursionDesired:   q.hdr.RecursionDesired,
		RecursionAvailable: true,
		CheckingDisabled:   q.hdr.CheckingDisabled,
		RCode:              rcode,
	}
	msg, err := q.pack(hdr, question, answers)
	if err == nil && len(msg) <= q.limit {
		return msg
	}
	hdr.Truncated = true
	msg, err = q.pack(hdr, question, nil)
	if err != nil || len(msg) > q.limit {
		// Only a question too long for the limit gets here, which a parsed
		// query within the limit cannot have; send nothing rather than
		// something oversized.
		return nil
	}
	return msg
}

// pack builds one message, with an OPT record when the query had one.
func (q *query) pack(hdr dnsmessage.Header, question *dnsmessage.Question, answers []dnsmessage.Resource) ([]byte, error) {
	b := dnsmessage.NewBuilder(make([]byte, 0, minUDPSize), hdr)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if question != nil {
		if err := b.Question(*question); err != nil {
			return nil, err
		}
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	for _, r := range answers {
		var err error
		switch body := r.Body.(type) {
		case *dnsmessage.AResource:
			err = b.AResource(r.Header, *body)
		case *dnsmessage.AAAAResource:
			err = b.AAAAResource(r.Header, *body)
		}
		if err != nil {
			return nil, err
		}
	}
	if q.edns {
		if err := b.StartAdditionals(); err != nil {
			return nil, err
		}
		var rh dnsmessage.ResourceHeader
		if err := rh.SetEDNS0(maxUDPSize, dnsmessage.RCodeSuccess, false); err != nil {
			return nil, err
		}
		if err := b.OPTResource(rh, dnsmessage.OPTResource{}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// ednsSize parses the rest of a query after its questions and returns the
// UDP payload size of its OPT record, if it has one (RFC 6891).
func ednsSize(p *dnsmessage.Parser) (size int, ok bool, err error) {
	if err := p.SkipAllAnswers(); err != nil {
		return 0, false, err
	}
	if err := p.SkipAllAuthorities(); err != nil {
		return 0, false, err
	}
	for {
		rh, err := p.AdditionalHeader()
		if err == dnsmessage.ErrSectionDone {
			return size, ok, nil
		}
		if err != nil {
			return 0, false, err
		}
		if rh.Type == dnsmessage.TypeOPT {
			size, ok = int(rh.Class), true
		}
		if err := p.SkipAdditional(); err != nil {
			return 0, false, err
		}
	}
}
