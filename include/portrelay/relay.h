/*
 * relay.h - the context every relay module works in.
 *
 * A relay_ctx owns one event_base and everything registered on it: the
 * listeners, the TCP sessions, their counters. Nothing in the relay code is
 * global, so that several contexts (one per worker thread) can run side by
 * side later without locks.
 */
#ifndef PORTRELAY_RELAY_H
#define PORTRELAY_RELAY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/time.h>

#include "portrelay/config.h"
#include "portrelay/net.h"
#include "portrelay/pump.h"

struct event_base;
struct event;
struct listener_set;
struct tcp_session;
struct udp_relay;

TAILQ_HEAD(tcp_session_list, tcp_session);

/*
 * The counters, declared once: every field is a uint64_t, summed field by
 * field (relay_counters_add), so a new one needs no other change to be
 * summed; metrics.c says how each is exposed.
 *
 * Each worker keeps one block per forward (relay_ctx.forward_counters,
 * indexed like config->forwards) plus one for the process (index
 * forward_count: events no forward owns, such as running out of
 * descriptors). A block is written only by its own worker, with plain
 * increments: a relaxed atomic read-modify-write (a locked add on x86) on
 * every relayed batch is the cost the data path must not pay. Readers (the
 * admin endpoint on the main thread, the closing totals) load each field
 * with a relaxed atomic load, without stopping the worker: an aligned 64-bit
 * store is single-copy atomic on the 64-bit targets portrelay runs on, so a
 * reader sees an old or a new value, never a torn one, and a sum that is
 * momentarily inconsistent between fields is fine for metrics.
 *
 * When the forward table becomes a reloadable snapshot, the blocks are
 * re-keyed by forward (protocol, address, port) rather than by index: a
 * kept forward carries its block over, a new one starts at zero.
 */
struct relay_counters {
	uint64_t tcp_accepted;
	uint64_t tcp_active;           /* sessions open now (FTP data connections too) */
	uint64_t tcp_connect_refused;  /* the internal host refused (RST) */
	uint64_t tcp_connect_timeout;  /* no answer within tcp.connect_timeout */
	uint64_t tcp_connect_other;    /* unreachable, no socket, ... */
	uint64_t tcp_reset;            /* sessions ended by a reset or socket error */
	uint64_t tcp_idle_closed;
	uint64_t accept_fd_exhausted;  /* EMFILE/ENFILE episodes (process block) */
	uint64_t bytes_to_internal;
	uint64_t bytes_to_client;

	uint64_t udp_flows_created;
	uint64_t udp_flows_expired;
	uint64_t udp_datagrams_to_internal;
	uint64_t udp_datagrams_to_client;
	uint64_t udp_dropped_table_full;   /* new client while max_flows were open */
	uint64_t udp_dropped_truncated;    /* larger than the relay's 64 KiB buffer */
	uint64_t udp_dropped_send;         /* send failed: buffer full, too big, ... */
	uint64_t udp_refused;              /* ICMP port unreachable from the internal host */
	uint64_t udp_flow_failed;          /* no socket for a new flow (fds, memory) */

	uint64_t ftp_data_opened;          /* data listeners opened for PASV/EPSV/PORT/EPRT */
	uint64_t ftp_data_connected;       /* ... that got their connection */
	uint64_t ftp_data_expired;         /* ... closed unused after ftp.data_timeout */
	uint64_t ftp_data_dropped;         /* ... closed unused with their control connection,
					      or replaced by a newer one */
	uint64_t ftp_data_refused;         /* connections to them from a foreign address */
	uint64_t ftp_commands_refused;     /* answered by the relay, never passed on */
};

/* Connect failures of every reason. */
static inline uint64_t relay_counters_connect_failed(const struct relay_counters *c)
{
	return c->tcp_connect_refused + c->tcp_connect_timeout + c->tcp_connect_other;
}

/* sum += c, field by field, each read with a relaxed atomic load (see above). */
void relay_counters_add(struct relay_counters *sum, const struct relay_counters *c);

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
	 * Flows open per forward (indexed like config->forwards), shared by all
	 * workers so that udp.max_flows holds for the process. Changed only
	 * when a flow opens or closes.
	 */
	atomic_uint *udp_flows_open;
};

struct relay_ctx {
	struct event_base *base;
	const struct config *config;   /* immutable while the loop runs */
	struct relay_options options;
	struct pump_pool pumps;        /* scratch buffer and splice pipes */
	struct listener_set *listeners;
	struct udp_relay *udp;
	struct tcp_session_list sessions;
	unsigned session_count;
	/*
	 * config->forward_count + 1 blocks: one per forward, then the process's
	 * (see struct relay_counters). Outlive relay_ctx_close, for the totals.
	 */
	struct relay_counters *forward_counters;
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

/* Prepares ctx on base for cfg; opens nothing yet. -1 when out of memory. */
int relay_ctx_init(struct relay_ctx *ctx, struct event_base *base, const struct config *cfg,
		    const struct relay_options *options);



/*
 * Opens every TCP listener and UDP socket of the enabled forwards. On a
 * bind failure logs the
 * forward, address:port and reason, and returns -1 (nothing stays open).
 */
int relay_ctx_open(struct relay_ctx *ctx);

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

/* fwd's counter block in this context; fwd is one of ctx->config->forwards. */
static inline struct relay_counters *relay_ctx_counters(struct relay_ctx *ctx,
							const struct forward *fwd)
{
	return &ctx->forward_counters[fwd - ctx->config->forwards];
}

/* The block of events no forward owns. */
static inline struct relay_counters *relay_ctx_process_counters(struct relay_ctx *ctx)
{
	return &ctx->forward_counters[ctx->config->forward_count];
}

/* Closes listeners and every session, frees what ctx owns but its counters. */
void relay_ctx_close(struct relay_ctx *ctx);

/* Frees the counters, after the last read. */
void relay_ctx_free_counters(struct relay_ctx *ctx);

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
