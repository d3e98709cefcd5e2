package ct

import (
	"errors"
	"io"
	"net/http"
)

// maxResponse bounds what a log may send back. An add-pre-chain answer is a
// few hundred bytes; error pages are small too. A larger body is cut and
// reported rather than read into memory.
const maxResponse = 64 << 10

var errResponseTooLarge = errors.New("ct: log response larger than 64 KiB")

// limitTransport wraps a RoundTripper so that response bodies fail once
// they exceed max bytes.
type limitTransport struct {
	base http.RoundTripper
	max  int64
}

func (t limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: t.max}
	return resp, nil
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One more byte tells a body of exactly max bytes from a longer one.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, errResponseTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// limitClient returns a copy of hc whose responses are bounded.
func limitClient(hc *http.Client) *http.Client {
	c := *hc
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c.Transport = limitTransport{base: base, max: maxResponse}
	return &c
}
