/*
 * test_config.c - the configuration file: every field, the defaults, every
 * validation error with its file:line, resolution and overlap checks.
 *
 * Each test writes its file into a fresh mkdtemp directory under /tmp,
 * removed again by the teardown.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "portrelay/acl.h"
#include "portrelay/config.h"

struct env {
	char dir[64];
	char path[128];          /* the file under test */
	char include_path[128];  /* a second file, for @include */
	struct config cfg;
	char err[1024];
};

static int env_setup(void **state)
{
	struct env *env = calloc(1, sizeof *env);

	if (env == NULL)
		return -1;
	snprintf(env->dir, sizeof env->dir, "/tmp/portrelay-test-XXXXXX");
	if (mkdtemp(env->dir) == NULL) {
		free(env);
		return -1;
	}
	snprintf(env->path, sizeof env->path, "%s/test.conf", env->dir);
	snprintf(env->include_path, sizeof env->include_path, "%s/included.conf", env->dir);
	config_defaults(&env->cfg);
	*state = env;
	return 0;
}

static int env_teardown(void **state)
{
	struct env *env = *state;

	config_free(&env->cfg);
	unlink(env->path);
	unlink(env->include_path);
	rmdir(env->dir);
	free(env);
	return 0;
}

static void write_file(const char *path, const char *text)
{
	FILE *file = fopen(path, "w");

	assert_non_null(file);
	assert_true(fputs(text, file) >= 0);
	assert_int_equal(fclose(file), 0);
}

static int load(struct env *env, const char *text)
{
	write_file(env->path, text);
	env->err[0] = '\0';
	return config_load_file(&env->cfg, env->path, env->err, sizeof env->err);
}

static int load_and_finish(struct env *env, const char *text)
{
	if (load(env, text) < 0)
		return -1;
	return config_finish(&env->cfg, env->err, sizeof env->err);
}

/* The error starts with "PATH:LINE: " and contains `words`. */
static bool error_is_at(const struct env *env, int line, const char *words)
{
	char where[256];

	snprintf(where, sizeof where, "%s:%d: ", env->path, line);
	return strncmp(env->err, where, strlen(where)) == 0 && strstr(env->err, words) != NULL;
}

static void assert_error_at(const struct env *env, int line, const char *words)
{
	if (!error_is_at(env, line, words)) {
		print_error("error was \"%s\"\nexpected  \"%s:%d: ...%s...\"\n", env->err,
			    env->path, line, words);
		fail();
	}
}

/* The error is exactly "PATH:LINE: rest". */
static void assert_error_equals(const struct env *env, int line, const char *rest)
{
	char expected[1024];

	snprintf(expected, sizeof expected, "%s:%d: %s", env->path, line, rest);
	assert_string_equal(env->err, expected);
}

struct error_case {
	const char *text;
	int line;
	const char *words;
};

/* Every case fails to load, names its line and adds no forward. */
static void check_load_errors(struct env *env, const struct error_case *cases, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		const struct error_case *c = &cases[i];

		if (load(env, c->text) != -1 || !error_is_at(env, c->line, c->words) ||
		    env->cfg.forward_count != 0) {
			print_error("case %zu:\n%s\nerror was \"%s\"\nexpected line %d and \"%s\"\n",
				    i, c->text, env->err, c->line, c->words);
			fail();
		}
	}
}

#define CASES(array) (array), sizeof(array) / sizeof((array)[0])

/* One forward whose group opens on line 2; the body starts on line 3. */
#define ONE_FORWARD(body) "forwards = (\n  {\n" body "  }\n);\n"

/* ---- valid files -------------------------------------------------------- */

static const char full_file[] =
	"# every field\n"                                 /* 1 */
	"wan_address = \"127.0.0.1\";\n"                  /* 2 */
	"log_level = \"debug\";\n"                        /* 3 */
	"tcp = {\n"                                       /* 4 */
	"  connect_timeout = 2.5;\n"                      /* 5 */
	"  idle_timeout = 300;\n"                         /* 6 */
	"};\n"                                            /* 7 */
	"udp = {\n"                                       /* 8 */
	"  idle_timeout = 30.0;\n"                        /* 9 */
	"  max_flows = 1024;\n"                           /* 10 */
	"};\n"                                            /* 11 */
	"forwards = (\n"                                  /* 12 */
	"  {\n"                                           /* 13 */
	"    name = \"ftp\";\n"                           /* 14 */
	"    protocol = \"tcp\";\n"                       /* 15 */
	"    external_address = \"0.0.0.0\";\n"          /* 16 */
	"    external_port = 21;\n"                       /* 17 */
	"    internal_ip = \"192.168.20.142\";\n"         /* 18 */
	"    internal_port = 2121;\n"                     /* 19 */
	"    enabled = true;\n"                           /* 20 */
	"  },\n"                                          /* 21 */
	"  {\n"                                           /* 22 */
	"    name = \"web\";\n"                           /* 23 */
	"    protocol = \"both\";\n"                      /* 24 */
	"    external_address = \"[::]\";\n"             /* 25 */
	"    external_port = \"30000-30009\";\n"          /* 26 */
	"    internal_ip = \"192.0.2.10\";\n"             /* 27 */
	"    internal_port = \"40000-40009\";\n"          /* 28 */
	"  },\n"                                          /* 29 */
	"  {\n"                                           /* 30 */
	"    name = \"dns\";\n"                           /* 31 */
	"    protocol = \"udp\";\n"                       /* 32 */
	"    external_port = \"53\";\n"                   /* 33 */
	"    internal_ip = \"nosuch.invalid\";\n"         /* 34 */
	"    enabled = false;\n"                          /* 35 */
	"  }\n"                                           /* 36 */
	");\n";                                           /* 37 */

static void test_full_file_sets_every_field(void **state)
{
	struct env *env = *state;
	const struct config *cfg = &env->cfg;
	char origin[256];

	assert_int_equal(load(env, full_file), 0);
	assert_string_equal(cfg->wan_address, "127.0.0.1");
	assert_int_equal(cfg->log_level, LOG_LEVEL_DEBUG);
	assert_true(cfg->tcp_connect_timeout == 2.5);
	assert_true(cfg->tcp_idle_timeout == 300.0);
	assert_true(cfg->udp_idle_timeout == 30.0);
	assert_int_equal(cfg->udp_max_flows, 1024);
	assert_int_equal(cfg->forward_count, 3);

	const struct forward *ftp = &cfg->forwards[0];
	assert_string_equal(ftp->name, "ftp");
	assert_int_equal(ftp->proto, FORWARD_TCP);
	assert_string_equal(ftp->external_host, "0.0.0.0");
	assert_int_equal(ftp->external_port_first, 21);
	assert_int_equal(ftp->external_port_last, 21);
	assert_string_equal(ftp->internal_host, "192.168.20.142");
	assert_int_equal(ftp->internal_port_first, 2121);
	assert_int_equal(ftp->internal_port_last, 2121);
	assert_true(ftp->enabled);
	snprintf(origin, sizeof origin, "%s:13", env->path);
	assert_string_equal(ftp->origin, origin);

	const struct forward *web = &cfg->forwards[1];
	assert_int_equal(web->proto, FORWARD_BOTH);
	assert_string_equal(web->external_host, "::");
	assert_int_equal(web->external_port_first, 30000);
	assert_int_equal(web->external_port_last, 30009);
	assert_int_equal(web->internal_port_first, 40000);
	assert_int_equal(web->internal_port_last, 40009);
	assert_int_equal(forward_port_count(web), 10);

	const struct forward *dns = &cfg->forwards[2];
	assert_int_equal(dns->proto, FORWARD_UDP);
	assert_false(dns->enabled);
	assert_string_equal(dns->external_host, "");
	assert_int_equal(dns->internal_port_first, 53);
	snprintf(origin, sizeof origin, "%s:30", env->path);
	assert_string_equal(dns->origin, origin);
}

static void test_finished_full_file_describes_each_forward(void **state)
{
	struct env *env = *state;
	char line[512];

	/* The disabled "dns" forward points at a host that does not resolve. */
	assert_int_equal(load_and_finish(env, full_file), 0);
	assert_string_equal(forward_describe(&env->cfg.forwards[0], line, sizeof line),
			    "ftp  tcp  0.0.0.0:21 -> 192.168.20.142:2121");
	assert_string_equal(forward_describe(&env->cfg.forwards[1], line, sizeof line),
			    "web  both [::]:30000-30009 -> 192.0.2.10:40000-40009");
	assert_string_equal(forward_describe(&env->cfg.forwards[2], line, sizeof line),
			    "dns  udp  127.0.0.1:53 -> nosuch.invalid:53  (disabled)");
	assert_int_equal(net_addr_family(&env->cfg.forwards[1].external_addr), AF_INET6);
	assert_true(net_addr_is_wildcard(&env->cfg.forwards[1].external_addr));
}

static void test_omitted_fields_take_defaults(void **state)
{
	struct env *env = *state;
	const struct config *cfg = &env->cfg;
	char line[512], origin[256];

	assert_int_equal(load(env,
			      "forwards = (\n"
			      "  { protocol = \"tcp\"; external_port = 8080; internal_ip = \"198.51.100.1\"; },\n"
			      "  { protocol = \"udp\"; external_port = \"5000-5004\"; internal_ip = \"2001:db8::1\"; }\n"
			      ");\n"), 0);
	assert_string_equal(cfg->wan_address, "0.0.0.0");
	assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
	assert_true(cfg->tcp_connect_timeout == 10.0);
	assert_true(cfg->tcp_idle_timeout == 0.0);
	assert_true(cfg->udp_idle_timeout == 60.0);
	assert_int_equal(cfg->udp_max_flows, 0);             /* automatic */
	assert_true(cfg->udp_unreplied_timeout == 30.0);
	assert_int_equal(cfg->tcp_keepalive, 60);
	assert_int_equal(cfg->max_connections, 0);           /* automatic */
	assert_false(cfg->has_user);
	assert_false(cfg->has_group);
	assert_int_equal(cfg->forward_count, 2);

	const struct forward *tcp = &cfg->forwards[0];
	assert_string_equal(tcp->name, "tcp:8080");
	assert_true(tcp->enabled);
	assert_int_equal(tcp->max_connections, 0);
	assert_int_equal(tcp->max_connections_per_source, 256);
	assert_int_equal(tcp->max_flows_per_source, 1024);
	assert_int_equal(tcp->acl.count, 0);
	assert_false(tcp->freebind);
	assert_string_equal(tcp->external_host, "");
	assert_int_equal(tcp->internal_port_first, 8080);
	assert_int_equal(tcp->internal_port_last, 8080);
	snprintf(origin, sizeof origin, "%s:2", env->path);
	assert_string_equal(tcp->origin, origin);

	const struct forward *udp = &cfg->forwards[1];
	assert_string_equal(udp->name, "udp:5000-5004");
	assert_int_equal(udp->internal_port_first, 5000);
	assert_int_equal(udp->internal_port_last, 5004);

	assert_int_equal(config_finish(&env->cfg, env->err, sizeof env->err), 0);
	assert_string_equal(tcp->external_host, "0.0.0.0");
	assert_string_equal(forward_describe(tcp, line, sizeof line),
			    "tcp:8080  tcp  0.0.0.0:8080 -> 198.51.100.1:8080");
	assert_string_equal(forward_describe(udp, line, sizeof line),
			    "udp:5000-5004  udp  0.0.0.0:5000-5004 -> [2001:db8::1]:5000-5004");
}

static void test_udp_idle_timeout_per_forward_overrides_the_global(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env,
		"udp = { idle_timeout = 30; };\n"
		"forwards = (\n"
		"  { protocol = \"udp\"; external_port = 53; internal_ip = \"198.51.100.1\";\n"
		"    udp_idle_timeout = 2.5; },\n"
		"  { protocol = \"both\"; external_port = 54; internal_ip = \"198.51.100.1\"; }\n"
		");\n"), 0);
	assert_true(env->cfg.forwards[0].udp_idle_timeout == 2.5);
	assert_true(env->cfg.forwards[1].udp_idle_timeout == 30.0);
}

static void test_workers_splice_and_busy_poll_are_read_and_checked(void **state)
{
	struct env *env = *state;

	assert_int_equal(env->cfg.workers, 0);
	assert_true(env->cfg.tcp_splice);
	assert_int_equal(env->cfg.busy_poll_us, 0);
	assert_int_equal(load(env, "workers = 3;\nbusy_poll = 50;\ntcp = { splice = false; };\n"), 0);
	assert_int_equal(env->cfg.workers, 3);
	assert_false(env->cfg.tcp_splice);
	assert_int_equal(env->cfg.busy_poll_us, 50);

	static const struct error_case cases[] = {
		{ "workers = -1;\n", 1, "workers must be an integer from 0 (one per CPU) to 256" },
		{ "workers = 1.5;\n", 1, "workers must be an integer" },
		{ "workers = 257;\n", 1, "workers must be an integer" },
		{ "tcp = {\n  splice = 1;\n};\n", 2, "tcp.splice must be true or false" },
		{ "busy_poll = -1;\n", 1, "busy_poll must be an integer number of microseconds from 0 (off) to 10000" },
		{ "\nbusy_poll = 0.5;\n", 2, "busy_poll must be an integer" },
		{ "busy_poll = 10001;\n", 1, "busy_poll must be an integer" },
	};
	check_load_errors(*state, CASES(cases));
}

