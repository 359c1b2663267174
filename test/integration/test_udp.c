/*
 * test_udp.c - UDP through the relay: 500 clients without cross-talk, the
 * largest IPv4 datagram, idle expiry (and no expiry while active),
 * udp.max_flows, IPv6, a "both" forward, ICMP port unreachable from the
 * internal side, wildcard binds replying from the address the client sent
 * to, port ranges, running out of descriptors, and SIGTERM with flows open.
 *
 * The internal servers are UDP echo servers running in a thread of this
 * process; each records the distinct source ports it saw, which are the
 * relay's flow sockets: one per client flow.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_UDP_PAYLOAD_V4 65507

/* ---- bookkeeping: everything a failed test leaves open is closed at teardown ---- */

struct userver;
static void userver_stop(struct userver *s);

#define MAX_TRACKED_FDS 2048
#define MAX_USERVERS 8

static int tracked_fds[MAX_TRACKED_FDS];
static int ntracked_fds;
static struct userver *tracked_servers[MAX_USERVERS];
static int ntracked_servers;

static int track_fd(int fd)
{
	assert_true(ntracked_fds < MAX_TRACKED_FDS);
	tracked_fds[ntracked_fds++] = fd;
	return fd;
}

static void close_tracked(int fd)
{
	for (int i = 0; i < ntracked_fds; i++) {
		if (tracked_fds[i] == fd) {
			tracked_fds[i] = tracked_fds[--ntracked_fds];
			close(fd);
			return;
		}
	}
	close(fd);
}

static int udp_teardown(void **state)
{
	for (int i = 0; i < ntracked_servers; i++)
		userver_stop(tracked_servers[i]);
	ntracked_servers = 0;
	for (int i = 0; i < ntracked_fds; i++)
		close(tracked_fds[i]);
	ntracked_fds = 0;
	return fx_teardown(state);
}

#define UDP_TEST(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, udp_teardown)

/* ---- addresses ------------------------------------------------------------------------ */

static socklen_t addr_make(int family, const char *ip, uint16_t port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	if (family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
		return sizeof *a;
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;
	a->sin_family = AF_INET;
	a->sin_port = htons(port);
	assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
	return sizeof *a;
}

static uint16_t addr_port(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
	return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static const char *addr_text(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	if (ss->ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, ip, sizeof ip);
		snprintf(buf, len, "[%s]:%u", ip, addr_port(ss));
	} else {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, ip, sizeof ip);
		snprintf(buf, len, "%s:%u", ip, addr_port(ss));
	}
	return buf;
}

/* The local address of fd as the relay logs it ("127.0.0.1:40000", "[::1]:40000"). */
static const char *local_text(int fd, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	memset(&ss, 0, sizeof ss);
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	return addr_text(&ss, buf, len);
}

/* ---- the UDP echo server ---------------------------------------------------------------- */

struct userver {
	int fd;
	int stop_pipe[2];
	pthread_t thread;
	bool running;
	uint16_t port;
	pthread_mutex_t mu;
	uint8_t seen[65536 / 8];     /* source ports seen (bitmap) */
	unsigned distinct;
	uint64_t datagrams;
	uint64_t echo_failed;
	uint16_t last_port;
};

static void userver_note(struct userver *s, uint16_t port)
{
	pthread_mutex_lock(&s->mu);
	if (!(s->seen[port / 8] & (1u << (port % 8)))) {
		s->seen[port / 8] |= (uint8_t)(1u << (port % 8));
		s->distinct++;
	}
	s->datagrams++;
	s->last_port = port;
	pthread_mutex_unlock(&s->mu);
}

static void *userver_main(void *arg)
{
	struct userver *s = arg;
	unsigned char *buf = malloc(65536);
	if (!buf)
		return NULL;
	for (;;) {
		struct pollfd p[2] = { { .fd = s->fd, .events = POLLIN },
				       { .fd = s->stop_pipe[0], .events = POLLIN } };
		int n = poll(p, 2, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents)
			break;
		if (!p[0].revents)
			continue;
		/* Bounded batch, then look at the stop pipe again. */
		for (int i = 0; i < 256; i++) {
			struct sockaddr_storage from;
			socklen_t fl = sizeof from;
			ssize_t r = recvfrom(s->fd, buf, 65536, MSG_TRUNC, (struct sockaddr *)&from, &fl);
			if (r < 0) {
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					break;
				continue;   /* EINTR, or an ICMP error for an earlier reply */
			}
			userver_note(s, addr_port(&from));
			if (r > 65536) {
				pthread_mutex_lock(&s->mu);
				s->echo_failed++;
				pthread_mutex_unlock(&s->mu);
				continue;
			}
			ssize_t w = sendto(s->fd, buf, (size_t)r, 0, (struct sockaddr *)&from, fl);
			if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
				struct pollfd o = { .fd = s->fd, .events = POLLOUT };
				poll(&o, 1, 1000);
				w = sendto(s->fd, buf, (size_t)r, 0, (struct sockaddr *)&from, fl);
			}
			if (w != r) {
				pthread_mutex_lock(&s->mu);
				s->echo_failed++;
				pthread_mutex_unlock(&s->mu);
			}
		}
	}
	free(buf);
	return NULL;
}

