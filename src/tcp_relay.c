/*
 * tcp_relay.c - one TCP session: connect to the internal host, relay both
 * directions with half-close, close.
 *
 * Each direction is a pump (pump.h). A direction ends when its source sent
 * EOF and every byte was delivered; then the write side of its destination
 * is shut down, and the other direction carries on. The session ends when
 * both directions have ended, or at once on a reset or socket error from
 * either side, which is passed on as a reset to the other side.
 */
#include "portrelay/tcp_relay.h"

#include <errno.h>
#include <event2/event.h>
/*
 * Events are embedded in the session (one allocation per connection instead
 * of four); this ties the binary to the libevent it was built against, which
 * the distribution's packaging does anyway.
 */
#include <event2/event_struct.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "portrelay/acl.h"
#include "portrelay/config.h"
#include "portrelay/ftp_helper.h"
#include "portrelay/log.h"
#include "portrelay/proxy_header.h"
#include "portrelay/pump.h"
#include "portrelay/relay.h"
#include "portrelay/source_table.h"

enum session_state {
	SESSION_CONNECTING,
	SESSION_RELAYING,
};

/* One socket of the session and the readiness it currently waits for. */
struct endpoint {
	int fd;
	short interest;   /* EV_READ | EV_WRITE, or 0 */
	struct event event;
};

struct tcp_session {
	TAILQ_ENTRY(tcp_session) link;
	struct relay_ctx *ctx;
	const struct forward *forward;
	enum session_state state;
	struct endpoint client;
	struct endpoint internal;
	struct pump to_internal;          /* client -> internal */
	struct pump to_client;            /* internal -> client */
	enum pump_status to_internal_status;
	enum pump_status to_client_status;
	struct event timer;               /* connect timeout, then idle timeout */
	union net_sockaddr client_addr;
	socklen_t client_addr_len;
	uint16_t external_port;       /* the forward's port it came in on */
	unsigned char kind;               /* enum session_kind */
	bool source_counted;              /* holds a place under max_connections_per_source */
	uint64_t started_ms;              /* relay_now_ms() */
	uint64_t last_active_ms;
};

enum session_kind {
	SESSION_PLAIN,
	SESSION_FTP_CONTROL,       /* a control connection of an ftp forward */
	SESSION_FTP_DATA,          /* an FTP data connection the client opened (passive) */
	SESSION_FTP_DATA_ACTIVE,   /* ... the server opened (active): sides swapped */
};

/*
 * What an FTP session carries beyond an ordinary one, in the same
 * allocation, right after it: sessions of other forwards do not pay for it.
 */
struct session_ftp {
	struct ftp_helper *helper;   /* control: the helper moving its bytes */
	struct net_addr target;      /* data: where the helper sent it */
	struct ftp_link *link;       /* data: shared with its control connection */
};

static struct session_ftp *session_ftp(const struct tcp_session *session)
{
	return session->kind == SESSION_PLAIN ? NULL : (struct session_ftp *)(session + 1);
}

/* The forward's counter block in this worker (derived, not stored: sessions stay small). */
static struct relay_counters *session_counters(const struct tcp_session *session)
{
	return relay_ctx_counters(session->ctx, session->forward);
}

static struct ftp_helper *session_helper(const struct tcp_session *session)
{
	return session->kind == SESSION_FTP_CONTROL ? session_ftp(session)->helper : NULL;
}

static void session_on_socket(evutil_socket_t fd, short what, void *arg);
static void session_on_timer(evutil_socket_t fd, short what, void *arg);
static int session_connect(struct tcp_session *session, const struct net_addr *target,
			   const struct net_addr *source);

/* Changes what an endpoint waits for; libevent batches the epoll updates. */
static void endpoint_watch(struct tcp_session *session, struct endpoint *endpoint, short interest)
{
	if (endpoint->interest == interest)
		return;
	event_del(&endpoint->event);
	event_assign(&endpoint->event, session->ctx->base, endpoint->fd, interest | EV_PERSIST,
		     session_on_socket, session);
	if (interest != 0)
		event_add(&endpoint->event, NULL);
	endpoint->interest = interest;
}

