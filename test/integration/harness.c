/*
 * harness.c - see harness.h.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- time ---------------------------------------------------------------- */

int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int remaining_ms(int64_t deadline)
{
	int64_t left = deadline - now_ms();
	if (left <= 0)
		return 0;
	return left > INT_MAX ? INT_MAX : (int)left;
}

/* ---- byte streams ---------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x)
{
	x += UINT64_C(0x9e3779b97f4a7c15);
	x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
	return x ^ (x >> 31);
}

void gen_init(struct gen *g, uint64_t seed)
{
	g->state = splitmix64(seed);
	if (g->state == 0)
		g->state = 1;
	g->word = 0;
	g->avail = 0;
}

static uint64_t gen_next(struct gen *g)
{
	uint64_t x = g->state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	g->state = x;
	return x;
}

void gen_fill(struct gen *g, void *buf, size_t n)
{
	unsigned char *p = buf;

	while (n > 0 && g->avail > 0) {
		*p++ = (unsigned char)(g->word & 0xff);
		g->word >>= 8;
		g->avail--;
		n--;
	}
	while (n >= 8) {
		uint64_t w = gen_next(g);
		for (int k = 0; k < 8; k++)
			p[k] = (unsigned char)(w >> (8 * k));
		p += 8;
		n -= 8;
	}
	if (n > 0) {
		g->word = gen_next(g);
		g->avail = 8;
		while (n > 0) {
			*p++ = (unsigned char)(g->word & 0xff);
			g->word >>= 8;
			g->avail--;
			n--;
		}
	}
}

size_t gen_check(struct gen *g, const void *buf, size_t n)
{
	const unsigned char *p = buf;
	unsigned char expect[4096];
	size_t done = 0;

	while (done < n) {
		size_t k = n - done < sizeof expect ? n - done : sizeof expect;
		gen_fill(g, expect, k);
		if (memcmp(expect, p + done, k) != 0) {
			for (size_t i = 0; i < k; i++)
				if (expect[i] != p[done + i])
					return done + i;
		}
		done += k;
	}
	return n;
}

uint64_t fnv_update(uint64_t h, const void *buf, size_t n)
{
	const unsigned char *p = buf;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= UINT64_C(0x100000001b3);
	}
	return h;
}

/* ---- random ------------------------------------------------------------------ */

static pthread_mutex_t random_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t random_state;

uint64_t test_random(void)
{
	pthread_mutex_lock(&random_mu);
	if (random_state == 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		random_state = splitmix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
					  ((uint64_t)getpid() << 40));
		if (random_state == 0)
			random_state = 1;
	}
	random_state = splitmix64(random_state);
	uint64_t v = random_state;
	pthread_mutex_unlock(&random_mu);
	return v;
}

uint16_t random_port(uint16_t lo, uint16_t hi)
{
	if (hi <= lo)
		return lo;
	return (uint16_t)(lo + test_random() % (uint64_t)(hi - lo + 1));
}

/* ---- loopback sockets -------------------------------------------------------- */

const char *loopback_text(int family)
{
	return family == AF_INET6 ? "::1" : "127.0.0.1";
}

static socklen_t loopback_addr(int family, uint16_t port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	if (family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		a->sin6_addr = in6addr_loopback;
		return sizeof *a;
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;
	a->sin_family = AF_INET;
	a->sin_port = htons(port);
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return sizeof *a;
}

static int socket_bound(int family, int type, uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len = loopback_addr(family, port, &ss);
	int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	if (family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	/*
	 * Like any server (and the relay): TIME_WAIT leftovers of earlier
	 * connections do not make a TCP port unusable.
	 */
	if (type == SOCK_STREAM)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int sock_listen(int family, uint16_t port, int backlog)
{
	int fd = socket_bound(family, SOCK_STREAM, port);
	if (fd < 0)
		return -1;
	if (listen(fd, backlog) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

uint16_t sock_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		return 0;
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int sock_connect_start(int family, uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len = loopback_addr(family, port, &ss);
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&ss, len) != 0 && errno != EINPROGRESS) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int sock_connect(int family, uint16_t port, int timeout_ms)
{
	int fd = sock_connect_start(family, port);
	if (fd < 0)
		return -1;
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		int rc = poll(&p, 1, remaining_ms(deadline));
		if (rc > 0)
			break;
		if (rc == 0 || errno != EINTR) {
			close(fd);
			errno = ETIMEDOUT;
			return -1;
		}
	}
	int err = 0;
	socklen_t elen = sizeof err;
	getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
	/*
	 * ECONNRESET: the handshake completed and the peer (a relay that failed
	 * to reach its target at once) already reset it. That is a connection
	 * that ended; later reads see EOF. Callers judge how it ended.
	 */
	if (err != 0 && err != ECONNRESET) {
		close(fd);
		errno = err;
		return -1;
	}
	return fd;
}

int sock_accept(int lfd, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0)
			return fd;
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
		    errno != ECONNABORTED)
			return -1;
		int left = remaining_ms(deadline);
		if (left == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		struct pollfd p = { .fd = lfd, .events = POLLIN };
		poll(&p, 1, left);
	}
}

static int wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = events };
	for (;;) {
		int rc = poll(&p, 1, remaining_ms(deadline));
		if (rc > 0)
			return 0;
		if (rc == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		if (errno != EINTR)
			return -1;
	}
}

int sock_send_all(int fd, const void *buf, size_t len, int timeout_ms)
{
	const char *p = buf;
	int64_t deadline = now_ms() + timeout_ms;
	while (len > 0) {
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
		if (w > 0) {
			p += w;
			len -= (size_t)w;
			continue;
		}
		if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return -1;
		if (wait_fd(fd, POLLOUT, deadline) != 0)
			return -1;
	}
	return 0;
}

