/*
 * fuzz_admin.c - libFuzzer target for the admin endpoint: libevent's evhttp
 * and admin.c's handler (login, sessions, token check, CSRF and Host
 * checks, the page's files, /metrics and /status, the Port Forwarding API
 * behind them), the real code, in-process.
 *
 * LLVMFuzzerInitialize builds what src/main.c's run() builds: a configuration
 * (a file in a temporary directory, read by config_load_sources) with a TCP+UDP
 * forward, an FTP forward and a disabled one on 127.0.0.1, and admin.rules_file
 * with two API rules; a ruleset, a one-worker pool (its sockets bound, its
 * loop never run: nothing is relayed) and three admin endpoints, each with
 * its evhttp thread: on Unix sockets in that directory one that asks for a
 * token (admin.token_file) and one that asks for none, and on 127.0.0.1 (TCP,
 * a port the kernel picked) one without a token, where the Host header is
 * checked (DNS rebinding). The API's apply function is fuzz_apply
 * (fuzz_api_common.h): it checks that the candidate rules file the API wrote
 * reads back, and applies nothing (the workers' loops never run, so a reload
 * would wait forever); the rules stay as set up. Setup happens once per
 * process, so an input costs one connection.
 *
 * Input: byte 0 = AA SSSS EE: EE (bits 0-1) the endpoint: 0 and 3 the token
 * one (token fuzz-token-0123456789), 1 the open Unix one, 2 the open TCP
 * one; SSSS (bits 2-5) all set: wrong tokens allowed (see below); AA (bits
 * 6-7) what apply answers (fuzz_api_common.h). The rest is written as it is
 * to a new connection, which is then half-closed, and the answer is read
 * until the endpoint closes.
 *
 * Wrong tokens. admin.c answers a wrong token (bearer or login form) only
 * after ADMIN_WRONG_TOKEN_DELAY (1 s, a timer), and ten of them within ten
 * seconds spend the guessing credit: every token, the right one too, is then
 * refused (429) until it refills (one a second). Mutating the seeds makes
 * wrong tokens all the time (one changed byte of the right one), so if every
 * input went through, most would take a second and the right token would
 * mostly get 429: a few inputs a second, and the pages behind the login
 * barely reached. So on the token endpoint an input that may present any
 * token but the right one is skipped (and kept out of the corpus): the
 * case-insensitive word "bearer" not followed by " fuzz-token-0123456789"
 * and a line end; or, in a request to /login, a chunked body, a
 * Content-Length not plainly written, or a '=' in the bytes a Content-Length
 * says are the body that is not that of "token=fuzz-token-0123456789" or of
 * an empty "token=" (followed by '&', a line end or the body's end: a length
 * that cuts the token makes a wrong one). Such an input goes through only
 * when SSSS is all set (one byte-0 value in sixteen) and such inputs have so
 * far taken less than one part in SLOW_SHARE of the run's time, after the
 * first SLOW_FREE_MS (so the seeds' go through, and a crash reproduces).
 * Weighing by the byte alone is not enough: one second is worth thousands
 * of fast inputs, and the mutations of a slow corpus entry are mostly slow
 * too. Those inputs, at most two presentations each, take their second (the
 * bound on the close grows by as much) and keep the slow path under the
 * fuzzer (the timer, the connection half-closed while the answer waits, the
 * delayed 401 of the API and of the login form), at no cost in credit (one
 * wrong token a second at most, as it refills). The prediction errs on the
 * safe side: a right token it cannot see as such (folded, percent-encoded)
 * is only treated as a wrong one; an input that took a wrong token's second
 * all the same is counted in the budget and kept out of the corpus. The 429
 * path (credit spent) is left to the unit tests (test_admin_auth.c).
 *
 * Checks beyond the sanitizers:
 *  - the endpoint closes the connection within CLOSE_BOUND_MS of the
 *    half-close (plus the delay of each wrong token); a connection never
 *    closed would hold a descriptor of the relay;
 *  - whatever it answers is a sequence of responses, each starting with
 *    "HTTP/x.y", a status between 100 and 599;
 *  - without the token: a 200 only for what the login page needs (the login
 *    page itself, /style.css, /favicon.svg: told by their type and length);
 *    on the token endpoint, every other 200 and every session cookie set
 *    (a 303 from /login) needs one occurrence of the token in the input (a
 *    session cookie of the input's own cannot be valid: it is random);
 *  - every 200 answers GET or HEAD (the input holds one of them), never a
 *    201 (nothing is applied); a /metrics page needs "/metrics" in the input;
 *  - when the API applied (fuzz_apply ran): its status is in the answer;
 *    afterwards no candidate (rules.conf.new-*) is left, and the rules file
 *    holds the bytes it was set up with;
 *  - a lone HEAD request gets headers and no body;
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
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "portrelay/admin.h"
#include "portrelay/admin_auth.h"
#include "portrelay/config.h"
#include "portrelay/log.h"
#include "portrelay/ruleset.h"
#include "portrelay/worker.h"
#include "portrelay/www.h"

/* The answer being checked (NULL: none yet), shown when a check breaks. */
static const char *shown_ans;
static size_t shown_len;
static void show_answer(const char *ans, size_t len);
#define FUZZ_CHECK_SHOW()                                                                \
	do {                                                                             \
		if (shown_ans != NULL)                                                   \
			show_answer(shown_ans, shown_len);                               \
	} while (0)

