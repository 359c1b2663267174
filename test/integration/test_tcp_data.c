/*
 * test_tcp_data.c - bytes through the relay arrive intact: bulk full-duplex,
 * many concurrent connections, half-close, port ranges, IPv6, and bounded
 * buffering under backpressure.
 */
#include "harness.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MiB (1024u * 1024u)

/* ---- 1. bulk, both directions at once ------------------------------------------ */

#define BULK_LEN (64ull * MiB)
#define SEED_C2S 0x1111ull
#define SEED_S2C 0x2222ull

struct duplex_peer {
	int lfd;
	int accept_err;
	size_t not_done;
	struct xfer x;
};

static void *bulk_server_main(void *arg)
{
	struct duplex_peer *p = arg;
	int fd = sock_accept(p->lfd, 20000 * hang_scale());
	if (fd < 0) {
		p->accept_err = errno;
		return NULL;
	}
	xfer_init(&p->x, fd, SEED_S2C, BULK_LEN, SEED_C2S, BULK_LEN);
	p->not_done = xfer_run(&p->x, 1, 90000 * hang_scale());
	xfer_release(&p->x);
	close(fd);
	return NULL;
}

/* 64 MiB each way at once, zero-copy (splice) or copied through userspace. */
static void run_bulk_each_way(struct fx *fx, bool splice)
{
	struct duplex_peer *srv = fx_calloc(fx, sizeof *srv);
	srv->lfd = sock_listen(AF_INET, 0, 16);
	assert_true(srv->lfd >= 0);
	uint16_t port = fx_start_tcp_forward(fx, "bulk", AF_INET, sock_port(srv->lfd), 5.0, 0.0,
					     splice);

	int th = fx_thread_start(fx, bulk_server_main, srv);
	int fd = fx_connect_relay(fx, AF_INET, port);
	struct xfer x;
	double t0 = now_s();
	xfer_init(&x, fd, SEED_C2S, BULK_LEN, SEED_S2C, BULK_LEN);
	size_t not_done = xfer_run(&x, 1, 90000 * hang_scale());
	double secs = now_s() - t0;
	xfer_release(&x);
	close(fd);
	fx_thread_join(fx, th);
	close(srv->lfd);

	if (srv->accept_err)
		fail_with_log(fx, "the server never got the relay's connection: %s",
			      strerror(srv->accept_err));
	if (not_done)
		fail_with_log(fx, "client side: %s", x.what);
	if (srv->not_done)
		fail_with_log(fx, "server side: %s", srv->x.what);
	fprintf(stderr, "bulk (%s): 2 x 64 MiB in %.2f s\n", splice ? "splice" : "copied", secs);
	assert_true(x.rx_done == BULK_LEN && srv->x.rx_done == BULK_LEN);
	assert_true(x.rx_hash == srv->x.tx_hash);
	assert_true(srv->x.rx_hash == x.tx_hash);

	const char *line[] = { "tcp closed", "[bulk]", "67108864 bytes to internal",
			       "67108864 bytes to client", NULL };
	if (!wait_for_log_line(&fx->relay, line, 5000 * hang_scale()))
		fail_with_log(fx, "no 'tcp closed' line with both byte counts of 67108864");
	fx_stop_relay_ok(fx);
}

static void test_bulk_64mib_each_way_at_once(void **state)
{
	run_bulk_each_way(*state, true);
}

static void test_bulk_64mib_each_way_without_splice(void **state)
{
	run_bulk_each_way(*state, false);
}

/* ---- 2. many concurrent connections ------------------------------------------- */

#define MANY 200

static void test_200_concurrent_connections_echo_intact(void **state)
{
	struct fx *fx = *state;
	struct tserver *echo = fx_echo_server(fx, AF_INET);
	uint16_t port = fx_start_tcp_forward(fx, "many", AF_INET, tserver_port(echo), 5.0, 0.0, true);

	struct xfer *xs = fx_calloc(fx, MANY * sizeof *xs);
	uint64_t total = 0;
	for (int i = 0; i < MANY; i++) {
		int fd = fx_connect_relay(fx, AF_INET, port);
		uint64_t len = 32 * 1024 + test_random() % (96 * 1024 + 1);
		uint64_t seed = 0x5000 + (uint64_t)i * 7919;
		xfer_init(&xs[i], fd, seed, len, seed, len);
		total += len;
	}
	size_t not_done = xfer_run(xs, MANY, 60000 * hang_scale());
	char why[300];
	xfer_first_problem(xs, MANY, why, sizeof why);
	int intact = 0;
	for (int i = 0; i < MANY; i++) {
		if (xs[i].done && xs[i].rx_hash == xs[i].tx_hash && xs[i].rx_done == xs[i].tx_len)
			intact++;
		xfer_release(&xs[i]);
		close(xs[i].fd);
	}
	if (not_done)
		fail_with_log(fx, "%zu of %d connections did not complete: %s", not_done, MANY, why);
	assert_int_equal(intact, MANY);
	fprintf(stderr, "many: %d connections, %llu bytes each way\n", MANY,
		(unsigned long long)total);
	assert_int_equal(tserver_accepted(echo), MANY);
	fx_stop_relay_ok(fx);
}