/* An echo server on loopback:port (0: any). NULL with errno if the port cannot be bound. */
static struct userver *userver_try_start(int family, uint16_t port)
{
	assert_true(ntracked_servers < MAX_USERVERS);
	struct sockaddr_storage ss;
	socklen_t sl = addr_make(family, loopback_text(family), port, &ss);
	int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	int one = 1;
	if (family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	/* Room for bursts from many flows; the kernel caps it at rmem_max. */
	int rcv = 4 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
	if (bind(fd, (struct sockaddr *)&ss, sl) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return NULL;
	}
	struct userver *s = calloc(1, sizeof *s);
	assert_non_null(s);
	s->fd = fd;
	s->port = sock_port(fd);
	pthread_mutex_init(&s->mu, NULL);
	assert_int_equal(pipe2(s->stop_pipe, O_CLOEXEC), 0);
	assert_int_equal(pthread_create(&s->thread, NULL, userver_main, s), 0);
	s->running = true;
	tracked_servers[ntracked_servers++] = s;
	return s;
}

static struct userver *userver_start(int family)
{
	struct userver *s = userver_try_start(family, 0);
	if (!s)
		fail_msg("cannot bind a UDP echo server on %s: %s", loopback_text(family),
			 strerror(errno));
	return s;
}

static void userver_stop(struct userver *s)
{
	if (!s || !s->running)
		return;
	(void)!write(s->stop_pipe[1], "x", 1);
	pthread_join(s->thread, NULL);
	close(s->stop_pipe[0]);
	close(s->stop_pipe[1]);
	close(s->fd);
	pthread_mutex_destroy(&s->mu);
	s->running = false;
	free(s);
}

static unsigned userver_distinct(struct userver *s)
{
	pthread_mutex_lock(&s->mu);
	unsigned n = s->distinct;
	pthread_mutex_unlock(&s->mu);
	return n;
}

static uint64_t userver_datagrams(struct userver *s)
{
	pthread_mutex_lock(&s->mu);
	uint64_t n = s->datagrams;
	pthread_mutex_unlock(&s->mu);
	return n;
}

static uint16_t userver_last_port(struct userver *s)
{
	pthread_mutex_lock(&s->mu);
	uint16_t p = s->last_port;
	pthread_mutex_unlock(&s->mu);
	return p;
}

/* ---- messages ----------------------------------------------------------------------- */

#define MSG_MAGIC 0x55445031u   /* "UDP1" */
#define MSG_HDR 16

/* A datagram of len bytes (>= MSG_HDR): magic, client, seq, len, then bytes of a stream. */
static void msg_build(unsigned char *buf, size_t len, uint32_t client, uint32_t seq)
{
	uint32_t h[4] = { MSG_MAGIC, client, seq, (uint32_t)len };
	memcpy(buf, h, sizeof h);
	struct gen g;
	gen_init(&g, ((uint64_t)client << 32) ^ seq ^ 0xabcdef);
	gen_fill(&g, buf + MSG_HDR, len - MSG_HDR);
}

/* 0 if buf holds an intact message (client and seq filled in), -1 otherwise. */
static int msg_parse(const unsigned char *buf, size_t n, uint32_t *client, uint32_t *seq)
{
	if (n < MSG_HDR)
		return -1;
	uint32_t h[4];
	memcpy(h, buf, sizeof h);
	if (h[0] != MSG_MAGIC || h[3] != n)
		return -1;
	struct gen g;
	gen_init(&g, ((uint64_t)h[1] << 32) ^ h[2] ^ 0xabcdef);
	if (gen_check(&g, buf + MSG_HDR, n - MSG_HDR) != n - MSG_HDR)
		return -1;
	*client = h[1];
	*seq = h[2];
	return 0;
}

/* ---- clients ---------------------------------------------------------------------------- */

/* A non-blocking UDP socket, connect()ed to ip:port when ip is not NULL. Tracked. */
static int uclient(int family, const char *ip, uint16_t port)
{
	int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		fail_msg("UDP socket: %s", strerror(errno));
	track_fd(fd);
	if (ip) {
		struct sockaddr_storage ss;
		socklen_t sl = addr_make(family, ip, port, &ss);
		if (connect(fd, (struct sockaddr *)&ss, sl) != 0)
			fail_msg("connect UDP socket to %s port %u: %s", ip, port, strerror(errno));
	}
	return fd;
}

/* Waits for one datagram. Its length, or -1 with errno (ETIMEDOUT, ECONNREFUSED...). */
static ssize_t urecv(int fd, void *buf, size_t cap, int timeout_ms, struct sockaddr_storage *from)
{
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof ss;
		ssize_t r = recvfrom(fd, buf, cap, MSG_TRUNC, (struct sockaddr *)&ss, &sl);
		if (r >= 0) {
			if (from)
				*from = ss;
			return r;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return -1;
		int64_t left = deadline - now_ms();
		if (left <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, (int)left);
	}
}

/*
 * Sends message (client, seq) of len bytes on the connected fd and waits for
 * the same bytes back: up to tries sends, try_ms each. Duplicates of earlier
 * messages of this client (late replies to a retried message) are skipped;
 * anything else is a failure. Returns the number of sends needed, or 0 if no
 * reply came; fails the test on a foreign or corrupt datagram.
 */
static int roundtrip(struct fx *fx, int fd, uint32_t client, uint32_t seq, size_t len, int tries,
		     int try_ms)
{
	unsigned char *out = malloc(len), *in = malloc(65536);
	assert_non_null(out);
	assert_non_null(in);
	msg_build(out, len, client, seq);
	for (int t = 1; t <= tries; t++) {
		if (send(fd, out, len, 0) != (ssize_t)len) {
			int e = errno;
			free(out);
			free(in);
			fail_with_log(fx, "client %u: send of %zu bytes: %s", client, len, strerror(e));
		}
		int64_t deadline = now_ms() + try_ms;
		for (;;) {
			int64_t left = deadline - now_ms();
			if (left <= 0)
				break;
			ssize_t r = urecv(fd, in, 65536, (int)left, NULL);
			if (r < 0) {
				if (errno == ETIMEDOUT)
					break;
				/* An ICMP error on the client's socket: note it, keep waiting. */
				continue;
			}
			uint32_t c, s;
			if (msg_parse(in, (size_t)r, &c, &s) != 0) {
				free(out);
				free(in);
				fail_with_log(fx, "client %u: reply of %zd bytes (sent %zu) is not an intact "
					      "message", client, r, len);
			}
			if (c == client && s == seq) {
				free(out);
				free(in);
				return t;
			}
			if (c != client || s > seq) {
				free(out);
				free(in);
				fail_with_log(fx, "client %u seq %u: received client %u's seq %u (cross-talk)",
					      client, seq, c, s);
			}
		}
	}
	free(out);
	free(in);
	return 0;
}

/* roundtrip that must succeed (bounded retries). */
static void roundtrip_ok(struct fx *fx, int fd, uint32_t client, uint32_t seq, size_t len)
{
	if (roundtrip(fx, fd, client, seq, len, 5, 1000 * hang_scale()) == 0) {
		char who[64];
		fail_with_log(fx, "client %u (%s) seq %u, %zu bytes: no reply in 5 tries", client,
			      local_text(fd, who, sizeof who), seq, len);
	}
}

/* Whether a datagram arrives on fd within wait_ms (it is consumed). */
static bool got_datagram_within(int fd, int wait_ms)
{
	unsigned char buf[2048];
	ssize_t r = urecv(fd, buf, sizeof buf, wait_ms, NULL);
	return r >= 0;
}

static bool wait_log_count(struct relay *r, const char *s, unsigned n, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	while (relay_log_count(r, s) < n) {
		if (now_ms() > deadline)
			return false;
		sleep_ms(10);
	}
	return true;
}

/*
 * nclients connected clients, each sending per_client numbered messages of
 * len bytes; at most `window` unanswered at a time over all clients (the
 * relay's socket buffer is not a test subject). Each client must receive
 * exactly its own replies. A message unanswered for a second is sent again,
 * at most 4 times. The client fds are stored in fds (tracked, left open).
 */
struct mc_state {
	int64_t sent_at;
	uint8_t tries;
	bool answered;
};

static void many_clients(struct fx *fx, int family, uint16_t relay_port, unsigned nclients,
			 unsigned per_client, size_t len, int *fds)
{
	const unsigned window = 64, max_tries = 5;
	const int retry_ms = 1000 * hang_scale();
	size_t total = (size_t)nclients * per_client;
	struct mc_state *st = calloc(total, sizeof *st);   /* index: seq * nclients + client */
	struct pollfd *pfd = calloc(nclients, sizeof *pfd);
	unsigned char *out = malloc(len), *in = malloc(65536);
	assert_non_null(st);
	assert_non_null(pfd);
	assert_non_null(out);
	assert_non_null(in);

	for (unsigned c = 0; c < nclients; c++) {
		fds[c] = uclient(family, loopback_text(family), relay_port);
		pfd[c].fd = fds[c];
		pfd[c].events = POLLIN;
	}

	size_t next = 0, answered = 0, outstanding = 0;
	unsigned retries = 0;
	char problem[512] = "";
	int64_t deadline = now_ms() + 60000 * hang_scale();
	while (answered < total && !problem[0]) {
		int64_t now = now_ms();
		if (now > deadline) {
			snprintf(problem, sizeof problem, "only %zu of %zu replies within the deadline",
				 answered, total);
			break;
		}
		/* Fill the window, in order: every client's seq 0, then seq 1... */
		while (outstanding < window && next < total) {
			unsigned c = (unsigned)(next % nclients), s = (unsigned)(next / nclients);
			msg_build(out, len, c, s);
			if (send(fds[c], out, len, 0) != (ssize_t)len) {
				snprintf(problem, sizeof problem, "client %u send: %s", c, strerror(errno));
				break;
			}
			st[next].sent_at = now;
			st[next].tries = 1;
			next++;
			outstanding++;
		}
		/* Retries of messages unanswered for retry_ms. */
		for (size_t i = 0; i < next && !problem[0]; i++) {
			if (st[i].answered || now - st[i].sent_at < retry_ms)
				continue;
			unsigned c = (unsigned)(i % nclients), s = (unsigned)(i / nclients);
			if (st[i].tries >= max_tries) {
				snprintf(problem, sizeof problem,
					 "client %u seq %u: no reply after %u sends", c, s, max_tries);
				break;
			}
			msg_build(out, len, c, s);
			if (send(fds[c], out, len, 0) != (ssize_t)len) {
				snprintf(problem, sizeof problem, "client %u resend: %s", c,
					 strerror(errno));
				break;
			}
			st[i].sent_at = now;
			st[i].tries++;
			retries++;
		}
		if (problem[0])
			break;
		int n = poll(pfd, nclients, 100);
		if (n <= 0)
			continue;
		for (unsigned c = 0; c < nclients && !problem[0]; c++) {
			if (!pfd[c].revents)
				continue;
			for (;;) {
				ssize_t r = recv(fds[c], in, 65536, MSG_TRUNC);
				if (r < 0) {
					if (errno == EAGAIN || errno == EWOULDBLOCK)
						break;
					if (errno == EINTR)
						continue;
					snprintf(problem, sizeof problem, "client %u recv: %s", c,
						 strerror(errno));
					break;
				}
				uint32_t rc, rs;
				if (msg_parse(in, (size_t)r, &rc, &rs) != 0) {
					snprintf(problem, sizeof problem,
						 "client %u: a %zd-byte reply is not an intact message", c, r);
					break;
				}
				if (rc != c || rs >= per_client) {
					snprintf(problem, sizeof problem,
						 "client %u received client %u's message %u (cross-talk)", c,
						 rc, rs);
					break;
				}
				size_t i = (size_t)rs * nclients + c;
				if (i >= next) {
					snprintf(problem, sizeof problem,
						 "client %u received its message %u before sending it", c, rs);
					break;
				}
				if (st[i].answered) {
					/* A second copy: only a retried message may have one. */
					if (st[i].tries < 2) {
						snprintf(problem, sizeof problem,
							 "client %u: message %u came back twice but was "
							 "sent once", c, rs);
						break;
					}
					continue;
				}
				st[i].answered = true;
				answered++;
				outstanding--;
			}
		}
	}
	free(st);
	free(pfd);
	free(out);
	free(in);
	if (retries)
		print_message("%u datagrams had to be sent again\n", retries);
	if (problem[0])
		fail_with_log(fx, "%u clients x %u messages: %s", nclients, per_client, problem);
}

/* ---- config templates --------------------------------------------------------------------- */

/* One UDP forward from ext_addr:@P0@ to int_ip:int_port, with a udp group. */
static char *udp_forward_tmpl(const char *udp_group, const char *proto, const char *ext_addr,
			      const char *int_ip, unsigned int_port)
{
	char *t = NULL;
	int n = asprintf(&t,
			 "udp = { %s };\n"
			 "forwards = (\n"
			 "  { name = \"u\"; protocol = \"%s\"; external_address = \"%s\";\n"
			 "    external_port = @P0@; internal_ip = \"%s\"; internal_port = %u; }\n"
			 ");\n",
			 udp_group, proto, ext_addr, int_ip, int_port);
	assert_true(n > 0);
	return t;
}

static uint16_t start_udp_relay(struct fx *fx, int family, const char *udp_group,
				struct userver *srv)
{
	const char *lo = loopback_text(family);
	char *t = udp_forward_tmpl(udp_group, "udp", lo, lo, srv->port);
	uint16_t port = fx_start_relay(fx, 1, family == AF_INET6 ? PORTS_V6 : PORTS_V4, t);
	free(t);
	return port;
}

/* ---- (a) 500 clients ---------------------------------------------------------------------- */

static void test_500_clients_get_only_their_own_replies(void **state)
{
	struct fx *fx = *state;
	enum { CLIENTS = 500, PER_CLIENT = 5 };
	struct userver *srv = userver_start(AF_INET);
	uint16_t port = start_udp_relay(fx, AF_INET, "idle_timeout = 60.0;", srv);

	int *fds = fx_calloc(fx, CLIENTS * sizeof *fds);
	many_clients(fx, AF_INET, port, CLIENTS, PER_CLIENT, 100, fds);

	unsigned distinct = userver_distinct(srv);
	uint64_t datagrams = userver_datagrams(srv);
	print_message("server: %u source ports, %llu datagrams\n", distinct,
		      (unsigned long long)datagrams);
	if (distinct != CLIENTS)
		fail_with_log(fx, "the server saw %u distinct source ports, expected %u (one per client)",
			      distinct, CLIENTS);
	if (datagrams < CLIENTS * PER_CLIENT)
		fail_with_log(fx, "the server got %llu datagrams, expected at least %u",
			      (unsigned long long)datagrams, CLIENTS * PER_CLIENT);
	if (relay_log_contains(&fx->relay, "flow table full"))
		fail_with_log(fx, "the relay reported a full flow table with 500 flows");
	for (int i = 0; i < CLIENTS; i++)
		close_tracked(fds[i]);
	fx_stop_relay_ok(fx);
}

/* ---- (b) sizes up to the largest IPv4 datagram ------------------------------------------------ */

static void test_datagram_sizes_up_to_65507_round_trip_intact(void **state)
{
	struct fx *fx = *state;
	struct userver *srv = userver_start(AF_INET);
	uint16_t port = start_udp_relay(fx, AF_INET, "", srv);
	int fd = uclient(AF_INET, "127.0.0.1", port);
	int sz = 4 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);