#include "fuzz_api_common.h"

/* The first bytes of the answer, escaped, for the report of a broken check. */
static void show_answer(const char *ans, size_t len)
{
	fprintf(stderr, "answer (%zu bytes): \"", len);
	for (size_t i = 0; i < len && i < 2000; i++) {
		unsigned char c = (unsigned char)ans[i];
		if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"')
			fputc(c, stderr);
		else
			fprintf(stderr, "\\x%02x", c);
	}
	fprintf(stderr, "\"%s\n", len > 2000 ? "..." : "");
}


#define TOKEN "fuzz-token-0123456789"
/* Far above what an answer takes (well under a millisecond), far below -timeout. */
#define CLOSE_BOUND_MS 3000
/* What a wrong token adds (ADMIN_WRONG_TOKEN_DELAY and some). */
#define WRONG_TOKEN_MS 1300
/* Wrong tokens an input may present (SSSS set): each takes its second. */
#define WRONG_TOKENS_MAX 2
/*
 * Inputs with wrong tokens take at most one part in SLOW_SHARE of the time,
 * after SLOW_FREE_MS (the seeds' own, loaded first).
 */
#define SLOW_SHARE 20
#define SLOW_FREE_MS 6000
#define ANSWER_MAX (1 << 20)
#define ENDPOINTS 3

static char dir[96];
static char sock_path[2][160];
static unsigned tcp_port;
static struct worker_pool *pool;
static struct admin *admins[ENDPOINTS];
static struct fuzz_apply applier;
static char rules_bytes[8192];         /* the rules file as set up */
static long rules_len;
static long sockets_after_setup;
static long start_ms, slow_ms;         /* when setup ended; spent on wrong tokens */

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
	fuzz_die("fuzz_admin", what);
}

static void write_file(const char *path, const char *text)
{
	fuzz_write_file("fuzz_admin", path, text);
}

