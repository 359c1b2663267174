/*
 * admin.h - the admin endpoint: the Port Forwarding page (GET /, files of
 * www.h; POST /login, /logout), its API (/api/forwards: api.h), GET /metrics
 * (Prometheus text format) and GET /status (JSON), served with libevent's
 * evhttp on `admin.listen` (IP:PORT or a Unix socket path), behind the
 * admin token when `admin.token_file` is set (admin_auth.h: bearer header
 * or session cookie, cross-site requests refused).
 *
 * It runs an event base of its own on a thread of its own: no worker's loop
 * ever serves a request, so a slow scrape cannot delay relaying. It reads
 * the workers' counters without stopping them (see struct relay_counters)
 * and the rules in force, taking a reference to them per request
 * (worker_pool_rules): a reload may publish new ones meanwhile.
 */
#ifndef PORTRELAY_ADMIN_H
#define PORTRELAY_ADMIN_H

#include "portrelay/config.h"
#include "portrelay/worker.h"

struct admin;

/*
 * Reads the token, binds cfg->admin_listen and starts serving; apply is
 * the Port Forwarding API's way to apply a change (api.h: it runs
 * reload_run_candidate on the main thread and waits). pool must outlive the
 * result (cfg is read only here: a reload does not move the
 * admin endpoint). NULL after logging (token unreadable or empty,
 * address in use, ...): the caller exits 1. Call only when
 * cfg->admin_listen is set.
 */
struct admin *admin_open(const struct config *cfg, struct worker_pool *pool,
			 int (*apply)(void *arg, const char *candidate, char *err, size_t err_len),
			 void *apply_arg);

/* Stops serving, closes the socket (removes a Unix socket file), frees. */
void admin_free(struct admin *admin);

#endif
