/*
 * fuzz_admin.c - libFuzzer target for the admin endpoint: libevent's evhttp
 * and admin.c's handler (token check, method, path, /metrics and /status
 * rendering), the real code, in-process.
 *
 * LLVMFuzzerInitialize builds what src/main.c's run() builds: a configuration
 * (a file in a temporary directory, read by config_load_sources) with a TCP+UDP
 * forward, an FTP forward and a disabled one on 127.0.0.1, a ruleset, a
 * one-worker pool (its sockets bound, its loop never run: nothing is relayed)
 * and two admin endpoints on Unix sockets in that directory, each with its
 * evhttp thread: one asks for a bearer token (admin.token_file), the other
 * asks for none. Setup happens once per process, so an input costs one
 * connection.
 *
 * Input: byte 0 picks the endpoint (bit 0: 0 = the token one, 1 = the open
 * one); the rest is written as it is to a new connection, which is then
 * half-closed, and the answer is read until the endpoint closes.
 *
 * Checks beyond the sanitizers:
 *  - the endpoint closes the connection within CLOSE_BOUND_MS of the
 *    half-close (evhttp sees the EOF); a connection never closed would hold
 *    a descriptor of the relay;
 *  - whatever it answers starts with "HTTP/1.", a status between 100 and 599;
 *  - the token endpoint answers 200 at most as many times as the input
 *    holds the token: no page without it;
 *  - every 200 answers GET or HEAD (the input holds one of them) and names
 *    /metrics or /status;
 *  - a lone HEAD request gets headers and no body
 *    (off by default: today's admin.c sends the body, see check_answer);
 *  - the process's sockets do not grow (checked every 256 inputs): every
 *    connection evhttp accepted is closed.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "portrelay/admin.h"
#include "portrelay/config.h"
#include "portrelay/log.h"
#include "portrelay/ruleset.h"
#include "portrelay/worker.h"

/* The answer being checked (NULL: none yet), shown when a check breaks. */
static const char *shown_ans;
static size_t shown_len;

/* The first bytes of the answer, escaped, for the report of a broken check. */
static void show_answer(const char *ans, size_t len)
{
	fprintf(stderr, "answer (%zu bytes): \"", len);
	for (size_t i = 0; i < len && i < 400; i++) {
		unsigned char c = (unsigned char)ans[i];
		if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"')
			fputc(c, stderr);
		else
			fprintf(stderr, "\\x%02x", c);
	}
	fprintf(stderr, "\"%s\n", len > 400 ? "..." : "");
}

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, \
				#cond);                                                  \
			if (shown_ans != NULL)                                           \
				show_answer(shown_ans, shown_len);                       \
			abort();                                                         \
		}                                                                        \
	} while (0)

#define TOKEN "fuzz-token-0123456789"
/* Far above what an answer takes (well under a millisecond), far below -timeout. */
#define CLOSE_BOUND_MS 3000
#define ANSWER_MAX (1 << 20)

static char dir[64];
static char sock_path[2][128];
static struct worker_pool *pool;
static struct admin *admins[2];
static long sockets_after_setup;

/* Sockets among the process's descriptors (libFuzzer opens pipes of its own). */
static long count_sockets(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (d == NULL)
		return -1;
	long n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char link[64], target[64];
		snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
		ssize_t len = readlink(link, target, sizeof target - 1);
		n += len > 7 && memcmp(target, "socket:", 7) == 0;
	}
	closedir(d);
	return n;
}

