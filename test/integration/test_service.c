/*
 * test_service.c - portrelay as a systemd service: the sd_notify protocol
 * (READY=1, STATUS=, STOPPING=1, RELOADING=1 + MONOTONIC_USEC, WATCHDOG=1)
 * received on a datagram socket the test itself listens on, and the
 * graceful stop: shutdown_timeout, a second signal, refused new connections.
 */
#include "harness.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- a notification socket --------------------------------------------------------- */

struct notify_sink {
	int fd;
	char path[108];           /* filesystem path, or "" for abstract */
	char env[120];            /* what NOTIFY_SOCKET is set to */
};

static void sink_open(struct notify_sink *sink, bool abstract)
{
	memset(sink, 0, sizeof *sink);
	sink->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(sink->fd >= 0);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	socklen_t len;
	if (abstract) {
		snprintf(sink->env, sizeof sink->env, "@portrelay-test-%d-%llu", (int)getpid(),
			 (unsigned long long)test_random());
		addr.sun_path[0] = '\0';
		memcpy(addr.sun_path + 1, sink->env + 1, strlen(sink->env) - 1);
		len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(sink->env));
	} else {
		char dir[] = "/tmp/portrelay-notify-XXXXXX";
		assert_non_null(mkdtemp(dir));
		snprintf(sink->path, sizeof sink->path, "%s/notify", dir);
		snprintf(sink->env, sizeof sink->env, "%s", sink->path);
		snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sink->path);
		len = (socklen_t)sizeof addr;
	}
	assert_int_equal(bind(sink->fd, (struct sockaddr *)&addr, len), 0);
	setenv("NOTIFY_SOCKET", sink->env, 1);
}

static void sink_close(struct notify_sink *sink)
{
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	if (sink->fd >= 0)
		close(sink->fd);
	sink->fd = -1;
	if (sink->path[0]) {
		unlink(sink->path);
		char *slash = strrchr(sink->path, '/');
		*slash = '\0';
		rmdir(sink->path);
	}
}

/* The next datagram into buf (NUL terminated): its length, or -1 at the deadline. */
static ssize_t sink_recv(struct notify_sink *sink, char *buf, size_t cap, int timeout_ms)
{
	struct pollfd pfd = { .fd = sink->fd, .events = POLLIN };
	if (poll(&pfd, 1, timeout_ms) <= 0)
		return -1;
	ssize_t n = recv(sink->fd, buf, cap - 1, 0);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return n;
}

/* Waits for a datagram containing `what`; skips others (WATCHDOG=1, STATUS=). */
static bool sink_wait_for(struct notify_sink *sink, const char *what, char *buf, size_t cap,
			  int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		int64_t left = deadline - now_ms();
		if (left <= 0 || sink_recv(sink, buf, cap, (int)left) < 0)
			return false;
		if (strstr(buf, what) != NULL)
			return true;
	}
}

static uint64_t monotonic_usec(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u;
}

static uint16_t start_echo_forward(struct fx *fx, const char *extra_config)
{
	struct tserver *echo = fx_echo_server(fx, AF_INET);
	char *t = NULL;
	assert_true(asprintf(&t,
			     "%s\n"
			     "forwards = (\n"
			     "  { name = \"svc\"; protocol = \"both\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = @P0@; internal_ip = \"127.0.0.1\"; internal_port = %u; }\n"
			     ");\n",
			     extra_config, tserver_port(echo)) > 0);
	uint16_t port = fx_start_relay(fx, 1, PORTS_V4, t);
	free(t);
	return port;
}

/* ---- notifications ------------------------------------------------------------------ */