static void test_admin_is_off_by_default_and_read_when_given(void **state)
{
	struct env *env = *state;

	assert_string_equal(env->cfg.admin_listen, "");
	assert_int_equal(load(env, "admin = { listen = \"127.0.0.1:9330\"; };\n"), 0);
	assert_string_equal(env->cfg.admin_listen, "127.0.0.1:9330");
	assert_false(env->cfg.admin_unix);
	assert_int_equal(net_addr_port(&env->cfg.admin_addr), 9330);
	assert_int_equal(load(env, "admin = { listen = \"[::1]:9331\"; };\n"), 0);
	assert_int_equal(net_addr_family(&env->cfg.admin_addr), AF_INET6);
	assert_int_equal(load(env, "admin = { listen = \"/run/portrelay.sock\"; };\n"), 0);
	assert_true(env->cfg.admin_unix);
	assert_int_equal(load(env, "admin = { listen = \"0.0.0.0:9330\";\n"
				   "  token_file = \"/etc/portrelay/admin.token\"; };\n"), 0);
	assert_string_equal(env->cfg.admin_token_file, "/etc/portrelay/admin.token");

	static const struct error_case cases[] = {
		{ "admin = {\n  listen = \"0.0.0.0:9330\";\n};\n", 2,
		  "admin.listen \"0.0.0.0:9330\" is not a loopback address: set admin.token_file" },
		{ "admin = { listen = \"[::]:9330\"; };\n", 1, "is not a loopback address" },
		{ "admin = { listen = \"192.0.2.1:9330\"; };\n", 1, "is not a loopback address" },
		{ "admin = { listen = \"127.0.0.1\"; };\n", 1, "is not IP:PORT" },
		{ "admin = { listen = \"127.0.0.1:0\"; };\n", 1, "is not IP:PORT" },
		{ "admin = { listen = \"127.0.0.1:65536\"; };\n", 1, "is not IP:PORT" },
		{ "admin = { listen = \"localhost:9330\"; };\n", 1, "is not a numeric" },
		{ "admin = { listen = \"run/x.sock\"; };\n", 1, "is not IP:PORT" },
		{ "admin = { listen = 9330; };\n", 1, "admin.listen must be a string" },
		{ "admin = { token_file = \"/t\"; };\n", 1, "admin.listen is required" },
		{ "admin = { listen = \"127.0.0.1:1\"; token = \"x\"; };\n", 1,
		  "unknown field \"admin.token\"" },
		{ "admin = { listen = \"127.0.0.1:1\"; token_file = \"\"; };\n", 1,
		  "admin.token_file must be a non-empty path" },
		{ "admin = \"127.0.0.1:9330\";\n", 1, "admin must be a group" },
	};
	check_load_errors(*state, CASES(cases));
}

static void test_shutdown_timeout_is_read_and_checked(void **state)
{
	struct env *env = *state;

	assert_true(env->cfg.shutdown_timeout == 5.0);
	assert_int_equal(load(env, "shutdown_timeout = 0;\n"), 0);
	assert_true(env->cfg.shutdown_timeout == 0.0);
	assert_int_equal(load(env, "shutdown_timeout = 2.5;\n"), 0);
	assert_true(env->cfg.shutdown_timeout == 2.5);

	static const struct error_case cases[] = {
		{ "shutdown_timeout = -1.0;\n", 1, "shutdown_timeout must be a number >= 0" },
		{ "\nshutdown_timeout = \"5\";\n", 2, "shutdown_timeout must be a number >= 0" },
	};
	check_load_errors(*state, CASES(cases));
}

static void test_drain_timeout_is_read_and_checked(void **state)
{
	struct env *env = *state;

	assert_true(env->cfg.drain_timeout == 0.0);
	assert_int_equal(load(env, "drain_timeout = 1.5;\n"), 0);
	assert_true(env->cfg.drain_timeout == 1.5);
	assert_int_equal(load(env, "drain_timeout = 30;\n"), 0);
	assert_true(env->cfg.drain_timeout == 30.0);
	assert_int_equal(load(env, "drain_timeout = 0;\n"), 0);
	assert_true(env->cfg.drain_timeout == 0.0);

	assert_int_equal(load(env, "log_level = \"info\";\ndrain_timeout = -2.5;\n"), -1);
	assert_error_equals(env, 2, "drain_timeout must be a number >= 0, not -2.5");
	static const struct error_case cases[] = {
		{ "drain_timeout = -1;\n", 1, "drain_timeout must be a number >= 0" },
		{ "\n\ndrain_timeout = \"5\";\n", 3, "drain_timeout must be a number >= 0" },
		{ "drain_timeout = 1e12;\n", 1, "drain_timeout 1e+12 is too large" },
	};
	check_load_errors(*state, CASES(cases));
}

static void test_empty_file_and_empty_lists_have_no_forwards(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env, ""), 0);
	assert_int_equal(load_and_finish(env, "forwards = ();\n"), 0);
	assert_int_equal(load_and_finish(env, "forwards = [];\n"), 0);
	assert_int_equal(env->cfg.forward_count, 0);
}

static void test_host_name_is_resolved_and_shown(void **state)
{
	struct env *env = *state;
	char line[512];

	assert_int_equal(load_and_finish(env, ONE_FORWARD(
		"    name = \"local\"; protocol = \"tcp\"; external_port = 8080;\n"
		"    internal_ip = \"localhost\"; internal_port = 80;\n")), 0);
	assert_int_not_equal(env->cfg.forwards[0].internal_addr.len, 0);
	forward_describe(&env->cfg.forwards[0], line, sizeof line);
	assert_non_null(strstr(line, "-> localhost ("));
	assert_non_null(strstr(line, "):80"));
}

/* ---- unknown fields ----------------------------------------------------- */

static void test_unknown_fields_are_rejected_at_every_level(void **state)
{
	static const struct error_case cases[] = {
		{ "log_level = \"info\";\nwan_adress = \"0.0.0.0\";\n", 2,
		  "unknown field \"wan_adress\"" },
		{ "tcp = {\n  connect_timeout = 1;\n  idel_timeout = 2;\n};\n", 3,
		  "unknown field \"tcp.idel_timeout\"" },
		{ "udp = {\n  max_flow = 5;\n};\n", 2, "unknown field \"udp.max_flow\"" },
		{ ONE_FORWARD("    protocol = \"tcp\";\n    internal_ip = \"h\";\n"
			      "    external_port = 1;\n    colour = \"red\";\n"), 6,
		  "forward #1: unknown field \"colour\"" },
	};

	check_load_errors(*state, CASES(cases));
}

static void test_unknown_forward_field_message_is_exact(void **state)
{
	struct env *env = *state;

	assert_int_equal(load(env, ONE_FORWARD(
		"    name = \"ftp\";\n"
		"    protocol = \"tcp\";\n"
		"    internal_ip = \"10.0.0.1\";\n"
		"    extrnal_port = 21;\n")), -1);
	assert_error_equals(env, 6, "forward \"ftp\": unknown field \"extrnal_port\"");
}

/* ---- ports -------------------------------------------------------------- */

/* A forward named "ftp" whose external_port (line 6) is `value`. */
#define EXTERNAL_PORT(value) ONE_FORWARD( \
	"    name = \"ftp\";\n    protocol = \"tcp\";\n    internal_ip = \"10.0.0.1\";\n" \
	"    external_port = " value ";\n")

static void test_external_port_out_of_range_message_is_exact(void **state)
{
	struct env *env = *state;

	assert_int_equal(load(env, EXTERNAL_PORT("70000")), -1);
	assert_error_equals(env, 6, "forward \"ftp\": external_port 70000 is outside 1-65535");
}

static void test_bad_port_values_are_rejected(void **state)
{
	static const struct error_case cases[] = {
		{ EXTERNAL_PORT("0"), 6, "forward \"ftp\": external_port 0 is outside 1-65535" },
		{ EXTERNAL_PORT("-1"), 6, "external_port -1 is outside 1-65535" },
		{ EXTERNAL_PORT("70000L"), 6, "external_port 70000 is outside 1-65535" },
		{ EXTERNAL_PORT("\"70000\""), 6, "external_port 70000 is outside 1-65535" },
		{ EXTERNAL_PORT("\"1-70000\""), 6, "external_port 70000 is outside 1-65535" },
		{ EXTERNAL_PORT("\"0-5\""), 6, "external_port 0 is outside 1-65535" },
		{ EXTERNAL_PORT("\"99999999999999999999\""), 6,
		  "external_port 99999999999999999999 is outside 1-65535" },
		{ EXTERNAL_PORT("\"abc\""), 6,
		  "external_port \"abc\" is not a port number or a range N-M" },
		{ EXTERNAL_PORT("\"\""), 6, "external_port \"\" is not a port number" },
		{ EXTERNAL_PORT("\" 80\""), 6, "external_port \" 80\" is not a port number" },
		{ EXTERNAL_PORT("\"80-\""), 6, "external_port \"80-\" is not a port number" },
		{ EXTERNAL_PORT("\"-80\""), 6, "external_port \"-80\" is not a port number" },
		{ EXTERNAL_PORT("\"80-90-100\""), 6, "is not a port number" },
		{ EXTERNAL_PORT("\"+80\""), 6, "is not a port number" },
		{ EXTERNAL_PORT("\"90-80\""), 6, "external_port range 90-80 ends before it starts" },
		{ EXTERNAL_PORT("80.0"), 6,
		  "external_port must be a port number or a range string \"N-M\"" },
		{ EXTERNAL_PORT("true"), 6, "external_port must be a port number" },
		{ EXTERNAL_PORT("[80]"), 6, "external_port must be a port number" },
		{ ONE_FORWARD("    name = \"ftp\";\n    protocol = \"tcp\";\n"
			      "    internal_ip = \"10.0.0.1\";\n    external_port = 80;\n"
			      "    internal_port = 65536;\n"), 7,
		  "forward \"ftp\": internal_port 65536 is outside 1-65535" },
		{ ONE_FORWARD("    name = \"ftp\";\n    protocol = \"tcp\";\n"
			      "    internal_ip = \"10.0.0.1\";\n    external_port = 80;\n"
			      "    internal_port = \"http\";\n"), 7,
		  "internal_port \"http\" is not a port number" },
	};

	check_load_errors(*state, CASES(cases));
}

static void test_range_width_mismatch_message_is_exact(void **state)
{
	struct env *env = *state;

	assert_int_equal(load(env, ONE_FORWARD(
		"    name = \"x\";\n"
		"    protocol = \"tcp\";\n"
		"    external_port = \"30000-30009\";\n"
		"    internal_ip = \"10.0.0.1\";\n"
		"    internal_port = \"80-81\";\n")), -1);
	assert_error_equals(env, 7, "forward \"x\": internal_port range 80-81 is 2 ports wide "
			    "but external_port range 30000-30009 is 10");
}

static void test_single_and_range_ports_do_not_mix(void **state)
{
	static const struct error_case cases[] = {
		{ ONE_FORWARD("    name = \"x\"; protocol = \"tcp\"; internal_ip = \"h\";\n"
			      "    external_port = \"30000-30009\";\n"
			      "    internal_port = 80;\n"), 5,
		  "internal_port 80 is 1 port wide but external_port range 30000-30009 is 10" },
		{ ONE_FORWARD("    name = \"x\"; protocol = \"tcp\"; internal_ip = \"h\";\n"
			      "    external_port = 80;\n"
			      "    internal_port = \"80-81\";\n"), 5,
		  "internal_port range 80-81 is 2 ports wide but external_port 80 is 1" },
	};

	check_load_errors(*state, CASES(cases));
}

static void test_equal_width_ranges_map_one_to_one(void **state)
{
	struct env *env = *state;

	assert_int_equal(load(env, ONE_FORWARD(
		"    protocol = \"tcp\"; internal_ip = \"h\";\n"
		"    external_port = \"30000-30009\"; internal_port = \"40000-40009\";\n")), 0);
	assert_int_equal(env->cfg.forwards[0].internal_port_first, 40000);
	assert_int_equal(env->cfg.forwards[0].internal_port_last, 40009);
	assert_int_equal(forward_port_count(&env->cfg.forwards[0]), 10);
}

/* ---- wrong types and values --------------------------------------------- */

static void test_global_settings_are_type_and_range_checked(void **state)
{
	static const struct error_case cases[] = {
		{ "log_level = 3;\n", 1, "log_level must be a string" },
		{ "log_level = \"loud\";\n", 1,
		  "log_level \"loud\" is not one of error, warn, info, debug" },
		{ "wan_address = 1;\n", 1, "wan_address must be a string" },
		{ "wan_address = \"example.com\";\n", 1,
		  "wan_address \"example.com\" is not a numeric IPv4 or IPv6 address" },
		{ "wan_address = \"[::1\";\n", 1, "wan_address \"[::1\" is not a numeric" },
		{ "tcp = 5;\n", 1, "tcp must be a group" },
		{ "udp = (1);\n", 1, "udp must be a group" },
		{ "tcp = {\n  connect_timeout = \"10\";\n};\n", 2,
		  "tcp.connect_timeout must be a number > 0" },
		{ "tcp = {\n  connect_timeout = 0;\n};\n", 2,
		  "tcp.connect_timeout must be a number > 0" },
		{ "tcp = {\n  idle_timeout = -1.5;\n};\n", 2,
		  "tcp.idle_timeout must be a number >= 0" },
		{ "tcp = {\n  idle_timeout = 1e400;\n};\n", 2,
		  "tcp.idle_timeout must be a number >= 0" },
		{ "tcp = {\n  idle_timeout = 1e12;\n};\n", 2, "tcp.idle_timeout 1e+12 is too large" },
		{ "udp = {\n  idle_timeout = true;\n};\n", 2,
		  "udp.idle_timeout must be a number > 0" },
		{ "udp = {\n  idle_timeout = 0;\n};\n", 2,
		  "udp.idle_timeout must be a number > 0" },
		{ "udp = {\n  max_flows = -1;\n};\n", 2,
		  "udp.max_flows must be an integer from 0 (automatic) to 16777216" },
		{ "udp = {\n  max_flows = 16777217;\n};\n", 2,
		  "udp.max_flows must be an integer from 0 (automatic) to 16777216" },
		{ "udp = {\n  max_flows = 2.0;\n};\n", 2, "udp.max_flows must be an integer" },
		{ "forwards = { a = 1; };\n", 1, "forwards must be a list of groups" },
		{ "forwards = 5;\n", 1, "forwards must be a list of groups" },
		{ "forwards = [1, 2];\n", 1, "forward #1 must be a group" },
		{ "log_level = \"info\";\nforwards = ( \"tcp:80:h:80\" );\n", 2,
		  "forward #1 must be a group" },
	};

	check_load_errors(*state, CASES(cases));
}

