/*
 * fuzz_ftp_filter.c - libFuzzer target: one FTP control connection through
 * ftp_filter, driven by a script read from the input (see "The script").
 *
 * Besides what the sanitizers catch, it checks after every step:
 *   - output to a side never exceeds OUT_BOUND, and urgent_len <= its length;
 *   - room() never exceeds FTP_LINE_MAX, and is 0 once the session failed
 *     or the side's input is done;
 *   - a failure ("line too long") only after a line of FTP_LINE_MAX bytes
 *     really came from that side;
 * and at the end:
 *   - open_active was asked only for ports that a well-formed PORT/EPRT of
 *     the client named with the client's own address, at 1024 or above;
 * and over everything the server got before the channel turned opaque
 * (AUTH TLS), read as a lenient server reads it (Telnet commands dropped
 * anywhere, blanks skipped, CR and NUL ending lines):
 *   - every PORT/EPRT is exactly the relay's own line naming the listener
 *     its hook returned, and there are as many as successful open_active;
 *   - every PASV/EPSV is the relay's own bare one; no LPRT/LPSV at all;
 *   - open_passive was asked at most once per PASV/EPSV the server got.
 *
 * The script: byte 0 sets the addresses (client IPv4/IPv6/v4-mapped, server
 * family, the listeners' families); then one operation per byte, op = b & 15:
 *   0/1   feed the client/server the next (next byte + 1) input bytes;
 *         with b & 0x80 the byte after gives the urgent byte's index
 *   2/3   feed the client/server (2 bytes) copies of (1 byte): long lines
 *   4/5   the client/server takes (2 bytes, 0: all) of its output
 *   6/7   EOF from the client/server
 *   8/9   the passive/active hook fails from now on / works again
 *   10    both sides take all their output
 *   11/12 feed the client/server a token from a list (next byte picks it)
 * Every feed is cut to room(), as the helper does.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "portrelay/ftp_filter.h"
#include "portrelay/ftp_proto.h"
#include "portrelay/net.h"

/* ftp_filter.c: output pauses at two lines; one step adds at most four more. */
#define OUT_BOUND (2 * FTP_LINE_MAX + 4 * FTP_LINE_MAX)
#define MAX_STEPS 4096

#include "fuzz_check.h"

struct bytes {
	unsigned char *data;
	size_t len, cap;
};

static void bytes_add(struct bytes *b, const void *data, size_t len)
{
	if (b->len + len > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + len)
			cap *= 2;
		b->data = realloc(b->data, cap);
		CHECK(b->data != NULL);
		b->cap = cap;
	}
	memcpy(b->data + b->len, data, len);
	b->len += len;
}

struct run {
	struct ftp_filter *f;
	struct net_addr passive_listen, active_listen;
	int passive_rc, active_rc;
	unsigned passive_calls, active_ok;
	/* The client ports open_active was asked for, and every byte the client sent. */
	struct bytes active_ports;
	struct bytes client_sent;
	/* Everything each side was sent (taken from the output). */
	struct bytes got[2];
	/* How much of got[FTP_SERVER] came before the channel turned opaque. */
	size_t server_clear_len;
	bool opaque_seen;
	/* The longest run without LF each side sent while the channel was clear. */
	size_t run_len[2], max_run[2];
};

static int hook_passive(void *arg, uint16_t server_port, struct net_addr *out)
{
	struct run *r = arg;
	CHECK(server_port != 0);
	r->passive_calls++;
	if (r->passive_rc == 0)
		*out = r->passive_listen;
	return r->passive_rc;
}

static int hook_active(void *arg, uint16_t client_port, struct net_addr *out)
{
	struct run *r = arg;
	CHECK(client_port >= 1024);
	bytes_add(&r->active_ports, &client_port, sizeof client_port);
	if (r->active_rc == 0) {
		*out = r->active_listen;
		r->active_ok++;
	}
	return r->active_rc;
}

static void hook_refused(void *arg, enum ftp_verb verb, const char *why)
{
	(void)arg;
	(void)verb;
	CHECK(why != NULL);
}

static size_t output(struct run *r, enum ftp_side side, const char **data, size_t *urgent)
{
	return ftp_filter_output(r->f, side, data, urgent);
}

/* The output waiting for the server plus what it already took. */
static size_t server_produced(struct run *r)
{
	const char *data;
	size_t urgent;
	return r->got[FTP_SERVER].len + output(r, FTP_SERVER, &data, &urgent);
}

static void take(struct run *r, enum ftp_side side, size_t n)
{
	const char *data;
	size_t urgent;
	size_t len = output(r, side, &data, &urgent);
	if (n == 0 || n > len)
		n = len;
	if (n == 0)
		return;
	bytes_add(&r->got[side], data, n);
	ftp_filter_sent(r->f, side, n);
}