int sock_recv_exact(int fd, void *buf, size_t len, int timeout_ms)
{
	char *p = buf;
	int64_t deadline = now_ms() + timeout_ms;
	while (len > 0) {
		ssize_t r = recv(fd, p, len, 0);
		if (r > 0) {
			p += r;
			len -= (size_t)r;
			continue;
		}
		if (r == 0) {
			errno = ENODATA;
			return -1;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return -1;
		if (wait_fd(fd, POLLIN, deadline) != 0)
			return -1;
	}
	return 0;
}

int sock_wait_close(int fd, int timeout_ms, size_t *discarded)
{
	char buf[16384];
	int64_t deadline = now_ms() + timeout_ms;
	size_t total = 0;
	int result;
	for (;;) {
		ssize_t r = recv(fd, buf, sizeof buf, 0);
		if (r > 0) {
			total += (size_t)r;
			continue;
		}
		if (r == 0) {
			result = 0;
			break;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			result = errno;
			break;
		}
		if (wait_fd(fd, POLLIN, deadline) != 0) {
			result = -1;
			break;
		}
	}
	if (discarded)
		*discarded = total;
	return result;
}

void sock_close_reset(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
	close(fd);
}

int sock_tcp_state(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof ti;
	memset(&ti, 0, sizeof ti);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
		return -1;
	return ti.tcpi_state;
}

int echo_roundtrip(int fd, int timeout_ms)
{
	unsigned char out = (unsigned char)(test_random() & 0xff), in = 0;
	if (sock_send_all(fd, &out, 1, timeout_ms) != 0)
		return -1;
	if (sock_recv_exact(fd, &in, 1, timeout_ms) != 0)
		return -1;
	if (in != out) {
		errno = EBADMSG;
		return -1;
	}
	return 0;
}

bool ipv6_loopback_available(void)
{
	int fd = sock_listen(AF_INET6, 0, 1);
	if (fd < 0)
		return false;
	uint16_t port = sock_port(fd);
	int c = sock_connect(AF_INET6, port, 2000);
	bool ok = c >= 0;
	if (c >= 0)
		close(c);
	close(fd);
	return ok;
}

uint16_t dead_port(int family)
{
	int fd = socket_bound(family, SOCK_STREAM, 0);
	if (fd < 0)
		return 0;
	uint16_t port = sock_port(fd);
	close(fd);
	return port;
}

int hang_target_open(struct hang_target *t)
{
	memset(t, 0, sizeof *t);
	for (size_t i = 0; i < sizeof t->fillers / sizeof t->fillers[0]; i++)
		t->fillers[i] = -1;
	t->lfd = sock_listen(AF_INET, 0, 0);
	if (t->lfd < 0)
		return -1;
	t->port = sock_port(t->lfd);

	/* The first connection goes into the accept queue and stays there. */
	int fd = sock_connect(AF_INET, t->port, 5000);
	if (fd < 0)
		goto fail;
	t->fillers[t->nfillers++] = fd;
	if (wait_fd(t->lfd, POLLIN, now_ms() + 5000) != 0)
		goto fail;

	/* Probe: with the queue full the SYN is dropped and the probe stays in SYN_SENT. */
	while (t->nfillers < (int)(sizeof t->fillers / sizeof t->fillers[0])) {
		int probe = sock_connect_start(AF_INET, t->port);
		if (probe < 0)
			goto fail;
		struct pollfd p = { .fd = probe, .events = POLLOUT };
		int rc = poll(&p, 1, 300);
		if (rc == 0 && sock_tcp_state(probe) == TCP_SYN_SENT) {
			close(probe);
			return 0;
		}
		int err = 0;
		socklen_t elen = sizeof err;
		getsockopt(probe, SOL_SOCKET, SO_ERROR, &err, &elen);
		if (rc > 0 && err == 0) {
			/* Completed: the queue had room; keep it as another filler. */
			t->fillers[t->nfillers++] = probe;
			continue;
		}
		close(probe);
		goto fail;
	}
fail:
	hang_target_close(t);
	return -1;
}

void hang_target_close(struct hang_target *t)
{
	for (int i = 0; i < t->nfillers; i++)
		if (t->fillers[i] >= 0)
			close(t->fillers[i]);
	t->nfillers = 0;
	if (t->lfd >= 0)
		close(t->lfd);
	t->lfd = -1;
}

/* ---- sockets on any local address ------------------------------------------------ */

int addr_parse(const char *ip, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
		*len = sizeof *a4;
		return 0;
	}
	if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		*len = sizeof *a6;
		return 0;
	}
	errno = EINVAL;
	return -1;
}

static int socket_at(const char *ip, uint16_t port, bool reuse)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (addr_parse(ip, port, &ss, &len) != 0)
		return -1;
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	if (reuse)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int sock_listen_at(const char *ip, uint16_t port, int backlog)
{
	int fd = socket_at(ip, port, true);
	if (fd < 0)
		return -1;
	if (listen(fd, backlog) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int sock_connect_start_from(const char *src_ip, const char *ip, uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (addr_parse(ip, port, &ss, &len) != 0)
		return -1;
	int fd = src_ip ? socket_at(src_ip, 0, false)
			: socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&ss, len) != 0 && errno != EINPROGRESS) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* Waits for a started connect; see sock_connect. */
static int connect_finish(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		int rc = poll(&p, 1, remaining_ms(deadline));
		if (rc > 0)
			break;
		if (rc == 0 || errno != EINTR) {
			close(fd);
			errno = ETIMEDOUT;
			return -1;
		}
	}
	int err = 0;
	socklen_t elen = sizeof err;
	getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
	if (err != 0 && err != ECONNRESET) {
		close(fd);
		errno = err;
		return -1;
	}
	return fd;
}

int sock_connect_from(const char *src_ip, const char *ip, uint16_t port, int timeout_ms)
{
	int fd = sock_connect_start_from(src_ip, ip, port);
	if (fd < 0)
		return -1;
	return connect_finish(fd, timeout_ms);
}

const char *sock_ip_text(int fd, bool peer, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	int rc = peer ? getpeername(fd, (struct sockaddr *)&ss, &sl)
		      : getsockname(fd, (struct sockaddr *)&ss, &sl);
	const void *a = ss.ss_family == AF_INET6
				? (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
				: (const void *)&((struct sockaddr_in *)&ss)->sin_addr;
	if (rc != 0 || inet_ntop(ss.ss_family, a, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "?");
	return buf;
}

uint16_t sock_peer_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
		return 0;
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

ssize_t sock_recv_line(int fd, char *buf, size_t cap, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	size_t n = 0;
	if (cap == 0) {
		errno = EMSGSIZE;
		return -1;
	}
	buf[0] = '\0';
	for (;;) {
		if (n + 1 >= cap) {
			errno = EMSGSIZE;
			return -1;
		}
		ssize_t r = recv(fd, buf + n, 1, 0);
		if (r == 1) {
			n++;
			buf[n] = '\0';
			if (buf[n - 1] == '\n')
				return (ssize_t)n;
			continue;
		}
		if (r == 0) {
			errno = ENODATA;
			return -1;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return -1;
		if (wait_fd(fd, POLLIN, deadline) != 0)
			return -1;
	}
}

/* One end of a TCP socket as /proc/net/tcp{,6} prints it: address words and port. */
struct proc_end {
	uint32_t words[4];
	unsigned nwords;
	unsigned port;
};

static void proc_end_of(const struct sockaddr_storage *ss, struct proc_end *e)
{
	memset(e, 0, sizeof *e);
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
		memcpy(e->words, &a->sin6_addr, 16);
		e->nwords = 4;
		e->port = ntohs(a->sin6_port);
	} else {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
		memcpy(e->words, &a->sin_addr, 4);
		e->nwords = 1;
		e->port = ntohs(a->sin_port);
	}
}

/* "0100007F:1F90" (the kernel prints each 32-bit word in host order). */
static bool proc_end_parse(const char *text, unsigned nwords, struct proc_end *e)
{
	memset(e, 0, sizeof *e);
	e->nwords = nwords;
	for (unsigned i = 0; i < nwords; i++) {
		unsigned v;
		if (sscanf(text + 8 * i, "%8x", &v) != 1)
			return false;
		e->words[i] = v;
	}
	if (text[8 * nwords] != ':')
		return false;
	return sscanf(text + 8 * nwords + 1, "%x", &e->port) == 1;
}

static bool proc_end_equal(const struct proc_end *a, const struct proc_end *b)
{
	return a->nwords == b->nwords && a->port == b->port &&
	       memcmp(a->words, b->words, a->nwords * sizeof a->words[0]) == 0;
}

/*
 * Calls fn for each row of a /proc net tcp table: local and remote end,
 * state, rx_queue and inode. Stops when fn returns true (then true).
 */
static bool proc_tcp_rows(const char *path, unsigned nwords,
			  bool (*fn)(void *arg, const struct proc_end *local,
				     const struct proc_end *remote, unsigned state,
				     unsigned long rx_queue, unsigned long inode),
			  void *arg)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	char line[512];
	bool stopped = false;
	if (!fgets(line, sizeof line, f)) {   /* the header */
		fclose(f);
		return false;
	}
	while (!stopped && fgets(line, sizeof line, f)) {
		char local_text[64], remote_text[64];
		unsigned state;
		unsigned long txq, rxq, inode;
		if (sscanf(line, " %*u: %63s %63s %x %lx:%lx %*x:%*x %*x %*u %*d %lu", local_text,
			   remote_text, &state, &txq, &rxq, &inode) != 6)
			continue;
		struct proc_end local, remote;
		if (!proc_end_parse(local_text, nwords, &local) ||
		    !proc_end_parse(remote_text, nwords, &remote))
			continue;
		stopped = fn(arg, &local, &remote, state, rxq, inode);
	}
	fclose(f);
	return stopped;
}

struct unread_query {
	struct proc_end local, remote;   /* the other end's view */
	long unread;
};

static bool unread_row(void *arg, const struct proc_end *local, const struct proc_end *remote,
		       unsigned state, unsigned long rx_queue, unsigned long inode)
{
	struct unread_query *q = arg;
	(void)inode;
	if (state == 0x0A || !proc_end_equal(local, &q->local) ||
	    !proc_end_equal(remote, &q->remote))
		return false;
	q->unread = (long)rx_queue;
	return true;
}

long sock_peer_unread(int fd)
{
	struct sockaddr_storage mine, theirs;
	socklen_t ml = sizeof mine, tl = sizeof theirs;
	if (getsockname(fd, (struct sockaddr *)&mine, &ml) != 0 ||
	    getpeername(fd, (struct sockaddr *)&theirs, &tl) != 0)
		return -1;
	struct unread_query q = { .unread = -1 };
	proc_end_of(&theirs, &q.local);
	proc_end_of(&mine, &q.remote);
	bool v6 = mine.ss_family == AF_INET6;
	if (!proc_tcp_rows(v6 ? "/proc/net/tcp6" : "/proc/net/tcp", v6 ? 4 : 1, unread_row, &q))
		return -1;
	return q.unread;
}

int sock_wait_peer_read(int fd, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		/* Bytes not acknowledged yet are not in the peer's queue either. */
		int outq = 0;
		bool sent = ioctl(fd, TIOCOUTQ, &outq) == 0 && outq == 0;
		if (sent && sock_peer_unread(fd) == 0)
			return 0;
		if (now_ms() >= deadline) {
			errno = ETIMEDOUT;
			return -1;
		}
		sleep_ms(1);
	}
}

