/*
 * relay.h - the context every relay module works in.
 *
 * A relay_ctx is what one event loop (one worker) owns: its event_base, the
 * ruleset it runs, its TCP sessions, and what its listeners and UDP sockets
 * hang on. Nothing in the relay code is global, so that several contexts
 * (one per worker thread) run side by side without locks. The context sits
 * below the modules that use it (listener, tcp_relay, udp_relay, ftp_helper)
 * and calls none of them; the worker assembles them (worker.h).
 *
 * Rulesets in use. New connections take ctx->rules. A reload hands the
 * context a newer ruleset (relay_ctx_set_rules); the older one is kept,
 * "retired", while sessions (and draining UDP forwards) still run on its
 * forwards, and released when the last of them ends. Each user registers
 * with relay_ctx_take_forward / relay_ctx_release_forward: plain counts of
 * this worker, so the data path takes no lock.
 */
#ifndef PORTRELAY_RELAY_H
#define PORTRELAY_RELAY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/time.h>

#include "portrelay/config.h"
#include "portrelay/counters.h"
#include "portrelay/net.h"
#include "portrelay/pump.h"
#include "portrelay/ruleset.h"

struct event_base;
struct event;
struct listener_set;
struct source_table;
struct tcp_session;
struct udp_relay;

/* A ruleset this context has run and that still has users. */
struct relay_rules_use {
	struct ruleset *rules;
	unsigned users;
	bool retiring;                 /* a reload is moving users off it: not freed at 0 */
	uint64_t drain_deadline_ms;    /* drain_timeout: users are cut then; 0: never */
	LIST_ENTRY(relay_rules_use) link;
};
LIST_HEAD(relay_rules_uses, relay_rules_use);

TAILQ_HEAD(tcp_session_list, tcp_session);

/*
 * Shared by every worker: whether the process is out of file descriptors.
 * An episode runs from the first EMFILE/ENFILE in any worker until a new
 * session in any worker gets both its sockets, and is logged once at each
 * end. Touched only then, never on the data path.
 */
struct fd_episode {
	atomic_bool active;
	atomic_ullong started_ms;
};

/* How one context shares the machine with the others (one per worker). */
struct relay_options {
	struct fd_episode *fd_episode;
	enum net_share share;          /* several workers bind the same ports */
	unsigned max_pipes;            /* splice pipes in use at once; 0 = no splicing */
	/*
	 * Admission control, shared by every worker. The process's budgets
	 * (max_connections, max_udp_flows: main.c sizes them from the
	 * descriptor limit) keep UDP flows and TCP connections from starving
	 * each other; counted when a connection or flow opens and closes.
	 */
	struct source_table *sources;  /* per-source counts */
	atomic_uint *tcp_open_total;   /* TCP sessions open in every worker */
	unsigned max_connections;
	atomic_uint *udp_flows_total;  /* UDP flows open in every worker */
	unsigned max_udp_flows;
	/* Of those, the flows that take a local port (not source = "client"). */
	atomic_uint *udp_ported_total;
	unsigned max_udp_ported;
	/*
	 * Descriptors TCP connections (two each) and UDP flows (one each)
	 * share, and what each keeps for itself: the other may take all but
	 * that (relay_fds_allow).
	 */
	unsigned fd_spare;
	unsigned fd_reserve;
	bool tcp_unbudgeted;           /* an explicit max_connections: TCP's only bound */
	/*
	 * UDP ports draining forwards still hold, in any worker (port_claims.h).
	 * Last: only reloads read it, and the fields above are the data path's.
	 */
	struct port_claims *udp_draining;
};

/*
 * Whether `adding` more descriptors for one side fit beside the other:
 * mine (after adding) plus the larger of the other's use and its reserve
 * stay within fd_spare. Read without locks: two workers admitting at the
 * same moment may pass it together by a few descriptors, which the margin
 * set aside absorbs.
 */
static inline bool relay_fds_allow(const struct relay_options *options, unsigned long mine,
				   unsigned long other)
{
	unsigned long kept = other > options->fd_reserve ? other : options->fd_reserve;
	return mine + kept <= options->fd_spare;
}

