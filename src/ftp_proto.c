/*
 * ftp_proto.c - the FTP control channel's grammar, one line at a time
 * (RFC 959, RFC 2428 for EPRT/EPSV, RFC 2228 for AUTH).
 */
#include "portrelay/ftp_proto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#define TELNET_IAC 0xff
/* WILL, WONT, DO and DONT take an option byte after them. */
#define TELNET_WILL 0xfb
#define TELNET_DONT 0xfe

/* The longest address text EPRT may carry: a full IPv6 address. */
#define FTP_EPRT_ADDR_MAX 46

static const struct {
	const char *name;
	enum ftp_verb verb;
} ftp_verbs[] = {
	{ "PORT", FTP_VERB_PORT }, { "EPRT", FTP_VERB_EPRT }, { "PASV", FTP_VERB_PASV },
	{ "EPSV", FTP_VERB_EPSV }, { "LPRT", FTP_VERB_LPRT }, { "LPSV", FTP_VERB_LPSV },
	{ "AUTH", FTP_VERB_AUTH },
};

static bool ftp_is_alpha(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool ftp_is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static unsigned char ftp_upper(unsigned char c)
{
	return c >= 'a' && c <= 'z' ? (unsigned char)(c - 'a' + 'A') : c;
}

const char *ftp_verb_name(enum ftp_verb verb)
{
	for (size_t i = 0; i < sizeof ftp_verbs / sizeof ftp_verbs[0]; i++) {
		if (ftp_verbs[i].verb == verb)
			return ftp_verbs[i].name;
	}
	return "command";
}

/* The length of the Telnet command at p[i] (IAC x, IAC WILL/WONT/DO/DONT option), or 0. */
static size_t ftp_telnet_command(const unsigned char *p, size_t len, size_t i)
{
	if (p[i] != TELNET_IAC || i + 1 >= len || p[i + 1] == TELNET_IAC)
		return 0;
	return (p[i + 1] >= TELNET_WILL && p[i + 1] <= TELNET_DONT) ? 3 : 2;
}

/* Skips Telnet commands and blanks. */
static size_t ftp_skip_prefix(const unsigned char *p, size_t len, bool *blank)
{
	size_t i = 0;
	while (i < len) {
		size_t telnet = ftp_telnet_command(p, len, i);
		if (telnet > 0) {
			i += telnet;
		} else if (p[i] == ' ' || p[i] == '\t') {
			*blank = true;
			i++;
		} else {
			break;
		}
	}
	return i < len ? i : len;
}

void ftp_command_parse(const char *line, size_t len, struct ftp_command *out)
{
	const unsigned char *p = (const unsigned char *)line;
	memset(out, 0, sizeof *out);
	out->verb = FTP_VERB_OTHER;

	size_t start = ftp_skip_prefix(p, len, &out->leading_blank);
	out->verb_offset = start;
	out->empty = start == len;
	/*
	 * The verb's letters. Servers that read Telnet (ProFTPD, the BSD ftpd)
	 * drop its commands anywhere in a line, so "P<IAC IP>ORT" is PORT to
	 * them: the verb is read through Telnet commands, and such a verb is
	 * not clean (the filter refuses it instead of passing a hidden PORT).
	 */
	unsigned char letters[4];
	size_t count = 0, end = start;
	bool telnet_inside = false;
	while (end < len) {
		size_t telnet = ftp_telnet_command(p, len, end);
		if (telnet > 0) {
			telnet_inside = true;
			end = end + telnet < len ? end + telnet : len;
		} else if (ftp_is_alpha(p[end])) {
			if (count < sizeof letters)
				letters[count] = ftp_upper(p[end]);
			count++;
			end++;
		} else {
			break;
		}
	}
	/* No known verb is longer than four letters; "PORTX" is another command. */
	if (count == 4) {
		for (size_t i = 0; i < sizeof ftp_verbs / sizeof ftp_verbs[0]; i++) {
			if (memcmp(letters, ftp_verbs[i].name, 4) == 0)
				out->verb = ftp_verbs[i].verb;
		}
	}
	out->clean_end = !telnet_inside && (end == len || p[end] == ' ');
	if (end < len && p[end] == ' ') {
		out->arg = line + end + 1;
		out->arg_len = len - end - 1;
	}
}

enum ftp_reply_kind ftp_reply_parse(const char *line, size_t len, int *code)
{
	const unsigned char *p = (const unsigned char *)line;
	if (len < 3 || p[0] < '1' || p[0] > '5' || !ftp_is_digit(p[1]) || !ftp_is_digit(p[2]))
		return FTP_REPLY_TEXT;
	if (len > 3 && p[3] != ' ' && p[3] != '-')
		return FTP_REPLY_TEXT;
	*code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
	return len > 3 && p[3] == '-' ? FTP_REPLY_FIRST : FTP_REPLY_LAST;
}

/*
 * A decimal number of 1 to max_digits digits at p[*i], no sign, value at
 * most max_value. Advances *i past it.
 */
static int ftp_number(const unsigned char *p, size_t len, size_t *i, unsigned max_digits,
		      unsigned long max_value, unsigned long *value)
{
	size_t start = *i;
	unsigned long v = 0;
	while (*i < len && ftp_is_digit(p[*i])) {
		if (*i - start >= max_digits)
			return -1;
		v = v * 10 + (unsigned long)(p[*i] - '0');
		(*i)++;
	}
	if (*i == start || v > max_value)
		return -1;
	*value = v;
	return 0;
}

/*
 * Six comma-separated numbers 0-255 at p[*i] into bytes; spaces after a
 * comma only if allow_spaces. Advances *i past the last number.
 */
static int ftp_six_numbers(const unsigned char *p, size_t len, size_t *i, bool allow_spaces,
			   unsigned char bytes[6])
{
	for (int n = 0; n < 6; n++) {
		unsigned long v;
		if (n > 0) {
			if (*i >= len || p[*i] != ',')
				return -1;
			(*i)++;
			while (allow_spaces && *i < len && p[*i] == ' ')
				(*i)++;
		}
		if (ftp_number(p, len, i, 3, 255, &v) < 0)
			return -1;
		bytes[n] = (unsigned char)v;
	}
	return 0;
}

/* An IPv4 address and port from the six bytes of PORT and 227. */
static int ftp_hostport(const unsigned char bytes[6], struct net_addr *out)
{
	uint16_t port = (uint16_t)(bytes[4] << 8 | bytes[5]);
	if (port == 0)
		return -1;
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
	memcpy(&sin.sin_addr, bytes, 4);
	net_addr_set(out, (const struct sockaddr *)&sin, sizeof sin);
	return 0;
}

int ftp_parse_port_arg(const char *arg, size_t len, struct net_addr *out)
{
	const unsigned char *p = (const unsigned char *)arg;
	unsigned char bytes[6];
	size_t i = 0;
	if (arg == NULL || ftp_six_numbers(p, len, &i, false, bytes) < 0 || i != len)
		return -1;
	return ftp_hostport(bytes, out);
}

int ftp_parse_eprt_arg(const char *arg, size_t len, struct net_addr *out)
{
	const unsigned char *p = (const unsigned char *)arg;
	if (arg == NULL || len < 1 || p[0] < 33 || p[0] > 126 || ftp_is_digit(p[0]))
		return -1;
	unsigned char delim = p[0];
	size_t i = 1;
	unsigned long proto, port;
	if (ftp_number(p, len, &i, 1, 2, &proto) < 0 || proto == 0 || i >= len || p[i] != delim)
		return -1;
	size_t addr_start = ++i;
	while (i < len && p[i] != delim)
		i++;
	size_t addr_len = i - addr_start;
	if (i >= len || addr_len == 0 || addr_len > FTP_EPRT_ADDR_MAX)
		return -1;
	/* inet_pton would stop at a NUL and take what is before it. */
	if (memchr(arg + addr_start, '\0', addr_len) != NULL)
		return -1;
	char text[FTP_EPRT_ADDR_MAX + 1];
	memcpy(text, arg + addr_start, addr_len);
	text[addr_len] = '\0';
	i++;
	if (ftp_number(p, len, &i, 5, 65535, &port) < 0 || port == 0 || i + 1 != len ||
	    p[i] != delim)
		return -1;

	if (proto == 1) {
		struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
		if (inet_pton(AF_INET, text, &sin.sin_addr) != 1)
			return -1;
		net_addr_set(out, (const struct sockaddr *)&sin, sizeof sin);
	} else {
		struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6,
					     .sin6_port = htons((uint16_t)port) };
		if (inet_pton(AF_INET6, text, &sin6.sin6_addr) != 1)
			return -1;
		net_addr_set(out, (const struct sockaddr *)&sin6, sizeof sin6);
	}
	return 0;
}