/* ---- transfers ------------------------------------------------------------------ */

#define XFER_TXBUF (64 * 1024)
#define XFER_RXBUF (64 * 1024)
#define XFER_TURN_BUDGET (512 * 1024)

void xfer_init(struct xfer *x, int fd, uint64_t tx_seed, uint64_t tx_len,
	       uint64_t rx_seed, uint64_t rx_len)
{
	memset(x, 0, sizeof *x);
	x->fd = fd;
	x->tx_len = tx_len;
	x->rx_len = rx_len;
	gen_init(&x->tx_gen, tx_seed);
	gen_init(&x->rx_gen, rx_seed);
	x->tx_hash = FNV_INIT;
	x->rx_hash = FNV_INIT;
}

void xfer_release(struct xfer *x)
{
	free(x->txbuf);
	x->txbuf = NULL;
}

static void xfer_fail(struct xfer *x, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void xfer_fail(struct xfer *x, int err, const char *fmt, ...)
{
	va_list ap;
	if (x->failed)
		return;
	x->failed = true;
	x->err = err;
	va_start(ap, fmt);
	vsnprintf(x->what, sizeof x->what, fmt, ap);
	va_end(ap);
}

static bool xfer_may_send(const struct xfer *x)
{
	return !(x->send_after_eof && !x->rx_eof);
}

static void xfer_send(struct xfer *x)
{
	size_t budget = XFER_TURN_BUDGET;
	while (x->tx_done < x->tx_len && budget > 0) {
		if (x->txoff == x->txfill) {
			if (!x->txbuf) {
				x->txbuf = malloc(XFER_TXBUF);
				if (!x->txbuf) {
					xfer_fail(x, ENOMEM, "out of memory");
					return;
				}
			}
			uint64_t left = x->tx_len - x->tx_generated;
			size_t k = left < XFER_TXBUF ? (size_t)left : XFER_TXBUF;
			gen_fill(&x->tx_gen, x->txbuf, k);
			x->tx_hash = fnv_update(x->tx_hash, x->txbuf, k);
			x->tx_generated += k;
			x->txoff = 0;
			x->txfill = k;
		}
		ssize_t w = send(x->fd, x->txbuf + x->txoff, x->txfill - x->txoff, MSG_NOSIGNAL);
		if (w > 0) {
			x->txoff += (size_t)w;
			x->tx_done += (uint64_t)w;
			budget -= (size_t)w < budget ? (size_t)w : budget;
			continue;
		}
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return;
		xfer_fail(x, errno, "send failed after %llu of %llu bytes: %s",
			  (unsigned long long)x->tx_done, (unsigned long long)x->tx_len,
			  strerror(errno));
		return;
	}
}

static void xfer_recv(struct xfer *x, unsigned char *buf)
{
	size_t budget = XFER_TURN_BUDGET;
	while (!x->rx_eof && budget > 0) {
		ssize_t r = recv(x->fd, buf, XFER_RXBUF, 0);
		if (r > 0) {
			size_t n = (size_t)r;
			uint64_t room = x->rx_len - x->rx_done;
			size_t check = n < room ? n : (size_t)room;
			size_t at = gen_check(&x->rx_gen, buf, check);
			if (at != check) {
				xfer_fail(x, EBADMSG, "received byte %llu differs from the stream",
					  (unsigned long long)(x->rx_done + at));
				return;
			}
			x->rx_hash = fnv_update(x->rx_hash, buf, n);
			x->rx_done += n;
			if (n > check) {
				xfer_fail(x, EBADMSG, "received %llu bytes, more than the %llu expected",
					  (unsigned long long)x->rx_done,
					  (unsigned long long)x->rx_len);
				return;
			}
			budget -= n < budget ? n : budget;
			continue;
		}
		if (r == 0) {
			x->rx_eof = true;
			if (x->rx_done != x->rx_len)
				xfer_fail(x, ENODATA, "EOF after %llu of %llu bytes",
					  (unsigned long long)x->rx_done,
					  (unsigned long long)x->rx_len);
			return;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		xfer_fail(x, errno, "recv failed after %llu of %llu bytes: %s",
			  (unsigned long long)x->rx_done, (unsigned long long)x->rx_len,
			  strerror(errno));
		return;
	}
}

/* Shuts the write side down once everything was sent; marks done. */
static void xfer_settle(struct xfer *x)
{
	if (x->failed || x->done)
		return;
	if (!x->tx_shut && x->tx_done == x->tx_len && xfer_may_send(x)) {
		if (shutdown(x->fd, SHUT_WR) != 0) {
			xfer_fail(x, errno, "shutdown(SHUT_WR) failed: %s", strerror(errno));
			return;
		}
		x->tx_shut = true;
	}
	if (x->tx_shut && x->rx_eof)
		x->done = true;
}

size_t xfer_run(struct xfer *xs, size_t n, int timeout_ms)
{
	struct pollfd *pfd = calloc(n ? n : 1, sizeof *pfd);
	size_t *idx = calloc(n ? n : 1, sizeof *idx);
	unsigned char *rbuf = malloc(XFER_RXBUF);
	int64_t deadline = now_ms() + timeout_ms;

	if (!pfd || !idx || !rbuf)
		goto out;
	for (;;) {
		size_t np = 0;
		for (size_t i = 0; i < n; i++) {
			struct xfer *x = &xs[i];
			xfer_settle(x);
			if (x->done || x->failed)
				continue;
			short ev = 0;
			if (!x->rx_eof)
				ev |= POLLIN;
			if (x->tx_done < x->tx_len && xfer_may_send(x))
				ev |= POLLOUT;
			pfd[np].fd = x->fd;
			pfd[np].events = ev;
			pfd[np].revents = 0;
			idx[np++] = i;
		}
		if (np == 0)
			break;
		int left = remaining_ms(deadline);
		if (left == 0)
			break;
		int rc = poll(pfd, np, left < 1000 ? left : 1000);
		if (rc < 0 && errno != EINTR)
			break;
		for (size_t k = 0; rc > 0 && k < np; k++) {
			struct xfer *x = &xs[idx[k]];
			short re = pfd[k].revents;
			if (!re)
				continue;
			if ((re & (POLLIN | POLLERR | POLLHUP)) && !x->rx_eof)
				xfer_recv(x, rbuf);
			if (!x->failed && (re & (POLLOUT | POLLERR | POLLHUP)) &&
			    x->tx_done < x->tx_len && xfer_may_send(x))
				xfer_send(x);
		}
	}
out:
	free(pfd);
	free(idx);
	free(rbuf);
	size_t not_done = 0;
	for (size_t i = 0; i < n; i++) {
		if (!xs[i].done)
			not_done++;
		if (!xs[i].done && !xs[i].failed)
			snprintf(xs[i].what, sizeof xs[i].what,
				 "timed out: sent %llu/%llu%s, received %llu/%llu%s",
				 (unsigned long long)xs[i].tx_done, (unsigned long long)xs[i].tx_len,
				 xs[i].tx_shut ? " (shut)" : "",
				 (unsigned long long)xs[i].rx_done, (unsigned long long)xs[i].rx_len,
				 xs[i].rx_eof ? " (EOF)" : "");
	}
	return not_done;
}

const char *xfer_first_problem(struct xfer *xs, size_t n, char *buf, size_t len)
{
	snprintf(buf, len, "no problem");
	for (size_t i = 0; i < n; i++) {
		if (!xs[i].done) {
			snprintf(buf, len, "transfer %zu: %s", i, xs[i].what);
			break;
		}
	}
	return buf;
}

/* ---- test servers ------------------------------------------------------------------ */

#define TSERVER_BUF (64 * 1024)

struct tconn {
	int fd;
	unsigned char *buf;
	size_t start, end;
	bool eof;
};

struct tserver {
	int lfd;
	int wake;
	enum tserver_mode mode;
	char greeting[128];
	pthread_t thread;
	bool stop;
	unsigned accepted;
	struct tconn *conns;
	size_t nconns, capconns;
};

static void tconn_drop(struct tserver *s, size_t i, bool reset)
{
	if (reset)
		sock_close_reset(s->conns[i].fd);
	else
		close(s->conns[i].fd);
	free(s->conns[i].buf);
	s->conns[i] = s->conns[--s->nconns];
}

static void tserver_accept(struct tserver *s)
{
	for (int budget = 0; budget < 256; budget++) {
		int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		__atomic_add_fetch(&s->accepted, 1, __ATOMIC_SEQ_CST);
		if (s->mode == TSERVER_GREETING) {
			size_t len = strlen(s->greeting);
			ssize_t w = send(fd, s->greeting, len, MSG_NOSIGNAL);
			(void)w;
			close(fd);
			continue;
		}
		if (s->nconns == s->capconns) {
			size_t cap = s->capconns ? s->capconns * 2 : 64;
			struct tconn *c = realloc(s->conns, cap * sizeof *c);
			if (!c) {
				close(fd);
				continue;
			}
			s->conns = c;
			s->capconns = cap;
		}
		struct tconn *c = &s->conns[s->nconns];
		memset(c, 0, sizeof *c);
		c->fd = fd;
		if (s->mode == TSERVER_ECHO) {
			c->buf = malloc(TSERVER_BUF);
			if (!c->buf) {
				close(fd);
				continue;
			}
		}
		s->nconns++;
	}
}

/* Returns false when the connection was dropped. */
static bool tconn_serve(struct tserver *s, size_t i, short re)
{
	struct tconn *c = &s->conns[i];
	if (s->mode == TSERVER_RESET) {
		if (re & (POLLIN | POLLERR | POLLHUP)) {
			char b[4096];
			ssize_t r = recv(c->fd, b, sizeof b, 0);
			if (r < 0 && (errno == EAGAIN || errno == EINTR))
				return true;
			tconn_drop(s, i, true);
			return false;
		}
		return true;
	}
	/* echo */
	if ((re & (POLLIN | POLLERR | POLLHUP)) && !c->eof && c->end < TSERVER_BUF) {
		ssize_t r = recv(c->fd, c->buf + c->end, TSERVER_BUF - c->end, 0);
		if (r > 0)
			c->end += (size_t)r;
		else if (r == 0)
			c->eof = true;
		else if (errno != EAGAIN && errno != EINTR) {
			tconn_drop(s, i, false);
			return false;
		}
	}
	if (c->end > c->start) {
		ssize_t w = send(c->fd, c->buf + c->start, c->end - c->start, MSG_NOSIGNAL);
		if (w > 0) {
			c->start += (size_t)w;
			if (c->start == c->end)
				c->start = c->end = 0;
		} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
			tconn_drop(s, i, false);
			return false;
		}
	}
	if (c->eof && c->start == c->end) {
		shutdown(c->fd, SHUT_WR);
		tconn_drop(s, i, false);
		return false;
	}
	return true;
}

static void *tserver_main(void *arg)
{
	struct tserver *s = arg;
	struct pollfd *pfd = NULL;
	int *fds = NULL;
	size_t cap = 0;

	while (!__atomic_load_n(&s->stop, __ATOMIC_SEQ_CST)) {
		size_t need = s->nconns + 2;
		if (need > cap) {
			size_t ncap = need * 2;
			struct pollfd *np = realloc(pfd, ncap * sizeof *np);
			if (!np)
				break;
			pfd = np;
			int *nf = realloc(fds, ncap * sizeof *nf);
			if (!nf)
				break;
			fds = nf;
			cap = ncap;
		}
		pfd[0] = (struct pollfd){ .fd = s->wake, .events = POLLIN };
		pfd[1] = (struct pollfd){ .fd = s->lfd, .events = POLLIN };
		size_t np = 2;
		for (size_t i = 0; i < s->nconns; i++) {
			struct tconn *c = &s->conns[i];
			short ev = 0;
			if (s->mode == TSERVER_RESET)
				ev = POLLIN;
			else {
				if (!c->eof && c->end < TSERVER_BUF)
					ev |= POLLIN;
				if (c->end > c->start)
					ev |= POLLOUT;
			}
			pfd[np] = (struct pollfd){ .fd = c->fd, .events = ev };
			fds[np] = c->fd;
			np++;
		}
		int rc = poll(pfd, np, 1000);
		if (rc < 0 && errno != EINTR)
			break;
		if (rc <= 0)
			continue;
		if (pfd[0].revents)
			break;
		/* Serve the connections polled, located by fd (the array shifts on drops). */
		for (size_t k = 2; k < np; k++) {
			if (!pfd[k].revents)
				continue;
			for (size_t i = 0; i < s->nconns; i++) {
				if (s->conns[i].fd == fds[k]) {
					tconn_serve(s, i, pfd[k].revents);
					break;
				}
			}
		}
		if (pfd[1].revents)
			tserver_accept(s);
	}
	free(pfd);
	free(fds);
	return NULL;
}

struct tserver *tserver_start(int lfd, enum tserver_mode mode, const char *greeting)
{
	struct tserver *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->lfd = lfd;
	s->mode = mode;
	if (greeting)
		snprintf(s->greeting, sizeof s->greeting, "%s", greeting);
	s->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->wake < 0 || pthread_create(&s->thread, NULL, tserver_main, s) != 0) {
		if (s->wake >= 0)
			close(s->wake);
		free(s);
		return NULL;
	}
	return s;
}

