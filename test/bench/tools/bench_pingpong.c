/* bench_pingpong: round-trip latency of a SIZE-byte ping-pong over one TCP
 * connection or one UDP socket, against an echo server (or a relay to one).
 * Runs until --duration seconds or --count round trips, whichever first.
 *
 *   bench_pingpong --proto tcp|udp --target ADDR:PORT [--size 64]
 *                  [--duration 5] [--count 200000] [--warmup 200]
 *
 * Prints one JSON line with p50/p99/mean in microseconds and UDP losses
 * (a UDP ping with no answer within 200 ms counts as lost, not as a sample). */
#include "bench_common.h"

#include <poll.h>
#include <signal.h>

int main(int argc, char **argv)
{
	const char *tspec = NULL, *proto = "tcp";
	long size = 64, count = 200000, warmup = 200;
	double duration = 5;
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			bench_die("usage: bench_pingpong --proto tcp|udp --target ADDR:PORT [--size N] [--duration S] [--count N] [--warmup N]");
		if (!strcmp(argv[i], "--target"))
			tspec = argv[++i];
		else if (!strcmp(argv[i], "--proto"))
			proto = argv[++i];
		else if (!strcmp(argv[i], "--size"))
			size = bench_arg_long(argv[++i], 1, 1400, "--size");
		else if (!strcmp(argv[i], "--duration"))
			duration = bench_arg_double(argv[++i], 0.05, BENCH_HARD_MAX_SECONDS, "--duration");
		else if (!strcmp(argv[i], "--count"))
			count = bench_arg_long(argv[++i], 1, 10000000, "--count");
		else if (!strcmp(argv[i], "--warmup"))
			warmup = bench_arg_long(argv[++i], 0, 100000, "--warmup");
		else
			bench_die("unknown option %s", argv[i]);
	}
	int udp = !strcmp(proto, "udp");
	if (!udp && strcmp(proto, "tcp"))
		bench_die("--proto tcp|udp");
	struct sockaddr_storage ss;
	socklen_t sl;
	if (!tspec || bench_parse_addr(tspec, &ss, &sl) != 0)
		bench_die("need --target ADDR:PORT");
	signal(SIGPIPE, SIG_IGN);

	int fd = socket(ss.ss_family, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0);
	if (fd < 0)
		bench_die("socket: %s", strerror(errno));
	if (!udp) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	if (connect(fd, (struct sockaddr *)&ss, sl) != 0)
		bench_die("connect %s: %s", tspec, strerror(errno));

	uint64_t *samples = malloc(sizeof(uint64_t) * (size_t)count);
	char out[1400], in[1400];
	memset(out, 'p', sizeof(out));
	long n = 0, lost = 0, iter = 0;
	uint64_t t0 = bench_now_ns(), sum = 0;
	while (n < count && bench_seconds_since(t0) < duration) {
		uint64_t a = bench_now_ns();
		if (send(fd, out, (size_t)size, 0) != size)
			bench_die("send: %s", strerror(errno));
		long got = 0;
		int ok = 1;
		while (got < size) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			int pr = poll(&p, 1, udp ? 200 : 2000);
			if (pr <= 0) {
				ok = 0;
				break;
			}
			ssize_t r = recv(fd, in, sizeof(in), 0);
			if (r <= 0) {
				if (udp && r < 0 && errno == ECONNREFUSED) {
					ok = 0;
					break;
				}
				bench_die("recv: %s", r == 0 ? "connection closed" : strerror(errno));
			}
			got += r;
		}
		uint64_t b = bench_now_ns();
		if (!ok) {
			if (!udp)
				bench_die("tcp echo timed out");
			lost++;
			continue;
		}
		if (iter++ < warmup)
			continue;
		samples[n++] = b - a;
		sum += b - a;
	}
	if (n == 0)
		bench_die("no samples");
	qsort(samples, (size_t)n, sizeof(uint64_t), bench_cmp_u64);
	printf("{\"samples\":%ld,\"lost\":%ld,\"p50_us\":%.2f,\"p99_us\":%.2f,\"mean_us\":%.2f,\"seconds\":%.3f}\n",
	       n, lost, (double)bench_percentile(samples, (size_t)n, 50) / 1e3,
	       (double)bench_percentile(samples, (size_t)n, 99) / 1e3,
	       (double)sum / (double)n / 1e3, bench_seconds_since(t0));
	free(samples);
	close(fd);
	return 0;
}
