package api

import (
	"archive/zip"
	"strings"
	"testing"
)

func TestCheckBundleSize(t *testing.T) {
	file := func(n uint64) *zip.File { return &zip.File{FileHeader: zip.FileHeader{UncompressedSize64: n}} }
	for _, tc := range []struct {
		name  string
		files []*zip.File
		want  string
	}{
		{"small", []*zip.File{file(10 << 20), file(1)}, ""},
		{"exactly the limit", []*zip.File{file(MaxBundleUnpackedBytes)}, ""},
		{"a bomb", []*zip.File{file(MaxBundleUnpackedBytes), file(1)}, "unpacks to more than"},
		{"too many entries", make([]*zip.File, MaxBundleFiles+1), "entries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, f := range tc.files {
				if f == nil {
					tc.files[i] = file(0)
				}
			}
			err := CheckBundleSize(tc.files)
			if got := ""; err != nil {
				got = err.Error()
				if tc.want == "" || !strings.Contains(got, tc.want) {
					t.Errorf("got %q, want an error naming %q", got, tc.want)
				}
			} else if tc.want != "" {
				t.Errorf("got no error, want one naming %q", tc.want)
			}
		})
	}
}
