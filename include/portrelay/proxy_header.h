/*
 * proxy_header.h - the PROXY protocol header (HAProxy's specification,
 * versions 1 and 2) that tells the internal server who the client is.
 *
 * Pure: addresses in, bytes out; no sockets. The relay writes the header
 * as the first bytes of each TCP connection to the internal server
 * (version 1 text or version 2 binary), or in front of every UDP datagram
 * (version 2, DGRAM).
 *
 * The addresses are those of the client's side: the client's address and
 * port, and the external address and port it sent to. IPv4 clients of a
 * dual-stack listener (::ffff:192.0.2.1) are written as the IPv4 addresses
 * they are, as HAProxy does; what family the internal server is reached
 * over does not matter.
 */
#ifndef PORTRELAY_PROXY_HEADER_H
#define PORTRELAY_PROXY_HEADER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum proxy_version {
	PROXY_NONE = 0,
	PROXY_V1 = 1,
	PROXY_V2 = 2,
};

enum proxy_transport {
	PROXY_STREAM,                  /* TCP */
	PROXY_DGRAM,                   /* UDP (version 2 only) */
};

/* "PROXY TCP6 " + two full IPv6 addresses, two ports, spaces and CRLF: 107 bytes. */
#define PROXY_V1_MAX 107
/* 16 bytes of fixed header and 36 of IPv6 addresses and ports. */
#define PROXY_V2_MAX 52
#define PROXY_HEADER_MAX PROXY_V1_MAX

/*
 * Writes the header for a connection (or datagram) from `client` to
 * `local` into out (at least PROXY_HEADER_MAX bytes); returns its length.
 * Addresses of another family, or a client and local address of different
 * families, give the header for an unknown source ("PROXY UNKNOWN\r\n" in
 * version 1, the LOCAL command in version 2), which servers accept and
 * which carries no address. Version 1 with DGRAM writes nothing (0): the
 * text format has no datagrams.
 */
size_t proxy_header_write(enum proxy_version version, enum proxy_transport transport,
			  const struct sockaddr *client, const struct sockaddr *local,
			  uint8_t *out);

#endif
