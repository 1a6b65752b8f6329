-- SPDX-License-Identifier: MIT
-- sluice analytics: one row per request, written by sluice with COPY.
-- sluice applies this at start (it is embedded in the binary); it only
-- creates what is missing, so running it again is harmless.
CREATE TABLE IF NOT EXISTS sluice_requests (
    time            timestamptz      NOT NULL, -- the request's first byte
    route           text,                      -- "<server>/<prefix>", NULL when no route matched
    method          text,
    path            text             NOT NULL, -- request target as received (cut at 200 bytes)
    status          integer          NOT NULL, -- 0: no response was sent
    duration_ms     double precision NOT NULL, -- first byte to response complete
    upstream_ms     double precision,          -- request sent to upstream response head; NULL: none
    cache_status    text,                      -- HIT, MISS, STALE...; NULL: the route does not cache
    upstream_server text,                      -- "<upstream>/<host:port>"
    retries         integer          NOT NULL DEFAULT 0,
    client_key      text             NOT NULL, -- keyed hash of the client IP, never the IP
    request_id      text
);
-- Rows arrive in time order and are never updated: BRIN indexes are tiny and
-- nearly free to maintain (a btree on (route, time) doubled the server's CPU
-- per inserted row).  Queries select a time range first (scripts/report).
CREATE INDEX IF NOT EXISTS sluice_requests_time_idx ON sluice_requests USING brin (time);
CREATE INDEX IF NOT EXISTS sluice_requests_route_time_idx ON sluice_requests USING brin (route, time);