uint16_t tserver_port(const struct tserver *s)
{
	return sock_port(s->lfd);
}

unsigned tserver_accepted(struct tserver *s)
{
	return __atomic_load_n(&s->accepted, __ATOMIC_SEQ_CST);
}

void tserver_stop(struct tserver *s)
{
	if (!s)
		return;
	__atomic_store_n(&s->stop, true, __ATOMIC_SEQ_CST);
	uint64_t one = 1;
	ssize_t w = write(s->wake, &one, sizeof one);
	(void)w;
	pthread_join(s->thread, NULL);
	while (s->nconns > 0)
		tconn_drop(s, s->nconns - 1, false);
	free(s->conns);
	close(s->wake);
	close(s->lfd);
	free(s);
}

/* ---- port blocks ---------------------------------------------------------------- */

static bool port_free_on(int family, uint16_t port)
{
	int t = socket_bound(family, SOCK_STREAM, port);
	if (t < 0)
		return false;
	close(t);
	int u = socket_bound(family, SOCK_DGRAM, port);
	if (u < 0)
		return false;
	close(u);
	return true;
}

static void ephemeral_range(unsigned *lo, unsigned *hi)
{
	*lo = 32768;
	*hi = 60999;
	FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
	if (f) {
		unsigned a, b;
		if (fscanf(f, "%u %u", &a, &b) == 2 && a <= b) {
			*lo = a;
			*hi = b;
		}
		fclose(f);
	}
}