static void cleanup(void)
{
	for (int i = 0; i < ENDPOINTS; i++)
		admin_free(admins[i]);
	worker_pool_free(pool);
	fuzz_remove_dir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	signal(SIGPIPE, SIG_IGN);
	log_set_level(LOG_LEVEL_ERROR);
	/* tmpfs: the API fsyncs every candidate it writes. */
	struct stat st;
	const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
	fuzz_remove_stale_dirs(base, "portrelay-fuzz-admin");
	snprintf(dir, sizeof dir, "%s/portrelay-fuzz-admin.%ld.XXXXXX", base, (long)getpid());
	if (mkdtemp(dir) == NULL)
		die("mkdtemp");
	for (int i = 0; i < 2; i++)
		snprintf(sock_path[i], sizeof sock_path[i], "%s/admin%d.sock", dir, i);
	snprintf(applier.config_path, sizeof applier.config_path, "%s/portrelay.conf", dir);
	snprintf(applier.rules_file, sizeof applier.rules_file, "%s/rules.conf", dir);

	char token_path[160], text[4096];
	snprintf(token_path, sizeof token_path, "%s/token", dir);
	write_file(token_path, TOKEN "\n");
	unsigned web = fuzz_free_port(0), ftp = fuzz_free_port(0), one = fuzz_free_port(0);
	tcp_port = fuzz_free_port(0);
	if (web == 0 || ftp == 0 || one == 0 || tcp_port == 0)
		die("no free port");
	snprintf(text, sizeof text,
		 "log_level = \"error\";\n"
		 "workers = 1;\n"
		 "admin = { listen = \"%s\"; token_file = \"%s\"; rules_file = \"%s\"; };\n"
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
		 sock_path[0], token_path, applier.rules_file, web, ftp);
	write_file(applier.config_path, text);
	snprintf(text, sizeof text,
		 "forwards = (\n"
		 "  { name = \"api one\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
		 "    external_port = %u; internal_ip = \"192.0.2.7\"; internal_port = 80; },\n"
		 "  { name = \"api/two%%\"; protocol = \"udp\"; enabled = false;\n"
		 "    external_address = \"127.0.0.1\"; external_port = \"40000-40009\";\n"
		 "    internal_ip = \"backend.test\"; internal_port = \"50000-50009\"; }\n"
		 ");\n", one);
	write_file(applier.rules_file, text);
	rules_len = fuzz_read_file(applier.rules_file, rules_bytes, sizeof rules_bytes);
	if (rules_len <= 0)
		die("rules file");

	struct config cfg;
	char err[1024];
	struct config_sources sources = { .path = applier.config_path };
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
	/* The same rules, endpoints without a token (admin_open reads cfg only now). */
	struct config open_cfg = rules->cfg, tcp_cfg = rules->cfg;
	snprintf(open_cfg.admin_listen, sizeof open_cfg.admin_listen, "%s", sock_path[1]);
	open_cfg.admin_token_file[0] = '\0';
	snprintf(tcp_cfg.admin_listen, sizeof tcp_cfg.admin_listen, "127.0.0.1:%u", tcp_port);
	tcp_cfg.admin_unix = false;
	tcp_cfg.admin_token_file[0] = '\0';
	if (net_addr_parse_ip("127.0.0.1", (uint16_t)tcp_port, &tcp_cfg.admin_addr) < 0)
		die("127.0.0.1");
	admins[0] = admin_open(&rules->cfg, pool, fuzz_apply, &applier);
	admins[1] = admin_open(&open_cfg, pool, fuzz_apply, &applier);
	admins[2] = admin_open(&tcp_cfg, pool, fuzz_apply, &applier);
	if (admins[0] == NULL || admins[1] == NULL || admins[2] == NULL)
		die("admin_open");
	ruleset_unref(rules);   /* the pool holds them */
	atexit(cleanup);
	sockets_after_setup = count_sockets();
	start_ms = now_ms();
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

/* memmem, ASCII letters in any case. */
static const uint8_t *find_ci(const uint8_t *hay, size_t len, const char *needle)
{
	size_t n = strlen(needle);
	for (size_t i = 0; i + n <= len; i++) {
		if (strncasecmp((const char *)hay + i, needle, n) == 0)
			return hay + i;
	}
	return NULL;
}

static bool ends_value(const uint8_t *p, const uint8_t *end)
{
	return p == end || *p == '&' || *p == '\r' || *p == '\n';
}

/*
 * The '=' of a form body [p, end) that may carry a token other than the
 * right one: any but that of "token=" with the right token or none.
 */
static unsigned form_risks(const uint8_t *p, const uint8_t *end)
{
	unsigned risks = 0;
	for (const uint8_t *eq = memchr(p, '=', (size_t)(end - p)); eq != NULL;
	     eq = memchr(eq + 1, '=', (size_t)(end - eq - 1))) {
		size_t before = (size_t)(eq - p), after = (size_t)(end - eq - 1);
		bool named = before >= 5 && strncasecmp((const char *)eq - 5, "token", 5) == 0;
		/* The right token, or none (asked for again at once, unchecked). */
		bool token = named && (ends_value(eq + 1, end) ||
				       (after >= strlen(TOKEN) &&
					memcmp(eq + 1, TOKEN, strlen(TOKEN)) == 0 &&
					ends_value(eq + 1 + strlen(TOKEN), end)));
		risks += !token;
	}
	return risks;
}

/*
 * How many tokens other than the right one the input may present to the
 * token endpoint (see the top of the file): each is answered after a second.
 * Bearer headers; and for /login, the form body of every Content-Length
 * (as long as it says: a length that cuts the token makes a wrong one).
 */
static unsigned wrong_token_risks(const uint8_t *req, size_t len)
{
	static const char right[] = " " TOKEN;
	const size_t right_len = sizeof right - 1;
	const uint8_t *end = req + len;
	unsigned risks = 0;
	for (const uint8_t *p = find_ci(req, len, "bearer"); p != NULL;
	     p = find_ci(p + 1, (size_t)(end - p - 1), "bearer")) {
		const uint8_t *after = p + 6;
		bool ok = (size_t)(end - after) > right_len && memcmp(after, right, right_len) == 0 &&
			  (after[right_len] == '\r' || after[right_len] == '\n');
		risks += !ok;
	}
	if (memmem(req, len, "/login", 6) == NULL)
		return risks;
	/* A chunked body: not followed here. */
	risks += find_ci(req, len, "transfer-encoding") != NULL;
	for (const uint8_t *p = find_ci(req, len, "content-length"); p != NULL;
	     p = find_ci(p + 1, (size_t)(end - p - 1), "content-length")) {
		const uint8_t *q = p + strlen("content-length");
		size_t n = 0;
		int digits = 0;
		if (q < end && *q == ':')
			q++;
		while (q < end && (*q == ' ' || *q == '\t'))
			q++;
		for (; q < end && *q >= '0' && *q <= '9' && digits < 9; q++, digits++)
			n = n * 10 + (size_t)(*q - '0');
		if (digits == 0 || q >= end || (*q != '\r' && *q != '\n')) {
			risks++;   /* a length read some other way, or none: unknown */
			continue;
		}
		/* The body: after the first empty line (CRLF or a bare LF). */
		const uint8_t *crlf = memmem(q, (size_t)(end - q), "\n\r\n", 3);
		const uint8_t *lf = memmem(q, (size_t)(end - q), "\n\n", 2);
		const uint8_t *body = crlf != NULL && (lf == NULL || crlf < lf) ? crlf + 3
				      : lf != NULL ? lf + 2 : NULL;
		if (body == NULL)
			continue;
		risks += form_risks(body, (size_t)(end - body) < n ? end : body + n);
	}
	return risks;
}

/* A header's value in the block [p, end) (name without the colon), or NULL; its length. */
static const char *header(const char *p, const char *end, const char *name, size_t *len)
{
	size_t n = strlen(name);
	for (const char *line = p; line < end;) {
		const char *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
		if (eol == NULL)
			eol = end;
		if ((size_t)(eol - line) > n && strncasecmp(line, name, n) == 0 && line[n] == ':') {
			const char *v = line + n + 1;
			while (v < eol && *v == ' ')
				v++;
			*len = (size_t)(eol - v);
			return v;
		}
		line = eol + 2;
	}
	return NULL;
}

static bool value_starts(const char *v, size_t len, const char *prefix)
{
	return v != NULL && len >= strlen(prefix) && strncasecmp(v, prefix, strlen(prefix)) == 0;
}

/* A 200 anyone may have: the login page, or what it needs (told by type and length). */
static bool public_page(const char *type, size_t type_len, long length)
{
	static const char *const files[][2] = {
		{ "login.html", "text/html" }, { "style.css", "text/css" },
		{ "favicon.svg", "image/svg+xml" },
	};
	for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
		const struct www_file *file = www_find(files[i][0]);
		CHECK(file != NULL);
		if (value_starts(type, type_len, files[i][1]) && length == (long)file->size)
			return true;
	}
	return false;
}