static void endpoint_close(struct endpoint *endpoint, bool reset)
{
	event_del(&endpoint->event);
	if (endpoint->fd >= 0) {
		if (reset)
			net_close_reset(endpoint->fd);
		else
			close(endpoint->fd);
	}
	endpoint->fd = -1;
}

/* Bytes towards the internal side: an active FTP data connection runs the other way. */
static uint64_t session_bytes_to_internal(const struct tcp_session *session)
{
	if (session_helper(session) != NULL)
		return ftp_helper_bytes_to_internal(session_helper(session));
	return session->kind == SESSION_FTP_DATA_ACTIVE ? session->to_client.bytes
							: session->to_internal.bytes;
}

static uint64_t session_bytes_to_client(const struct tcp_session *session)
{
	if (session_helper(session) != NULL)
		return ftp_helper_bytes_to_client(session_helper(session));
	return session->kind == SESSION_FTP_DATA_ACTIVE ? session->to_internal.bytes
							: session->to_client.bytes;
}

/*
 * Gives back the places a session held (taken by the listener's admission,
 * or by tcp_session_start_data): one under max_connections, one under the
 * forward's, and its source's if counted.
 */
static void session_release_places(struct relay_ctx *ctx, const struct forward *fwd,
				   bool source_counted, const struct sockaddr *client)
{
	atomic_fetch_sub(ctx->options.tcp_open_total, 1);
	atomic_fetch_sub(&fwd->stats->tcp_open, 1);
	if (source_counted) {
		uint8_t source[ACL_SOURCE_KEY_LEN];
		acl_source_key(client, source);
		source_table_release(ctx->options.sources, fwd->stats, source);
	}
}

static void session_close(struct tcp_session *session, bool reset_client, bool reset_internal)
{
	struct relay_ctx *ctx = session->ctx;

	TAILQ_REMOVE(&ctx->sessions, session, link);
	ctx->session_count--;
	session_counters(session)->tcp_active--;
	session_release_places(ctx, session->forward, session->source_counted,
			       &session->client_addr.sa);
	relay_ctx_release_forward(ctx, session->forward);
	if (session->kind == SESSION_FTP_CONTROL)
		ftp_helper_free(session_ftp(session)->helper);
	else if (session->kind != SESSION_PLAIN)
		ftp_link_data_closed(session_ftp(session)->link);

	endpoint_close(&session->client, reset_client);
	endpoint_close(&session->internal, reset_internal);
	event_del(&session->timer);
	pump_release(&session->to_internal);
	pump_release(&session->to_client);
	free(session);
	if (ctx->session_count == 0)
		pump_pool_trim(&ctx->pumps);
}

void tcp_session_free(struct tcp_session *session)
{
	session_close(session, false, false);
}

static const char *session_internal_text(const struct tcp_session *session, char *buf,
					 size_t len)
{
	if (session->kind == SESSION_FTP_DATA || session->kind == SESSION_FTP_DATA_ACTIVE)
		return net_addr_format(&session_ftp(session)->target, buf, len);
	struct net_addr addr = forward_internal_addr(session->forward, session->external_port);
	return net_addr_format(&addr, buf, len);
}

static const char *session_client_text(const struct tcp_session *session, char *buf, size_t len)
{
	struct net_addr addr;
	net_addr_set(&addr, &session->client_addr.sa, session->client_addr_len);
	return net_addr_format(&addr, buf, len);
}

/* Logs the session's summary at debug level, then frees it. */
/* The address and port the client connected to (on a wildcard bind, the kernel's answer). */
static const char *session_external_text(const struct tcp_session *session, char *buf,
					 size_t len)
{
	struct net_addr local;
	if (session->client.fd < 0 || net_local_addr(session->client.fd, &local) < 0) {
		local = session->forward->external_addr;
		net_addr_set_port(&local, session->external_port);
	}
	net_addr_unmap(&local);
	return net_addr_format(&local, buf, len);
}

