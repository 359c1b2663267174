/*
 * udp_relay.c - UDP forwarding: external sockets, flows, replies.
 *
 * Data path of one datagram from a client:
 *   external socket --recvmsg--> lookup (client addr, external port)
 *     --miss--> new flow: socket connected to the internal host:port
 *   --send on the flow's socket--> internal server
 * and of a reply:
 *   flow socket --recv--> sendmsg from the external socket to the client,
 *   from the address the client sent to (IP_PKTINFO on wildcard binds).
 */
#include "portrelay/udp_relay.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "portrelay/acl.h"
#include "portrelay/config.h"
#include "portrelay/flow_table.h"
#include "portrelay/log.h"
#include "portrelay/net.h"
#include "portrelay/port_claims.h"
#include "portrelay/proxy_header.h"
#include "portrelay/relay.h"
#include "portrelay/source_table.h"
#include "portrelay/udp_batch.h"

/* Batches read per wake-up of an external socket before others get a turn. */
#define UDP_BATCHES_PER_WAKEUP 2
/* Flows served per wake-up of the flow sockets' epoll set. */
#define UDP_FLOWS_PER_WAKEUP 64
/* Rate limit for "table full" and "cannot open flow" warnings. */
#define UDP_WARN_INTERVAL_MS 1000
/* A flow without a reply is pushed out for a newcomer only after this long quiet. */
#define UDP_EVICT_MIN_IDLE_MS 1000

struct udp_forward;

struct udp_port {
	int fd;
	struct event *event;           /* reading clients' datagrams; NULL once handed over */
	uint16_t port;
	bool wildcard;                 /* replies need an explicit source address */
	struct udp_forward *forward;
	/*
	 * Reloads: handed_over, a new forward's port reads this socket now (a
	 * copy of it) and this one only sends its flows' replies. Ports that
	 * share one socket this way form a chain, oldest first (the same
	 * worker's forwards of one place, removed and added again): taken_from
	 * is the port this one copied, taken_by the one that copied this one.
	 * Only the newest reads; when it goes, the one before reads again
	 * (udp_port_unlink), so that a socket the kernel still hands datagrams
	 * to always has a reader.
	 */
	bool handed_over;
	struct udp_port *taken_from;
	struct udp_port *taken_by;
};

/* The address a client sent to, as the kernel reported it (wildcard binds). */
struct udp_local {
	bool known;
	uint8_t level;                 /* IPPROTO_IP (which is 0) or IPPROTO_IPV6 */
	/* The flow's flags, here in the padding before the union: flows stay small. */
	uint8_t proxy;                 /* enum proxy_version its datagrams carry, fixed at creation */
	bool replied : 1;              /* the internal host has answered */
	bool transparent : 1;          /* bound to the client's address: holds no local port */
	union {
		struct in_pktinfo v4;
		struct in6_pktinfo v6;
	} info;
};

/*
 * Kept small: there may be hundreds of thousands. The flow's socket is
 * watched through the worker's epoll set for flow sockets, not by an event
 * of its own, which saves a libevent event (128 bytes) per flow.
 */
struct udp_flow {
	struct flow_entry entry;       /* key: client address and scope, external port, local address */
	struct udp_port *port;
	int fd;                        /* connected to the internal host:port */
	socklen_t client_len;
	union net_sockaddr client;
	struct udp_local local;        /* and the flow's flags replied and proxy */
	bool source_counted;           /* in the source table (max_flows_per_source) */
	/* Until replied: in the forward's unreplied list, least recently active first. */
	TAILQ_ENTRY(udp_flow) unreplied_link;
	uint64_t created_ms;
	uint32_t datagrams_to_internal;
	uint32_t datagrams_to_client;
	uint64_t bytes_to_internal;    /* for the access log */
	uint64_t bytes_to_client;
};

TAILQ_HEAD(udp_flow_list, udp_flow);


/* Why new clients' datagrams were dropped; each reason is logged on its own. */
enum udp_drop_reason {
	UDP_DROP_TABLE_FULL,
	UDP_DROP_NO_SOCKET,
	UDP_DROP_REMOVED,
	UDP_DROP_DENIED,
	UDP_DROP_SOURCE_LIMIT,
	UDP_DROP_PROCESS_LIMIT,
	UDP_DROP_REASONS,
};

struct udp_forward {
	TAILQ_ENTRY(udp_forward) link;
	struct relay_ctx *ctx;
	struct udp_relay *relay;
	const struct forward *fwd;     /* in the current rules, unless draining */
	struct flow_table flows;
	/*
	 * Flows the internal host has not answered yet, least recently active
	 * first: they expire after unreplied_timeout_ms, and make room for a
	 * newcomer when the table is full (those idle for UDP_EVICT_MIN_IDLE_MS
	 * at least). A flow with two-way traffic is never pushed out.
	 */
	struct udp_flow_list unreplied;
	struct event *expiry_timer;
	uint64_t idle_timeout_ms;
	uint64_t unreplied_timeout_ms;     /* never longer than idle_timeout_ms */
	unsigned max_flows;
	atomic_uint *flows_open;       /* this forward's flows in every worker */
	struct relay_counters *counters;  /* the forward's block in this worker */
	struct udp_port *ports;
	unsigned port_count;
	/*
	 * Reloads. A draining forward was removed: it serves the flows it has
	 * (on fwd, a forward of retired rules) and opens no new one. A forward
	 * whose rule changed keeps its flows on the old target; with
	 * drain_timeout, those created before rule_changed_ms end at
	 * old_flows_deadline_ms.
	 */
	bool linked;                   /* in the relay's list (not a prepared one) */
	bool draining;
	bool claimed;                  /* its ports are in options.udp_draining */
	uint64_t rule_changed_ms;
	uint64_t old_flows_deadline_ms;    /* 0: none */
	struct udp_drop_log {
		uint64_t last_warn_ms;
		uint64_t since_warn;
	} drop_log[UDP_DROP_REASONS];
};

TAILQ_HEAD(udp_forward_list, udp_forward);

