/*
 * test_cli.c - the command line as a user meets it: --check, a port that is
 * already taken, usage errors, a reload on SIGHUP, and a clean exit on
 * SIGTERM/SIGINT with connections open.
 */
#include "harness.h"

#include <sys/resource.h>

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Spawns the relay (not waiting for ready) with the config text and args after "-c FILE". */
static void spawn_with(struct fx *fx, const char *config_text, const char *const *extra)
{
	fx_require_relay();
	if (!fx->relay_inited) {
		relay_init(&fx->relay);
		fx->relay_inited = true;
	}
	const char *path = relay_write_config(&fx->relay, config_text);
	assert_non_null(path);
	const char *args[16] = { "-c", path };
	int n = 2;
	for (int i = 0; extra && extra[i] && n < 15; i++)
		args[n++] = extra[i];
	args[n] = NULL;
	if (relay_spawn(&fx->relay, args) != 0)
		fail_msg("cannot spawn the relay: %s", strerror(errno));
}

static int wait_exit_or_fail(struct fx *fx, int timeout_ms)
{
	int code = relay_wait_exit(&fx->relay, timeout_ms);
	if (code < 0)
		fail_with_log(fx, "relay still running after %d ms", timeout_ms);
	return code;
}

static unsigned count_lines(const char *s)
{
	unsigned n = 0;
	const char *p = s;
	while (*p) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		bool blank = true;
		for (size_t i = 0; i < len; i++)
			if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
				blank = false;
		if (!blank)
			n++;
		if (!nl)
			break;
		p = nl + 1;
	}
	return n;
}

/* ---- 9. --check -------------------------------------------------------------------- */

static const char good_config[] =
	"# three forwards, one disabled\n"
	"tcp = { connect_timeout = 2.0; idle_timeout = 0.0; };\n"
	"forwards = (\n"
	"  { name = \"alpha\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
	"    external_port = 20001; internal_ip = \"127.0.0.1\"; internal_port = 30001; },\n"
	"  { name = \"beta\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
	"    external_port = \"20010-20019\"; internal_ip = \"127.0.0.1\";\n"
	"    internal_port = \"30010-30019\"; },\n"
	"  { name = \"gamma\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
	"    external_port = 20002; internal_ip = \"127.0.0.1\"; internal_port = 30002;\n"
	"    enabled = false; }\n"
	");\n";

static void test_check_good_file_lists_enabled_forwards(void **state)
{
	struct fx *fx = *state;
	const char *extra[] = { "--check", NULL };
	spawn_with(fx, good_config, extra);
	int code = wait_exit_or_fail(fx, 10000 * hang_scale());
	char *out = relay_out_copy(&fx->relay);
	fprintf(stderr, "--check stdout:\n%s", out);
	if (code != 0) {
		free(out);
		fail_with_log(fx, "--check on a valid file exited %d, expected 0", code);
	}
	unsigned lines = count_lines(out);
	bool alpha = strstr(out, "alpha") != NULL, beta = strstr(out, "beta") != NULL;
	bool gamma = strstr(out, "gamma") != NULL;
	free(out);
	if (lines != 2)
		fail_with_log(fx, "--check printed %u lines, expected 2 (one per enabled forward)", lines);
	assert_true(alpha);
	assert_true(beta);
	assert_false(gamma);
}

static const char bad_config[] =
	"# line 5 holds a port out of range\n"
	"tcp = { connect_timeout = 2.0; };\n"
	"forwards = (\n"
	"  { name = \"good\"; protocol = \"tcp\"; external_address = \"127.0.0.1\"; external_port = 20001; internal_ip = \"127.0.0.1\"; internal_port = 30001; },\n"
	"  { name = \"bad\"; protocol = \"tcp\"; external_address = \"127.0.0.1\"; external_port = 70000; internal_ip = \"127.0.0.1\"; internal_port = 30002; }\n"
	");\n";

static void test_check_bad_file_names_file_and_line(void **state)
{
	struct fx *fx = *state;
	const char *extra[] = { "-t", NULL };
	spawn_with(fx, bad_config, extra);
	int code = wait_exit_or_fail(fx, 10000 * hang_scale());
	if (code != 1)
		fail_with_log(fx, "--check on an invalid file exited %d, expected 1", code);
	char where[256];
	snprintf(where, sizeof where, "%s:5:", fx->relay.config_path);
	if (!relay_log_contains(&fx->relay, where))
		fail_with_log(fx, "stderr does not contain '%s'", where);
}

/* ---- 10. port in use ----------------------------------------------------------------- */