static void run_ready_and_stopping(struct fx *fx, bool abstract)
{
	struct notify_sink sink;
	sink_open(&sink, abstract);
	start_echo_forward(fx, "");
	char msg[4096];
	bool ready = sink_wait_for(&sink, "READY=1", msg, sizeof msg, 10000 * hang_scale());
	if (!ready) {
		sink_close(&sink);
		fail_with_log(fx, "no READY=1 on %s", sink.env);
	}
	/* Sent after the ready line was written (the log's reader may lag: wait for it). */
	assert_true(wait_for_log(&fx->relay, "ready:", 5000 * hang_scale()));
	if (strstr(msg, "STATUS=") == NULL) {
		sink_close(&sink);
		fail_with_log(fx, "READY=1 without STATUS=: \"%s\"", msg);
	}
	kill(fx->relay.pid, SIGTERM);
	bool stopping = sink_wait_for(&sink, "STOPPING=1", msg, sizeof msg, 10000 * hang_scale());
	sink_close(&sink);
	if (!stopping)
		fail_with_log(fx, "no STOPPING=1 after SIGTERM");
	int code = relay_wait_exit(&fx->relay, 5000 * hang_scale());
	if (code != 0)
		fail_with_log(fx, "exit status %d after SIGTERM, expected 0", code);
}

static void test_ready_after_ready_line_and_stopping_at_sigterm(void **state)
{
	run_ready_and_stopping(*state, false);
}

static void test_abstract_notify_socket(void **state)
{
	run_ready_and_stopping(*state, true);
}

/*
 * SIGHUP: RELOADING=1 with a MONOTONIC_USEC of now, then READY=1 once the
 * reload ran. The file, rewritten before the signal, adds a forward on
 * 127.0.0.2 (the same port: nothing else binds that address), so the
 * STATUS= of that READY=1 shows whether the reload ran before it was sent;
 * the log says "reload 1: applied:" after "SIGHUP: reloading" (the log's
 * reader may lag READY=1: waited for).
 */
static void test_sighup_sends_reloading_then_ready(void **state)
{
	struct fx *fx = *state;
	struct notify_sink sink;
	sink_open(&sink, true);
	uint16_t port = start_echo_forward(fx, "");
	uint16_t echo_port = tserver_port(fx->servers[fx->nservers - 1]);
	char msg[4096];
	assert_true(sink_wait_for(&sink, "READY=1", msg, sizeof msg, 10000 * hang_scale()));
	if (strstr(msg, "STATUS=relaying 1 forwards: 1 tcp listeners, 1 udp sockets") == NULL) {
		sink_close(&sink);
		fail_with_log(fx, "READY=1 at start-up: \"%s\"", msg);
	}
	char *t = NULL;
	assert_true(asprintf(&t,
			     "forwards = (\n"
			     "  { name = \"svc\"; protocol = \"both\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = %u; internal_ip = \"127.0.0.1\"; internal_port = %u; },\n"
			     "  { name = \"svc2\"; protocol = \"tcp\"; external_address = \"127.0.0.2\";\n"
			     "    external_port = %u; internal_ip = \"127.0.0.1\"; internal_port = %u; }\n"
			     ");\n",
			     port, echo_port, port, echo_port) > 0);
	const char *path = relay_write_config(&fx->relay, t);
	free(t);
	assert_non_null(path);
	uint64_t before = monotonic_usec();
	kill(fx->relay.pid, SIGHUP);
	bool reloading = sink_wait_for(&sink, "RELOADING=1", msg, sizeof msg, 10000 * hang_scale());
	uint64_t after = monotonic_usec();
	if (!reloading) {
		sink_close(&sink);
		fail_with_log(fx, "no RELOADING=1 after SIGHUP");
	}
	const char *stamp = strstr(msg, "MONOTONIC_USEC=");
	if (stamp == NULL) {
		sink_close(&sink);
		fail_with_log(fx, "RELOADING=1 without MONOTONIC_USEC: \"%s\"", msg);
	}
	unsigned long long usec = strtoull(stamp + strlen("MONOTONIC_USEC="), NULL, 10);
	if (usec < before || usec > after) {
		sink_close(&sink);
		fail_with_log(fx, "MONOTONIC_USEC=%llu outside the signal's window [%llu, %llu]",
			      usec, (unsigned long long)before, (unsigned long long)after);
	}
	bool ready = sink_wait_for(&sink, "READY=1", msg, sizeof msg, 10000 * hang_scale());
	sink_close(&sink);
	if (!ready)
		fail_with_log(fx, "no READY=1 after RELOADING=1");
	/* The reload ran between the two: READY=1 describes the new rules. */
	if (strstr(msg, "STATUS=relaying 2 forwards: 2 tcp listeners, 1 udp sockets") == NULL)
		fail_with_log(fx, "READY=1 after the reload: \"%s\"", msg);
	if (!wait_for_log(&fx->relay, "reload 1: applied:", 5000 * hang_scale()))
		fail_with_log(fx, "READY=1 after RELOADING=1 without a \"reload 1: applied:\" line");
	char *log = relay_log_copy(&fx->relay);
	assert_non_null(log);
	const char *hup = strstr(log, "SIGHUP: reloading the configuration");
	const char *applied = strstr(log, "reload 1: applied:");
	bool in_order = hup != NULL && applied != NULL && hup < applied;
	free(log);
	if (!in_order)
		fail_with_log(fx, "\"reload 1: applied:\" not after \"SIGHUP: reloading ...\"");
	const char *const added[] = { "reload 1: applied:", "2 forwards enabled",
				      "1 added, 0 removed, 0 changed, 1 unchanged", NULL };
	if (!relay_log_line_with(&fx->relay, added))
		fail_with_log(fx, "the reload should have added one forward and kept the other");
	/* Still relaying, and through the added forward too. */
	int fd = fx_connect_relay(fx, AF_INET, port);
	if (echo_roundtrip(fd, 10000 * hang_scale()) != 0)
		fail_with_log(fx, "echo after SIGHUP: %s", strerror(errno));
	close(fd);
	fd = sock_connect_from(NULL, "127.0.0.2", port, 10000 * hang_scale());
	if (fd < 0 || echo_roundtrip(fd, 10000 * hang_scale()) != 0)
		fail_with_log(fx, "echo through the added forward on 127.0.0.2: %s", strerror(errno));
	close(fd);
	fx_stop_relay_ok(fx);
}

