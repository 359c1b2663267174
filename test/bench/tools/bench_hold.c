/* bench_hold: open COUNT idle TCP connections (or UDP flows) through a relay
 * and hold them, for the relay's memory per connection / per flow.
 * Each connection is checked end to end with a 1-byte echo (UDP: one datagram
 * and its echo, retried) so the relay has really set up both sides.
 *
 *   bench_hold --proto tcp|udp --target ADDR:PORT --count N
 *              [--parallel 256] [--max-seconds 120]
 *
 * Towards a 127.0.0.0/8 target, source addresses rotate over 127.0.0.2-251.
 * When all are set up it prints one JSON line {"held":..,"failed":..,"seconds":..}
 * and holds them until stdin reaches EOF (the runner closes it) or
 * --max-seconds since start, then closes everything and exits. */
#include "bench_common.h"

#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>

enum { H_NEW, H_CONNECTING, H_WAITING, H_DONE, H_FAILED };

struct h {
	int fd;
	int state;
	int tries;
	uint64_t since;
};

int main(int argc, char **argv)
{
	const char *tspec = NULL, *proto = "tcp";
	long count = 1000, parallel = 256;
	double max_s = 120;
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			bench_die("usage: bench_hold --proto tcp|udp --target ADDR:PORT --count N [--parallel N] [--max-seconds S]");
		if (!strcmp(argv[i], "--target"))
			tspec = argv[++i];
		else if (!strcmp(argv[i], "--proto"))
			proto = argv[++i];
		else if (!strcmp(argv[i], "--count"))
			count = bench_arg_long(argv[++i], 1, 60000, "--count");
		else if (!strcmp(argv[i], "--parallel"))
			parallel = bench_arg_long(argv[++i], 1, 10000, "--parallel");
		else if (!strcmp(argv[i], "--max-seconds"))
			max_s = bench_arg_double(argv[++i], 0.1, BENCH_HARD_MAX_SECONDS, "--max-seconds");
		else
			bench_die("unknown option %s", argv[i]);
	}
	int udp = !strcmp(proto, "udp");
	struct sockaddr_storage ss;
	socklen_t sl;
	if (!tspec || bench_parse_addr(tspec, &ss, &sl) != 0)
		bench_die("need --target ADDR:PORT");
	if ((rlim_t)count + 16 > bench_raise_nofile())
		bench_die("--count %ld exceeds the open-files limit", count);
	signal(SIGPIPE, SIG_IGN);

	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct h *hs = calloc((size_t)count, sizeof(*hs));
	long next = 0, active = 0, done = 0, failed = 0, lo = 0;
	uint64_t t0 = bench_now_ns();
	uint64_t step_tmo = udp ? 300000000ull : 10000000000ull;
	struct epoll_event evs[512];
	char b = 'h';
	while (done + failed < count && bench_seconds_since(t0) < max_s) {
		while (active < parallel && next < count) {
			struct h *x = &hs[next++];
			x->fd = socket(ss.ss_family, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
			if (x->fd < 0) {
				x->state = H_FAILED;
				failed++;
				continue;
			}
			/*
			 * Towards 127.x.y.z, from 127.0.0.2-251 in turn: what one
			 * client address may hold is bounded by the relay
			 * (max_connections_per_source, max_flows_per_source), and
			 * this measures memory, not that limit.
			 */
			if (ss.ss_family == AF_INET &&
			    (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127) {
				struct sockaddr_in src = { .sin_family = AF_INET };
				src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(next % 250));
				int one = 1;
				setsockopt(x->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
				(void)bind(x->fd, (struct sockaddr *)&src, sizeof(src));
			}
			x->since = bench_now_ns();
			int r = connect(x->fd, (struct sockaddr *)&ss, sl);
			if (r != 0 && errno != EINPROGRESS) {
				close(x->fd);
				x->fd = -1;
				x->state = H_FAILED;
				failed++;
				continue;
			}
			active++;
			if (udp) {
				(void)send(x->fd, &b, 1, 0);
				x->tries = 1;
				x->state = H_WAITING;
				struct epoll_event e = { .events = EPOLLIN, .data.ptr = x };
				epoll_ctl(ep, EPOLL_CTL_ADD, x->fd, &e);
			} else {
				x->state = H_CONNECTING;
				struct epoll_event e = { .events = EPOLLOUT, .data.ptr = x };
				epoll_ctl(ep, EPOLL_CTL_ADD, x->fd, &e);
			}
		}
		int n = epoll_wait(ep, evs, 512, 20);
		for (int i = 0; i < n; i++) {
			struct h *x = evs[i].data.ptr;
			if (x->state == H_CONNECTING) {
				int err = 0;
				socklen_t l = sizeof(err);
				getsockopt(x->fd, SOL_SOCKET, SO_ERROR, &err, &l);
				if (err == 0 && write(x->fd, &b, 1) == 1) {
					x->state = H_WAITING;
					struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = x };
					epoll_ctl(ep, EPOLL_CTL_MOD, x->fd, &e);
				} else {
					x->state = H_FAILED;
				}
			} else if (x->state == H_WAITING) {
				char in[64];
				ssize_t r = recv(x->fd, in, sizeof(in), 0);
				if (r > 0)
					x->state = H_DONE;
				else if (!(r < 0 && errno == EAGAIN))
					x->state = H_FAILED;
			}
			if (x->state == H_DONE || x->state == H_FAILED) {
				epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
				active--;
				if (x->state == H_DONE) {
					done++;
				} else {
					failed++;
					close(x->fd);
					x->fd = -1;
				}
			}
		}
		/* timeouts (and UDP retries) */
		uint64_t now = bench_now_ns();
		while (lo < next && (hs[lo].state == H_DONE || hs[lo].state == H_FAILED))
			lo++;
		for (long k = lo; k < next; k++) {
			struct h *x = &hs[k];
			if ((x->state != H_CONNECTING && x->state != H_WAITING) || now - x->since < step_tmo)
				continue;
			if (udp && x->tries < 4) {
				(void)send(x->fd, &b, 1, 0);
				x->tries++;
				x->since = now;
				continue;
			}
			epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
			close(x->fd);
			x->fd = -1;
			x->state = H_FAILED;
			active--;
			failed++;
		}
	}
	printf("{\"held\":%ld,\"failed\":%ld,\"seconds\":%.3f}\n", done, count - done,
	       bench_seconds_since(t0));
	fflush(stdout);
	/* hold until stdin EOF or the time bound */
	while (bench_seconds_since(t0) < max_s) {
		struct pollfd p = { .fd = 0, .events = POLLIN };
		int pr = poll(&p, 1, 200);
		if (pr > 0) {
			char buf[256];
			ssize_t r = read(0, buf, sizeof(buf));
			if (r <= 0)
				break;
		}
	}
	for (long k = 0; k < count; k++)
		if (hs[k].fd >= 0 && hs[k].state != H_NEW)
			close(hs[k].fd);
	free(hs);
	return 0;
}
