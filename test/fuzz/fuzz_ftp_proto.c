/*
 * fuzz_ftp_proto.c - libFuzzer target: every parser of ftp_proto.h on the
 * input as one line, each checked against what it promises:
 *   - ftp_command_parse: offsets and the argument inside the line;
 *   - ftp_reply_parse: a code of 100-599 unless the line is text;
 *   - ftp_parse_port_arg and ftp_parse_229: the same answer as an
 *     independent strict reading written here;
 *   - ftp_parse_eprt_arg, ftp_parse_227: what they accept, written back
 *     by the format functions and read again, is the same address and port;
 *     the EPRT address text holds no NUL;
 *   - the format functions never write past the buffer they are given.
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "portrelay/ftp_proto.h"
#include "portrelay/net.h"

#include "fuzz_check.h"

static bool digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/* Up to max_digits digits at p[*i] (at least one), value <= max; -1 otherwise. */
static long number(const unsigned char *p, size_t len, size_t *i, int max_digits, long max)
{
	size_t start = *i;
	long v = 0;
	while (*i < len && digit(p[*i]) && (int)(*i - start) < max_digits)
		v = v * 10 + (p[(*i)++] - '0');
	if (*i == start || (*i < len && digit(p[*i])) || v > max)
		return -1;
	return v;
}

/* PORT's argument read independently: six numbers 0-255, 1-3 digits, port != 0. */
static bool strict_port(const unsigned char *p, size_t len, uint32_t *ip, uint16_t *port)
{
	size_t i = 0;
	long n[6];
	for (int k = 0; k < 6; k++) {
		if (k > 0) {
			if (i >= len || p[i] != ',')
				return false;
			i++;
		}
		if ((n[k] = number(p, len, &i, 3, 255)) < 0)
			return false;
	}
	if (i != len)
		return false;
	*ip = (uint32_t)(n[0] << 24 | n[1] << 16 | n[2] << 8 | n[3]);
	*port = (uint16_t)(n[4] << 8 | n[5]);
	return *port != 0;
}

/* A 229 read independently: at the first '(', d d d PORT d ')', d in 33-126 not a digit. */
static bool strict_229(const unsigned char *p, size_t len, uint16_t *port)
{
	const unsigned char *open = memchr(p, '(', len);
	if (open == NULL)
		return false;
	size_t i = (size_t)(open - p) + 1;
	if (len - i < 6)
		return false;
	unsigned char d = p[i];
	if (d < 33 || d > 126 || digit(d) || p[i + 1] != d || p[i + 2] != d)
		return false;
	i += 3;
	long v = number(p, len, &i, 5, 65535);
	if (v <= 0 || i + 1 >= len || p[i] != d || p[i + 1] != ')')
		return false;
	*port = (uint16_t)v;
	return true;
}

static uint32_t ipv4_of(const struct net_addr *addr)
{
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&addr->ss;
	return ntohl(sin->sin_addr.s_addr);
}

/* Formats into a buffer of exactly `size` bytes in its own allocation (ASan sees overruns). */
typedef int (*format_fn)(char *buf, size_t len, const struct net_addr *addr);