static void feed(struct run *r, enum ftp_side side, const unsigned char *data, size_t len,
		 long urgent_at)
{
	size_t room = ftp_filter_room(r->f, side);
	if (len > room)
		len = room;
	if (len == 0)
		return;
	if (urgent_at >= (long)len)
		urgent_at = -1;
	if (side == FTP_CLIENT)
		bytes_add(&r->client_sent, data, len);
	if (!ftp_filter_is_opaque(r->f)) {
		for (size_t i = 0; i < len; i++) {
			r->run_len[side] = data[i] == '\n' ? 0 : r->run_len[side] + 1;
			if (r->run_len[side] > r->max_run[side])
				r->max_run[side] = r->run_len[side];
		}
	}
	ftp_filter_feed(r->f, side, (const char *)data, len, urgent_at);
}

static void check(struct run *r)
{
	for (int side = 0; side < 2; side++) {
		const char *data;
		size_t urgent;
		size_t len = output(r, (enum ftp_side)side, &data, &urgent);
		CHECK(len <= OUT_BOUND);
		CHECK(urgent <= len);
		CHECK(len == 0 || data != NULL);
		size_t room = ftp_filter_room(r->f, (enum ftp_side)side);
		CHECK(room <= FTP_LINE_MAX);
		if (ftp_filter_failure(r->f) != NULL || ftp_filter_input_done(r->f, (enum ftp_side)side))
			CHECK(room == 0);
	}
	const char *failure = ftp_filter_failure(r->f);
	/* The output bounds hold, so the filter never runs out of room. */
	if (failure != NULL)
		CHECK(strstr(failure, "out of memory") == NULL);
	if (failure != NULL && strcmp(failure, "command line too long") == 0)
		CHECK(r->max_run[FTP_CLIENT] >= FTP_LINE_MAX);
	if (failure != NULL && strcmp(failure, "reply line too long") == 0)
		CHECK(r->max_run[FTP_SERVER] >= FTP_LINE_MAX);
}

/* A Telnet command at p[i] (as ProFTPD and the BSD ftpd drop them): its length, or 0. */
static size_t telnet_len(const unsigned char *p, size_t len, size_t i)
{
	if (p[i] != 0xff || i + 1 >= len || p[i + 1] == 0xff)
		return 0;
	return p[i + 1] >= 0xfb && p[i + 1] <= 0xfe ? 3 : 2;
}

/* One line as the most lenient server reads it: its verb (upper case, up to 8 letters). */
static void lenient_verb(const unsigned char *line, size_t len, char verb[9])
{
	unsigned char clean[64];
	size_t n = 0;
	for (size_t i = 0; i < len && n < sizeof clean;) {
		size_t t = telnet_len(line, len, i);
		if (t > 0) {
			i += t;
			continue;
		}
		if (line[i] == 0xff && i + 1 < len && line[i + 1] == 0xff)
			i++;
		clean[n++] = line[i++];
	}
	size_t i = 0;
	while (i < n && (clean[i] == ' ' || clean[i] == '\t'))
		i++;
	size_t v = 0;
	while (i < n && v < 8 &&
	       ((clean[i] >= 'A' && clean[i] <= 'Z') || (clean[i] >= 'a' && clean[i] <= 'z'))) {
		verb[v++] = (char)(clean[i] & ~0x20);
		i++;
	}
	verb[v] = '\0';
}

static bool line_is(const unsigned char *line, size_t len, const char *want)
{
	return len == strlen(want) && memcmp(line, want, len) == 0;
}

