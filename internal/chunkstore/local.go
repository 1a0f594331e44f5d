package chunkstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// Short-circuit local reads.
//
// A client on the same host as a data node reads a chunk's files itself
// instead of receiving the bytes over HTTP: it asks the data node, over a
// unix socket, to open the chunk and receives open read-only descriptors of
// the chunk's data file and of its metadata file (SCM_RIGHTS). It then
// reads the data with its own system calls and verifies every block against
// the metadata's CRC32Cs ([LocalChunk]): no byte crosses a socket, and each
// is checksummed once.
//
// The protocol is one JSON request per packet (SOCK_SEQPACKET keeps packet
// boundaries) and one JSON answer, [localAnswer], per request:
//
//	{"op":"open","chunk":ID}     answer, with two descriptors: data, metadata
//	{"op":"verify","chunk":ID}   answer once the node has read the whole chunk
//
// A client sends verify when a block it read failed its checksum: the node
// checks the chunk itself and, if it is corrupt, drops it and reports it
// exactly as when its own reads find corruption. A client cannot make a
// node drop a sound replica.
//
// Every answer carries the node's name, so that a client can check that the
// socket it reached belongs to the replica's node before it trusts what it
// reads. Who may connect is up to the socket's file mode and directory (the
// agent makes both root-only) and to [LocalServer]'s peer check.

// Short-circuit operations.
const (
	localOpen   = "open"
	localVerify = "verify"
)

// localRequest is a client's request on the local socket.
type localRequest struct {
	Op    string `json:"op"`
	Chunk string `json:"chunk"`
}

// localAnswer is the data node's answer. Chunk is the chunk as the node's
// index has it (for open and verify); Error is set when the request
// failed, with the code the HTTP API would send.
type localAnswer struct {
	Node  string           `json:"node"`
	Chunk api.StoredChunk  `json:"chunk"`
	Error *api.ErrorDetail `json:"error,omitempty"`
}

const (
	// maxLocalPacket bounds requests and answers.
	maxLocalPacket = 4 << 10
	// localIdleTimeout closes a connection that sends no request for
	// this long; a request never needs long to arrive.
	localIdleTimeout = time.Minute
	// localTimeout bounds one round trip from the client when its
	// context has no earlier deadline. A verify reads a whole chunk.
	localTimeout = 2 * time.Minute
)

// LocalServer serves short-circuit reads of a store's chunks on a unix
// socket of type "unixpacket". It serves only peers running as root or as
// its own user: the socket's file mode should say the same.
type LocalServer struct {
	Store *Store
	// Node is the data node's name, sent in every answer.
	Node string
	// OnCorrupt, if set, is called once for each stored replica found
	// corrupt while serving (see [HandlerOptions].OnCorrupt).
	OnCorrupt func(id string)
	// Log receives refused peers and failures; nil means the store's.
	Log *slog.Logger
}

// Serve accepts connections on ln and serves each in its own goroutine
// until ln is closed, when it returns nil.
func (ls *LocalServer) Serve(ln *net.UnixListener) error {
	log := ls.log()
	var delay time.Duration
	for {
		c, err := ln.AcceptUnix()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			// Out of descriptors and the like: wait, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			log.Warn("accepting a short-circuit connection", "err", err)
			time.Sleep(delay)
			continue
		}
		delay = 0
		go ls.serveConn(c)
	}
}

func (ls *LocalServer) log() *slog.Logger {
	if ls.Log != nil {
		return ls.Log
	}
	return ls.Store.log
}

// serveConn answers the requests of one client, one at a time.
func (ls *LocalServer) serveConn(c *net.UnixConn) {
	defer c.Close()
	if err := checkPeer(c); err != nil {
		ls.log().Warn("refusing a short-circuit client", "err", err)
		return
	}
	buf := make([]byte, maxLocalPacket)
	for {
		c.SetReadDeadline(time.Now().Add(localIdleTimeout))
		n, _, _, _, err := c.ReadMsgUnix(buf, nil)
		if err != nil || n == 0 { // n == 0: the client closed its end
			return
		}
		ans, files := ls.handle(buf[:n])
		b, _ := json.Marshal(ans)
		var oob []byte
		if len(files) > 0 {
			fds := make([]int, len(files))
			for i, f := range files {
				fds[i] = int(f.Fd())
			}
			oob = syscall.UnixRights(fds...)
		}
		c.SetWriteDeadline(time.Now().Add(localIdleTimeout))
		_, _, err = c.WriteMsgUnix(b, oob, nil)
		// The client holds its own descriptors now (or none, on error).
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			return
		}
	}
}

