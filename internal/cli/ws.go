package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/coder/websocket"
)

// wsReadLimit bounds one server message (output chunks are at most 32 KiB).
const wsReadLimit = 4 << 20

// dialWS opens one of the API's WebSockets (exec, cp) for an instance.
// Refusals before the upgrade are ordinary error responses and come back
// as *APIError, like every other call; an unreachable server as *ConnError.
func (a *app) dialWS(ctx context.Context, instance, endpoint string) (*websocket.Conn, error) {
	u, err := a.serverURL()
	if err != nil {
		return nil, err
	}
	u.Path += "/instances/" + url.PathEscape(instance) + "/" + endpoint
	u.RawPath = ""
	h := http.Header{}
	h.Set("User-Agent", userAgent())
	if key := a.apiKey(); key != "" {
		h.Set("Authorization", "Bearer "+key)
	}
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{
		HTTPClient: a.httpClient, HTTPHeader: h, CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
			return nil, a.apiError(resp.StatusCode, body)
		}
		return nil, a.transportError(ctx, err)
	}
	conn.SetReadLimit(wsReadLimit)
	return conn, nil
}

// endedEarly describes a connection that closed before the final message.
func endedEarly(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return fmt.Errorf("the server closed the connection before the end (status %d %s)", ce.Code, ce.Reason)
	}
	return fmt.Errorf("connection to the server lost: %w", err)
}

func sendJSON(ctx context.Context, conn *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return conn.Write(ctx, websocket.MessageText, b)
}