static void test_valid_global_values_are_accepted(void **state)
{
	struct env *env = *state;

	assert_int_equal(load(env,
			      "wan_address = \"[::]\";\n"
			      "tcp = { connect_timeout = 1; idle_timeout = 0; };\n"
			      "udp = { idle_timeout = 0.5; max_flows = 16777216; };\n"), 0);
	assert_string_equal(env->cfg.wan_address, "::");
	assert_true(env->cfg.tcp_connect_timeout == 1.0);
	assert_true(env->cfg.udp_idle_timeout == 0.5);
	assert_int_equal(env->cfg.udp_max_flows, 16777216);
}

/* A forward named "f" (lines 3-5) plus `line6`, the setting under test. */
#define FORWARD_WITH(line6) ONE_FORWARD( \
	"    name = \"f\";\n    external_port = 80;\n    internal_port = 80;\n" line6)
#define FORWARD_TCP_WITH(line7) ONE_FORWARD( \
	"    name = \"f\";\n    external_port = 80;\n    internal_ip = \"h\";\n" \
	"    protocol = \"tcp\";\n" line7)

static void test_forward_fields_are_type_checked(void **state)
{
	static const struct error_case cases[] = {
		{ FORWARD_WITH("    protocol = 5;\n"), 6,
		  "forward \"f\": protocol must be a string" },
		{ FORWARD_WITH("    protocol = \"sctp\";\n"), 6,
		  "forward \"f\": protocol \"sctp\" is not tcp, udp or both" },
		{ FORWARD_WITH("    protocol = \"TCP\";\n"), 6, "protocol \"TCP\" is not tcp" },
		{ FORWARD_TCP_WITH("    enabled = \"yes\";\n"), 7,
		  "forward \"f\": enabled must be true or false" },
		{ FORWARD_TCP_WITH("    udp_idle_timeout = 0;\n"), 7,
		  "forward \"f\": udp_idle_timeout must be a number > 0" },
		{ FORWARD_TCP_WITH("    udp_idle_timeout = \"5\";\n"), 7,
		  "forward \"f\": udp_idle_timeout must be a number > 0" },
		{ FORWARD_TCP_WITH("    enabled = 1;\n"), 7, "enabled must be true or false" },
		{ FORWARD_WITH("    internal_ip = 10;\n"), 6,
		  "forward \"f\": internal_ip must be a string" },
		{ FORWARD_WITH("    internal_ip = \"\";\n"), 6, "internal_ip \"\" is empty" },
		{ FORWARD_WITH("    internal_ip = \"a b\";\n"), 6,
		  "internal_ip \"a b\" contains whitespace" },
		{ FORWARD_TCP_WITH("    external_address = \"example.com\";\n"), 7,
		  "external_address \"example.com\" is not a numeric IPv4 or IPv6 address" },
		{ FORWARD_TCP_WITH("    external_address = \"[::1\";\n"), 7,
		  "external_address \"[::1\" is not a numeric" },
		{ FORWARD_TCP_WITH("    external_address = 5;\n"), 7,
		  "external_address must be a string" },
		{ ONE_FORWARD("    protocol = \"tcp\";\n    name = 5;\n"), 4,
		  "forward #1: name must be a string" },
		{ ONE_FORWARD("    protocol = \"tcp\";\n    name = \"\";\n"), 4,
		  "forward #1: name is empty" },
		{ ONE_FORWARD("    name = \"0123456789012345678901234567890123456789"
			      "012345678901234567890123\";\n"), 3,
		  "forward #1: name is longer than 63 characters" },
		{ ONE_FORWARD("    name = \"a\\nb\";\n"), 3, "name contains control characters" },
	};

	check_load_errors(*state, CASES(cases));
}

static void test_required_forward_fields_are_reported_at_the_group(void **state)
{
	static const struct error_case cases[] = {
		{ ONE_FORWARD("    name = \"f\";\n    external_port = 80;\n"
			      "    internal_ip = \"h\";\n"), 2,
		  "forward \"f\": protocol is required (tcp, udp or both)" },
		{ ONE_FORWARD("    name = \"f\";\n    protocol = \"tcp\";\n"
			      "    internal_ip = \"h\";\n"), 2,
		  "forward \"f\": external_port is required" },
		{ ONE_FORWARD("    name = \"f\";\n    protocol = \"tcp\";\n"
			      "    external_port = 80;\n"), 2,
		  "forward \"f\": internal_ip is required" },
	};

	check_load_errors(*state, CASES(cases));
}

static void test_unnamed_forward_is_called_by_its_index(void **state)
{
	struct env *env = *state;

	assert_int_equal(load(env,
		"forwards = (\n"
		"  { name = \"ok\"; protocol = \"tcp\"; external_port = 1; internal_ip = \"h\"; },\n"
		"  { protocol = \"tcp\"; external_port = 99999; internal_ip = \"h\"; }\n"
		");\n"), -1);
	assert_error_equals(env, 3, "forward #2: external_port 99999 is outside 1-65535");
}

static void test_failed_file_adds_no_forwards(void **state)
{
	struct env *env = *state;

	assert_int_equal(load(env, ONE_FORWARD(
		"    protocol = \"tcp\"; external_port = 1; internal_ip = \"h\";\n")), 0);
	assert_int_equal(env->cfg.forward_count, 1);
	assert_int_equal(load(env,
		"forwards = (\n"
		"  { protocol = \"tcp\"; external_port = 2; internal_ip = \"h\"; },\n"
		"  { protocol = \"tcp\"; external_port = 3; internal_ip = \"h\"; },\n"
		"  { protocol = \"tcp\"; external_port = 4; internal_ip = 4; }\n"
		");\n"), -1);
	assert_error_at(env, 4, "forward #3: internal_ip must be a string");
	assert_int_equal(env->cfg.forward_count, 1);
	assert_int_equal(env->cfg.forwards[0].external_port_first, 1);
}

/* ---- reading the file --------------------------------------------------- */

static void test_syntax_error_names_the_line(void **state)
{
	struct env *env = *state;

	assert_int_equal(load(env,
		"log_level = \"info\";\n"
		"tcp = {\n"
		"  connect_timeout = ;\n"
		"};\n"), -1);
	assert_error_at(env, 3, "syntax error: ");
}

static void test_missing_file_cannot_be_read(void **state)
{
	struct env *env = *state;
	char path[256], expected[512];

	snprintf(path, sizeof path, "%s/absent.conf", env->dir);
	assert_int_equal(config_load_file(&env->cfg, path, env->err, sizeof env->err), -1);
	snprintf(expected, sizeof expected, "%s: cannot read: No such file or directory", path);
	assert_string_equal(env->err, expected);
}

static void test_directory_cannot_be_read(void **state)
{
	struct env *env = *state;
	char expected[512];

	assert_int_equal(config_load_file(&env->cfg, env->dir, env->err, sizeof env->err), -1);
	snprintf(expected, sizeof expected, "%s: cannot read: Is a directory", env->dir);
	assert_string_equal(env->err, expected);
}

static void test_error_in_included_file_names_that_file(void **state)
{
	struct env *env = *state;
	char text[512], expected[512];

	write_file(env->include_path, "# included\nbogus = 1;\n");
	snprintf(text, sizeof text, "log_level = \"warn\";\n@include \"%s\"\n", env->include_path);
	assert_int_equal(load(env, text), -1);
	snprintf(expected, sizeof expected, "%s:2: unknown field \"bogus\"", env->include_path);
	assert_string_equal(env->err, expected);
}

/* ---- config_finish: resolution ------------------------------------------ */

static void test_unresolvable_host_is_reported_at_its_forward(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env,
		"forwards = (\n"
		"  { name = \"good\"; protocol = \"tcp\"; external_port = 1000;"
		" internal_ip = \"127.0.0.1\"; },\n"
		"  { name = \"bad\"; protocol = \"tcp\"; external_port = 1001;"
		" internal_ip = \"nosuch.invalid\"; }\n"
		");\n"), -1);
	assert_error_at(env, 3,
			"forward \"bad\": internal_ip \"nosuch.invalid\" does not resolve: ");
	/* The resolver's reason follows the colon. */
	assert_true(strlen(strstr(env->err, "does not resolve: ")) > strlen("does not resolve: "));
}

static void test_disabled_forward_is_not_resolved(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env, ONE_FORWARD(
		"    name = \"off\"; protocol = \"tcp\"; external_port = 1000;\n"
		"    internal_ip = \"nosuch.invalid\"; enabled = false;\n")), 0);
	assert_int_equal(env->cfg.forwards[0].internal_addr.len, 0);
	/* Its external address is still filled in, for --check. */
	assert_int_equal(net_addr_family(&env->cfg.forwards[0].external_addr), AF_INET);
}

/* ---- config_finish: overlaps -------------------------------------------- */

struct side {
	const char *proto;
	const char *addr;
	const char *port;   /* as written in the file: 8080 or "8000-8010" */
	const char *enabled;
};

/* Forward "a" on line 2 and forward "b" on line 3. */
static int load_pair(struct env *env, struct side a, struct side b)
{
	char text[1024];

	snprintf(text, sizeof text,
		 "forwards = (\n"
		 "  { name = \"a\"; protocol = \"%s\"; external_address = \"%s\";"
		 " external_port = %s; internal_ip = \"198.51.100.1\"; enabled = %s; },\n"
		 "  { name = \"b\"; protocol = \"%s\"; external_address = \"%s\";"
		 " external_port = %s; internal_ip = \"198.51.100.1\"; enabled = %s; }\n"
		 ");\n",
		 a.proto, a.addr, a.port, a.enabled ? a.enabled : "true",
		 b.proto, b.addr, b.port, b.enabled ? b.enabled : "true");
	config_free(&env->cfg);
	return load_and_finish(env, text);
}

static void test_same_port_twice_overlaps_with_exact_message(void **state)
{
	struct env *env = *state;
	char rest[512];

	assert_int_equal(load_pair(env, (struct side){ "tcp", "0.0.0.0", "8080", NULL },
				   (struct side){ "tcp", "0.0.0.0", "8080", NULL }), -1);
	snprintf(rest, sizeof rest,
		 "forward \"b\": tcp port 8080 on 0.0.0.0 overlaps forward \"a\" (%s:2)", env->path);
	assert_error_equals(env, 3, rest);
}

struct overlap_case {
	struct side a;
	struct side b;
	const char *words;   /* NULL: no overlap expected */
};

static void check_overlaps(struct env *env, const struct overlap_case *cases, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		const struct overlap_case *c = &cases[i];
		int rc = load_pair(env, c->a, c->b);
		bool ok = c->words == NULL ? rc == 0 : rc == -1 && error_is_at(env, 3, c->words);

		if (!ok) {
			print_error("case %zu: %s %s %s / %s %s %s\nerror was \"%s\"\n"
				    "expected %s%s\n", i, c->a.proto, c->a.addr, c->a.port,
				    c->b.proto, c->b.addr, c->b.port, env->err,
				    c->words ? "line 3 and " : "no error", c->words ? c->words : "");
			fail();
		}
	}
}

static void test_overlapping_forwards_are_rejected(void **state)
{
	static const struct overlap_case cases[] = {
		/* A range overlapping a single port, in either order. */
		{ { "tcp", "0.0.0.0", "\"8000-8010\"", NULL }, { "tcp", "0.0.0.0", "8005", NULL },
		  "forward \"b\": tcp port 8005 on 0.0.0.0 overlaps forward \"a\"" },
		{ { "tcp", "0.0.0.0", "8005", NULL }, { "tcp", "0.0.0.0", "\"8000-8010\"", NULL },
		  "forward \"b\": tcp port 8005 on 0.0.0.0 overlaps forward \"a\"" },
		{ { "udp", "0.0.0.0", "\"8000-8010\"", NULL }, { "udp", "0.0.0.0", "\"8010-8020\"", NULL },
		  "udp port 8010 on 0.0.0.0 overlaps forward \"a\"" },
		/* both counts as tcp and as udp. */
		{ { "both", "0.0.0.0", "53", NULL }, { "tcp", "0.0.0.0", "53", NULL },
		  "tcp port 53 on 0.0.0.0 overlaps forward \"a\"" },
		{ { "udp", "0.0.0.0", "53", NULL }, { "both", "0.0.0.0", "53", NULL },
		  "udp port 53 on 0.0.0.0 overlaps forward \"a\"" },
		/* 0.0.0.0 takes every IPv4 address. */
		{ { "tcp", "0.0.0.0", "8080", NULL }, { "tcp", "127.0.0.1", "8080", NULL },
		  "tcp port 8080 on 127.0.0.1 overlaps forward \"a\" on 0.0.0.0 (" },
		{ { "tcp", "127.0.0.1", "8080", NULL }, { "tcp", "0.0.0.0", "8080", NULL },
		  "tcp port 8080 on 0.0.0.0 overlaps forward \"a\" on 127.0.0.1 (" },
		/* :: is dual stack: it takes every IPv4 and IPv6 address. */
		{ { "tcp", "::", "8080", NULL }, { "tcp", "0.0.0.0", "8080", NULL },
		  "tcp port 8080 on 0.0.0.0 overlaps forward \"a\" on :: (" },
		{ { "tcp", "127.0.0.1", "8080", NULL }, { "tcp", "[::]", "8080", NULL },
		  "overlaps forward \"a\" on 127.0.0.1" },
		{ { "udp", "::1", "8080", NULL }, { "udp", "::", "8080", NULL },
		  "overlaps forward \"a\" on ::1" },
		{ { "tcp", "::1", "8080", NULL }, { "tcp", "[::1]", "8080", NULL },
		  "tcp port 8080 on ::1 overlaps forward \"a\" (" },
	};

	check_overlaps(*state, CASES(cases));
}