struct udp_relay {
	struct relay_ctx *ctx;
	struct udp_forward_list forwards;   /* current ones, then draining ones */
	unsigned socket_count;              /* of the current forwards */
	/* Every flow socket of this worker, watched as one fd by the event loop. */
	int flow_epoll_fd;
	struct event *flow_epoll_event;
	/* Buffers for one batch; the loop handles one socket at a time. */
	struct udp_batch batch;
};

static struct udp_flow *udp_flow_of(struct flow_entry *entry)
{
	/* entry is the first member of struct udp_flow. */
	return (struct udp_flow *)entry;
}

/* ---- flows --------------------------------------------------------------- */

/* The address and port the flow's client sent to. */
static struct net_addr udp_flow_external(const struct udp_flow *flow)
{
	struct net_addr local = flow->port->forward->fwd->external_addr;
	if (flow->local.known && flow->local.level == IPPROTO_IP) {
		struct sockaddr_in sin = { .sin_family = AF_INET,
					   .sin_addr = flow->local.info.v4.ipi_addr };
		net_addr_set(&local, (struct sockaddr *)&sin, sizeof sin);
	} else if (flow->local.known) {
		struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6,
					     .sin6_addr = flow->local.info.v6.ipi6_addr };
		net_addr_set(&local, (struct sockaddr *)&sin6, sizeof sin6);
	}
	net_addr_set_port(&local, flow->port->port);
	net_addr_unmap(&local);
	return local;
}

/*
 * The flow's summary: with access_log on its forward, one line at info
 * (client, the address it sent to, the internal address, datagrams and
 * bytes each way, duration, how it ended); else at debug. Only the relay's
 * own text: nothing a peer sent.
 */
static void udp_flow_log_end(const struct udp_forward *forward, const struct udp_flow *flow,
			     const char *reason)
{
	char client[NET_ADDR_STRLEN], external[NET_ADDR_STRLEN], internal[NET_ADDR_STRLEN];
	struct net_addr client_addr, external_addr = udp_flow_external(flow);
	net_addr_set(&client_addr, &flow->client.sa, flow->client_len);
	net_addr_unmap(&client_addr);
	struct net_addr internal_addr = forward_internal_addr(forward->fwd, flow->port->port);
	double elapsed = (double)(relay_now_ms() - flow->created_ms) / 1000.0;
	if (forward->fwd->access_log)
		log_info(forward->fwd->name,
			 "access: udp %s -> %s -> %s: %llu datagrams (%llu bytes) to internal, "
			 "%llu datagrams (%llu bytes) to client, %.3f s, %s",
			 net_addr_format(&client_addr, client, sizeof client),
			 net_addr_format(&external_addr, external, sizeof external),
			 net_addr_format(&internal_addr, internal, sizeof internal),
			 (unsigned long long)flow->datagrams_to_internal,
			 (unsigned long long)flow->bytes_to_internal,
			 (unsigned long long)flow->datagrams_to_client,
			 (unsigned long long)flow->bytes_to_client, elapsed, reason);
	else
		log_debug(forward->fwd->name,
			  "udp flow closed %s -> %s: %llu datagrams to internal, %llu datagrams "
			  "to client, %.3f s, %s",
			  net_addr_format(&client_addr, client, sizeof client),
			  net_addr_format(&internal_addr, internal, sizeof internal),
			  (unsigned long long)flow->datagrams_to_internal,
			  (unsigned long long)flow->datagrams_to_client, elapsed, reason);
}

static void udp_flow_free(struct udp_forward *forward, struct udp_flow *flow, const char *reason)
{
	if (forward->fwd->access_log || (reason != NULL && log_enabled(LOG_LEVEL_DEBUG)))
		udp_flow_log_end(forward, flow, reason != NULL ? reason : "closed with its forward");
	flow_table_remove(&forward->flows, &flow->entry);
	if (!flow->local.replied)
		TAILQ_REMOVE(&forward->unreplied, flow, unreplied_link);
	if (flow->source_counted) {
		uint8_t source[ACL_SOURCE_KEY_LEN];
		acl_source_key(&flow->client.sa, source);
		source_table_release(forward->ctx->options.sources, forward->fwd->stats, source);
	}
	atomic_fetch_sub(forward->flows_open, 1);
	atomic_fetch_sub(forward->ctx->options.udp_flows_total, 1);
	if (!flow->local.transparent)
		atomic_fetch_sub(forward->ctx->options.udp_ported_total, 1);
	close(flow->fd);   /* also leaves the epoll set: the fd is not shared */
	free(flow);
}

/*
 * Logs a reason at most once a second, with how many drops it stands for;
 * error (an errno, 0 for none) is named after it. Nothing is formatted for
 * the drops in between: under a flood this runs once per datagram.
 */
static void udp_warn_limited(struct udp_forward *forward, enum udp_drop_reason reason,
			     const char *what, int error)
{
	struct udp_drop_log *log = &forward->drop_log[reason];
	uint64_t now = relay_now_ms();
	log->since_warn++;
	if (log->last_warn_ms != 0 && now - log->last_warn_ms < UDP_WARN_INTERVAL_MS)
		return;
	log_warn(forward->fwd->name, "%s%s%s%s: %llu datagrams from new clients dropped", what,
		 error != 0 ? " (" : "", error != 0 ? strerror(error) : "", error != 0 ? ")" : "",
		 (unsigned long long)log->since_warn);
	log->last_warn_ms = now;
	log->since_warn = 0;
}

static void udp_forward_free(struct udp_forward *forward);

static void udp_expiry_arm(struct udp_forward *forward, uint64_t now_ms)
{
	uint64_t due = UINT64_MAX;
	struct flow_entry *oldest = flow_table_oldest(&forward->flows);
	if (oldest != NULL)
		due = oldest->last_active_ms + forward->idle_timeout_ms;
	struct udp_flow *unreplied = TAILQ_FIRST(&forward->unreplied);
	if (unreplied != NULL && unreplied->entry.last_active_ms + forward->unreplied_timeout_ms < due)
		due = unreplied->entry.last_active_ms + forward->unreplied_timeout_ms;
	if (due == UINT64_MAX)
		return;
	struct timeval tv = relay_ms_to_timeval(due > now_ms ? due - now_ms : 0);
	event_add(forward->expiry_timer, &tv);
}

