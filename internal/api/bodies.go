package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// CodeUnsupportedMediaType answers a body in a charset other than UTF-8.
const CodeUnsupportedMediaType = "unsupported_media_type"

// strictJSON holds JSON request bodies to what the spec means and the
// decoders downstream do not check: exactly one JSON value (the request
// validator and the generated decoders both stop after the first value, so
// `{"name":"a"}xyz` would pass), UTF-8 only (JSON has no other charset; a
// latin1 body would be silently mangled), and valid UTF-8 bytes (Go's
// decoder replaces invalid ones with U+FFFD instead of failing). It runs
// after maxBody, so reading the body whole is bounded.
func strictJSON(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			next.ServeHTTP(w, r) // not JSON: the validator answers
			return
		}
		if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "utf8") {
			writeJSONError(w, http.StatusUnsupportedMediaType, CodeUnsupportedMediaType,
				"Content-Type charset "+cs+" is not supported: send the JSON body as UTF-8 (charset=utf-8, or no charset)")
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			// 413 past maxBody, 408 past the connection's body deadline.
			e := validationError(err, http.StatusBadRequest)
			writeJSONError(w, e.Status, e.Code, e.Message)
			return
		}
		if msg := checkSingleJSONValue(body); msg != "" {
			writeJSONError(w, http.StatusBadRequest, CodeInvalidRequest, "invalid request body: "+msg)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}

// checkSingleJSONValue returns why body is not one UTF-8 JSON value
// followed only by whitespace ("" when it is, or when the value itself is
// malformed: the validator words that better).
func checkSingleJSONValue(body []byte) string {
	if !utf8.Valid(body) {
		return "not valid UTF-8"
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var v json.RawMessage
	if err := dec.Decode(&v); err != nil {
		return ""
	}
	off := dec.InputOffset()
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return "unexpected data after the JSON value at offset " + strconv.FormatInt(off, 10) + " (send exactly one JSON value)"
	}
	return ""
}