static bool port_usable(uint16_t p, unsigned flags)
{
	if ((flags & PORTS_V4) && !port_free_on(AF_INET, p))
		return false;
	if ((flags & PORTS_V6) && !port_free_on(AF_INET6, p))
		return false;
	return true;
}

/*
 * Scans [lo, hi_base + width) from a random start, skipping past busy ports,
 * for width consecutive usable ports. Bounded: each port is looked at a few
 * times at most.
 */
static int block_scan(unsigned lo, unsigned hi_base, unsigned width, unsigned flags,
		      uint16_t *base_out)
{
	if (hi_base < lo)
		return -1;
	unsigned base = random_port((uint16_t)lo, (uint16_t)hi_base);
	unsigned checks = 0, limit = 3 * (hi_base - lo + width) + 1000;
	bool wrapped = false;
	unsigned i = 0;
	while (checks++ < limit) {
		if (i == width) {
			*base_out = (uint16_t)base;
			return 0;
		}
		if (port_usable((uint16_t)(base + i), flags)) {
			i++;
			continue;
		}
		base = base + i + 1;
		i = 0;
		if (base > hi_base) {
			if (wrapped)
				return -1;
			wrapped = true;
			base = lo;
		}
	}
	return -1;
}

int port_block_find(unsigned width, unsigned flags, uint16_t *base_out)
{
	unsigned eph_lo, eph_hi;
	ephemeral_range(&eph_lo, &eph_hi);
	if (width == 0 || width > 30000)
		return -1;

	/* Preferred: [20000, min(32000, ephemeral start)). */
	unsigned top = eph_lo < 32000 ? eph_lo : 32000;
	if (top >= 20000 + width && block_scan(20000, top - width, width, flags, base_out) == 0)
		return 0;
	/* Then above the ephemeral range, then [1024, 20000) (still not ephemeral). */
	if (eph_hi + 1 + width <= 65536) {
		unsigned lo = eph_hi + 1 > 20000 ? eph_hi + 1 : 20000;
		if (block_scan(lo, 65536 - width, width, flags, base_out) == 0)
			return 0;
	}
	unsigned low_top = eph_lo < 20000 ? eph_lo : 20000;
	if (low_top >= 1024 + width && block_scan(1024, low_top - width, width, flags, base_out) == 0)
		return 0;
	return -1;
}

/* ---- the relay process --------------------------------------------------------- */

bool under_valgrind(void)
{
	const char *v = getenv("PORTRELAY_VALGRIND");
	return v && strcmp(v, "1") == 0;
}

int hang_scale(void)
{
	return under_valgrind() ? 5 : 1;
}

void relay_init(struct relay *r)
{
	memset(r, 0, sizeof *r);
	r->pid = -1;
	r->err_fd = -1;
	r->out_fd = -1;
	pthread_mutex_init(&r->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cv, &ca);
	pthread_condattr_destroy(&ca);
	const char *tmp = getenv("TMPDIR");
	snprintf(r->dir, sizeof r->dir, "%s/portrelay-itest-XXXXXX",
		 tmp && *tmp && strlen(tmp) < 80 ? tmp : "/tmp");
	if (!mkdtemp(r->dir))
		r->dir[0] = '\0';
	r->log = calloc(1, 1);
	r->out = calloc(1, 1);
}

const char *relay_write_config(struct relay *r, const char *text)
{
	snprintf(r->config_path, sizeof r->config_path, "%s/portrelay.conf", r->dir);
	FILE *f = fopen(r->config_path, "w");
	if (!f)
		return NULL;
	fputs(text, f);
	if (fclose(f) != 0)
		return NULL;
	return r->config_path;
}

static void buf_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
	if (*len + n + 1 > *cap) {
		size_t ncap = *cap ? *cap : 4096;
		while (ncap < *len + n + 1)
			ncap *= 2;
		char *nb = realloc(*buf, ncap);
		if (!nb)
			return;
		*buf = nb;
		*cap = ncap;
	}
	memcpy(*buf + *len, data, n);
	*len += n;
	(*buf)[*len] = '\0';
}

static bool reader_quiet(void)
{
	const char *q = getenv("PORTRELAY_TEST_QUIET");
	return q && strcmp(q, "1") == 0;
}