/*
 * Logs the session's summary, then frees it: with access_log on its
 * forward, one line at info (client, the address it connected to, the
 * internal address, bytes each way, duration, how it ended); else at
 * debug. Every part is the relay's own text: nothing a peer sent.
 */
static void session_end(struct tcp_session *session, const char *reason, bool reset_client,
			bool reset_internal)
{
	bool access = session->forward->access_log;
	if (access || log_enabled(LOG_LEVEL_DEBUG)) {
		char client[NET_ADDR_STRLEN], internal[NET_ADDR_STRLEN], external[NET_ADDR_STRLEN];
		double elapsed = (double)(relay_now_ms() - session->started_ms) / 1000.0;
		const char *kind = session->kind == SESSION_FTP_DATA ? "ftp passive data"
				   : session->kind == SESSION_FTP_DATA_ACTIVE ? "ftp active data"
									      : "tcp";
		if (access)
			log_info(session->forward->name,
				 "access: %s %s -> %s -> %s: %llu bytes to internal, %llu bytes to "
				 "client, %.3f s, %s", kind,
				 session_client_text(session, client, sizeof client),
				 session_external_text(session, external, sizeof external),
				 session_internal_text(session, internal, sizeof internal),
				 (unsigned long long)session_bytes_to_internal(session),
				 (unsigned long long)session_bytes_to_client(session), elapsed,
				 reason);
		else
			log_debug(session->forward->name,
				  "%s closed %s -> %s: %llu bytes to internal, %llu bytes to client, "
				  "%.3f s, %s", kind,
				  session_client_text(session, client, sizeof client),
				  session_internal_text(session, internal, sizeof internal),
				  (unsigned long long)session_bytes_to_internal(session),
				  (unsigned long long)session_bytes_to_client(session), elapsed,
				  reason);
	}
	session_close(session, reset_client, reset_internal);
}

/*
 * A socket error on one direction: the side that failed is gone (or reset
 * us), so the other side gets a reset too, as it would from the peer itself.
 */
static void session_fail_on(struct tcp_session *session, bool from_client, int error)
{
	session_counters(session)->tcp_reset++;
	if (error == ECONNRESET || error == EPIPE) {
		session_end(session, from_client ? "reset by client" : "reset by internal",
			    !from_client, from_client);
		return;
	}
	char reason[128];
	snprintf(reason, sizeof reason, "%s error: %s", from_client ? "client" : "internal",
		 strerror(error));
	session_end(session, reason, !from_client, from_client);
}

static void session_fail(struct tcp_session *session, const struct pump *pump)
{
	bool from_client = (pump == &session->to_internal) != pump->error_at_dest;
	session_fail_on(session, from_client, pump->error);
}

/* Sets both endpoints' interest from what each direction waits for. */
static void session_update_interest(struct tcp_session *session)
{
	short client = 0, internal = 0;

	if (session->to_internal_status == PUMP_WANT_READ)
		client |= EV_READ;
	else if (session->to_internal_status == PUMP_WANT_WRITE)
		internal |= EV_WRITE;
	if (session->to_client_status == PUMP_WANT_READ)
		internal |= EV_READ;
	else if (session->to_client_status == PUMP_WANT_WRITE)
		client |= EV_WRITE;
	/*
	 * A socket that is neither read (it sent its FIN) nor written (nothing
	 * to send it now) would drop out of epoll, and a reset it receives would
	 * go unseen while the other side stays silent. Watch it edge-triggered:
	 * one wake-up now, one more only when its state changes (a reset).
	 */
	if (client == 0)
		client = EV_READ | EV_ET;
	if (internal == 0)
		internal = EV_READ | EV_ET;
	endpoint_watch(session, &session->client, client);
	endpoint_watch(session, &session->internal, internal);
}

/*
 * A wake-up on a socket watched only for a reset (see above): end the
 * session if the socket has an error, otherwise there is nothing to do.
 */
static void session_check_hangup(struct tcp_session *session, bool client_side)
{
	const struct endpoint *endpoint = client_side ? &session->client : &session->internal;
	int error = net_socket_error(endpoint->fd);
	if (error != 0)
		session_fail_on(session, client_side, error);
}

