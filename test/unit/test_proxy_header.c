/*
 * test_proxy_header.c - PROXY protocol headers against the specification
 * (haproxy.org doc/proxy-protocol.txt): its version 1 examples, the longest
 * version 1 line, version 2 bytes for TCP and UDP over IPv4 and IPv6,
 * IPv4-mapped clients, and the headers for an unknown source.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "portrelay/proxy_header.h"

static struct sockaddr_storage v4(const char *ip, uint16_t port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
	return ss;
}

static struct sockaddr_storage v6(const char *ip, uint16_t port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons(port);
	assert_int_equal(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1);
	return ss;
}

static size_t write_header(enum proxy_version version, enum proxy_transport transport,
			   struct sockaddr_storage client, struct sockaddr_storage local,
			   uint8_t out[PROXY_HEADER_MAX + 16])
{
	memset(out, 0xee, PROXY_HEADER_MAX + 16);
	size_t len = proxy_header_write(version, transport, (struct sockaddr *)&client,
					(struct sockaddr *)&local, out);
	/* Nothing written past the length it returns. */
	for (size_t i = len; i < PROXY_HEADER_MAX + 16; i++)
		assert_int_equal(out[i], 0xee);
	return len;
}

/* The specification's own example lines. */
static void test_v1_examples(void **state)
{
	(void)state;
	uint8_t out[PROXY_HEADER_MAX + 16];
	size_t len = write_header(PROXY_V1, PROXY_STREAM, v4("192.168.0.1", 56324),
				  v4("192.168.0.11", 443), out);
	const char *want = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
	assert_int_equal(len, strlen(want));
	assert_memory_equal(out, want, len);

	len = write_header(PROXY_V1, PROXY_STREAM, v6("2001:db8::1", 40000), v6("2001:db8::2", 80),
			   out);
	want = "PROXY TCP6 2001:db8::1 2001:db8::2 40000 80\r\n";
	assert_int_equal(len, strlen(want));
	assert_memory_equal(out, want, len);
}

/* The worst case the specification sizes its buffer for: 107 bytes. */
static void test_v1_longest_line_fits(void **state)
{
	(void)state;
	uint8_t out[PROXY_HEADER_MAX + 16];
	const char *max6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
	size_t len = write_header(PROXY_V1, PROXY_STREAM, v6(max6, 65535), v6(max6, 65535), out);
	assert_int_equal(len, 104);
	assert_true(len <= PROXY_V1_MAX);
	assert_memory_equal(out + len - 2, "\r\n", 2);
}

/* A dual-stack listener's IPv4 client is written as IPv4, in both versions. */
static void test_mapped_clients_are_ipv4(void **state)
{
	(void)state;
	uint8_t out[PROXY_HEADER_MAX + 16];
	size_t len = write_header(PROXY_V1, PROXY_STREAM, v6("::ffff:172.16.2.100", 51000),
				  v6("::ffff:172.16.2.5", 21), out);
	const char *want = "PROXY TCP4 172.16.2.100 172.16.2.5 51000 21\r\n";
	assert_int_equal(len, strlen(want));
	assert_memory_equal(out, want, len);

	len = write_header(PROXY_V2, PROXY_STREAM, v6("::ffff:172.16.2.100", 51000),
			   v6("::ffff:172.16.2.5", 21), out);
	assert_int_equal(len, 28);
	assert_int_equal(out[13], 0x11);
}

static const uint8_t signature[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
				       0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

static void test_v2_tcp4_and_udp4_bytes(void **state)
{
	(void)state;
	uint8_t out[PROXY_HEADER_MAX + 16];
	size_t len = write_header(PROXY_V2, PROXY_STREAM, v4("172.16.2.100", 0x1234),
				  v4("172.16.2.5", 21), out);
	const uint8_t want[28] = {
		0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
		0x21,                  /* version 2, PROXY */
		0x11,                  /* TCP over IPv4 */
		0x00, 0x0c,            /* 12 bytes follow */
		172, 16, 2, 100,       /* source address */
		172, 16, 2, 5,         /* destination address */
		0x12, 0x34,            /* source port */
		0x00, 21,              /* destination port */
	};
	assert_int_equal(len, sizeof want);
	assert_memory_equal(out, want, sizeof want);

	len = write_header(PROXY_V2, PROXY_DGRAM, v4("172.16.2.100", 0x1234), v4("172.16.2.5", 53),
			   out);
	assert_int_equal(len, 28);
	assert_int_equal(out[13], 0x12);   /* UDP over IPv4 */
	assert_int_equal(out[27], 53);
}

static void test_v2_tcp6_and_udp6_bytes(void **state)
{
	(void)state;
	uint8_t out[PROXY_HEADER_MAX + 16];
	size_t len = write_header(PROXY_V2, PROXY_STREAM, v6("2001:db8::1", 40000),
				  v6("2001:db8::2", 443), out);
	assert_int_equal(len, 16 + 36);
	assert_memory_equal(out, signature, 12);
	assert_int_equal(out[12], 0x21);
	assert_int_equal(out[13], 0x21);   /* TCP over IPv6 */
	assert_int_equal(out[14], 0);
	assert_int_equal(out[15], 36);
	struct in6_addr a;
	inet_pton(AF_INET6, "2001:db8::1", &a);
	assert_memory_equal(out + 16, &a, 16);
	inet_pton(AF_INET6, "2001:db8::2", &a);
	assert_memory_equal(out + 32, &a, 16);
	assert_int_equal(out[48] << 8 | out[49], 40000);
	assert_int_equal(out[50] << 8 | out[51], 443);

	len = write_header(PROXY_V2, PROXY_DGRAM, v6("2001:db8::1", 40000), v6("2001:db8::2", 53),
			   out);
	assert_int_equal(len, 52);
	assert_int_equal(out[13], 0x22);   /* UDP over IPv6 */
}

/* Families that do not match (or are neither): no address, as the specification allows. */
static void test_unknown_source(void **state)
{
	(void)state;
	uint8_t out[PROXY_HEADER_MAX + 16];
	size_t len = write_header(PROXY_V1, PROXY_STREAM, v6("2001:db8::1", 1), v4("192.0.2.1", 2),
				  out);
	assert_int_equal(len, 15);
	assert_memory_equal(out, "PROXY UNKNOWN\r\n", 15);

	len = write_header(PROXY_V2, PROXY_STREAM, v6("2001:db8::1", 1), v4("192.0.2.1", 2), out);
	assert_int_equal(len, 16);
	assert_memory_equal(out, signature, 12);
	assert_int_equal(out[12], 0x20);   /* LOCAL */
	assert_int_equal(out[13], 0x00);
	assert_int_equal(out[14] | out[15], 0);
}

/* Version 1 has no datagrams; PROXY_NONE writes nothing. */
static void test_nothing_written(void **state)
{
	(void)state;
	uint8_t out[PROXY_HEADER_MAX + 16];
	assert_int_equal(write_header(PROXY_V1, PROXY_DGRAM, v4("192.0.2.1", 1), v4("192.0.2.2", 2),
				      out), 0);
	assert_int_equal(write_header(PROXY_NONE, PROXY_STREAM, v4("192.0.2.1", 1),
				      v4("192.0.2.2", 2), out), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_v1_examples),
		cmocka_unit_test(test_v1_longest_line_fits),
		cmocka_unit_test(test_mapped_clients_are_ipv4),
		cmocka_unit_test(test_v2_tcp4_and_udp4_bytes),
		cmocka_unit_test(test_v2_tcp6_and_udp6_bytes),
		cmocka_unit_test(test_unknown_source),
		cmocka_unit_test(test_nothing_written),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