/*
 * Closes the flows idle past the timeout, oldest first, and those that
 * never got a reply past unreplied_timeout, then re-arms.
 */
static void udp_on_expiry(evutil_socket_t fd, short what, void *arg)
{
	struct udp_forward *forward = arg;
	(void)fd;
	(void)what;
	uint64_t now = relay_now_ms();
	struct flow_entry *oldest;
	while ((oldest = flow_table_oldest(&forward->flows)) != NULL &&
	       now - oldest->last_active_ms >= forward->idle_timeout_ms) {
		forward->counters->udp_flows_expired++;
		udp_flow_free(forward, udp_flow_of(oldest), "idle timeout");
	}
	struct udp_flow *unreplied;
	while ((unreplied = TAILQ_FIRST(&forward->unreplied)) != NULL &&
	       now - unreplied->entry.last_active_ms >= forward->unreplied_timeout_ms) {
		forward->counters->udp_flows_expired++;
		udp_flow_free(forward, unreplied, "no reply within udp.unreplied_timeout");
	}
	if (forward->draining && flow_table_count(&forward->flows) == 0) {
		udp_forward_free(forward);   /* its timer too: nothing touches it after this */
		return;
	}
	udp_expiry_arm(forward, now);
}

static void udp_flow_touch(struct udp_forward *forward, struct udp_flow *flow)
{
	flow_table_touch(&forward->flows, &flow->entry, relay_now_ms());
	if (!flow->local.replied && TAILQ_NEXT(flow, unreplied_link) != NULL) {
		TAILQ_REMOVE(&forward->unreplied, flow, unreplied_link);
		TAILQ_INSERT_TAIL(&forward->unreplied, flow, unreplied_link);
	}
}

/* The internal host answered: two-way traffic, never pushed out by a newcomer. */
static void udp_flow_replied(struct udp_forward *forward, struct udp_flow *flow)
{
	if (flow->local.replied)
		return;
	flow->local.replied = true;
	TAILQ_REMOVE(&forward->unreplied, flow, unreplied_link);
}

/* Reads the destination address of a datagram from its control messages. */
static void udp_local_from_cmsg(struct udp_local *local, struct msghdr *msg)
{
	for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(msg); cmsg != NULL;
	     cmsg = CMSG_NXTHDR(msg, cmsg)) {
		if (cmsg->cmsg_level == IPPROTO_IP && cmsg->cmsg_type == IP_PKTINFO) {
			local->known = true;
			local->level = IPPROTO_IP;
			memcpy(&local->info.v4, CMSG_DATA(cmsg), sizeof local->info.v4);
			/* Reply from the address the client sent to, on any interface. */
			local->info.v4.ipi_spec_dst = local->info.v4.ipi_addr;
			local->info.v4.ipi_ifindex = 0;
			return;
		}
		if (cmsg->cmsg_level == IPPROTO_IPV6 && cmsg->cmsg_type == IPV6_PKTINFO) {
			local->known = true;
			local->level = IPPROTO_IPV6;
			memcpy(&local->info.v6, CMSG_DATA(cmsg), sizeof local->info.v6);
			/* Any interface the route picks, but for link-local addresses. */
			if (!IN6_IS_ADDR_LINKLOCAL(&local->info.v6.ipi6_addr))
				local->info.v6.ipi6_ifindex = 0;
			return;
		}
	}
}

/* Writes the flow's reply source address (IP_PKTINFO) into control. */
static socklen_t udp_reply_control(const struct udp_flow *flow, union udp_control *control)
{
	bool v4 = flow->local.level == IPPROTO_IP;
	size_t info_len = v4 ? sizeof flow->local.info.v4 : sizeof flow->local.info.v6;
	struct msghdr msg = { .msg_control = control->buf, .msg_controllen = CMSG_SPACE(info_len) };
	memset(control, 0, sizeof *control);
	struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = flow->local.level;
	cmsg->cmsg_type = v4 ? IP_PKTINFO : IPV6_PKTINFO;
	cmsg->cmsg_len = CMSG_LEN(info_len);
	memcpy(CMSG_DATA(cmsg), &flow->local.info, info_len);
	return (socklen_t)CMSG_SPACE(info_len);
}

/*
 * Where a batch of replies stands: datagrams are received into slots from
 * `received` on and queued to go out in slots from `queued` on. A skipped
 * datagram leaves queued < received; keeping both apart means a later
 * receive never lands in a buffer a queued reply still points to.
 */
struct udp_reply_batch {
	unsigned received;
	unsigned queued;
	struct udp_flow *flow_of[UDP_BATCH];   /* per queued slot */
};

/* Takes the replies waiting on one flow's socket into the batch. */
static void udp_flow_take_replies(struct udp_relay *udp, struct udp_flow *flow,
				  struct udp_reply_batch *replies)
{
	struct udp_forward *forward = flow->port->forward;
	struct udp_batch *batch = &udp->batch;
	unsigned first = replies->received;
	int received = -1;

	/*
	 * An ICMP port unreachable for an earlier datagram surfaces here as
	 * ECONNREFUSED; reading it clears it. The flow stays (the server may
	 * come back) and expires as usual if it does not.
	 */
	for (int attempt = 0; attempt < 2 && received < 0; attempt++) {
		received = udp_batch_receive(batch, first, flow->fd, false);
		if (received < 0 && errno != ECONNREFUSED)
			break;
		if (received < 0)
			forward->counters->udp_refused++;
	}
	if (received <= 0)
		return;
	replies->received += (unsigned)received;
	udp_flow_replied(forward, flow);

