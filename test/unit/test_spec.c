/*
 * test_spec.c - -L SPEC parsing: PROTO:[EXT_ADDR:]EXT_PORT[-END]:INT_HOST:INT_PORT[-END],
 * then what config_finish makes of the forwards it produced.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

#include "portrelay/config.h"

struct env {
	struct config cfg;
	char err[1024];
};

static int env_setup(void **state)
{
	struct env *env = calloc(1, sizeof *env);

	if (env == NULL)
		return -1;
	config_defaults(&env->cfg);
	*state = env;
	return 0;
}

static int env_teardown(void **state)
{
	struct env *env = *state;

	config_free(&env->cfg);
	free(env);
	return 0;
}

/* Adds a spec that must be valid and returns its forward. */
static const struct forward *add(struct env *env, const char *spec)
{
	env->err[0] = '\0';
	if (config_add_spec(&env->cfg, spec, env->err, sizeof env->err) != 0) {
		print_error("%s rejected: %s\n", spec, env->err);
		fail();
	}
	return &env->cfg.forwards[env->cfg.forward_count - 1];
}

static void finish(struct env *env)
{
	if (config_finish(&env->cfg, env->err, sizeof env->err) != 0) {
		print_error("config_finish failed: %s\n", env->err);
		fail();
	}
}

/* ---- valid specs -------------------------------------------------------- */

static void test_ipv4_spec_without_external_address(void **state)
{
	const struct forward *fwd = add(*state, "tcp:8080:127.0.0.1:80");

	assert_int_equal(fwd->proto, FORWARD_TCP);
	assert_string_equal(fwd->external_host, "");
	assert_int_equal(fwd->external_port_first, 8080);
	assert_int_equal(fwd->external_port_last, 8080);
	assert_string_equal(fwd->internal_host, "127.0.0.1");
	assert_int_equal(fwd->internal_port_first, 80);
	assert_int_equal(fwd->internal_port_last, 80);
	assert_true(fwd->enabled);
	assert_string_equal(fwd->name, "tcp:8080");
	assert_string_equal(fwd->origin, "-L 'tcp:8080:127.0.0.1:80'");
}

static void test_ipv4_spec_with_external_address(void **state)
{
	const struct forward *fwd = add(*state, "udp:127.0.0.2:5353:10.0.0.1:53");

	assert_int_equal(fwd->proto, FORWARD_UDP);
	assert_string_equal(fwd->external_host, "127.0.0.2");
	assert_int_equal(fwd->external_port_first, 5353);
	assert_string_equal(fwd->internal_host, "10.0.0.1");
	assert_int_equal(fwd->internal_port_first, 53);
	assert_string_equal(fwd->name, "udp:5353");
}

static void test_bracketed_ipv6_on_both_sides(void **state)
{
	struct env *env = *state;
	const struct forward *fwd = add(env, "tcp:[::1]:8080:[fd00::5]:80");
	char line[512];

	assert_string_equal(fwd->external_host, "::1");
	assert_string_equal(fwd->internal_host, "fd00::5");
	assert_int_equal(fwd->external_port_first, 8080);
	assert_int_equal(fwd->internal_port_first, 80);
	finish(env);
	assert_int_equal(net_addr_family(&fwd->external_addr), AF_INET6);
	assert_int_equal(net_addr_family(&fwd->internal_addr), AF_INET6);
	assert_string_equal(forward_describe(fwd, line, sizeof line),
			    "tcp:8080  tcp  [::1]:8080 -> [fd00::5]:80");
}

static void test_bracketed_ipv6_internal_without_external_address(void **state)
{
	const struct forward *fwd = add(*state, "udp:53:[2001:db8::53]:5353");

	assert_string_equal(fwd->external_host, "");
	assert_string_equal(fwd->internal_host, "2001:db8::53");
	assert_int_equal(fwd->internal_port_first, 5353);
}