static void test_port_in_use_exits_1_with_reason(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	int held = -1;
	uint16_t port = 0;
	for (int attempt = 0; attempt < 20 && held < 0; attempt++) {
		if (port_block_find(1, PORTS_V4, &port) != 0)
			continue;
		held = sock_listen(AF_INET, port, 16);
	}
	assert_true(held >= 0);

	char *t = NULL;
	assert_true(asprintf(&t,
			     "forwards = (\n"
			     "  { name = \"taken\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = %u; internal_ip = \"127.0.0.2\"; internal_port = %u; }\n"
			     ");\n",
			     port, port) > 0);
	const char *extra[] = { "-l", "debug", NULL };
	spawn_with(fx, t, extra);
	free(t);
	if (relay_wait_ready(&fx->relay, 20000 * hang_scale()) == 0) {
		close(held);
		fail_with_log(fx, "relay became ready although 127.0.0.1:%u is taken", port);
	}
	int code = wait_exit_or_fail(fx, 10000 * hang_scale());
	close(held);
	char what[64];
	snprintf(what, sizeof what, "cannot listen on 127.0.0.1:%u", port);
	if (code != 1)
		fail_with_log(fx, "exit status %d, expected 1", code);
	if (!relay_log_contains(&fx->relay, what))
		fail_with_log(fx, "stderr lacks '%s'", what);
	if (!relay_log_contains(&fx->relay, "Address already in use"))
		fail_with_log(fx, "stderr lacks 'Address already in use'");
}

/*
 * Workers share ports with SO_REUSEPORT, which would also let a second relay
 * of the same user join silently and take half the traffic. It must fail
 * like any other bind conflict, for TCP and UDP alike.
 */
static void test_second_relay_on_the_same_ports_exits_1(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	uint16_t port = 0;
	assert_int_equal(port_block_find(1, PORTS_V4, &port), 0);
	char *t = NULL;
	assert_true(asprintf(&t,
			     "workers = 2;\n"
			     "forwards = (\n"
			     "  { name = \"shared\"; protocol = \"both\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = %u; internal_ip = \"127.0.0.1\"; internal_port = %u; }\n"
			     ");\n",
			     port, (unsigned)dead_port(AF_INET)) > 0);
	const char *extra[] = { "-l", "debug", NULL };
	spawn_with(fx, t, extra);
	if (relay_wait_ready(&fx->relay, 20000 * hang_scale()) != 0)
		fail_with_log(fx, "the first relay did not become ready");

	struct relay second;
	relay_init(&second);
	const char *path = relay_write_config(&second, t);
	free(t);
	assert_non_null(path);
	const char *args[] = { "-c", path, NULL };
	assert_int_equal(relay_spawn(&second, args), 0);
	bool ready = relay_wait_ready(&second, 20000 * hang_scale()) == 0;
	int code = ready ? -1 : relay_wait_exit(&second, 10000 * hang_scale());
	char what[64];
	snprintf(what, sizeof what, "cannot listen on 127.0.0.1:%u", port);
	bool named = relay_log_contains(&second, what) &&
		     relay_log_contains(&second, "Address already in use");
	if (ready)
		relay_stop(&second);
	relay_destroy(&second);
	if (ready)
		fail_with_log(fx, "a second relay became ready on port %u taken by the first", port);
	if (code != 1 || !named)
		fail_with_log(fx, "second relay: exit %d (expected 1), message %s", code,
			      named ? "present" : "missing");
	assert_int_equal(relay_stop(&fx->relay), 0);
}

/*
 * A default soft limit of 1024 would cap the relay at a few hundred clients:
 * it raises the soft limit to the hard one at start-up and says so.
 */
static void test_start_up_raises_the_open_files_limit(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	struct rlimit limit;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &limit), 0);
	if (limit.rlim_max == RLIM_INFINITY || limit.rlim_max <= 256)
		skip();
	uint16_t port = 0;
	assert_int_equal(port_block_find(1, PORTS_V4, &port), 0);
	char spec[96];
	snprintf(spec, sizeof spec, "tcp:127.0.0.1:%u:127.0.0.1:%u", port, (unsigned)dead_port(AF_INET));
	relay_init(&fx->relay);
	fx->relay_inited = true;
	fx->relay.nofile_soft = 256;
	const char *args[] = { "-L", spec, NULL };
	assert_int_equal(relay_spawn(&fx->relay, args), 0);
	if (relay_wait_ready(&fx->relay, 20000 * hang_scale()) != 0)
		fail_with_log(fx, "relay did not become ready");

	char want[64], path[64], line[256];
	snprintf(want, sizeof want, "open-files limit %llu", (unsigned long long)limit.rlim_max);
	if (!relay_log_contains(&fx->relay, want))
		fail_with_log(fx, "stderr lacks '%s'", want);
	snprintf(path, sizeof path, "/proc/%d/limits", (int)fx->relay.pid);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	unsigned long long soft = 0;
	while (fgets(line, sizeof line, f) != NULL)
		if (sscanf(line, "Max open files %llu", &soft) == 1)
			break;
	fclose(f);
	assert_int_equal(soft, (unsigned long long)limit.rlim_max);
	assert_int_equal(relay_stop(&fx->relay), 0);
}

