/*
 * listener.c - one listening socket per external TCP port, the accept loop,
 * and the back-off when file descriptors run out.
 */
#include "portrelay/listener.h"

#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "portrelay/config.h"
#include "portrelay/log.h"
#include "portrelay/relay.h"
#include "portrelay/tcp_relay.h"

/* Connections accepted per wake-up of one listener before others get a turn. */
#define ACCEPTS_PER_WAKEUP 64
/* First and longest pause after EMFILE/ENFILE. */
#define FD_BACKOFF_FIRST_MS 100
#define FD_BACKOFF_MAX_MS 1000

struct listener {
	int fd;
	struct event *event;
	const struct forward *forward;
	uint16_t port;
	struct listener_set *set;
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
};

static void listener_set_enable(struct listener_set *set, bool enable)
{
	for (unsigned i = 0; i < set->count; i++) {
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

void listener_set_pause_for_fds(struct listener_set *set)
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

void listener_set_fds_recovered(struct listener_set *set)
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

static void listener_on_accept(evutil_socket_t fd, short what, void *arg)
{
	struct listener *listener = arg;
	struct listener_set *set = listener->set;
	(void)what;

	relay_ctx_note_activity(set->ctx);
	for (int i = 0; i < ACCEPTS_PER_WAKEUP && !set->paused; i++) {
		struct net_addr client_addr = { .len = sizeof client_addr.ss };
		int client_fd = accept4(fd, (struct sockaddr *)&client_addr.ss, &client_addr.len,
					SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (client_fd < 0) {
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
			log_warn(listener->forward->name, "accept on port %u: %s", listener->port,
				 strerror(errno));
			return;
		}
		tcp_session_start(set->ctx, listener->forward, listener->port, client_fd,
				  &client_addr);
	}
}

static int listener_open(struct listener_set *set, struct listener *listener,
			 const struct forward *fwd, uint16_t port)
{
	struct net_addr addr = fwd->external_addr;
	net_addr_set_port(&addr, port);
	listener->fd = net_listen_tcp(&addr, SOMAXCONN, set->ctx->options.share);
	if (listener->fd < 0) {
		char where[NET_ADDR_STRLEN];
		log_error(fwd->name, "cannot listen on %s: %s",
			  net_addr_format(&addr, where, sizeof where), strerror(errno));
		return -1;
	}
	listener->forward = fwd;
	listener->port = port;
	listener->set = set;
	listener->event = event_new(set->ctx->base, listener->fd, EV_READ | EV_PERSIST,
				    listener_on_accept, listener);
	if (listener->event == NULL || event_add(listener->event, NULL) < 0) {
		log_error(fwd->name, "cannot register listener on port %u", port);
		return -1;
	}
	return 0;
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

struct listener_set *listener_set_open(struct relay_ctx *ctx)
{
	const struct config *cfg = ctx->config;
	struct listener_set *set = calloc(1, sizeof *set);
	if (set == NULL)
		return NULL;
	set->ctx = ctx;
	set->listeners = calloc(listener_count_needed(cfg) + 1, sizeof *set->listeners);
	set->backoff_timer = evtimer_new(ctx->base, listener_on_backoff, set);
	if (set->listeners == NULL || set->backoff_timer == NULL) {
		listener_set_free(set);
		return NULL;
	}
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *fwd = &cfg->forwards[i];
		if (!fwd->enabled || !(fwd->proto & FORWARD_TCP))
			continue;
		for (unsigned p = fwd->external_port_first; p <= fwd->external_port_last; p++) {
			struct listener *listener = &set->listeners[set->count];
			if (listener_open(set, listener, fwd, (uint16_t)p) < 0) {
				/* Count it so that free closes what was opened. */
				set->count++;
				listener_set_free(set);
				return NULL;
			}
			set->count++;
		}
	}
	return set;
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