int ftp_parse_227(const char *line, size_t len, struct net_addr *out)
{
	const unsigned char *p = (const unsigned char *)line;
	/* The numbers come after the code: "227 ...". */
	for (size_t start = 4; start < len; start++) {
		if (!ftp_is_digit(p[start]) || ftp_is_digit(p[start - 1]) || p[start - 1] == '-' ||
		    p[start - 1] == '+')
			continue;
		/* Not the tail of a longer list: "(7,192,168,1,2,117,48)" has no six numbers. */
		size_t before = start - 1;
		while (before > 3 && p[before] == ' ')
			before--;
		if (p[before] == ',')
			continue;
		unsigned char bytes[6];
		size_t i = start;
		if (ftp_six_numbers(p, len, &i, true, bytes) == 0 &&
		    (i == len || !ftp_is_digit(p[i])) && (i == len || p[i] != ','))
			return ftp_hostport(bytes, out);
	}
	return -1;
}

int ftp_parse_229(const char *line, size_t len, uint16_t *port)
{
	const unsigned char *p = (const unsigned char *)line;
	const unsigned char *open = memchr(p, '(', len);
	if (open == NULL)
		return -1;
	size_t i = (size_t)(open - p) + 1;
	/* "(" d d d PORT d ")" */
	if (i + 3 > len)
		return -1;
	unsigned char delim = p[i];
	if (delim < 33 || delim > 126 || ftp_is_digit(delim) || p[i + 1] != delim ||
	    p[i + 2] != delim)
		return -1;
	i += 3;
	unsigned long value;
	if (ftp_number(p, len, &i, 5, 65535, &value) < 0 || value == 0)
		return -1;
	if (i + 1 >= len || p[i] != delim || p[i + 1] != ')')
		return -1;
	*port = (uint16_t)value;
	return 0;
}