static void test_distinct_forwards_do_not_overlap(void **state)
{
	static const struct overlap_case cases[] = {
		{ { "tcp", "0.0.0.0", "8080", NULL }, { "udp", "0.0.0.0", "8080", NULL }, NULL },
		{ { "tcp", "127.0.0.1", "8080", NULL }, { "tcp", "127.0.0.2", "8080", NULL }, NULL },
		{ { "tcp", "0.0.0.0", "8080", NULL }, { "tcp", "::1", "8080", NULL }, NULL },
		{ { "tcp", "::1", "8080", NULL }, { "tcp", "::2", "8080", NULL }, NULL },
		{ { "both", "0.0.0.0", "\"8000-8009\"", NULL },
		  { "both", "0.0.0.0", "\"8010-8019\"", NULL }, NULL },
		/* A disabled forward opens nothing. */
		{ { "tcp", "0.0.0.0", "8080", "false" }, { "tcp", "0.0.0.0", "8080", NULL }, NULL },
		{ { "tcp", "0.0.0.0", "8080", NULL }, { "tcp", "0.0.0.0", "8080", "false" }, NULL },
	};

	check_overlaps(*state, CASES(cases));
}

static void test_overlap_with_wan_address_default(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env,
		"wan_address = \"127.0.0.1\";\n"
		"forwards = (\n"
		"  { name = \"a\"; protocol = \"tcp\"; external_port = 8080; internal_ip = \"h\";"
		" enabled = false; },\n"
		"  { name = \"b\"; protocol = \"tcp\"; external_address = \"0.0.0.0\";"
		" external_port = 8080; internal_ip = \"127.0.0.1\"; },\n"
		"  { name = \"c\"; protocol = \"tcp\"; external_port = \"8000-9000\";"
		" internal_ip = \"127.0.0.1\"; internal_port = \"9000-10000\"; }\n"
		");\n"), -1);
	assert_error_at(env, 5, "forward \"c\": tcp port 8080 on 127.0.0.1 overlaps forward \"b\" "
			"on 0.0.0.0 (");
}

/* A long range stays "active" while shorter forwards after it come and go. */
static void test_long_range_overlap_is_found_past_other_forwards(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env,
		"forwards = (\n"
		"  { name = \"wide\"; protocol = \"tcp\"; external_port = \"1000-2000\";"
		" internal_ip = \"127.0.0.1\"; },\n"
		"  { name = \"u1\"; protocol = \"udp\"; external_port = 1100; internal_ip = \"127.0.0.1\"; },\n"
		"  { name = \"u2\"; protocol = \"udp\"; external_port = 1500; internal_ip = \"127.0.0.1\"; },\n"
		"  { name = \"t\"; protocol = \"tcp\"; external_port = 2000; internal_ip = \"127.0.0.1\"; }\n"
		");\n"), -1);
	assert_error_at(env, 5, "forward \"t\": tcp port 2000 on 0.0.0.0 overlaps forward \"wide\"");
}

static double seconds_since(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

/* Writes `count` single-port tcp forwards on ports 10000... and, optionally, a duplicate. */
static char *many_forwards_text(unsigned count, bool duplicate_last)
{
	size_t size = (size_t)(count + 2) * 128;
	char *text = malloc(size);
	size_t used = 0;

	assert_non_null(text);
	used += (size_t)snprintf(text + used, size - used, "forwards = (\n");
	for (unsigned i = 0; i < count; i++)
		used += (size_t)snprintf(text + used, size - used,
					 "  { protocol = \"tcp\"; external_port = %u;"
					 " internal_ip = \"198.51.100.1\"; },\n", 10000 + i);
	used += (size_t)snprintf(text + used, size - used,
				 "  { name = \"range\"; protocol = \"tcp\"; external_port = \"%s\";"
				 " internal_ip = \"198.51.100.1\"; }\n);\n",
				 duplicate_last ? "10000" : "20000-29999");
	return text;
}

static void test_ten_thousand_forwards_check_quickly(void **state)
{
	struct env *env = *state;
	char *text = many_forwards_text(10000, false);
	struct timespec start;

	assert_int_equal(load(env, text), 0);
	free(text);
	assert_int_equal(env->cfg.forward_count, 10001);
	assert_int_equal(forward_port_count(&env->cfg.forwards[10000]), 10000);
	clock_gettime(CLOCK_MONOTONIC, &start);
	assert_int_equal(config_finish(&env->cfg, env->err, sizeof env->err), 0);
	assert_true(seconds_since(&start) < 0.5);
}

static void test_duplicate_among_ten_thousand_is_found(void **state)
{
	struct env *env = *state;
	char *text = many_forwards_text(10000, true);
	struct timespec start;

	clock_gettime(CLOCK_MONOTONIC, &start);
	assert_int_equal(load_and_finish(env, text), -1);
	free(text);
	assert_error_at(env, 10002,
			"forward \"range\": tcp port 10000 on 0.0.0.0 overlaps forward \"tcp:10000\"");
	assert_true(seconds_since(&start) < 1.0);
}

/* ---- small helpers ------------------------------------------------------ */

static void test_proto_names_and_port_counts(void **state)
{
	struct forward fwd = { .external_port_first = 65535, .external_port_last = 65535 };

	(void)state;
	assert_string_equal(forward_proto_name(FORWARD_TCP), "tcp");
	assert_string_equal(forward_proto_name(FORWARD_UDP), "udp");
	assert_string_equal(forward_proto_name(FORWARD_BOTH), "both");
	assert_int_equal(forward_port_count(&fwd), 1);
	fwd.external_port_first = 1;
	assert_int_equal(forward_port_count(&fwd), 65535);
}

static void test_config_free_resets_to_defaults(void **state)
{
	struct env *env = *state;

	assert_int_equal(load(env, "log_level = \"error\";\n" ONE_FORWARD(
		"    protocol = \"tcp\"; external_port = 1; internal_ip = \"h\";\n")), 0);
	config_free(&env->cfg);
	assert_null(env->cfg.forwards);
	assert_int_equal(env->cfg.forward_count, 0);
	assert_int_equal(env->cfg.log_level, LOG_LEVEL_INFO);
}

/* ---- the FTP helper's fields --------------------------------------------- */

static void test_ftp_fields_are_read_and_the_global_range_is_inherited(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env,
		"ftp = { data_ports = \"30000-30999\"; data_timeout = 12.5; };\n"   /* 1 */
		"forwards = (\n"                                                    /* 2 */
		"  { name = \"a\"; protocol = \"tcp\"; external_port = 21;\n"       /* 3 */
		"    internal_ip = \"198.51.100.1\"; ftp = true; },\n"              /* 4 */
		"  { name = \"b\"; protocol = \"tcp\"; external_port = 2121;\n"     /* 5 */
		"    internal_ip = \"198.51.100.1\"; ftp = true;\n"                 /* 6 */
		"    ftp_data_ports = \"40000-40009\"; },\n"                        /* 7 */
		"  { name = \"c\"; protocol = \"tcp\"; external_port = 80;\n"       /* 8 */
		"    internal_ip = \"198.51.100.1\"; }\n"                           /* 9 */
		");\n"), 0);
	assert_int_equal(env->cfg.ftp_data_port_first, 30000);
	assert_int_equal(env->cfg.ftp_data_port_last, 30999);
	assert_true(env->cfg.ftp_data_timeout == 12.5);
	const struct forward *a = &env->cfg.forwards[0], *b = &env->cfg.forwards[1];
	const struct forward *c = &env->cfg.forwards[2];
	assert_true(a->ftp);
	assert_int_equal(a->ftp_data_port_first, 30000);
	assert_int_equal(a->ftp_data_port_last, 30999);
	assert_true(b->ftp);
	assert_int_equal(b->ftp_data_port_first, 40000);
	assert_int_equal(b->ftp_data_port_last, 40009);
	assert_false(c->ftp);
	assert_int_equal(c->ftp_data_port_first, 0);

	char line[512];
	assert_non_null(strstr(forward_describe(a, line, sizeof line),
			       "ftp helper, data ports 30000-30999"));
	assert_null(strstr(forward_describe(c, line, sizeof line), "ftp"));
}

static void test_ftp_defaults_let_the_kernel_pick_and_wait_30_s(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env, ONE_FORWARD(
		"    protocol = \"tcp\"; external_port = 21; internal_ip = \"198.51.100.1\";\n"
		"    ftp = true;\n")), 0);
	assert_true(env->cfg.ftp_data_timeout == 30.0);
	assert_int_equal(env->cfg.forwards[0].ftp_data_port_first, 0);
	char line[512];
	const char *text = forward_describe(&env->cfg.forwards[0], line, sizeof line);
	assert_non_null(strstr(text, "ftp helper"));
	assert_null(strstr(text, "data ports"));
}

static void test_ftp_errors_name_their_line(void **state)
{
	struct env *env = *state;
	static const struct error_case cases[] = {
		{ ONE_FORWARD("    protocol = \"udp\"; external_port = 21; internal_ip = \"h\";\n"
			      "    ftp = true;\n"),
		  4, "ftp = true needs protocol = \"tcp\", not \"udp\"" },
		{ ONE_FORWARD("    ftp = true;\n"
			      "    protocol = \"both\"; external_port = 21; internal_ip = \"h\";\n"),
		  3, "ftp = true needs protocol = \"tcp\", not \"both\"" },
		{ ONE_FORWARD("    protocol = \"tcp\"; external_port = 21; internal_ip = \"h\";\n"
			      "    ftp_data_ports = \"30000-30010\";\n"),
		  4, "ftp_data_ports needs ftp = true" },
		{ ONE_FORWARD("    protocol = \"tcp\"; external_port = 21; internal_ip = \"h\";\n"
			      "    ftp = \"yes\";\n"),
		  4, "ftp must be true or false" },
		{ ONE_FORWARD("    protocol = \"tcp\"; external_port = 21; internal_ip = \"h\";\n"
			      "    ftp = true; ftp_data_ports = \"3-1\";\n"),
		  4, "ftp_data_ports range 3-1 ends before it starts" },
		{ "ftp = { data_ports = \"0-10\"; };\n", 1, "ftp.data_ports 0 is outside 1-65535" },
		{ "ftp = { data_timeout = 0; };\n", 1, "ftp.data_timeout must be a number > 0" },
		{ "ftp = { data_timeout = -1.0; };\n", 1, "ftp.data_timeout must be a number > 0" },
		{ "ftp = {\n  passive = true;\n};\n", 2, "unknown field \"ftp.passive\"" },
		{ "ftp = 1;\n", 1, "ftp must be a group" },
	};

	check_load_errors(env, CASES(cases));
}

static void test_control_characters_in_values_come_escaped_in_one_line(void **state)
{
	struct env *env = *state;

	assert_int_equal(load(env, "ftp = { data_ports = \"31000-31999\n\"; };\n"), -1);
	assert_error_at(env, 1, "ftp.data_ports \"31000-31999\\x0a\" is not a port number");
	assert_null(strchr(env->err, '\n'));
}

static void test_ftp_data_ports_may_not_overlap_a_forward(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env,
		"forwards = (\n"                                                    /* 1 */
		"  { name = \"ftp\"; protocol = \"tcp\"; external_port = 21;\n"     /* 2 */
		"    internal_ip = \"127.0.0.1\"; ftp = true;\n"                    /* 3 */
		"    ftp_data_ports = \"30000-30009\"; },\n"                        /* 4 */
		"  { name = \"game\"; protocol = \"both\"; external_port = 30005;\n" /* 5 */
		"    internal_ip = \"127.0.0.1\"; }\n"                              /* 6 */
		");\n"), -1);
	assert_error_at(env, 2, "forward \"ftp\": ftp data ports 30000-30009 overlap the tcp "
			"ports of forward \"game\"");

	/* On another address, or for UDP only, there is no clash. */
	config_free(&env->cfg);
	assert_int_equal(load_and_finish(env,
		"forwards = (\n"
		"  { name = \"ftp\"; protocol = \"tcp\"; external_address = \"127.0.0.2\";\n"
		"    external_port = 21; internal_ip = \"127.0.0.1\"; ftp = true;\n"
		"    ftp_data_ports = \"30000-30009\"; },\n"
		"  { name = \"web\"; protocol = \"tcp\"; external_address = \"127.0.0.3\";\n"
		"    external_port = 30005; internal_ip = \"127.0.0.1\"; },\n"
		"  { name = \"dns\"; protocol = \"udp\"; external_address = \"127.0.0.2\";\n"
		"    external_port = 30006; internal_ip = \"127.0.0.1\"; }\n"
		");\n"), 0);
}

/* ---- what a reload compares, and reads again ------------------------------- */

/* The finished forward of a file holding only `body` (one forward group), after `blank` lines. */
static struct forward finished_forward_after(struct env *env, unsigned blank, const char *body)
{
	char text[1024];
	struct forward fwd;

	snprintf(text, sizeof text, "%.*sforwards = (\n  { %s }\n);\n", (int)blank,
		 "\n\n\n\n\n\n\n\n", body);
	config_free(&env->cfg);
	if (load_and_finish(env, text) != 0 || env->cfg.forward_count != 1) {
		print_error("%s\nrejected: %s\n", text, env->err);
		fail();
	}
	fwd = env->cfg.forwards[0];
	config_free(&env->cfg);
	return fwd;
}

static struct forward finished_forward(struct env *env, const char *body)
{
	return finished_forward_after(env, 0, body);
}

#define PLACE_TCP "protocol = \"tcp\"; external_address = \"127.0.0.1\"; external_port = 8080;"
#define TARGET "internal_ip = \"127.0.0.1\"; internal_port = 80;"