/*
 * Runs one direction; returns false when the session was freed. `other` is
 * the opposite direction's status: when it is already done, the session is
 * about to close both sockets, which sends the FIN without a shutdown.
 */
static bool session_pump(struct tcp_session *session, struct pump *pump,
			 enum pump_status *status, enum pump_status other, int source_fd,
			 int dest_fd)
{
	if (*status == PUMP_DONE)
		return true;
	uint64_t before = pump->bytes;
	*status = pump_run(pump, source_fd, dest_fd);
	if (pump->bytes != before) {
		/* Counted as they move, so that a scrape sees long connections too. */
		bool inward = (pump == &session->to_internal) !=
			      (session->kind == SESSION_FTP_DATA_ACTIVE);
		*(inward ? &session_counters(session)->bytes_to_internal
			 : &session_counters(session)->bytes_to_client) += pump->bytes - before;
	}
	if (pump->bytes != before || *status == PUMP_DONE)
		session->last_active_ms = relay_now_ms();
	if (*status == PUMP_ERROR) {
		session_fail(session, pump);
		return false;
	}
	if (*status == PUMP_DONE && other != PUMP_DONE)
		/* Half-close: pass the FIN on; the other direction keeps going. */
		shutdown(dest_fd, SHUT_WR);
	return true;
}

/* A control connection of an ftp forward: the helper moves its bytes. */
static void session_relay_ftp(struct tcp_session *session)
{
	struct ftp_helper *helper = session_helper(session);
	struct ftp_helper_status status;
	uint64_t to_internal = ftp_helper_bytes_to_internal(helper);
	uint64_t to_client = ftp_helper_bytes_to_client(helper);
	ftp_helper_run(helper, &status);
	to_internal = ftp_helper_bytes_to_internal(helper) - to_internal;
	to_client = ftp_helper_bytes_to_client(helper) - to_client;
	session_counters(session)->bytes_to_internal += to_internal;
	session_counters(session)->bytes_to_client += to_client;
	if (to_internal + to_client != 0)
		session->last_active_ms = relay_now_ms();
	if (status.error != 0) {
		session_fail_on(session, status.error_from_client, status.error);
		return;
	}
	if (status.failure != NULL) {
		char reason[96];
		snprintf(reason, sizeof reason, "ftp: %s", status.failure);
		log_info(session->forward->name, "ftp: ending the control connection: %s",
			 status.failure);
		session_end(session, reason, false, false);
		return;
	}
	if (status.done) {
		session_end(session, "closed", false, false);
		return;
	}
	/* As with the pumps: a socket not otherwise watched is watched for a reset. */
	short client = status.client_events, internal = status.internal_events;
	endpoint_watch(session, &session->client, client != 0 ? client : EV_READ | EV_ET);
	endpoint_watch(session, &session->internal, internal != 0 ? internal : EV_READ | EV_ET);
}

static void session_relay(struct tcp_session *session, short client_events, short internal_events)
{
	int client_fd = session->client.fd, internal_fd = session->internal.fd;

	if (session->kind == SESSION_FTP_CONTROL) {
		session_relay_ftp(session);
		return;
	}

	if ((client_events & EV_READ) || (internal_events & EV_WRITE)) {
		if (!session_pump(session, &session->to_internal, &session->to_internal_status,
				  session->to_client_status, client_fd, internal_fd))
			return;
	}
	if ((internal_events & EV_READ) || (client_events & EV_WRITE)) {
		if (!session_pump(session, &session->to_client, &session->to_client_status,
				  session->to_internal_status, internal_fd, client_fd))
			return;
	}
	if (session->to_internal_status == PUMP_DONE && session->to_client_status == PUMP_DONE) {
		session_end(session, "closed", false, false);
		return;
	}
	session_update_interest(session);
}

static void session_arm_idle_timer(struct tcp_session *session, const struct timeval *delay)
{
	if (timerisset(&session->ctx->tcp_idle_timeout))
		event_add(&session->timer, delay);
	else
		event_del(&session->timer);
}