/* The four bytes of an IPv4 (or v4-mapped IPv6) address; -1 for other IPv6. */
static int ftp_ipv4_bytes(const struct net_addr *addr, unsigned char bytes[4])
{
	if (addr->ss.ss_family == AF_INET) {
		memcpy(bytes, &((const struct sockaddr_in *)&addr->ss)->sin_addr, 4);
		return 0;
	}
	if (addr->ss.ss_family == AF_INET6) {
		const struct in6_addr *a6 = &((const struct sockaddr_in6 *)&addr->ss)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(a6)) {
			memcpy(bytes, &a6->s6_addr[12], 4);
			return 0;
		}
	}
	return -1;
}

static int ftp_formatted(int written, size_t len)
{
	return written > 0 && (size_t)written < len ? written : -1;
}

static int ftp_format_hostport(char *buf, size_t len, const char *prefix,
			       const char *suffix, const struct net_addr *addr)
{
	unsigned char b[4];
	if (ftp_ipv4_bytes(addr, b) < 0)
		return -1;
	uint16_t port = net_addr_port(addr);
	return ftp_formatted(snprintf(buf, len, "%s%u,%u,%u,%u,%u,%u%s\r\n", prefix, b[0], b[1],
				      b[2], b[3], port >> 8, port & 0xff, suffix),
			     len);
}

int ftp_format_227(char *buf, size_t len, const struct net_addr *addr)
{
	return ftp_format_hostport(buf, len, "227 Entering Passive Mode (", ").", addr);
}

int ftp_format_port(char *buf, size_t len, const struct net_addr *addr)
{
	return ftp_format_hostport(buf, len, "PORT ", "", addr);
}

int ftp_format_229(char *buf, size_t len, uint16_t port)
{
	if (port == 0)
		return -1;
	return ftp_formatted(snprintf(buf, len, "229 Entering Extended Passive Mode (|||%u|)\r\n",
				      port),
			     len);
}

int ftp_format_eprt(char *buf, size_t len, const struct net_addr *addr)
{
	unsigned char b[4];
	char ip[INET6_ADDRSTRLEN];
	int proto = 2;
	if (ftp_ipv4_bytes(addr, b) == 0) {
		snprintf(ip, sizeof ip, "%u.%u.%u.%u", b[0], b[1], b[2], b[3]);
		proto = 1;
	} else if (addr->ss.ss_family != AF_INET6) {
		return -1;
	} else {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&addr->ss)->sin6_addr, ip,
			  sizeof ip);
	}
	return ftp_formatted(snprintf(buf, len, "EPRT |%d|%s|%u|\r\n", proto, ip,
				      net_addr_port(addr)),
			     len);
}