/* ---- usage errors ---------------------------------------------------------------------- */

static void test_unknown_option_exits_2(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	relay_init(&fx->relay);
	fx->relay_inited = true;
	const char *args[] = { "--no-such-option", NULL };
	assert_int_equal(relay_spawn(&fx->relay, args), 0);
	int code = wait_exit_or_fail(fx, 10000 * hang_scale());
	if (code != 2)
		fail_with_log(fx, "an unknown option gave exit status %d, expected 2", code);
}

/* -V and -h print to stdout and exit 0, whatever else is on the line. */
static void expect_info_option(struct fx *fx, const char *option, const char *expected)
{
	fx_require_relay();
	if (fx->relay_inited)
		relay_destroy(&fx->relay);
	relay_init(&fx->relay);
	fx->relay_inited = true;
	const char *args[] = { option, "-L", "tcp:1:127.0.0.1:1", NULL };
	assert_int_equal(relay_spawn(&fx->relay, args), 0);
	int code = wait_exit_or_fail(fx, 10000 * hang_scale());
	relay_wait_output_closed(&fx->relay, 5000 * hang_scale());
	char *out = relay_out_copy(&fx->relay);
	bool found = strstr(out, expected) != NULL;
	free(out);
	if (code != 0 || !found)
		fail_with_log(fx, "%s exited %d; stdout %s \"%s\"", option, code,
			      found ? "has" : "lacks", expected);
}

static void test_version_and_help_exit_0(void **state)
{
	struct fx *fx = *state;
	expect_info_option(fx, "-V", "portrelay " PORTRELAY_VERSION);
	expect_info_option(fx, "--help", "--forward SPEC");
}

/* ---- -L specs without a config file ---------------------------------------------------- */

static void test_forward_specs_relay_without_config_file(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	bool v6 = ipv6_loopback_available();
	struct tserver *echo4 = fx_echo_server(fx, AF_INET);
	struct tserver *echo6 = v6 ? fx_echo_server(fx, AF_INET6) : NULL;
	char spec4[96], spec6[96];
	snprintf(spec4, sizeof spec4, "tcp:127.0.0.1:@P0@:127.0.0.1:%u", tserver_port(echo4));
	const char *extra[5] = { "-L", spec4, NULL, NULL, NULL };
	if (v6) {
		snprintf(spec6, sizeof spec6, "tcp:[::1]:@P1@:[::1]:%u", tserver_port(echo6));
		extra[2] = "-L";
		extra[3] = spec6;
	}
	uint16_t base = fx_start_relay_args(fx, 2, v6 ? PORTS_V4 | PORTS_V6 : PORTS_V4, NULL, extra);

	int fams[2] = { AF_INET, AF_INET6 };
	for (int k = 0; k < (v6 ? 2 : 1); k++) {
		int fd = sock_connect(fams[k], (uint16_t)(base + k), 10000 * hang_scale());
		if (fd < 0)
			fail_with_log(fx, "connect to [%s]:%u: %s", loopback_text(fams[k]), base + k,
				      strerror(errno));
		struct xfer x;
		xfer_init(&x, fd, 0x4c00 + (uint64_t)k, 100000, 0x4c00 + (uint64_t)k, 100000);
		size_t not_done = xfer_run(&x, 1, 20000 * hang_scale());
		xfer_release(&x);
		close(fd);
		if (not_done)
			fail_with_log(fx, "echo through the -L forward on %s: %s",
				      loopback_text(fams[k]), x.what);
	}
	if (!v6)
		print_message("::1 is not available; only the IPv4 spec was tried\n");
	fx_stop_relay_ok(fx);
}

/* ---- 11. SIGHUP, SIGTERM / SIGINT with connections open --------------------------------- */

#define OPEN_CONNS 20

