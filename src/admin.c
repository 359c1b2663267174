/*
 * admin.c - the admin endpoint (see admin.h): socket, thread, HTTP, token.
 * What the pages say is metrics.c's; this file only gathers the numbers.
 */
#include "portrelay/admin.h"

#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "portrelay/log.h"
#include "portrelay/metrics.h"

/* The token file's first line, at most this long. */
#define ADMIN_TOKEN_MAX 512
/* A request is a line and a few headers: anything larger is not for us. */
#define ADMIN_MAX_HEADERS 8192
#define ADMIN_TIMEOUT_S 10

struct admin {
	struct worker_pool *pool;
	struct event_base *base;
	struct evhttp *http;
	int fd;                          /* the listening socket, until evhttp owns it */
	char token[ADMIN_TOKEN_MAX];     /* empty: no token asked */
	char unix_path[CONFIG_ORIGIN_MAX];   /* the Unix socket's file, removed at the end */
	size_t token_len;
	double start_time;               /* seconds since the epoch */
	int stop_pipe[2];                /* a byte here ends the thread's loop */
	struct event *stop_event;
	pthread_t thread;
	bool thread_started;
};

/* The first line of path, without its line end; -1 after logging. */
static int admin_read_token(struct admin *admin, const char *path)
{
	FILE *file = fopen(path, "re");
	if (file == NULL) {
		log_error(NULL, "admin.token_file %s: cannot read: %s", path, strerror(errno));
		return -1;
	}
	char line[ADMIN_TOKEN_MAX + 2];
	bool got = fgets(line, sizeof line, file) != NULL;
	fclose(file);
	size_t len = got ? strcspn(line, "\r\n") : 0;
	if (len == 0 || len >= ADMIN_TOKEN_MAX) {
		log_error(NULL, "admin.token_file %s: the first line must hold the token "
			  "(1-%d bytes)", path, ADMIN_TOKEN_MAX - 1);
		return -1;
	}
	memcpy(admin->token, line, len);
	admin->token[len] = '\0';
	admin->token_len = len;
	explicit_bzero(line, sizeof line);
	return 0;
}

/*
 * Whether the request's Authorization header is "Bearer TOKEN". The
 * comparison takes the same time wherever the first difference is, so that
 * the timing of a 401 tells nothing about the token.
 */
static bool admin_authorized(const struct admin *admin, struct evhttp_request *req)
{
	if (admin->token_len == 0)
		return true;
	const char *header = evhttp_find_header(evhttp_request_get_input_headers(req),
						"Authorization");
	static const char scheme[] = "Bearer ";
	if (header == NULL || strncasecmp(header, scheme, sizeof scheme - 1) != 0)
		return false;
	const char *given = header + sizeof scheme - 1;
	size_t given_len = strlen(given);
	unsigned char diff = given_len != admin->token_len;
	for (size_t i = 0; i < admin->token_len; i++)
		diff |= (unsigned char)admin->token[i] ^
			(unsigned char)(i < given_len ? given[i] : 0);
	return diff == 0;
}

/* Entries of /proc/self/fd but the directory's own; -1 if unreadable. */
static long admin_count_open_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	if (dir == NULL)
		return -1;
	long count = 0;
	struct dirent *entry;
	while ((entry = readdir(dir)) != NULL) {
		if (entry->d_name[0] != '.')
			count++;
	}
	closedir(dir);
	return count - 1;
}

/*
 * Reads every counter now, without stopping a worker, for the rules in
 * force (a reload may swap them meanwhile: the reference keeps these).
 * forwards: one per forward of rules, or NULL when out of memory.
 */
static struct metrics_forward *admin_snapshot(struct admin *admin, const struct ruleset *rules,
					      struct metrics_process *process)
{
	const struct config *cfg = &rules->cfg;
	memset(process, 0, sizeof *process);
	process->version = PORTRELAY_VERSION;
	process->start_time = admin->start_time;
	process->open_fds = admin_count_open_fds();
	worker_pool_reloads(admin->pool, &process->reloads_succeeded, &process->reloads_failed);
	worker_pool_process_counters(admin->pool, &process->counters);
	struct metrics_forward *forwards = calloc(cfg->forward_count + 1, sizeof *forwards);
	if (forwards == NULL)
		return NULL;
	for (size_t i = 0; i < cfg->forward_count; i++) {
		struct metrics_forward *f = &forwards[i];
		f->forward = &cfg->forwards[i];
		forward_stats_sum(f->forward->stats, &f->counters);
		f->udp_flows_active = atomic_load_explicit(&f->forward->stats->udp_flows_open,
							   memory_order_relaxed);
	}
	return forwards;
}

