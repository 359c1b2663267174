/*
 * proxy_header.c - PROXY protocol headers, versions 1 and 2 (proxy_header.h).
 *
 * From the specification (haproxy.org, doc/proxy-protocol.txt):
 *   v1: "PROXY TCP4 SRC DST SPORT DPORT\r\n" (TCP6 for IPv6), in text,
 *       at most 107 bytes; "PROXY UNKNOWN\r\n" when the source is unknown.
 *   v2: a 12-byte signature, a version/command byte (0x21: v2, PROXY;
 *       0x20: LOCAL), a family/transport byte (0x11 TCP over IPv4, 0x12
 *       UDP over IPv4, 0x21 TCP over IPv6, 0x22 UDP over IPv6, 0x00
 *       unspecified), the length of what follows (network order), then
 *       source and destination addresses and ports, in network order.
 */
#include "portrelay/proxy_header.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static const uint8_t proxy_v2_signature[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
};

/* An endpoint as the header carries it: IPv4 (mapped ones unmapped) or IPv6. */
struct proxy_endpoint {
	int family;
	uint8_t addr[16];              /* IPv4 in the first 4 bytes */
	uint16_t port;                 /* network order */
};

static bool proxy_endpoint_of(const struct sockaddr *sa, struct proxy_endpoint *out)
{
	memset(out, 0, sizeof *out);
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		out->family = AF_INET;
		memcpy(out->addr, &sin->sin_addr, 4);
		out->port = sin->sin_port;
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		out->port = sin6->sin6_port;
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
			out->family = AF_INET;
			memcpy(out->addr, &sin6->sin6_addr.s6_addr[12], 4);
		} else {
			out->family = AF_INET6;
			memcpy(out->addr, &sin6->sin6_addr, 16);
		}
		return true;
	}
	return false;
}

static size_t proxy_v1_write(const struct proxy_endpoint *src, const struct proxy_endpoint *dst,
			     bool known, uint8_t *out)
{
	if (!known) {
		memcpy(out, "PROXY UNKNOWN\r\n", 15);
		return 15;
	}
	char from[INET6_ADDRSTRLEN], to[INET6_ADDRSTRLEN];
	inet_ntop(src->family, src->addr, from, sizeof from);
	inet_ntop(dst->family, dst->addr, to, sizeof to);
	/* Formatted aside: snprintf's terminating NUL must not land in out. */
	char line[PROXY_V1_MAX + 1];
	int len = snprintf(line, sizeof line, "PROXY %s %s %s %u %u\r\n",
			   src->family == AF_INET ? "TCP4" : "TCP6", from, to,
			   (unsigned)ntohs(src->port), (unsigned)ntohs(dst->port));
	if (len <= 0 || len > PROXY_V1_MAX)
		return 0;
	memcpy(out, line, (size_t)len);
	return (size_t)len;
}

static size_t proxy_v2_write(const struct proxy_endpoint *src, const struct proxy_endpoint *dst,
			     bool known, enum proxy_transport transport, uint8_t *out)
{
	memcpy(out, proxy_v2_signature, sizeof proxy_v2_signature);
	if (!known) {
		out[12] = 0x20;        /* v2, LOCAL: the receiver uses the connection's own addresses */
		out[13] = 0x00;        /* unspecified */
		out[14] = out[15] = 0;
		return 16;
	}
	bool v4 = src->family == AF_INET;
	size_t addr_len = v4 ? 4 : 16;
	size_t body = 2 * addr_len + 4;
	out[12] = 0x21;                /* v2, PROXY */
	out[13] = (uint8_t)((v4 ? 0x10 : 0x20) | (transport == PROXY_DGRAM ? 0x02 : 0x01));
	out[14] = (uint8_t)(body >> 8);
	out[15] = (uint8_t)body;
	uint8_t *p = out + 16;
	memcpy(p, src->addr, addr_len);
	memcpy(p + addr_len, dst->addr, addr_len);
	memcpy(p + 2 * addr_len, &src->port, 2);
	memcpy(p + 2 * addr_len + 2, &dst->port, 2);
	return 16 + body;
}

size_t proxy_header_write(enum proxy_version version, enum proxy_transport transport,
			  const struct sockaddr *client, const struct sockaddr *local,
			  uint8_t *out)
{
	struct proxy_endpoint src, dst;
	bool known = proxy_endpoint_of(client, &src) && proxy_endpoint_of(local, &dst) &&
		     src.family == dst.family;
	if (version == PROXY_V1)
		return transport == PROXY_STREAM ? proxy_v1_write(&src, &dst, known, out) : 0;
	if (version == PROXY_V2)
		return proxy_v2_write(&src, &dst, known, transport, out);
	return 0;
}