/* What the server got while the channel was clear, line by line. */
static void check_server_stream(struct run *r, int server_family)
{
	char port_line[128], eprt_line[128];
	int n;
	n = ftp_format_port(port_line, sizeof port_line, &r->active_listen);
	if (n > 0)
		port_line[n - 2] = '\0';
	else
		port_line[0] = '\0';
	n = ftp_format_eprt(eprt_line, sizeof eprt_line, &r->active_listen);
	if (n > 0)
		eprt_line[n - 2] = '\0';
	else
		eprt_line[0] = '\0';
	const char *relay_active = server_family == AF_INET6 ? eprt_line : port_line;
	const char *relay_passive = server_family == AF_INET6 ? "EPSV" : "PASV";

	static const unsigned char nothing[1];
	const unsigned char *s = r->got[FTP_SERVER].data != NULL ? r->got[FTP_SERVER].data : nothing;
	size_t len = r->opaque_seen ? r->server_clear_len : r->got[FTP_SERVER].len;
	unsigned active_lines = 0, passive_lines = 0;
	size_t start = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && s[i] != '\n' && s[i] != '\r' && s[i] != '\0')
			continue;
		const unsigned char *line = s + start;
		size_t line_len = i - start;
		start = i + 1;
		char verb[9];
		lenient_verb(line, line_len, verb);
		if (strcmp(verb, "PORT") == 0 || strcmp(verb, "EPRT") == 0) {
			if (!line_is(line, line_len, relay_active)) {
				fprintf(stderr, "the server got a %s that is not the relay's: %.*s\n",
					verb, (int)line_len, (const char *)line);
				abort();
			}
			active_lines++;
		} else if (strcmp(verb, "PASV") == 0 || strcmp(verb, "EPSV") == 0) {
			CHECK(line_is(line, line_len, relay_passive));
			passive_lines++;
		} else {
			CHECK(strcmp(verb, "LPRT") != 0 && strcmp(verb, "LPSV") != 0);
		}
	}
	/* Each listener opened is named to the server once, if it can be named at all. */
	CHECK(active_lines <= r->active_ok);
	if (!r->opaque_seen && relay_active[0] != '\0')
		CHECK(active_lines == r->active_ok);
	if (relay_active[0] == '\0')
		CHECK(active_lines == 0);
	if (!r->opaque_seen)
		CHECK(r->passive_calls <= passive_lines);
}

static int compare_ports(const void *a, const void *b)
{
	uint16_t x, y;
	memcpy(&x, a, sizeof x);
	memcpy(&y, b, sizeof y);
	return (x > y) - (x < y);
}

/*
 * A listener is opened only for a PORT/EPRT the client sent naming its own
 * address and a port of 1024 or above: the ports open_active was asked for
 * are among those (each at most as often as it was named).
 */
static void check_active_requests(struct run *r, const struct net_addr *client)
{
	struct net_addr own = *client;
	net_addr_unmap(&own);
	struct bytes allowed = { 0 };
	const char *s = (const char *)r->client_sent.data;
	size_t start = 0;
	for (size_t i = 0; i < r->client_sent.len; i++) {
		if (s[i] != '\n')
			continue;
		size_t len = i - start;
		if (len > 0 && s[start + len - 1] == '\r')
			len--;
		struct ftp_command cmd;
		struct net_addr addr;
		ftp_command_parse(s + start, len, &cmd);
		int rc = -1;
		if (cmd.verb == FTP_VERB_PORT)
			rc = ftp_parse_port_arg(cmd.arg, cmd.arg_len, &addr);
		else if (cmd.verb == FTP_VERB_EPRT)
			rc = ftp_parse_eprt_arg(cmd.arg, cmd.arg_len, &addr);
		if (rc == 0) {
			net_addr_unmap(&addr);
			uint16_t port = net_addr_port(&addr);
			if (net_addr_same_ip(&addr, &own) && port >= 1024)
				bytes_add(&allowed, &port, sizeof port);
		}
		start = i + 1;
	}
	size_t asked = r->active_ports.len / 2, named = allowed.len / 2;
	if (asked > 0) {
		qsort(r->active_ports.data, asked, 2, compare_ports);
		qsort(allowed.data, named, 2, compare_ports);
	}
	/* Multiset inclusion of the sorted asked ports in the sorted named ones. */
	size_t j = 0;
	for (size_t i = 0; i < asked; i++) {
		while (j < named && compare_ports(allowed.data + 2 * j, r->active_ports.data + 2 * i) < 0)
			j++;
		if (j == named || compare_ports(allowed.data + 2 * j, r->active_ports.data + 2 * i) != 0) {
			uint16_t port;
			memcpy(&port, r->active_ports.data + 2 * i, sizeof port);
			fprintf(stderr, "open_active for port %u, which no valid PORT/EPRT of the "
					"client named\n", port);
			abort();
		}
		j++;
	}
	free(allowed.data);
}