static void test_host_name_is_kept_and_resolved(void **state)
{
	struct env *env = *state;
	const struct forward *fwd = add(env, "tcp:8080:localhost:80");
	char line[512];

	assert_string_equal(fwd->internal_host, "localhost");
	finish(env);
	assert_int_not_equal(fwd->internal_addr.len, 0);
	forward_describe(fwd, line, sizeof line);
	assert_non_null(strstr(line, "-> localhost ("));
	assert_non_null(strstr(line, "):80"));
}

static void test_port_ranges_map_one_to_one(void **state)
{
	struct env *env = *state;
	const struct forward *same = add(env, "tcp:30000-30009:192.0.2.10:30000-30009");

	assert_int_equal(same->external_port_first, 30000);
	assert_int_equal(same->external_port_last, 30009);
	assert_int_equal(same->internal_port_first, 30000);
	assert_int_equal(same->internal_port_last, 30009);
	assert_int_equal(forward_port_count(same), 10);
	assert_string_equal(same->name, "tcp:30000-30009");

	const struct forward *shifted = add(env, "both:40000-40009:192.0.2.10:50000-50009");
	assert_int_equal(shifted->proto, FORWARD_BOTH);
	assert_int_equal(shifted->internal_port_first, 50000);
	assert_int_equal(shifted->internal_port_last, 50009);
	assert_string_equal(shifted->name, "both:40000-40009");

	const struct forward *edge = add(env, "udp:65535-65535:h:1-1");
	assert_int_equal(edge->external_port_first, 65535);
	assert_int_equal(forward_port_count(edge), 1);
}

static void test_both_and_udp_protocols(void **state)
{
	struct env *env = *state;

	assert_int_equal(add(env, "both:53:10.0.0.1:53")->proto, FORWARD_BOTH);
	assert_int_equal(add(env, "udp:54:10.0.0.1:53")->proto, FORWARD_UDP);
	assert_int_equal(add(env, "tcp:55:10.0.0.1:53")->proto, FORWARD_TCP);
	assert_int_equal(env->cfg.forward_count, 3);
}

static void test_ftp_protocol_is_tcp_with_the_helper(void **state)
{
	struct env *env = *state;

	const struct forward *fwd = add(env, "ftp:21:192.168.20.142:21");
	assert_int_equal(fwd->proto, FORWARD_TCP);
	assert_true(fwd->ftp);
	assert_string_equal(fwd->name, "ftp:21");
	fwd = add(env, "ftp:[::1]:2121:[::1]:21");
	assert_true(fwd->ftp);
	assert_int_equal(fwd->external_port_first, 2121);
	assert_false(add(env, "tcp:22:10.0.0.1:22")->ftp);
}

static void test_external_address_defaults_to_wan_address(void **state)
{
	struct env *env = *state;
	char line[512];

	add(env, "tcp:8080:127.0.0.1:80");
	add(env, "tcp:[::1]:8080:127.0.0.1:80");
	finish(env);
	assert_string_equal(env->cfg.forwards[0].external_host, "0.0.0.0");
	assert_int_equal(net_addr_family(&env->cfg.forwards[0].external_addr), AF_INET);
	assert_true(net_addr_is_wildcard(&env->cfg.forwards[0].external_addr));
	assert_string_equal(env->cfg.forwards[1].external_host, "::1");
	assert_string_equal(forward_describe(&env->cfg.forwards[0], line, sizeof line),
			    "tcp:8080  tcp  0.0.0.0:8080 -> 127.0.0.1:80");
}

static void test_external_address_follows_a_changed_wan_address(void **state)
{
	struct env *env = *state;
	char line[512];

	snprintf(env->cfg.wan_address, sizeof env->cfg.wan_address, "::");
	add(env, "both:30000-30009:192.0.2.10:30000-30009");
	finish(env);
	assert_string_equal(env->cfg.forwards[0].external_host, "::");
	assert_int_equal(net_addr_family(&env->cfg.forwards[0].external_addr), AF_INET6);
	assert_string_equal(forward_describe(&env->cfg.forwards[0], line, sizeof line),
			    "both:30000-30009  both [::]:30000-30009 -> 192.0.2.10:30000-30009");
}

/* ---- malformed specs ---------------------------------------------------- */

