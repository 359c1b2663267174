/*
 * listener.c - one listening socket per external TCP port, the accept loop,
 * and the back-off when file descriptors run out.
 */
#include "portrelay/listener.h"

#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "portrelay/acl.h"
#include "portrelay/config.h"
#include "portrelay/log.h"
#include "portrelay/relay.h"
#include "portrelay/ruleset.h"
#include "portrelay/source_table.h"
#include "portrelay/tcp_relay.h"

/* Connections accepted per wake-up of one listener before others get a turn. */
#define ACCEPTS_PER_WAKEUP 64
/* First and longest pause after EMFILE/ENFILE. */
#define FD_BACKOFF_FIRST_MS 100
#define FD_BACKOFF_MAX_MS 1000
/* While max_connections are open: how often to look again. */
#define LIMIT_RETRY_MS 20
/* Refusals (limits, allow/deny) are logged at most this often per set. */
#define REFUSAL_LOG_MS 1000

struct listener {
	int fd;                        /* -1 while borrowing: the fd is taken_from's */
	struct event *event;
	const struct forward *forward;
	uint16_t port;
	struct listener_set *set;
	struct listener *taken_from;   /* prepared: the current listener whose socket it takes */
};

/* Why an accepted client was refused; each is logged on its own. */
enum listener_refusal {
	LISTENER_DENIED,
	LISTENER_SOURCE_LIMIT,
	LISTENER_FORWARD_LIMIT,
	LISTENER_REFUSALS,
};

struct listener_set {
	struct relay_ctx *ctx;
	struct listener *listeners;
	unsigned count;
	/*
	 * Fd exhaustion: an episode lasts from the first EMFILE until a new
	 * session has both of its sockets (an accept alone may succeed with the
	 * one descriptor a closed connection freed, and its connect then fail).
	 */
	struct event *backoff_timer;
	bool paused;
	bool exhausted;
	unsigned backoff_ms;
	/* Admission refusals, per reason: since the last log line, and when that was. */
	struct listener_refusal_log {
		uint64_t logged_ms;
		uint64_t unlogged;
	} refusal_log[LISTENER_REFUSALS];
	bool at_max_connections;       /* waiting for a place under max_connections */
};

static void listener_set_enable(struct listener_set *set, bool enable)
{
	for (unsigned i = 0; i < set->count; i++) {
		if (set->listeners[i].event == NULL)
			continue;
		if (enable)
			event_add(set->listeners[i].event, NULL);
		else
			event_del(set->listeners[i].event);
	}
}

static void listener_on_backoff(evutil_socket_t fd, short what, void *arg)
{
	struct listener_set *set = arg;
	(void)fd;
	(void)what;
	set->paused = false;
	listener_set_enable(set, true);
}

/*
 * Stops accepting for a while after fd exhaustion (an accept, or the
 * session's connect, failed for lack of descriptors), then retries.
 */
static void listener_set_pause_for_fds(struct listener_set *set)
{
	if (set == NULL || set->paused)
		return;
	int error = errno;
	if (!set->exhausted) {
		set->exhausted = true;
		set->backoff_ms = FD_BACKOFF_FIRST_MS;
		relay_ctx_process_counters(set->ctx)->accept_fd_exhausted++;
		struct fd_episode *episode = set->ctx->options.fd_episode;
		bool idle = false;
		if (atomic_compare_exchange_strong(&episode->active, &idle, true)) {
			atomic_store(&episode->started_ms, relay_now_ms());
			log_warn(NULL, "out of file descriptors (%s, %u sessions open): pausing "
				 "accept, retrying every %u-%u ms", strerror(error),
				 set->ctx->session_count, FD_BACKOFF_FIRST_MS, FD_BACKOFF_MAX_MS);
		}
	} else if (set->backoff_ms < FD_BACKOFF_MAX_MS) {
		set->backoff_ms *= 2;
		if (set->backoff_ms > FD_BACKOFF_MAX_MS)
			set->backoff_ms = FD_BACKOFF_MAX_MS;
	}
	/*
	 * The kernel keeps reporting the listeners readable while the backlog
	 * holds connections we cannot accept; polling them now would spin.
	 */
	set->paused = true;
	listener_set_enable(set, false);
	struct timeval delay = { .tv_sec = set->backoff_ms / 1000,
				 .tv_usec = (set->backoff_ms % 1000) * 1000 };
	event_add(set->backoff_timer, &delay);
}

