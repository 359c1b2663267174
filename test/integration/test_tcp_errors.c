/*
 * test_tcp_errors.c - how TCP sessions end: refused and timed-out connects,
 * resets in both directions, idle timeout, no leaked descriptors, and
 * running out of descriptors without spinning.
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * How fd was closed by the relay was a reset: recv said so, or (when the
 * reset came while sock_connect was still checking the handshake, which
 * takes the error away) the socket is CLOSED, where a FIN would have left it
 * in CLOSE_WAIT. Call before closing fd.
 */
static bool was_reset(int fd, int rc)
{
	return rc == ECONNRESET || (rc == 0 && sock_tcp_state(fd) == TCP_CLOSE);
}

static const char *close_text(int rc)
{
	static __thread char buf[64];
	if (rc == 0)
		return "EOF";
	if (rc < 0)
		return "still open (timed out)";
	snprintf(buf, sizeof buf, "%s", strerror(rc));
	return buf;
}

static void client_addr_text(int fd, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	snprintf(buf, len, "127.0.0.1:%u", ntohs(((struct sockaddr_in *)&ss)->sin_port));
}

/* ---- 4. refused -------------------------------------------------------------------- */

static void test_connect_refused_closes_client_quickly(void **state)
{
	struct fx *fx = *state;
	uint16_t dead = dead_port(AF_INET);
	assert_true(dead != 0);
	uint16_t port = fx_start_tcp_forward(fx, "dead", AF_INET, dead, 5.0, 0.0, true);

	int fd = fx_connect_relay(fx, AF_INET, port);
	char client[64];
	client_addr_text(fd, client, sizeof client);
	int64_t t0 = now_ms();
	int rc = sock_wait_close(fd, 5000 * hang_scale(), NULL);
	int64_t elapsed = now_ms() - t0;
	bool reset = was_reset(fd, rc);
	close(fd);
	if (!reset)
		fail_with_log(fx, "client connection to a refused target: %s after %lld ms, "
			      "expected a reset", close_text(rc), (long long)elapsed);
	fprintf(stderr, "refused: client saw %s after %lld ms\n", close_text(rc), (long long)elapsed);
	if (elapsed >= 1000 * hang_scale())
		fail_with_log(fx, "client closed only after %lld ms (limit 1000)", (long long)elapsed);
	const char *line[] = { "tcp closed", "[dead]", client, "connect refused", NULL };
	if (!wait_for_log_line(&fx->relay, line, 5000 * hang_scale()))
		fail_with_log(fx, "no 'tcp closed' line with [dead], %s and 'connect refused'", client);
	fx_stop_relay_ok(fx);
}

/* ---- 5. connect timeout ------------------------------------------------------------ */

static void test_connect_timeout_closes_client_after_timeout(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	struct hang_target *hang = fx_hang_target(fx);
	uint16_t port = fx_start_tcp_forward(fx, "slow", AF_INET, hang->port, 1.0, 0.0, true);

	int fd = fx_connect_relay(fx, AF_INET, port);
	int64_t t0 = now_ms();
	int rc = sock_wait_close(fd, 10000 * hang_scale(), NULL);
	int64_t elapsed = now_ms() - t0;
	bool reset = was_reset(fd, rc);
	close(fd);
	fprintf(stderr, "connect timeout: client saw %s after %lld ms\n", close_text(rc),
		(long long)elapsed);
	if (!reset)
		fail_with_log(fx, "client connection to a silent target: %s after %lld ms, "
			      "expected a reset", close_text(rc), (long long)elapsed);
	if (elapsed < 800)
		fail_with_log(fx, "closed after %lld ms, before connect_timeout = 1.0 s",
			      (long long)elapsed);
	if (elapsed > 4000 * hang_scale())
		fail_with_log(fx, "closed only after %lld ms (connect_timeout = 1.0 s, limit 4 s)",
			      (long long)elapsed);
	const char *line[] = { "tcp closed", "[slow]", "connect timeout", NULL };
	if (!wait_for_log_line(&fx->relay, line, 5000 * hang_scale()))
		fail_with_log(fx, "no 'tcp closed' line with [slow] and 'connect timeout'");
	fx_stop_relay_ok(fx);
}

