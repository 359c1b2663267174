/*
 * counters.h - what the relay counts: one block of uint64_t counters, per
 * forward and per worker.
 */
#ifndef PORTRELAY_COUNTERS_H
#define PORTRELAY_COUNTERS_H

#include <stdint.h>

/*
 * The counters, declared once: every field is a uint64_t, summed field by
 * field (relay_counters_add), so a new one needs no other change to be
 * summed; metrics.c says how each is exposed.
 *
 * Each worker keeps one block per forward (struct forward_stats in
 * ruleset.h) plus one for the process (relay_ctx.process_counters: events
 * no forward owns, such as running out of descriptors). A block is written only by its own worker, with plain
 * increments: a relaxed atomic read-modify-write (a locked add on x86) on
 * every relayed batch is the cost the data path must not pay. Readers (the
 * admin endpoint on the main thread, the closing totals) load each field
 * with a relaxed atomic load, without stopping the worker: on 64-bit targets
 * an aligned 64-bit store is single-copy atomic, so a reader sees an old or a
 * new value, never a torn one, and a sum that is momentarily inconsistent
 * between fields is fine for metrics.
 *
 * On 32-bit targets (i386, 32-bit ARM and MIPS routers) a plain 64-bit
 * increment is two 32-bit stores, and a reader between them can see a torn
 * value. It differs from both the old and the new value only when the
 * increment carries into the high word (once every 2^32 bytes or events of a
 * field), and only during the worker's next instruction: the reader loads
 * each field until two loads agree (relay_counters_add), so a torn value
 * remains possible only if the worker is preempted between its two stores
 * while a reader reads. That is accepted, for metrics: the data path keeps
 * its plain increments on every target (atomic stores would cost a 32-bit
 * CPU on every relayed batch, and an atomic 64-bit read-modify-write needs a
 * lock on some of them), and nothing but metrics and the closing totals reads
 * these counters.
 */
struct relay_counters {
	uint64_t tcp_accepted;
	uint64_t tcp_active;           /* sessions open now (FTP data connections too) */
	uint64_t tcp_connect_refused;  /* the internal host refused (RST) */
	uint64_t tcp_connect_timeout;  /* no answer within tcp.connect_timeout */
	uint64_t tcp_connect_other;    /* unreachable, no socket, ... */
	uint64_t tcp_reset;            /* sessions ended by a reset or socket error */
	uint64_t tcp_idle_closed;
	uint64_t tcp_drain_closed;     /* of a removed or changed forward, at drain_timeout */
	uint64_t tcp_denied;           /* clients refused by allow/deny (reset at accept) */
	uint64_t tcp_refused_source_limit;   /* ... at max_connections_per_source */
	uint64_t tcp_refused_forward_limit;  /* ... at the forward's max_connections */
	uint64_t tcp_max_connections_reached;   /* episodes at the global max (process block) */
	uint64_t accept_fd_exhausted;  /* EMFILE/ENFILE episodes (process block) */
	uint64_t bytes_to_internal;
	uint64_t bytes_to_client;

	uint64_t udp_flows_created;
	uint64_t udp_flows_expired;
	uint64_t udp_datagrams_to_internal;
	uint64_t udp_datagrams_to_client;
	uint64_t udp_bytes_to_internal;    /* payload bytes of those datagrams */
	uint64_t udp_bytes_to_client;
	uint64_t udp_dropped_table_full;   /* new client while max_flows were open */
	uint64_t udp_dropped_truncated;    /* larger than the relay's 64 KiB buffer */
	uint64_t udp_dropped_send;         /* send failed: buffer full, too big, ... */
	uint64_t udp_refused;              /* ICMP port unreachable from the internal host */
	uint64_t udp_flow_failed;          /* no socket for a new flow (fds, memory) */
	uint64_t udp_dropped_removed;      /* new client of a removed forward still draining */
	uint64_t udp_denied;               /* new client refused by allow/deny */
	uint64_t udp_dropped_source_limit; /* new client at max_flows_per_source */
	uint64_t udp_dropped_flow_budget;  /* the process's descriptors for flows all in use */
	uint64_t udp_flows_evicted;        /* not assured, closed to make room for a new client */
	uint64_t udp_drain_closed;         /* flows of a removed or changed forward, at drain_timeout */

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

#endif