static void list_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	while (d != NULL && (e = readdir(d)) != NULL) {
		char link[64], target[256];
		snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
		ssize_t n = readlink(link, target, sizeof target - 1);
		target[n > 0 ? n : 0] = '\0';
		fprintf(stderr, "  fd %s -> %s\n", e->d_name, target);
	}
	if (d != NULL)
		closedir(d);
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void die(const char *what)
{
	fprintf(stderr, "fuzz_admin setup: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
		die(path);
}

/* A port free for TCP and UDP on 127.0.0.1, chosen by the kernel. */
static unsigned free_port(void)
{
	for (int attempt = 0; attempt < 50; attempt++) {
		int t = socket(AF_INET, SOCK_STREAM, 0), u = socket(AF_INET, SOCK_DGRAM, 0);
		struct sockaddr_in sin = { .sin_family = AF_INET,
					   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t len = sizeof sin;
		unsigned port = 0;
		if (t >= 0 && u >= 0 && bind(t, (struct sockaddr *)&sin, sizeof sin) == 0 &&
		    getsockname(t, (struct sockaddr *)&sin, &len) == 0 &&
		    bind(u, (struct sockaddr *)&sin, sizeof sin) == 0)
			port = ntohs(sin.sin_port);
		if (t >= 0)
			close(t);
		if (u >= 0)
			close(u);
		if (port != 0)
			return port;
	}
	die("no free port");
	return 0;
}

/* The files a setup leaves in its directory, and the directory. */
static void remove_dir(const char *d)
{
	static const char *const names[] = { "portrelay.conf", "token", "admin0.sock", "admin1.sock" };
	char path[160];
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		snprintf(path, sizeof path, "%s/%s", d, names[i]);
		unlink(path);
	}
	rmdir(d);
}

/*
 * A run that crashed (a broken check aborts) leaves its directory behind:
 * those of processes that are gone, /tmp/portrelay-fuzz-admin.PID.*, go.
 */
static void remove_stale_dirs(void)
{
	DIR *d = opendir("/tmp");
	struct dirent *e;
	while (d != NULL && (e = readdir(d)) != NULL) {
		long pid;
		char rest[32], path[160];
		if (sscanf(e->d_name, "portrelay-fuzz-admin.%ld.%31s", &pid, rest) != 2 || pid <= 0 ||
		    kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		snprintf(path, sizeof path, "/tmp/%s", e->d_name);
		remove_dir(path);
	}
	if (d != NULL)
		closedir(d);
}

static void cleanup(void)
{
	for (int i = 0; i < 2; i++)
		admin_free(admins[i]);
	worker_pool_free(pool);
	remove_dir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	signal(SIGPIPE, SIG_IGN);
	log_set_level(LOG_LEVEL_ERROR);
	remove_stale_dirs();
	snprintf(dir, sizeof dir, "/tmp/portrelay-fuzz-admin.%ld.XXXXXX", (long)getpid());
	if (mkdtemp(dir) == NULL)
		die("mkdtemp");
	for (int i = 0; i < 2; i++)
		snprintf(sock_path[i], sizeof sock_path[i], "%s/admin%d.sock", dir, i);

	char path[160], token_path[160], text[2048];
	snprintf(token_path, sizeof token_path, "%s/token", dir);
	write_file(token_path, TOKEN "\n");
	unsigned web = free_port(), ftp = free_port();
	snprintf(text, sizeof text,
		 "log_level = \"error\";\n"
		 "workers = 1;\n"
		 "admin = { listen = \"%s\"; token_file = \"%s\"; };\n"
		 "forwards = (\n"
		 "  { name = \"web \\\"one\\\"\\\\\"; protocol = \"both\"; "
		 "external_address = \"127.0.0.1\"; external_port = %u; "
		 "internal_ip = \"127.0.0.1\"; internal_port = 9; },\n"
		 "  { name = \"ftp\"; protocol = \"tcp\"; ftp = true; "
		 "external_address = \"127.0.0.1\"; external_port = %u; "
		 "internal_ip = \"127.0.0.1\"; internal_port = 21; },\n"
		 "  { name = \"off\"; protocol = \"udp\"; enabled = false; "
		 "external_address = \"127.0.0.1\"; external_port = 1; "
		 "internal_ip = \"::1\"; internal_port = 1; }\n"
		 ");\n",
		 sock_path[0], token_path, web, ftp);
	snprintf(path, sizeof path, "%s/portrelay.conf", dir);
	write_file(path, text);

	struct config cfg;
	char err[512];
	struct config_sources sources = { .path = path };
	if (config_load_sources(&cfg, &sources, err, sizeof err) < 0) {
		fprintf(stderr, "fuzz_admin setup: %s\n", err);
		exit(1);
	}
	struct rlimit limit;
	getrlimit(RLIMIT_NOFILE, &limit);
	struct ruleset *rules = ruleset_new(&cfg, NULL, 1);
	if (rules == NULL)
		die("ruleset_new");
	pool = worker_pool_open(rules, 1, (unsigned long)limit.rlim_cur);
	if (pool == NULL)
		die("worker_pool_open");
	/* The same rules, a second endpoint without a token (admin_open reads cfg only now). */
	struct config open_cfg = rules->cfg;
	snprintf(open_cfg.admin_listen, sizeof open_cfg.admin_listen, "%s", sock_path[1]);
	open_cfg.admin_token_file[0] = '\0';
	admins[0] = admin_open(&rules->cfg, pool);
	admins[1] = admin_open(&open_cfg, pool);
	if (admins[0] == NULL || admins[1] == NULL)
		die("admin_open");
	ruleset_unref(rules);   /* the pool holds them */
	atexit(cleanup);
	sockets_after_setup = count_sockets();
	if (getenv("FUZZ_ADMIN_LIST_FDS") != NULL)
		list_fds();
	return 0;
}

/* How many times needle occurs in hay (overlapping ones too). */
static size_t occurrences(const uint8_t *hay, size_t len, const char *needle)
{
	size_t n = 0, nlen = strlen(needle);
	for (const uint8_t *p = hay; len >= nlen;) {
		const uint8_t *hit = memmem(p, len, needle, nlen);
		if (hit == NULL)
			break;
		n++;
		len -= (size_t)(hit - p) + 1;
		p = hit + 1;
	}
	return n;
}

/*
 * A status line at p: "HTTP/" major "." minor " " a code; the code, else -1.
 * evhttp echoes the request's version, kept in a char: "HTTP/1.5555" comes
 * back as "HTTP/1.-77" (libevent's, harmless), so a version may be negative.
 */
static int status_code(const char *p, size_t len)
{
	size_t i = 5;
	if (len < 5 || memcmp(p, "HTTP/", 5) != 0)
		return -1;
	i += i < len && p[i] == '-';
	size_t major = i;
	while (i < len && p[i] >= '0' && p[i] <= '9')
		i++;
	if (i == major || i >= len || p[i++] != '.')
		return -1;
	i += i < len && p[i] == '-';
	size_t minor = i;
	while (i < len && p[i] >= '0' && p[i] <= '9')
		i++;
	if (i == minor || i + 4 > len || p[i] != ' ')
		return -1;
	return atoi(p + i + 1);
}

/*
 * The answer: a sequence of responses; checks each status line it finds.
 * evhttp answers in the request's own version ("HTTP/0.1 200 OK" to a
 * request that says HTTP/0.1), so any "HTTP/x.y" is a status line.
 */
static void check_answer(const uint8_t *req, size_t req_len, const char *ans, size_t len,
			 int endpoint)
{
	shown_ans = ans;
	shown_len = len;
	if (len == 0)
		return;   /* evhttp may close without a word (EOF mid-request) */
	CHECK(status_code(ans, len) >= 0);
	/*
	 * One HEAD request alone (it ends at its only blank line): the answer is
	 * a header block and nothing after it (a body would be read as the
	 * answer to the connection's next request). Only for the answers
	 * admin.c gives (200, 401, 404, 405): libevent's own error pages for
	 * requests it cannot parse (400, 413, 501) carry a body whatever the
	 * method, and the connection closes after them.
	 */
	int code = status_code(ans, len);
	if ((code == 200 || code == 401 || code == 404 || code == 405) && req_len > 9 && memcmp(req, "HEAD /", 6) == 0 &&
	    occurrences(req, req_len, "\r\n\r\n") == 1 &&
	    memcmp(req + req_len - 4, "\r\n\r\n", 4) == 0) {
		const char *end = memmem(ans, len, "\r\n\r\n", 4);
		CHECK(end != NULL && (size_t)(end + 4 - ans) == len);
	}
	size_t oks = 0;
	for (const char *p = ans; p != NULL;) {
		int code = status_code(p, len - (size_t)(p - ans));
		if (code >= 0) {
			CHECK(code >= 100 && code <= 599);
			oks += code == 200;
		}
		p = memmem(p + 1, len - (size_t)(p + 1 - ans), "HTTP/", 5);
	}
	if (oks == 0)
		return;
	/* No page without the token, and only for GET or HEAD of the two pages. */
	if (endpoint == 0)
		CHECK(oks <= occurrences(req, req_len, TOKEN));
	CHECK(occurrences(req, req_len, "GET") + occurrences(req, req_len, "HEAD") > 0);
	CHECK(occurrences(req, req_len, "/metrics") + occurrences(req, req_len, "/status") +
	      occurrences(req, req_len, "%") > 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned runs;
	static char ans[ANSWER_MAX + 1];
	shown_ans = NULL;
	if (size < 1)
		return 0;
	int endpoint = data[0] & 1;
	const uint8_t *req = data + 1;
	size_t req_len = size - 1;

	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	memcpy(sun.sun_path, sock_path[endpoint], strlen(sock_path[endpoint]) + 1);
	/* The backlog (64) is never full: one connection at a time, each closed. */
	CHECK(connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0);

	long deadline = now_ms() + CLOSE_BOUND_MS;
	size_t sent = 0, got = 0;
	bool writing = true;
	if (req_len == 0) {
		shutdown(fd, SHUT_WR);
		writing = false;
	}
	for (;;) {
		long left = deadline - now_ms();
		if (left <= 0) {
			fprintf(stderr, "the admin endpoint did not close the connection within "
				"%d ms (%zu of %zu bytes written, %zu read)\n",
				CLOSE_BOUND_MS, sent, req_len, got);
			abort();
		}
		struct pollfd pfd = { .fd = fd, .events = POLLIN | (writing ? POLLOUT : 0) };
		if (poll(&pfd, 1, (int)left) < 0) {
			CHECK(errno == EINTR);
			continue;
		}
		if (writing && (pfd.revents & (POLLOUT | POLLERR | POLLHUP))) {
			ssize_t n = send(fd, req + sent, req_len - sent, MSG_NOSIGNAL);
			if (n > 0)
				sent += (size_t)n;
			/* A refused rest (EPIPE: the endpoint closed early) is not sent. */
			if (sent == req_len || (n < 0 && errno != EAGAIN && errno != EINTR)) {
				shutdown(fd, SHUT_WR);
				writing = false;
			}
		}
		if (pfd.revents & (POLLIN | POLLERR | POLLHUP)) {
			ssize_t n = recv(fd, ans + got, got < ANSWER_MAX ? ANSWER_MAX - got : 1, 0);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				break;
			if (n > 0 && got < ANSWER_MAX)
				got += (size_t)n;
		}
	}
	close(fd);
	check_answer(req, req_len, ans, got, endpoint);
	shown_ans = NULL;

	/* Every connection closed: the sockets stay as after setup (closes settle). */
	if (++runs % 256 == 0) {
		long fds = count_sockets();
		for (int i = 0; i < 100 && fds > sockets_after_setup; i++) {
			usleep(10000);
			fds = count_sockets();
		}
		if (fds > sockets_after_setup) {
			fprintf(stderr, "sockets: %ld after setup, %ld now:\n", sockets_after_setup, fds);
			list_fds();
		}
		CHECK(fds <= sockets_after_setup);
	}
	return 0;
}