/* Counts WATCHDOG=1 datagrams during window_ms. */
static unsigned count_watchdogs(struct notify_sink *sink, int window_ms)
{
	unsigned count = 0;
	char msg[4096];
	int64_t deadline = now_ms() + window_ms;
	for (;;) {
		int64_t left = deadline - now_ms();
		if (left <= 0 || sink_recv(sink, msg, sizeof msg, (int)left) < 0)
			return count;
		if (strstr(msg, "WATCHDOG=1") != NULL)
			count++;
	}
}

/* WATCHDOG_USEC=400 ms: a keep-alive every 200 ms; none without it or for another PID. */
static void run_watchdog(struct fx *fx, const char *usec, const char *pid, unsigned min,
			 unsigned max)
{
	struct notify_sink sink;
	sink_open(&sink, false);
	if (usec != NULL)
		setenv("WATCHDOG_USEC", usec, 1);
	if (pid != NULL)
		setenv("WATCHDOG_PID", pid, 1);
	start_echo_forward(fx, "");
	char msg[4096];
	assert_true(sink_wait_for(&sink, "READY=1", msg, sizeof msg, 10000 * hang_scale()));
	unsigned count = count_watchdogs(&sink, 2000);
	sink_close(&sink);
	fprintf(stderr, "WATCHDOG_USEC=%s WATCHDOG_PID=%s: %u WATCHDOG=1 in 2 s\n",
		usec ? usec : "(unset)", pid ? pid : "(unset)", count);
	if (count < min || count > max)
		fail_with_log(fx, "%u WATCHDOG=1 in 2 s, expected %u-%u", count, min, max);
	fx_stop_relay_ok(fx);
}

static void test_watchdog_at_half_the_interval(void **state)
{
	/* 10 expected; generous for a loaded machine. */
	run_watchdog(*state, "400000", NULL, 5, 12);
}

static void test_no_watchdog_without_watchdog_usec(void **state)
{
	run_watchdog(*state, NULL, NULL, 0, 0);
}

static void test_no_watchdog_for_another_pid(void **state)
{
	run_watchdog(*state, "400000", "1", 0, 0);
}