	/* The flows' sockets are read without control messages: the slots are free. */
	socklen_t control_len = 0;
	union udp_control *control = &batch->control[first];
	if (flow->local.known)   /* learnt only on a wildcard port */
		control_len = udp_reply_control(flow, control);
	unsigned queued_before = replies->queued;
	for (unsigned i = first; i < replies->received; i++) {
		if (udp_batch_truncated(batch, i)) {
			forward->counters->udp_dropped_truncated++;
			continue;
		}
		unsigned slot = replies->queued++;
		udp_batch_queue(batch, slot, i);
		struct msghdr *hdr = &batch->out[slot].msg_hdr;
		hdr->msg_name = &flow->client;
		hdr->msg_namelen = flow->client_len;
		hdr->msg_control = control_len != 0 ? control->buf : NULL;
		hdr->msg_controllen = control_len;
		replies->flow_of[slot] = flow;
	}
	flow->datagrams_to_client += replies->queued - queued_before;
	uint64_t bytes_before = flow->bytes_to_client;
	for (unsigned slot = queued_before; slot < replies->queued; slot++)
		flow->bytes_to_client += batch->out_iov[slot][0].iov_len;
	forward->counters->udp_bytes_to_client += flow->bytes_to_client - bytes_before;
	udp_flow_touch(forward, flow);
}

/* Sends queued replies, one sendmmsg per run of replies through the same port. */
static void udp_send_replies(struct udp_relay *udp, struct udp_reply_batch *replies)
{
	for (unsigned first = 0; first < replies->queued;) {
		struct udp_port *port = replies->flow_of[first]->port;
		unsigned last = first + 1;
		while (last < replies->queued && replies->flow_of[last]->port == port)
			last++;
		uint64_t unused_refused = 0;
		unsigned sent = udp_batch_send(&udp->batch, port->fd, first, last - first,
					       &unused_refused);
		/* UDP has no back-pressure: what the socket cannot take is dropped, as a router would. */
		struct relay_counters *counters = port->forward->counters;
		counters->udp_dropped_send += (last - first) - sent;
		counters->udp_datagrams_to_client += sent;
		first = last;
	}
	replies->received = replies->queued = 0;
}

/*
 * Some flow sockets are readable: gather their replies, from as many flows
 * as a batch holds, and send them back in as few system calls as possible.
 */
static void udp_on_flow_sockets(evutil_socket_t fd, short what, void *arg)
{
	struct udp_relay *udp = arg;
	struct epoll_event ready[UDP_FLOWS_PER_WAKEUP];
	struct udp_reply_batch replies = { 0 };
	(void)what;

	relay_ctx_note_activity(udp->ctx);
	int count = epoll_wait(fd, ready, UDP_FLOWS_PER_WAKEUP, 0);
	for (int i = 0; i < count; i++) {
		if (replies.received == UDP_BATCH)
			udp_send_replies(udp, &replies);
		udp_flow_take_replies(udp, ready[i].data.ptr, &replies);
	}
	udp_send_replies(udp, &replies);
}

/* Drops a new client's datagram for `reason`, counted and logged at most once a second. */
static struct udp_flow *udp_refuse(struct udp_forward *forward, uint64_t *counter,
				   enum udp_drop_reason reason, const char *what, int error)
{
	(*counter)++;
	udp_warn_limited(forward, reason, what, error);
	return NULL;
}

/*
 * Makes room for a newcomer: closes this worker's least recently active
 * flow of the forward that never got a reply, if it has been quiet for
 * UDP_EVICT_MIN_IDLE_MS (a burst of new clients must not push one another
 * out before any could get its answer). False when there is none.
 */
static bool udp_evict_one(struct udp_forward *forward)
{
	struct udp_flow *victim = TAILQ_FIRST(&forward->unreplied);
	if (victim == NULL || relay_now_ms() - victim->entry.last_active_ms < UDP_EVICT_MIN_IDLE_MS)
		return false;
	forward->counters->udp_flows_evicted++;
	udp_flow_free(forward, victim, "evicted for a new client (table full)");
	return true;
}

/*
 * Takes one place under a shared limit, evicting one flow of this forward
 * that never got a reply if it is full. Two workers cannot both take the last
 * place: the place is taken first and given back if it was beyond.
 */
static bool udp_take_place(struct udp_forward *forward, atomic_uint *open, unsigned limit)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		if (atomic_fetch_add(open, 1) < limit)
			return true;
		atomic_fetch_sub(open, 1);
		if (attempt == 0 && !udp_evict_one(forward))
			return false;
	}
	return false;
}

/*
 * The process's budget: a place under max_udp_flows whose descriptor fits
 * beside TCP's (relay_fds_allow), evicting one flow without a reply of this
 * forward if not.
 */
static bool udp_take_budget(struct udp_forward *forward, struct relay_options *options)
{
	/* A flow of a source = "client" forward takes the client's port, not one of the host's. */
	bool ported = !forward->fwd->source_client;
	for (int attempt = 0; attempt < 2; attempt++) {
		unsigned open = atomic_fetch_add(options->udp_flows_total, 1);
		unsigned with_port = ported ? atomic_fetch_add(options->udp_ported_total, 1) : 0;
		unsigned long tcp_fds = 2ul * atomic_load(options->tcp_open_total);
		if (open < options->max_udp_flows && with_port < options->max_udp_ported &&
		    relay_fds_allow(options, open + 1ul, tcp_fds))
			return true;
		atomic_fetch_sub(options->udp_flows_total, 1);
		if (ported)
			atomic_fetch_sub(options->udp_ported_total, 1);
		if (attempt == 0 && !udp_evict_one(forward))
			return false;
	}
	return false;
}