/* Ends an fd-exhaustion episode (logged once): a new session got both its sockets. */
static void listener_set_fds_recovered(struct listener_set *set)
{
	if (set == NULL || !set->exhausted)
		return;
	set->exhausted = false;
	struct fd_episode *episode = set->ctx->options.fd_episode;
	bool active = true;
	if (!atomic_compare_exchange_strong(&episode->active, &active, false))
		return;   /* another worker has ended the episode already */
	log_info(NULL, "file descriptors available again after %.1f s: accepting",
		 (double)(relay_now_ms() - atomic_load(&episode->started_ms)) / 1000.0);
}

/*
 * A refusal, logged at most once a second per worker with how many it
 * stands for; under a flood this runs once per connection and formats
 * nothing in between.
 */
static void listener_log_refusal(struct listener_set *set, const struct forward *fwd,
				 enum listener_refusal reason, const struct net_addr *client)
{
	static const char *const why[LISTENER_REFUSALS] = {
		[LISTENER_DENIED] = "denied by allow/deny",
		[LISTENER_SOURCE_LIMIT] = "max_connections_per_source reached",
		[LISTENER_FORWARD_LIMIT] = "the forward's max_connections reached",
	};
	struct listener_refusal_log *log = &set->refusal_log[reason];
	uint64_t now = relay_now_ms();
	log->unlogged++;
	if (log->logged_ms != 0 && now - log->logged_ms < REFUSAL_LOG_MS)
		return;
	char text[NET_ADDR_STRLEN];
	log_warn(fwd->name, "refused %s: %s (%llu such refusals in this worker since the last "
		 "such line)", net_addr_format(client, text, sizeof text), why[reason],
		 (unsigned long long)log->unlogged);
	log->logged_ms = now;
	log->unlogged = 0;
}

/*
 * Whether a place under max_connections is free (taken then): when all are
 * in use, accepting pauses and the clients wait in the kernel's listen
 * backlog, to be accepted as places free up (each worker looks again every
 * LIMIT_RETRY_MS). They are not refused: the limit protects the process,
 * not a policy against them.
 */
static bool listener_take_place(struct listener_set *set)
{
	struct relay_options *options = &set->ctx->options;
	unsigned open = atomic_fetch_add(options->tcp_open_total, 1);
	if (open < options->max_connections &&
	    (options->tcp_unbudgeted ||
	     relay_fds_allow(options, 2ul * (open + 1), atomic_load(options->udp_flows_total)))) {
		if (set->at_max_connections) {
			set->at_max_connections = false;
			log_info(NULL, "below max_connections (%u) again: accepting", options->max_connections);
		}
		return true;
	}
	atomic_fetch_sub(options->tcp_open_total, 1);
	if (!set->at_max_connections) {
		set->at_max_connections = true;
		relay_ctx_process_counters(set->ctx)->tcp_max_connections_reached++;
		log_warn(NULL, "max_connections (%u) open, or UDP flows hold the rest of the "
			 "descriptors (%u open): new connections wait in the listen backlog",
			 options->max_connections, atomic_load(options->udp_flows_total));
	}
	set->paused = true;
	listener_set_enable(set, false);
	struct timeval delay = relay_ms_to_timeval(LIMIT_RETRY_MS);
	event_add(set->backoff_timer, &delay);
	return false;
}

/*
 * The forward's own limits for one accepted client: allow/deny, then
 * max_connections_per_source, then the forward's max_connections. A client
 * over one of them is reset at once (it learns right away, and costs
 * nothing more); counted and logged. On success the client holds its
 * places (released by tcp_relay when the session ends).
 */
