/*
 * worker.h - the event-loop threads. Each worker owns one event_base and one
 * relay_ctx with its own listeners, UDP sockets, sessions and flows; the
 * kernel spreads new connections and UDP 4-tuples across the workers'
 * SO_REUSEPORT sockets, so a session or flow lives on one thread and the data
 * path takes no lock. Worker 0 runs on the main thread, which also handles
 * signals; with one worker nothing else runs.
 */
#ifndef PORTRELAY_WORKER_H
#define PORTRELAY_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "portrelay/counters.h"
#include "portrelay/relay.h"
#include "portrelay/ruleset.h"

struct worker_pool;

/*
 * Whether the forwards with source = "client" can work here: the process
 * may set IP_TRANSPARENT (CAP_NET_ADMIN) and keeps the right (no user =).
 * -1 with the reason, naming the forward, in err.
 */
int worker_check_transparent(const struct config *cfg, char *err, size_t len);

/* Sockets one worker binds for cfg: a TCP listener and/or a UDP socket per port. */
unsigned long worker_sockets_needed(const struct config *cfg);

/*
 * Opens `count` workers running rules (a reference is taken), each binding
 * every port of the enabled forwards. fd_limit sizes the splice pipe pools.
 * NULL after logging on failure.
 */
struct worker_pool *worker_pool_open(struct ruleset *rules, unsigned count,
				     unsigned long fd_limit);

/*
 * Applies rules (published with ruleset_new from the running ones) in every
 * worker, on the worker's own loop: ports kept keep their sockets, new ones
 * are bound, removed ones close, and connections and flows of removed or
 * changed forwards finish under their old rules (or at drain_timeout). If
 * any worker cannot bind a new port, no worker changes anything: -1, with
 * the reason in err. Call on the main thread while the pool runs.
 */
int worker_pool_reload(struct worker_pool *pool, struct ruleset *rules, char *err, size_t len);

/* The rules in force, with a reference for the caller; from any thread. */
struct ruleset *worker_pool_rules(struct worker_pool *pool);

/* Reloads by result, for the metrics; counted by whoever runs them. */
void worker_pool_count_reload(struct worker_pool *pool, bool succeeded);
void worker_pool_reloads(struct worker_pool *pool, uint64_t *succeeded, uint64_t *failed);

/* Worker 0's event base: the main thread's, where signals are handled. */
struct event_base *worker_pool_main_base(struct worker_pool *pool);

/* Worker 0's context (for its socket counts). */
const struct relay_ctx *worker_pool_first(const struct worker_pool *pool);

/* Runs every worker until worker_pool_stop; returns when all have stopped. */
int worker_pool_run(struct worker_pool *pool);

/* Asks every worker to stop; call on the main thread (from a signal event). */
void worker_pool_stop(struct worker_pool *pool);

/*
 * The graceful stop (SIGTERM with shutdown_timeout > 0): every worker stops
 * accepting and closes its UDP sockets; TCP sessions go on until they end,
 * then the pool stops, or at the latest after `timeout` seconds (logged with
 * the number of connections cut). Call on the main thread; returns at once.
 */
void worker_pool_drain(struct worker_pool *pool, double timeout);

/*
 * Counters of all workers added up over the process's life: every
 * forward's, those of forwards reloads removed, and the process's. Safe
 * while the workers run (see struct relay_counters).
 */
void worker_pool_counters(struct worker_pool *pool, struct relay_counters *sum);

/* The process's blocks (events no forward owns), all workers added up. */
void worker_pool_process_counters(const struct worker_pool *pool, struct relay_counters *sum);

/* Stops the workers and closes every session, flow and socket (counted). */
void worker_pool_close(struct worker_pool *pool);

void worker_pool_free(struct worker_pool *pool);

#endif
