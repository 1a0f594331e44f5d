package api_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
)

func TestFramedRoundTrip(t *testing.T) {
	for _, want := range []*api.SandboxResult{
		{Node: "n1", Payload: []byte(`{"a":"é"}` + "\xff\x00"), LogTail: []byte("log\xff\n"), FunctionError: "Unhandled"},
		{Node: "n2", Declined: true, Load: 3},
	} {
		rec := httptest.NewRecorder()
		if err := api.WriteFramed(rec, http.StatusConflict, want, want.Payload); err != nil {
			t.Fatal(err)
		}
		if rec.Code != http.StatusConflict || !api.IsFramed(rec.Header()) {
			t.Fatalf("answer %d with headers %v, want a framed 409", rec.Code, rec.Header())
		}
		var got api.SandboxResult
		p, err := api.ReadFramed(rec.Header(), rec.Body, api.MaxInvokePayload, &got)
		if err != nil {
			t.Fatal(err)
		}
		got.Payload = p
		if len(want.Payload) == 0 {
			got.Payload = nil
		}
		if diff := cmp.Diff(want, &got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	}
}

func TestReadFramedRefuses(t *testing.T) {
	const doc = `{"node":"n"}`
	for _, tc := range []struct {
		name, length, body string
		max                int
		want               string
	}{
		{"no header", "", doc + "p", 10, api.HeaderMetaLength},
		{"not a number", "x", doc, 10, api.HeaderMetaLength},
		{"too long a document", "1048577", doc, 10, api.HeaderMetaLength},
		{"body shorter than the document", "50", doc, 10, "50-byte JSON document"},
		{"document not JSON", "5", "{nope", 10, "decoding"},
		{"payload too large", "12", doc + "12345678901", 10, "over 10 bytes"},
	} {
		h := http.Header{}
		if tc.length != "" {
			h.Set(api.HeaderMetaLength, tc.length)
		}
		var r api.SandboxResult
		_, err := api.ReadFramed(h, strings.NewReader(tc.body), tc.max, &r)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	h := http.Header{}
	h.Set(api.HeaderMetaLength, "12")
	var r api.SandboxResult
	if p, err := api.ReadFramed(h, bytes.NewReader([]byte(doc+"1234567890")), 10, &r); err != nil || string(p) != "1234567890" || r.Node != "n" {
		t.Errorf("a payload of exactly the limit: %q, %+v, %v", p, r, err)
	}
}
