package chunkstore

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSummerMatchesBlocks(t *testing.T) {
	data := content(1, 3*bs+17)
	var whole summer
	whole.write(data)
	// Fed in odd pieces, the sums are the same.
	var pieces summer
	for rest := data; len(rest) > 0; {
		k := min(len(rest), 1000+len(rest)%777)
		pieces.write(rest[:k])
		rest = rest[k:]
	}
	want, got := whole.meta(), pieces.meta()
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(chunkMeta{})); diff != "" {
		t.Errorf("piecewise sums (-want +got):\n%s", diff)
	}
	if len(want.blocks) != 4 || want.length != int64(len(data)) {
		t.Errorf("meta = %d bytes in %d blocks, want %d in 4", want.length, len(want.blocks), len(data))
	}
	round, err := decodeMeta(want.encode())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, round, cmp.AllowUnexported(chunkMeta{})); diff != "" {
		t.Errorf("decode(encode(m)) (-want +got):\n%s", diff)
	}
}

func TestMetaDecodeRejects(t *testing.T) {
	good := (&chunkMeta{length: bs + 1, crc: 7, blocks: []uint32{1, 2}}).encode()
	wrongCount := (&chunkMeta{length: bs + 1, crc: 7, blocks: []uint32{1}}).encode()
	for _, tt := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", good[:10]},
		{"bad magic", append([]byte("XXXX"), good[4:]...)},
		{"truncated", good[:len(good)-1]},
		{"bit flip", append(append([]byte{}, good[:9]...), append([]byte{good[9] ^ 1}, good[10:]...)...)},
		{"block count", wrongCount},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := decodeMeta(tt.b); !errors.Is(err, ErrCorrupt) {
				t.Errorf("decodeMeta = %v, want %v", err, ErrCorrupt)
			}
		})
	}
}