/*
 * Sends the reply; for HEAD, the headers GET would get (its Content-Length
 * included) and no body: a body after a HEAD reply would be read as the
 * answer to the connection's next request.
 */
static void admin_send(struct evhttp_request *req, int code, const char *reason,
		       struct evbuffer *body)
{
	if (evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
		evhttp_send_reply(req, code, reason, body);
		return;
	}
	char length[24];
	snprintf(length, sizeof length, "%zu", body != NULL ? evbuffer_get_length(body) : 0);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length", length);
	evhttp_send_reply(req, code, reason, NULL);
}

static void admin_reply_text(struct evhttp_request *req, int code, const char *reason,
			     const char *text)
{
	struct evbuffer *body = evbuffer_new();
	if (body != NULL)
		evbuffer_add_printf(body, "%s\n", text);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; charset=utf-8");
	admin_send(req, code, reason, body);
	if (body != NULL)
		evbuffer_free(body);
}

static void admin_on_request(struct evhttp_request *req, void *arg)
{
	struct admin *admin = arg;
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	if (!admin_authorized(admin, req)) {
		evhttp_add_header(headers, "WWW-Authenticate", "Bearer realm=\"portrelay\"");
		admin_reply_text(req, 401, "Unauthorized", "401 unauthorized");
		return;
	}
	enum evhttp_cmd_type method = evhttp_request_get_command(req);
	if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
		evhttp_add_header(headers, "Allow", "GET, HEAD");
		admin_reply_text(req, 405, "Method Not Allowed", "405 method not allowed");
		return;
	}
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	bool metrics = path != NULL && strcmp(path, "/metrics") == 0;
	bool status = path != NULL && strcmp(path, "/status") == 0;
	if (!metrics && !status) {
		admin_reply_text(req, 404, "Not Found", "404 not found: try /metrics or /status");
		return;
	}

	struct metrics_process process;
	struct ruleset *rules = worker_pool_rules(admin->pool);
	struct metrics_forward *forwards = admin_snapshot(admin, rules, &process);
	char *text = NULL;
	size_t len = 0;
	FILE *out = forwards != NULL ? open_memstream(&text, &len) : NULL;
	if (out == NULL) {
		free(forwards);
		ruleset_unref(rules);
		admin_reply_text(req, 500, "Internal Server Error", "500 out of memory");
		return;
	}
	if (metrics)
		metrics_write_prometheus(out, &process, forwards, rules->cfg.forward_count);
	else
		metrics_write_json(out, &process, forwards, rules->cfg.forward_count);
	bool failed = ferror(out) != 0;
	fclose(out);
	free(forwards);
	ruleset_unref(rules);
	struct evbuffer *body = evbuffer_new();
	if (failed || body == NULL || evbuffer_add(body, text, len) < 0) {
		free(text);
		if (body != NULL)
			evbuffer_free(body);
		admin_reply_text(req, 500, "Internal Server Error", "500 out of memory");
		return;
	}
	free(text);
	evhttp_add_header(headers, "Content-Type",
			  metrics ? "text/plain; version=0.0.4; charset=utf-8"
				  : "application/json");
	evhttp_add_header(headers, "Cache-Control", "no-store");
	admin_send(req, 200, "OK", body);
	evbuffer_free(body);
}

/* A Unix socket at path: a stale socket file is replaced, any other file is not. */
static int admin_listen_unix(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	size_t path_len = strlen(path);
	if (path_len >= sizeof sun.sun_path) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(sun.sun_path, path, path_len + 1);
	struct stat st = { .st_mode = 0 };
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			errno = EEXIST;
			return -1;
		}
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (S_ISSOCK(st.st_mode) && lstat(path, &st) == 0) {
		/* Someone answers there: not a stale file, leave it. */
		if (connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0) {
			close(fd);
			errno = EADDRINUSE;
			return -1;
		}
		close(fd);
		unlink(path);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -1;
	} else if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
		close(fd);
		return -1;
	}
	/* Connecting takes write permission on the file: owner and group only. */
	mode_t old_mask = umask(0117);
	int rc = bind(fd, (struct sockaddr *)&sun, sizeof sun);
	umask(old_mask);
	if (rc < 0 || listen(fd, 64) < 0) {
		int error = errno;
		close(fd);
		errno = error;
		return -1;
	}
	return fd;
}

