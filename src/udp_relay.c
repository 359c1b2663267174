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
#include <event2/event.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "portrelay/config.h"
#include "portrelay/flow_table.h"
#include "portrelay/log.h"
#include "portrelay/net.h"
#include "portrelay/relay.h"
#include "portrelay/udp_batch.h"

/* Batches read per wake-up of an external socket before others get a turn. */
#define UDP_BATCHES_PER_WAKEUP 2
/* Flows served per wake-up of the flow sockets' epoll set. */
#define UDP_FLOWS_PER_WAKEUP 64
/* Rate limit for "table full" and "cannot open flow" warnings. */
#define UDP_WARN_INTERVAL_MS 1000

struct udp_forward;

struct udp_port {
	int fd;
	struct event *event;
	uint16_t port;
	bool wildcard;                 /* replies need an explicit source address */
	struct udp_forward *forward;
};

/* The address a client sent to, as the kernel reported it (wildcard binds). */
struct udp_local {
	bool known;
	int level;                     /* IPPROTO_IP (which is 0) or IPPROTO_IPV6 */
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
	struct flow_entry entry;       /* key: client address + external port */
	struct udp_port *port;
	int fd;                        /* connected to the internal host:port */
	socklen_t client_len;
	union net_sockaddr client;
	struct udp_local local;
	uint64_t created_ms;
	uint32_t datagrams_to_internal;
	uint32_t datagrams_to_client;
};

/* Why new clients' datagrams were dropped; each reason is logged on its own. */
enum udp_drop_reason {
	UDP_DROP_TABLE_FULL,
	UDP_DROP_NO_SOCKET,
	UDP_DROP_REASONS,
};

struct udp_forward {
	struct relay_ctx *ctx;
	struct udp_relay *relay;
	const struct forward *fwd;
	struct flow_table flows;
	struct event *expiry_timer;
	uint64_t idle_timeout_ms;
	unsigned max_flows;
	atomic_uint *flows_open;       /* this forward's flows in every worker */
	struct relay_counters *counters;  /* the forward's block in this worker */
	struct udp_port *ports;
	unsigned port_count;
	struct udp_drop_log {
		uint64_t last_warn_ms;
		uint64_t since_warn;
	} drop_log[UDP_DROP_REASONS];
};

