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
#include <sys/socket.h>
#include <unistd.h>

#include "portrelay/config.h"
#include "portrelay/flow_table.h"
#include "portrelay/log.h"
#include "portrelay/net.h"
#include "portrelay/relay.h"

/* Datagrams handled per wake-up of one socket before others get a turn. */
#define UDP_DATAGRAMS_PER_WAKEUP 64
/*
 * One byte more than the largest UDP payload (65535 - 8 - 20 = 65507 over
 * IPv4; IPv6 allows 65527): anything that does not fit is reported by
 * MSG_TRUNC and dropped instead of being forwarded cut.
 */
#define UDP_BUFFER_SIZE 65536
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

struct udp_flow {
	struct flow_entry entry;       /* key: client address + external port */
	struct udp_port *port;
	int fd;                        /* connected to the internal host:port */
	struct event *event;
	union {
		struct sockaddr sa;
		struct sockaddr_in v4;
		struct sockaddr_in6 v6;
	} client;
	socklen_t client_len;
	struct udp_local local;
	uint64_t created_ms;
	uint64_t datagrams_to_internal;
	uint64_t datagrams_to_client;
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
	struct udp_port *ports;
	unsigned port_count;
	uint64_t last_warn_ms;
	uint64_t dropped_since_warn;
};

struct udp_relay {
	struct relay_ctx *ctx;
	struct udp_forward *forwards;
	unsigned forward_count;
	unsigned socket_count;
	/* Scratch space for one datagram; the loop handles one at a time. */
	unsigned char buffer[UDP_BUFFER_SIZE];
};

static uint64_t udp_now_ms(struct relay_ctx *ctx)
{
	struct timeval now;
	event_base_gettimeofday_cached(ctx->base, &now);
	return (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_usec / 1000;
}

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
		struct net_addr client_addr = { .len = flow->client_len };
		memcpy(&client_addr.ss, &flow->client, flow->client_len);
		struct net_addr internal_addr = forward->fwd->internal_addr;
		net_addr_set_port(&internal_addr,
				  (uint16_t)(forward->fwd->internal_port_first +
					     (flow->port->port - forward->fwd->external_port_first)));
		log_debug(forward->fwd->name,
			  "udp flow closed %s -> %s: %llu datagrams to internal, %llu datagrams "
			  "to client, %.3f s, %s",
			  net_addr_format(&client_addr, client, sizeof client),
			  net_addr_format(&internal_addr, internal, sizeof internal),
			  (unsigned long long)flow->datagrams_to_internal,
			  (unsigned long long)flow->datagrams_to_client,
			  (double)(udp_now_ms(forward->ctx) - flow->created_ms) / 1000.0, reason);
	}
	flow_table_remove(&forward->flows, &flow->entry);
	atomic_fetch_sub(forward->flows_open, 1);
	if (flow->event != NULL)
		event_free(flow->event);
	close(flow->fd);
	free(flow);
}

/* Logs at most once a second; counts what it did not log. */
static void udp_warn_limited(struct udp_forward *forward, const char *what)
{
	uint64_t now = udp_now_ms(forward->ctx);
	forward->dropped_since_warn++;
	if (now - forward->last_warn_ms < UDP_WARN_INTERVAL_MS && forward->last_warn_ms != 0)
		return;
	log_warn(forward->fwd->name, "%s: %llu datagrams from new clients dropped", what,
		 (unsigned long long)forward->dropped_since_warn);
	forward->last_warn_ms = now;
	forward->dropped_since_warn = 0;
}

static void udp_expiry_arm(struct udp_forward *forward, uint64_t now_ms)
{
	struct flow_entry *oldest = flow_table_oldest(&forward->flows);
	if (oldest == NULL)
		return;
	uint64_t due = oldest->last_active_ms + forward->idle_timeout_ms;
	uint64_t delay = due > now_ms ? due - now_ms : 0;
	struct timeval tv = { .tv_sec = (time_t)(delay / 1000),
			      .tv_usec = (suseconds_t)(delay % 1000) * 1000 };
	event_add(forward->expiry_timer, &tv);
}

