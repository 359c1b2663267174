/*
 * net.c - socket helpers: address parsing and formatting, resolution,
 * listening and connecting sockets.
 */
#include "portrelay/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void net_addr_set(struct net_addr *addr, const struct sockaddr *sa, socklen_t len)
{
	memset(addr, 0, sizeof *addr);
	memcpy(&addr->ss, sa, len);
	addr->len = len;
}

int net_addr_parse_ip(const char *text, uint16_t port, struct net_addr *addr_out)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_port = htons(port) };

	if (inet_pton(AF_INET, text, &sin.sin_addr) == 1) {
		net_addr_set(addr_out, (struct sockaddr *)&sin, sizeof sin);
		return 0;
	}
	if (inet_pton(AF_INET6, text, &sin6.sin6_addr) == 1) {
		net_addr_set(addr_out, (struct sockaddr *)&sin6, sizeof sin6);
		return 0;
	}
	return -1;
}

int net_addr_resolve(const char *host, uint16_t port, struct net_addr *addr_out,
		     char *reason_out, size_t reason_len)
{
	if (net_addr_parse_ip(host, port, addr_out) == 0)
		return 0;

	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
	struct addrinfo *found = NULL;
	int rc = getaddrinfo(host, NULL, &hints, &found);
	if (rc != 0 || found == NULL) {
		snprintf(reason_out, reason_len, "%s", rc != 0 ? gai_strerror(rc) : "no address");
		return -1;
	}
	net_addr_set(addr_out, found->ai_addr, found->ai_addrlen);
	net_addr_set_port(addr_out, port);
	freeaddrinfo(found);
	return 0;
}

int net_addr_family(const struct net_addr *addr)
{
	return addr->ss.ss_family;
}

uint16_t net_addr_port(const struct net_addr *addr)
{
	if (addr->ss.ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)&addr->ss)->sin_port);
	if (addr->ss.ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)&addr->ss)->sin6_port);
	return 0;
}

void net_addr_set_port(struct net_addr *addr, uint16_t port)
{
	if (addr->ss.ss_family == AF_INET)
		((struct sockaddr_in *)&addr->ss)->sin_port = htons(port);
	else if (addr->ss.ss_family == AF_INET6)
		((struct sockaddr_in6 *)&addr->ss)->sin6_port = htons(port);
}

bool net_addr_is_wildcard(const struct net_addr *addr)
{
	if (addr->ss.ss_family == AF_INET)
		return ((const struct sockaddr_in *)&addr->ss)->sin_addr.s_addr == htonl(INADDR_ANY);
	if (addr->ss.ss_family == AF_INET6)
		return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)&addr->ss)->sin6_addr);
	return false;
}

void net_addr_unmap(struct net_addr *addr)
{
	if (addr->ss.ss_family != AF_INET6)
		return;
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&addr->ss;
	if (!IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
		return;
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = sin6->sin6_port };
	memcpy(&sin.sin_addr, &sin6->sin6_addr.s6_addr[12], 4);
	net_addr_set(addr, (const struct sockaddr *)&sin, sizeof sin);
}