/* The internal host cannot be reached: the client gets a reset, as from a refusal. */
static void session_connect_failed(struct tcp_session *session, int error)
{
	char reason[128];
	if (error == ECONNREFUSED) {
		session_counters(session)->tcp_connect_refused++;
		snprintf(reason, sizeof reason, "connect refused");
	} else {
		*(error == ETIMEDOUT ? &session_counters(session)->tcp_connect_timeout
				     : &session_counters(session)->tcp_connect_other) += 1;
		snprintf(reason, sizeof reason, "connect failed: %s", strerror(error));
	}
	session_end(session, reason, true, false);
}

/*
 * While connecting, the client is watched edge-triggered: its data stays in
 * the socket until the internal host answers, but a client that resets
 * before then ends the attempt at once, instead of costing the internal
 * server a connection and the relay two descriptors until connect_timeout.
 * (EV_CLOSED alone would not do: libevent reports a reset as read and
 * write readiness, not as EV_CLOSED.) Data or a FIN (a client that sent
 * all it had: a half-close passed on once connected) leave the attempt be.
 */
static void session_client_closed_early(struct tcp_session *session)
{
	/* SO_ERROR: a peek would see the data the client sent before its reset first. */
	if (net_socket_error(session->client.fd) == 0)
		return;
	session_counters(session)->tcp_reset++;
	session_end(session, "client reset while connecting", true, true);
}

/*
 * proxy_protocol: the header goes first to the internal server, before any
 * client byte (it waits in the pump ahead of them, and the splice path only
 * starts once the pump's buffer is empty). It names the client and the
 * address and port the client connected to (on a wildcard bind, the one
 * the kernel reports for this connection).
 */
static int session_preload_proxy_header(struct tcp_session *session)
{
	struct net_addr local;
	if (net_local_addr(session->client.fd, &local) < 0)
		return -1;
	uint8_t header[PROXY_HEADER_MAX];
	size_t len = proxy_header_write(session->forward->proxy_protocol, PROXY_STREAM,
					&session->client_addr.sa, (const struct sockaddr *)&local.ss,
					header);
	return len > 0 ? pump_preload(&session->to_internal, header, len) : -1;
}

static void session_connected(struct tcp_session *session)
{
	int error = net_socket_error(session->internal.fd);
	if (error != 0) {
		session_connect_failed(session, error);
		return;
	}
	if (session->kind == SESSION_FTP_CONTROL) {
		struct ftp_helper *helper = ftp_helper_new(session->ctx, session->forward,
							   session->client.fd, session->internal.fd,
							   tcp_session_start_data);
		session_ftp(session)->helper = helper;
		if (helper == NULL) {
			session_counters(session)->tcp_reset++;
			session_end(session, "ftp: cannot set up the helper", true, true);
			return;
		}
	}
	if (session->kind == SESSION_PLAIN && session->forward->proxy_protocol != PROXY_NONE &&
	    session_preload_proxy_header(session) < 0) {
		session_counters(session)->tcp_reset++;
		session_end(session, "cannot write the PROXY header", true, true);
		return;
	}
	session->state = SESSION_RELAYING;
	session->last_active_ms = relay_now_ms();
	session_arm_idle_timer(session, &session->ctx->tcp_idle_timeout);
	/*
	 * The client has most likely sent its request while we connected: try it
	 * at once. The server has had no time to speak yet; its first bytes, like
	 * everything after, are read when epoll reports them.
	 */
	session_relay(session, EV_READ, 0);
}

static void session_on_socket(evutil_socket_t fd, short what, void *arg)
{
	struct tcp_session *session = arg;

	relay_ctx_note_activity(session->ctx);
	if (session->state == SESSION_CONNECTING) {
		if (fd == session->client.fd)
			session_client_closed_early(session);
		else
			session_connected(session);
		return;
	}
	bool client_side = fd == session->client.fd;
	struct endpoint *endpoint = client_side ? &session->client : &session->internal;
	if (endpoint->interest & EV_ET) {
		session_check_hangup(session, client_side);
		return;
	}
	if (client_side)
		session_relay(session, what, 0);
	else
		session_relay(session, 0, what);
}