static void test_same_rule_needs_every_field_but_the_origin(void **state)
{
	struct env *env = *state;
	const struct forward base = finished_forward(env, "name = \"web\"; " PLACE_TCP " " TARGET);
	/* same_target: whether connections may follow (-1: not asserted). */
	struct {
		const char *body;
		const char *what;
		int same_target;
	} rule_changes[] = {
		{ "name = \"www\"; " PLACE_TCP " " TARGET, "name", 1 },
		{ "name = \"web\"; " PLACE_TCP " internal_ip = \"127.0.0.2\"; internal_port = 80;",
		  "target address", 0 },
		/* The same address or not, as localhost resolves here. */
		{ "name = \"web\"; " PLACE_TCP " internal_ip = \"localhost\"; internal_port = 80;",
		  "target host as written", -1 },
		{ "name = \"web\"; " PLACE_TCP " internal_ip = \"127.0.0.1\"; internal_port = 81;",
		  "target port", 0 },
		{ "name = \"web\"; " PLACE_TCP " " TARGET " udp_idle_timeout = 5;",
		  "udp_idle_timeout", 1 },
		{ "name = \"web\"; " PLACE_TCP " " TARGET " ftp = true;", "ftp", 0 },
		/* A disabled forward is not resolved: nothing to follow it to anyway. */
		{ "name = \"web\"; " PLACE_TCP " " TARGET " enabled = false;", "enabled", -1 },
	};

	for (size_t i = 0; i < sizeof rule_changes / sizeof rule_changes[0]; i++) {
		struct forward other = finished_forward(env, rule_changes[i].body);
		int want_target = rule_changes[i].same_target;
		if (!forward_same_place(&base, &other) || !forward_same_place(&other, &base) ||
		    forward_same_rule(&base, &other) || forward_same_rule(&other, &base) ||
		    (want_target >= 0 && forward_same_target(&base, &other) != want_target) ||
		    (want_target >= 0 && forward_same_target(&other, &base) != want_target)) {
			print_error("another %s: same_place %d, same_target %d, same_rule %d;"
				    " expected 1, %d, 0\n", rule_changes[i].what,
				    forward_same_place(&base, &other),
				    forward_same_target(&base, &other),
				    forward_same_rule(&base, &other), want_target);
			fail();
		}
	}

	/* enabled alone (a file's disabled forward also lacks its resolved address). */
	struct forward off = base;
	off.enabled = false;
	assert_true(forward_same_place(&base, &off));
	assert_false(forward_same_rule(&base, &off));
	assert_false(forward_same_rule(&off, &base));

	/* Itself, and a copy from elsewhere: only the origin differs. */
	assert_true(forward_same_rule(&base, &base));
	assert_true(forward_same_target(&base, &base));
	struct forward moved = finished_forward_after(env, 3, "name = \"web\"; " PLACE_TCP " " TARGET);
	assert_string_not_equal(moved.origin, base.origin);
	assert_true(forward_same_rule(&base, &moved));
	/* The counters pointer is not configuration. */
	moved.stats = (struct forward_stats *)&moved;
	assert_true(forward_same_rule(&base, &moved));

	/* The FTP helper's data ports are part of the rule. */
	struct forward ftp_a = finished_forward(env, PLACE_TCP " " TARGET " ftp = true;"
					       " ftp_data_ports = \"30000-30009\";");
	struct forward ftp_b = finished_forward(env, PLACE_TCP " " TARGET " ftp = true;"
					       " ftp_data_ports = \"30000-30019\";");
	assert_true(forward_same_place(&ftp_a, &ftp_b));
	assert_true(forward_same_target(&ftp_a, &ftp_b));
	assert_false(forward_same_rule(&ftp_a, &ftp_b));
}

static void test_source_client_is_read_and_relay_is_the_default(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env,
		"forwards = (\n"                                                    /* 1 */
		"  { name = \"tp\"; protocol = \"both\"; external_port = 8080;\n"   /* 2 */
		"    internal_ip = \"198.51.100.1\"; source = \"client\"; },\n"     /* 3 */
		"  { name = \"plain\"; protocol = \"tcp\"; external_port = 8081;\n" /* 4 */
		"    internal_ip = \"198.51.100.1\"; },\n"                          /* 5 */
		"  { name = \"relay\"; protocol = \"udp\"; external_port = 8082;\n" /* 6 */
		"    internal_ip = \"198.51.100.1\"; source = \"relay\"; }\n"       /* 7 */
		");\n"), 0);
	assert_int_equal(env->cfg.forward_count, 3);
	assert_true(env->cfg.forwards[0].source_client);
	assert_false(env->cfg.forwards[1].source_client);
	assert_false(env->cfg.forwards[2].source_client);

	/* Not a change connections may follow across a reload. */
	struct forward relay = finished_forward(env, PLACE_TCP " " TARGET);
	struct forward client = finished_forward(env, PLACE_TCP " " TARGET " source = \"client\";");
	assert_false(relay.source_client);
	assert_true(client.source_client);
	assert_true(forward_same_place(&relay, &client));
	assert_false(forward_same_target(&relay, &client));
	assert_false(forward_same_rule(&relay, &client));
}

static void test_source_errors_name_their_line(void **state)
{
	struct env *env = *state;
	static const struct error_case cases[] = {
		{ ONE_FORWARD("    protocol = \"tcp\"; external_port = 80; internal_ip = \"h\";\n"
			      "    source = \"server\";\n"),
		  4, "source must be \"relay\" or \"client\"" },
		{ ONE_FORWARD("    protocol = \"tcp\"; external_port = 80; internal_ip = \"h\";\n"
			      "    source = \"Client\";\n"),
		  4, "source must be \"relay\" or \"client\"" },
		{ ONE_FORWARD("    protocol = \"tcp\"; external_port = 80; internal_ip = \"h\";\n"
			      "    source = 1;\n"),
		  4, "source must be \"relay\" or \"client\"" },
		{ ONE_FORWARD("    protocol = \"tcp\"; external_port = 21; internal_ip = \"h\";\n"
			      "    source = \"client\";\n"
			      "    ftp = true;\n"),
		  4, "source = \"client\" does not go with ftp = true" },
		{ ONE_FORWARD("    ftp = true;\n"
			      "    protocol = \"tcp\"; external_port = 21; internal_ip = \"h\";\n"
			      "    source = \"client\";\n"),
		  5, "source = \"client\" does not go with ftp = true" },
		{ "source = \"client\";\n", 1, "unknown field \"source\"" },
	};

	check_load_errors(env, CASES(cases));
	/* source = "relay" beside ftp is the default written out: accepted. */
	assert_int_equal(load(env, ONE_FORWARD(
		"    protocol = \"tcp\"; external_port = 21; internal_ip = \"h\";\n"
		"    ftp = true; source = \"relay\";\n")), 0);
	assert_false(env->cfg.forwards[0].source_client);
}

static void test_same_place_is_protocol_address_and_port_range(void **state)
{
	struct env *env = *state;
	const struct forward base = finished_forward(env,
		"protocol = \"tcp\"; external_address = \"127.0.0.1\"; external_port = \"8080-8081\";"
		" internal_ip = \"127.0.0.1\"; internal_port = \"80-81\";");
	static const char *const other_places[] = {
		"protocol = \"udp\"; external_address = \"127.0.0.1\"; external_port = \"8080-8081\";"
		" internal_ip = \"127.0.0.1\"; internal_port = \"80-81\";",
		"protocol = \"both\"; external_address = \"127.0.0.1\"; external_port = \"8080-8081\";"
		" internal_ip = \"127.0.0.1\"; internal_port = \"80-81\";",
		"protocol = \"tcp\"; external_address = \"127.0.0.2\"; external_port = \"8080-8081\";"
		" internal_ip = \"127.0.0.1\"; internal_port = \"80-81\";",
		"protocol = \"tcp\"; external_address = \"0.0.0.0\"; external_port = \"8080-8081\";"
		" internal_ip = \"127.0.0.1\"; internal_port = \"80-81\";",
		"protocol = \"tcp\"; external_address = \"::1\"; external_port = \"8080-8081\";"
		" internal_ip = \"127.0.0.1\"; internal_port = \"80-81\";",
		"protocol = \"tcp\"; external_address = \"127.0.0.1\"; external_port = 8080;"
		" internal_ip = \"127.0.0.1\"; internal_port = 80;",
		"protocol = \"tcp\"; external_address = \"127.0.0.1\"; external_port = \"8080-8082\";"
		" internal_ip = \"127.0.0.1\"; internal_port = \"80-82\";",
		"protocol = \"tcp\"; external_address = \"127.0.0.1\"; external_port = \"8081-8082\";"
		" internal_ip = \"127.0.0.1\"; internal_port = \"80-81\";",
	};

	for (size_t i = 0; i < sizeof other_places / sizeof other_places[0]; i++) {
		struct forward other = finished_forward(env, other_places[i]);
		if (forward_same_place(&base, &other) || forward_same_place(&other, &base) ||
		    forward_same_target(&base, &other) || forward_same_rule(&base, &other)) {
			print_error("the same place as the base: %s\n", other_places[i]);
			fail();
		}
	}

	/* The address compares as an address: [::1] and ::1, wan_address and 0.0.0.0. */
	struct forward v6 = finished_forward(env, "protocol = \"udp\"; external_address = \"::1\";"
					     " external_port = 53; internal_ip = \"198.51.100.1\";");
	struct forward v6_bracketed = finished_forward(env,
		"protocol = \"udp\"; external_address = \"[::1]\"; external_port = 53;"
		" internal_ip = \"198.51.100.1\";");
	assert_true(forward_same_place(&v6, &v6_bracketed));
	struct forward wan = finished_forward(env, "protocol = \"udp\"; external_port = 53;"
					      " internal_ip = \"198.51.100.1\";");
	struct forward wildcard = finished_forward(env, "protocol = \"udp\"; external_port = 53;"
						   " external_address = \"0.0.0.0\";"
						   " internal_ip = \"198.51.100.1\";");
	assert_true(forward_same_place(&wan, &wildcard));
	assert_false(forward_same_place(&wan, &v6));

	/* A -L spec and a file forward with the same rule: only the origin differs. */
	char err[1024];
	struct config specs;
	config_defaults(&specs);
	assert_int_equal(config_add_spec(&specs, "udp:53:198.51.100.1:53", err, sizeof err), 0);
	assert_int_equal(config_finish(&specs, err, sizeof err), 0);
	assert_string_equal(specs.forwards[0].name, wan.name);
	assert_string_not_equal(specs.forwards[0].origin, wan.origin);
	assert_true(forward_same_rule(&specs.forwards[0], &wan));
	config_free(&specs);
}

/* A file of two forwards, the first on line 3, and the specs after it. */
static const char sources_file[] =
	"drain_timeout = 4;\n"                                                       /* 1 */
	"forwards = (\n"                                                             /* 2 */
	"  { name = \"a\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"  /* 3 */
	"    external_port = 8080; internal_ip = \"localhost\"; internal_port = 80; },\n"
	"  { name = \"b\"; protocol = \"udp\"; external_port = 5353; internal_ip = \"::1\";\n"
	"    internal_port = 53; enabled = false; }\n"
	");\n";

/*
 * admin.rules_file: the daemon's own forwards, read after the hand-written
 * file and the specs, marked, and nothing but forwards.
 */
static void test_rules_file_comes_last_and_is_marked(void **state)
{
	struct env *env = *state;
	char text[1024];
	snprintf(text, sizeof text,
		 "admin = { listen = \"127.0.0.1:9330\"; rules_file = \"%s\"; };\n"
		 "forwards = (\n"
		 "  { name = \"hand\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
		 "    external_port = 8080; internal_ip = \"127.0.0.2\"; internal_port = 80; }\n"
		 ");\n", env->include_path);
	write_file(env->path, text);
	const char *const specs[] = { "tcp:127.0.0.1:9090:127.0.0.2:90" };
	const struct config_sources sources = { .path = env->path, .specs = specs, .spec_count = 1 };

	/* No rules file yet: nothing was added through the API. */
	assert_int_equal(config_load_sources(&env->cfg, &sources, env->err, sizeof env->err), 0);
	assert_string_equal(env->cfg.admin_rules_file, env->include_path);
	assert_int_equal(env->cfg.forward_count, 2);
	assert_false(env->cfg.forwards[0].from_rules_file);
	assert_false(env->cfg.forwards[1].from_rules_file);
	config_free(&env->cfg);

	write_file(env->include_path,
		   "forwards = ( { name = \"api\"; protocol = \"udp\"; external_address = \"127.0.0.1\";\n"
		   "  external_port = 5353; internal_ip = \"127.0.0.2\"; internal_port = 53; } );\n");
	assert_int_equal(config_load_sources(&env->cfg, &sources, env->err, sizeof env->err), 0);
	assert_int_equal(env->cfg.forward_count, 3);
	assert_string_equal(env->cfg.forwards[2].name, "api");
	assert_true(env->cfg.forwards[2].from_rules_file);
	assert_false(env->cfg.forwards[0].from_rules_file);
	char origin[256];
	snprintf(origin, sizeof origin, "%s:1", env->include_path);
	assert_string_equal(env->cfg.forwards[2].origin, origin);
	config_free(&env->cfg);

	/* Anything but forwards there is an error naming its line. */
	write_file(env->include_path, "forwards = ();\nworkers = 4;\n");
	assert_int_equal(config_load_sources(&env->cfg, &sources, env->err, sizeof env->err), -1);
	snprintf(origin, sizeof origin, "%s:2: ", env->include_path);
	assert_non_null(strstr(env->err, origin));
	assert_non_null(strstr(env->err, "forwards only"));

	/* Its rules are checked against the hand-written ones like any others. */
	write_file(env->include_path,
		   "forwards = ( { name = \"dup\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
		   "  external_port = 8080; internal_ip = \"127.0.0.3\"; internal_port = 80; } );\n");
	assert_int_equal(config_load_sources(&env->cfg, &sources, env->err, sizeof env->err), -1);
	assert_non_null(strstr(env->err, "overlaps"));
}

