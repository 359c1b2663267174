/*
 * test_acl.c - source rules: parsing CIDR entries (and the errors), first
 * match wins with default allow, IPv4-mapped clients, the per-source key.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "portrelay/acl.h"

/* A client address: "192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1". */
static struct sockaddr_storage client(const char *text)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons(40000);
	} else {
		assert_int_equal(inet_pton(AF_INET6, text, &v6->sin6_addr), 1);
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(40000);
	}
	return ss;
}

/* An ACL from entries "+NET" (allow) and "-NET" (deny), in order. */
static struct acl make_acl(const char *const *entries, size_t count)
{
	struct acl acl = { .count = 0 };
	char why[256];

	for (size_t i = 0; i < count; i++) {
		struct acl_entry entry;
		if (acl_entry_parse(entries[i] + 1, entries[i][0] == '+', &entry, why,
				    sizeof why) != 0) {
			print_error("%s rejected: %s\n", entries[i], why);
			fail();
		}
		assert_int_equal(acl_append(&acl, &entry), 0);
	}
	return acl;
}

#define ACL(...) make_acl((const char *const[]){ __VA_ARGS__ },                         \
			  sizeof((const char *const[]){ __VA_ARGS__ }) / sizeof(const char *))

static bool allows(const struct acl *acl, const char *address)
{
	struct sockaddr_storage ss = client(address);
	return acl_allows(acl, (const struct sockaddr *)&ss);
}

static void check_parsed(const char *text, int family, const char *formatted)
{
	struct acl_entry entry;
	char why[256], buf[ACL_ENTRY_STRLEN];

	if (acl_entry_parse(text, true, &entry, why, sizeof why) != 0) {
		print_error("%s rejected: %s\n", text, why);
		fail();
	}
	assert_int_equal(entry.family, family);
	assert_true(entry.allow);
	assert_string_equal(acl_entry_format(&entry, buf, sizeof buf), formatted);
}

static void test_entries_parse_and_format(void **state)
{
	(void)state;
	check_parsed("192.168.0.0/16", AF_INET, "192.168.0.0/16");
	check_parsed("10.0.0.0/8", AF_INET, "10.0.0.0/8");
	check_parsed("0.0.0.0/0", AF_INET, "0.0.0.0/0");
	check_parsed("203.0.113.7", AF_INET, "203.0.113.7/32");
	check_parsed("203.0.113.7/32", AF_INET, "203.0.113.7/32");
	check_parsed("2001:db8::/32", AF_INET6, "2001:db8::/32");
	check_parsed("::/0", AF_INET6, "::/0");
	check_parsed("2001:db8::1", AF_INET6, "2001:db8::1/128");
	check_parsed("[2001:db8::]/48", AF_INET6, "2001:db8::/48");
	check_parsed("fe80::/10", AF_INET6, "fe80::/10");
	/* A mapped network is the IPv4 network it names. */
	check_parsed("::ffff:10.0.0.0/104", AF_INET, "10.0.0.0/8");
	check_parsed("::ffff:192.0.2.1", AF_INET, "192.0.2.1/32");

	struct acl_entry entry;
	char why[256];
	assert_int_equal(acl_entry_parse("10.0.0.0/8", false, &entry, why, sizeof why), 0);
	assert_false(entry.allow);
	assert_int_equal(entry.prefix_len, 8);
}

static void check_rejected(const char *text, const char *reason)
{
	struct acl_entry entry;
	char why[256] = "";

	if (acl_entry_parse(text, true, &entry, why, sizeof why) != -1 ||
	    strstr(why, reason) == NULL) {
		print_error("%s: why \"%s\", expected \"%s\"\n", text, why, reason);
		fail();
	}
}