static struct udp_flow *udp_flow_open(struct udp_port *port, const struct flow_key *key,
				      uint32_t hash, const union net_sockaddr *client,
				      socklen_t client_len)
{
	struct udp_forward *forward = port->forward;
	struct relay_options *options = &forward->ctx->options;
	struct relay_counters *counters = forward->counters;

	if (forward->draining)
		return udp_refuse(forward, &counters->udp_dropped_removed, UDP_DROP_REMOVED,
				  "forward removed by a reload, serving its open flows only", 0);
	if (!acl_allows(&forward->fwd->acl, &client->sa))
		return udp_refuse(forward, &counters->udp_denied, UDP_DROP_DENIED,
				  "client denied by allow/deny", 0);
	uint8_t source[ACL_SOURCE_KEY_LEN];
	acl_source_key(&client->sa, source);
	unsigned per_source = forward->fwd->max_flows_per_source;
	if (!source_table_take(options->sources, forward->fwd->stats, source, per_source))
		return udp_refuse(forward, &counters->udp_dropped_source_limit,
				  UDP_DROP_SOURCE_LIMIT, "client at max_flows_per_source", 0);
	if (!udp_take_place(forward, forward->flows_open, forward->max_flows)) {
		if (per_source != 0)
			source_table_release(options->sources, forward->fwd->stats, source);
		return udp_refuse(forward, &counters->udp_dropped_table_full, UDP_DROP_TABLE_FULL,
				  "flow table full (udp.max_flows), no unanswered flow to make room", 0);
	}
	if (!udp_take_budget(forward, options)) {
		atomic_fetch_sub(forward->flows_open, 1);
		if (per_source != 0)
			source_table_release(options->sources, forward->fwd->stats, source);
		return udp_refuse(forward, &counters->udp_dropped_flow_budget, UDP_DROP_PROCESS_LIMIT,
				  "the process's descriptors for UDP flows are all in use", 0);
	}

	struct udp_flow *flow = calloc(1, sizeof *flow);
	if (flow == NULL)
		goto fail;
	flow->fd = -1;
	struct net_addr internal = forward_internal_addr(forward->fwd, port->port);
	if (forward->fwd->source_client) {
		/* From the client's own address and port (the relay's if the families differ). */
		struct net_addr from;
		net_addr_set(&from, &client->sa, client_len);
		net_addr_unmap(&from);
		flow->fd = net_connect_transparent(&internal, &from, SOCK_DGRAM);
		if (flow->fd < 0 && errno == EAFNOSUPPORT)
			flow->fd = net_connect_udp(&internal);
	} else {
		flow->fd = net_connect_udp(&internal);
	}
	struct epoll_event interest = { .events = EPOLLIN, .data.ptr = flow };
	if (flow->fd < 0 ||
	    epoll_ctl(forward->relay->flow_epoll_fd, EPOLL_CTL_ADD, flow->fd, &interest) < 0)
		goto fail;

	uint64_t now = relay_now_ms();
	flow->entry.key = *key;
	flow->entry.hash = hash;
	flow->port = port;
	memcpy(&flow->client, client, client_len);
	flow->client_len = client_len;
	flow->created_ms = now;
	flow->source_counted = per_source != 0;
	flow->local.proxy = (unsigned char)forward->fwd->proxy_protocol;
	flow->local.transparent = forward->fwd->source_client;
	if (flow_table_insert(&forward->flows, &flow->entry, now) < 0)
		goto fail;
	bool first_unreplied = TAILQ_EMPTY(&forward->unreplied);
	TAILQ_INSERT_TAIL(&forward->unreplied, flow, unreplied_link);
	/* Its unreplied timeout may come before what the timer waits for now. */
	if (first_unreplied || !evtimer_pending(forward->expiry_timer, NULL))
		udp_expiry_arm(forward, now);
	counters->udp_flows_created++;
	return flow;
fail:;
	/*
	 * Usually EMFILE, or EAGAIN when the local ports run out: every flow's
	 * connected socket holds one of net.ipv4.ip_local_port_range.
	 */
	int error = errno;
	atomic_fetch_sub(forward->flows_open, 1);
	atomic_fetch_sub(options->udp_flows_total, 1);
	if (!forward->fwd->source_client)
		atomic_fetch_sub(options->udp_ported_total, 1);
	if (per_source != 0)
		source_table_release(options->sources, forward->fwd->stats, source);
	if (flow != NULL) {
		if (flow->fd >= 0)
			close(flow->fd);
		free(flow);
	}
	return udp_refuse(forward, &counters->udp_flow_failed, UDP_DROP_NO_SOCKET,
			  "cannot open a flow socket", error);
}

/* The flow of received datagram i: found, or opened for a new client. */
static struct udp_flow *udp_flow_for(struct udp_port *port, struct udp_batch *batch, unsigned i)
{
	struct udp_forward *forward = port->forward;
	struct flow_key key;
	struct udp_local local = { .known = false };
	flow_key_set(&key, &batch->from[i].sa, port->port);
	if (port->wildcard) {
		/* Part of the key: each local address the client talks to is a flow of its own. */
		udp_local_from_cmsg(&local, &batch->in[i].msg_hdr);
		if (local.known && local.level == IPPROTO_IP)
			flow_key_set_local(&key, &local.info.v4.ipi_addr, sizeof local.info.v4.ipi_addr);
		else if (local.known)
			flow_key_set_local(&key, &local.info.v6.ipi6_addr, sizeof local.info.v6.ipi6_addr);
	}
	uint32_t hash = flow_table_hash(&forward->flows, &key);
	struct flow_entry *entry = flow_table_lookup(&forward->flows, &key, hash);
	if (entry != NULL)
		return udp_flow_of(entry);
	struct udp_flow *flow = udp_flow_open(port, &key, hash, &batch->from[i],
					      batch->in[i].msg_hdr.msg_namelen);
	if (flow != NULL) {
		/* The address only: the flags beside it are the flow's own. */
		flow->local.known = local.known;
		flow->local.level = local.level;
		flow->local.info = local.info;
	}
	return flow;
}

/*
 * proxy_protocol = "v2": the header for the flow's datagrams, naming the
 * client and the address and port it sent to (on a wildcard bind, the one
 * the kernel reported). The same for every datagram of the flow.
 */
static size_t udp_flow_proxy_header(const struct udp_flow *flow, uint8_t *header)
{
	struct net_addr local = udp_flow_external(flow);
	return proxy_header_write((enum proxy_version)flow->local.proxy, PROXY_DGRAM, &flow->client.sa,
				  (const struct sockaddr *)&local.ss, header);
}

/*
 * Sends received datagrams [first, last) of one flow to the internal server
 * through the flow's socket, in one sendmmsg.
 */