static void test_rules_file_must_be_a_path(void **state)
{
	struct env *env = *state;
	assert_int_equal(load(env, "admin = { listen = \"127.0.0.1:9330\"; rules_file = \"\"; };\n"), -1);
	assert_non_null(strstr(env->err, ":1: admin.rules_file must be a non-empty path"));
}

static void test_load_sources_reads_the_file_then_the_specs_and_finishes(void **state)
{
	struct env *env = *state;
	const char *const specs[] = { "tcp:127.0.0.1:9090:127.0.0.1:90", "udp:6000-6001:[::1]:60-61" };
	const struct config_sources sources = { .path = env->path, .specs = specs, .spec_count = 2 };
	char origin[256];

	write_file(env->path, sources_file);
	assert_int_equal(config_load_sources(&env->cfg, &sources, env->err, sizeof env->err), 0);
	assert_true(env->cfg.drain_timeout == 4.0);
	assert_int_equal(env->cfg.forward_count, 4);
	assert_string_equal(env->cfg.forwards[0].name, "a");
	snprintf(origin, sizeof origin, "%s:3", env->path);
	assert_string_equal(env->cfg.forwards[0].origin, origin);
	assert_string_equal(env->cfg.forwards[1].name, "b");
	assert_false(env->cfg.forwards[1].enabled);
	assert_string_equal(env->cfg.forwards[2].origin, "-L 'tcp:127.0.0.1:9090:127.0.0.1:90'");
	assert_string_equal(env->cfg.forwards[3].origin, "-L 'udp:6000-6001:[::1]:60-61'");
	/* Finished: names resolved, external addresses filled in. */
	assert_int_not_equal(env->cfg.forwards[0].internal_addr.len, 0);
	assert_string_equal(env->cfg.forwards[1].external_host, "0.0.0.0");
	assert_string_equal(env->cfg.forwards[3].external_host, "0.0.0.0");
	assert_int_equal(env->cfg.forwards[3].external_port_last, 6001);

	/* Read again, into a cfg that was freed: the same table. */
	struct forward first = env->cfg.forwards[0];
	config_free(&env->cfg);
	assert_int_equal(config_load_sources(&env->cfg, &sources, env->err, sizeof env->err), 0);
	assert_int_equal(env->cfg.forward_count, 4);
	assert_true(forward_same_rule(&first, &env->cfg.forwards[0]));
	config_free(&env->cfg);

	/* No file: the specs alone, with the defaults. */
	const struct config_sources only_specs = { .path = NULL, .specs = specs, .spec_count = 2 };
	assert_int_equal(config_load_sources(&env->cfg, &only_specs, env->err, sizeof env->err), 0);
	assert_int_equal(env->cfg.forward_count, 2);
	assert_true(env->cfg.drain_timeout == 0.0);
	config_free(&env->cfg);

	/* Into a cfg never initialised (as reload_run's): config_defaults comes first. */
	struct config raw;
	memset(&raw, 0xa5, sizeof raw);
	assert_int_equal(config_load_sources(&raw, &only_specs, env->err, sizeof env->err), 0);
	assert_int_equal(raw.forward_count, 2);
	assert_int_equal(raw.log_level, LOG_LEVEL_INFO);
	assert_true(raw.drain_timeout == 0.0);
	assert_string_equal(raw.wan_address, "0.0.0.0");
	config_free(&raw);

	/* Nothing at all: an empty table. */
	const struct config_sources nothing = { .path = NULL, .specs = NULL, .spec_count = 0 };
	assert_int_equal(config_load_sources(&env->cfg, &nothing, env->err, sizeof env->err), 0);
	assert_int_equal(env->cfg.forward_count, 0);
}

/* A failed load leaves cfg as config_defaults does, whichever source failed. */
static void assert_freed_defaults(const struct config *cfg)
{
	assert_null(cfg->forwards);
	assert_int_equal(cfg->forward_count, 0);
	assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
	assert_true(cfg->drain_timeout == 0.0);
	assert_string_equal(cfg->wan_address, "0.0.0.0");
}

static void test_load_sources_error_names_file_and_line_and_frees(void **state)
{
	struct env *env = *state;
	const char *const specs[] = { "tcp:127.0.0.1:9090:127.0.0.1:90" };
	const struct config_sources sources = { .path = env->path, .specs = specs, .spec_count = 1 };

	/* The file: its line, after settings and a forward were already read. */
	write_file(env->path,
		   "log_level = \"debug\";\n"                                       /* 1 */
		   "drain_timeout = 3;\n"                                           /* 2 */
		   "forwards = (\n"                                                 /* 3 */
		   "  { protocol = \"tcp\"; external_port = 1; internal_ip = \"h\"; },\n"
		   "  { protocol = \"tcp\"; external_port = 70000; internal_ip = \"h\"; }\n"
		   ");\n");
	assert_int_equal(config_load_sources(&env->cfg, &sources, env->err, sizeof env->err), -1);
	assert_error_at(env, 5, "external_port 70000 is outside 1-65535");
	assert_freed_defaults(&env->cfg);

	/* A syntax error. */
	write_file(env->path, "wan_address = \"127.0.0.1\";\n\nforwards = (\n  { name = ; }\n);\n");
	assert_int_equal(config_load_sources(&env->cfg, &sources, env->err, sizeof env->err), -1);
	assert_error_at(env, 4, "");
	assert_freed_defaults(&env->cfg);

	/* A bad spec, after a good file. */
	write_file(env->path, sources_file);
	const char *const bad_specs[] = { "tcp:127.0.0.1:9090:127.0.0.1:90", "tcp:99999:h:1" };
	const struct config_sources bad = { .path = env->path, .specs = bad_specs, .spec_count = 2 };
	assert_int_equal(config_load_sources(&env->cfg, &bad, env->err, sizeof env->err), -1);
	assert_true(strncmp(env->err, "-L 'tcp:99999:h:1': ", 20) == 0);
	assert_freed_defaults(&env->cfg);

	/* config_finish: a spec that overlaps the file's forward, named at the file's line. */
	const char *const overlapping[] = { "tcp:127.0.0.1:8080:127.0.0.1:90" };
	const struct config_sources clash = { .path = env->path, .specs = overlapping,
					      .spec_count = 1 };
	assert_int_equal(config_load_sources(&env->cfg, &clash, env->err, sizeof env->err), -1);
	assert_non_null(strstr(env->err, "overlaps"));
	assert_non_null(strstr(env->err, "tcp port 8080 on 127.0.0.1"));
	assert_freed_defaults(&env->cfg);

	/* A file that is not there. */
	unlink(env->path);
	assert_int_equal(config_load_sources(&env->cfg, &sources, env->err, sizeof env->err), -1);
	char expected[512];
	snprintf(expected, sizeof expected, "%s: cannot read: No such file or directory", env->path);
	assert_string_equal(env->err, expected);
	assert_freed_defaults(&env->cfg);
}

/* ---- admission control: limits, source rules, keepalive, user and group -- */

/* One forward (lines 3-4 of ONE_FORWARD's text, required fields first) plus `line4`. */
#define FWD_WITH(line4) ONE_FORWARD(                                                  \
	"    protocol = \"tcp\"; external_port = 8080; internal_ip = \"198.51.100.1\";\n" line4)

static const char admission_file[] =
	"max_connections = 5000;\n"                                            /* 1 */
	"tcp = { keepalive = 120; };\n"                                        /* 2 */
	"udp = { unreplied_timeout = 7.5; max_flows = 0; };\n"                 /* 3 */
	"forwards = (\n"                                                       /* 4 */
	"  { name = \"web\"; protocol = \"both\"; external_port = 8080;\n"    /* 5 */
	"    internal_ip = \"198.51.100.1\";\n"                               /* 6 */
	"    max_connections = 100; max_connections_per_source = 0;\n"        /* 7 */
	"    max_flows_per_source = 16;\n"                                     /* 8 */
	"    allow = [ \"192.168.0.0/16\", \"2001:db8::/32\" ];\n"            /* 9 */
	"    deny = ( \"0.0.0.0/0\", \"::/0\" );\n"                           /* 10 */
	"    freebind = true; }\n"                                             /* 11 */
	");\n";

static bool admits(const struct forward *fwd, const char *address)
{
	struct sockaddr_storage ss;
	struct net_addr addr;

	assert_int_equal(net_addr_parse_ip(address, 40000, &addr), 0);
	memcpy(&ss, &addr.ss, sizeof ss);
	return acl_allows(&fwd->acl, (const struct sockaddr *)&ss);
}

static void test_admission_fields_are_read(void **state)
{
	struct env *env = *state;
	const struct config *cfg = &env->cfg;
	char text[ACL_ENTRY_STRLEN];

	assert_int_equal(load_and_finish(env, admission_file), 0);
	assert_int_equal(cfg->max_connections, 5000);
	assert_int_equal(cfg->tcp_keepalive, 120);
	assert_true(cfg->udp_unreplied_timeout == 7.5);
	assert_int_equal(cfg->udp_max_flows, 0);
	const struct forward *web = &cfg->forwards[0];
	assert_int_equal(web->max_connections, 100);
	assert_int_equal(web->max_connections_per_source, 0);
	assert_int_equal(web->max_flows_per_source, 16);
	assert_true(web->freebind);
	assert_int_equal(web->acl.count, 4);
	assert_true(web->acl.entries[0].allow);
	assert_string_equal(acl_entry_format(&web->acl.entries[0], text, sizeof text),
			    "192.168.0.0/16");
	assert_true(web->acl.entries[1].allow);
	assert_string_equal(acl_entry_format(&web->acl.entries[1], text, sizeof text),
			    "2001:db8::/32");
	assert_false(web->acl.entries[2].allow);
	assert_false(web->acl.entries[3].allow);
	assert_true(admits(web, "192.168.3.4"));
	assert_true(admits(web, "::ffff:192.168.3.4"));
	assert_true(admits(web, "2001:db8:5::1"));
	assert_false(admits(web, "10.0.0.1"));
	assert_false(admits(web, "::ffff:10.0.0.1"));
	assert_false(admits(web, "2001:db9::1"));

	/* The edges that are allowed. */
	assert_int_equal(load(env, "max_connections = 16777216;\n"
				   "tcp = { keepalive = 0; };\n"
				   "udp = { max_flows = 1; unreplied_timeout = 1e9; };\n"), 0);
	assert_int_equal(cfg->max_connections, 16777216);
	assert_int_equal(cfg->tcp_keepalive, 0);
	assert_int_equal(cfg->udp_max_flows, 1);
	assert_int_equal(load(env, "tcp = { keepalive = 32767; };\n"), 0);
	assert_int_equal(cfg->tcp_keepalive, 32767);
	assert_int_equal(load(env, "tcp = { keepalive = 45.0; };\n"), 0);
	assert_int_equal(cfg->tcp_keepalive, 45);
	config_free(&env->cfg);
	assert_int_equal(load(env, FWD_WITH("    max_connections = 16777216; allow = [];\n"
					    "    max_flows_per_source = 16777216; deny = ();\n"
					    "    max_connections_per_source = 1; freebind = false;\n")), 0);
	const struct forward *edge = &cfg->forwards[0];
	assert_int_equal(edge->max_connections, 16777216);
	assert_int_equal(edge->max_flows_per_source, 16777216);
	assert_int_equal(edge->max_connections_per_source, 1);
	assert_int_equal(edge->acl.count, 0);
	assert_false(edge->freebind);
}

static void test_admission_defaults_hold_for_every_forward(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env, FWD_WITH("")), 0);
	assert_int_equal(config_add_spec(&env->cfg, "udp:5353:198.51.100.1:53", env->err,
					 sizeof env->err), 0);
	for (size_t i = 0; i < env->cfg.forward_count; i++) {
		const struct forward *fwd = &env->cfg.forwards[i];
		assert_int_equal(fwd->max_connections, 0);
		assert_int_equal(fwd->max_connections_per_source, 256);
		assert_int_equal(fwd->max_flows_per_source, 1024);
		assert_int_equal(fwd->acl.count, 0);
		assert_false(fwd->freebind);
		assert_true(admits(fwd, "203.0.113.1"));
	}
	assert_int_equal(env->cfg.tcp_keepalive, 60);
	assert_true(env->cfg.udp_unreplied_timeout == 30.0);
	assert_int_equal(env->cfg.max_connections, 0);
	assert_int_equal(env->cfg.udp_max_flows, 0);
}

