package cli

import (
	"context"
	"errors"

	"github.com/coder/websocket"

	"hypeman/internal/api/execws"
)

// dialWS opens one of the API's WebSockets (exec, cp) for an instance.
// Refusals before the upgrade are ordinary error responses and come back
// as *APIError, like every other call; an unreachable server as *ConnError.
func (a *app) dialWS(ctx context.Context, instance, endpoint string) (*websocket.Conn, error) {
	u, err := a.serverURL()
	if err != nil {
		return nil, err
	}
	d := execws.Dialer{BaseURL: u.String(), Token: a.apiKey(), UserAgent: userAgent(), HTTPClient: a.httpClient}
	conn, err := d.Open(ctx, instance, endpoint)
	if err != nil {
		var re *execws.RefusedError
		if errors.As(err, &re) {
			return nil, a.apiError(re.Status, re.Body)
		}
		return nil, a.transportError(ctx, err)
	}
	return conn, nil
}