struct bad_spec {
	const char *spec;
	const char *reason;
};

static void test_malformed_specs_are_rejected(void **state)
{
	static const struct bad_spec cases[] = {
		{ "tcp:80", "expected PROTO:[EXT_ADDR:]EXT_PORT:INT_HOST:INT_PORT" },
		{ "", "expected PROTO:[EXT_ADDR:]EXT_PORT:INT_HOST:INT_PORT" },
		{ "tcp:80:h", "expected PROTO:[EXT_ADDR:]EXT_PORT:INT_HOST:INT_PORT" },
		{ "tcp:1.2.3.4:80:h:80:9", "expected PROTO:" },
		{ "tcp:::1:80:h:80", "(write IPv6 addresses in brackets)" },
		{ "sctp:80:h:80", "unknown protocol \"sctp\" (tcp, udp, both or ftp)" },
		{ "TCP:80:h:80", "unknown protocol \"TCP\"" },
		{ ":80:h:80", "unknown protocol \"\"" },
		{ "[tcp]:80:h:80", "unknown protocol \"tcp\"" },
		{ "tcp:70000:h:1", "port 70000 is outside 1-65535" },
		{ "tcp:0:h:1", "external port 0 is outside 1-65535" },
		{ "tcp:80:h:0", "internal port 0 is outside 1-65535" },
		{ "tcp:80:h:65536", "internal port 65536 is outside 1-65535" },
		{ "tcp:1-70000:h:1-70000", "external port 70000 is outside 1-65535" },
		{ "tcp:abc:h:80", "external port \"abc\" is not a port number or a range N-M" },
		{ "tcp:80-:h:80", "external port \"80-\" is not a port number" },
		{ "tcp:-80:h:80", "external port \"-80\" is not a port number" },
		{ "tcp:80:h:80 ", "internal port \"80 \" is not a port number" },
		{ "tcp:80:h:", "internal port \"\" is not a port number" },
		{ "tcp:[80]:h:80", "external port \"80\" is not a port number" },
		{ "tcp:123456789012345678901234567890123:h:80", "is not a port number" },
		{ "tcp:80-70:h:80-70", "external port range 80-70 ends before it starts" },
		{ "tcp:30000-30009:h:80-81",
		  "internal port range 80-81 is 2 ports wide but external port range 30000-30009 is 10" },
		{ "tcp:80-81:h:80", "internal port 80 is 1 port wide but external port range 80-81 is 2" },
		{ "tcp:80::80", "internal host is empty" },
		{ "tcp:1.2.3.4:80::80", "internal host is empty" },
		{ "tcp:80:[]:80", "internal host is empty" },
		{ "tcp::80:h:80", "external address is empty" },
		{ "tcp:[]:80:h:80", "external address is empty" },
		{ "tcp:[::1:80:h:80", "unclosed bracket" },
		{ "tcp:80:[::1:80", "unclosed bracket" },
		{ "tcp:[::1]80:h:80", "expected ':' after ']'" },
		{ "tcp:80:h]:80", "a bracket may only enclose a whole address" },
		{ "tcp:80:h[1]:80", "a bracket may only enclose a whole address" },
		{ "tcp:localhost:80:h:80",
		  "external address \"localhost\" is not a numeric IPv4 or IPv6 address" },
		{ "tcp:1.2.3:80:h:80", "external address \"1.2.3\" is not a numeric" },
		{ "tcp:[::1]:8080:[notanip]:80", "internal host \"[notanip]\" is not a numeric address" },
		{ "tcp:80:a b:80", "internal host \"a b\" contains whitespace" },
	};
	struct env *env = *state;
	char prefix[512];

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct bad_spec *c = &cases[i];
		int rc = config_add_spec(&env->cfg, c->spec, env->err, sizeof env->err);

		snprintf(prefix, sizeof prefix, "-L '%s': ", c->spec);
		if (rc != -1 || strncmp(env->err, prefix, strlen(prefix)) != 0 ||
		    strstr(env->err, c->reason) == NULL || env->cfg.forward_count != 0) {
			print_error("case %zu: %s\nerror was \"%s\"\nexpected  \"%s...%s\"\n", i,
				    c->spec, rc == 0 ? "(accepted)" : env->err, prefix, c->reason);
			fail();
		}
	}
}

