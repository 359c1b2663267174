/*
 * admin.h - the admin endpoint: GET /metrics (Prometheus text format) and
 * GET /status (JSON), served with libevent's evhttp on `admin.listen`
 * (IP:PORT or a Unix socket path), behind a bearer token when
 * `admin.token_file` is set.
 *
 * It runs an event base of its own on a thread of its own: no worker's loop
 * ever serves a request, so a slow scrape cannot delay relaying. It reads
 * the workers' counters without stopping them (see struct relay_counters)
 * and the forward table, which is immutable while it runs.
 */
#ifndef PORTRELAY_ADMIN_H
#define PORTRELAY_ADMIN_H

#include "portrelay/config.h"
#include "portrelay/worker.h"

struct admin;

/*
 * Reads the token, binds cfg->admin_listen and starts serving; cfg and pool
 * must outlive the result. NULL after logging (token unreadable or empty,
 * address in use, ...): the caller exits 1. Call only when
 * cfg->admin_listen is set.
 */
struct admin *admin_open(const struct config *cfg, struct worker_pool *pool);

/* Stops serving, closes the socket (removes a Unix socket file), frees. */
void admin_free(struct admin *admin);

#endif