static bool listener_admit(struct listener_set *set, const struct forward *fwd,
			   const struct net_addr *client)
{
	struct relay_counters *counters = relay_ctx_counters(set->ctx, fwd);
	const struct sockaddr *sa = (const struct sockaddr *)&client->ss;
	if (!acl_allows(&fwd->acl, sa)) {
		counters->tcp_denied++;
		listener_log_refusal(set, fwd, LISTENER_DENIED, client);
		return false;
	}
	uint8_t source[ACL_SOURCE_KEY_LEN];
	acl_source_key(sa, source);
	if (!source_table_take(set->ctx->options.sources, fwd->stats, source,
			       fwd->max_connections_per_source)) {
		counters->tcp_refused_source_limit++;
		listener_log_refusal(set, fwd, LISTENER_SOURCE_LIMIT, client);
		return false;
	}
	if (fwd->max_connections != 0 &&
	    atomic_fetch_add(&fwd->stats->tcp_open, 1) >= fwd->max_connections) {
		atomic_fetch_sub(&fwd->stats->tcp_open, 1);
		if (fwd->max_connections_per_source != 0)
			source_table_release(set->ctx->options.sources, fwd->stats, source);
		counters->tcp_refused_forward_limit++;
		listener_log_refusal(set, fwd, LISTENER_FORWARD_LIMIT, client);
		return false;
	}
	if (fwd->max_connections == 0)
		atomic_fetch_add(&fwd->stats->tcp_open, 1);
	return true;
}

static void listener_on_accept(evutil_socket_t fd, short what, void *arg)
{
	struct listener *listener = arg;
	struct listener_set *set = listener->set;
	const struct forward *fwd = listener->forward;
	(void)what;

	relay_ctx_note_activity(set->ctx);
	for (int i = 0; i < ACCEPTS_PER_WAKEUP && !set->paused; i++) {
		if (!listener_take_place(set))
			return;
		struct net_addr client_addr = { .len = sizeof client_addr.ss };
		int client_fd = accept4(fd, (struct sockaddr *)&client_addr.ss, &client_addr.len,
					SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (client_fd < 0) {
			atomic_fetch_sub(set->ctx->options.tcp_open_total, 1);
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				listener_set_pause_for_fds(set);
				return;
			}
			/* ECONNABORTED, EINTR, EPERM (firewall): that client only. */
			if (errno == ECONNABORTED || errno == EINTR || errno == EPERM ||
			    errno == EPROTO)
				continue;
			log_warn(fwd->name, "accept on port %u: %s", listener->port, strerror(errno));
			return;
		}
		if (!listener_admit(set, fwd, &client_addr)) {
			atomic_fetch_sub(set->ctx->options.tcp_open_total, 1);
			net_close_reset(client_fd);
			continue;
		}
		if (tcp_session_start(set->ctx, fwd, listener->port, client_fd, &client_addr) < 0) {
			listener_set_pause_for_fds(set);
			return;
		}
		listener_set_fds_recovered(set);
	}
}

/* A prepared listener on fwd's external port: a current one's socket, or a new one. */
static int listener_prepare(struct listener_set *set, struct listener *listener,
			    const struct forward *fwd, uint16_t port, struct listener *current,
			    char *err, size_t err_len)
{
	listener->forward = fwd;
	listener->port = port;
	listener->set = set;
	listener->fd = -1;
	if (current != NULL) {
		listener->taken_from = current;
		return 0;
	}
	struct net_addr addr = fwd->external_addr;
	net_addr_set_port(&addr, port);
	enum net_share share = set->ctx->options.share | (fwd->freebind ? NET_FREEBIND : 0);
	listener->fd = net_listen_tcp(&addr, SOMAXCONN, share);
	if (listener->fd < 0) {
		char where[NET_ADDR_STRLEN];
		int error = errno;
		net_addr_format(&addr, where, sizeof where);
		snprintf(err, err_len, "forward \"%s\": cannot listen on %s: %s", fwd->name, where,
			 strerror(error));
		log_error(fwd->name, "cannot listen on %s: %s", where, strerror(error));
		return -1;
	}
	return 0;
}

/*
 * The current listeners of the forward in fwd's place (they are consecutive,
 * one per port), or NULL: their sockets carry over to the new set.
 */
static struct listener *listener_set_find_place(struct listener_set *current,
					       const struct forward *fwd)
{
	if (current == NULL)
		return NULL;
	for (unsigned i = 0; i < current->count; i++) {
		if (forward_same_place(current->listeners[i].forward, fwd))
			return &current->listeners[i];
	}
	return NULL;
}