static void test_short_spec_message_is_exact(void **state)
{
	struct env *env = *state;

	assert_int_equal(config_add_spec(&env->cfg, "tcp:80", env->err, sizeof env->err), -1);
	assert_string_equal(env->err,
			    "-L 'tcp:80': expected PROTO:[EXT_ADDR:]EXT_PORT:INT_HOST:INT_PORT");
	assert_int_equal(config_add_spec(&env->cfg, "tcp:70000:h:1", env->err, sizeof env->err),
			 -1);
	assert_string_equal(env->err, "-L 'tcp:70000:h:1': external port 70000 is outside 1-65535");
}

/* ---- config_finish errors on specs -------------------------------------- */

static void test_unresolvable_spec_host_names_the_spec(void **state)
{
	struct env *env = *state;

	add(env, "tcp:8080:nosuch.invalid:80");
	assert_int_equal(config_finish(&env->cfg, env->err, sizeof env->err), -1);
	assert_non_null(strstr(env->err, "-L 'tcp:8080:nosuch.invalid:80': forward \"tcp:8080\": "
				"internal_ip \"nosuch.invalid\" does not resolve: "));
	assert_int_equal(strncmp(env->err, "-L '", 4), 0);
}

static void test_overlapping_specs_name_both(void **state)
{
	struct env *env = *state;

	add(env, "both:8000-8100:127.0.0.1:9000-9100");
	add(env, "udp:127.0.0.1:8050:127.0.0.1:53");
	assert_int_equal(config_finish(&env->cfg, env->err, sizeof env->err), -1);
	assert_string_equal(env->err,
			    "-L 'udp:127.0.0.1:8050:127.0.0.1:53': forward \"udp:8050\": udp port "
			    "8050 on 127.0.0.1 overlaps forward \"both:8000-8100\" on 0.0.0.0 "
			    "(-L 'both:8000-8100:127.0.0.1:9000-9100')");
}

static double seconds_since(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

static void test_ten_thousand_specs_finish_quickly(void **state)
{
	struct env *env = *state;
	struct timespec start;
	char spec[64];

	clock_gettime(CLOCK_MONOTONIC, &start);
	/* Added in descending order, so the overlap check really has to sort. */
	for (unsigned i = 0; i < 10000; i++) {
		snprintf(spec, sizeof spec, "tcp:%u:127.0.0.1:80", 30000 - i);
		add(env, spec);
	}
	add(env, "tcp:40000-49999:192.0.2.10:40000-49999");
	finish(env);
	assert_int_equal(env->cfg.forward_count, 10001);
	assert_int_equal(forward_port_count(&env->cfg.forwards[10000]), 10000);
	assert_true(seconds_since(&start) < 1.0);
}

/* ---- IPv6 scopes ---------------------------------------------------------- */

static void test_scoped_ipv6_internal_host_in_brackets(void **state)
{
	struct env *env = *state;
	const struct forward *fwd = add(env, "udp:[::1]:5353:[fe80::1%lo]:53");

	assert_string_equal(fwd->internal_host, "fe80::1%lo");
	assert_string_equal(fwd->external_host, "::1");
	assert_int_equal(fwd->internal_port_first, 53);
	finish(env);
	const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)&fwd->internal_addr.ss;
	assert_int_equal(v6->sin6_family, AF_INET6);
	assert_int_equal(v6->sin6_scope_id, if_nametoindex("lo"));
	struct net_addr target = forward_internal_addr(fwd, 5353);
	assert_int_equal(net_addr_port(&target), 53);
	char line[512];
	assert_string_equal(forward_describe(fwd, line, sizeof line),
			    "udp:5353  udp  [::1]:5353 -> [fe80::1%lo]:53");
}

