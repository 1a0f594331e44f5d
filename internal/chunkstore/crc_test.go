package chunkstore

import (
	"hash/crc32"
	"testing"

	"github.com/shoal-dev/shoal/api"
)

func TestCombineCRC(t *testing.T) {
	data := content(7, 3*bs+4321)
	whole := crc32.Checksum(data, castagnoli)
	for _, cut := range []int{0, 1, 17, bs - 1, bs, bs + 1, 2 * bs, 2*bs + 999, 3 * bs, len(data) - 1, len(data)} {
		a, b := data[:cut], data[cut:]
		got := CombineCRC(crc32.Checksum(a, castagnoli), crc32.Checksum(b, castagnoli), int64(len(b)))
		if got != whole {
			t.Errorf("CombineCRC at %d = %08x, want %08x", cut, got, whole)
		}
	}
}

func TestSummerWholeCRC(t *testing.T) {
	for _, n := range []int{0, 1, bs - 1, bs, bs + 1, 5*bs + 77} {
		data := content(uint64(n), n)
		var s summer
		for rest := data; len(rest) > 0; {
			k := min(len(rest), 3000+len(rest)%5000)
			s.write(rest[:k])
			rest = rest[k:]
		}
		m := s.meta()
		if want := crc32.Checksum(data, castagnoli); m.crc != want || m.blocksCRC() != want {
			t.Errorf("%d bytes: summer CRC %08x, from its blocks %08x; want %08x", n, m.crc, m.blocksCRC(), want)
		}
		if len(m.blocks) != int((int64(n)+api.BlockSize-1)/api.BlockSize) {
			t.Errorf("%d bytes: %d block checksums", n, len(m.blocks))
		}
	}
}