/*
 * The answer: a sequence of responses (status line, headers, a body of
 * Content-Length bytes unless the next response starts right after the
 * headers: HEAD). evhttp answers in the request's own version ("HTTP/0.1
 * 200 OK" to a request that says HTTP/0.1), so any "HTTP/x.y" starts one.
 */
static void check_answer(const uint8_t *req, size_t req_len, const char *ans, size_t len,
			 int endpoint)
{
	shown_ans = ans;
	shown_len = len;
	if (len == 0) {
		CHECK(applier.calls == 0);
		return;   /* evhttp may close without a word (EOF mid-request) */
	}
	CHECK(status_code(ans, len) >= 0);
	/*
	 * One HEAD request alone (it ends at its only blank line, CRLF or a bare
	 * LF, and no NUL, which evhttp reads as the end of a line and of the
	 * headers: nothing after it is a second request): the answer is
	 * a header block and nothing after it (a body would be read as the
	 * answer to the connection's next request). Only for the answers
	 * admin.c gives: libevent's own error pages for requests it cannot
	 * parse (400, 413, 501) carry a body whatever the method, and the
	 * connection closes after them.
	 */
	int code = status_code(ans, len);
	if ((code == 200 || code == 303 || code == 401 || code == 403 || code == 404 ||
	     code == 405 || code == 409 || code == 429) &&
	    req_len > 9 && memcmp(req, "HEAD /", 6) == 0 && memchr(req, '\0', req_len) == NULL &&
	    occurrences(req, req_len, "\n\r\n") + occurrences(req, req_len, "\n\n") == 1 &&
	    memcmp(req + req_len - 4, "\r\n\r\n", 4) == 0) {
		const char *end = memmem(ans, len, "\r\n\r\n", 4);
		CHECK(end != NULL && (size_t)(end + 4 - ans) == len);
	}
	size_t protected = 0, oks = 0;
	bool applied_status = false;
	for (size_t off = 0; off < len;) {
		const char *p = ans + off;
		code = status_code(p, len - off);
		CHECK(code >= 100 && code <= 599);
		CHECK(code != 201);   /* nothing is ever applied */
		applied_status |= code == fuzz_apply_status(applier.result);
		const char *head_end = memmem(p, len - off, "\r\n\r\n", 4);
		if (head_end == NULL)
			break;
		const char *headers = memchr(p, '\n', (size_t)(head_end - p));
		headers = headers != NULL ? headers + 1 : head_end;
		size_t type_len = 0, length_len = 0, cookie_len = 0;
		const char *type = header(headers, head_end, "Content-Type", &type_len);
		const char *length_text = header(headers, head_end, "Content-Length", &length_len);
		const char *cookie = header(headers, head_end, "Set-Cookie", &cookie_len);
		/* Without Content-Length (HTTP/1.0, 0.x), the body runs to the close. */
		long length = length_text != NULL ? strtol(length_text, NULL, 10)
						  : (long)(len - (size_t)(head_end + 4 - ans));
		bool session = value_starts(cookie, cookie_len, ADMIN_SESSION_COOKIE "=") &&
			       cookie_len > strlen(ADMIN_SESSION_COOKIE "=") &&
			       cookie[strlen(ADMIN_SESSION_COOKIE "=")] != ';';
		if (code == 200) {
			oks++;
			protected += !public_page(type, type_len, length);
			if (value_starts(type, type_len, "text/plain; version=0.0.4"))
				CHECK(occurrences(req, req_len, "/metrics") +
				      occurrences(req, req_len, "%") > 0);
		}
		if (session) {
			CHECK(code == 303);
			protected++;
		}
		off = (size_t)(head_end + 4 - ans);
		bool next_at_once = len - off >= 5 && memcmp(ans + off, "HTTP/", 5) == 0;
		if (!next_at_once)
			off = length < 0 || (size_t)length > len - off ? len : off + (size_t)length;
	}
	/* The API's answer to what apply said, when it ran. */
	if (applier.calls > 0)
		CHECK(applied_status);
	if (oks > 0)
		CHECK(occurrences(req, req_len, "GET") + occurrences(req, req_len, "HEAD") > 0);
	/* No page, no session without the token. */
	if (endpoint == 0)
		CHECK(protected <= occurrences(req, req_len, TOKEN));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned runs;
	static char ans[ANSWER_MAX + 1];
	shown_ans = NULL;
	if (size < 1)
		return 0;
	static const int endpoints[4] = { 0, 1, 2, 0 };
	int endpoint = endpoints[data[0] & 3];
	bool slow_ok = (data[0] & 0x3c) == 0x3c;
	const uint8_t *req = data + 1;
	size_t req_len = size - 1;
	unsigned risks = endpoint == 0 ? wrong_token_risks(req, req_len) : 0;
	/* A second or more: see the top of the file. */
	if (risks > (slow_ok ? WRONG_TOKENS_MAX : 0))
		return -1;
	if (risks > 0 && slow_ms > SLOW_FREE_MS + (now_ms() - start_ms) / SLOW_SHARE)
		return -1;
	long started = now_ms();
	applier.result = (enum fuzz_apply_result)(data[0] >> 6);
	applier.calls = 0;

	int fd;
	if (endpoint < 2) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		CHECK(fd >= 0);
		struct sockaddr_un sun = { .sun_family = AF_UNIX };
		memcpy(sun.sun_path, sock_path[endpoint], strlen(sock_path[endpoint]) + 1);
		/* The backlog (64) is never full: one connection at a time, each closed. */
		CHECK(connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0);
	} else {
		fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		CHECK(fd >= 0);
		struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(tcp_port),
					   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		CHECK(connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0 || errno == EINPROGRESS);
	}

	long bound = CLOSE_BOUND_MS + (long)risks * WRONG_TOKEN_MS;
	long deadline = now_ms() + bound;
	size_t sent = 0, got = 0;
	bool writing = true;
	for (;;) {
		long left = deadline - now_ms();
		if (left <= 0) {
			fprintf(stderr, "the admin endpoint did not close the connection within "
				"%ld ms (%zu of %zu bytes written, %zu read)\n",
				bound, sent, req_len, got);
			abort();
		}
		struct pollfd pfd = { .fd = fd, .events = POLLIN | (writing ? POLLOUT : 0) };
		if (poll(&pfd, 1, (int)left) < 0) {
			CHECK(errno == EINTR);
			continue;
		}
		if (writing && (pfd.revents & (POLLOUT | POLLERR | POLLHUP))) {
			ssize_t n = req_len > sent ? send(fd, req + sent, req_len - sent, MSG_NOSIGNAL)
						   : 0;
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
	long took = now_ms() - started;
	/* A wrong token the prediction missed: counted, and kept out of the corpus. */
	bool missed = risks == 0 && took >= WRONG_TOKEN_MS * 3 / 4;
	if (risks > 0 || missed)
		slow_ms += took;
	check_answer(req, req_len, ans, got, endpoint);
	shown_ans = NULL;
	/* Nothing changed on disk: no candidate left, the file as it was. */
	CHECK(!fuzz_candidate_left(dir));
	char now_bytes[sizeof rules_bytes];
	long now_len = fuzz_read_file(applier.rules_file, now_bytes, sizeof now_bytes);
	CHECK(now_len == rules_len && memcmp(now_bytes, rules_bytes, (size_t)rules_len) == 0);

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
	return missed ? -1 : 0;
}
