// Package testzip makes zip archives for tests: function bundles, and
// archives that are wrong on purpose. It imports no Shoal package, so
// that any package's tests may use it.
package testzip

import (
	"archive/zip"
	"bytes"
	"io"
	"io/fs"
	"testing"
)

// File is one entry of an archive.
type File struct {
	Name string
	Mode fs.FileMode
	Data string
}

// storeAbove is the size past which an entry is stored uncompressed:
// quick to pack and unpack under the race detector.
const storeAbove = 1 << 20

// Bytes returns a zip archive of files, in their order, with their
// modes.
func Bytes(tb testing.TB, files ...File) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range files {
		method := zip.Deflate
		if len(f.Data) > storeAbove {
			method = zip.Store
		}
		h := &zip.FileHeader{Name: f.Name, Method: method}
		h.SetMode(f.Mode)
		w, err := zw.CreateHeader(h)
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := io.WriteString(w, f.Data); err != nil {
			tb.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}