static void test_bad_entries_say_why(void **state)
{
	(void)state;
	check_rejected("10.0.0.1/8", "10.0.0.1/8: host bits set; did you mean 10.0.0.0/8?");
	check_rejected("192.168.1.1/16", "did you mean 192.168.0.0/16?");
	check_rejected("2001:db8::1/32", "2001:db8::1/32: host bits set; did you mean 2001:db8::/32?");
	check_rejected("10.0.0.1/0", "did you mean 0.0.0.0/0?");
	check_rejected("::1/0", "did you mean ::/0?");
	check_rejected("10.0.0.0/33", "10.0.0.0/33: the prefix length must be a number from 0 to 32");
	check_rejected("2001:db8::/129", "the prefix length must be a number from 0 to 128");
	check_rejected("10.0.0.0/", "the prefix length must be a number");
	check_rejected("10.0.0.0/-1", "the prefix length must be a number");
	check_rejected("10.0.0.0/+8", "the prefix length must be a number");
	check_rejected("10.0.0.0/08x", "the prefix length must be a number");
	check_rejected("10.0.0.0/8/8", "the prefix length must be a number");
	check_rejected("10.0.0/8", "10.0.0/8: not an IPv4 or IPv6 address or network");
	check_rejected("", "not an IPv4 or IPv6 address");
	check_rejected("/8", "not an IPv4 or IPv6 address");
	check_rejected("localhost", "not an IPv4 or IPv6 address");
	check_rejected("10.0.0.0 /8", "not an IPv4 or IPv6 address");
	check_rejected("fe80::1%eth0", "not an IPv4 or IPv6 address");
	check_rejected("[10.0.0.0]/8x", "the prefix length");
	check_rejected("0123456789012345678901234567890123456789012345678901234567890123456789",
		       "not an IPv4 or IPv6 address");
}

static void test_empty_acl_allows_everyone(void **state)
{
	(void)state;
	struct acl acl = { .count = 0 };
	assert_true(allows(&acl, "192.0.2.1"));
	assert_true(allows(&acl, "2001:db8::1"));
	assert_true(allows(&acl, "::ffff:192.0.2.1"));
	assert_int_equal(acl_match(&acl, (const struct sockaddr *)&(struct sockaddr_storage){
		.ss_family = AF_INET }), -1);
}

static void test_default_is_allow_when_nothing_matches(void **state)
{
	(void)state;
	struct acl acl = ACL("-10.0.0.0/8", "-2001:db8::/32");
	assert_false(allows(&acl, "10.1.2.3"));
	assert_true(allows(&acl, "11.1.2.3"));
	assert_false(allows(&acl, "2001:db8:1::5"));
	assert_true(allows(&acl, "2001:db9::5"));

	/* An allow list alone changes nothing: others are allowed too. */
	struct acl only_allow = ACL("+192.168.0.0/16");
	assert_true(allows(&only_allow, "192.168.1.1"));
	assert_true(allows(&only_allow, "8.8.8.8"));
}

static void test_first_match_wins(void **state)
{
	(void)state;
	/* allow before deny: an allow list. */
	struct acl allow_list = ACL("+192.168.0.0/16", "+2001:db8::/32", "-0.0.0.0/0", "-::/0");
	assert_true(allows(&allow_list, "192.168.7.7"));
	assert_true(allows(&allow_list, "2001:db8::7"));
	assert_false(allows(&allow_list, "10.0.0.1"));
	assert_false(allows(&allow_list, "2001:db9::7"));
	assert_false(allows(&allow_list, "::ffff:10.0.0.1"));
	assert_true(allows(&allow_list, "::ffff:192.168.0.1"));

	/* The same entries with deny first: everyone is denied. */
	struct acl deny_first = ACL("-0.0.0.0/0", "-::/0", "+192.168.0.0/16", "+2001:db8::/32");
	assert_false(allows(&deny_first, "192.168.7.7"));
	assert_false(allows(&deny_first, "2001:db8::7"));

	/* A hole: deny one host of an allowed network, only if written first. */
	struct acl hole = ACL("-192.168.1.66", "+192.168.1.0/24", "-0.0.0.0/0");
	assert_false(allows(&hole, "192.168.1.66"));
	assert_true(allows(&hole, "192.168.1.65"));
	assert_true(allows(&hole, "192.168.1.67"));
	assert_false(allows(&hole, "192.168.2.1"));
	struct sockaddr_storage ss = client("192.168.1.65");
	assert_int_equal(acl_match(&hole, (const struct sockaddr *)&ss), 1);
}