static void *relay_reader(void *arg)
{
	struct relay *r = arg;
	char *chunk = malloc(65536);
	bool err_open = true, out_open = true;
	bool quiet = reader_quiet();

	while (chunk && (err_open || out_open)) {
		struct pollfd p[2] = {
			{ .fd = err_open ? r->err_fd : -1, .events = POLLIN },
			{ .fd = out_open ? r->out_fd : -1, .events = POLLIN },
		};
		int rc = poll(p, 2, 1000);
		if (rc < 0 && errno != EINTR)
			break;
		for (int k = 0; k < 2; k++) {
			if (!p[k].revents)
				continue;
			ssize_t n = read(p[k].fd, chunk, 65536);
			if (n < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			pthread_mutex_lock(&r->mu);
			if (n <= 0) {
				if (k == 0)
					err_open = false;
				else
					out_open = false;
			} else if (k == 0) {
				buf_append(&r->log, &r->log_len, &r->log_cap, chunk, (size_t)n);
				/* Echo complete lines, prefixed. */
				char *start = r->log + r->echo_pos;
				char *nl;
				while ((nl = strchr(start, '\n')) != NULL) {
					if (!quiet)
						fprintf(stderr, "relay| %.*s\n", (int)(nl - start), start);
					start = nl + 1;
				}
				r->echo_pos = (size_t)(start - r->log);
			} else {
				buf_append(&r->out, &r->out_len, &r->out_cap, chunk, (size_t)n);
			}
			pthread_cond_broadcast(&r->cv);
			pthread_mutex_unlock(&r->mu);
		}
	}
	pthread_mutex_lock(&r->mu);
	if (!quiet && r->echo_pos < r->log_len)
		fprintf(stderr, "relay| %s\n", r->log + r->echo_pos);
	r->echo_pos = r->log_len;
	r->pipes_closed = true;
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
	free(chunk);
	return NULL;
}

int relay_spawn(struct relay *r, const char *const *args)
{
	const char *bin = getenv("PORTRELAY_BIN");
	if (!bin || !*bin)
		return -1;

	const char *argv[64];
	int argc = 0;
	if (under_valgrind()) {
		argv[argc++] = "valgrind";
		argv[argc++] = "--leak-check=full";
		argv[argc++] = "--errors-for-leak-kinds=definite,indirect";
		argv[argc++] = "--error-exitcode=99";
		argv[argc++] = "-q";
	}
	argv[argc++] = bin;
	for (int i = 0; args && args[i] && argc < 62; i++)
		argv[argc++] = args[i];
	argv[argc] = NULL;

	int errp[2], outp[2];
	if (pipe2(errp, O_CLOEXEC) != 0)
		return -1;
	if (pipe2(outp, O_CLOEXEC) != 0) {
		close(errp[0]);
		close(errp[1]);
		return -1;
	}
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	struct rlimit rl = { .rlim_cur = (rlim_t)r->nofile, .rlim_max = (rlim_t)r->nofile };
	struct rlimit cur;
	getrlimit(RLIMIT_NOFILE, &cur);
	unsigned long maxfd = cur.rlim_max == RLIM_INFINITY ? 1048576 : cur.rlim_max;

	fflush(stdout);
	fflush(stderr);
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		close(errp[0]);
		close(errp[1]);
		close(outp[0]);
		close(outp[1]);
		if (devnull >= 0)
			close(devnull);
		return -1;
	}
	if (pid == 0) {
		/* Child: only async-signal-safe calls from here on. */
		/* Never outlive the test (killed by a meson timeout, say). */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		if (devnull >= 0)
			dup2(devnull, 0);
		dup2(outp[1], 1);
		dup2(errp[1], 2);
#ifdef SYS_close_range
		if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
		{
			for (unsigned long fd = 3; fd < maxfd; fd++)
				close((int)fd);
		}
		if (r->nofile > 0)
			setrlimit(RLIMIT_NOFILE, &rl);
		if (r->nofile_soft > 0) {
			struct rlimit soft = { .rlim_cur = (rlim_t)r->nofile_soft,
					       .rlim_max = cur.rlim_max };
			setrlimit(RLIMIT_NOFILE, &soft);
		}
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = SIG_DFL;
		for (int sig = 1; sig < NSIG; sig++)
			sigaction(sig, &sa, NULL);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(errp[1]);
	close(outp[1]);
	if (devnull >= 0)
		close(devnull);
	r->pid = pid;
	r->running = true;
	r->err_fd = errp[0];
	r->out_fd = outp[0];
	r->spawned_ms = now_ms();
	if (pthread_create(&r->reader, NULL, relay_reader, r) == 0)
		r->reader_started = true;
	return 0;
}

static bool is_word_char(char c)
{
	return isalnum((unsigned char)c) || c == '_';
}

static bool log_has_word(const char *log, const char *word)
{
	size_t wl = strlen(word);
	const char *p = log;
	while ((p = strstr(p, word)) != NULL) {
		bool before = p == log || !is_word_char(p[-1]);
		bool after = !is_word_char(p[wl]);
		if (before && after)
			return true;
		p += wl;
	}
	return false;
}

static void deadline_ts(struct timespec *ts, int64_t deadline_ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	int64_t left = deadline_ms - now_ms();
	if (left < 0)
		left = 0;
	ts->tv_sec += left / 1000;
	ts->tv_nsec += (left % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

int relay_wait_ready(struct relay *r, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	int result = -1;
	pthread_mutex_lock(&r->mu);
	for (;;) {
		if (log_has_word(r->log, "ready")) {
			result = 0;
			break;
		}
		if (r->pipes_closed || now_ms() >= deadline)
			break;
		struct timespec ts;
		deadline_ts(&ts, deadline);
		pthread_cond_timedwait(&r->cv, &r->mu, &ts);
	}
	pthread_mutex_unlock(&r->mu);
	return result;
}

void relay_wait_output_closed(struct relay *r, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	pthread_mutex_lock(&r->mu);
	while (!r->pipes_closed && now_ms() < deadline) {
		struct timespec ts;
		deadline_ts(&ts, deadline);
		pthread_cond_timedwait(&r->cv, &r->mu, &ts);
	}
	pthread_mutex_unlock(&r->mu);
}

static int decode_status(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return 255;
}

int relay_wait_exit(struct relay *r, int timeout_ms)
{
	if (r->pid <= 0)
		return -1;
	if (!r->running)
		return decode_status(r->status);
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		int status;
		pid_t p = waitpid(r->pid, &status, WNOHANG);
		if (p == r->pid) {
			r->running = false;
			r->status = status;
			relay_wait_output_closed(r, 5000);
			return decode_status(status);
		}
		if (p < 0 && errno != EINTR)
			return -1;
		if (now_ms() >= deadline)
			return -1;
		sleep_ms(5);
	}
}

int relay_stop_timeout(struct relay *r, int timeout_ms)
{
	if (r->pid <= 0)
		return -1;
	if (!r->running)
		return decode_status(r->status);
	kill(r->pid, SIGTERM);
	int code = relay_wait_exit(r, timeout_ms);
	if (code >= 0)
		return code;
	fprintf(stderr, "harness: relay %d did not exit %d ms after SIGTERM; SIGKILL\n",
		(int)r->pid, timeout_ms);
	kill(r->pid, SIGKILL);
	relay_wait_exit(r, 10000);
	return -1;
}

int relay_stop(struct relay *r)
{
	return relay_stop_timeout(r, 10000 * hang_scale());
}

void relay_destroy(struct relay *r)
{
	if (r->running && r->pid > 0) {
		kill(r->pid, SIGKILL);
		relay_wait_exit(r, 10000);
	}
	if (r->reader_started) {
		pthread_join(r->reader, NULL);
		r->reader_started = false;
	}
	if (r->err_fd >= 0)
		close(r->err_fd);
	if (r->out_fd >= 0)
		close(r->out_fd);
	r->err_fd = r->out_fd = -1;
	if (r->config_path[0])
		unlink(r->config_path);
	if (r->dir[0])
		rmdir(r->dir);
	free(r->log);
	free(r->out);
	r->log = r->out = NULL;
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
}

bool relay_log_contains(struct relay *r, const char *substr)
{
	pthread_mutex_lock(&r->mu);
	bool found = strstr(r->log, substr) != NULL;
	pthread_mutex_unlock(&r->mu);
	return found;
}

unsigned relay_log_count(struct relay *r, const char *substr)
{
	unsigned count = 0;
	size_t sl = strlen(substr);
	pthread_mutex_lock(&r->mu);
	const char *p = r->log;
	while (sl > 0 && (p = strstr(p, substr)) != NULL) {
		count++;
		p += sl;
	}
	pthread_mutex_unlock(&r->mu);
	return count;
}

static bool log_line_with_locked(const char *log, const char *const *subs)
{
	const char *line = log;
	while (*line) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		bool all = true;
		for (int i = 0; subs[i] && all; i++) {
			const char *hit = memmem(line, len, subs[i], strlen(subs[i]));
			if (!hit)
				all = false;
		}
		if (all)
			return true;
		if (!nl)
			break;
		line = nl + 1;
	}
	return false;
}

bool relay_log_line_with(struct relay *r, const char *const *subs)
{
	pthread_mutex_lock(&r->mu);
	bool found = log_line_with_locked(r->log, subs);
	pthread_mutex_unlock(&r->mu);
	return found;
}

bool wait_for_log_line(struct relay *r, const char *const *subs, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	bool found = false;
	pthread_mutex_lock(&r->mu);
	for (;;) {
		if (log_line_with_locked(r->log, subs)) {
			found = true;
			break;
		}
		if (r->pipes_closed || now_ms() >= deadline)
			break;
		struct timespec ts;
		deadline_ts(&ts, deadline);
		pthread_cond_timedwait(&r->cv, &r->mu, &ts);
	}
	pthread_mutex_unlock(&r->mu);
	return found;
}

/* A substring of one line (no caller looks for text spanning lines). */
bool wait_for_log(struct relay *r, const char *substr, int timeout_ms)
{
	const char *subs[] = { substr, NULL };
	return wait_for_log_line(r, subs, timeout_ms);
}

char *relay_log_copy(struct relay *r)
{
	pthread_mutex_lock(&r->mu);
	char *c = strdup(r->log);
	pthread_mutex_unlock(&r->mu);
	return c;
}

char *relay_out_copy(struct relay *r)
{
	pthread_mutex_lock(&r->mu);
	char *c = strdup(r->out);
	pthread_mutex_unlock(&r->mu);
	return c;
}

int relay_fd_count(struct relay *r)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/fd", (int)r->pid);
	DIR *d = opendir(path);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] != '.')
			n++;
	}
	closedir(d);
	return n;
}