static void run_signal_with_open_connections(struct fx *fx, int sig)
{
	struct tserver *echo = fx_echo_server(fx, AF_INET);
	char *t = NULL;
	/* Connections that never end are cut at shutdown_timeout (test_service.c). */
	assert_true(asprintf(&t,
			     "shutdown_timeout = 0.5;\n"
			     "forwards = (\n"
			     "  { name = \"sig\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
			     "    external_port = @P0@; internal_ip = \"127.0.0.1\"; internal_port = %u; }\n"
			     ");\n",
			     tserver_port(echo)) > 0);
	uint16_t port = fx_start_relay(fx, 1, PORTS_V4, t);
	free(t);

	int fds[OPEN_CONNS];
	for (int i = 0; i < OPEN_CONNS; i++) {
		fds[i] = sock_connect(AF_INET, port, 10000 * hang_scale());
		if (fds[i] < 0)
			fail_with_log(fx, "connect %d: %s", i, strerror(errno));
		if (echo_roundtrip(fds[i], 10000 * hang_scale()) != 0)
			fail_with_log(fx, "echo on connection %d: %s", i, strerror(errno));
	}
	int64_t t0 = now_ms();
	kill(fx->relay.pid, sig);
	int code = relay_wait_exit(&fx->relay, 5000 * hang_scale());
	int64_t elapsed = now_ms() - t0;
	if (code < 0) {
		kill(fx->relay.pid, SIGKILL);
		fail_with_log(fx, "relay still running 5 s after %s with %d connections open",
			      strsignal(sig), OPEN_CONNS);
	}
	fprintf(stderr, "%s: exit status %d after %lld ms\n", strsignal(sig), code,
		(long long)elapsed);
	if (code != 0)
		fail_with_log(fx, "exit status %d after %s, expected 0", code, strsignal(sig));
	/* The clients' connections are gone with it. */
	for (int i = 0; i < OPEN_CONNS; i++) {
		int rc = sock_wait_close(fds[i], 5000 * hang_scale(), NULL);
		close(fds[i]);
		if (rc != 0 && rc != ECONNRESET)
			fail_with_log(fx, "connection %d still open after the relay exited", i);
	}
}

/*
 * SIGHUP reloads the configuration (here: the same -L spec, read again):
 * the reload is logged as applied, the connection open across it carries
 * on, and new ones are accepted.
 */
static void test_sighup_reloads_keeping_connections(void **state)
{
	struct fx *fx = *state;
	struct tserver *echo = fx_echo_server(fx, AF_INET);
	char spec[96];
	snprintf(spec, sizeof spec, "tcp:127.0.0.1:@P0@:127.0.0.1:%u", tserver_port(echo));
	const char *extra[] = { "-L", spec, NULL };
	uint16_t port = fx_start_relay_args(fx, 1, PORTS_V4, NULL, extra);

	int before = sock_connect(AF_INET, port, 10000 * hang_scale());
	if (before < 0 || echo_roundtrip(before, 10000 * hang_scale()) != 0)
		fail_with_log(fx, "echo before SIGHUP: %s", strerror(errno));
	kill(fx->relay.pid, SIGHUP);
	if (!wait_for_log(&fx->relay, "SIGHUP", 5000 * hang_scale()))
		fail_with_log(fx, "no log line about SIGHUP");
	if (!wait_for_log(&fx->relay, "reload 1: applied:", 5000 * hang_scale()))
		fail_with_log(fx, "no \"reload 1: applied:\" line after SIGHUP");
	/* The same forward: nothing added, removed or changed. */
	const char *const unchanged[] = { "reload 1: applied:", "1 forward enabled",
					  "0 added, 0 removed, 0 changed, 1 unchanged", NULL };
	if (!relay_log_line_with(&fx->relay, unchanged))
		fail_with_log(fx, "the reload of the same spec was not 1 forward unchanged");
	if (relay_log_contains(&fx->relay, "failed, the running rules stay"))
		fail_with_log(fx, "the reload failed");
	if (relay_wait_exit(&fx->relay, 200) >= 0)
		fail_with_log(fx, "the relay exited on SIGHUP");
	int after = sock_connect(AF_INET, port, 10000 * hang_scale());
	if (echo_roundtrip(before, 10000 * hang_scale()) != 0 || after < 0 ||
	    echo_roundtrip(after, 10000 * hang_scale()) != 0)
		fail_with_log(fx, "echo after SIGHUP: %s", strerror(errno));
	close(before);
	close(after);
	fx_stop_relay_ok(fx);
}

static void test_sigterm_with_open_connections_exits_0(void **state)
{
	run_signal_with_open_connections(*state, SIGTERM);
}

static void test_sigint_with_open_connections_exits_0(void **state)
{
	run_signal_with_open_connections(*state, SIGINT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		FX_TEST(test_check_good_file_lists_enabled_forwards),
		FX_TEST(test_check_bad_file_names_file_and_line),
		FX_TEST(test_port_in_use_exits_1_with_reason),
		FX_TEST(test_second_relay_on_the_same_ports_exits_1),
		FX_TEST(test_start_up_raises_the_open_files_limit),
		FX_TEST(test_unknown_option_exits_2),
		FX_TEST(test_version_and_help_exit_0),
		FX_TEST(test_forward_specs_relay_without_config_file),
		FX_TEST(test_sighup_reloads_keeping_connections),
		FX_TEST(test_sigterm_with_open_connections_exits_0),
		FX_TEST(test_sigint_with_open_connections_exits_0),
	};
	return cmocka_run_group_tests_name("cli", tests, NULL, NULL);
}