/* ---- 12. no descriptor leaks -------------------------------------------------------- */

static void dump_fds(struct relay *r)
{
	char dir[64];
	snprintf(dir, sizeof dir, "/proc/%d/fd", (int)r->pid);
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	fprintf(stderr, "relay descriptors:\n");
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char path[384], target[256];
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		ssize_t n = readlink(path, target, sizeof target - 1);
		target[n > 0 ? n : 0] = '\0';
		fprintf(stderr, "  %s -> %s\n", e->d_name, target);
	}
	closedir(d);
}

#define LEAK_NORMAL 50
#define LEAK_CLIENT_RESET 20
#define LEAK_SERVER_RESET 20
#define LEAK_REFUSED 20
#define LEAK_TIMEOUT 5

static void wait_all_closed(struct fx *fx, int *fds, int n, const char *what, int timeout_ms)
{
	for (int i = 0; i < n; i++) {
		int rc = sock_wait_close(fds[i], timeout_ms, NULL);
		close(fds[i]);
		if (rc != 0 && rc != ECONNRESET)
			fail_with_log(fx, "%s connection %d: %s, expected EOF or reset", what, i,
				      close_text(rc));
	}
}

static void test_no_fd_leak_after_every_kind_of_close(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	struct tserver *echo = fx_echo_server(fx, AF_INET);
	int rlfd = sock_listen(AF_INET, 0, 256);
	assert_true(rlfd >= 0);
	struct tserver *resetter = fx_server(fx, rlfd, TSERVER_RESET, NULL);
	uint16_t dead = dead_port(AF_INET);
	struct hang_target *hang = fx_hang_target(fx);

	char *t = NULL;
	assert_true(asprintf(&t,
			     "tcp = { connect_timeout = 1.0; idle_timeout = 0.0; };\n"
			     "forwards = (\n"
			     "  { name = \"ok\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = @P0@; internal_ip = \"127.0.0.1\"; internal_port = %u; },\n"
			     "  { name = \"rst\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = @P1@; internal_ip = \"127.0.0.1\"; internal_port = %u; },\n"
			     "  { name = \"dead\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = @P2@; internal_ip = \"127.0.0.1\"; internal_port = %u; },\n"
			     "  { name = \"slow\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = @P3@; internal_ip = \"127.0.0.1\"; internal_port = %u; }\n"
			     ");\n",
			     tserver_port(echo), tserver_port(resetter), dead, hang->port) > 0);
	uint16_t base = fx_start_relay(fx, 4, PORTS_V4, t);
	free(t);

	int baseline = relay_fd_count(&fx->relay);
	assert_true(baseline > 0);
	int fds[LEAK_NORMAL];

	/* Normal close, with data both ways. */
	struct xfer *xs = fx_calloc(fx, LEAK_NORMAL * sizeof *xs);
	for (int i = 0; i < LEAK_NORMAL; i++) {
		int fd = fx_connect_relay(fx, AF_INET, base);
		uint64_t len = 1000 + test_random() % 16000;
		xfer_init(&xs[i], fd, 0x100 + (uint64_t)i, len, 0x100 + (uint64_t)i, len);
	}
	size_t not_done = xfer_run(xs, LEAK_NORMAL, 30000 * hang_scale());
	char why[300];
	xfer_first_problem(xs, LEAK_NORMAL, why, sizeof why);
	for (int i = 0; i < LEAK_NORMAL; i++) {
		xfer_release(&xs[i]);
		close(xs[i].fd);
	}
	if (not_done)
		fail_with_log(fx, "normal connections: %s", why);

	/* Client resets, after the session is relaying. */
	for (int i = 0; i < LEAK_CLIENT_RESET; i++) {
		fds[i] = fx_connect_relay(fx, AF_INET, base);
		if (echo_roundtrip(fds[i], 10000 * hang_scale()) != 0)
			fail_with_log(fx, "echo before the client reset: %s", strerror(errno));
	}
	for (int i = 0; i < LEAK_CLIENT_RESET; i++)
		sock_close_reset(fds[i]);

	/* Server resets. */
	for (int i = 0; i < LEAK_SERVER_RESET; i++) {
		fds[i] = fx_connect_relay(fx, AF_INET, (uint16_t)(base + 1));
		if (sock_send_all(fds[i], "x", 1, 5000) != 0)
			fail_with_log(fx, "send to the resetting server: %s", strerror(errno));
	}
	wait_all_closed(fx, fds, LEAK_SERVER_RESET, "server-reset", 10000 * hang_scale());

	/* Refused. */
	for (int i = 0; i < LEAK_REFUSED; i++)
		fds[i] = fx_connect_relay(fx, AF_INET, (uint16_t)(base + 2));
	wait_all_closed(fx, fds, LEAK_REFUSED, "refused", 10000 * hang_scale());

	/* Timed out. */
	for (int i = 0; i < LEAK_TIMEOUT; i++)
		fds[i] = fx_connect_relay(fx, AF_INET, (uint16_t)(base + 3));
	wait_all_closed(fx, fds, LEAK_TIMEOUT, "timed-out", 10000 * hang_scale());

	/* Every session has ended: the descriptor count must come back exactly. */
	int64_t deadline = now_ms() + 10000 * hang_scale();
	int count = relay_fd_count(&fx->relay);
	while (count != baseline && now_ms() < deadline) {
		sleep_ms(20);
		count = relay_fd_count(&fx->relay);
	}
	if (count != baseline) {
		dump_fds(&fx->relay);
		fail_with_log(fx, "relay holds %d descriptors, %d at start: %d leaked", count,
			      baseline, count - baseline);
	}
	const unsigned total = LEAK_NORMAL + LEAK_CLIENT_RESET + LEAK_SERVER_RESET +
			       LEAK_REFUSED + LEAK_TIMEOUT;
	deadline = now_ms() + 5000 * hang_scale();
	while (relay_log_count(&fx->relay, "tcp closed") < total && now_ms() < deadline)
		sleep_ms(20);
	unsigned closed_lines = relay_log_count(&fx->relay, "tcp closed");
	if (closed_lines != total)
		fail_with_log(fx, "%u 'tcp closed' lines for %u connections", closed_lines, total);
	fx_stop_relay_ok(fx);
}

