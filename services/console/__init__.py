"""The ops console: one web page for operators, served by its own process.

The browser talks only to this process. It holds the admin token server-side in a session
(an HttpOnly, SameSite=Strict cookie names it), and calls the reservation API, the
warehouse mock, Prometheus and Alertmanager on the operator's behalf. Counts the API does
not offer (orders by status, retry rows by state, every breaker row) are read from
PostgreSQL through a read-only connection, as aggregates only. Alertmanager's webhook
lands here too (`inbox`).

    settings.py   ConsoleSettings (STEADFAST_*)
    sessions.py   sign-in sessions and their CSRF tokens
    upstream.py   HTTP clients of the API, the mock, Prometheus and Alertmanager
    readonly.py   the aggregate PostgreSQL queries
    overview.py   the cached snapshot every open page polls, breaker transitions seen
    inbox.py      alerts delivered by Alertmanager's webhook
    security.py   security headers (CSP) as pure ASGI middleware
    app.py        the FastAPI app (composition of the above)
    cli.py        `steadfast-console`
"""