static void session_on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct tcp_session *session = arg;
	(void)fd;
	(void)what;

	if (session->state == SESSION_CONNECTING) {
		session_counters(session)->tcp_connect_timeout++;
		session_end(session, "connect timeout", true, true);
		return;
	}
	/*
	 * The timer is not re-armed on every byte (that would cost a heap update
	 * per read); it fires once per period and checks when traffic last moved.
	 */
	/* A control connection is not idle while its data connections carry a transfer. */
	if (session_helper(session) != NULL && ftp_helper_data_active(session_helper(session)))
		session->last_active_ms = relay_now_ms();
	uint64_t idle_ms = relay_now_ms() - session->last_active_ms;
	if (idle_ms >= session->ctx->tcp_idle_timeout_ms) {
		session_counters(session)->tcp_idle_closed++;
		session_end(session, "idle timeout", false, false);
		return;
	}
	struct timeval remaining = relay_ms_to_timeval(session->ctx->tcp_idle_timeout_ms - idle_ms);
	session_arm_idle_timer(session, &remaining);
}

static struct tcp_session *session_new(struct relay_ctx *ctx, const struct forward *fwd,
				       int client_fd, const struct net_addr *client_addr,
				       enum session_kind kind)
{
	size_t size = sizeof(struct tcp_session) +
		      (kind == SESSION_PLAIN ? 0 : sizeof(struct session_ftp));
	struct tcp_session *session = calloc(1, size);
	if (session == NULL)
		return NULL;
	session->kind = (unsigned char)kind;
	session->ctx = ctx;
	session->forward = fwd;
	relay_ctx_take_forward(ctx, fwd);
	session_counters(session)->tcp_active++;
	socklen_t len = client_addr->len <= sizeof session->client_addr ? client_addr->len : 0;
	memcpy(&session->client_addr, &client_addr->ss, len);
	session->client_addr_len = len;
	session->client.fd = client_fd;
	session->internal.fd = -1;
	pump_init(&session->to_internal, &ctx->pumps);
	pump_init(&session->to_client, &ctx->pumps);
	/* Assigned once with no fd, so that endpoint_watch may always event_del. */
	event_assign(&session->client.event, ctx->base, -1, 0, session_on_socket, session);
	event_assign(&session->internal.event, ctx->base, -1, 0, session_on_socket, session);
	evtimer_assign(&session->timer, ctx->base, session_on_timer, session);
	session->started_ms = relay_now_ms();
	TAILQ_INSERT_TAIL(&ctx->sessions, session, link);
	ctx->session_count++;
	return session;
}

int tcp_session_start(struct relay_ctx *ctx, const struct forward *fwd, uint16_t port,
		      int client_fd, const struct net_addr *client_addr)
{
	relay_ctx_counters(ctx, fwd)->tcp_accepted++;
	struct tcp_session *session = session_new(ctx, fwd, client_fd, client_addr,
						  fwd->ftp ? SESSION_FTP_CONTROL : SESSION_PLAIN);
	if (session == NULL) {
		log_warn(fwd->name, "out of memory for a new connection; closing it");
		session_release_places(ctx, fwd, fwd->max_connections_per_source != 0,
				       (const struct sockaddr *)&client_addr->ss);
		net_close_reset(client_fd);
		return -1;
	}
	session->source_counted = fwd->max_connections_per_source != 0;

	session->external_port = port;
	struct net_addr internal_addr = forward_internal_addr(fwd, port);
	return session_connect(session, &internal_addr, NULL);
}