struct udp_relay {
	struct relay_ctx *ctx;
	struct udp_forward *forwards;
	unsigned forward_count;
	unsigned socket_count;
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

static void udp_flow_free(struct udp_forward *forward, struct udp_flow *flow, const char *reason)
{
	if (reason != NULL && log_enabled(LOG_LEVEL_DEBUG)) {
		char client[NET_ADDR_STRLEN], internal[NET_ADDR_STRLEN];
		struct net_addr client_addr;
		net_addr_set(&client_addr, &flow->client.sa, flow->client_len);
		struct net_addr internal_addr = forward_internal_addr(forward->fwd, flow->port->port);
		log_debug(forward->fwd->name,
			  "udp flow closed %s -> %s: %llu datagrams to internal, %llu datagrams "
			  "to client, %.3f s, %s",
			  net_addr_format(&client_addr, client, sizeof client),
			  net_addr_format(&internal_addr, internal, sizeof internal),
			  (unsigned long long)flow->datagrams_to_internal,
			  (unsigned long long)flow->datagrams_to_client,
			  (double)(relay_now_ms() - flow->created_ms) / 1000.0, reason);
	}
	flow_table_remove(&forward->flows, &flow->entry);
	atomic_fetch_sub(forward->flows_open, 1);
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

static void udp_expiry_arm(struct udp_forward *forward, uint64_t now_ms)
{
	struct flow_entry *oldest = flow_table_oldest(&forward->flows);
	if (oldest == NULL)
		return;
	uint64_t due = oldest->last_active_ms + forward->idle_timeout_ms;
	struct timeval tv = relay_ms_to_timeval(due > now_ms ? due - now_ms : 0);
	event_add(forward->expiry_timer, &tv);
}

/* Closes the flows idle past the timeout, oldest first, then re-arms. */
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
	udp_expiry_arm(forward, now);
}

static void udp_flow_touch(struct udp_forward *forward, struct udp_flow *flow)
{
	flow_table_touch(&forward->flows, &flow->entry, relay_now_ms());
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

static struct udp_flow *udp_flow_open(struct udp_port *port, const struct flow_key *key,
				      uint32_t hash, const union net_sockaddr *client,
				      socklen_t client_len)
{
	struct udp_forward *forward = port->forward;

	/* Take a place first, so that two workers cannot both take the last one. */
	if (atomic_fetch_add(forward->flows_open, 1) >= forward->max_flows) {
		atomic_fetch_sub(forward->flows_open, 1);
		forward->counters->udp_dropped_table_full++;
		udp_warn_limited(forward, UDP_DROP_TABLE_FULL, "flow table full (udp.max_flows)", 0);
		return NULL;
	}
	struct udp_flow *flow = calloc(1, sizeof *flow);
	if (flow == NULL)
		goto fail;
	flow->fd = -1;
	struct net_addr internal = forward_internal_addr(forward->fwd, port->port);
	flow->fd = net_connect_udp(&internal);
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
	if (flow_table_insert(&forward->flows, &flow->entry, now) < 0)
		goto fail;
	if (!evtimer_pending(forward->expiry_timer, NULL))
		udp_expiry_arm(forward, now);
	forward->counters->udp_flows_created++;
	return flow;
fail:;
	/*
	 * Usually EMFILE, or EAGAIN when the local ports run out: every flow's
	 * connected socket holds one of net.ipv4.ip_local_port_range.
	 */
	int error = errno;
	atomic_fetch_sub(forward->flows_open, 1);
	forward->counters->udp_flow_failed++;
	udp_warn_limited(forward, UDP_DROP_NO_SOCKET, "cannot open a flow socket", error);
	if (flow != NULL) {
		if (flow->fd >= 0)
			close(flow->fd);
		free(flow);
	}
	return NULL;
}

/* The flow of received datagram i: found, or opened for a new client. */
static struct udp_flow *udp_flow_for(struct udp_port *port, struct udp_batch *batch, unsigned i)
{
	struct udp_forward *forward = port->forward;
	struct flow_key key;
	flow_key_set(&key, &batch->from[i].sa, port->port);
	uint32_t hash = flow_table_hash(&forward->flows, &key);
	struct flow_entry *entry = flow_table_lookup(&forward->flows, &key, hash);
	if (entry != NULL)
		return udp_flow_of(entry);
	return udp_flow_open(port, &key, hash, &batch->from[i], batch->in[i].msg_hdr.msg_namelen);
}

/*
 * Sends received datagrams [first, last) of one flow to the internal server
 * through the flow's socket, in one sendmmsg.
 */
static void udp_flow_send_run(struct udp_batch *batch, struct udp_flow *flow, unsigned first,
			      unsigned last)
{
	struct relay_counters *counters = flow->port->forward->counters;
	for (unsigned i = first; i < last; i++)
		udp_batch_queue(batch, i - first, i);
	unsigned sent = udp_batch_send(batch, flow->fd, 0, last - first, &counters->udp_refused);
	counters->udp_dropped_send += (last - first) - sent;
	counters->udp_datagrams_to_internal += sent;
	flow->datagrams_to_internal += sent;
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
		if (flows[i] != NULL && port->wildcard)
			udp_local_from_cmsg(&flows[i]->local, &batch->in[i].msg_hdr);
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

/* ---- set-up and tear-down ------------------------------------------------ */

static int udp_port_open(struct udp_forward *forward, struct udp_port *port, uint16_t number)
{
	const struct forward *fwd = forward->fwd;
	struct net_addr addr = fwd->external_addr;
	net_addr_set_port(&addr, number);
	port->forward = forward;
	port->port = number;
	port->wildcard = net_addr_is_wildcard(&addr);
	port->fd = net_bind_udp(&addr, forward->ctx->options.share);
	if (port->fd < 0) {
		char where[NET_ADDR_STRLEN];
		log_error(fwd->name, "cannot listen on %s (udp): %s",
			  net_addr_format(&addr, where, sizeof where), strerror(errno));
		return -1;
	}
	port->event = event_new(forward->ctx->base, port->fd, EV_READ | EV_PERSIST,
				udp_port_on_readable, port);
	if (port->event == NULL || event_add(port->event, NULL) < 0) {
		log_error(fwd->name, "cannot register udp port %u", number);
		return -1;
	}
	return 0;
}

static void udp_forward_close(struct udp_forward *forward)
{
	struct flow_entry *entry;
	while ((entry = flow_table_oldest(&forward->flows)) != NULL)
		udp_flow_free(forward, udp_flow_of(entry), NULL);
	flow_table_destroy(&forward->flows);
	if (forward->expiry_timer != NULL)
		event_free(forward->expiry_timer);
	for (unsigned i = 0; i < forward->port_count; i++) {
		if (forward->ports[i].event != NULL)
			event_free(forward->ports[i].event);
		if (forward->ports[i].fd >= 0)
			close(forward->ports[i].fd);
	}
	free(forward->ports);
}

static int udp_forward_open(struct udp_relay *udp, struct udp_forward *forward,
			    const struct forward *fwd)
{
	struct relay_ctx *ctx = udp->ctx;
	forward->ctx = ctx;
	forward->relay = udp;
	forward->fwd = fwd;
	/* At least a millisecond: a flow must live long enough for a reply. */
	forward->idle_timeout_ms = (uint64_t)(fwd->udp_idle_timeout * 1000.0);
	if (forward->idle_timeout_ms == 0)
		forward->idle_timeout_ms = 1;
	forward->max_flows = ctx->config->udp_max_flows;
	forward->flows_open = &ctx->options.udp_flows_open[fwd - ctx->config->forwards];
	forward->counters = relay_ctx_counters(ctx, fwd);
	if (flow_table_init(&forward->flows) < 0)
		return -1;
	forward->expiry_timer = evtimer_new(ctx->base, udp_on_expiry, forward);
	forward->ports = calloc(forward_port_count(fwd), sizeof *forward->ports);
	if (forward->expiry_timer == NULL || forward->ports == NULL)
		return -1;
	for (unsigned p = fwd->external_port_first; p <= fwd->external_port_last; p++) {
		struct udp_port *port = &forward->ports[forward->port_count++];
		if (udp_port_open(forward, port, (uint16_t)p) < 0)
			return -1;
		udp->socket_count++;
	}
	return 0;
}

struct udp_relay *udp_relay_open(struct relay_ctx *ctx)
{
	const struct config *cfg = ctx->config;
	struct udp_relay *udp = calloc(1, sizeof *udp);
	if (udp == NULL)
		return NULL;
	udp->ctx = ctx;
	udp->flow_epoll_fd = -1;
	udp->forwards = calloc(cfg->forward_count + 1, sizeof *udp->forwards);
	if (udp->forwards == NULL || udp_batch_init(&udp->batch) < 0 ||
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
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *fwd = &cfg->forwards[i];
		if (!fwd->enabled || !(fwd->proto & FORWARD_UDP))
			continue;
		/* Counted first so that free releases a half-opened forward. */
		struct udp_forward *forward = &udp->forwards[udp->forward_count++];
		if (udp_forward_open(udp, forward, fwd) < 0) {
			udp_relay_free(udp);
			return NULL;
		}
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
	for (unsigned i = 0; i < udp->forward_count; i++)
		udp_forward_close(&udp->forwards[i]);
	if (udp->flow_epoll_event != NULL)
		event_free(udp->flow_epoll_event);
	if (udp->flow_epoll_fd >= 0)
		close(udp->flow_epoll_fd);
	udp_batch_free(&udp->batch);
	free(udp->forwards);
	free(udp);
}