static void admin_on_stop(evutil_socket_t fd, short what, void *arg)
{
	struct admin *admin = arg;
	char byte;
	(void)what;
	while (read(fd, &byte, 1) > 0)
		;
	event_base_loopbreak(admin->base);
}

static void *admin_thread(void *arg)
{
	struct admin *admin = arg;
	event_base_dispatch(admin->base);
	return NULL;
}

/* Starts the thread with the process's signals blocked: they belong to the main thread. */
static int admin_start_thread(struct admin *admin)
{
	sigset_t block, previous;
	sigfillset(&block);
	pthread_sigmask(SIG_BLOCK, &block, &previous);
	int rc = pthread_create(&admin->thread, NULL, admin_thread, admin);
	pthread_sigmask(SIG_SETMASK, &previous, NULL);
	if (rc != 0) {
		log_error(NULL, "admin: cannot start its thread: %s", strerror(rc));
		return -1;
	}
	admin->thread_started = true;
	return 0;
}

struct admin *admin_open(const struct config *cfg, struct worker_pool *pool)
{
	struct admin *admin = calloc(1, sizeof *admin);
	if (admin == NULL)
		return NULL;
	admin->pool = pool;
	admin->fd = -1;
	admin->stop_pipe[0] = admin->stop_pipe[1] = -1;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	admin->start_time = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
	if (cfg->admin_token_file[0] != '\0' && admin_read_token(admin, cfg->admin_token_file) < 0)
		goto fail;

	if (cfg->admin_unix)
		snprintf(admin->unix_path, sizeof admin->unix_path, "%s", cfg->admin_listen);
	admin->fd = cfg->admin_unix ? admin_listen_unix(cfg->admin_listen)
				    : net_listen_tcp(&cfg->admin_addr, 64, NET_EXCLUSIVE);
	if (admin->fd < 0) {
		log_error(NULL, "admin: cannot listen on %s: %s", cfg->admin_listen,
			  strerror(errno));
		goto fail;
	}
	admin->base = event_base_new();
	admin->http = admin->base != NULL ? evhttp_new(admin->base) : NULL;
	if (admin->http == NULL || pipe2(admin->stop_pipe, O_NONBLOCK | O_CLOEXEC) < 0)
		goto fail_quietly;
	admin->stop_event = event_new(admin->base, admin->stop_pipe[0], EV_READ | EV_PERSIST,
				      admin_on_stop, admin);
	if (admin->stop_event == NULL || event_add(admin->stop_event, NULL) < 0)
		goto fail_quietly;
	evhttp_set_max_headers_size(admin->http, ADMIN_MAX_HEADERS);
	evhttp_set_max_body_size(admin->http, 0);
	evhttp_set_timeout(admin->http, ADMIN_TIMEOUT_S);
	evhttp_set_allowed_methods(admin->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD |
						EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
						EVHTTP_REQ_DELETE);
	evhttp_set_gencb(admin->http, admin_on_request, admin);
	if (evhttp_accept_socket_with_handle(admin->http, admin->fd) == NULL)
		goto fail_quietly;
	admin->fd = -1;   /* evhttp closes it */
	if (admin_start_thread(admin) < 0)
		goto fail;
	log_info(NULL, "admin: serving /metrics and /status on %s%s", cfg->admin_listen,
		 admin->token_len != 0 ? " (bearer token required)" : "");
	return admin;
fail_quietly:
	log_error(NULL, "admin: cannot set up the HTTP server on %s", cfg->admin_listen);
fail:
	admin_free(admin);
	return NULL;
}

void admin_free(struct admin *admin)
{
	if (admin == NULL)
		return;
	if (admin->thread_started) {
		char byte = 0;
		if (write(admin->stop_pipe[1], &byte, 1) < 0)
			log_warn(NULL, "admin: cannot stop its thread: %s", strerror(errno));
		pthread_join(admin->thread, NULL);
	}
	if (admin->http != NULL)
		evhttp_free(admin->http);
	if (admin->fd >= 0)
		close(admin->fd);
	if (admin->unix_path[0] != '\0' && (admin->http != NULL || admin->fd >= 0))
		unlink(admin->unix_path);
	if (admin->stop_event != NULL)
		event_free(admin->stop_event);
	if (admin->stop_pipe[0] >= 0) {
		close(admin->stop_pipe[0]);
		close(admin->stop_pipe[1]);
	}
	if (admin->base != NULL)
		event_base_free(admin->base);
	explicit_bzero(admin->token, sizeof admin->token);
	free(admin);
}