static void test_prefix_lengths_at_the_edges(void **state)
{
	(void)state;
	struct acl host = ACL("-203.0.113.7/32", "-2001:db8::7/128");
	assert_false(allows(&host, "203.0.113.7"));
	assert_true(allows(&host, "203.0.113.6"));
	assert_true(allows(&host, "203.0.113.8"));
	assert_false(allows(&host, "2001:db8::7"));
	assert_true(allows(&host, "2001:db8::6"));
	assert_true(allows(&host, "2001:db8::7:0"));

	struct acl everything_v4 = ACL("-0.0.0.0/0");
	assert_false(allows(&everything_v4, "0.0.0.1"));
	assert_false(allows(&everything_v4, "255.255.255.255"));
	assert_true(allows(&everything_v4, "::1"));          /* /0 of IPv4 is not IPv6 */

	struct acl everything_v6 = ACL("-::/0");
	assert_false(allows(&everything_v6, "::1"));
	assert_false(allows(&everything_v6, "ffff::1"));
	assert_true(allows(&everything_v6, "192.0.2.1"));    /* nor the reverse */
	assert_true(allows(&everything_v6, "::ffff:192.0.2.1"));

	/* Prefixes that end inside a byte. */
	struct acl odd = ACL("-10.0.0.128/25", "-2001:db8:8000::/33");
	assert_false(allows(&odd, "10.0.0.128"));
	assert_false(allows(&odd, "10.0.0.255"));
	assert_true(allows(&odd, "10.0.0.127"));
	assert_true(allows(&odd, "10.0.1.128"));
	assert_false(allows(&odd, "2001:db8:8000::1"));
	assert_false(allows(&odd, "2001:db8:ffff::1"));
	assert_true(allows(&odd, "2001:db8:7fff::1"));
}

static void test_mapped_clients_match_ipv4_entries(void **state)
{
	(void)state;
	struct acl acl = ACL("-192.0.2.0/24", "-::ffff:198.51.100.0/120");
	assert_false(allows(&acl, "::ffff:192.0.2.9"));
	assert_false(allows(&acl, "192.0.2.9"));
	assert_false(allows(&acl, "198.51.100.1"));
	assert_false(allows(&acl, "::ffff:198.51.100.1"));
	assert_true(allows(&acl, "::ffff:192.0.3.9"));
	/* ::192.0.2.9 (IPv4-compatible, deprecated) is an IPv6 address. */
	assert_true(allows(&acl, "::192.0.2.9"));
}

static void test_list_holds_at_most_the_limit(void **state)
{
	(void)state;
	struct acl acl = { .count = 0 };
	struct acl_entry entry;
	char why[64];

	assert_int_equal(acl_entry_parse("10.0.0.0/8", false, &entry, why, sizeof why), 0);
	for (unsigned i = 0; i < ACL_MAX_ENTRIES; i++)
		assert_int_equal(acl_append(&acl, &entry), 0);
	assert_int_equal(acl_append(&acl, &entry), -1);
	assert_int_equal(acl.count, ACL_MAX_ENTRIES);
	assert_false(allows(&acl, "10.9.9.9"));
}

static void test_equal_compares_entries_in_order(void **state)
{
	(void)state;
	struct acl a = ACL("+10.0.0.0/8", "-0.0.0.0/0");
	struct acl b = ACL("+10.0.0.0/8", "-0.0.0.0/0");
	struct acl swapped = ACL("-0.0.0.0/0", "+10.0.0.0/8");
	struct acl flipped = ACL("-10.0.0.0/8", "-0.0.0.0/0");
	struct acl shorter = ACL("+10.0.0.0/8");
	struct acl wider = ACL("+10.0.0.0/7", "-0.0.0.0/0");
	assert_true(acl_equal(&a, &b));
	assert_false(acl_equal(&a, &swapped));
	assert_false(acl_equal(&a, &flipped));
	assert_false(acl_equal(&a, &shorter));
	assert_false(acl_equal(&a, &wider));
}

static void key_of(const char *address, uint8_t key[ACL_SOURCE_KEY_LEN])
{
	struct sockaddr_storage ss = client(address);
	assert_int_equal(acl_source_key((const struct sockaddr *)&ss, key), 0);
}