/* A current listener on the same address and port (a forward whose range changed). */
static struct listener *listener_set_find_port(struct listener_set *current,
					      const struct forward *fwd, uint16_t port)
{
	if (current == NULL)
		return NULL;
	for (unsigned i = 0; i < current->count; i++) {
		struct listener *listener = &current->listeners[i];
		if (listener->port == port && listener->fd >= 0 &&
		    net_addr_same_ip(&listener->forward->external_addr, &fwd->external_addr))
			return listener;
	}
	return NULL;
}

static unsigned listener_count_needed(const struct config *cfg)
{
	unsigned needed = 0;
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *fwd = &cfg->forwards[i];
		if (fwd->enabled && (fwd->proto & FORWARD_TCP))
			needed += forward_port_count(fwd);
	}
	return needed;
}

struct listener_set *listener_set_prepare(struct relay_ctx *ctx, const struct ruleset *rules,
					  struct listener_set *current, char *err, size_t err_len)
{
	const struct config *cfg = &rules->cfg;
	struct listener_set *set = calloc(1, sizeof *set);
	if (set == NULL)
		goto oom;
	set->ctx = ctx;
	set->listeners = calloc(listener_count_needed(cfg) + 1, sizeof *set->listeners);
	set->backoff_timer = evtimer_new(ctx->base, listener_on_backoff, set);
	if (set->listeners == NULL || set->backoff_timer == NULL)
		goto oom;
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *fwd = &cfg->forwards[i];
		if (!fwd->enabled || !(fwd->proto & FORWARD_TCP))
			continue;
		struct listener *same_place = listener_set_find_place(current, fwd);
		for (unsigned p = fwd->external_port_first; p <= fwd->external_port_last; p++) {
			struct listener *listener = &set->listeners[set->count];
			struct listener *from = same_place != NULL
				? same_place + (p - fwd->external_port_first)
				: listener_set_find_port(current, fwd, (uint16_t)p);
			/* Counted first, so that free closes what was opened. */
			set->count++;
			if (listener_prepare(set, listener, fwd, (uint16_t)p, from, err, err_len) < 0) {
				listener_set_free(set);
				return NULL;
			}
		}
	}
	return set;
oom:
	snprintf(err, err_len, "out of memory for the listeners");
	listener_set_free(set);
	return NULL;
}

void listener_set_commit(struct listener_set *set, struct listener_set *current)
{
	for (unsigned i = 0; i < set->count; i++) {
		struct listener *listener = &set->listeners[i];
		if (listener->taken_from != NULL) {
			/* The same socket: its queue of connections not yet accepted goes along. */
			struct listener *from = listener->taken_from;
			if (from->event != NULL)
				event_free(from->event);
			from->event = NULL;
			listener->fd = from->fd;
			from->fd = -1;
			listener->taken_from = NULL;
		}
		/* Accepted connections inherit it; a reload may have changed it. */
		if (net_set_keepalive(listener->fd, set->ctx->rules->cfg.tcp_keepalive) < 0)
			log_warn(listener->forward->name, "cannot set tcp.keepalive on port %u: %s",
				 listener->port, strerror(errno));
		listener->event = event_new(set->ctx->base, listener->fd, EV_READ | EV_PERSIST,
					    listener_on_accept, listener);
		if (listener->event == NULL)
			log_error(listener->forward->name, "cannot register listener on port %u",
				  listener->port);
	}
	if (current != NULL) {
		/* An episode of fd exhaustion goes on with the new set. */
		set->exhausted = current->exhausted;
		set->backoff_ms = current->backoff_ms;
		if (current->paused) {
			set->paused = true;
			struct timeval delay = relay_ms_to_timeval(set->backoff_ms);
			event_add(set->backoff_timer, &delay);
		}
	}
	if (!set->paused)
		listener_set_enable(set, true);
	listener_set_free(current);   /* closes the listeners of removed ports */
}

unsigned listener_set_count(const struct listener_set *set)
{
	return set->count;
}

void listener_set_free(struct listener_set *set)
{
	if (set == NULL)
		return;
	for (unsigned i = 0; i < set->count; i++) {
		if (set->listeners[i].event != NULL)
			event_free(set->listeners[i].event);
		if (set->listeners[i].fd >= 0)
			close(set->listeners[i].fd);
	}
	if (set->backoff_timer != NULL)
		event_free(set->backoff_timer);
	free(set->listeners);
	free(set);
}