static void test_admission_errors_name_their_line(void **state)
{
	static const struct error_case cases[] = {
		{ "max_connections = -1;\n", 1,
		  "max_connections must be an integer from 0 (automatic) to 16777216" },
		{ "\nmax_connections = 16777217;\n", 2,
		  "max_connections must be an integer from 0 (automatic) to 16777216" },
		{ "max_connections = \"100\";\n", 1, "max_connections must be an integer" },
		{ "max_connections = 1.5;\n", 1, "max_connections must be an integer" },
		{ "tcp = {\n  keepalive = -1;\n};\n", 2,
		  "tcp.keepalive must be a whole number of seconds from 0 (off) to 32767" },
		{ "tcp = {\n  keepalive = 32768;\n};\n", 2,
		  "tcp.keepalive must be a whole number of seconds from 0 (off) to 32767" },
		{ "tcp = {\n  keepalive = 1.5;\n};\n", 2, "tcp.keepalive must be a whole number" },
		{ "tcp = {\n  keepalive = \"60\";\n};\n", 2, "tcp.keepalive must be a whole number" },
		{ "tcp = {\n  keepalive = true;\n};\n", 2, "tcp.keepalive must be a whole number" },
		{ "udp = {\n  unreplied_timeout = 0;\n};\n", 2,
		  "udp.unreplied_timeout must be a number > 0" },
		{ "udp = {\n  unreplied_timeout = -3;\n};\n", 2,
		  "udp.unreplied_timeout must be a number > 0, not -3" },
		{ "udp = {\n  unreplied_timeout = \"30\";\n};\n", 2,
		  "udp.unreplied_timeout must be a number > 0" },
		{ "udp = {\n\n  unreplied_timeout = 1e12;\n};\n", 3,
		  "udp.unreplied_timeout 1e+12 is too large" },
		{ "udp = {\n  unreplied = 5;\n};\n", 2, "unknown field \"udp.unreplied\"" },
		{ FWD_WITH("    max_connections = -1;\n"), 4,
		  "forward #1: max_connections must be an integer from 0 (no limit of its own) to "
		  "16777216" },
		{ FWD_WITH("    max_connections_per_source = 16777217;\n"), 4,
		  "forward #1: max_connections_per_source must be an integer from 0 (no limit) to "
		  "16777216" },
		{ FWD_WITH("    max_flows_per_source = true;\n"), 4,
		  "max_flows_per_source must be an integer from 0 (no limit) to 16777216" },
		{ FWD_WITH("    max_flows_per_source = 2.0;\n"), 4,
		  "max_flows_per_source must be an integer" },
		{ FWD_WITH("    freebind = 1;\n"), 4, "freebind must be true or false" },
		{ FWD_WITH("    max_flows = 5;\n"), 4, "unknown field \"max_flows\"" },
		{ FWD_WITH("    allow = \"10.0.0.0/8\";\n"), 4, "allow must be a list of networks" },
		{ FWD_WITH("    deny = { a = 1; };\n"), 4, "deny must be a list of networks" },
		{ FWD_WITH("    allow = [ 10 ];\n"), 4, "allow entry #1 must be a string" },
		{ FWD_WITH("    deny = ( \"10.0.0.0/8\", [ \"x\" ] );\n"), 4,
		  "deny entry #2 must be a string" },
		{ FWD_WITH("    deny = [ \"10.0.0.0/8\",\n      \"10.0.0.1/8\" ];\n"), 5,
		  "forward #1: deny entry 10.0.0.1/8: host bits set; did you mean 10.0.0.0/8?" },
		{ FWD_WITH("    allow = (\n\n      \"2001:db8::1/32\" );\n"), 6,
		  "allow entry 2001:db8::1/32: host bits set; did you mean 2001:db8::/32?" },
		{ FWD_WITH("    allow = [ \"10.0.0.0/33\" ];\n"), 4,
		  "allow entry 10.0.0.0/33: the prefix length must be a number from 0 to 32" },
		{ FWD_WITH("    deny = [ \"::/129\" ];\n"), 4,
		  "deny entry ::/129: the prefix length must be a number from 0 to 128" },
		{ FWD_WITH("    allow = [ \"myhost\" ];\n"), 4,
		  "allow entry myhost: not an IPv4 or IPv6 address or network" },
		{ FWD_WITH("    allow = [ \"\" ];\n"), 4, "allow entry : not an IPv4 or IPv6" },
	};

	check_load_errors(*state, CASES(cases));
}

static void test_acl_error_message_is_exact(void **state)
{
	struct env *env = *state;

	assert_int_equal(load(env, ONE_FORWARD(
		"    name = \"web\"; protocol = \"tcp\"; external_port = 8080;\n"
		"    internal_ip = \"198.51.100.1\"; deny = [ \"10.0.0.1/8\" ];\n")), -1);
	assert_error_equals(env, 4, "forward \"web\": deny entry 10.0.0.1/8: host bits set; "
				    "did you mean 10.0.0.0/8?");
}

/* 64 entries fit, in allow and deny together; the 65th is an error at its own line. */
static void test_acl_holds_at_most_64_entries(void **state)
{
	struct env *env = *state;
	size_t size = 8192, used = 0;
	char *text = malloc(size);

	assert_non_null(text);
	used += (size_t)snprintf(text + used, size - used,
				 "forwards = (\n  {\n    protocol = \"tcp\"; external_port = 8080;"
				 " internal_ip = \"198.51.100.1\";\n    allow = [\n");   /* 1-4 */
	for (unsigned i = 0; i < 40; i++)                                      /* 5-44 */
		used += (size_t)snprintf(text + used, size - used, "      \"10.%u.0.0/16\",\n", i);
	used += (size_t)snprintf(text + used, size - used, "      \"10.40.0.0/16\" ];\n"); /* 45 */
	used += (size_t)snprintf(text + used, size - used, "    deny = [\n");            /* 46 */
	for (unsigned i = 0; i < 23; i++)                                      /* 47-69 */
		used += (size_t)snprintf(text + used, size - used, "      \"172.16.%u.0/24\",\n", i);
	/* Entry 65 on line 70. */
	snprintf(text + used, size - used, "      \"0.0.0.0/0\" ];\n  }\n);\n");
	assert_int_equal(load(env, text), -1);
	assert_error_at(env, 70, "allow and deny hold at most 64 entries together");

	/* Without the last entry: 64, accepted. */
	char *last = strstr(text, "      \"172.16.22.0/24\",\n");
	assert_non_null(last);
	snprintf(last, size - (size_t)(last - text), "      \"172.16.22.0/24\" ];\n  }\n);\n");
	assert_int_equal(load(env, text), 0);
	assert_int_equal(env->cfg.forwards[0].acl.count, ACL_MAX_ENTRIES);
	free(text);
}

/* The lists are checked in the order the file has them: the first match wins. */
static void test_acl_order_is_the_order_in_the_file(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env,
		"forwards = (\n"
		"  { name = \"allow-list\"; protocol = \"tcp\"; external_port = 8080;\n"
		"    internal_ip = \"198.51.100.1\";\n"
		"    allow = [ \"10.0.0.0/8\" ]; deny = [ \"0.0.0.0/0\", \"::/0\" ]; },\n"
		"  { name = \"deny-first\"; protocol = \"tcp\"; external_port = 8081;\n"
		"    internal_ip = \"198.51.100.1\";\n"
		"    deny = [ \"0.0.0.0/0\" ]; allow = [ \"10.0.0.0/8\" ]; },\n"
		"  { name = \"hole\"; protocol = \"tcp\"; external_port = 8082;\n"
		"    internal_ip = \"198.51.100.1\";\n"
		"    deny = [ \"10.0.0.66\" ]; allow = [ \"10.0.0.0/24\" ]; }\n"
		");\n"), 0);
	const struct forward *allow_list = &env->cfg.forwards[0];
	const struct forward *deny_first = &env->cfg.forwards[1];
	const struct forward *hole = &env->cfg.forwards[2];

	assert_true(allow_list->acl.entries[0].allow);
	assert_true(admits(allow_list, "10.1.2.3"));
	assert_false(admits(allow_list, "11.1.2.3"));
	assert_false(admits(allow_list, "2001:db8::1"));

	assert_false(deny_first->acl.entries[0].allow);
	assert_false(admits(deny_first, "10.1.2.3"));
	assert_false(admits(deny_first, "11.1.2.3"));
	assert_true(admits(deny_first, "2001:db8::1"));   /* 0.0.0.0/0 is IPv4 only */

	assert_false(admits(hole, "10.0.0.66"));
	assert_true(admits(hole, "10.0.0.65"));
	assert_true(admits(hole, "11.0.0.1"));             /* nothing matches: allowed */
}

/* A reload tells a changed rule from an unchanged one by every admission field too. */
static void test_admission_fields_are_part_of_the_rule(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env, admission_file), 0);
	const struct forward base = env->cfg.forwards[0];
	struct forward other = base;
	assert_true(forward_same_rule(&base, &other));

	other.max_connections++;
	assert_false(forward_same_rule(&base, &other));
	assert_true(forward_same_target(&base, &other));
	other = base;
	other.max_connections_per_source++;
	assert_false(forward_same_rule(&base, &other));
	other = base;
	other.max_flows_per_source++;
	assert_false(forward_same_rule(&base, &other));
	other = base;
	other.freebind = !other.freebind;
	assert_false(forward_same_rule(&base, &other));
	other = base;
	other.acl.entries[3].allow = true;
	assert_false(forward_same_rule(&base, &other));
	other = base;
	other.acl.count--;
	assert_false(forward_same_rule(&base, &other));
	assert_true(forward_same_target(&base, &other));
}

static void test_user_and_group_are_resolved_when_read(void **state)
{
	struct env *env = *state;
	const struct config *cfg = &env->cfg;
	struct passwd *root = getpwnam("root");
	struct group *root_group = getgrnam("root");

	assert_non_null(root);
	assert_non_null(root_group);
	gid_t root_primary = root->pw_gid, root_gid = root_group->gr_gid;

	assert_int_equal(load(env, "user = \"root\";\n"), 0);
	assert_true(cfg->has_user);
	assert_false(cfg->has_group);
	assert_string_equal(cfg->user, "root");
	assert_int_equal(cfg->run_uid, 0);
	assert_int_equal(cfg->run_gid, root_primary);   /* the user's primary group */

	/* group wins over the user's primary group, wherever it is written. */
	config_free(&env->cfg);
	struct passwd *nobody = getpwnam("nobody");
	if (nobody != NULL) {
		uid_t nobody_uid = nobody->pw_uid;
		assert_int_equal(load(env, "group = \"root\";\nuser = \"nobody\";\n"), 0);
		assert_int_equal(cfg->run_uid, nobody_uid);
		assert_int_equal(cfg->run_gid, root_gid);
		assert_string_equal(cfg->group, "root");
		config_free(&env->cfg);
		assert_int_equal(load(env, "user = \"nobody\";\ngroup = \"root\";\n"), 0);
		assert_int_equal(cfg->run_gid, root_gid);
		config_free(&env->cfg);
	}

	/* Numeric ids, as strings or integers; one without an entry needs group. */
	assert_int_equal(load(env, "user = 0;\n"), 0);
	assert_int_equal(cfg->run_uid, 0);
	assert_string_equal(cfg->user, "0");
	config_free(&env->cfg);
	assert_int_equal(load(env, "user = \"0\";\ngroup = \"0\";\n"), 0);
	assert_int_equal(cfg->run_uid, 0);
	assert_int_equal(cfg->run_gid, 0);
	config_free(&env->cfg);
	if (getpwuid(4000000) == NULL) {
		assert_int_equal(load(env, "user = 4000000;\ngroup = 4000001;\n"), 0);
		assert_int_equal(cfg->run_uid, 4000000);
		assert_int_equal(cfg->run_gid, 4000001);
		config_free(&env->cfg);
		assert_int_equal(load(env, "\nuser = 4000000;\n"), -1);
		assert_error_equals(env, 2, "user 4000000 has no entry in the user database, so no "
					    "primary group: set group too");
		config_free(&env->cfg);
	}

	/* group alone drops the group only. */
	assert_int_equal(load(env, "group = \"root\";\n"), 0);
	assert_false(cfg->has_user);
	assert_true(cfg->has_group);
	assert_int_equal(cfg->run_gid, root_gid);
}

static void test_unknown_user_or_group_names_the_line(void **state)
{
	static const struct error_case cases[] = {
		{ "user = \"no-such-user-xyz\";\n", 1, "user \"no-such-user-xyz\" does not exist" },
		{ "log_level = \"info\";\ngroup = \"no-such-group-xyz\";\n", 2,
		  "group \"no-such-group-xyz\" does not exist" },
		{ "user = true;\n", 1, "user must be a string: a name or a numeric id" },
		{ "group = [ \"root\" ];\n", 1, "group must be a string: a name or a numeric id" },
		{ "user = \"\";\n", 1, "user is empty" },
		{ "group = -5;\n", 1, "group -5 is not a valid id" },
	};

	check_load_errors(*state, CASES(cases));
	struct env *env = *state;
	assert_int_equal(load(env, "user = \"no-such-user-xyz\";\n"), -1);
	assert_error_equals(env, 1, "user \"no-such-user-xyz\" does not exist");
}

/* ---- -c naming something that is not a regular file --------------------- */

static void test_fifo_or_device_is_refused_without_blocking(void **state)
{
	struct env *env = *state;
	char fifo[256], expected[512];

	snprintf(fifo, sizeof fifo, "%s/fifo.conf", env->dir);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	/* Opening or reading a FIFO without a writer would block: SIGALRM ends the test then. */
	alarm(10);
	int rc = config_load_file(&env->cfg, fifo, env->err, sizeof env->err);
	alarm(0);
	unlink(fifo);
	assert_int_equal(rc, -1);
	snprintf(expected, sizeof expected, "%s: cannot read: is not a regular file (a FIFO)",
		 fifo);
	assert_string_equal(env->err, expected);

	/* /dev/zero never ends; /dev/null would read as an empty file. */
	alarm(10);
	assert_int_equal(config_load_file(&env->cfg, "/dev/zero", env->err, sizeof env->err), -1);
	alarm(0);
	assert_string_equal(env->err, "/dev/zero: cannot read: is not a regular file (a device)");
	assert_int_equal(config_load_file(&env->cfg, "/dev/null", env->err, sizeof env->err), -1);
	assert_string_equal(env->err, "/dev/null: cannot read: is not a regular file (a device)");
	assert_int_equal(env->cfg.forward_count, 0);

	/* A regular file through a symbolic link is read as usual. */
	char link[256];
	snprintf(link, sizeof link, "%s/link.conf", env->dir);
	write_file(env->path, "log_level = \"debug\";\n");
	assert_int_equal(symlink(env->path, link), 0);
	rc = config_load_file(&env->cfg, link, env->err, sizeof env->err);
	unlink(link);
	assert_int_equal(rc, 0);
	assert_int_equal(env->cfg.log_level, LOG_LEVEL_DEBUG);
}

/* ---- loops: a target that is one of the relay's own listeners ----------- */

struct loop_case {
	const char *forwards;   /* the groups, one per line from line 2 */
	int line;               /* 0: accepted */
	const char *words;
};