struct listen_query {
	unsigned long *inodes;
	size_t ninodes;
	int count;
};

static bool listen_row(void *arg, const struct proc_end *local, const struct proc_end *remote,
		       unsigned state, unsigned long rx_queue, unsigned long inode)
{
	struct listen_query *q = arg;
	(void)local, (void)remote, (void)rx_queue;
	if (state != 0x0A)
		return false;
	for (size_t i = 0; i < q->ninodes; i++) {
		if (q->inodes[i] == inode) {
			q->count++;
			break;
		}
	}
	return false;
}

int relay_listen_count(struct relay *r)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/fd", (int)r->pid);
	DIR *d = opendir(path);
	if (!d)
		return -1;
	struct listen_query q = { 0 };
	size_t cap = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char link[384], target[128];
		snprintf(link, sizeof link, "%s/%s", path, e->d_name);
		ssize_t n = readlink(link, target, sizeof target - 1);
		if (n <= 0)
			continue;
		target[n] = '\0';
		unsigned long inode;
		if (sscanf(target, "socket:[%lu]", &inode) != 1)
			continue;
		if (q.ninodes == cap) {
			cap = cap ? cap * 2 : 64;
			unsigned long *ni = realloc(q.inodes, cap * sizeof *ni);
			if (!ni) {
				closedir(d);
				free(q.inodes);
				return -1;
			}
			q.inodes = ni;
		}
		q.inodes[q.ninodes++] = inode;
	}
	closedir(d);
	char tcp[64], tcp6[64];
	snprintf(tcp, sizeof tcp, "/proc/%d/net/tcp", (int)r->pid);
	snprintf(tcp6, sizeof tcp6, "/proc/%d/net/tcp6", (int)r->pid);
	proc_tcp_rows(tcp, 1, listen_row, &q);
	proc_tcp_rows(tcp6, 4, listen_row, &q);
	free(q.inodes);
	return q.count;
}

char *relay_log_line_copy(struct relay *r, const char *substr)
{
	char *copy = NULL;
	pthread_mutex_lock(&r->mu);
	const char *hit = strstr(r->log, substr);
	if (hit) {
		const char *start = hit;
		while (start > r->log && start[-1] != '\n')
			start--;
		const char *end = strchr(hit, '\n');
		size_t len = end ? (size_t)(end - start) : strlen(start);
		copy = strndup(start, len);
	}
	pthread_mutex_unlock(&r->mu);
	return copy;
}

double relay_cpu_seconds(struct relay *r)
{
	char path[64], buf[2048];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)r->pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	unsigned long ut = 0, st = 0;
	/* Fields after the command: state(3) ... utime(14) stime(15). */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return -1;
	long hz = sysconf(_SC_CLK_TCK);
	return (double)(ut + st) / (double)(hz > 0 ? hz : 100);
}

long relay_rss_kib(struct relay *r)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", (int)r->pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	long kib = -1;
	while (fgets(line, sizeof line, f)) {
		if (strncmp(line, "VmRSS:", 6) == 0) {
			kib = strtol(line + 6, NULL, 10);
			break;
		}
	}
	fclose(f);
	return kib;
}

/* ---- the cmocka fixture ---------------------------------------------------------- */