/* ---- 3. half-close ------------------------------------------------------------------ */

/*
 * One side sends and shuts its side down; the other reads to EOF and only
 * then sends its own part, which must still arrive in full. The client
 * half-closes first (a request and FIN, then the reply), or the internal side
 * does (a banner or a download, then the client's upload).
 */
struct half_close {
	struct duplex_peer peer;
	bool internal_first;
	uint64_t up, down;   /* bytes client -> internal, internal -> client */
};

static void *half_close_server_main(void *arg)
{
	struct half_close *hc = arg;
	struct duplex_peer *p = &hc->peer;
	int fd = sock_accept(p->lfd, 20000 * hang_scale());
	if (fd < 0) {
		p->accept_err = errno;
		return NULL;
	}
	xfer_init(&p->x, fd, 0xd0d0, hc->down, 0x0909, hc->up);
	p->x.send_after_eof = !hc->internal_first;
	p->not_done = xfer_run(&p->x, 1, 30000 * hang_scale());
	xfer_release(&p->x);
	close(fd);
	return NULL;
}

static void run_half_close(struct fx *fx, const char *name, bool internal_first, uint64_t up,
			   uint64_t down)
{
	struct half_close *hc = fx_calloc(fx, sizeof *hc);
	struct duplex_peer *srv = &hc->peer;
	hc->internal_first = internal_first;
	hc->up = up;
	hc->down = down;
	srv->lfd = sock_listen(AF_INET, 0, 16);
	assert_true(srv->lfd >= 0);
	uint16_t port = fx_start_tcp_forward(fx, name, AF_INET, sock_port(srv->lfd), 5.0, 0.0, true);
	int th = fx_thread_start(fx, half_close_server_main, hc);

	int fd = fx_connect_relay(fx, AF_INET, port);
	struct xfer x;
	xfer_init(&x, fd, 0x0909, up, 0xd0d0, down);
	x.send_after_eof = internal_first;
	size_t not_done = xfer_run(&x, 1, 30000 * hang_scale());
	xfer_release(&x);
	close(fd);
	fx_thread_join(fx, th);
	close(srv->lfd);

	const char *order = internal_first ? "internal side half-closes first"
					   : "client half-closes first";
	if (srv->accept_err)
		fail_with_log(fx, "the server never got the relay's connection: %s",
			      strerror(srv->accept_err));
	if (srv->not_done)
		fail_with_log(fx, "server side (%s): %s", order, srv->x.what);
	if (not_done)
		fail_with_log(fx, "client side (%s): %s", order, x.what);
	assert_true(x.rx_done == down && x.rx_eof);
	assert_true(srv->x.rx_done == up && srv->x.rx_eof);
	assert_true(x.rx_hash == srv->x.tx_hash);
	assert_true(srv->x.rx_hash == x.tx_hash);

	char to_internal[48], to_client[48], tag[32];
	snprintf(to_internal, sizeof to_internal, " %llu bytes to internal", (unsigned long long)up);
	snprintf(to_client, sizeof to_client, " %llu bytes to client", (unsigned long long)down);
	snprintf(tag, sizeof tag, "[%s]", name);
	const char *line[] = { "tcp closed", tag, to_internal, to_client, NULL };
	if (!wait_for_log_line(&fx->relay, line, 5000 * hang_scale()))
		fail_with_log(fx, "no 'tcp closed' line with %s,%s and%s", tag, to_internal, to_client);
	fx_stop_relay_ok(fx);
	const char *totals[] = { "stopped. tcp: 1 connections", to_internal, to_client, NULL };
	if (!relay_log_line_with(&fx->relay, totals))
		fail_with_log(fx, "the last log lines do not total the session");
}

static void test_half_close_delivers_full_reply(void **state)
{
	run_half_close(*state, "hc", false, 1000, 4 * MiB);
}

static void test_half_close_by_the_internal_side_keeps_the_upload(void **state)
{
	run_half_close(*state, "hci", true, 4 * MiB, 1 * MiB);
}

/* ---- 6. port range ------------------------------------------------------------------ */

#define RANGE 10