static void udp_flow_send_run(struct udp_batch *batch, struct udp_flow *flow, unsigned first,
			      unsigned last)
{
	struct relay_counters *counters = flow->port->forward->counters;
	uint8_t header[PROXY_HEADER_MAX];
	size_t header_len = flow->local.proxy != PROXY_NONE ? udp_flow_proxy_header(flow, header) : 0;
	for (unsigned i = first; i < last; i++) {
		if (header_len != 0)
			udp_batch_queue_prefixed(batch, i - first, i, header, header_len);
		else
			udp_batch_queue(batch, i - first, i);
	}
	unsigned sent = udp_batch_send(batch, flow->fd, 0, last - first, &counters->udp_refused);
	counters->udp_dropped_send += (last - first) - sent;
	counters->udp_datagrams_to_internal += sent;
	flow->datagrams_to_internal += sent;
	uint64_t bytes_before = flow->bytes_to_internal;
	for (unsigned i = first; i < first + sent; i++)
		flow->bytes_to_internal += batch->in[i].msg_len;
	counters->udp_bytes_to_internal += flow->bytes_to_internal - bytes_before;
	udp_flow_touch(flow->port->forward, flow);
}

/* One batch from clients: find each datagram's flow, then send per flow. */
static void udp_port_relay_batch(struct udp_port *port, struct udp_batch *batch, unsigned count)
{
	struct udp_flow *flows[UDP_BATCH];

	for (unsigned i = 0; i < count; i++) {
		flows[i] = NULL;
		if (udp_batch_truncated(batch, i)) {
			port->forward->counters->udp_dropped_truncated++;
			continue;
		}
		flows[i] = udp_flow_for(port, batch, i);
	}
	/* Consecutive datagrams of one flow (a busy client) go out together. */
	for (unsigned first = 0; first < count;) {
		unsigned last = first + 1;
		while (last < count && flows[last] == flows[first])
			last++;
		if (flows[first] != NULL)
			udp_flow_send_run(batch, flows[first], first, last);
		first = last;
	}
}

/* Datagrams from clients, a bounded number of batches per wake-up. */
static void udp_port_on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct udp_port *port = arg;
	struct udp_forward *forward = port->forward;
	struct udp_batch *batch = &forward->relay->batch;
	(void)what;

	relay_ctx_note_activity(forward->ctx);
	for (int round = 0; round < UDP_BATCHES_PER_WAKEUP; round++) {
		int received = udp_batch_receive(batch, 0, fd, port->wildcard);
		if (received < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				log_debug(forward->fwd->name, "udp recv on port %u: %s", port->port,
					  strerror(errno));
			return;
		}
		udp_port_relay_batch(port, batch, (unsigned)received);
		if (received < UDP_BATCH)
			return;
	}
}

/* ---- set-up, reloads and tear-down --------------------------------------- */

/* What a reload has prepared: new forwards with their sockets, not yet reading. */
struct udp_plan {
	struct udp_forward_list added;
};

/*
 * A port of a forward that still reads (current or draining) on addr, whose
 * socket a new forward can share; NULL if none.
 */
static struct udp_port *udp_relay_find_port(struct udp_relay *udp, const struct net_addr *addr)
{
	uint16_t number = net_addr_port(addr);
	struct udp_forward *forward;
	TAILQ_FOREACH(forward, &udp->forwards, link) {
		if (number < forward->fwd->external_port_first ||
		    number > forward->fwd->external_port_last ||
		    !net_addr_same_ip(&forward->fwd->external_addr, addr))
			continue;
		struct udp_port *port = &forward->ports[number - forward->fwd->external_port_first];
		if (port->event != NULL && !port->handed_over)
			return port;
	}
	return NULL;
}

/*
 * The port's socket: a copy of one an older forward has on the same address
 * (a reload moving a port between forwards), else bound now.
 */
static int udp_port_open(struct udp_forward *forward, struct udp_port *port, uint16_t number,
			 char *err, size_t err_len)
{
	const struct forward *fwd = forward->fwd;
	struct net_addr addr = fwd->external_addr;
	net_addr_set_port(&addr, number);
	port->forward = forward;
	port->port = number;
	port->wildcard = net_addr_is_wildcard(&addr);
	struct udp_port *existing = udp_relay_find_port(forward->relay, &addr);
	if (existing != NULL) {
		port->fd = fcntl(existing->fd, F_DUPFD_CLOEXEC, 0);
		if (port->fd >= 0) {
			existing->handed_over = true;
			existing->taken_by = port;
			port->taken_from = existing;
		}
	} else {
		enum net_share share = forward->ctx->options.share;
		/* Held by this process, for a draining forward in another worker: join it. */
		if (share == NET_SHARED_FIRST && forward->ctx->options.udp_draining != NULL &&
		    port_claims_hold(forward->ctx->options.udp_draining, &addr))
			share = NET_SHARED;
		port->fd = net_bind_udp(&addr, share | (fwd->freebind ? NET_FREEBIND : 0));
	}
	if (port->fd < 0) {
		char where[NET_ADDR_STRLEN];
		snprintf(err, err_len, "forward \"%s\": cannot listen on %s (udp): %s", fwd->name,
			 net_addr_format(&addr, where, sizeof where), strerror(errno));
		log_error(fwd->name, "cannot listen on %s (udp): %s", where, strerror(errno));
		return -1;
	}
	return 0;
}

/* Starts reading clients' datagrams on the port. */
static int udp_port_start(struct udp_port *port)
{
	struct udp_forward *forward = port->forward;
	port->event = event_new(forward->ctx->base, port->fd, EV_READ | EV_PERSIST,
				udp_port_on_readable, port);
	if (port->event == NULL || event_add(port->event, NULL) < 0) {
		log_error(forward->fwd->name, "cannot register udp port %u", port->port);
		return -1;
	}
	return 0;
}

/* Stops reading on a port whose socket a new forward has taken over. */
static void udp_port_hand_over(struct udp_port *port)
{
	if (port->event != NULL)
		event_free(port->event);
	port->event = NULL;
}

/* A draining forward's ports: claimed while it holds them (port_claims.h). */
static void udp_forward_release_claim(struct udp_forward *forward)
{
	if (forward->claimed)
		port_claims_remove(forward->ctx->options.udp_draining, &forward->fwd->external_addr,
				   forward->fwd->external_port_first,
				   forward->fwd->external_port_last);
	forward->claimed = false;
}