	const size_t sizes[] = { MSG_HDR, 1472, 1473, 9000, 65000, MAX_UDP_PAYLOAD_V4 - 1,
				 MAX_UDP_PAYLOAD_V4 };
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		int sends = roundtrip(fx, fd, 1, (uint32_t)i, sizes[i], 3, 2000 * hang_scale());
		if (sends == 0)
			fail_with_log(fx, "a %zu-byte datagram did not come back", sizes[i]);
	}
	/* One flow for all of them. */
	assert_int_equal(userver_distinct(srv), 1);
	fx_stop_relay_ok(fx);
}

static void test_empty_datagram_round_trips(void **state)
{
	struct fx *fx = *state;
	struct userver *srv = userver_start(AF_INET);
	uint16_t port = start_udp_relay(fx, AF_INET, "", srv);
	int fd = uclient(AF_INET, "127.0.0.1", port);
	bool ok = false;
	for (int t = 0; t < 3 && !ok; t++) {
		assert_int_equal(send(fd, "", 0, 0), 0);
		unsigned char buf[64];
		ssize_t r = urecv(fd, buf, sizeof buf, 2000 * hang_scale(), NULL);
		if (r > 0)
			fail_with_log(fx, "an empty datagram came back as %zd bytes", r);
		ok = r == 0;
	}
	if (!ok)
		fail_with_log(fx, "an empty datagram was not relayed (server saw %llu datagrams)",
			      (unsigned long long)userver_datagrams(srv));
	/* And the flow still carries data afterwards. */
	roundtrip_ok(fx, fd, 2, 0, 100);
	fx_stop_relay_ok(fx);
}