static bool same_source(const char *a, const char *b)
{
	uint8_t ka[ACL_SOURCE_KEY_LEN], kb[ACL_SOURCE_KEY_LEN];
	key_of(a, ka);
	key_of(b, kb);
	return memcmp(ka, kb, sizeof ka) == 0;
}

static void test_source_is_the_ipv4_address_or_the_ipv6_64(void **state)
{
	(void)state;
	assert_true(same_source("192.0.2.1", "192.0.2.1"));
	assert_false(same_source("192.0.2.1", "192.0.2.2"));
	assert_true(same_source("192.0.2.1", "::ffff:192.0.2.1"));      /* mapped is IPv4 */
	assert_true(same_source("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"));
	assert_false(same_source("2001:db8:1:2::1", "2001:db8:1:3::1"));
	/* Link-local addresses all share fe80::/64: the whole address is the source. */
	assert_false(same_source("fe80::1", "fe80::2"));
	assert_true(same_source("fe80::1", "fe80::1"));
	/* The kinds never collide. */
	assert_false(same_source("0.0.0.0", "::"));
	assert_false(same_source("::ffff:0:0", "::"));
	assert_false(same_source("192.0.2.1", "::192.0.2.1"));

	uint8_t key[ACL_SOURCE_KEY_LEN];
	key_of("2001:db8:1:2:3:4:5:6", key);
	static const uint8_t want[ACL_SOURCE_KEY_LEN] = { 0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2 };
	assert_memory_equal(key, want, sizeof want);
	key_of("192.0.2.1", key);
	static const uint8_t want_v4[ACL_SOURCE_KEY_LEN] = { [10] = 0xff, [11] = 0xff,
							     [12] = 192, [13] = 0, [14] = 2,
							     [15] = 1 };
	assert_memory_equal(key, want_v4, sizeof want_v4);

	struct sockaddr_storage unix_like = { .ss_family = AF_UNIX };
	memset(key, 0xaa, sizeof key);
	assert_int_equal(acl_source_key((const struct sockaddr *)&unix_like, key), -1);
	assert_memory_equal(key, (uint8_t[ACL_SOURCE_KEY_LEN]){ 0 }, sizeof key);
}

/* The relay asks for every accepted connection: a full list must stay cheap. */
static void test_full_list_matches_quickly(void **state)
{
	(void)state;
	struct acl acl = { .count = 0 };
	char text[64], why[128];
	for (unsigned i = 0; i < ACL_MAX_ENTRIES; i++) {
		struct acl_entry entry;
		snprintf(text, sizeof text, "2001:db8:%x::/48", i);
		assert_int_equal(acl_entry_parse(text, false, &entry, why, sizeof why), 0);
		assert_int_equal(acl_append(&acl, &entry), 0);
	}
	struct sockaddr_storage ss = client("2001:db9::1");
	struct timespec start, end;
	unsigned allowed = 0;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (unsigned i = 0; i < 1000000; i++)
		allowed += acl_allows(&acl, (const struct sockaddr *)&ss);
	clock_gettime(CLOCK_MONOTONIC, &end);
	assert_int_equal(allowed, 1000000);
	double seconds = (double)(end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
	/* About 64 short memcmps each: well under a microsecond, even sanitized. */
	assert_true(seconds < 5.0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_entries_parse_and_format),
		cmocka_unit_test(test_bad_entries_say_why),
		cmocka_unit_test(test_empty_acl_allows_everyone),
		cmocka_unit_test(test_default_is_allow_when_nothing_matches),
		cmocka_unit_test(test_first_match_wins),
		cmocka_unit_test(test_prefix_lengths_at_the_edges),
		cmocka_unit_test(test_mapped_clients_match_ipv4_entries),
		cmocka_unit_test(test_list_holds_at_most_the_limit),
		cmocka_unit_test(test_equal_compares_entries_in_order),
		cmocka_unit_test(test_source_is_the_ipv4_address_or_the_ipv6_64),
		cmocka_unit_test(test_full_list_matches_quickly),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