/* A NOTIFY_SOCKET nobody listens on: logged, and the relay carries on. */
static void test_notify_socket_naming_nothing(void **state)
{
	struct fx *fx = *state;
	setenv("NOTIFY_SOCKET", "/nonexistent/portrelay-notify", 1);
	uint16_t port = start_echo_forward(fx, "");
	unsetenv("NOTIFY_SOCKET");
	kill(fx->relay.pid, SIGHUP);
	assert_true(wait_for_log(&fx->relay, "SIGHUP", 5000 * hang_scale()));
	int fd = fx_connect_relay(fx, AF_INET, port);
	if (echo_roundtrip(fd, 10000 * hang_scale()) != 0)
		fail_with_log(fx, "echo: %s", strerror(errno));
	close(fd);
	if (!relay_log_contains(&fx->relay, "cannot notify the service manager"))
		fail_with_log(fx, "the failed notification was not logged");
	fx_stop_relay_ok(fx);
}

/* ---- shutdown_timeout ------------------------------------------------------------------ */

#define CHUNK 65536
#define CHUNKS 64   /* 4 MiB each way */

/* Waits until every worker (workers = 2 in these tests) closed its listeners. */
static void wait_drain_started(struct fx *fx)
{
	int64_t deadline = now_ms() + 10000 * hang_scale();
	while (relay_log_count(&fx->relay, "listeners and udp sockets closed") < 2) {
		if (now_ms() > deadline)
			fail_with_log(fx, "the workers did not stop accepting");
		wait_for_log(&fx->relay, "no such line", 20);
	}
}

/* A transfer in progress at SIGTERM completes, a new connection is refused, then exit 0. */
static void test_transfer_in_progress_completes_after_sigterm(void **state)
{
	struct fx *fx = *state;
	uint16_t port = start_echo_forward(fx, "workers = 2; shutdown_timeout = 60.0;");
	int fd = fx_connect_relay(fx, AF_INET, port);
	unsigned char *out = malloc(CHUNK), *in = malloc(CHUNK);
	assert_non_null(out);
	assert_non_null(in);
	struct gen tx, rx;
	gen_init(&tx, 7);
	gen_init(&rx, 7);
	int64_t t0 = 0;
	for (int i = 0; i < CHUNKS; i++) {
		if (i == CHUNKS / 4) {
			t0 = now_ms();
			kill(fx->relay.pid, SIGTERM);
			wait_drain_started(fx);
			int late = sock_connect(AF_INET, port, 5000 * hang_scale());
			int error = errno;
			if (late >= 0) {
				close(late);
				fail_with_log(fx, "a connection after SIGTERM was accepted");
			}
			if (error != ECONNREFUSED)
				fail_with_log(fx, "a connection after SIGTERM: %s, expected refused",
					      strerror(error));
			if (relay_wait_exit(&fx->relay, 0) >= 0)
				fail_with_log(fx, "exited with a transfer in progress");
		}
		gen_fill(&tx, out, CHUNK);
		if (sock_send_all(fd, out, CHUNK, 10000 * hang_scale()) != 0 ||
		    sock_recv_exact(fd, in, CHUNK, 10000 * hang_scale()) != 0)
			fail_with_log(fx, "chunk %d: %s", i, strerror(errno));
		if (gen_check(&rx, in, CHUNK) != CHUNK)
			fail_with_log(fx, "chunk %d: wrong bytes", i);
	}
	free(out);
	free(in);
	shutdown(fd, SHUT_WR);
	size_t extra = 0;
	int rc = sock_wait_close(fd, 10000 * hang_scale(), &extra);
	close(fd);
	if (rc != 0 || extra != 0)
		fail_with_log(fx, "end of the transfer: rc %d, %zu extra bytes", rc, extra);
	int code = relay_wait_exit(&fx->relay, 10000 * hang_scale());
	int64_t elapsed = now_ms() - t0;
	if (code != 0)
		fail_with_log(fx, "exit status %d after the transfer, expected 0", code);
	if (elapsed > 30000)
		fail_with_log(fx, "exit took %lld ms: it waited for the timeout", (long long)elapsed);
	if (!relay_log_contains(&fx->relay, "every connection has finished"))
		fail_with_log(fx, "no log line about the connections finishing");
}