/* Closes the flows idle past the timeout, oldest first, then re-arms. */
static void udp_on_expiry(evutil_socket_t fd, short what, void *arg)
{
	struct udp_forward *forward = arg;
	(void)fd;
	(void)what;
	uint64_t now = udp_now_ms(forward->ctx);
	struct flow_entry *oldest;
	while ((oldest = flow_table_oldest(&forward->flows)) != NULL &&
	       now - oldest->last_active_ms >= forward->idle_timeout_ms) {
		forward->ctx->counters.udp_flows_expired++;
		udp_flow_free(forward, udp_flow_of(oldest), "idle timeout");
	}
	udp_expiry_arm(forward, now);
}

static void udp_flow_touch(struct udp_forward *forward, struct udp_flow *flow)
{
	flow_table_touch(&forward->flows, &flow->entry, udp_now_ms(forward->ctx));
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
			return;
		}
	}
}

/* Sends one reply to the flow's client from the external socket. */
static void udp_send_to_client(struct udp_forward *forward, struct udp_flow *flow,
			       const void *data, size_t len)
{
	struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
	struct msghdr msg = { .msg_name = &flow->client, .msg_namelen = flow->client_len,
			      .msg_iov = &iov, .msg_iovlen = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(struct in6_pktinfo))];
		struct cmsghdr align;
	} control;

	if (flow->port->wildcard && flow->local.known) {
		bool v4 = flow->local.level == IPPROTO_IP;
		size_t info_len = v4 ? sizeof flow->local.info.v4 : sizeof flow->local.info.v6;
		memset(&control, 0, sizeof control);
		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE(info_len);
		struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = flow->local.level;
		cmsg->cmsg_type = v4 ? IP_PKTINFO : IPV6_PKTINFO;
		cmsg->cmsg_len = CMSG_LEN(info_len);
		memcpy(CMSG_DATA(cmsg), &flow->local.info, info_len);
	}
	if (sendmsg(flow->port->fd, &msg, MSG_DONTWAIT) < 0) {
		/* UDP has no back-pressure: a full socket buffer drops, as a router would. */
		forward->ctx->counters.udp_dropped_send++;
		return;
	}
	forward->ctx->counters.udp_datagrams_to_client++;
	flow->datagrams_to_client++;
}

/* Replies from the internal server, read until EAGAIN or the turn ends. */
static void udp_flow_on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct udp_flow *flow = arg;
	struct udp_forward *forward = flow->port->forward;
	struct relay_ctx *ctx = forward->ctx;
	unsigned char *buffer = forward->relay->buffer;
	(void)what;

	for (int i = 0; i < UDP_DATAGRAMS_PER_WAKEUP; i++) {
		/* MSG_TRUNC makes recv return the datagram's real length. */
		ssize_t len = recv(fd, buffer, UDP_BUFFER_SIZE, MSG_TRUNC);
		if (len < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			if (errno == ECONNREFUSED) {
				/*
				 * ICMP port unreachable for an earlier datagram. Reading
				 * it cleared it; the flow stays, since the server may
				 * come back, and expires as usual if it does not.
				 */
				ctx->counters.udp_refused++;
				continue;
			}
			if (errno == EINTR)
				continue;
			log_debug(forward->fwd->name, "udp flow recv: %s", strerror(errno));
			break;
		}
		if ((size_t)len > UDP_BUFFER_SIZE) {
			ctx->counters.udp_dropped_truncated++;
			continue;
		}
		udp_send_to_client(forward, flow, buffer, (size_t)len);
	}
	udp_flow_touch(forward, flow);
}

static struct udp_flow *udp_flow_open(struct udp_port *port, const struct flow_key *key,
				      uint32_t hash, const struct sockaddr *client,
				      socklen_t client_len)
{
	struct udp_forward *forward = port->forward;
	struct relay_ctx *ctx = forward->ctx;

	/* Take a place first, so that two workers cannot both take the last one. */
	if (atomic_fetch_add(forward->flows_open, 1) >= forward->max_flows) {
		atomic_fetch_sub(forward->flows_open, 1);
		ctx->counters.udp_dropped_table_full++;
		udp_warn_limited(forward, "flow table full (udp.max_flows)");
		return NULL;
	}
	struct udp_flow *flow = calloc(1, sizeof *flow);
	if (flow == NULL)
		goto fail;
	flow->fd = -1;
	struct net_addr internal = forward->fwd->internal_addr;
	net_addr_set_port(&internal, (uint16_t)(forward->fwd->internal_port_first +
						(port->port - forward->fwd->external_port_first)));
	flow->fd = net_connect_udp(&internal);
	if (flow->fd < 0)
		goto fail;
	flow->event = event_new(ctx->base, flow->fd, EV_READ | EV_PERSIST, udp_flow_on_readable,
				flow);
	if (flow->event == NULL || event_add(flow->event, NULL) < 0)
		goto fail;

	uint64_t now = udp_now_ms(ctx);
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
	ctx->counters.udp_flows_created++;
	return flow;
fail:
	atomic_fetch_sub(forward->flows_open, 1);
	ctx->counters.udp_flow_failed++;
	udp_warn_limited(forward, "cannot open a flow socket");
	if (flow != NULL) {
		if (flow->event != NULL)
			event_free(flow->event);
		if (flow->fd >= 0)
			close(flow->fd);
		free(flow);
	}
	return NULL;
}