bool net_addr_same_ip(const struct net_addr *a, const struct net_addr *b)
{
	if (a->ss.ss_family != b->ss.ss_family)
		return false;
	if (a->ss.ss_family == AF_INET)
		return ((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr ==
		       ((const struct sockaddr_in *)&b->ss)->sin_addr.s_addr;
	if (a->ss.ss_family == AF_INET6)
		return IN6_ARE_ADDR_EQUAL(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr,
					  &((const struct sockaddr_in6 *)&b->ss)->sin6_addr);
	return false;
}

const char *net_addr_format_ip(const struct net_addr *addr, char *buf, size_t buf_len)
{
	const void *ip = NULL;
	if (addr->ss.ss_family == AF_INET)
		ip = &((const struct sockaddr_in *)&addr->ss)->sin_addr;
	else if (addr->ss.ss_family == AF_INET6)
		ip = &((const struct sockaddr_in6 *)&addr->ss)->sin6_addr;
	if (ip == NULL || inet_ntop(addr->ss.ss_family, ip, buf, (socklen_t)buf_len) == NULL)
		snprintf(buf, buf_len, "?");
	return buf;
}

const char *net_addr_format(const struct net_addr *addr, char *buf, size_t buf_len)
{
	char ip[INET6_ADDRSTRLEN];
	net_addr_format_ip(addr, ip, sizeof ip);
	if (addr->ss.ss_family == AF_INET6)
		snprintf(buf, buf_len, "[%s]:%u", ip, net_addr_port(addr));
	else
		snprintf(buf, buf_len, "%s:%u", ip, net_addr_port(addr));
	return buf;
}

/* Closes fd on an error path, keeping the errno that describes the error. */
static int net_close_failed(int fd)
{
	int saved = errno;
	close(fd);
	errno = saved;
	return -1;
}

/*
 * A non-blocking, close-on-exec socket for binding to addr. An IPv6 socket
 * on "::" serves IPv4 too; on a specific IPv6 address, only that address.
 */
static int net_socket_for_bind(const struct net_addr *addr, int type)
{
	int fd = socket(addr->ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd >= 0 && addr->ss.ss_family == AF_INET6) {
		int v6only = net_addr_is_wildcard(addr) ? 0 : 1;
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
	}
	return fd;
}

/* IP_FREEBIND (it covers IPv6 sockets too) when asked for. */
static void net_set_freebind(int fd, enum net_share share)
{
	int on = 1;
	if (share & NET_FREEBIND)
		setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &on, sizeof on);
}

/* A plain bind (no SO_REUSEPORT) that fails if anything holds addr. */
static int net_probe_free(const struct net_addr *addr, int type, enum net_share share)
{
	int fd = net_socket_for_bind(addr, type);
	if (fd < 0)
		return -1;
	net_set_freebind(fd, share);
	int on = 1;
	/* TCP: ignore TIME_WAIT leftovers; UDP must not, it would share the port. */
	if (type == SOCK_STREAM)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
	if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0)
		return net_close_failed(fd);
	close(fd);
	return 0;
}

/* Applies the sharing mode before bind; -1 with errno set on failure. */
static int net_prepare_share(int fd, const struct net_addr *addr, int type, enum net_share share)
{
	int on = 1;
	enum net_share mode = (enum net_share)(share & NET_SHARE_MASK);
	net_set_freebind(fd, share);
	if (mode == NET_SHARED_FIRST && net_probe_free(addr, type, share) < 0)
		return -1;
	if (mode != NET_EXCLUSIVE && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0)
		return -1;
	return 0;
}

int net_listen_tcp(const struct net_addr *addr, int backlog, enum net_share share)
{
	int fd = net_socket_for_bind(addr, SOCK_STREAM);
	if (fd < 0)
		return -1;

	int on = 1;
	/* Restarting must not wait for TIME_WAIT connections of the last run. */
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
	/* Accepted sockets inherit it: no Nagle delay, without a call per client. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
	if (net_prepare_share(fd, addr, SOCK_STREAM, share) < 0 ||
	    bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0 ||
	    listen(fd, backlog) < 0)
		return net_close_failed(fd);
	return fd;
}

int net_connect_tcp(const struct net_addr *addr)
{
	return net_connect_tcp_from(addr, NULL);
}

int net_connect_tcp_from(const struct net_addr *addr, const struct net_addr *source)
{
	int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;

	int on = 1;
	/* The relay forwards what it has at once; Nagle would only add delay. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
	if (source != NULL) {
		struct net_addr local = *source;
		net_addr_set_port(&local, 0);
		/* The port is chosen at connect(), per destination, as without bind. */
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &on, sizeof on);
		if (bind(fd, (const struct sockaddr *)&local.ss, local.len) < 0)
			return net_close_failed(fd);
	}
	if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0 &&
	    errno != EINPROGRESS)
		return net_close_failed(fd);
	return fd;
}