void tcp_session_start_data(struct relay_ctx *ctx, const struct forward *fwd,
			    const struct ftp_data_channel *channel)
{
	enum session_kind kind = channel->accepted_from_server ? SESSION_FTP_DATA_ACTIVE
							       : SESSION_FTP_DATA;
	/* A data connection counts under max_connections, but is part of a session admitted already. */
	atomic_fetch_add(ctx->options.tcp_open_total, 1);
	atomic_fetch_add(&fwd->stats->tcp_open, 1);
	struct tcp_session *session = session_new(ctx, fwd, channel->accepted_fd,
						  &channel->accepted_addr, kind);
	if (session == NULL) {
		session_release_places(ctx, fwd, false, NULL);
		ftp_link_data_closed(channel->link);
		log_warn(fwd->name, "out of memory for an ftp data connection; closing it");
		net_close_reset(channel->accepted_fd);
		return;
	}
	struct session_ftp *ftp = session_ftp(session);
	ftp->target = channel->target;
	ftp->link = channel->link;
	session->external_port = fwd->external_port_first;
	(void)session_connect(session, &ftp->target, &channel->source);
}

/*
 * source = "client": from the client's own address and port. An IPv6
 * client of an IPv4 server (or the reverse) cannot be: that connection
 * comes from the relay's address instead.
 */
static int session_connect_transparent(struct tcp_session *session, const struct net_addr *target)
{
	struct net_addr client;
	net_addr_set(&client, &session->client_addr.sa, session->client_addr_len);
	net_addr_unmap(&client);
	int fd = net_connect_transparent(target, &client, SOCK_STREAM);
	if (fd < 0 && errno == EAFNOSUPPORT)
		fd = net_connect_tcp_from(target, NULL);
	return fd;
}

/*
 * Starts the connection towards target, from source if not NULL. -1 (the
 * session is gone) when no socket could be had for lack of descriptors.
 */
static int session_connect(struct tcp_session *session, const struct net_addr *target,
			   const struct net_addr *source)
{
	struct relay_ctx *ctx = session->ctx;
	if (source == NULL && session->forward->source_client)
		session->internal.fd = session_connect_transparent(session, target);
	else
		session->internal.fd = net_connect_tcp_from(target, source);
	if (session->internal.fd < 0) {
		int error = errno;
		session_connect_failed(session, error);
		errno = error;
		return error == EMFILE || error == ENFILE ? -1 : 0;
	}
	session->state = SESSION_CONNECTING;
	endpoint_watch(session, &session->internal, EV_WRITE);
	endpoint_watch(session, &session->client, EV_READ | EV_ET);
	event_add(&session->timer, &ctx->tcp_connect_timeout);
	return 0;
}

/* ---- reloads ----------------------------------------------------------------------- */

void tcp_sessions_follow_rules(struct relay_ctx *ctx)
{
	struct tcp_session *session;
	TAILQ_FOREACH(session, &ctx->sessions, link) {
		const struct forward *old = session->forward;
		if (relay_ctx_is_current(ctx, old))
			continue;
		const struct forward *now = ruleset_find_place(ctx->rules, old);
		if (now == NULL || !forward_same_target(now, old))
			continue;   /* removed or retargeted: it goes on under its old rule */
		relay_ctx_take_forward(ctx, now);
		session->forward = now;
		if (session_helper(session) != NULL)
			ftp_helper_set_forward(session_helper(session), now);
		relay_ctx_release_forward(ctx, old);
	}
}

unsigned tcp_sessions_drain_due(struct relay_ctx *ctx, uint64_t now_ms)
{
	unsigned closed = 0;
	struct tcp_session *session = TAILQ_FIRST(&ctx->sessions), *next;
	for (; session != NULL; session = next) {
		next = TAILQ_NEXT(session, link);
		if (relay_ctx_is_current(ctx, session->forward))
			continue;
		const struct relay_rules_use *use = relay_ctx_retired_of(ctx, session->forward);
		if (use == NULL || use->drain_deadline_ms == 0 || use->drain_deadline_ms > now_ms)
			continue;
		session_counters(session)->tcp_drain_closed++;
		session_end(session, "drain_timeout after a reload", true, true);
		closed++;
	}
	return closed;
}

void tcp_sessions_free_all(struct relay_ctx *ctx)
{
	struct tcp_session *session;
	while ((session = TAILQ_FIRST(&ctx->sessions)) != NULL)
		tcp_session_free(session);
}