/* ---- (c) idle timeout ------------------------------------------------------------------------ */

static void test_idle_flow_expires_and_comes_back_on_a_new_port(void **state)
{
	struct fx *fx = *state;
	struct userver *srv = userver_start(AF_INET);
	uint16_t port = start_udp_relay(fx, AF_INET, "idle_timeout = 1.0;", srv);
	int fd = uclient(AF_INET, "127.0.0.1", port);
	char who[64];
	local_text(fd, who, sizeof who);

	roundtrip_ok(fx, fd, 7, 0, 64);
	assert_int_equal(userver_distinct(srv), 1);
	uint16_t first = userver_last_port(srv);
	const char *closed[] = { "udp flow closed", who, "idle timeout", NULL };
	if (relay_log_line_with(&fx->relay, closed))
		fail_with_log(fx, "the flow of %s was closed right after its first reply", who);

	/* Silence for twice the idle timeout. */
	sleep_ms(2000);
	if (!wait_for_log_line(&fx->relay, closed, 3000 * hang_scale()))
		fail_with_log(fx, "no 'udp flow closed ... %s ... idle timeout' line after 2 s idle", who);

	roundtrip_ok(fx, fd, 7, 1, 64);
	unsigned distinct = userver_distinct(srv);
	uint16_t second = userver_last_port(srv);
	if (distinct != 2 || second == first)
		fail_with_log(fx, "after expiry the server saw source port %u (first %u, %u distinct); "
			      "expected a new flow socket", second, first, distinct);
	fx_stop_relay_ok(fx);
}

/* Traffic keeps a flow: sends every 0.8 s for 2.4 s with a 2 s timeout, one source port. */
static void test_active_flow_does_not_expire(void **state)
{
	struct fx *fx = *state;
	struct userver *srv = userver_start(AF_INET);
	uint16_t port = start_udp_relay(fx, AF_INET, "idle_timeout = 2.0;", srv);
	int fd = uclient(AF_INET, "127.0.0.1", port);
	char who[64];
	local_text(fd, who, sizeof who);
	const char *closed[] = { "udp flow closed", who, NULL };

	int64_t t0 = now_ms();
	for (uint32_t i = 0; i < 4; i++) {
		int64_t due = t0 + 800 * (int64_t)i;
		if (now_ms() < due)
			sleep_ms((int)(due - now_ms()));
		roundtrip_ok(fx, fd, 3, i, 64);
	}
	if (relay_log_line_with(&fx->relay, closed))
		fail_with_log(fx, "the flow of %s was closed although it was active every 0.8 s", who);
	if (userver_distinct(srv) != 1)
		fail_with_log(fx, "the server saw %u source ports for one active client",
			      userver_distinct(srv));
	fx_stop_relay_ok(fx);
}

/*
 * Datagrams towards the internal host alone keep a flow alive: the internal
 * side here never answers, and the client sends every 0.8 s for 3.2 s with
 * idle_timeout = 2 s. Each datagram arrives, all from the same flow port.
 */
static void test_one_way_flow_does_not_expire(void **state)
{
	struct fx *fx = *state;
	int sink = uclient(AF_INET, NULL, 0);
	struct sockaddr_storage ss;
	socklen_t sl = addr_make(AF_INET, "127.0.0.1", 0, &ss);
	assert_int_equal(bind(sink, (struct sockaddr *)&ss, sl), 0);
	sl = sizeof ss;
	assert_int_equal(getsockname(sink, (struct sockaddr *)&ss, &sl), 0);
	char *t = udp_forward_tmpl("idle_timeout = 2.0;", "udp", "127.0.0.1", "127.0.0.1",
				   addr_port(&ss));
	uint16_t port = fx_start_relay(fx, 1, PORTS_V4, t);
	free(t);
	int fd = uclient(AF_INET, "127.0.0.1", port);
	char who[64];
	local_text(fd, who, sizeof who);
	const char *closed[] = { "udp flow closed", who, NULL };

	uint16_t flow_port = 0;
	int64_t t0 = now_ms();
	for (int i = 0; i < 5; i++) {
		int64_t due = t0 + 800 * (int64_t)i;
		if (now_ms() < due)
			sleep_ms((int)(due - now_ms()));
		char out = (char)i, in;
		assert_int_equal(send(fd, &out, 1, 0), 1);
		struct sockaddr_storage from;
		if (urecv(sink, &in, 1, 2000 * hang_scale(), &from) != 1 || in != out)
			fail_with_log(fx, "datagram %d did not reach the internal side", i);
		if (flow_port == 0)
			flow_port = addr_port(&from);
		else if (addr_port(&from) != flow_port)
			fail_with_log(fx, "datagram %d came from port %u, the flow's was %u: the flow "
				      "expired although the client sent every 0.8 s", i,
				      addr_port(&from), flow_port);
	}
	if (relay_log_line_with(&fx->relay, closed))
		fail_with_log(fx, "the flow of %s was closed although it sent every 0.8 s", who);
	fx_stop_relay_ok(fx);
}