int net_local_addr(int fd, struct net_addr *out)
{
	out->len = sizeof out->ss;
	memset(&out->ss, 0, sizeof out->ss);
	return getsockname(fd, (struct sockaddr *)&out->ss, &out->len);
}

int net_socket_error(int fd)
{
	int error = 0;
	socklen_t len = sizeof error;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0)
		return errno;
	return error;
}

int net_set_keepalive(int fd, unsigned idle_seconds)
{
	int on = idle_seconds > 0;
	if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) < 0)
		return -1;
	if (!on)
		return 0;
	/* Five probes a fifth of the idle time apart: a vanished peer is gone in about 2x idle. */
	int idle = (int)idle_seconds;
	int interval = idle / 5 > 0 ? idle / 5 : 1;
	int count = 5;
	if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count) < 0)
		return -1;
	return 0;
}

void net_close_reset(int fd)
{
	struct linger linger = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof linger);
	close(fd);
}

int net_bind_udp(const struct net_addr *addr, enum net_share share)
{
	int fd = net_socket_for_bind(addr, SOCK_DGRAM);
	if (fd < 0)
		return -1;

	int on = 1;
	bool wildcard = net_addr_is_wildcard(addr);
	/*
	 * On a wildcard bind a multi-homed host must answer from the address
	 * the client sent to, or the client drops the reply. "::" also gets
	 * IPv4 datagrams, whose destination comes as IP_PKTINFO.
	 */
	if (wildcard && (setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on) < 0 ||
			 (addr->ss.ss_family == AF_INET6 &&
			  setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on) < 0)))
		return net_close_failed(fd);
	/*
	 * A burst from many clients lands in one socket; the default buffer
	 * (about 208 KiB) overflows first. The kernel caps the request at
	 * net.core.rmem_max / wmem_max, so this is a wish, not a failure.
	 */
	int buffer_size = NET_UDP_SOCKET_BUFFER;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_size, sizeof buffer_size);
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_size, sizeof buffer_size);
	if (net_prepare_share(fd, addr, SOCK_DGRAM, share) < 0 ||
	    bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0)
		return net_close_failed(fd);
	return fd;
}

/*
 * Binds fd to `client`, an address that is not this host's, with
 * IP_TRANSPARENT (IPV6_TRANSPARENT): what the server sees as the source.
 */
static int net_bind_transparent(int fd, const struct net_addr *client)
{
	int on = 1;
	bool v6 = client->ss.ss_family == AF_INET6;
	if ((v6 ? setsockopt(fd, IPPROTO_IPV6, IPV6_TRANSPARENT, &on, sizeof on)
		: setsockopt(fd, IPPROTO_IP, IP_TRANSPARENT, &on, sizeof on)) < 0)
		return -1;
	/* The client may come back from the same port before the last 4-tuple's TIME_WAIT is over. */
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
	return bind(fd, (const struct sockaddr *)&client->ss, client->len);
}

int net_connect_transparent(const struct net_addr *addr, const struct net_addr *client, int type)
{
	if (addr->ss.ss_family != client->ss.ss_family) {
		errno = EAFNOSUPPORT;
		return -1;
	}
	int fd = socket(addr->ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int on = 1;
	if (type == SOCK_STREAM)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
	if (net_bind_transparent(fd, client) < 0 ||
	    (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0 && errno != EINPROGRESS))
		return net_close_failed(fd);
	return fd;
}

int net_transparent_check(int family)
{
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int on = 1;
	int rc = family == AF_INET6 ? setsockopt(fd, IPPROTO_IPV6, IPV6_TRANSPARENT, &on, sizeof on)
				    : setsockopt(fd, IPPROTO_IP, IP_TRANSPARENT, &on, sizeof on);
	int error = errno;
	close(fd);
	errno = error;
	return rc;
}

int net_connect_udp(const struct net_addr *addr)
{
	int fd = socket(addr->ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0)
		return net_close_failed(fd);
	return fd;
}