/* A session that never ends is cut at shutdown_timeout; exit 0. */
static void test_open_session_cut_at_shutdown_timeout(void **state)
{
	struct fx *fx = *state;
	uint16_t port = start_echo_forward(fx, "workers = 2; shutdown_timeout = 1.5;");
	int fd = fx_connect_relay(fx, AF_INET, port);
	if (echo_roundtrip(fd, 10000 * hang_scale()) != 0)
		fail_with_log(fx, "echo: %s", strerror(errno));
	int64_t t0 = now_ms();
	kill(fx->relay.pid, SIGTERM);
	int code = relay_wait_exit(&fx->relay, 1500 + 5000 * hang_scale());
	int64_t elapsed = now_ms() - t0;
	fprintf(stderr, "exit %d after %lld ms\n", code, (long long)elapsed);
	if (code != 0)
		fail_with_log(fx, "exit status %d, expected 0 within the timeout", code);
	if (elapsed < 1300)
		fail_with_log(fx, "exited after %lld ms, before shutdown_timeout", (long long)elapsed);
	int rc = sock_wait_close(fd, 5000 * hang_scale(), NULL);
	close(fd);
	if (rc != 0 && rc != ECONNRESET)
		fail_with_log(fx, "the open connection was not closed");
	if (!relay_log_contains(&fx->relay, "closing 1 connection still open"))
		fail_with_log(fx, "the cut connection was not logged");
}

/* A second SIGTERM exits at once, still with status 0. */
static void test_second_sigterm_exits_at_once(void **state)
{
	struct fx *fx = *state;
	uint16_t port = start_echo_forward(fx, "workers = 2; shutdown_timeout = 60.0;");
	int fd = fx_connect_relay(fx, AF_INET, port);
	if (echo_roundtrip(fd, 10000 * hang_scale()) != 0)
		fail_with_log(fx, "echo: %s", strerror(errno));
	kill(fx->relay.pid, SIGTERM);
	wait_drain_started(fx);
	int64_t t0 = now_ms();
	kill(fx->relay.pid, SIGTERM);
	int code = relay_wait_exit(&fx->relay, 5000 * hang_scale());
	int64_t elapsed = now_ms() - t0;
	close(fd);
	if (code != 0)
		fail_with_log(fx, "exit status %d after a second SIGTERM, expected 0 at once", code);
	fprintf(stderr, "second SIGTERM: exit after %lld ms\n", (long long)elapsed);
}

/* Without connections the default shutdown_timeout costs nothing. */
static void test_sigterm_without_connections_exits_at_once(void **state)
{
	struct fx *fx = *state;
	start_echo_forward(fx, "workers = 2;");
	int64_t t0 = now_ms();
	kill(fx->relay.pid, SIGTERM);
	int code = relay_wait_exit(&fx->relay, 5000 * hang_scale());
	int64_t elapsed = now_ms() - t0;
	if (code != 0)
		fail_with_log(fx, "exit status %d, expected 0", code);
	if (elapsed > 1000 * hang_scale())
		fail_with_log(fx, "exit took %lld ms with no connection open", (long long)elapsed);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		FX_TEST(test_ready_after_ready_line_and_stopping_at_sigterm),
		FX_TEST(test_abstract_notify_socket),
		FX_TEST(test_sighup_sends_reloading_then_ready),
		FX_TEST(test_watchdog_at_half_the_interval),
		FX_TEST(test_no_watchdog_without_watchdog_usec),
		FX_TEST(test_no_watchdog_for_another_pid),
		FX_TEST(test_notify_socket_naming_nothing),
		FX_TEST(test_transfer_in_progress_completes_after_sigterm),
		FX_TEST(test_open_session_cut_at_shutdown_timeout),
		FX_TEST(test_second_sigterm_exits_at_once),
		FX_TEST(test_sigterm_without_connections_exits_at_once),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