/* "forwards = (\n" GROUPS ");\n", without the comma after the last group. */
static const char *forwards_text(const char *groups, char *text, size_t len)
{
	snprintf(text, len, "forwards = (\n%s);\n", groups);
	char *comma = strrchr(text, ',');
	if (comma != NULL && strcmp(comma, ",\n);\n") == 0)
		memmove(comma, comma + 1, strlen(comma));
	return text;
}

static void check_loops(struct env *env, const struct loop_case *cases, size_t count)
{
	char text[2048];

	for (size_t i = 0; i < count; i++) {
		const struct loop_case *c = &cases[i];
		forwards_text(c->forwards, text, sizeof text);
		config_free(&env->cfg);
		int rc = load_and_finish(env, text);
		bool ok = c->line == 0 ? rc == 0 : rc == -1 && error_is_at(env, c->line, c->words);
		if (!ok) {
			print_error("case %zu:\n%s\nerror was \"%s\"\nexpected %s%s\n", i, text,
				    env->err, c->line ? "an error with " : "no error",
				    c->line ? c->words : "");
			fail();
		}
	}
}

#define LOOP_FWD(name, proto, ext, port, target, tport, more)                             \
	"  { name = \"" name "\"; protocol = \"" proto "\"; external_address = \"" ext "\";" \
	" external_port = " port "; internal_ip = \"" target "\"; internal_port = " tport ";" \
	more " },\n"

static void test_a_forward_into_its_own_listener_is_refused(void **state)
{
	struct env *env = *state;

	assert_int_equal(load_and_finish(env,
		"forwards = (\n"
		"  { name = \"x\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
		"    external_port = 23456; internal_ip = \"127.0.0.1\"; }\n"
		");\n"), -1);
	assert_error_equals(env, 2, "forward \"x\": its tcp target 127.0.0.1:23456 is its own "
				    "listener: it would loop through the relay");

	static const struct loop_case cases[] = {
		/* Wildcards take every local address; all of 127.0.0.0/8 is local. */
		{ LOOP_FWD("w", "tcp", "0.0.0.0", "23456", "127.0.0.1", "23456", ""), 2,
		  "its tcp target 127.0.0.1:23456 is its own listener" },
		{ LOOP_FWD("w", "tcp", "0.0.0.0", "23456", "127.0.0.5", "23456", ""), 2,
		  "its tcp target 127.0.0.5:23456 is its own listener" },
		{ LOOP_FWD("w", "tcp", "0.0.0.0", "23456", "0.0.0.0", "23456", ""), 2,
		  "its tcp target 127.0.0.1:23456 is its own listener" },
		{ LOOP_FWD("w", "tcp", "::", "23456", "127.0.0.1", "23456", ""), 2,
		  "its own listener" },
		{ LOOP_FWD("w", "udp", "::", "23456", "::1", "23456", ""), 2,
		  "its udp target [::1]:23456 is its own listener" },
		{ LOOP_FWD("w", "tcp", "::", "23456", "::", "23456", ""), 2, "its own listener" },
		{ LOOP_FWD("w", "tcp", "127.0.0.1", "23456", "::ffff:127.0.0.1", "23456", ""), 2,
		  "its tcp target 127.0.0.1:23456 is its own listener" },
		{ LOOP_FWD("h", "both", "::", "23456", "localhost", "23456", ""), 2,
		  "its own listener" },
		/* 0.0.0.0 is IPv4 only; another loopback address is another listener's. */
		{ LOOP_FWD("w", "tcp", "0.0.0.0", "23456", "::1", "23456", ""), 0, NULL },
		{ LOOP_FWD("w", "tcp", "127.0.0.1", "23456", "127.0.0.2", "23456", ""), 0, NULL },
		{ LOOP_FWD("w", "tcp", "0.0.0.0", "23456", "127.0.0.1", "23457", ""), 0, NULL },
		/* Ranges and protocols. */
		{ LOOP_FWD("r", "udp", "0.0.0.0", "\"23450-23460\"", "127.0.0.1",
			   "\"23455-23465\"", ""), 2,
		  "its udp target 127.0.0.1:23455 is its own listener" },
		{ LOOP_FWD("l", "both", "127.0.0.1", "\"23450-23460\"", "198.51.100.1", "\"1-11\"", "")
		  LOOP_FWD("t", "tcp", "127.0.0.1", "8080", "127.0.0.1", "23455", ""), 3,
		  "forward \"t\": its tcp target 127.0.0.1:23455 is the listener of forward \"l\"" },
		{ LOOP_FWD("l", "both", "127.0.0.1", "\"23450-23460\"", "198.51.100.1", "\"1-11\"", "")
		  LOOP_FWD("t", "udp", "127.0.0.1", "\"8080-8089\"", "127.0.0.1",
			   "\"23441-23450\"", ""), 3,
		  "its udp target 127.0.0.1:23450 is the listener of forward \"l\"" },
		{ LOOP_FWD("l", "tcp", "127.0.0.1", "\"23450-23460\"", "198.51.100.1", "\"1-11\"", "")
		  LOOP_FWD("t", "tcp", "127.0.0.1", "8080", "127.0.0.1", "23461", ""), 0, NULL },
		{ LOOP_FWD("l", "tcp", "127.0.0.1", "5000", "198.51.100.1", "80", "")
		  LOOP_FWD("t", "udp", "127.0.0.1", "6000", "127.0.0.1", "5000", ""), 0, NULL },
		/* A chain through another forward, whichever comes first in the file. */
		{ LOOP_FWD("a", "tcp", "127.0.0.1", "8080", "127.0.0.1", "9090", "")
		  LOOP_FWD("b", "tcp", "127.0.0.1", "9090", "198.51.100.1", "80", ""), 2,
		  "forward \"a\": its tcp target 127.0.0.1:9090 is the listener of forward \"b\"" },
		{ LOOP_FWD("b", "tcp", "0.0.0.0", "9090", "198.51.100.1", "80", "")
		  LOOP_FWD("a", "tcp", "127.0.0.1", "8080", "127.0.0.1", "9090", ""), 3,
		  "forward \"a\": its tcp target 127.0.0.1:9090 is the listener of forward \"b\"" },
		/* A disabled forward listens on nothing. */
		{ LOOP_FWD("a", "tcp", "127.0.0.1", "8080", "127.0.0.1", "9090", "")
		  LOOP_FWD("b", "tcp", "127.0.0.1", "9090", "198.51.100.1", "80",
			   " enabled = false;"), 0, NULL },
		{ LOOP_FWD("a", "tcp", "127.0.0.1", "8080", "127.0.0.1", "8080", " enabled = false;"),
		  0, NULL },
	};

	check_loops(env, CASES(cases));
}

/* The first IPv4 address of this host outside 127.0.0.0/8, if it has one. */
static bool host_ipv4_address(char *buf, size_t len)
{
	struct ifaddrs *list = NULL;
	bool found = false;

	if (getifaddrs(&list) < 0)
		return false;
	for (struct ifaddrs *ifa = list; ifa != NULL && !found; ifa = ifa->ifa_next) {
		if (ifa->ifa_addr == NULL || ifa->ifa_addr->sa_family != AF_INET)
			continue;
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ifa->ifa_addr;
		if ((ntohl(sin->sin_addr.s_addr) >> 24) == 127)
			continue;
		found = inet_ntop(AF_INET, &sin->sin_addr, buf, (socklen_t)len) != NULL;
	}
	freeifaddrs(list);
	return found;
}

/* What config_finish writes to stderr while it finishes the forwards `groups`. */
static int finish_capturing_stderr(struct env *env, const char *groups, char *log, size_t log_len)
{
	char path[256], text[2048];
	forwards_text(groups, text, sizeof text);
	snprintf(path, sizeof path, "%s/stderr.log", env->dir);
	fflush(stderr);
	int saved = dup(STDERR_FILENO);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(saved >= 0 && fd >= 0);
	dup2(fd, STDERR_FILENO);
	close(fd);
	config_free(&env->cfg);
	int rc = load_and_finish(env, text);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	FILE *file = fopen(path, "r");
	assert_non_null(file);
	size_t n = fread(log, 1, log_len - 1, file);
	log[n] = '\0';
	fclose(file);
	unlink(path);
	return rc;
}

static void test_target_on_another_local_address_is_only_warned_about(void **state)
{
	struct env *env = *state;
	char log[4096], text[1024], host[64];

	assert_int_equal(finish_capturing_stderr(env,
		LOOP_FWD("a", "tcp", "127.0.0.1", "8080", "198.51.100.1", "80", "")
		LOOP_FWD("b", "tcp", "127.0.0.2", "9000", "127.0.0.3", "8080", ""),
		log, sizeof log), 0);
	assert_non_null(strstr(log, "[b] its target 127.0.0.3:8080 is an address of this host, and "
				    "forward \"a\" listens on that port (on 127.0.0.1, "));

	/* Off the host, or on a port no forward listens on: nothing to say. */
	assert_int_equal(finish_capturing_stderr(env,
		LOOP_FWD("a", "tcp", "127.0.0.1", "8080", "198.51.100.1", "8080", "")
		LOOP_FWD("b", "tcp", "127.0.0.2", "9000", "127.0.0.3", "8081", ""),
		log, sizeof log), 0);
	assert_string_equal(log, "");

	/* An address of one of the host's interfaces: a wildcard listener takes it. */
	if (!host_ipv4_address(host, sizeof host)) {
		print_message("no IPv4 address beyond loopback; skipping that part\n");
		return;
	}
	char groups[512];
	snprintf(groups, sizeof groups, LOOP_FWD("a", "tcp", "0.0.0.0", "23456", "%s", "23456", ""),
		 host);
	config_free(&env->cfg);
	assert_int_equal(load_and_finish(env, forwards_text(groups, text, sizeof text)), -1);
	assert_non_null(strstr(env->err, "is its own listener"));
	snprintf(groups, sizeof groups,
		 LOOP_FWD("a", "tcp", "127.0.0.1", "23456", "%s", "23456", ""), host);
	assert_int_equal(finish_capturing_stderr(env, groups, log, sizeof log), 0);
	assert_non_null(strstr(log, "is an address of this host"));
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, env_setup, env_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST(test_full_file_sets_every_field),
		TEST(test_finished_full_file_describes_each_forward),
		TEST(test_omitted_fields_take_defaults),
		TEST(test_udp_idle_timeout_per_forward_overrides_the_global),
		TEST(test_workers_splice_and_busy_poll_are_read_and_checked),
		TEST(test_shutdown_timeout_is_read_and_checked),
		TEST(test_drain_timeout_is_read_and_checked),
		TEST(test_admin_is_off_by_default_and_read_when_given),
		TEST(test_empty_file_and_empty_lists_have_no_forwards),
		TEST(test_host_name_is_resolved_and_shown),
		TEST(test_unknown_fields_are_rejected_at_every_level),
		TEST(test_unknown_forward_field_message_is_exact),
		TEST(test_external_port_out_of_range_message_is_exact),
		TEST(test_bad_port_values_are_rejected),
		TEST(test_range_width_mismatch_message_is_exact),
		TEST(test_single_and_range_ports_do_not_mix),
		TEST(test_equal_width_ranges_map_one_to_one),
		TEST(test_global_settings_are_type_and_range_checked),
		TEST(test_valid_global_values_are_accepted),
		TEST(test_forward_fields_are_type_checked),
		TEST(test_required_forward_fields_are_reported_at_the_group),
		TEST(test_unnamed_forward_is_called_by_its_index),
		TEST(test_failed_file_adds_no_forwards),
		TEST(test_syntax_error_names_the_line),
		TEST(test_missing_file_cannot_be_read),
		TEST(test_directory_cannot_be_read),
		TEST(test_error_in_included_file_names_that_file),
		TEST(test_unresolvable_host_is_reported_at_its_forward),
		TEST(test_disabled_forward_is_not_resolved),
		TEST(test_same_port_twice_overlaps_with_exact_message),
		TEST(test_overlapping_forwards_are_rejected),
		TEST(test_distinct_forwards_do_not_overlap),
		TEST(test_overlap_with_wan_address_default),
		TEST(test_long_range_overlap_is_found_past_other_forwards),
		TEST(test_ten_thousand_forwards_check_quickly),
		TEST(test_duplicate_among_ten_thousand_is_found),
		TEST(test_proto_names_and_port_counts),
		TEST(test_config_free_resets_to_defaults),
		TEST(test_ftp_fields_are_read_and_the_global_range_is_inherited),
		TEST(test_ftp_defaults_let_the_kernel_pick_and_wait_30_s),
		TEST(test_ftp_errors_name_their_line),
		TEST(test_ftp_data_ports_may_not_overlap_a_forward),
		TEST(test_admission_fields_are_read),
		TEST(test_admission_defaults_hold_for_every_forward),
		TEST(test_admission_errors_name_their_line),
		TEST(test_acl_error_message_is_exact),
		TEST(test_acl_holds_at_most_64_entries),
		TEST(test_acl_order_is_the_order_in_the_file),
		TEST(test_admission_fields_are_part_of_the_rule),
		TEST(test_user_and_group_are_resolved_when_read),
		TEST(test_unknown_user_or_group_names_the_line),
		TEST(test_fifo_or_device_is_refused_without_blocking),
		TEST(test_a_forward_into_its_own_listener_is_refused),
		TEST(test_target_on_another_local_address_is_only_warned_about),
		TEST(test_control_characters_in_values_come_escaped_in_one_line),
		TEST(test_same_rule_needs_every_field_but_the_origin),
		TEST(test_same_place_is_protocol_address_and_port_range),
		TEST(test_source_client_is_read_and_relay_is_the_default),
		TEST(test_source_errors_name_their_line),
		TEST(test_rules_file_comes_last_and_is_marked),
		TEST(test_rules_file_must_be_a_path),
		TEST(test_load_sources_reads_the_file_then_the_specs_and_finishes),
		TEST(test_load_sources_error_names_file_and_line_and_frees),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