/* ---- 13. reset propagation ---------------------------------------------------------- */

struct reading_server {
	int lfd;
	int accept_err;
	int got_data;        /* atomic */
	int outcome;         /* 0 EOF, errno, -1 timeout */
	int64_t outcome_ms;
	uint64_t bytes;
};

static void *reading_server_main(void *arg)
{
	struct reading_server *s = arg;
	s->outcome = -1;
	int fd = sock_accept(s->lfd, 20000 * hang_scale());
	if (fd < 0) {
		s->accept_err = errno;
		return NULL;
	}
	char buf[65536];
	int64_t deadline = now_ms() + 20000 * hang_scale();
	for (;;) {
		ssize_t r = recv(fd, buf, sizeof buf, 0);
		if (r > 0) {
			s->bytes += (uint64_t)r;
			__atomic_store_n(&s->got_data, 1, __ATOMIC_SEQ_CST);
			continue;
		}
		if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
			s->outcome = r == 0 ? 0 : errno;
			s->outcome_ms = now_ms();
			break;
		}
		int left = (int)(deadline - now_ms());
		if (left <= 0)
			break;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, left);
	}
	close(fd);
	return NULL;
}

static void test_client_reset_propagates_to_server(void **state)
{
	struct fx *fx = *state;
	struct reading_server *srv = fx_calloc(fx, sizeof *srv);
	srv->lfd = sock_listen(AF_INET, 0, 16);
	assert_true(srv->lfd >= 0);
	uint16_t port = fx_start_tcp_forward(fx, "rc", AF_INET, sock_port(srv->lfd), 5.0, 0.0, true);
	int th = fx_thread_start(fx, reading_server_main, srv);

	int fd = fx_connect_relay(fx, AF_INET, port);
	static char chunk[256 * 1024];
	memset(chunk, 'r', sizeof chunk);
	if (sock_send_all(fd, chunk, 64 * 1024, 10000 * hang_scale()) != 0)
		fail_with_log(fx, "send: %s", strerror(errno));
	int64_t deadline = now_ms() + 10000 * hang_scale();
	while (!__atomic_load_n(&srv->got_data, __ATOMIC_SEQ_CST) && now_ms() < deadline)
		sleep_ms(2);
	if (!__atomic_load_n(&srv->got_data, __ATOMIC_SEQ_CST))
		fail_with_log(fx, "no data reached the server");
	/* More in flight, then the reset. */
	ssize_t w = send(fd, chunk, sizeof chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)w;
	int64_t t_reset = now_ms();
	sock_close_reset(fd);
	fx_thread_join(fx, th);
	close(srv->lfd);

	if (srv->accept_err)
		fail_with_log(fx, "the server never got the relay's connection: %s",
			      strerror(srv->accept_err));
	if (srv->outcome != ECONNRESET)
		fail_with_log(fx, "after the client's reset the server saw %s, expected a reset",
			      close_text(srv->outcome));
	int64_t delay = srv->outcome_ms - t_reset;
	fprintf(stderr, "client reset: server saw %s after %lld ms (%llu bytes)\n",
		close_text(srv->outcome), (long long)delay, (unsigned long long)srv->bytes);
	if (delay > 2000 * hang_scale())
		fail_with_log(fx, "the server learnt of the reset only after %lld ms", (long long)delay);
	const char *line[] = { "tcp closed", "[rc]", "reset by client", NULL };
	if (!wait_for_log_line(&fx->relay, line, 5000 * hang_scale()))
		fail_with_log(fx, "no 'tcp closed' line with [rc] and 'reset by client'");
	fx_stop_relay_ok(fx);
}