/* Binds RANGE consecutive loopback ports (listening); returns the first. */
static uint16_t listen_block(int family, unsigned width, int *fds)
{
	for (int attempt = 0; attempt < 50; attempt++) {
		uint16_t base;
		if (port_block_find(width, family == AF_INET6 ? PORTS_V6 : PORTS_V4, &base) != 0)
			continue;
		unsigned i;
		for (i = 0; i < width; i++) {
			fds[i] = sock_listen(family, (uint16_t)(base + i), 64);
			if (fds[i] < 0)
				break;
		}
		if (i == width)
			return base;
		while (i-- > 0)
			close(fds[i]);
	}
	fail_msg("could not bind %u consecutive ports", width);
	return 0;
}

static void test_port_range_reaches_each_internal_port(void **state)
{
	struct fx *fx = *state;
	int fds[RANGE];
	uint16_t ibase = listen_block(AF_INET, RANGE, fds);
	for (int i = 0; i < RANGE; i++) {
		char greeting[32];
		snprintf(greeting, sizeof greeting, "server %d\n", i);
		fx_server(fx, fds[i], TSERVER_GREETING, greeting);
	}
	char *t = NULL;
	assert_true(asprintf(&t,
			     "tcp = { connect_timeout = 5.0; };\n"
			     "forwards = (\n"
			     "  { name = \"range\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = \"@P0@-@PEND@\"; internal_ip = \"127.0.0.1\";\n"
			     "    internal_port = \"%u-%u\"; }\n"
			     ");\n",
			     (unsigned)ibase, (unsigned)ibase + RANGE - 1) > 0);
	uint16_t base = fx_start_relay(fx, RANGE, PORTS_V4, t);
	free(t);

	for (int i = 0; i < RANGE; i++) {
		int fd = fx_connect_relay(fx, AF_INET, (uint16_t)(base + i));
		char expect[32], got[64];
		snprintf(expect, sizeof expect, "server %d\n", i);
		size_t len = strlen(expect);
		memset(got, 0, sizeof got);
		if (sock_recv_exact(fd, got, len, 10000 * hang_scale()) != 0)
			fail_with_log(fx, "external port %u (index %d): no greeting: %s",
				      base + i, i, strerror(errno));
		if (memcmp(got, expect, len) != 0)
			fail_with_log(fx, "external port %u answered '%.*s', expected 'server %d'",
				      base + i, (int)len - 1, got, i);
		int end = sock_wait_close(fd, 10000 * hang_scale(), NULL);
		close(fd);
		if (end != 0)
			fail_with_log(fx, "external port %u: expected EOF after the greeting, got %d",
				      base + i, end);
	}
	fx_stop_relay_ok(fx);
}

/* ---- 8. IPv6 ------------------------------------------------------------------------ */

static void test_ipv6_forward_echo(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	if (!ipv6_loopback_available()) {
		print_message("::1 is not available; skipping\n");
		skip();
	}
	struct tserver *echo = fx_echo_server(fx, AF_INET6);
	uint16_t port = fx_start_tcp_forward(fx, "v6", AF_INET6, tserver_port(echo), 5.0, 0.0, true);
	int fd = fx_connect_relay(fx, AF_INET6, port);
	struct xfer x;
	xfer_init(&x, fd, 0x6666, 1 * MiB, 0x6666, 1 * MiB);
	size_t not_done = xfer_run(&x, 1, 30000 * hang_scale());
	xfer_release(&x);
	close(fd);
	if (not_done)
		fail_with_log(fx, "IPv6 echo: %s", x.what);
	assert_true(x.rx_hash == x.tx_hash);
	const char *line[] = { "tcp closed", "[v6]", NULL };
	if (!wait_for_log_line(&fx->relay, line, 5000 * hang_scale()))
		fail_with_log(fx, "no 'tcp closed' line for [v6]");
	fx_stop_relay_ok(fx);
}

/* ---- 16. backpressure: bounded buffering ------------------------------------------- */

#define BP_LEN (32ull * MiB)
#define BP_SEED 0x3232ull
#define BP_STALL_MS 2000

struct bp_server {
	int lfd;
	int accept_err;
	int accepted;      /* atomic */
	int reading;       /* atomic */
	size_t not_done;
	struct xfer x;
};

static void *bp_server_main(void *arg)
{
	struct bp_server *p = arg;
	int fd = sock_accept(p->lfd, 20000 * hang_scale());
	if (fd < 0) {
		p->accept_err = errno;
		__atomic_store_n(&p->accepted, -1, __ATOMIC_SEQ_CST);
		return NULL;
	}
	__atomic_store_n(&p->accepted, 1, __ATOMIC_SEQ_CST);
	sleep_ms(BP_STALL_MS); /* the scenario: accept, then read nothing for 2 s */
	__atomic_store_n(&p->reading, 1, __ATOMIC_SEQ_CST);
	xfer_init(&p->x, fd, 0, 0, BP_SEED, BP_LEN);
	p->x.send_after_eof = true;
	p->not_done = xfer_run(&p->x, 1, 60000 * hang_scale());
	xfer_release(&p->x);
	close(fd);
	return NULL;
}

