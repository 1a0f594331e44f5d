package chunkstore

import (
	"sync"

	"github.com/shoal-dev/shoal/api"
)

// CRC32C arithmetic that lets the store and its readers checksum every byte
// once: the CRC of a whole chunk follows from the CRCs of its blocks, so a
// writer that checksums each block, or a reader that verifies each block,
// gets the whole-chunk CRC without a second pass over the data.
//
// With the CRC's pre- and post-conditioning, crc(A‖B) equals
// crcShift(crc(A), len(B)) XOR crc(B), where crcShift multiplies by x^(8n)
// modulo the polynomial: the linear map that feeding n zero bytes to an
// unconditioned CRC register applies (zlib's crc32_combine).

// castagnoliReversed is the CRC32C polynomial, bit-reversed as hash/crc32
// uses it.
const castagnoliReversed = 0x82f63b78

// gf2Matrix is a linear map on 32-bit vectors over GF(2): column i is the
// image of bit i.
type gf2Matrix [32]uint32

func (m *gf2Matrix) times(v uint32) uint32 {
	var sum uint32
	for i := 0; v != 0; i, v = i+1, v>>1 {
		if v&1 != 0 {
			sum ^= m[i]
		}
	}
	return sum
}

func (m *gf2Matrix) square() gf2Matrix {
	var sq gf2Matrix
	for i := range m {
		sq[i] = m.times(m[i])
	}
	return sq
}

// crcShift returns crc as it would be after n more zero bytes, without its
// conditioning: the first operand of a CRC combination.
func crcShift(crc uint32, n int64) uint32 {
	if n <= 0 {
		return crc
	}
	// op starts as the map of one zero bit, squared up to one zero byte.
	var op gf2Matrix
	op[0] = castagnoliReversed
	for i := 1; i < 32; i++ {
		op[i] = 1 << (i - 1)
	}
	op = op.square() // 2 bits
	op = op.square() // 4 bits
	op = op.square() // 8 bits
	for {
		if n&1 != 0 {
			crc = op.times(crc)
		}
		n >>= 1
		if n == 0 {
			return crc
		}
		op = op.square()
	}
}

// CombineCRC returns the CRC32C of A‖B given crcA, the CRC32C of A, and
// crcB, that of B, which is lenB bytes long. It is fast (a few table
// lookups per block) when lenB is a multiple of [api.BlockSize] and costs
// some microseconds otherwise.
func CombineCRC(crcA, crcB uint32, lenB int64) uint32 {
	if lenB <= 0 {
		return crcA
	}
	blocks, rest := lenB/api.BlockSize, lenB%api.BlockSize
	if blocks > 0 {
		t := blockShift()
		for range blocks {
			crcA = t.apply(crcA)
		}
	}
	return crcShift(crcA, rest) ^ crcB
}

// shiftTable applies a fixed crcShift with four table lookups, one per
// byte of the CRC (the map is linear, so the bytes' images add up).
type shiftTable [4][256]uint32

func (t *shiftTable) apply(crc uint32) uint32 {
	return t[0][crc&0xff] ^ t[1][crc>>8&0xff] ^ t[2][crc>>16&0xff] ^ t[3][crc>>24]
}

// blockShift is the table of crcShift by one block, the combination every
// whole block needs; it is built once, on first use.
var blockShift = sync.OnceValue(func() *shiftTable {
	var t shiftTable
	for k := range t {
		for b := range 256 {
			t[k][b] = crcShift(uint32(b)<<(8*k), api.BlockSize)
		}
	}
	return &t
})