/* ---- (d) max_flows --------------------------------------------------------------------------- */

static void test_max_flows_drops_new_clients_until_flows_expire(void **state)
{
	struct fx *fx = *state;
	enum { MAX = 10 };
	struct userver *srv = userver_start(AF_INET);
	/* Two workers, whatever the machine: the limit holds for the process. */
	char *forwards = udp_forward_tmpl("idle_timeout = 1.0; max_flows = 10;", "udp",
					  "127.0.0.1", "127.0.0.1", srv->port);
	char *t = NULL;
	assert_true(asprintf(&t, "workers = 2;\n%s", forwards) > 0);
	free(forwards);
	uint16_t port = fx_start_relay(fx, 1, PORTS_V4, t);
	free(t);
	if (!relay_log_contains(&fx->relay, "2 workers"))
		fail_with_log(fx, "the relay did not run 2 workers");

	int fds[MAX];
	for (uint32_t c = 0; c < MAX; c++) {
		fds[c] = uclient(AF_INET, "127.0.0.1", port);
		roundtrip_ok(fx, fds[c], c, 0, 64);
	}
	assert_int_equal(userver_distinct(srv), MAX);
	int extra = uclient(AF_INET, "127.0.0.1", port);
	unsigned char msg[64];
	msg_build(msg, sizeof msg, 99, 0);

	/*
	 * Four tries of 250 ms for the 11th client; the 10 flows are used in
	 * between (well within their 1 s timeout) and must keep working.
	 */
	for (uint32_t t = 0; t < 4; t++) {
		assert_int_equal(send(extra, msg, sizeof msg, 0), (ssize_t)sizeof msg);
		for (uint32_t c = 0; c < MAX; c++)
			roundtrip_ok(fx, fds[c], c, 1 + t, 64);
		if (got_datagram_within(extra, 250))
			fail_with_log(fx, "an 11th client got a reply with udp.max_flows = 10");
	}
	if (!wait_for_log(&fx->relay, "flow table full", 2000 * hang_scale()))
		fail_with_log(fx, "no 'flow table full' in the log");
	if (userver_distinct(srv) != MAX)
		fail_with_log(fx, "the server saw %u source ports, expected %u: the 11th got through",
			      userver_distinct(srv), MAX);

	/* Silence: the 10 flows expire; then the 11th client gets in. */
	if (!wait_log_count(&fx->relay, "idle timeout", MAX, 10000 * hang_scale()))
		fail_with_log(fx, "the %u idle flows were not closed", MAX);
	roundtrip_ok(fx, extra, 99, 1, 64);
	if (userver_distinct(srv) != MAX + 1)
		fail_with_log(fx, "the server saw %u source ports, expected %u", userver_distinct(srv),
			      MAX + 1);
	fx_stop_relay_ok(fx);
}

/* ---- (e) IPv6 -------------------------------------------------------------------------------- */

static void test_ipv6_clients_and_largest_datagram(void **state)
{
	struct fx *fx = *state;
	if (!ipv6_loopback_available()) {
		print_message("::1 is not available; skipping\n");
		skip();
	}
	enum { CLIENTS = 50 };
	struct userver *srv = userver_start(AF_INET6);
	uint16_t port = start_udp_relay(fx, AF_INET6, "", srv);
	int *fds = fx_calloc(fx, CLIENTS * sizeof *fds);
	many_clients(fx, AF_INET6, port, CLIENTS, 3, 200, fds);
	if (userver_distinct(srv) != CLIENTS)
		fail_with_log(fx, "the server saw %u source ports, expected %u", userver_distinct(srv),
			      CLIENTS);

	/* Over IPv6 a UDP payload may be 65527 bytes (fragmented on lo). */
	int big = fds[0];
	int sz = 4 << 20;
	setsockopt(big, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
	setsockopt(big, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
	const size_t sizes[] = { 1500, 65507, 65527 };
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
		if (roundtrip(fx, big, 0, 100 + (uint32_t)i, sizes[i], 3, 2000 * hang_scale()) == 0)
			fail_with_log(fx, "a %zu-byte datagram over IPv6 did not come back", sizes[i]);
	fx_stop_relay_ok(fx);
}

/* ---- (f) "both" on one port -------------------------------------------------------------------- */

/*
 * A TCP and a UDP echo server on one internal port, a "both" forward to them
 * (after the global settings in globals), and traffic both ways: UDP, TCP,
 * then UDP again on the same flow. Returns the UDP client's socket.
 */
static int both_echo_through_relay(struct fx *fx, const char *globals)
{
	/* A TCP echo server and a UDP echo server on the same internal port. */
	struct userver *usrv = NULL;
	int lfd = -1;
	for (int attempt = 0; attempt < 50 && lfd < 0; attempt++) {
		usrv = userver_start(AF_INET);
		lfd = sock_listen(AF_INET, usrv->port, 128);
		if (lfd < 0) {
			userver_stop(usrv);
			tracked_servers[--ntracked_servers] = NULL;
		}
	}
	if (lfd < 0)
		fail_msg("no port free for both a UDP and a TCP echo server");
	fx_server(fx, lfd, TSERVER_ECHO, NULL);

	char *forwards = udp_forward_tmpl("", "both", "127.0.0.1", "127.0.0.1", usrv->port);
	char *t = NULL;
	assert_true(asprintf(&t, "%s%s", globals, forwards) > 0);
	uint16_t port = fx_start_relay(fx, 1, PORTS_V4, t);
	free(t);
	free(forwards);

	int ufd = uclient(AF_INET, "127.0.0.1", port);
	roundtrip_ok(fx, ufd, 1, 0, 1000);

	int tfd = sock_connect(AF_INET, port, 10000 * hang_scale());
	if (tfd < 0)
		fail_with_log(fx, "TCP connect to the 'both' port %u: %s", port, strerror(errno));
	track_fd(tfd);
	struct xfer x;
	xfer_init(&x, tfd, 0x5151, 256 * 1024, 0x5151, 256 * 1024);
	size_t not_done = xfer_run(&x, 1, 30000 * hang_scale());
	char problem[256];
	xfer_first_problem(&x, 1, problem, sizeof problem);
	xfer_release(&x);
	if (not_done)
		fail_with_log(fx, "TCP echo through the 'both' port: %s", problem);

	/* UDP still works after TCP, on the same flow. */
	roundtrip_ok(fx, ufd, 1, 1, 1000);
	assert_int_equal(userver_distinct(usrv), 1);
	return ufd;
}

static void test_both_serves_tcp_and_udp_on_one_port(void **state)
{
	struct fx *fx = *state;
	(void)both_echo_through_relay(fx, "");
	fx_stop_relay_ok(fx);
}

/*
 * How often the relay's threads went to sleep (blocked) so far, from
 * /proc/PID/task/TID/status; preemption is counted apart and not here.
 */
static long relay_voluntary_switches(struct relay *r)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/task", (int)r->pid);
	DIR *tasks = opendir(path);
	if (tasks == NULL)
		return -1;
	long total = 0;
	struct dirent *entry;
	while ((entry = readdir(tasks)) != NULL) {
		if (entry->d_name[0] == '.')
			continue;
		char status_path[sizeof path + sizeof entry->d_name + 8], line[256];
		snprintf(status_path, sizeof status_path, "%s/%s/status", path, entry->d_name);
		FILE *status = fopen(status_path, "r");
		if (status == NULL)
			continue;   /* the thread just ended */
		while (fgets(line, sizeof line, status) != NULL) {
			long count;
			if (sscanf(line, "voluntary_ctxt_switches: %ld", &count) == 1)
				total += count;
		}
		fclose(status);
	}
	closedir(tasks);
	return total;
}

/*
 * busy_poll keeps the loops polling only while traffic flows: the bytes still
 * arrive intact both ways; a second after the last datagram the relay is
 * asleep (a loop that never blocked would burn the whole second); during a
 * stream of round trips it keeps polling instead of going to sleep between
 * them (without busy polling it sleeps at least once per round trip); and it
 * stops cleanly right after traffic, while it is still polling.
 */
static void test_busy_poll_relays_and_sleeps_when_idle(void **state)
{
	struct fx *fx = *state;
	int ufd = both_echo_through_relay(fx, "workers = 2;\nbusy_poll = 2000;\n");
	if (!relay_log_contains(&fx->relay, "busy poll 2000 us"))
		fail_with_log(fx, "the ready line does not mention busy polling");

	double before = relay_cpu_seconds(&fx->relay);
	sleep_ms(1000);
	double idle = relay_cpu_seconds(&fx->relay) - before;
	print_message("relay CPU in 1 s of idleness with busy_poll = 2000 us: %.3f s\n", idle);
	if (before < 0 || idle > 0.25)
		fail_with_log(fx, "an idle relay used %.3f s of CPU in 1 s with busy_poll on", idle);

	long sleeps_before = relay_voluntary_switches(&fx->relay);
	int64_t start = now_ms();
	unsigned trips = 0;
	while (now_ms() - start < 1000)
		roundtrip_ok(fx, ufd, 1, 2 + trips++, 64);
	long sleeps = relay_voluntary_switches(&fx->relay) - sleeps_before;
	print_message("relay threads went to sleep %ld times during %u round trips\n", sleeps,
		      trips);
	/* Under valgrind, its scheduler makes the threads take turns. */
	if (!under_valgrind() && (sleeps_before < 0 || sleeps * 4 > (long)trips))
		fail_with_log(fx, "the relay went to sleep %ld times in %u round trips: "
			      "it does not poll between them", sleeps, trips);
	fx_stop_relay_ok(fx);
}

/* ---- (g) ICMP port unreachable from the internal side ---------------------------------------- */

static uint16_t dead_udp_port(void)
{
	struct sockaddr_storage ss;
	socklen_t sl = addr_make(AF_INET, "127.0.0.1", 0, &ss);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&ss, sl), 0);
	uint16_t port = sock_port(fd);
	close(fd);
	return port;
}