/*
 * The client sends its request and FIN, then resets while the server is
 * still thinking. The relay no longer reads from the client, but must still
 * notice the reset and pass it on instead of holding the session until the
 * server answers.
 */
static void test_reset_after_half_close_reaches_a_silent_server(void **state)
{
	struct fx *fx = *state;
	int lfd = sock_listen(AF_INET, 0, 16);
	assert_true(lfd >= 0);
	uint16_t port = fx_start_tcp_forward(fx, "hr", AF_INET, sock_port(lfd), 5.0, 0.0, true);
	int fd = fx_connect_relay(fx, AF_INET, port);
	int server = sock_accept(lfd, 10000 * hang_scale());
	assert_true(server >= 0);
	char c = 0;
	assert_int_equal(sock_send_all(fd, "r", 1, 5000 * hang_scale()), 0);
	assert_int_equal(shutdown(fd, SHUT_WR), 0);
	assert_int_equal(sock_recv_exact(server, &c, 1, 5000 * hang_scale()), 0);
	/* The request's end reaches the server; the server stays silent. */
	size_t extra = 0;
	assert_int_equal(sock_wait_close(server, 5000 * hang_scale(), &extra), 0);

	int64_t t_reset = now_ms();
	sock_close_reset(fd);
	/*
	 * Without sending anything (that would itself reveal the dead client),
	 * the server's connection must be reset: it leaves CLOSE_WAIT for CLOSE.
	 */
	int tcp_state = sock_tcp_state(server);
	while (tcp_state != TCP_CLOSE && now_ms() - t_reset < 3000 * hang_scale()) {
		sleep_ms(10);
		tcp_state = sock_tcp_state(server);
	}
	close(server);
	close(lfd);
	if (tcp_state != TCP_CLOSE)
		fail_with_log(fx, "3 s after the client's reset the silent server's connection is "
			      "still open (TCP state %d)", tcp_state);
	fprintf(stderr, "reset after half-close: server's connection reset after %lld ms\n",
		(long long)(now_ms() - t_reset));
	const char *line[] = { "tcp closed", "[hr]", "reset by client", NULL };
	if (!wait_for_log_line(&fx->relay, line, 5000 * hang_scale()))
		fail_with_log(fx, "no 'tcp closed' line with [hr] and 'reset by client'");
	fx_stop_relay_ok(fx);
}

