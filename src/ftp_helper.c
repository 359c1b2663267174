/*
 * ftp_helper.c - the FTP helper's sockets: a control connection's bytes
 * through its ftp_filter, and the data listeners (ftp_helper.h).
 */
#include "portrelay/ftp_helper.h"

#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "portrelay/config.h"
#include "portrelay/ftp_filter.h"
#include "portrelay/log.h"
#include "portrelay/relay.h"

/* Reads per side and run before other connections get a turn. */
#define FTP_READS_PER_RUN 8
#define FTP_ROUNDS_PER_RUN 4
/* At most one warning per second per worker about refused data connections. */
#define FTP_WARN_INTERVAL_MS 1000

struct ftp_link {
	unsigned refs;        /* the helper, and each data connection */
	unsigned data_open;
};

struct ftp_data_listener {
	struct ftp_helper *owner;
	int fd;
	struct event *accept_event;
	struct event *timer;
	struct net_addr allowed_peer;   /* the only address whose connection it takes */
	struct net_addr target;
	struct net_addr source;
	bool for_server;                /* active mode: the server connects */
};

struct ftp_helper {
	struct relay_ctx *ctx;
	const struct forward *forward;
	ftp_data_start_fn start_data;
	struct ftp_filter *filter;
	struct ftp_link *link;
	int fd[2];                      /* indexed by enum ftp_side */
	struct net_addr peer[2];        /* the client's and the server's addresses */
	struct net_addr local[2];       /* the relay's address facing each */
	bool eof[2];                    /* FIN read from that side */
	bool shut[2];                   /* FIN sent to that side */
	uint64_t bytes_to[2];           /* delivered to each side */
	struct ftp_data_listener *listeners[FTP_DATA_LISTENERS_MAX];
};

/* ---- logging ------------------------------------------------------------------- */

/* Something a peer did wrong: one line per second and worker, with how many it stands for. */
static void ftp_warn_limited(struct ftp_helper *h, const char *what)
{
	struct relay_ctx *ctx = h->ctx;
	uint64_t now = relay_now_ms();
	if (ctx->ftp_warned_ms != 0 && now - ctx->ftp_warned_ms < FTP_WARN_INTERVAL_MS) {
		ctx->ftp_warn_suppressed++;
		return;
	}
	char client[NET_ADDR_STRLEN];
	if (ctx->ftp_warn_suppressed > 0)
		log_warn(h->forward->name, "ftp: %s (client %s; %llu similar events not logged)",
			 what, net_addr_format(&h->peer[FTP_CLIENT], client, sizeof client),
			 (unsigned long long)ctx->ftp_warn_suppressed);
	else
		log_warn(h->forward->name, "ftp: %s (client %s)", what,
			 net_addr_format(&h->peer[FTP_CLIENT], client, sizeof client));
	ctx->ftp_warned_ms = now;
	ctx->ftp_warn_suppressed = 0;
}

/* ---- data listeners ------------------------------------------------------------- */

static void ftp_listener_close(struct ftp_data_listener *listener)
{
	struct ftp_helper *h = listener->owner;
	for (int i = 0; i < FTP_DATA_LISTENERS_MAX; i++) {
		if (h->listeners[i] == listener)
			h->listeners[i] = NULL;
	}
	if (listener->accept_event != NULL)
		event_free(listener->accept_event);
	if (listener->timer != NULL)
		event_free(listener->timer);
	if (listener->fd >= 0)
		close(listener->fd);
	free(listener);
}

static void ftp_listener_on_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct ftp_data_listener *listener = arg;
	(void)fd, (void)what;
	relay_ctx_counters(listener->owner->ctx, listener->owner->forward)->ftp_data_expired++;
	log_debug(listener->owner->forward->name, "ftp: data listener closed unused after %.1f s",
		  listener->owner->ctx->rules->cfg.ftp_data_timeout);
	ftp_listener_close(listener);
}