static void test_scoped_ipv6_external_address_in_brackets(void **state)
{
	struct env *env = *state;
	const struct forward *fwd = add(env, "tcp:[fe80::1%lo]:8080:[fe80::2%1]:80");

	assert_string_equal(fwd->external_host, "fe80::1%lo");
	finish(env);
	const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)&fwd->external_addr.ss;
	assert_int_equal(v6->sin6_family, AF_INET6);
	assert_int_equal(v6->sin6_scope_id, if_nametoindex("lo"));
	v6 = (const struct sockaddr_in6 *)&fwd->internal_addr.ss;
	assert_int_equal(v6->sin6_scope_id, 1);
	char line[512];
	assert_string_equal(forward_describe(fwd, line, sizeof line),
			    "tcp:8080  tcp  [fe80::1%lo]:8080 -> [fe80::2%1]:80");
}

static void test_bad_scopes_are_rejected(void **state)
{
	static const struct bad_spec cases[] = {
		{ "udp:[::1]:5353:[fe80::1%]:53", "internal host \"[fe80::1%]\" is not a numeric address" },
		{ "udp:[::1]:5353:[10.0.0.1%lo]:53", "internal host \"[10.0.0.1%lo]\" is not a numeric" },
		{ "udp:[::1]:5353:[fe80::1%a b]:53", "internal host \"fe80::1%a b\" contains whitespace" },
		{ "udp:[fe80::1%]:5353:h:53", "external address \"fe80::1%\" is not a numeric" },
		{ "udp:[fe80::1%lo%lo]:5353:h:53", "external address \"fe80::1%lo%lo\" is not a numeric" },
		{ "udp:fe80::1%lo:5353:h:53", "(write IPv6 addresses in brackets)" },
	};
	struct env *env = *state;
	char prefix[512];

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct bad_spec *c = &cases[i];
		int rc = config_add_spec(&env->cfg, c->spec, env->err, sizeof env->err);

		snprintf(prefix, sizeof prefix, "-L '%s': ", c->spec);
		if (rc != -1 || strncmp(env->err, prefix, strlen(prefix)) != 0 ||
		    strstr(env->err, c->reason) == NULL) {
			print_error("case %zu: %s\nerror was \"%s\"\nexpected  \"%s...%s\"\n", i,
				    c->spec, rc == 0 ? "(accepted)" : env->err, prefix, c->reason);
			fail();
		}
	}
	/* An interface that does not exist: when the table is finished. */
	add(env, "tcp:[fe80::1%nosuch0]:8080:192.0.2.10:80");
	assert_int_equal(config_finish(&env->cfg, env->err, sizeof env->err), -1);
	assert_string_equal(env->err, "-L 'tcp:[fe80::1%nosuch0]:8080:192.0.2.10:80': forward "
				      "\"tcp:8080\": external address \"fe80::1%nosuch0\": no network "
				      "interface \"nosuch0\"");
}

/* ---- loops ------------------------------------------------------------------ */

/* config_finish on specs must fail with an error that contains `words`. */
static void check_refused(struct env *env, const char *const *specs, size_t count,
			  const char *words)
{
	config_free(&env->cfg);
	for (size_t i = 0; i < count; i++)
		add(env, specs[i]);
	env->err[0] = '\0';
	if (config_finish(&env->cfg, env->err, sizeof env->err) != -1 ||
	    strstr(env->err, words) == NULL) {
		print_error("%s...: error was \"%s\"\nexpected \"%s\"\n", specs[0], env->err, words);
		fail();
	}
}

#define REFUSED(words, ...)                                                              \
	check_refused(env, (const char *const[]){ __VA_ARGS__ },                          \
		      sizeof((const char *const[]){ __VA_ARGS__ }) / sizeof(const char *), words)

