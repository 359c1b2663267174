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

#include "portrelay/config.h"
#include "portrelay/relay.h"

struct worker_pool;

/*
 * Opens `count` workers, each binding every port of the enabled forwards.
 * fd_limit sizes the splice pipe pools. NULL after logging on failure.
 */
struct worker_pool *worker_pool_open(const struct config *cfg, unsigned count,
				     unsigned long fd_limit);

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
 * Counters of all workers added up: every forward's and the process's.
 * Safe while the workers run (see struct relay_counters); call on the main
 * thread.
 */
void worker_pool_counters(const struct worker_pool *pool, struct relay_counters *sum);

/* One forward's counters (index into config->forwards), all workers added up. */
void worker_pool_forward_counters(const struct worker_pool *pool, size_t forward,
				  struct relay_counters *sum);

/* UDP flows open now for one forward, in every worker. */
unsigned worker_pool_udp_flows_open(const struct worker_pool *pool, size_t forward);

/* Stops the workers and closes every session, flow and socket (counted). */
void worker_pool_close(struct worker_pool *pool);

void worker_pool_free(struct worker_pool *pool);

#endif