static void test_server_reset_propagates_to_client(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	int lfd = sock_listen(AF_INET, 0, 16);
	assert_true(lfd >= 0);
	struct tserver *resetter = fx_server(fx, lfd, TSERVER_RESET, NULL);
	uint16_t port = fx_start_tcp_forward(fx, "rs", AF_INET, tserver_port(resetter), 5.0, 0.0, true);

	int fd = fx_connect_relay(fx, AF_INET, port);
	if (sock_send_all(fd, "q", 1, 5000) != 0)
		fail_with_log(fx, "send: %s", strerror(errno));
	int64_t t0 = now_ms();
	int rc = sock_wait_close(fd, 10000 * hang_scale(), NULL);
	int64_t elapsed = now_ms() - t0;
	close(fd);
	fprintf(stderr, "server reset: client saw %s after %lld ms\n", close_text(rc),
		(long long)elapsed);
	if (rc != ECONNRESET)
		fail_with_log(fx, "the internal host reset the connection; the client saw %s, "
			      "expected ECONNRESET", close_text(rc));
	if (elapsed > 2000 * hang_scale())
		fail_with_log(fx, "the reset reached the client only after %lld ms", (long long)elapsed);
	const char *line[] = { "tcp closed", "[rs]", "reset by internal", NULL };
	if (!wait_for_log_line(&fx->relay, line, 5000 * hang_scale()))
		fail_with_log(fx, "no 'tcp closed' line with [rs] and 'reset by internal'");
	fx_stop_relay_ok(fx);
}

/* ---- 14. idle timeout ----------------------------------------------------------------- */

/*
 * Traffic in one direction only is traffic: a client that sends a byte every
 * 300 ms to an internal side that never answers keeps its connection past
 * idle_timeout = 1 s, and every byte arrives.
 */
static void test_one_way_traffic_is_not_idle(void **state)
{
	struct fx *fx = *state;
	int lfd = sock_listen(AF_INET, 0, 16);
	assert_true(lfd >= 0);
	uint16_t port = fx_start_tcp_forward(fx, "oneway", AF_INET, sock_port(lfd), 5.0, 1.0, true);
	int fd = fx_connect_relay(fx, AF_INET, port);
	int internal = sock_accept(lfd, 10000 * hang_scale());
	if (internal < 0)
		fail_with_log(fx, "the relay did not connect to the internal side: %s", strerror(errno));

	int64_t start = now_ms();
	int sent = 0;
	while (now_ms() - start < 2500) {
		if (sock_send_all(fd, "x", 1, 5000 * hang_scale()) != 0)
			fail_with_log(fx, "send after %lld ms: %s", (long long)(now_ms() - start),
				      strerror(errno));
		sent++;
		sleep_ms(300);
	}
	char got[64];
	if (sock_recv_exact(internal, got, (size_t)sent, 5000 * hang_scale()) != 0)
		fail_with_log(fx, "the internal side did not get the %d bytes: %s", sent,
			      strerror(errno));
	if (relay_log_contains(&fx->relay, "idle timeout"))
		fail_with_log(fx, "a connection sending every 300 ms was closed as idle");
	close(fd);
	close(internal);
	close(lfd);
	fx_stop_relay_ok(fx);
}