// handle answers one request and returns the files to pass with the answer.
func (ls *LocalServer) handle(b []byte) (localAnswer, []*os.File) {
	ans := localAnswer{Node: ls.Node}
	var req localRequest
	if err := json.Unmarshal(b, &req); err != nil {
		ans.Error = ls.fail(fmt.Errorf("%w: short-circuit request: %v", ErrInvalid, err))
		return ans, nil
	}
	switch req.Op {
	case localOpen:
		f, mf, _, e, err := ls.Store.openChecked(req.Chunk, true)
		if err != nil {
			ans.Error = ls.fail(err)
			return ans, nil
		}
		ans.Chunk = e.StoredChunk
		return ans, []*os.File{f, mf}
	case localVerify:
		if err := ls.Store.Verify(req.Chunk); err != nil {
			ans.Error = ls.fail(err)
			return ans, nil
		}
		sc, err := ls.Store.Stat(req.Chunk)
		if err != nil {
			ans.Error = ls.fail(err)
		}
		ans.Chunk = sc
		return ans, nil
	}
	ans.Error = ls.fail(fmt.Errorf("%w: unknown short-circuit operation %q", ErrInvalid, req.Op))
	return ans, nil
}

// fail reports a corrupt replica, if err found one, and turns err into
// the answer's error.
func (ls *LocalServer) fail(err error) *api.ErrorDetail {
	var ce *CorruptError
	if errors.As(err, &ce) && ce.Dropped && ls.OnCorrupt != nil {
		ls.OnCorrupt(ce.ID)
	}
	status, code := errorStatus(err)
	if status == http.StatusInternalServerError {
		ls.log().Error("short-circuit request failed", "err", err)
	}
	return &api.ErrorDetail{Code: code, Message: err.Error()}
}

// checkPeer accepts a peer running as root or as this process's user.
func checkPeer(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("reading the peer's credentials: %w", cerr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("peer process %d runs as uid %d, neither root nor this agent's user", cred.Pid, cred.Uid)
	}
	return nil
}

// ErrLocalNode means the process behind a short-circuit socket is not the
// data node the client expected there.
var ErrLocalNode = errors.New("chunkstore: short-circuit socket belongs to another node")

// localRoundTrip sends one request to the data node listening on socket
// and returns its answer and the files it passed, which the caller must
// close. An answer naming another node than node is refused (and its
// files closed) with [ErrLocalNode]; an error answer is returned as an
// error, matching the store's sentinels.
func localRoundTrip(ctx context.Context, socket, node string, req localRequest) (localAnswer, []*os.File, error) {
	if err := ValidateID(req.Chunk); err != nil {
		return localAnswer{}, nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, localTimeout)
		defer cancel()
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", socket)
	if err != nil {
		return localAnswer{}, nil, fmt.Errorf("chunkstore: short-circuit socket: %w", err)
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	b, _ := json.Marshal(req)
	if _, _, err := c.WriteMsgUnix(b, nil, nil); err != nil {
		return localAnswer{}, nil, fmt.Errorf("chunkstore: short-circuit request: %w", err)
	}
	buf := make([]byte, maxLocalPacket)
	oob := make([]byte, syscall.CmsgSpace(2*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return localAnswer{}, nil, fmt.Errorf("chunkstore: short-circuit answer: %w", err)
	}
	// Take ownership of whatever descriptors came before anything else,
	// so that every path below closes them.
	files, ferr := parseRights(oob[:oobn])
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	var ans localAnswer
	switch {
	case ferr != nil:
		err = ferr
	case flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0:
		err = errors.New("chunkstore: short-circuit answer truncated")
	case n == 0:
		err = errors.New("chunkstore: short-circuit socket closed without an answer")
	default:
		if jerr := json.Unmarshal(buf[:n], &ans); jerr != nil {
			err = fmt.Errorf("chunkstore: short-circuit answer: %w", jerr)
		}
	}
	if err == nil && ans.Node != node {
		err = fmt.Errorf("%w: %s answered, expected %s", ErrLocalNode, ans.Node, node)
	}
	if err == nil && ans.Error != nil {
		err = answerError(ans.Node, ans.Error)
	}
	if err != nil {
		closeAll()
		return localAnswer{}, nil, err
	}
	return ans, files, nil
}

// parseRights returns the files passed in a control message.
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: short-circuit control message: %w", err)
	}
	var files []*os.File
	for i := range msgs {
		fds, err := syscall.ParseUnixRights(&msgs[i])
		if err != nil {
			continue // not descriptors
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "short-circuit"))
		}
	}
	return files, nil
}