static void harness_process_init(void)
{
	static bool done;
	if (done)
		return;
	done = true;
	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int fx_setup(void **state)
{
	harness_process_init();
	struct fx *fx = calloc(1, sizeof *fx);
	if (!fx)
		return -1;
	fx->hang.lfd = -1;
	*state = fx;
	return 0;
}

int fx_teardown(void **state)
{
	struct fx *fx = *state;
	if (!fx)
		return 0;
	if (fx->relay_inited) {
		relay_destroy(&fx->relay);
		fx->relay_inited = false;
	}
	for (int i = 0; i < fx->nthreads; i++)
		if (fx->thread_live[i])
			pthread_join(fx->threads[i], NULL);
	for (int i = 0; i < fx->nservers; i++)
		tserver_stop(fx->servers[i]);
	if (fx->hang_open)
		hang_target_close(&fx->hang);
	for (int i = 0; i < fx->nallocs; i++)
		free(fx->allocs[i]);
	free(fx);
	*state = NULL;
	return 0;
}

void fx_require_relay(void)
{
	const char *bin = getenv("PORTRELAY_BIN");
	if (!bin || !*bin) {
		print_message("PORTRELAY_BIN is not set; skipping\n");
		skip();
	}
	if (access(bin, X_OK) != 0) {
		print_message("PORTRELAY_BIN=%s is not executable; skipping\n", bin);
		skip();
	}
}

void *fx_calloc(struct fx *fx, size_t size)
{
	assert_true(fx->nallocs < FX_MAX_ALLOCS);
	void *p = calloc(1, size);
	assert_non_null(p);
	fx->allocs[fx->nallocs++] = p;
	return p;
}

int fx_thread_start(struct fx *fx, void *(*fn)(void *), void *arg)
{
	assert_true(fx->nthreads < FX_MAX_THREADS);
	int i = fx->nthreads;
	assert_int_equal(pthread_create(&fx->threads[i], NULL, fn, arg), 0);
	fx->thread_live[i] = true;
	fx->nthreads++;
	return i;
}

void fx_thread_join(struct fx *fx, int index)
{
	if (index >= 0 && index < fx->nthreads && fx->thread_live[index]) {
		pthread_join(fx->threads[index], NULL);
		fx->thread_live[index] = false;
	}
}

struct tserver *fx_server(struct fx *fx, int lfd, enum tserver_mode mode, const char *greeting)
{
	assert_true(lfd >= 0);
	assert_true(fx->nservers < FX_MAX_SERVERS);
	struct tserver *s = tserver_start(lfd, mode, greeting);
	assert_non_null(s);
	fx->servers[fx->nservers++] = s;
	return s;
}

struct tserver *fx_echo_server(struct fx *fx, int family)
{
	int lfd = sock_listen(family, 0, 1024);
	if (lfd < 0)
		fail_msg("cannot listen on %s: %s", loopback_text(family), strerror(errno));
	return fx_server(fx, lfd, TSERVER_ECHO, NULL);
}

struct hang_target *fx_hang_target(struct fx *fx)
{
	if (!fx->hang_open) {
		if (hang_target_open(&fx->hang) != 0) {
			print_message("a filled accept queue does not make connects hang here; skipping\n");
			skip();
		}
		fx->hang_open = true;
	}
	return &fx->hang;
}

/* "@P<n>@" -> base+n, "@PEND@" -> base+width-1. */
static char *substitute_ports(const char *tmpl, uint16_t base, unsigned width)
{
	size_t cap = strlen(tmpl) * 2 + 64, len = 0;
	char *out = malloc(cap);
	if (!out)
		return NULL;
	const char *p = tmpl;
	while (*p) {
		char num[16];
		int nl = 0;
		const char *adv = NULL;
		if (strncmp(p, "@PEND@", 6) == 0) {
			nl = snprintf(num, sizeof num, "%u", (unsigned)base + width - 1);
			adv = p + 6;
		} else if (p[0] == '@' && p[1] == 'P' && isdigit((unsigned char)p[2])) {
			char *end;
			unsigned long k = strtoul(p + 2, &end, 10);
			if (*end == '@') {
				nl = snprintf(num, sizeof num, "%lu", (unsigned long)base + k);
				adv = end + 1;
			}
		}
		if (len + 16 + 1 > cap) {
			cap *= 2;
			char *n = realloc(out, cap);
			if (!n) {
				free(out);
				return NULL;
			}
			out = n;
		}
		if (adv) {
			memcpy(out + len, num, (size_t)nl);
			len += (size_t)nl;
			p = adv;
		} else {
			out[len++] = *p++;
		}
	}
	out[len] = '\0';
	return out;
}

void fx_dump_log(struct fx *fx)
{
	if (!fx->relay_inited)
		return;
	char *log = relay_log_copy(&fx->relay);
	if (!log)
		return;
	size_t len = strlen(log);
	const char *from = len > 16384 ? log + len - 16384 : log;
	fprintf(stderr, "---- relay log%s ----\n%s\n---- end of relay log ----\n",
		from == log ? "" : " (last 16 KiB)", from);
	free(log);
}

uint16_t fx_start_relay_args(struct fx *fx, unsigned width, unsigned flags, const char *tmpl,
			     const char *const *extra)
{
	fx_require_relay();
	for (int attempt = 1; attempt <= 5; attempt++) {
		if (fx->relay_inited) {
			relay_destroy(&fx->relay);
			fx->relay_inited = false;
		}
		relay_init(&fx->relay);
		fx->relay_inited = true;
		fx->relay.nofile = fx->nofile;
		uint16_t base;
		if (port_block_find(width, flags, &base) != 0)
			fail_msg("no block of %u free ports found", width);
		const char *args[40];
		char *owned[40];
		int n = 0, nowned = 0;
		if (tmpl) {
			char *text = substitute_ports(tmpl, base, width);
			assert_non_null(text);
			const char *path = relay_write_config(&fx->relay, text);
			free(text);
			if (!path)
				fail_msg("cannot write the configuration in %s", fx->relay.dir);
			args[n++] = "-c";
			args[n++] = path;
		}
		args[n++] = "-l";
		args[n++] = "debug";
		for (int i = 0; extra && extra[i] && n < 39; i++) {
			char *a = substitute_ports(extra[i], base, width);
			assert_non_null(a);
			owned[nowned++] = a;
			args[n++] = a;
		}
		args[n] = NULL;
		int spawned = relay_spawn(&fx->relay, args);
		for (int i = 0; i < nowned; i++)
			free(owned[i]);
		if (spawned != 0)
			fail_msg("cannot spawn the relay: %s", strerror(errno));
		if (relay_wait_ready(&fx->relay, 20000 * hang_scale()) == 0) {
			fx->ext_base = base;
			return base;
		}
		int code = relay_wait_exit(&fx->relay, 5000 * hang_scale());
		if (code == 1 && relay_log_contains(&fx->relay, "Address already in use")) {
			fprintf(stderr, "harness: a port of %u-%u was taken meanwhile; new block (attempt %d)\n",
				(unsigned)base, (unsigned)base + width - 1, attempt);
			continue;
		}
		if (code < 0)
			fail_with_log(fx, "relay did not log 'ready' within %d ms", 20000 * hang_scale());
		fail_with_log(fx, "relay exited with status %d before it was ready", code);
	}
	fail_with_log(fx, "relay could not bind a free port block in 5 attempts");
	return 0;
}

uint16_t fx_start_relay(struct fx *fx, unsigned width, unsigned flags, const char *tmpl)
{
	return fx_start_relay_args(fx, width, flags, tmpl, NULL);
}

uint16_t fx_start_tcp_forward(struct fx *fx, const char *name, int family, unsigned int_port,
			      double connect_timeout, double idle_timeout, bool splice)
{
	const char *addr = loopback_text(family);
	char *t = NULL;
	int n = asprintf(&t,
			 "tcp = { connect_timeout = %.3f; idle_timeout = %.3f; splice = %s; };\n"
			 "forwards = (\n"
			 "  { name = \"%s\"; protocol = \"tcp\"; external_address = \"%s\";\n"
			 "    external_port = @P0@; internal_ip = \"%s\"; internal_port = %u; }\n"
			 ");\n",
			 connect_timeout, idle_timeout, splice ? "true" : "false", name, addr, addr,
			 int_port);
	assert_true(n > 0);
	uint16_t port = fx_start_relay(fx, 1, family == AF_INET6 ? PORTS_V6 : PORTS_V4, t);
	free(t);
	return port;
}

int fx_connect_relay(struct fx *fx, int family, uint16_t port)
{
	int fd = sock_connect(family, port, 10000 * hang_scale());
	if (fd < 0)
		fail_with_log(fx, "connect to the relay on port %u: %s", port, strerror(errno));
	return fd;
}

void fx_stop_relay_ok(struct fx *fx)
{
	int code = relay_stop(&fx->relay);
	if (code != 0)
		fail_with_log(fx, "relay exit status %d after SIGTERM, expected 0", code);
}