static void test_refused_internal_port_does_not_spin(void **state)
{
	struct fx *fx = *state;
	struct userver *srv = userver_start(AF_INET);
	uint16_t dead = dead_udp_port();
	char *t = NULL;
	assert_true(asprintf(&t,
			     "forwards = (\n"
			     "  { name = \"dead\"; protocol = \"udp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = @P0@; internal_ip = \"127.0.0.1\"; internal_port = %u; },\n"
			     "  { name = \"live\"; protocol = \"udp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = @P1@; internal_ip = \"127.0.0.1\"; internal_port = %u; }\n"
			     ");\n",
			     dead, srv->port) > 0);
	uint16_t base = fx_start_relay(fx, 2, PORTS_V4, t);
	free(t);

	/* Two clients of the dead forward: each flow gets ICMP errors. */
	int d1 = uclient(AF_INET, "127.0.0.1", base);
	int d2 = uclient(AF_INET, "127.0.0.1", base);
	unsigned char msg[64];
	msg_build(msg, sizeof msg, 5, 0);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(send(d1, msg, sizeof msg, 0), (ssize_t)sizeof msg);
		assert_int_equal(send(d2, msg, sizeof msg, 0), (ssize_t)sizeof msg);
	}
	/* The live forward works alongside. */
	int live = uclient(AF_INET, "127.0.0.1", (uint16_t)(base + 1));
	roundtrip_ok(fx, live, 1, 0, 64);

	/* 1.5 s with a datagram to the dead forward every 100 ms: CPU time stays low. */
	double cpu0 = relay_cpu_seconds(&fx->relay);
	assert_true(cpu0 >= 0);
	int64_t t0 = now_ms();
	int sent = 0;
	while (now_ms() - t0 < 1500) {
		assert_int_equal(send(sent % 2 ? d2 : d1, msg, sizeof msg, 0), (ssize_t)sizeof msg);
		sent++;
		if (got_datagram_within(d1, 50) || got_datagram_within(d2, 50))
			fail_with_log(fx, "a client of the dead forward got a datagram back");
	}
	double cpu1 = relay_cpu_seconds(&fx->relay);
	print_message("relay CPU over %lld ms with %d refused datagrams: %.3f s\n",
		      (long long)(now_ms() - t0), sent, cpu1 - cpu0);
	/* A spinning relay burns the whole 1.5 s; valgrind makes honest work slower. */
	double limit = under_valgrind() ? 0.75 : 0.3;
	if (cpu1 - cpu0 >= limit)
		fail_with_log(fx, "the relay used %.2f s of CPU in 1.5 s after ICMP port unreachable "
			      "(spinning?)", cpu1 - cpu0);

	roundtrip_ok(fx, live, 1, 1, 64);
	int live2 = uclient(AF_INET, "127.0.0.1", (uint16_t)(base + 1));
	roundtrip_ok(fx, live2, 2, 0, 64);
	assert_int_equal(userver_distinct(srv), 2);
	/* The refusals neither close the dead forward's flows nor go uncounted. */
	const char *dead_closed[] = { "udp flow closed", "[dead]", NULL };
	if (relay_log_line_with(&fx->relay, dead_closed))
		fail_with_log(fx, "an ICMP port unreachable closed a flow of the dead forward");
	fx_stop_relay_ok(fx);
	const char *counted[] = { "stopped. udp", " port unreachable", NULL };
	if (!relay_log_line_with(&fx->relay, counted) ||
	    relay_log_contains(&fx->relay, " 0 port unreachable"))
		fail_with_log(fx, "the closing line does not count the port-unreachable errors");
}