static void test_a_spec_into_its_own_listener_is_refused(void **state)
{
	struct env *env = *state;

	add(env, "tcp:127.0.0.1:23456:127.0.0.1:23456");
	assert_int_equal(config_finish(&env->cfg, env->err, sizeof env->err), -1);
	assert_string_equal(env->err, "-L 'tcp:127.0.0.1:23456:127.0.0.1:23456': forward "
				      "\"tcp:23456\": its tcp target 127.0.0.1:23456 is its own "
				      "listener: it would loop through the relay");

	REFUSED("its tcp target 127.0.0.1:23456 is its own listener",
		"tcp:0.0.0.0:23456:127.0.0.1:23456");
	REFUSED("its tcp target 127.0.0.1:23456 is its own listener", "tcp:23456:127.0.0.1:23456");
	REFUSED("its udp target 127.0.0.1:23456 is its own listener",
		"udp:127.0.0.1:23456:127.0.0.1:23456");
	REFUSED("its udp target [::1]:5353 is its own listener", "udp:[::]:5353:[::1]:5353");
	REFUSED("is its own listener", "both:[::]:23456:localhost:23456");
	REFUSED("its tcp target 127.0.0.1:23455 is its own listener",
		"tcp:23450-23460:127.0.0.1:23455-23465");
	/* Another forward's listener: a loop through the relay too, at least one hop. */
	REFUSED("forward \"tcp:8080\": its tcp target 127.0.0.1:23455 is the listener of forward "
		"\"tcp:23450-23460\" (-L 'tcp:23450-23460:192.0.2.10:23450-23460')",
		"tcp:23450-23460:192.0.2.10:23450-23460", "tcp:8080:127.0.0.1:23455");
	REFUSED("forward \"udp:8080\": its udp target 127.0.0.1:9090 is the listener of forward "
		"\"both:9090\"", "udp:8080:127.0.0.1:9090", "both:127.0.0.1:9090:192.0.2.10:80");
	REFUSED("its tcp target 127.0.0.1:9090 is the listener of forward \"tcp:9090\"",
		"tcp:8080:127.0.0.1:9090", "tcp:9090:127.0.0.1:8080");
	REFUSED("is the listener of forward \"ftp:2121\"",
		"ftp:2121:192.0.2.10:21", "tcp:8080:127.0.0.1:2121");

	/* Not loops: another protocol, a port beside the range, another loopback address. */
	config_free(&env->cfg);
	add(env, "tcp:23450-23460:192.0.2.10:23450-23460");
	add(env, "tcp:8080:127.0.0.1:23461");
	add(env, "udp:8081:127.0.0.1:23455");
	add(env, "tcp:127.0.0.1:8082:127.0.0.2:8082");
	finish(env);
}

/* ---- admission defaults ----------------------------------------------------- */

static void test_spec_forwards_get_the_admission_defaults(void **state)
{
	const struct forward *fwd = add(*state, "both:5000:192.0.2.10:5000");

	assert_int_equal(fwd->max_connections, 0);
	assert_int_equal(fwd->max_connections_per_source, 256);
	assert_int_equal(fwd->max_flows_per_source, 1024);
	assert_int_equal(fwd->acl.count, 0);
	assert_false(fwd->freebind);
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, env_setup, env_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST(test_ipv4_spec_without_external_address),
		TEST(test_ipv4_spec_with_external_address),
		TEST(test_bracketed_ipv6_on_both_sides),
		TEST(test_bracketed_ipv6_internal_without_external_address),
		TEST(test_host_name_is_kept_and_resolved),
		TEST(test_port_ranges_map_one_to_one),
		TEST(test_both_and_udp_protocols),
		TEST(test_ftp_protocol_is_tcp_with_the_helper),
		TEST(test_external_address_defaults_to_wan_address),
		TEST(test_external_address_follows_a_changed_wan_address),
		TEST(test_malformed_specs_are_rejected),
		TEST(test_short_spec_message_is_exact),
		TEST(test_unresolvable_spec_host_names_the_spec),
		TEST(test_overlapping_specs_name_both),
		TEST(test_ten_thousand_specs_finish_quickly),
		TEST(test_scoped_ipv6_internal_host_in_brackets),
		TEST(test_scoped_ipv6_external_address_in_brackets),
		TEST(test_bad_scopes_are_rejected),
		TEST(test_a_spec_into_its_own_listener_is_refused),
		TEST(test_spec_forwards_get_the_admission_defaults),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