static void test_idle_timeout_closes_only_idle_connections(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	struct tserver *echo = fx_echo_server(fx, AF_INET);
	uint16_t port = fx_start_tcp_forward(fx, "idle", AF_INET, tserver_port(echo), 5.0, 1.0, true);

	/* An idle connection: closed by the relay after about a second. */
	int fd = fx_connect_relay(fx, AF_INET, port);
	if (echo_roundtrip(fd, 10000 * hang_scale()) != 0)
		fail_with_log(fx, "echo: %s", strerror(errno));
	int64_t t0 = now_ms();
	int rc = sock_wait_close(fd, 10000 * hang_scale(), NULL);
	int64_t elapsed = now_ms() - t0;
	close(fd);
	fprintf(stderr, "idle: client saw %s after %lld ms idle\n", close_text(rc),
		(long long)elapsed);
	if (rc != 0 && rc != ECONNRESET)
		fail_with_log(fx, "idle connection: %s", close_text(rc));
	if (elapsed < 900)
		fail_with_log(fx, "idle connection closed after %lld ms, idle_timeout is 1.0 s",
			      (long long)elapsed);
	if (elapsed > 4000 * hang_scale())
		fail_with_log(fx, "idle connection closed only after %lld ms (limit 4 s)",
			      (long long)elapsed);
	const char *line[] = { "tcp closed", "[idle]", "idle timeout", NULL };
	if (!wait_for_log_line(&fx->relay, line, 5000 * hang_scale()))
		fail_with_log(fx, "no 'tcp closed' line with [idle] and 'idle timeout'");

	/* A connection with a byte every 300 ms for 2.5 s stays open. */
	fd = fx_connect_relay(fx, AF_INET, port);
	int64_t start = now_ms();
	int rounds = 0;
	while (now_ms() - start < 2500) {
		if (echo_roundtrip(fd, 5000 * hang_scale()) != 0)
			fail_with_log(fx, "active connection broke after %lld ms (round %d): %s",
				      (long long)(now_ms() - start), rounds, strerror(errno));
		rounds++;
		sleep_ms(300);
	}
	if (echo_roundtrip(fd, 5000 * hang_scale()) != 0)
		fail_with_log(fx, "active connection closed after %lld ms: %s",
			      (long long)(now_ms() - start), strerror(errno));
	close(fd);
	assert_int_equal(relay_log_count(&fx->relay, "idle timeout"), 1);
	fx_stop_relay_ok(fx);
}

/* ---- 15. running out of descriptors ---------------------------------------------------- */

#define EXH_NOFILE 64
#define EXH_MAX_CONNS 200
#define EXH_BACKLOG_CONNS 40