// answerError turns an error answer back into the sentinel it came from.
func answerError(node string, d *api.ErrorDetail) error {
	sentinel := errors.New("chunkstore: short-circuit request failed")
	switch d.Code {
	case api.CodeNotFound:
		sentinel = ErrNotFound
	case CodeCorrupt:
		sentinel = ErrCorrupt
	case api.CodeInvalid:
		sentinel = ErrInvalid
	}
	return fmt.Errorf("%w: %s: %s", sentinel, node, d.Message)
}

// LocalChunk is a chunk opened through its data node's short-circuit
// socket: the data file, read directly, and the block checksums to verify
// it with. Its methods may be called concurrently; Close it when done.
type LocalChunk struct {
	id string
	f  *os.File
	m  chunkMeta
}

// OpenLocal asks the data node named node, listening on socket, for chunk
// id and returns the chunk opened. It fails when nothing listens there,
// another node answers ([ErrLocalNode]), the node does not hold the chunk
// ([ErrNotFound]) or holds it corrupt (an error wrapping [ErrCorrupt]: the
// node has dropped and reported it), or the files it passes do not form a
// sound chunk (a [*CorruptError], which the caller should report with
// [VerifyLocal]).
func OpenLocal(ctx context.Context, socket, node, id string) (*LocalChunk, error) {
	ans, files, err := localRoundTrip(ctx, socket, node, localRequest{Op: localOpen, Chunk: id})
	if err != nil {
		return nil, err
	}
	if len(files) != 2 {
		for _, f := range files {
			f.Close()
		}
		return nil, fmt.Errorf("chunkstore: %s passed %d files for chunk %s, want 2", node, len(files), id)
	}
	f, mf := files[0], files[1]
	defer mf.Close()
	m, err := readMetaFile(mf)
	bad := func(reason string) error { return &CorruptError{ID: id, Block: -1, Reason: reason} }
	if err == nil && (m.length != ans.Chunk.Length || m.crc != ans.Chunk.CRC) {
		err = bad("the metadata passed differs from the node's answer")
	}
	// The block checksums must make up the chunk's: then verifying every
	// block read verifies the whole chunk, and readers need not checksum
	// it again.
	if err == nil && m.blocksCRC() != m.crc {
		err = bad("the block checksums passed do not make up the chunk's CRC32C")
	}
	if err == nil {
		var st os.FileInfo
		if st, err = f.Stat(); err == nil && (!st.Mode().IsRegular() || st.Size() != m.length) {
			err = bad(fmt.Sprintf("the data file passed is not a file of %d bytes", m.length))
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	// Chunks are read from start to end: ask for twice the read-ahead.
	// Advice is only advice; an error changes nothing.
	syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, fadvSequential, 0, 0)
	return &LocalChunk{id: id, f: f, m: m}, nil
}

// fadvSequential is POSIX_FADV_SEQUENTIAL.
const fadvSequential = 2

// Length is the chunk's length in bytes.
func (lc *LocalChunk) Length() int64 { return lc.m.length }

// CRC is the chunk's CRC32C as its metadata records it.
func (lc *LocalChunk) CRC() uint32 { return lc.m.crc }

// ReadAt reads up to len(p) bytes of the chunk at off into p and returns
// how many, with their CRC32C. Every block the bytes come from is verified
// against its stored CRC32C before any of them is returned; a bad block
// ends the read with a [*CorruptError] (not Dropped: the client does not
// own the replica; see [VerifyLocal]) after the verified bytes before it.
// Reads of whole blocks at block boundaries are checksummed once, their
// CRC being combined from the blocks'; a read that starts inside a block
// or is shorter than one verifies the whole block and returns the part
// asked for. At the chunk's end ReadAt returns 0 and io.EOF. It may be
// called concurrently.
func (lc *LocalChunk) ReadAt(p []byte, off int64) (int, uint32, error) {
	if off%api.BlockSize != 0 || (len(p) < api.BlockSize && off+int64(len(p)) < lc.m.length) {
		if off < 0 || off >= lc.m.length {
			_, err := lc.ReadRaw(p, off) // the same errors
			return 0, 0, err
		}
		return lc.readPartial(p, off)
	}
	n, err := lc.ReadRaw(p, off)
	if err != nil {
		return 0, 0, err
	}
	return lc.Verify(p[:n], off)
}

// ReadRaw is the first half of ReadAt, for a reader that checksums in
// another goroutine than it reads (one steady stream of reads keeps the
// kernel's read-ahead going): it reads whole blocks from off, a block
// boundary, up to len(p) bytes (fewer at the chunk's end; a partial block
// only there) and does not verify them. The caller must not use the bytes
// before [LocalChunk.Verify] accepted them. At the chunk's end it returns
// 0 and io.EOF.
func (lc *LocalChunk) ReadRaw(p []byte, off int64) (int, error) {
	length := lc.m.length
	switch {
	case off < 0 || off > length || off%api.BlockSize != 0 && off != length:
		return 0, fmt.Errorf("%w: offset %d is not a block boundary of chunk %s of %d bytes", ErrInvalid, off, lc.id, length)
	case off == length:
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), length-off)]
	if off+int64(len(p)) < length {
		p = p[:len(p)-len(p)%api.BlockSize] // stop at a block boundary
	}
	if len(p) == 0 {
		return 0, fmt.Errorf("%w: a raw read of chunk %s needs room for a block", ErrInvalid, lc.id)
	}
	if _, err := lc.f.ReadAt(p, off); err != nil {
		return 0, lc.readErr(err)
	}
	return len(p), nil
}