static void ftp_listener_on_accept(evutil_socket_t fd, short what, void *arg)
{
	struct ftp_data_listener *listener = arg;
	struct ftp_helper *h = listener->owner;
	(void)what;

	relay_ctx_note_activity(h->ctx);
	for (;;) {
		struct net_addr peer = { .len = sizeof peer.ss };
		int data_fd = accept4(fd, (struct sockaddr *)&peer.ss, &peer.len,
				      SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (data_fd < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == ECONNABORTED || errno == EINTR || errno == EPROTO)
				continue;
			/*
			 * Out of descriptors or memory: the listener would stay readable
			 * and spin the loop until its timeout. This data connection fails.
			 */
			log_warn(h->forward->name, "ftp: cannot accept a data connection: %s",
				 strerror(errno));
			ftp_listener_close(listener);
			return;
		}
		net_addr_unmap(&peer);
		if (!net_addr_same_ip(&peer, &listener->allowed_peer)) {
			char from[NET_ADDR_STRLEN], why[2 * NET_ADDR_STRLEN + 64];
			relay_ctx_counters(h->ctx, h->forward)->ftp_data_refused++;
			net_close_reset(data_fd);
			snprintf(why, sizeof why, "data connection from %s refused (only %s may use it)",
				 net_addr_format(&peer, from, sizeof from),
				 listener->for_server ? "the server" : "the client");
			ftp_warn_limited(h, why);
			continue;
		}
		struct ftp_data_channel channel = {
			.accepted_fd = data_fd,
			.accepted_addr = peer,
			.target = listener->target,
			.source = listener->source,
			.accepted_from_server = listener->for_server,
			.link = h->link,
		};
		h->link->refs++;
		h->link->data_open++;
		struct relay_ctx *ctx = h->ctx;
		const struct forward *fwd = h->forward;
		ftp_data_start_fn start = h->start_data;
		relay_ctx_counters(ctx, fwd)->ftp_data_connected++;
		/* One connection only: the port closes before the data flows. */
		ftp_listener_close(listener);
		start(ctx, fwd, &channel);
		return;
	}
}

/*
 * A listening socket on addr's IP, on a port of the forward's data range
 * (from a rotating start, so that consecutive sessions do not collide) or
 * one the kernel picks.
 */
static int ftp_listen_in_range(struct ftp_helper *h, struct net_addr *addr)
{
	uint16_t first = h->forward->ftp_data_port_first, last = h->forward->ftp_data_port_last;
	if (first == 0) {
		net_addr_set_port(addr, 0);
		int fd = net_listen_tcp(addr, 1, NET_EXCLUSIVE);
		if (fd >= 0 && net_local_addr(fd, addr) < 0) {
			close(fd);
			return -1;
		}
		return fd;
	}
	unsigned span = (unsigned)last - first + 1;
	unsigned start = h->ctx->ftp_port_cursor++ % span;
	for (unsigned i = 0; i < span; i++) {
		net_addr_set_port(addr, (uint16_t)(first + (start + i) % span));
		int fd = net_listen_tcp(addr, 1, NET_EXCLUSIVE);
		if (fd >= 0)
			return fd;
		if (errno != EADDRINUSE)
			return -1;
	}
	errno = EADDRINUSE;
	return -1;
}

