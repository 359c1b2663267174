/*
 * net.h - socket helpers: parse and format addresses, resolve host names,
 * open listening and connecting sockets. Relay code never repeats socket
 * set-up; it calls these.
 */
#ifndef PORTRELAY_NET_H
#define PORTRELAY_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* An IPv4 or IPv6 socket address with its length. */
struct net_addr {
	struct sockaddr_storage ss;
	socklen_t len;
};

/*
 * An IPv4 or IPv6 socket address in 28 bytes rather than sockaddr_storage's
 * 128: for what is kept per connection or per flow.
 */
union net_sockaddr {
	struct sockaddr sa;
	struct sockaddr_in v4;
	struct sockaddr_in6 v6;
};

/* Copies an IPv4/IPv6 sockaddr of length len into a net_addr. */
void net_addr_set(struct net_addr *addr, const struct sockaddr *sa, socklen_t len);

/* Enough for "[ffff:...:ffff%interface]:65535". */
#define NET_ADDR_STRLEN 80

/* A numeric IPv4 or IPv6 address (no brackets) and a port; -1 if not numeric. */
int net_addr_parse_ip(const char *text, uint16_t port, struct net_addr *addr_out);

/*
 * A numeric address or a host name, resolved with getaddrinfo (blocking; for
 * start-up only). Takes the first address returned. On failure returns -1
 * and writes the resolver's reason to reason_out.
 */
int net_addr_resolve(const char *host, uint16_t port, struct net_addr *addr_out,
		     char *reason_out, size_t reason_len);

uint16_t net_addr_port(const struct net_addr *addr);
void net_addr_set_port(struct net_addr *addr, uint16_t port);
int net_addr_family(const struct net_addr *addr);
bool net_addr_is_wildcard(const struct net_addr *addr);
/* An IPv4-mapped IPv6 address (::ffff:192.0.2.1) becomes plain IPv4; others stay. */
void net_addr_unmap(struct net_addr *addr);
/* Same family and address bytes; ports ignored. */
bool net_addr_same_ip(const struct net_addr *a, const struct net_addr *b);

/* "192.0.2.1:80" or "[2001:db8::1]:80"; returns buf. */
const char *net_addr_format(const struct net_addr *addr, char *buf, size_t buf_len);
/* The address without the port, IPv6 without brackets; returns buf. */
const char *net_addr_format_ip(const struct net_addr *addr, char *buf, size_t buf_len);

/*
 * Whether several worker threads bind the same port (SO_REUSEPORT, the
 * kernel spreads connections and UDP 4-tuples across them). SO_REUSEPORT
 * would also let a second relay of the same user share the port silently,
 * so the first worker's bind is preceded by a probe: a plain bind that fails
 * with EADDRINUSE when anything else holds the port.
 */
enum net_share {
	NET_EXCLUSIVE,       /* one socket per port */
	NET_SHARED_FIRST,    /* probe, then SO_REUSEPORT */
	NET_SHARED,          /* SO_REUSEPORT, joining the first */
	NET_SHARE_MASK = 3,
	/*
	 * Or'ed in: bind even if the address is not (yet) on the host
	 * (IP_FREEBIND), for a WAN address that comes up after start.
	 */
	NET_FREEBIND = 4,
};

/*
 * A non-blocking, close-on-exec TCP listener bound to addr. "::" is bound
 * dual-stack (IPV6_V6ONLY off) so that it serves IPv4 too. Returns the fd,
 * or -1 with errno set.
 */
int net_listen_tcp(const struct net_addr *addr, int backlog, enum net_share share);

/*
 * A non-blocking TCP connect towards addr. Returns the fd (the connection
 * may still be in progress: wait for writability, then net_socket_error),
 * or -1 with errno set (for example ECONNREFUSED reported at once, EMFILE).
 */
int net_connect_tcp(const struct net_addr *addr);

/*
 * A non-blocking UDP socket bound to addr. On a wildcard address it asks for
 * the destination address of each datagram (IP_PKTINFO, IPV6_RECVPKTINFO),
 * so that replies can leave from the address the client sent to; "::" is
 * dual-stack. Returns the fd, or -1 with errno set.
 */
int net_bind_udp(const struct net_addr *addr, enum net_share share);

/* Socket buffers asked for on external UDP sockets (the kernel may cap them). */
#define NET_UDP_SOCKET_BUFFER (4 * 1024 * 1024)

/* A non-blocking UDP socket connected to addr; -1 with errno set. */
int net_connect_udp(const struct net_addr *addr);

/*
 * Transparent mode (source = "client"): a non-blocking socket of `type`
 * (SOCK_STREAM: connect started; SOCK_DGRAM: connected) to addr, bound
 * to `client`, the client's own address and port, with IP_TRANSPARENT, so
 * that the server sees the client as the source. Needs CAP_NET_ADMIN, and
 * a route that delivers the server's replies to that foreign address
 * locally (README). -1 with errno; EAFNOSUPPORT when the families differ.
 */
int net_connect_transparent(const struct net_addr *addr, const struct net_addr *client, int type);

/* Whether IP_TRANSPARENT (IPV6_TRANSPARENT) can be set here: 0, or -1 with errno (EPERM). */
int net_transparent_check(int family);

/*
 * net_connect_tcp from a given local address (any port): the relay's FTP
 * data connections leave from the address their control connection uses.
 */
int net_connect_tcp_from(const struct net_addr *addr, const struct net_addr *source);

/* The local address of a socket (getsockname); -1 with errno set. */
int net_local_addr(int fd, struct net_addr *out);

/* The pending error of a socket (SO_ERROR), 0 if none. */
int net_socket_error(int fd);

/* Close fd so that the peer sees a reset rather than a FIN (SO_LINGER 0). */
void net_close_reset(int fd);

/*
 * TCP keepalive: probes after idle_seconds without traffic, five of them a
 * fifth of that apart; 0 turns it off. On a listening socket it is
 * inherited by every accepted connection (no cost per connection).
 */
int net_set_keepalive(int fd, unsigned idle_seconds);

#endif