// Verify checks p, bytes that [LocalChunk.ReadRaw] read at off, against
// the blocks' stored CRC32Cs and returns how many are sound (those before
// the first bad block) with their CRC32C, combined from the blocks'. A bad
// block yields a [*CorruptError].
func (lc *LocalChunk) Verify(p []byte, off int64) (int, uint32, error) {
	first := off / api.BlockSize
	var crc uint32
	for i := 0; i < len(p); i += api.BlockSize {
		b := p[i:min(i+api.BlockSize, len(p))]
		blk := first + int64(i/api.BlockSize)
		sum := crc32.Checksum(b, castagnoli)
		if blk >= int64(len(lc.m.blocks)) || sum != lc.m.blocks[blk] {
			return i, crc, &CorruptError{ID: lc.id, Block: blk}
		}
		crc = CombineCRC(crc, sum, int64(len(b)))
	}
	return len(p), crc, nil
}

// readPartial serves a read that starts inside a block or is shorter than
// one.
func (lc *LocalChunk) readPartial(p []byte, off int64) (int, uint32, error) {
	i := off / api.BlockSize
	start := i * api.BlockSize
	blk := make([]byte, min(api.BlockSize, lc.m.length-start))
	if _, err := lc.f.ReadAt(blk, start); err != nil {
		return 0, 0, lc.readErr(err)
	}
	if crc32.Checksum(blk, castagnoli) != lc.m.blocks[i] {
		return 0, 0, &CorruptError{ID: lc.id, Block: i}
	}
	n := copy(p, blk[off-start:])
	return n, crc32.Checksum(p[:n], castagnoli), nil
}

func (lc *LocalChunk) readErr(err error) error {
	if errors.Is(err, io.EOF) {
		return &CorruptError{ID: lc.id, Block: -1, Reason: "data file is shorter than its metadata says"}
	}
	return fmt.Errorf("chunkstore: reading chunk %s: %w", lc.id, err)
}

// Close closes the chunk's data file.
func (lc *LocalChunk) Close() error { return lc.f.Close() }

// VerifyLocal asks the data node named node, listening on socket, to
// verify chunk id, as a client does after a block it read short-circuit
// failed its checksum. The node reads the whole chunk and, if it is
// corrupt, drops and reports it as it does for corruption its own reads
// find; VerifyLocal then returns an error wrapping [ErrCorrupt]. It
// returns nil when the node finds its replica sound.
func VerifyLocal(ctx context.Context, socket, node, id string) error {
	_, files, err := localRoundTrip(ctx, socket, node, localRequest{Op: localVerify, Chunk: id})
	for _, f := range files {
		f.Close()
	}
	return err
}