/* ---- (h) wildcard binds reply from the address the client sent to ---------------------------- */

static bool address_usable(int family, const char *ip)
{
	struct sockaddr_storage ss;
	socklen_t sl = addr_make(family, ip, 0, &ss);
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	bool ok = bind(fd, (struct sockaddr *)&ss, sl) == 0;
	close(fd);
	return ok;
}

/*
 * An unconnected client sends to ip:port; the reply must come back from
 * exactly ip:port. Bounded retries.
 */
/* From fd, a datagram to ip:port gets its echo back from that same address and port. */
static void expect_reply_from(struct fx *fx, int fd, int family, const char *ip, uint16_t port,
			      uint32_t client)
{
	struct sockaddr_storage to, from;
	socklen_t tl = addr_make(family, ip, port, &to);
	unsigned char msg[128], in[2048];
	msg_build(msg, sizeof msg, client, 0);
	char want[80], got[80];
	addr_text(&to, want, sizeof want);
	for (int t = 0; t < 5; t++) {
		assert_int_equal(sendto(fd, msg, sizeof msg, 0, (struct sockaddr *)&to, tl),
				 (ssize_t)sizeof msg);
		ssize_t r = urecv(fd, in, sizeof in, 1000 * hang_scale(), &from);
		if (r < 0)
			continue;
		uint32_t c, s;
		if (msg_parse(in, (size_t)r, &c, &s) != 0 || c != client)
			fail_with_log(fx, "a wrong reply to a datagram sent to %s", want);
		addr_text(&from, got, sizeof got);
		if (strcmp(got, want) != 0)
			fail_with_log(fx, "sent to %s, the reply came from %s", want, got);
		return;
	}
	fail_with_log(fx, "no reply to datagrams sent to %s", want);
}

static void reply_from_address_sent_to(struct fx *fx, int family, const char *ip, uint16_t port,
				       uint32_t client)
{
	int fd = uclient(family, NULL, 0);
	expect_reply_from(fx, fd, family, ip, port, client);
	close_tracked(fd);
}

static void test_wildcard_replies_from_the_address_sent_to(void **state)
{
	struct fx *fx = *state;
	if (!address_usable(AF_INET, "127.0.0.2")) {
		print_message("127.0.0.2 is not a local address here; skipping\n");
		skip();
	}
	struct userver *srv = userver_start(AF_INET);
	char *t = udp_forward_tmpl("", "udp", "0.0.0.0", "127.0.0.1", srv->port);
	uint16_t port = fx_start_relay(fx, 1, PORTS_V4, t);
	free(t);
	reply_from_address_sent_to(fx, AF_INET, "127.0.0.1", port, 1);
	reply_from_address_sent_to(fx, AF_INET, "127.0.0.2", port, 2);
	reply_from_address_sent_to(fx, AF_INET, "127.0.0.3", port, 3);
	assert_int_equal(userver_distinct(srv), 3);
	fx_stop_relay_ok(fx);
}

/* "::" is dual stack: IPv4 clients (to 127.0.0.2) and IPv6 clients (to ::1). */
static void test_dual_stack_wildcard_replies_from_the_address_sent_to(void **state)
{
	struct fx *fx = *state;
	if (!ipv6_loopback_available() || !address_usable(AF_INET, "127.0.0.2")) {
		print_message("::1 or 127.0.0.2 is not available; skipping\n");
		skip();
	}
	struct userver *srv = userver_start(AF_INET);
	char *t = udp_forward_tmpl("", "udp", "::", "127.0.0.1", srv->port);
	uint16_t port = fx_start_relay(fx, 1, PORTS_V4 | PORTS_V6, t);
	free(t);
	reply_from_address_sent_to(fx, AF_INET6, "::1", port, 1);
	reply_from_address_sent_to(fx, AF_INET, "127.0.0.2", port, 2);
	reply_from_address_sent_to(fx, AF_INET, "127.0.0.1", port, 3);
	assert_int_equal(userver_distinct(srv), 3);
	fx_stop_relay_ok(fx);
}

/* ---- port ranges: one client, two external ports, two flows -------------------------------------- */

static void test_range_maps_ports_one_to_one_with_a_flow_each(void **state)
{
	struct fx *fx = *state;
	/* Two echo servers on consecutive ports. */
	struct userver *a = NULL, *b = NULL;
	for (int attempt = 0; attempt < 50 && !b; attempt++) {
		a = userver_start(AF_INET);
		b = userver_try_start(AF_INET, (uint16_t)(a->port + 1));
		if (!b) {
			userver_stop(a);
			tracked_servers[--ntracked_servers] = NULL;
		}
	}
	if (!b)
		fail_msg("no two consecutive free UDP ports for the echo servers");
	char *t = NULL;
	assert_true(asprintf(&t,
			     "forwards = (\n"
			     "  { name = \"range\"; protocol = \"udp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = \"@P0@-@P1@\"; internal_ip = \"127.0.0.1\";\n"
			     "    internal_port = \"%u-%u\"; }\n"
			     ");\n",
			     a->port, b->port) > 0);
	uint16_t base = fx_start_relay(fx, 2, PORTS_V4, t);
	free(t);

	/* One unconnected socket sends to both external ports. */
	int fd = uclient(AF_INET, NULL, 0);
	for (uint32_t k = 0; k < 2; k++)
		expect_reply_from(fx, fd, AF_INET, "127.0.0.1", (uint16_t)(base + k), k);
	/* Each external port went to its own internal port, through its own flow. */
	if (userver_distinct(a) != 1 || userver_distinct(b) != 1)
		fail_with_log(fx, "internal ports %u and %u saw %u and %u source ports, expected 1 each",
			      a->port, b->port, userver_distinct(a), userver_distinct(b));
	fx_stop_relay_ok(fx);
}

/* ---- out of descriptors: new flows fail, old ones work, nothing spins ------------------------------ */

#define FDX_NOFILE 64
#define FDX_CLIENTS 100