static int format_exact(format_fn fn, const struct net_addr *addr, size_t size, char *copy)
{
	char *buf = malloc(size ? size : 1);
	CHECK(buf != NULL);
	int n = fn(buf, size, addr);
	CHECK(n == -1 || (n > 2 && (size_t)n < size && buf[n] == '\0' && buf[n - 2] == '\r' &&
			  buf[n - 1] == '\n'));
	if (n > 0 && copy != NULL)
		memcpy(copy, buf, (size_t)n + 1);
	free(buf);
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *line = (const char *)data;
	const unsigned char *p = data;
	char buf[160];

	/* ftp_command_parse */
	struct ftp_command cmd;
	ftp_command_parse(line, size, &cmd);
	CHECK(cmd.verb_offset <= size);
	CHECK(!cmd.empty || (cmd.verb == FTP_VERB_OTHER && cmd.verb_offset == size));
	if (cmd.arg != NULL) {
		CHECK(cmd.arg > line && cmd.arg <= line + size);
		CHECK(cmd.arg[-1] == ' ');
		CHECK(cmd.arg + cmd.arg_len == line + size);
	} else {
		CHECK(cmd.arg_len == 0);
	}
	if (cmd.verb != FTP_VERB_OTHER && cmd.clean_end && !cmd.leading_blank)
		CHECK(cmd.verb_offset + 4 <= size);
	CHECK(ftp_verb_name(cmd.verb) != NULL);

	/* ftp_reply_parse */
	int code = -1;
	enum ftp_reply_kind kind = ftp_reply_parse(line, size, &code);
	if (kind != FTP_REPLY_TEXT) {
		CHECK(code >= 100 && code <= 599);
		CHECK(size >= 3 && digit(p[0]) && digit(p[1]) && digit(p[2]));
		CHECK(kind == FTP_REPLY_FIRST ? size > 3 && p[3] == '-' : size == 3 || p[3] == ' ');
	}

	/* ftp_parse_port_arg against the independent reading */
	struct net_addr addr, back;
	uint32_t want_ip;
	uint16_t want_port;
	bool strict = strict_port(p, size, &want_ip, &want_port);
	int rc = ftp_parse_port_arg(line, size, &addr);
	CHECK((rc == 0) == strict);
	if (rc == 0) {
		CHECK(net_addr_family(&addr) == AF_INET);
		CHECK(ipv4_of(&addr) == want_ip && net_addr_port(&addr) == want_port);
		int n = format_exact(ftp_format_port, &addr, sizeof buf, buf);
		CHECK(n > 7);
		CHECK(ftp_parse_port_arg(buf + 5, (size_t)n - 7, &back) == 0);
		CHECK(net_addr_same_ip(&addr, &back) && net_addr_port(&back) == want_port);
		/* One byte short of the line and its NUL: refused. */
		CHECK(format_exact(ftp_format_port, &addr, (size_t)n, NULL) == -1);
	}

	/* ftp_parse_eprt_arg: what it takes, written and read again */
	rc = ftp_parse_eprt_arg(line, size, &addr);
	if (rc == 0) {
		CHECK(size >= 8 && p[0] == p[size - 1] && p[0] >= 33 && p[0] <= 126);
		CHECK(memchr(line, '\0', size) == NULL);
		int family = net_addr_family(&addr);
		CHECK(family == (p[1] == '1' ? AF_INET : AF_INET6));
		CHECK(net_addr_port(&addr) != 0);
		int n = format_exact(ftp_format_eprt, &addr, sizeof buf, buf);
		CHECK(n > 7);
		CHECK(ftp_parse_eprt_arg(buf + 5, (size_t)n - 7, &back) == 0);
		net_addr_unmap(&addr);
		net_addr_unmap(&back);
		CHECK(net_addr_same_ip(&addr, &back) && net_addr_port(&back) == net_addr_port(&addr));
		CHECK(format_exact(ftp_format_eprt, &addr, (size_t)n, NULL) == -1);
	}

	/* ftp_parse_227: the address and port it finds survive the relay's 227 */
	rc = ftp_parse_227(line, size, &addr);
	if (rc == 0) {
		CHECK(net_addr_family(&addr) == AF_INET && net_addr_port(&addr) != 0);
		int n = format_exact(ftp_format_227, &addr, sizeof buf, buf);
		CHECK(n > 2);
		CHECK(ftp_parse_227(buf, (size_t)n - 2, &back) == 0);
		CHECK(net_addr_same_ip(&addr, &back) && net_addr_port(&back) == net_addr_port(&addr));
		CHECK(format_exact(ftp_format_227, &addr, (size_t)n, NULL) == -1);
	}

	/* ftp_parse_229 against the independent reading */
	uint16_t port = 7, strict_value = 0;
	strict = strict_229(p, size, &strict_value);
	rc = ftp_parse_229(line, size, &port);
	CHECK((rc == 0) == strict);
	CHECK(rc == 0 ? port == strict_value : port == 7);
	if (rc == 0) {
		int n = ftp_format_229(buf, sizeof buf, port);
		CHECK(n > 2);
		uint16_t again = 0;
		CHECK(ftp_parse_229(buf, (size_t)n - 2, &again) == 0 && again == port);
	}

	/* The format functions on addresses made of the input's bytes */
	if (size >= 18) {
		struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
		memcpy(&sin6.sin6_addr, data, 16);
		sin6.sin6_port = (uint16_t)(data[16] << 8 | data[17]);
		net_addr_set(&addr, (const struct sockaddr *)&sin6, sizeof sin6);
		for (size_t len = 0; len < 64; len += 7) {
			format_exact(ftp_format_eprt, &addr, len, NULL);
			format_exact(ftp_format_227, &addr, len, NULL);
			format_exact(ftp_format_port, &addr, len, NULL);
		}
		int n = format_exact(ftp_format_eprt, &addr, sizeof buf, buf);
		if (n > 0 && net_addr_port(&addr) != 0) {
			CHECK(ftp_parse_eprt_arg(buf + 5, (size_t)n - 7, &back) == 0);
			net_addr_unmap(&addr);
			net_addr_unmap(&back);
			CHECK(net_addr_same_ip(&addr, &back));
		}
	}
	return 0;
}