static const char *const tokens[] = {
	"PORT ", "EPRT ", "PASV\r\n", "EPSV\r\n", "EPSV ALL\r\n", "EPSV 1\r\n", "EPSV 2\r\n",
	"LPRT ", "LPSV\r\n", "AUTH TLS\r\n", "ABOR\r\n", "\xff\xf4\xff\xf2", "\xff\xfb\x01",
	"\r\n", "\n", "\r", " ", ",", "|", "|1|", "|2|", "203,0,113,5,19,137",
	"203.0.113.5", "2001:db8::5", "::ffff:203.0.113.5", "|1|203.0.113.5|5001|\r\n",
	"|2|2001:db8::5|5001|\r\n", "10,0,0,99,19,137", "65535", "0", "255", "256",
	"220 Ready\r\n", "227 Entering Passive Mode (10,0,0,9,117,48).\r\n", "227-",
	"227 ", "229 Entering Extended Passive Mode (|||6446|)\r\n", "229-", "229 ",
	"234 Proceed\r\n", "150 Opening\r\n", "200 OK\r\n", "211-", "211 End\r\n",
	"421 Bye\r\n", "(", ")",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t setup = data[0];
	size_t at = 1;

	static const char *const clients[] = { "203.0.113.5", "2001:db8::5", "::ffff:203.0.113.5",
					       "203.0.113.5" };
	static const char *const passives[] = { "198.51.100.1", "2001:db8::1",
						"::ffff:198.51.100.1", "0.0.0.0" };
	static const char *const actives[] = { "10.0.0.1", "fd00::1", "::ffff:10.0.0.1",
					       "255.255.255.255" };
	struct run r;
	memset(&r, 0, sizeof r);
	struct ftp_filter_params params = { .server_family = setup & 4 ? AF_INET6 : AF_INET };
	CHECK(net_addr_parse_ip(clients[setup & 3], 50000, &params.client_addr) == 0);
	CHECK(net_addr_parse_ip(passives[(setup >> 3) & 3], 40000, &r.passive_listen) == 0);
	CHECK(net_addr_parse_ip(actives[(setup >> 5) & 3], (uint16_t)(setup & 0x80 ? 1 : 40001),
				&r.active_listen) == 0);
	struct ftp_filter_hooks hooks = { .open_passive = hook_passive,
					  .open_active = hook_active,
					  .refused = hook_refused,
					  .arg = &r };
	r.f = ftp_filter_new(&params, &hooks);
	CHECK(r.f != NULL);

	unsigned char fill[65536];
	for (int steps = 0; at < size && steps < MAX_STEPS; steps++) {
		uint8_t b = data[at++];
		size_t before = server_produced(&r);
		switch (b & 15) {
		case 0:
		case 1: {
			if (at >= size)
				break;
			size_t len = (size_t)data[at++] + 1;
			long urgent = -1;
			if ((b & 0x80) && at < size)
				urgent = data[at++];
			if (len > size - at)
				len = size - at;
			feed(&r, (enum ftp_side)(b & 1), data + at, len, urgent);
			at += len;
			break;
		}
		case 2:
		case 3: {
			if (size - at < 3)
				break;
			size_t count = (size_t)data[at] << 8 | data[at + 1];
			memset(fill, data[at + 2], count);
			at += 3;
			feed(&r, (enum ftp_side)(b & 1), fill, count, -1);
			break;
		}
		case 4:
		case 5: {
			size_t n = 0;
			if (size - at >= 2) {
				n = (size_t)data[at] << 8 | data[at + 1];
				at += 2;
			}
			take(&r, (enum ftp_side)(b & 1), n);
			break;
		}
		case 6:
		case 7:
			ftp_filter_eof(r.f, (enum ftp_side)(b & 1));
			break;
		case 8:
			r.passive_rc = r.passive_rc == 0 ? -1 : 0;
			break;
		case 9:
			r.active_rc = r.active_rc == 0 ? -1 : 0;
			break;
		case 10:
			take(&r, FTP_CLIENT, 0);
			take(&r, FTP_SERVER, 0);
			break;
		case 11:
		case 12: {
			if (at >= size)
				break;
			const char *t = tokens[data[at++] % (sizeof tokens / sizeof tokens[0])];
			feed(&r, (b & 15) == 11 ? FTP_CLIENT : FTP_SERVER, (const unsigned char *)t,
			     strlen(t), -1);
			break;
		}
		default:
			break;
		}
		if (!r.opaque_seen && ftp_filter_is_opaque(r.f)) {
			r.opaque_seen = true;
			r.server_clear_len = before;
		}
		check(&r);
	}
	/* The end: everything taken, both sides closed, everything taken again. */
	take(&r, FTP_CLIENT, 0);
	take(&r, FTP_SERVER, 0);
	size_t before = server_produced(&r);
	ftp_filter_eof(r.f, FTP_CLIENT);
	ftp_filter_eof(r.f, FTP_SERVER);
	if (!r.opaque_seen && ftp_filter_is_opaque(r.f)) {
		r.opaque_seen = true;
		r.server_clear_len = before;
	}
	check(&r);
	for (int i = 0; i < 64; i++) {
		take(&r, FTP_CLIENT, 0);
		take(&r, FTP_SERVER, 0);
	}
	check_server_stream(&r, params.server_family);
	check_active_requests(&r, &params.client_addr);
	ftp_filter_free(r.f);
	free(r.got[0].data);
	free(r.got[1].data);
	free(r.active_ports.data);
	free(r.client_sent.data);
	return 0;
}
