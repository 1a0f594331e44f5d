package chunkstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/shoal-dev/shoal/api"
)

// castagnoli is the CRC32C table; hash/crc32 uses the CPU's CRC32
// instructions for it where they exist.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Metadata file format, little endian:
//
//	magic    [4]byte "SHCK"
//	version  uint32  (metaVersion)
//	length   uint64  chunk length in bytes
//	crc      uint32  CRC32C of the whole chunk
//	nblocks  uint32  ceil(length / api.BlockSize)
//	blocks   [nblocks]uint32  CRC32C of each block
//	trailer  uint32  CRC32C of all the bytes above
//
// The trailer makes a torn or bit-flipped metadata file detectable, so a
// bad metadata file is never mistaken for bad data or, worse, for good data.
const (
	metaMagic   = "SHCK"
	metaVersion = 1
	metaHeader  = 4 + 4 + 8 + 4 + 4
	metaSuffix  = ".meta"
)

// errMetaVersion marks a metadata file written by a newer format: the store
// refuses to open rather than treat the chunk as corrupt and delete it.
var errMetaVersion = errors.New("chunkstore: unsupported metadata version")

// chunkMeta is the content of a metadata file.
type chunkMeta struct {
	length int64
	crc    uint32
	blocks []uint32
}

func blockCount(length int64) int64 {
	return (length + api.BlockSize - 1) / api.BlockSize
}

func (m *chunkMeta) encode() []byte {
	b := make([]byte, 0, metaHeader+4*len(m.blocks)+4)
	b = append(b, metaMagic...)
	b = binary.LittleEndian.AppendUint32(b, metaVersion)
	b = binary.LittleEndian.AppendUint64(b, uint64(m.length))
	b = binary.LittleEndian.AppendUint32(b, m.crc)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.blocks)))
	for _, c := range m.blocks {
		b = binary.LittleEndian.AppendUint32(b, c)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// decodeMeta parses a metadata file. Any inconsistency is reported as
// corruption except an unknown version, which wraps errMetaVersion.
func decodeMeta(b []byte) (chunkMeta, error) {
	bad := func(why string) (chunkMeta, error) {
		return chunkMeta{}, fmt.Errorf("%w: metadata %s", ErrCorrupt, why)
	}
	if len(b) < metaHeader+4 || string(b[:4]) != metaMagic {
		return bad("has no valid header")
	}
	body, trailer := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != trailer {
		return bad("fails its own checksum")
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != metaVersion {
		return chunkMeta{}, fmt.Errorf("%w %d (this build reads %d)", errMetaVersion, v, metaVersion)
	}
	length := binary.LittleEndian.Uint64(b[8:])
	if length > api.MaxChunkSize {
		return bad(fmt.Sprintf("claims %d bytes, over the chunk size limit", length))
	}
	m := chunkMeta{length: int64(length), crc: binary.LittleEndian.Uint32(b[16:])}
	n := int64(binary.LittleEndian.Uint32(b[20:]))
	if n != blockCount(m.length) || int64(len(body)) != metaHeader+4*n {
		return bad(fmt.Sprintf("lists %d block checksums for %d bytes", n, m.length))
	}
	m.blocks = make([]uint32, n)
	for i := range m.blocks {
		m.blocks[i] = binary.LittleEndian.Uint32(body[metaHeader+4*i:])
	}
	return m, nil
}

// summer computes the per-block checksums of a stream fed to it in pieces
// of any size, and from them the whole-chunk checksum (see [CombineCRC]),
// so that each byte is checksummed once.
type summer struct {
	n      int64
	whole  uint32 // of the complete blocks
	block  uint32 // checksum of the current, incomplete block
	fill   int    // bytes in the current block
	blocks []uint32
}

func (s *summer) write(p []byte) {
	s.n += int64(len(p))
	for len(p) > 0 {
		k := min(api.BlockSize-s.fill, len(p))
		s.block = crc32.Update(s.block, castagnoli, p[:k])
		s.fill += k
		p = p[k:]
		if s.fill == api.BlockSize {
			s.whole = CombineCRC(s.whole, s.block, api.BlockSize)
			s.blocks = append(s.blocks, s.block)
			s.block, s.fill = 0, 0
		}
	}
}

// blocksCRC returns the CRC32C of the chunk as its block checksums make it
// up; it equals m.crc for a sound metadata file.
func (m *chunkMeta) blocksCRC() uint32 {
	var crc uint32
	for i, b := range m.blocks {
		crc = CombineCRC(crc, b, min(api.BlockSize, m.length-int64(i)*api.BlockSize))
	}
	return crc
}

func (s *summer) meta() chunkMeta {
	blocks, whole := s.blocks, s.whole
	if s.fill > 0 {
		blocks = append(blocks, s.block)
		whole = CombineCRC(whole, s.block, int64(s.fill))
	}
	return chunkMeta{length: s.n, crc: whole, blocks: blocks}
}