/* Sends a client's datagram to the internal server through its flow. */
static void udp_send_to_internal(struct udp_forward *forward, struct udp_flow *flow,
				 const void *data, size_t len)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		if (send(flow->fd, data, len, MSG_DONTWAIT) >= 0) {
			forward->ctx->counters.udp_datagrams_to_internal++;
			flow->datagrams_to_internal++;
			return;
		}
		/*
		 * A pending ICMP error from an earlier datagram is reported by this
		 * send instead of sending; it is now cleared, so try once more.
		 */
		if (errno != ECONNREFUSED)
			break;
		forward->ctx->counters.udp_refused++;
	}
	forward->ctx->counters.udp_dropped_send++;
}

/* Datagrams from clients, read until EAGAIN or the turn ends. */
static void udp_port_on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct udp_port *port = arg;
	struct udp_forward *forward = port->forward;
	struct relay_ctx *ctx = forward->ctx;
	unsigned char *buffer = forward->relay->buffer;
	(void)what;

	for (int i = 0; i < UDP_DATAGRAMS_PER_WAKEUP; i++) {
		union {
			struct sockaddr sa;
			struct sockaddr_in v4;
			struct sockaddr_in6 v6;
		} client;
		union {
			char buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) +
				 CMSG_SPACE(sizeof(struct in_pktinfo))];
			struct cmsghdr align;
		} control;
		struct iovec iov = { .iov_base = buffer, .iov_len = UDP_BUFFER_SIZE };
		struct msghdr msg = { .msg_name = &client, .msg_namelen = sizeof client,
				      .msg_iov = &iov, .msg_iovlen = 1 };
		if (port->wildcard) {
			msg.msg_control = control.buf;
			msg.msg_controllen = sizeof control.buf;
		}
		ssize_t len = recvmsg(fd, &msg, 0);
		if (len < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			if (errno == EINTR)
				continue;
			log_debug(forward->fwd->name, "udp recv on port %u: %s", port->port,
				  strerror(errno));
			break;
		}
		if (msg.msg_flags & MSG_TRUNC) {
			ctx->counters.udp_dropped_truncated++;
			continue;
		}

		struct flow_key key;
		flow_key_set(&key, &client.sa, port->port);
		uint32_t hash = flow_table_hash(&forward->flows, &key);
		struct flow_entry *entry = flow_table_lookup(&forward->flows, &key, hash);
		struct udp_flow *flow = entry != NULL ? udp_flow_of(entry)
						       : udp_flow_open(port, &key, hash, &client.sa,
								       msg.msg_namelen);
		if (flow == NULL)
			continue;
		if (port->wildcard)
			udp_local_from_cmsg(&flow->local, &msg);
		udp_send_to_internal(forward, flow, buffer, (size_t)len);
		udp_flow_touch(forward, flow);
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
	forward->idle_timeout_ms = (uint64_t)(fwd->udp_idle_timeout * 1000.0);
	forward->max_flows = ctx->config->udp_max_flows;
	forward->flows_open = &ctx->options.udp_flows_open[fwd - ctx->config->forwards];
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
	udp->forwards = calloc(cfg->forward_count + 1, sizeof *udp->forwards);
	if (udp->forwards == NULL) {
		free(udp);
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

unsigned udp_relay_flow_count(const struct udp_relay *udp)
{
	unsigned flows = 0;
	for (unsigned i = 0; i < udp->forward_count; i++)
		flows += flow_table_count(&udp->forwards[i].flows);
	return flows;
}

void udp_relay_free(struct udp_relay *udp)
{
	if (udp == NULL)
		return;
	for (unsigned i = 0; i < udp->forward_count; i++)
		udp_forward_close(&udp->forwards[i]);
	free(udp->forwards);
	free(udp);
}