/* Opens a listener facing `facing` for a connection that goes on to target. */
static int ftp_listener_open(struct ftp_helper *h, enum ftp_side facing,
			     const struct net_addr *target, struct net_addr *listen_out)
{
	struct ftp_data_listener *listener = calloc(1, sizeof *listener);
	if (listener == NULL)
		return -1;
	listener->owner = h;
	listener->for_server = facing == FTP_SERVER;
	listener->allowed_peer = h->peer[facing];
	listener->target = *target;
	/* The connection onwards leaves from the address the other side knows. */
	listener->source = h->local[facing == FTP_CLIENT ? FTP_SERVER : FTP_CLIENT];
	net_addr_set_port(&listener->source, 0);

	*listen_out = h->local[facing];
	listener->fd = ftp_listen_in_range(h, listen_out);
	if (listener->fd < 0) {
		char where[NET_ADDR_STRLEN];
		log_warn(h->forward->name, "ftp: cannot open a data listener on %s: %s",
			 net_addr_format(listen_out, where, sizeof where), strerror(errno));
		free(listener);
		return -1;
	}
	struct timeval timeout = relay_seconds_to_timeval(h->ctx->rules->cfg.ftp_data_timeout);
	listener->accept_event = event_new(h->ctx->base, listener->fd, EV_READ | EV_PERSIST,
					   ftp_listener_on_accept, listener);
	listener->timer = evtimer_new(h->ctx->base, ftp_listener_on_timeout, listener);
	if (listener->accept_event == NULL || listener->timer == NULL ||
	    event_add(listener->accept_event, NULL) < 0 || event_add(listener->timer, &timeout) < 0) {
		ftp_listener_close(listener);
		return -1;
	}

	/* A slot: a free one, or the oldest listener's (a new PASV/PORT replaces it). */
	int slot = 0;
	while (slot < FTP_DATA_LISTENERS_MAX && h->listeners[slot] != NULL)
		slot++;
	if (slot == FTP_DATA_LISTENERS_MAX) {
		relay_ctx_counters(h->ctx, h->forward)->ftp_data_dropped++;
		ftp_listener_close(h->listeners[0]);
		memmove(&h->listeners[0], &h->listeners[1],
			(FTP_DATA_LISTENERS_MAX - 1) * sizeof h->listeners[0]);
		slot = FTP_DATA_LISTENERS_MAX - 1;
	}
	h->listeners[slot] = listener;
	relay_ctx_counters(h->ctx, h->forward)->ftp_data_opened++;
	if (log_enabled(LOG_LEVEL_DEBUG)) {
		char where[NET_ADDR_STRLEN], to[NET_ADDR_STRLEN];
		log_debug(h->forward->name, "ftp: %s data listener on %s for %s",
			  facing == FTP_CLIENT ? "passive" : "active",
			  net_addr_format(listen_out, where, sizeof where),
			  net_addr_format(target, to, sizeof to));
	}
	return 0;
}

/* ---- the filter's hooks ------------------------------------------------------------- */

static int ftp_hook_open_passive(void *arg, uint16_t server_port, struct net_addr *listen_out)
{
	struct ftp_helper *h = arg;
	/* The server's control address, whatever its 227 said. */
	struct net_addr target = h->peer[FTP_SERVER];
	net_addr_set_port(&target, server_port);
	return ftp_listener_open(h, FTP_CLIENT, &target, listen_out);
}

static int ftp_hook_open_active(void *arg, uint16_t client_port, struct net_addr *listen_out)
{
	struct ftp_helper *h = arg;
	/* The client's control address: never another host. */
	struct net_addr target = h->peer[FTP_CLIENT];
	net_addr_set_port(&target, client_port);
	return ftp_listener_open(h, FTP_SERVER, &target, listen_out);
}

static void ftp_hook_refused(void *arg, enum ftp_verb verb, const char *why)
{
	struct ftp_helper *h = arg;
	char what[160];
	relay_ctx_counters(h->ctx, h->forward)->ftp_commands_refused++;
	snprintf(what, sizeof what, "refused %s: %s", ftp_verb_name(verb), why);
	ftp_warn_limited(h, what);
}

/* ---- the control connection ---------------------------------------------------------- */

void ftp_helper_set_forward(struct ftp_helper *helper, const struct forward *fwd)
{
	helper->forward = fwd;
}