static void test_fd_exhaustion_drops_new_flows_without_spinning(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	struct userver *srv = userver_start(AF_INET);
	fx->nofile = FDX_NOFILE;
	uint16_t port = start_udp_relay(fx, AF_INET, "idle_timeout = 3.0;", srv);

	/* Every client sends once, all at once: more flows than descriptors. */
	int fds[FDX_CLIENTS];
	struct pollfd pfd[FDX_CLIENTS];
	bool replied[FDX_CLIENTS] = { false };
	unsigned char msg[64], in[256];
	for (uint32_t c = 0; c < FDX_CLIENTS; c++) {
		fds[c] = uclient(AF_INET, "127.0.0.1", port);
		pfd[c] = (struct pollfd){ .fd = fds[c], .events = POLLIN };
		msg_build(msg, sizeof msg, c, 0);
		assert_int_equal(send(fds[c], msg, sizeof msg, 0), (ssize_t)sizeof msg);
	}
	/* Replies until none came for 500 ms (bounded). */
	unsigned nreplied = 0;
	int64_t quiet_since = now_ms(), deadline = now_ms() + 20000 * hang_scale();
	while (now_ms() - quiet_since < 500 * hang_scale() && now_ms() < deadline) {
		if (poll(pfd, FDX_CLIENTS, 50) <= 0)
			continue;
		for (uint32_t c = 0; c < FDX_CLIENTS; c++) {
			if (!pfd[c].revents)
				continue;
			ssize_t r = recv(fds[c], in, sizeof in, 0);
			uint32_t rc, rs;
			if (r < 0)
				continue;
			if (msg_parse(in, (size_t)r, &rc, &rs) != 0 || rc != c)
				fail_with_log(fx, "client %u got a wrong reply", c);
			if (!replied[c]) {
				replied[c] = true;
				nreplied++;
				quiet_since = now_ms();
			}
		}
	}
	print_message("%u of %u clients got a flow with RLIMIT_NOFILE %d\n", nreplied, FDX_CLIENTS,
		      FDX_NOFILE);
	/*
	 * The process's budget of descriptors for flows (sized from the limit
	 * at start-up) refuses the newcomers before socket() could fail.
	 */
	if (!wait_for_log(&fx->relay, "descriptors for UDP flows are all in use", 2000 * hang_scale()))
		fail_with_log(fx, "%u of %u clients served with RLIMIT_NOFILE %d, and no 'descriptors "
			      "for UDP flows are all in use' in the log", nreplied, FDX_CLIENTS,
			      FDX_NOFILE);
	if (nreplied < 5 || nreplied >= FDX_CLIENTS)
		fail_with_log(fx, "%u of %u clients got replies with RLIMIT_NOFILE %d", nreplied,
			      FDX_CLIENTS, FDX_NOFILE);

	/* The unserved keep sending for a second: the relay must not spin. */
	double cpu0 = relay_cpu_seconds(&fx->relay);
	assert_true(cpu0 >= 0);
	int64_t t0 = now_ms();
	uint32_t c = 0;
	while (now_ms() - t0 < 1000) {
		for (uint32_t k = 0; k < FDX_CLIENTS; k++, c = (c + 1) % FDX_CLIENTS) {
			if (!replied[c]) {
				msg_build(msg, sizeof msg, c, 1);
				ssize_t w = send(fds[c], msg, sizeof msg, 0);
				(void)w;
				c = (c + 1) % FDX_CLIENTS;
				break;
			}
		}
		sleep_ms(20);
	}
	double cpu1 = relay_cpu_seconds(&fx->relay);
	double limit = under_valgrind() ? 0.75 : 0.3;
	print_message("relay CPU in 1 s out of descriptors: %.3f s\n", cpu1 - cpu0);
	if (cpu1 - cpu0 >= limit)
		fail_with_log(fx, "the relay used %.2f s of CPU in 1 s out of descriptors", cpu1 - cpu0);

	/* The flows that exist still work. */
	uint32_t served = 0, unserved = FDX_CLIENTS;
	for (uint32_t k = 0; k < FDX_CLIENTS; k++) {
		if (replied[k])
			served = k;
		else
			unserved = k;
	}
	/* Drop any late datagrams queued for the served client. */
	while (got_datagram_within(fds[served], 0))
		;
	roundtrip_ok(fx, fds[served], served, 2, 64);

	/* Once idle flows expire, descriptors come back and an unserved client gets in. */
	assert_true(unserved < FDX_CLIENTS);
	if (!wait_for_log(&fx->relay, "idle timeout", 10000 * hang_scale()))
		fail_with_log(fx, "no flow expired");
	/* Wait for the served flows to go (the one used above expires last). */
	if (!wait_log_count(&fx->relay, "idle timeout", nreplied, 15000 * hang_scale()))
		fail_with_log(fx, "not all %u idle flows expired", nreplied);
	while (got_datagram_within(fds[unserved], 0))
		;
	roundtrip_ok(fx, fds[unserved], unserved, 3, 64);
	fx_stop_relay_ok(fx);
}

/* ---- (i) SIGTERM with flows open ------------------------------------------------------------------ */

static void test_sigterm_with_100_flows_exits_0(void **state)
{
	struct fx *fx = *state;
	enum { CLIENTS = 100 };
	struct userver *srv = userver_start(AF_INET);
	uint16_t port = start_udp_relay(fx, AF_INET, "idle_timeout = 600.0;", srv);
	int *fds = fx_calloc(fx, CLIENTS * sizeof *fds);
	many_clients(fx, AF_INET, port, CLIENTS, 1, 64, fds);
	assert_int_equal(userver_distinct(srv), CLIENTS);
	/* The flows are open: one socket each in the relay. */
	int nfd = relay_fd_count(&fx->relay);
	if (nfd < CLIENTS)
		fail_with_log(fx, "the relay has %d fds open with %d flows", nfd, CLIENTS);
	fx_stop_relay_ok(fx);
	/* 100 flows, none expired, nothing dropped (datagram counts vary with resends). */
	const char *totals[] = { "stopped. udp: 100 flows (0 expired)",
				 "dropped: 0 table full, 0 no flow socket, 0 too big, 0 send failed",
				 NULL };
	if (!relay_log_line_with(&fx->relay, totals))
		fail_with_log(fx, "the last log lines do not total the 100 flows");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		UDP_TEST(test_500_clients_get_only_their_own_replies),
		UDP_TEST(test_datagram_sizes_up_to_65507_round_trip_intact),
		UDP_TEST(test_empty_datagram_round_trips),
		UDP_TEST(test_idle_flow_expires_and_comes_back_on_a_new_port),
		UDP_TEST(test_active_flow_does_not_expire),
		UDP_TEST(test_one_way_flow_does_not_expire),
		UDP_TEST(test_max_flows_drops_new_clients_until_flows_expire),
		UDP_TEST(test_ipv6_clients_and_largest_datagram),
		UDP_TEST(test_both_serves_tcp_and_udp_on_one_port),
		UDP_TEST(test_busy_poll_relays_and_sleeps_when_idle),
		UDP_TEST(test_refused_internal_port_does_not_spin),
		UDP_TEST(test_wildcard_replies_from_the_address_sent_to),
		UDP_TEST(test_dual_stack_wildcard_replies_from_the_address_sent_to),
		UDP_TEST(test_range_maps_ports_one_to_one_with_a_flow_each),
		UDP_TEST(test_fd_exhaustion_drops_new_flows_without_spinning),
		UDP_TEST(test_sigterm_with_100_flows_exits_0),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
