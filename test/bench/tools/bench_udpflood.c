/* bench_udpflood: UDP datagrams per second delivered and returned. N flows
 * (N connected sockets, so N distinct source ports) send SIZE-byte datagrams
 * round-robin to an echo server (or a relay to one) and count the replies.
 * A window bounds the datagrams in flight over all flows; a window with no
 * reply for --stall-ms is written off as lost and refilled. Sending stops
 * after --duration seconds (or --max-sent datagrams); replies are then
 * collected for 200 ms more.
 *
 *   bench_udpflood --target ADDR:PORT [--flows 1] [--duration 5] [--size 64]
 *                  [--window 128] [--stall-ms 20] [--max-sent N]
 *
 * Prints one JSON line: sent, received, loss (fraction), rate (replies/s over
 * the sending period). */
#include "bench_common.h"

#include <signal.h>
#include <sys/epoll.h>

int main(int argc, char **argv)
{
	const char *tspec = NULL;
	long flows = 1, size = 64, window = 128, stall_ms = 20, max_sent = 2000000000L;
	double duration = 5;
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			bench_die("usage: bench_udpflood --target ADDR:PORT [--flows N] [--duration S] [--size N] [--window N] [--stall-ms N] [--max-sent N]");
		if (!strcmp(argv[i], "--target"))
			tspec = argv[++i];
		else if (!strcmp(argv[i], "--flows"))
			flows = bench_arg_long(argv[++i], 1, 60000, "--flows");
		else if (!strcmp(argv[i], "--duration"))
			duration = bench_arg_double(argv[++i], 0.05, BENCH_HARD_MAX_SECONDS, "--duration");
		else if (!strcmp(argv[i], "--size"))
			size = bench_arg_long(argv[++i], 1, 1400, "--size");
		else if (!strcmp(argv[i], "--window"))
			window = bench_arg_long(argv[++i], 1, 100000, "--window");
		else if (!strcmp(argv[i], "--stall-ms"))
			stall_ms = bench_arg_long(argv[++i], 1, 10000, "--stall-ms");
		else if (!strcmp(argv[i], "--max-sent"))
			max_sent = bench_arg_long(argv[++i], 1, 2000000000L, "--max-sent");
		else
			bench_die("unknown option %s", argv[i]);
	}
	struct sockaddr_storage ss;
	socklen_t sl;
	if (!tspec || bench_parse_addr(tspec, &ss, &sl) != 0)
		bench_die("need --target ADDR:PORT");
	if ((rlim_t)flows + 16 > bench_raise_nofile())
		bench_die("--flows %ld exceeds the open-files limit", flows);
	signal(SIGPIPE, SIG_IGN);

	int ep = epoll_create1(EPOLL_CLOEXEC);
	int *fds = calloc((size_t)flows, sizeof(int));
	for (long i = 0; i < flows; i++) {
		fds[i] = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fds[i] < 0)
			bench_die("socket: %s", strerror(errno));
		if (connect(fds[i], (struct sockaddr *)&ss, sl) != 0)
			bench_die("connect: %s", strerror(errno));
		struct epoll_event e = { .events = EPOLLIN, .data.u64 = (uint64_t)i };
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e);
	}

	char out[1400], in[2048];
	memset(out, 'u', sizeof(out));
	long sent = 0, received = 0, refused = 0, written_off = 0, outstanding = 0, rr = 0;
	long recv_in_period = 0;
	uint64_t t0 = bench_now_ns(), last_reply = t0;
	uint64_t dur_ns = (uint64_t)(duration * 1e9), stall_ns = (uint64_t)stall_ms * 1000000ull;
	uint64_t end_send = t0 + dur_ns, end_all = end_send + 200000000ull;
	struct epoll_event evs[512];
	for (;;) {
		uint64_t now = bench_now_ns();
		int sending = now < end_send && sent < max_sent;
		if (!sending && now >= end_all)
			break;
		if (!sending && received >= sent)
			break;
		if (sending) {
			if (outstanding > 0 && now - last_reply > stall_ns) {
				written_off += outstanding;
				outstanding = 0;
				last_reply = now;
			}
			while (outstanding < window && sent < max_sent) {
				ssize_t w = send(fds[rr], out, (size_t)size, 0);
				rr = (rr + 1) % flows;
				if (w == size) {
					sent++;
					outstanding++;
				} else if (w < 0 && errno == ECONNREFUSED) {
					refused++;
				} else {
					break; /* EAGAIN/ENOBUFS: wait for replies */
				}
			}
		}
		int n = epoll_wait(ep, evs, 512, sending ? 5 : 20);
		for (int i = 0; i < n; i++) {
			int fd = fds[evs[i].data.u64];
			for (;;) {
				ssize_t r = recv(fd, in, sizeof(in), 0);
				if (r < 0) {
					if (errno == ECONNREFUSED) {
						refused++;
						continue;
					}
					break;
				}
				received++;
				if (bench_now_ns() < end_send)
					recv_in_period++;
				if (outstanding > 0)
					outstanding--;
				last_reply = bench_now_ns();
			}
		}
	}
	double period = (double)(end_send < bench_now_ns() ? dur_ns : bench_now_ns() - t0) / 1e9;
	if (received > sent)
		received = sent;
	printf("{\"flows\":%ld,\"sent\":%ld,\"received\":%ld,\"loss\":%.6f,\"refused\":%ld,"
	       "\"written_off\":%ld,\"seconds\":%.4f,\"rate\":%.1f}\n",
	       flows, sent, received, sent ? (double)(sent - received) / (double)sent : 0.0,
	       refused, written_off, period, (double)recv_in_period / period);
	for (long i = 0; i < flows; i++)
		close(fds[i]);
	free(fds);
	return 0;
}
