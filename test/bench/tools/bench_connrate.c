/* bench_connrate: TCP connection rate. C slots, each looping: non-blocking
 * connect, send 1 byte, read the 1-byte reply, close. Stops after --duration
 * seconds or --max-conns completed connections, whichever comes first.
 *
 *   bench_connrate --target ADDR:PORT [--concurrency 64] [--duration 5]
 *                  [--max-conns N] [--timeout 2]
 *
 * Towards a 127.0.0.0/8 target, source addresses rotate over 127.0.0.2-251.
 * Prints one JSON line: {"conns":..,"errors":..,"timeouts":..,"seconds":..,"rate":..} */
#include "bench_common.h"

#include <signal.h>
#include <sys/epoll.h>

enum { S_IDLE, S_CONNECTING, S_READING };

struct slot {
	int fd;
	int state;
	uint64_t started;
};

static struct sockaddr_storage target;
static socklen_t target_len;
static long n_conns, n_errors, n_timeouts;
/* For a 127.x.y.z target, connect from 127.0.0.2-127.0.0.251 in turn (the
 * port chosen at connect time): the client's TIME_WAIT sockets then spread
 * over 250 source addresses instead of crowding one address's ephemeral ports,
 * which slows connect() down more and more as a run goes on. */
static int spread_src;
static unsigned long src_turn;

static void slot_fail(int ep, struct slot *s, int timeout)
{
	if (s->fd >= 0) {
		epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
		close(s->fd);
	}
	s->fd = -1;
	s->state = S_IDLE;
	if (timeout)
		n_timeouts++;
	else
		n_errors++;
}

static void send_byte(int ep, struct slot *s)
{
	char b = 'x';
	ssize_t w = write(s->fd, &b, 1);
	if (w != 1) {
		slot_fail(ep, s, 0);
		return;
	}
	s->state = S_READING;
	struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = s };
	epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &e);
}

static void slot_start(int ep, struct slot *s)
{
	s->fd = socket(target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd < 0) {
		slot_fail(ep, s, 0);
		return;
	}
	int one = 1;
	setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (spread_src) {
		struct sockaddr_in src = { .sin_family = AF_INET };
		src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(src_turn++ % 250));
		setsockopt(s->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(s->fd, (struct sockaddr *)&src, sizeof(src)) != 0)
			spread_src = 0;
	}
	s->started = bench_now_ns();
	int r = connect(s->fd, (struct sockaddr *)&target, target_len);
	if (r != 0 && errno != EINPROGRESS) {
		close(s->fd);
		s->fd = -1;
		slot_fail(ep, s, 0);
		return;
	}
	s->state = S_CONNECTING;
	struct epoll_event e = { .events = EPOLLOUT, .data.ptr = s };
	epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &e);
	if (r == 0)
		send_byte(ep, s);
}

static void slot_event(int ep, struct slot *s, uint32_t ev)
{
	if (s->state == S_CONNECTING) {
		int err = 0;
		socklen_t l = sizeof(err);
		getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
		if (err != 0 || (ev & (EPOLLERR | EPOLLHUP))) {
			slot_fail(ep, s, 0);
			return;
		}
		send_byte(ep, s);
	} else if (s->state == S_READING) {
		char b;
		ssize_t r = read(s->fd, &b, 1);
		if (r < 0 && errno == EAGAIN)
			return;
		if (r != 1) {
			slot_fail(ep, s, 0);
			return;
		}
		epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
		close(s->fd);
		s->fd = -1;
		s->state = S_IDLE;
		n_conns++;
	}
}

int main(int argc, char **argv)
{
	const char *tspec = NULL;
	long conc = 64, max_conns = 100000000;
	double duration = 5, timeout = 2;
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			bench_die("usage: bench_connrate --target ADDR:PORT [--concurrency C] [--duration S] [--max-conns N] [--timeout S]");
		if (!strcmp(argv[i], "--target"))
			tspec = argv[++i];
		else if (!strcmp(argv[i], "--concurrency"))
			conc = bench_arg_long(argv[++i], 1, 4096, "--concurrency");
		else if (!strcmp(argv[i], "--duration"))
			duration = bench_arg_double(argv[++i], 0.05, BENCH_HARD_MAX_SECONDS, "--duration");
		else if (!strcmp(argv[i], "--max-conns"))
			max_conns = bench_arg_long(argv[++i], 1, 1000000000, "--max-conns");
		else if (!strcmp(argv[i], "--timeout"))
			timeout = bench_arg_double(argv[++i], 0.01, 60, "--timeout");
		else
			bench_die("unknown option %s", argv[i]);
	}
	if (!tspec || bench_parse_addr(tspec, &target, &target_len) != 0)
		bench_die("need --target ADDR:PORT");
	if (target.ss_family == AF_INET &&
	    (ntohl(((struct sockaddr_in *)&target)->sin_addr.s_addr) >> 24) == 127)
		spread_src = 1;
	bench_raise_nofile();
	signal(SIGPIPE, SIG_IGN);

	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct slot *slots = calloc((size_t)conc, sizeof(*slots));
	for (long i = 0; i < conc; i++)
		slots[i].fd = -1;
	uint64_t t0 = bench_now_ns(), tmo_ns = (uint64_t)(timeout * 1e9);
	uint64_t last_sweep = t0;
	struct epoll_event evs[256];
	for (;;) {
		uint64_t now = bench_now_ns();
		double el = (double)(now - t0) / 1e9;
		if (el >= duration || n_conns >= max_conns)
			break;
		for (long i = 0; i < conc; i++)
			if (slots[i].state == S_IDLE)
				slot_start(ep, &slots[i]);
		int n = epoll_wait(ep, evs, 256, 10);
		for (int i = 0; i < n; i++)
			slot_event(ep, evs[i].data.ptr, evs[i].events);
		now = bench_now_ns();
		if (now - last_sweep > 50000000ull) {
			last_sweep = now;
			for (long i = 0; i < conc; i++)
				if (slots[i].state != S_IDLE && now > slots[i].started + tmo_ns)
					slot_fail(ep, &slots[i], 1);
		}
	}
	double el = bench_seconds_since(t0);
	for (long i = 0; i < conc; i++)
		if (slots[i].fd >= 0)
			close(slots[i].fd);
	printf("{\"conns\":%ld,\"errors\":%ld,\"timeouts\":%ld,\"seconds\":%.4f,\"rate\":%.1f}\n",
	       n_conns, n_errors, n_timeouts, el, (double)n_conns / el);
	free(slots);
	return 0;
}
