/*
 * test_net.c - address parsing, formatting and comparison helpers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "portrelay/net.h"

static struct net_addr parse(const char *text, uint16_t port)
{
	struct net_addr addr;

	if (net_addr_parse_ip(text, port, &addr) != 0) {
		print_error("\"%s\" was not parsed\n", text);
		fail();
	}
	return addr;
}

static void test_parse_ipv4_sets_family_port_and_length(void **state)
{
	struct net_addr addr = parse("192.0.2.1", 8080);

	(void)state;
	assert_int_equal(net_addr_family(&addr), AF_INET);
	assert_int_equal(net_addr_port(&addr), 8080);
	assert_int_equal(addr.len, sizeof(struct sockaddr_in));
}

static void test_parse_ipv6_sets_family_port_and_length(void **state)
{
	struct net_addr addr = parse("2001:db8::1", 443);

	(void)state;
	assert_int_equal(net_addr_family(&addr), AF_INET6);
	assert_int_equal(net_addr_port(&addr), 443);
	assert_int_equal(addr.len, sizeof(struct sockaddr_in6));
}

static void test_parse_accepts_numeric_addresses(void **state)
{
	static const char *const good[] = {
		"127.0.0.1", "0.0.0.0", "255.255.255.255", "::", "::1", "fd00::5",
		"::ffff:192.0.2.1", "2001:db8:0:0:0:0:0:1",
	};
	struct net_addr addr;

	(void)state;
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		if (net_addr_parse_ip(good[i], 0, &addr) != 0) {
			print_error("rejected \"%s\"\n", good[i]);
			fail();
		}
	}
}

static void test_parse_rejects_names_brackets_and_garbage(void **state)
{
	static const char *const bad[] = {
		"", "localhost", "example.com", "1.2.3", "256.1.1.1", "1.2.3.4 ", " 1.2.3.4",
		"[::1]", "1.2.3.4:80", ":::", "2001:db8::1::2", "fd00::g",
	};
	struct net_addr addr;

	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (net_addr_parse_ip(bad[i], 0, &addr) != -1) {
			print_error("accepted \"%s\"\n", bad[i]);
			fail();
		}
	}
}

static void test_format_ipv4_with_port(void **state)
{
	struct net_addr addr = parse("192.0.2.1", 80);
	char buf[NET_ADDR_STRLEN];

	(void)state;
	assert_string_equal(net_addr_format(&addr, buf, sizeof buf), "192.0.2.1:80");
	assert_string_equal(net_addr_format_ip(&addr, buf, sizeof buf), "192.0.2.1");
}

static void test_format_ipv6_in_brackets(void **state)
{
	struct net_addr loopback = parse("::1", 80);
	struct net_addr doc = parse("2001:db8:0:0:0:0:0:1", 65535);
	char buf[NET_ADDR_STRLEN];

	(void)state;
	assert_string_equal(net_addr_format(&loopback, buf, sizeof buf), "[::1]:80");
	assert_string_equal(net_addr_format(&doc, buf, sizeof buf), "[2001:db8::1]:65535");
	assert_string_equal(net_addr_format_ip(&doc, buf, sizeof buf), "2001:db8::1");
}

static void test_set_port_changes_only_the_port(void **state)
{
	struct net_addr addr = parse("::1", 1);
	char buf[NET_ADDR_STRLEN];

	(void)state;
	net_addr_set_port(&addr, 5353);
	assert_int_equal(net_addr_port(&addr), 5353);
	assert_string_equal(net_addr_format(&addr, buf, sizeof buf), "[::1]:5353");
}

static void test_wildcards(void **state)
{
	struct net_addr any4 = parse("0.0.0.0", 0);
	struct net_addr any6 = parse("::", 0);
	struct net_addr lo4 = parse("127.0.0.1", 0);
	struct net_addr lo6 = parse("::1", 0);

	(void)state;
	assert_true(net_addr_is_wildcard(&any4));
	assert_true(net_addr_is_wildcard(&any6));
	assert_false(net_addr_is_wildcard(&lo4));
	assert_false(net_addr_is_wildcard(&lo6));
}

static void test_same_ip_ignores_ports_but_not_family(void **state)
{
	struct net_addr a = parse("127.0.0.1", 1);
	struct net_addr a_other_port = parse("127.0.0.1", 2);
	struct net_addr b = parse("127.0.0.2", 1);
	struct net_addr mapped = parse("::ffff:127.0.0.1", 1);
	struct net_addr v6 = parse("fd00::5", 1);
	struct net_addr v6_again = parse("fd00:0::5", 9);

	(void)state;
	assert_true(net_addr_same_ip(&a, &a_other_port));
	assert_false(net_addr_same_ip(&a, &b));
	assert_false(net_addr_same_ip(&a, &mapped));
	assert_false(net_addr_same_ip(&a, &v6));
	assert_true(net_addr_same_ip(&v6, &v6_again));
}

static void test_resolve_numeric_and_failure(void **state)
{
	struct net_addr addr;
	char reason[256] = "";
	char buf[NET_ADDR_STRLEN];

	(void)state;
	assert_int_equal(net_addr_resolve("192.0.2.7", 80, &addr, reason, sizeof reason), 0);
	assert_string_equal(net_addr_format(&addr, buf, sizeof buf), "192.0.2.7:80");
	assert_int_equal(net_addr_resolve("nosuch.invalid", 80, &addr, reason, sizeof reason), -1);
	assert_true(strlen(reason) > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_ipv4_sets_family_port_and_length),
		cmocka_unit_test(test_parse_ipv6_sets_family_port_and_length),
		cmocka_unit_test(test_parse_accepts_numeric_addresses),
		cmocka_unit_test(test_parse_rejects_names_brackets_and_garbage),
		cmocka_unit_test(test_format_ipv4_with_port),
		cmocka_unit_test(test_format_ipv6_in_brackets),
		cmocka_unit_test(test_set_port_changes_only_the_port),
		cmocka_unit_test(test_wildcards),
		cmocka_unit_test(test_same_ip_ignores_ports_but_not_family),
		cmocka_unit_test(test_resolve_numeric_and_failure),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