/*
 * The port leaves its chain (see struct udp_port). If it was the reader,
 * the port it copied reads again: a prepared reload aborted, or the new
 * forward went while the older one still drains (a rule enabled, then
 * disabled again): that socket is still in the kernel's group for the
 * address, and datagrams sent to it must not sit unread.
 */
static void udp_port_unlink(struct udp_port *port)
{
	struct udp_port *older = port->taken_from, *newer = port->taken_by;
	if (older != NULL)
		older->taken_by = newer;
	if (newer != NULL) {
		newer->taken_from = older;
	} else if (older != NULL) {
		older->handed_over = false;
		if (older->event == NULL)
			udp_port_start(older);
	}
	port->taken_from = port->taken_by = NULL;
}

static void udp_forward_free(struct udp_forward *forward)
{
	struct flow_entry *entry;
	while ((entry = flow_table_oldest(&forward->flows)) != NULL)
		udp_flow_free(forward, udp_flow_of(entry), NULL);
	flow_table_destroy(&forward->flows);
	if (forward->expiry_timer != NULL)
		event_free(forward->expiry_timer);
	for (unsigned i = 0; i < forward->port_count; i++) {
		struct udp_port *port = &forward->ports[i];
		if (port->event != NULL)
			event_free(port->event);
		if (port->fd >= 0)
			close(port->fd);
		udp_port_unlink(port);
	}
	free(forward->ports);
	if (forward->linked) {
		TAILQ_REMOVE(&forward->relay->forwards, forward, link);
		if (forward->draining) {
			udp_forward_release_claim(forward);
			relay_ctx_release_forward(forward->ctx, forward->fwd);
		}
		else
			forward->relay->socket_count -= forward->port_count;
	}
	free(forward);
}

/* The settings a forward takes from its rule; again at every reload. */
static void udp_forward_follow(struct udp_forward *forward, const struct forward *fwd)
{
	struct relay_ctx *ctx = forward->ctx;
	forward->fwd = fwd;
	/* At least a millisecond: a flow must live long enough for a reply. */
	forward->idle_timeout_ms = (uint64_t)(fwd->udp_idle_timeout * 1000.0);
	if (forward->idle_timeout_ms == 0)
		forward->idle_timeout_ms = 1;
	forward->unreplied_timeout_ms = (uint64_t)(ctx->rules->cfg.udp_unreplied_timeout * 1000.0);
	if (forward->unreplied_timeout_ms == 0 || forward->unreplied_timeout_ms > forward->idle_timeout_ms)
		forward->unreplied_timeout_ms = forward->idle_timeout_ms;
	/* Automatic (0): the process's budget for flows is the only bound. */
	forward->max_flows = ctx->rules->cfg.udp_max_flows != 0 ? ctx->rules->cfg.udp_max_flows : UINT_MAX;
	forward->flows_open = &fwd->stats->udp_flows_open;
	forward->counters = relay_ctx_counters(ctx, fwd);
}

static struct udp_forward *udp_forward_new(struct udp_relay *udp, const struct forward *fwd,
					   char *err, size_t err_len)
{
	struct relay_ctx *ctx = udp->ctx;
	struct udp_forward *forward = calloc(1, sizeof *forward);
	if (forward == NULL)
		goto oom;
	forward->ctx = ctx;
	forward->relay = udp;
	TAILQ_INIT(&forward->unreplied);
	udp_forward_follow(forward, fwd);
	forward->ports = calloc(forward_port_count(fwd), sizeof *forward->ports);
	if (forward->ports == NULL || flow_table_init(&forward->flows) < 0)
		goto oom;
	forward->expiry_timer = evtimer_new(ctx->base, udp_on_expiry, forward);
	if (forward->expiry_timer == NULL)
		goto oom;
	for (unsigned p = fwd->external_port_first; p <= fwd->external_port_last; p++) {
		/* Counted first so that free closes a half-opened forward. */
		struct udp_port *port = &forward->ports[forward->port_count++];
		if (udp_port_open(forward, port, (uint16_t)p, err, err_len) < 0) {
			udp_forward_free(forward);
			return NULL;
		}
	}
	return forward;
oom:
	snprintf(err, err_len, "forward \"%s\": out of memory for its udp sockets", fwd->name);
	if (forward != NULL)
		udp_forward_free(forward);
	return NULL;
}

/* The current (not draining) forward of udp in fwd's place, or NULL. */
static struct udp_forward *udp_relay_find_forward(struct udp_relay *udp, const struct forward *fwd)
{
	struct udp_forward *forward;
	TAILQ_FOREACH(forward, &udp->forwards, link) {
		if (!forward->draining && forward_same_place(forward->fwd, fwd))
			return forward;
	}
	return NULL;
}

struct udp_plan *udp_relay_prepare(struct udp_relay *udp, const struct ruleset *rules,
				   char *err, size_t err_len)
{
	struct udp_plan *plan = calloc(1, sizeof *plan);
	if (plan == NULL) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	TAILQ_INIT(&plan->added);
	for (size_t i = 0; i < rules->cfg.forward_count; i++) {
		const struct forward *fwd = &rules->cfg.forwards[i];
		if (!fwd->enabled || !(fwd->proto & FORWARD_UDP) ||
		    udp_relay_find_forward(udp, fwd) != NULL)
			continue;
		struct udp_forward *forward = udp_forward_new(udp, fwd, err, err_len);
		if (forward == NULL) {
			udp_relay_abort(plan);
			return NULL;
		}
		TAILQ_INSERT_TAIL(&plan->added, forward, link);
	}
	return plan;
}

void udp_relay_abort(struct udp_plan *plan)
{
	if (plan == NULL)
		return;
	struct udp_forward *forward;
	while ((forward = TAILQ_FIRST(&plan->added)) != NULL) {
		TAILQ_REMOVE(&plan->added, forward, link);
		udp_forward_free(forward);
	}
	free(plan);
}