struct ftp_helper *ftp_helper_new(struct relay_ctx *ctx, const struct forward *fwd,
				  int client_fd, int internal_fd, ftp_data_start_fn start_data)
{
	struct ftp_helper *h = calloc(1, sizeof *h);
	if (h == NULL)
		return NULL;
	h->ctx = ctx;
	h->forward = fwd;
	h->start_data = start_data;
	h->fd[FTP_CLIENT] = client_fd;
	h->fd[FTP_SERVER] = internal_fd;
	for (int side = 0; side < 2; side++) {
		h->peer[side].len = sizeof h->peer[side].ss;
		if (getpeername(h->fd[side], (struct sockaddr *)&h->peer[side].ss,
				&h->peer[side].len) < 0 ||
		    net_local_addr(h->fd[side], &h->local[side]) < 0) {
			free(h);
			return NULL;
		}
		net_addr_unmap(&h->peer[side]);
		net_addr_unmap(&h->local[side]);
		/*
		 * ABOR comes with TCP urgent data (its Telnet "synch"): kept in the
		 * stream, where the filter finds it and sends it on as urgent.
		 */
		int on = 1;
		setsockopt(h->fd[side], SOL_SOCKET, SO_OOBINLINE, &on, sizeof on);
	}
	struct ftp_filter_params params = {
		.client_addr = h->peer[FTP_CLIENT],
		.server_family = net_addr_family(&h->peer[FTP_SERVER]),
	};
	struct ftp_filter_hooks hooks = {
		.open_passive = ftp_hook_open_passive,
		.open_active = ftp_hook_open_active,
		.refused = ftp_hook_refused,
		.arg = h,
	};
	h->filter = ftp_filter_new(&params, &hooks);
	h->link = calloc(1, sizeof *h->link);
	if (h->filter == NULL || h->link == NULL) {
		ftp_filter_free(h->filter);
		free(h->link);
		free(h);
		return NULL;
	}
	h->link->refs = 1;
	return h;
}

static void ftp_link_put(struct ftp_link *link)
{
	if (--link->refs == 0)
		free(link);
}

void ftp_link_data_closed(struct ftp_link *link)
{
	link->data_open--;
	ftp_link_put(link);
}

bool ftp_helper_data_active(const struct ftp_helper *h)
{
	return h->link->data_open > 0;
}

void ftp_helper_free(struct ftp_helper *h)
{
	if (h == NULL)
		return;
	for (int i = 0; i < FTP_DATA_LISTENERS_MAX; i++) {
		if (h->listeners[i] != NULL) {
			relay_ctx_counters(h->ctx, h->forward)->ftp_data_dropped++;
			ftp_listener_close(h->listeners[i]);
		}
	}
	ftp_filter_free(h->filter);
	ftp_link_put(h->link);
	free(h);
}

uint64_t ftp_helper_bytes_to_internal(const struct ftp_helper *h)
{
	return h->bytes_to[FTP_SERVER];
}

uint64_t ftp_helper_bytes_to_client(const struct ftp_helper *h)
{
	return h->bytes_to[FTP_CLIENT];
}

/* Sends what waits for `side`; true if anything moved. An error goes to status. */
static bool ftp_flush(struct ftp_helper *h, enum ftp_side side, struct ftp_helper_status *status)
{
	bool moved = false;
	for (;;) {
		const char *data;
		size_t urgent_len;
		size_t len = ftp_filter_output(h->filter, side, &data, &urgent_len);
		if (len == 0)
			return moved;
		/*
		 * The bytes before the urgent one plainly, then the urgent byte alone
		 * with MSG_OOB: a one-byte send is never cut short, so the urgent
		 * pointer cannot land on the wrong byte.
		 */
		int flags = MSG_NOSIGNAL;
		if (urgent_len > 1) {
			len = urgent_len - 1;
		} else if (urgent_len == 1) {
			len = 1;
			flags |= MSG_OOB;
		}
		ssize_t sent = send(h->fd[side], data, len, flags);
		if (sent < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK && status->error == 0) {
				status->error = errno;
				status->error_from_client = side == FTP_CLIENT;
			}
			return moved;
		}
		h->bytes_to[side] += (uint64_t)sent;
		ftp_filter_sent(h->filter, side, (size_t)sent);
		moved = true;
	}
}

