/*
 * test_big_range.c - a 10,000-port range forward: the relay opens 10,000
 * listeners, becomes ready in bounded time, and maps both ends of the range.
 * Runs alone (is_parallel: false): it uses half the machine's fd budget.
 */
#include "harness.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WIDTH 10000u

static void expect_greeting(struct fx *fx, uint16_t port, const char *expect)
{
	int fd = sock_connect(AF_INET, port, 10000 * hang_scale());
	if (fd < 0)
		fail_with_log(fx, "connect to external port %u: %s", port, strerror(errno));
	char got[32] = { 0 };
	size_t len = strlen(expect);
	if (sock_recv_exact(fd, got, len, 10000 * hang_scale()) != 0)
		fail_with_log(fx, "external port %u: no greeting: %s", port, strerror(errno));
	close(fd);
	if (memcmp(got, expect, len) != 0)
		fail_with_log(fx, "external port %u answered '%s', expected '%s'", port, got, expect);
}

static void test_10000_port_range_ready_and_maps_both_ends(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();

	/* Internal range: only its first and last ports have servers. */
	int first = -1, last = -1;
	uint16_t ibase = 0;
	for (int attempt = 0; attempt < 100 && (first < 0 || last < 0); attempt++) {
		if (first >= 0)
			close(first);
		if (last >= 0)
			close(last);
		ibase = random_port(33000, (uint16_t)(65535 - WIDTH));
		first = sock_listen(AF_INET, ibase, 64);
		last = sock_listen(AF_INET, (uint16_t)(ibase + WIDTH - 1), 64);
	}
	assert_true(first >= 0 && last >= 0);
	fx_server(fx, first, TSERVER_GREETING, "first\n");
	fx_server(fx, last, TSERVER_GREETING, "last\n");

	char *t = NULL;
	assert_true(asprintf(&t,
			     "tcp = { connect_timeout = 5.0; };\n"
			     "forwards = (\n"
			     "  { name = \"big\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = \"@P0@-@PEND@\"; internal_ip = \"127.0.0.1\";\n"
			     "    internal_port = \"%u-%u\"; }\n"
			     ");\n",
			     (unsigned)ibase, (unsigned)ibase + WIDTH - 1) > 0);
	uint16_t base = fx_start_relay(fx, WIDTH, PORTS_V4, t);
	free(t);
	int64_t startup = now_ms() - fx->relay.spawned_ms;
	fprintf(stderr, "big range: %u listeners ready %lld ms after spawn (%d fds open)\n", WIDTH,
		(long long)startup, relay_fd_count(&fx->relay));
	/* About 40 ms here; the bound leaves room for sanitizers and a busy machine. */
	if (startup >= 2000 * hang_scale())
		fail_with_log(fx, "start-up took %lld ms (limit 2000)", (long long)startup);

	expect_greeting(fx, base, "first\n");
	expect_greeting(fx, (uint16_t)(base + WIDTH - 1), "last\n");
	fx_stop_relay_ok(fx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		FX_TEST(test_10000_port_range_ready_and_maps_both_ends),
	};
	return cmocka_run_group_tests_name("big_range", tests, NULL, NULL);
}
