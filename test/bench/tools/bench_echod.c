/* bench_echod: the suite's server side. An epoll TCP echo server (answers a
 * 1-byte request with the byte: the connection-rate responder; echoes 64-byte
 * pings; holds idle connections) and a UDP echo socket (recvmmsg/sendmmsg).
 *
 *   bench_echod [--tcp ADDR:PORT] [--udp ADDR:PORT] [--max-seconds S]
 *
 * Port 0 picks a free port. Once bound it prints one line
 *   ready tcp=PORT udp=PORT
 * on stdout, then serves until SIGINT/SIGTERM or --max-seconds (default 600). */
#include "bench_common.h"

#include <signal.h>
#include <sys/epoll.h>

#define CONN_BUF 4096
#define UDP_BATCH 64
#define UDP_MAX 2048

struct conn {
	int fd;
	uint32_t off, len; /* pending echo bytes in buf */
	char buf[CONN_BUF];
};

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int listen_on(int type, const char *spec, int *port_out)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (bench_parse_addr(spec, &ss, &len) != 0)
		bench_die("bad address '%s'", spec);
	int fd = socket(ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		bench_die("socket: %s", strerror(errno));
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (type == SOCK_DGRAM) {
		int sz = 4 << 20;
		/* Root may exceed rmem_max; otherwise the kernel caps it. */
		if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) != 0)
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
		if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) != 0)
			setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	}
	if (bind(fd, (struct sockaddr *)&ss, len) != 0)
		bench_die("bind %s: %s", spec, strerror(errno));
	if (type == SOCK_STREAM && listen(fd, 4096) != 0)
		bench_die("listen %s: %s", spec, strerror(errno));
	len = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &len);
	*port_out = bench_port_of(&ss);
	return fd;
}

static void conn_close(int ep, struct conn *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c);
}

/* Echo what is readable; stop reading while an echo is pending. */
static void conn_event(int ep, struct conn *c, uint32_t ev)
{
	if (c->len > c->off) {
		ssize_t w = write(c->fd, c->buf + c->off, c->len - c->off);
		if (w < 0 && errno != EAGAIN && errno != EINTR) {
			conn_close(ep, c);
			return;
		}
		if (w > 0)
			c->off += (uint32_t)w;
		if (c->off < c->len)
			return;
		c->off = c->len = 0;
		struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c };
		epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
	}
	if (!(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
		return;
	for (int rounds = 0; rounds < 16; rounds++) {
		ssize_t r = read(c->fd, c->buf, sizeof(c->buf));
		if (r == 0) {
			conn_close(ep, c);
			return;
		}
		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			conn_close(ep, c);
			return;
		}
		ssize_t w = write(c->fd, c->buf, (size_t)r);
		if (w < 0) {
			if (errno != EAGAIN) {
				conn_close(ep, c);
				return;
			}
			w = 0;
		}
		if (w < r) {
			c->off = (uint32_t)w;
			c->len = (uint32_t)r;
			struct epoll_event e = { .events = EPOLLOUT, .data.ptr = c };
			epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
			return;
		}
		if ((size_t)r < sizeof(c->buf))
			return;
	}
}

static void udp_event(int fd)
{
	static char bufs[UDP_BATCH][UDP_MAX];
	static struct mmsghdr msgs[UDP_BATCH];
	static struct iovec iov[UDP_BATCH];
	static struct sockaddr_storage from[UDP_BATCH];
	for (int rounds = 0; rounds < 64; rounds++) {
		for (int i = 0; i < UDP_BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = UDP_MAX;
			memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
			msgs[i].msg_hdr.msg_name = &from[i];
			msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
		}
		int n = recvmmsg(fd, msgs, UDP_BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			return;
		for (int i = 0; i < n; i++)
			iov[i].iov_len = msgs[i].msg_len;
		int sent = 0;
		while (sent < n) {
			int s = sendmmsg(fd, msgs + sent, (unsigned)(n - sent), MSG_DONTWAIT);
			if (s <= 0)
				break; /* drop the rest: UDP */
			sent += s;
		}
		if (n < UDP_BATCH)
			return;
	}
}

int main(int argc, char **argv)
{
	const char *tcp_spec = NULL, *udp_spec = NULL;
	double max_s = 600;
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			bench_die("usage: bench_echod [--tcp ADDR:PORT] [--udp ADDR:PORT] [--max-seconds S]");
		if (!strcmp(argv[i], "--tcp"))
			tcp_spec = argv[++i];
		else if (!strcmp(argv[i], "--udp"))
			udp_spec = argv[++i];
		else if (!strcmp(argv[i], "--max-seconds"))
			max_s = bench_arg_double(argv[++i], 0.1, BENCH_HARD_MAX_SECONDS, "--max-seconds");
		else
			bench_die("unknown option %s", argv[i]);
	}
	if (!tcp_spec && !udp_spec)
		bench_die("need --tcp and/or --udp");
	bench_raise_nofile();
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	int ep = epoll_create1(EPOLL_CLOEXEC);
	int lfd = -1, ufd = -1, tport = 0, uport = 0;
	static int lfd_tag, ufd_tag;
	if (tcp_spec) {
		lfd = listen_on(SOCK_STREAM, tcp_spec, &tport);
		struct epoll_event e = { .events = EPOLLIN, .data.ptr = &lfd_tag };
		epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e);
	}
	if (udp_spec) {
		ufd = listen_on(SOCK_DGRAM, udp_spec, &uport);
		struct epoll_event e = { .events = EPOLLIN, .data.ptr = &ufd_tag };
		epoll_ctl(ep, EPOLL_CTL_ADD, ufd, &e);
	}
	printf("ready tcp=%d udp=%d\n", tport, uport);
	fflush(stdout);

	uint64_t t0 = bench_now_ns();
	struct epoll_event evs[256];
	while (!stop && bench_seconds_since(t0) < max_s) {
		int n = epoll_wait(ep, evs, 256, 200);
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &lfd_tag) {
				for (int k = 0; k < 256; k++) {
					int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (fd < 0)
						break;
					int one = 1;
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					struct conn *c = calloc(1, sizeof(*c));
					if (!c) {
						close(fd);
						continue;
					}
					c->fd = fd;
					struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c };
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
				}
			} else if (p == &ufd_tag) {
				udp_event(ufd);
			} else {
				conn_event(ep, p, evs[i].events);
			}
		}
	}
	return 0;
}