/* A reload removed the forward: it serves its open flows, and goes when they have. */
static void udp_forward_start_draining(struct udp_forward *forward)
{
	forward->draining = true;
	forward->relay->socket_count -= forward->port_count;
	relay_ctx_take_forward(forward->ctx, forward->fwd);
	if (flow_table_count(&forward->flows) == 0) {
		udp_forward_free(forward);
		return;
	}
	struct port_claims *claims = forward->ctx->options.udp_draining;
	forward->claimed = claims != NULL &&
			   port_claims_add(claims, &forward->fwd->external_addr,
					   forward->fwd->external_port_first,
					   forward->fwd->external_port_last) == 0;
}

/* A reload kept the forward's place: it runs on under the new rule. */
static void udp_forward_keep(struct udp_forward *forward, const struct forward *fwd)
{
	const struct forward *old = forward->fwd;
	udp_forward_follow(forward, fwd);
	if (forward_same_target(old, fwd) || flow_table_count(&forward->flows) == 0)
		return;
	/* Flows open now go on to the old target (their sockets are connected to it). */
	uint64_t now = relay_now_ms();
	forward->rule_changed_ms = now + 1;
	double drain = forward->ctx->rules->cfg.drain_timeout;
	forward->old_flows_deadline_ms = drain > 0 ? now + (uint64_t)(drain * 1000.0) : 0;
}

void udp_relay_commit(struct udp_relay *udp, struct udp_plan *plan)
{
	const struct ruleset *rules = udp->ctx->rules;
	struct udp_forward *forward, *next;
	for (forward = TAILQ_FIRST(&udp->forwards); forward != NULL; forward = next) {
		next = TAILQ_NEXT(forward, link);
		for (unsigned i = 0; i < forward->port_count; i++) {
			if (forward->ports[i].handed_over)
				udp_port_hand_over(&forward->ports[i]);
		}
		if (forward->draining)
			continue;
		const struct forward *fwd = ruleset_find_place(rules, forward->fwd);
		if (fwd != NULL && (fwd->proto & FORWARD_UDP))
			udp_forward_keep(forward, fwd);
		else
			udp_forward_start_draining(forward);
	}
	while ((forward = TAILQ_FIRST(&plan->added)) != NULL) {
		TAILQ_REMOVE(&plan->added, forward, link);
		TAILQ_INSERT_HEAD(&udp->forwards, forward, link);
		forward->linked = true;
		udp->socket_count += forward->port_count;
		for (unsigned i = 0; i < forward->port_count; i++)
			udp_port_start(&forward->ports[i]);
	}
	free(plan);
}

/* Closes the forward's flows created before its rule changed; how many. */
static unsigned udp_forward_close_old_flows(struct udp_forward *forward)
{
	unsigned closed = 0;
	struct flow_entry *entry = flow_table_oldest(&forward->flows), *next;
	for (; entry != NULL; entry = next) {
		next = TAILQ_NEXT(entry, recency);
		struct udp_flow *flow = udp_flow_of(entry);
		if (flow->created_ms >= forward->rule_changed_ms)
			continue;
		udp_flow_free(forward, flow, "drain_timeout after a reload");
		closed++;
	}
	forward->counters->udp_drain_closed += closed;
	return closed;
}

unsigned udp_relay_drain_due(struct udp_relay *udp, uint64_t now_ms)
{
	unsigned closed = 0;
	struct udp_forward *forward, *next;
	for (forward = TAILQ_FIRST(&udp->forwards); forward != NULL; forward = next) {
		next = TAILQ_NEXT(forward, link);
		if (!forward->draining) {
			if (forward->old_flows_deadline_ms != 0 &&
			    forward->old_flows_deadline_ms <= now_ms) {
				forward->old_flows_deadline_ms = 0;
				closed += udp_forward_close_old_flows(forward);
			}
			continue;
		}
		const struct relay_rules_use *use = relay_ctx_retired_of(forward->ctx, forward->fwd);
		if (use == NULL || use->drain_deadline_ms == 0 || use->drain_deadline_ms > now_ms)
			continue;
		unsigned flows = flow_table_count(&forward->flows);
		forward->counters->udp_drain_closed += flows;
		closed += flows;
		udp_forward_free(forward);
	}
	return closed;
}

uint64_t udp_relay_next_drain_ms(const struct udp_relay *udp)
{
	uint64_t next = 0;
	const struct udp_forward *forward;
	TAILQ_FOREACH(forward, &udp->forwards, link) {
		uint64_t due = forward->old_flows_deadline_ms;
		if (due != 0 && (next == 0 || due < next))
			next = due;
	}
	return next;
}

struct udp_relay *udp_relay_new(struct relay_ctx *ctx)
{
	struct udp_relay *udp = calloc(1, sizeof *udp);
	if (udp == NULL)
		return NULL;
	udp->ctx = ctx;
	udp->flow_epoll_fd = -1;
	TAILQ_INIT(&udp->forwards);
	if (udp_batch_init(&udp->batch) < 0 ||
	    (udp->flow_epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		log_error(NULL, "cannot set up UDP relaying: %s", strerror(errno));
		udp_relay_free(udp);
		return NULL;
	}
	udp->flow_epoll_event = event_new(ctx->base, udp->flow_epoll_fd, EV_READ | EV_PERSIST,
					  udp_on_flow_sockets, udp);
	if (udp->flow_epoll_event == NULL || event_add(udp->flow_epoll_event, NULL) < 0) {
		udp_relay_free(udp);
		return NULL;
	}
	return udp;
}

unsigned udp_relay_socket_count(const struct udp_relay *udp)
{
	return udp->socket_count;
}

void udp_relay_free(struct udp_relay *udp)
{
	if (udp == NULL)
		return;
	struct udp_forward *forward;
	while ((forward = TAILQ_FIRST(&udp->forwards)) != NULL)
		udp_forward_free(forward);
	if (udp->flow_epoll_event != NULL)
		event_free(udp->flow_epoll_event);
	if (udp->flow_epoll_fd >= 0)
		close(udp->flow_epoll_fd);
	udp_batch_free(&udp->batch);
	free(udp);
}