/* Reads what `side` has, as far as the filter takes it; true if anything moved. */
static bool ftp_read(struct ftp_helper *h, enum ftp_side side, struct ftp_helper_status *status)
{
	char *buffer = h->ctx->pumps.scratch;
	bool moved = false;
	for (int reads = 0; reads < FTP_READS_PER_RUN && !h->eof[side]; reads++) {
		size_t room = ftp_filter_room(h->filter, side);
		if (room == 0)
			break;
		if (room > PUMP_BUFFER_SIZE)
			room = PUMP_BUFFER_SIZE;
		/* At the urgent mark, the next byte read is the urgent one (recv stops there). */
		int at_mark = 0;
		if (ioctl(h->fd[side], SIOCATMARK, &at_mark) < 0)
			at_mark = 0;
		ssize_t got = recv(h->fd[side], buffer, room, 0);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK && status->error == 0) {
				status->error = errno;
				status->error_from_client = side == FTP_CLIENT;
			}
			break;
		}
		moved = true;
		if (got == 0) {
			h->eof[side] = true;
			ftp_filter_eof(h->filter, side);
			break;
		}
		ftp_filter_feed(h->filter, side, buffer, (size_t)got, at_mark ? 0 : -1);
	}
	return moved;
}

/* Passes a FIN on once its side's every byte was delivered. */
static void ftp_pass_fins(struct ftp_helper *h)
{
	for (int side = 0; side < 2; side++) {
		enum ftp_side to = side == FTP_CLIENT ? FTP_SERVER : FTP_CLIENT;
		const char *data;
		size_t urgent_len;
		if (!h->shut[to] && ftp_filter_input_done(h->filter, (enum ftp_side)side) &&
		    ftp_filter_output(h->filter, to, &data, &urgent_len) == 0) {
			shutdown(h->fd[to], SHUT_WR);
			h->shut[to] = true;
		}
	}
}

void ftp_helper_run(struct ftp_helper *h, struct ftp_helper_status *status)
{
	memset(status, 0, sizeof *status);
	bool moved;
	int rounds = 0;
	/* Bounded: a peer that never stops sending must not hold the loop. */
	do {
		moved = ftp_flush(h, FTP_CLIENT, status);
		moved |= ftp_flush(h, FTP_SERVER, status);
		moved |= ftp_read(h, FTP_CLIENT, status);
		moved |= ftp_read(h, FTP_SERVER, status);
	} while (moved && ++rounds < FTP_ROUNDS_PER_RUN && status->error == 0 &&
		 ftp_filter_failure(h->filter) == NULL);
	/* What the last reads produced goes out now, not on the next wake-up. */
	if (status->error == 0) {
		ftp_flush(h, FTP_CLIENT, status);
		ftp_flush(h, FTP_SERVER, status);
	}
	if (status->error != 0)
		return;
	status->failure = ftp_filter_failure(h->filter);
	if (status->failure != NULL)
		return;   /* the 421 went out as far as the client took it */
	ftp_pass_fins(h);

	const char *data;
	size_t urgent_len;
	for (int side = 0; side < 2; side++) {
		short events = 0;
		if (!h->eof[side] && ftp_filter_room(h->filter, (enum ftp_side)side) > 0)
			events |= EV_READ;
		if (ftp_filter_output(h->filter, (enum ftp_side)side, &data, &urgent_len) > 0)
			events |= EV_WRITE;
		if (side == FTP_CLIENT)
			status->client_events = events;
		else
			status->internal_events = events;
	}
	status->done = h->shut[FTP_CLIENT] && h->shut[FTP_SERVER];
}