struct relay_ctx {
	struct event_base *base;
	unsigned worker;               /* which counter block of a forward is ours */
	struct ruleset *rules;         /* the rules new connections and flows take (rules->cfg) */
	unsigned rules_users;          /* sessions on rules' forwards */
	struct relay_rules_uses retired;   /* older rulesets with users left */
	struct relay_options options;
	struct pump_pool pumps;        /* scratch buffer and splice pipes */
	struct listener_set *listeners;
	struct udp_relay *udp;
	struct tcp_session_list sessions;
	unsigned session_count;
	/* Events no forward owns; the forwards' blocks are in their stats. */
	struct relay_counters process_counters;
	/*
	 * Bumped by every socket callback; relay_ctx_run's busy polling goes on
	 * while it keeps changing.
	 */
	uint64_t activity;
	/* The FTP helper's: where data port searches start, warnings' rate limit. */
	uint32_t ftp_port_cursor;
	uint64_t ftp_warned_ms;
	uint64_t ftp_warn_suppressed;
	/* Timeouts converted once from the configuration. */
	struct timeval tcp_connect_timeout;
	struct timeval tcp_idle_timeout;   /* zero: no idle timeout */
	uint64_t tcp_idle_timeout_ms;
};

/*
 * Prepares ctx on base for worker number `worker`, running rules (a
 * reference is taken); opens nothing. -1 when out of memory.
 */
int relay_ctx_init(struct relay_ctx *ctx, struct event_base *base, unsigned worker,
		   struct ruleset *rules, const struct relay_options *options);

/*
 * Makes rules (a reference is taken) the ones new connections take; the
 * previous ruleset is retired, with a drain deadline if the new
 * configuration sets drain_timeout. Once the modules have moved their
 * sessions and flows (those that stay the same) onto the new rules,
 * relay_ctx_release_unused frees the retired rulesets nothing uses.
 */
void relay_ctx_set_rules(struct relay_ctx *ctx, struct ruleset *rules);
void relay_ctx_release_unused(struct relay_ctx *ctx);

/* A session (or a draining UDP forward) starts or stops using fwd. */
void relay_ctx_take_forward(struct relay_ctx *ctx, const struct forward *fwd);
void relay_ctx_release_forward(struct relay_ctx *ctx, const struct forward *fwd);

/* Whether fwd belongs to the rules new connections take. */
static inline bool relay_ctx_is_current(const struct relay_ctx *ctx, const struct forward *fwd)
{
	return ruleset_owns(ctx->rules, fwd);
}

/* The retired ruleset that fwd belongs to, or NULL. */
struct relay_rules_use *relay_ctx_retired_of(struct relay_ctx *ctx, const struct forward *fwd);

/* The earliest drain deadline of the retired rulesets; 0: none. */
uint64_t relay_ctx_next_drain_ms(const struct relay_ctx *ctx);

/*
 * Runs ctx's event loop until event_base_loopbreak(). With busy_poll set, the
 * loop keeps polling without sleeping for that many microseconds after the
 * last socket event before it blocks again.
 */
void relay_ctx_run(struct relay_ctx *ctx);

/* Socket callbacks call this: there was traffic, keep busy polling. */
static inline void relay_ctx_note_activity(struct relay_ctx *ctx)
{
	ctx->activity++;
}

/* This worker's counter block of fwd (of any ruleset it runs). */
static inline struct relay_counters *relay_ctx_counters(struct relay_ctx *ctx,
							const struct forward *fwd)
{
	return forward_counters(fwd, ctx->worker);
}

/* The block of events no forward owns. */
static inline struct relay_counters *relay_ctx_process_counters(struct relay_ctx *ctx)
{
	return &ctx->process_counters;
}

/*
 * Frees what the context itself owns (pipes, rulesets), once the modules
 * that used it have closed everything; process_counters stay readable.
 */
void relay_ctx_destroy(struct relay_ctx *ctx);

/* Seconds as a double -> struct timeval. */
struct timeval relay_seconds_to_timeval(double seconds);
struct timeval relay_ms_to_timeval(uint64_t ms);

/*
 * Milliseconds on a monotonic clock, for idle times: a step of the wall
 * clock must not expire every flow at once. CLOCK_MONOTONIC_COARSE is read
 * without a system call; its few milliseconds of granularity are plenty.
 */
uint64_t relay_now_ms(void);

#endif