struct bp_client {
	int fd;
	size_t not_done;
	struct xfer x;
};

static void *bp_client_main(void *arg)
{
	struct bp_client *c = arg;
	c->not_done = xfer_run(&c->x, 1, 60000 * hang_scale());
	xfer_release(&c->x);
	return NULL;
}

/*
 * The internal side stops reading: the client must stall well before it has
 * sent everything (kernel socket buffers hold some 20 MiB at most, the relay
 * only its bounded buffer or pipe), and the relay's memory must not grow with
 * what the client offers. Then everything arrives intact.
 */
static void run_backpressure(struct fx *fx, bool splice)
{
	struct bp_server *srv = fx_calloc(fx, sizeof *srv);
	struct bp_client *cli = fx_calloc(fx, sizeof *cli);
	srv->lfd = sock_listen(AF_INET, 0, 16);
	assert_true(srv->lfd >= 0);
	uint16_t port = fx_start_tcp_forward(fx, "bp", AF_INET, sock_port(srv->lfd), 5.0, 0.0,
					     splice);

	long base_rss = relay_rss_kib(&fx->relay);
	assert_true(base_rss > 0);
	int sth = fx_thread_start(fx, bp_server_main, srv);
	cli->fd = fx_connect_relay(fx, AF_INET, port);
	xfer_init(&cli->x, cli->fd, BP_SEED, BP_LEN, 0, 0);
	int cth = fx_thread_start(fx, bp_client_main, cli);

	/* Wait (bounded) for the server to hold the relay's connection. */
	int64_t deadline = now_ms() + 20000 * hang_scale();
	while (__atomic_load_n(&srv->accepted, __ATOMIC_SEQ_CST) == 0 && now_ms() < deadline)
		sleep_ms(5);
	long max_rss = base_rss;
	int samples = 0;
	while (__atomic_load_n(&srv->accepted, __ATOMIC_SEQ_CST) == 1 &&
	       !__atomic_load_n(&srv->reading, __ATOMIC_SEQ_CST) && samples < 100) {
		long rss = relay_rss_kib(&fx->relay);
		if (rss > max_rss)
			max_rss = rss;
		samples++;
		sleep_ms(50);
	}
	uint64_t sent_while_stalled = __atomic_load_n(&cli->x.tx_done, __ATOMIC_RELAXED);

	fx_thread_join(fx, cth);
	fx_thread_join(fx, sth);
	close(cli->fd);
	close(srv->lfd);

	if (srv->accept_err)
		fail_with_log(fx, "the server never got the relay's connection: %s",
			      strerror(srv->accept_err));
	fprintf(stderr, "backpressure: VmRSS %ld KiB before, max %ld KiB while the server stalled "
		"(%d samples); client had sent %llu of %llu bytes\n",
		base_rss, max_rss, samples, (unsigned long long)sent_while_stalled,
		(unsigned long long)BP_LEN);
	if (cli->not_done)
		fail_with_log(fx, "client side: %s", cli->x.what);
	if (srv->not_done)
		fail_with_log(fx, "server side: %s", srv->x.what);
	assert_true(srv->x.rx_done == BP_LEN);
	assert_true(srv->x.rx_hash == cli->x.tx_hash);
	assert_true(samples > 0);
	if (sent_while_stalled >= BP_LEN)
		fail_with_log(fx, "the client sent all %llu bytes while the internal side read "
			      "nothing: the relay buffers without bound", (unsigned long long)BP_LEN);
	if (under_valgrind())
		print_message("under valgrind VmRSS says nothing about the relay's buffers; not asserted\n");
	else if (max_rss - base_rss >= 8 * 1024)
		fail_with_log(fx, "relay VmRSS grew by %ld KiB while the internal side stalled "
			      "(limit 8192 KiB): it buffers without bound", max_rss - base_rss);
	fx_stop_relay_ok(fx);
}

static void test_backpressure_keeps_relay_memory_bounded(void **state)
{
	run_backpressure(*state, true);
}

static void test_backpressure_without_splice_keeps_relay_memory_bounded(void **state)
{
	run_backpressure(*state, false);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		FX_TEST(test_bulk_64mib_each_way_at_once),
		FX_TEST(test_bulk_64mib_each_way_without_splice),
		FX_TEST(test_200_concurrent_connections_echo_intact),
		FX_TEST(test_half_close_delivers_full_reply),
		FX_TEST(test_half_close_by_the_internal_side_keeps_the_upload),
		FX_TEST(test_port_range_reaches_each_internal_port),
		FX_TEST(test_ipv6_forward_echo),
		FX_TEST(test_backpressure_keeps_relay_memory_bounded),
		FX_TEST(test_backpressure_without_splice_keeps_relay_memory_bounded),
	};
	return cmocka_run_group_tests_name("tcp_data", tests, NULL, NULL);
}