static void test_fd_exhaustion_pauses_accept_and_recovers(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	struct tserver *echo = fx_echo_server(fx, AF_INET);
	fx->nofile = EXH_NOFILE;
	/*
	 * An explicit max_connections beyond what the descriptors allow: the
	 * automatic one would stop accepting before they ran out (tested in
	 * test_max_connections_waits_in_backlog), and this test is about what
	 * happens when they do.
	 */
	char *t = NULL;
	assert_true(asprintf(&t, "max_connections = 1000;\n"
			     "tcp = { connect_timeout = 5.0; idle_timeout = 0.0; splice = true; };\n"
			     "forwards = (\n"
			     "  { name = \"fdx\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = @P0@; internal_ip = \"127.0.0.1\"; internal_port = %u; }\n"
			     ");\n", tserver_port(echo)) > 0);
	uint16_t port = fx_start_relay(fx, 1, PORTS_V4, t);
	free(t);

	int *held = fx_calloc(fx, EXH_MAX_CONNS * sizeof *held);
	int nheld = 0, relayed = 0;
	bool exhausted = false;
	const char *oofd = "out of file descriptors";

	while (nheld < EXH_MAX_CONNS && !exhausted) {
		int fd = sock_connect(AF_INET, port, 5000 * hang_scale());
		if (fd < 0) {
			if (relay_log_contains(&fx->relay, oofd)) {
				exhausted = true;
				break;
			}
			fail_with_log(fx, "connect %d: %s", nheld, strerror(errno));
		}
		held[nheld++] = fd;
		/* A send can fail: a relay out of descriptors may accept and drop it. */
		ssize_t w = send(fd, "e", 1, MSG_NOSIGNAL);
		(void)w;
		/* Either it is relayed (the echo comes back) or the relay ran out. */
		int64_t deadline = now_ms() + 10000 * hang_scale();
		for (;;) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			if (poll(&p, 1, 20) > 0) {
				char c;
				ssize_t r = recv(fd, &c, 1, 0);
				if (r == 1)
					relayed++;
				if (r == 1 || r == 0 || (errno != EAGAIN && errno != EINTR))
					break;
			}
			if (relay_log_contains(&fx->relay, oofd)) {
				exhausted = true;
				break;
			}
			if (now_ms() > deadline)
				fail_with_log(fx, "connection %d: neither relayed nor '%s' logged",
					      nheld - 1, oofd);
		}
		if (relay_log_contains(&fx->relay, oofd))
			exhausted = true;
	}
	if (!exhausted)
		fail_with_log(fx, "%d connections with RLIMIT_NOFILE %d and no '%s'", nheld,
			      EXH_NOFILE, oofd);
	fprintf(stderr, "fd exhaustion: %d connections relayed before the relay ran out\n", relayed);
	assert_true(relayed >= 5);

	/*
	 * More that wait in the backlog while the relay is out of descriptors:
	 * enough that the listener stays readable through the whole window
	 * below even if the relay accepts and drops one per retry.
	 */
	for (int i = 0; i < EXH_BACKLOG_CONNS && nheld < EXH_MAX_CONNS; i++) {
		int fd = sock_connect(AF_INET, port, 5000 * hang_scale());
		if (fd < 0)
			break;
		held[nheld++] = fd;
		ssize_t w = send(fd, "p", 1, MSG_NOSIGNAL);
		(void)w;
	}

	/* While exhausted the relay must not spin on accept. */
	double cpu0 = relay_cpu_seconds(&fx->relay);
	sleep_ms(2000);
	double cpu1 = relay_cpu_seconds(&fx->relay);
	assert_true(cpu0 >= 0 && cpu1 >= 0);
	fprintf(stderr, "fd exhaustion: relay used %.3f s of CPU in 2 s\n", cpu1 - cpu0);
	/* Judged at the end, so that one run also reports on recovery. */
	char problems[512] = "";
	double cpu_limit = under_valgrind() ? 1.0 : 0.3;
	if (cpu1 - cpu0 >= cpu_limit)
		snprintf(problems, sizeof problems,
			 "relay used %.2f s of CPU in 2 s while out of descriptors (accept spin?); ",
			 cpu1 - cpu0);
	unsigned episodes = relay_log_count(&fx->relay, oofd);
	if (episodes != 1) {
		size_t used = strlen(problems);
		snprintf(problems + used, sizeof problems - used,
			 "'%s' logged %u times in one episode (2 s while exhausted), expected once; ",
			 oofd, episodes);
	}

	/* A connection opened before exhaustion still relays. */
	if (echo_roundtrip(held[0], 5000 * hang_scale()) != 0)
		fail_with_log(fx, "the first connection no longer relays while exhausted: %s",
			      strerror(errno));

	for (int i = 0; i < nheld; i++)
		close(held[i]);
	nheld = 0;

	/* Descriptors are free again: a new connection works (bounded retries). */
	int64_t deadline = now_ms() + 20000 * hang_scale();
	bool recovered = false;
	int attempts = 0;
	while (!recovered && now_ms() < deadline && attempts < 50) {
		attempts++;
		int fd = sock_connect(AF_INET, port, 5000 * hang_scale());
		if (fd < 0) {
			sleep_ms(100);
			continue;
		}
		if (echo_roundtrip(fd, 5000 * hang_scale()) == 0)
			recovered = true;
		close(fd);
		if (!recovered)
			sleep_ms(100);
	}
	if (!recovered)
		fail_with_log(fx, "no connection relayed after the descriptors were released "
			      "(%d attempts)", attempts);
	fprintf(stderr, "fd exhaustion: recovered after %d attempt(s)\n", attempts);
	if (problems[0])
		fail_with_log(fx, "%s", problems);
	fx_stop_relay_ok(fx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		FX_TEST(test_connect_refused_closes_client_quickly),
		FX_TEST(test_connect_timeout_closes_client_after_timeout),
		FX_TEST(test_no_fd_leak_after_every_kind_of_close),
		FX_TEST(test_client_reset_propagates_to_server),
		FX_TEST(test_server_reset_propagates_to_client),
		FX_TEST(test_reset_after_half_close_reaches_a_silent_server),
		FX_TEST(test_idle_timeout_closes_only_idle_connections),
		FX_TEST(test_one_way_traffic_is_not_idle),
		FX_TEST(test_fd_exhaustion_pauses_accept_and_recovers),
	};
	return cmocka_run_group_tests_name("tcp_errors", tests, NULL, NULL);
}
