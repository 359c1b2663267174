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
#include <jansson.h>
#include <netinet/in.h>
#include <strings.h>
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

#include "portrelay/admin_auth.h"
#include "portrelay/api.h"
#include "portrelay/api_rule.h"
#include "portrelay/log.h"
#include "portrelay/metrics.h"
#include "portrelay/www.h"

/* A request is a line and a few headers: anything larger is not for us. */
#define ADMIN_MAX_HEADERS 8192
#define ADMIN_TIMEOUT_S 10
/* Wrong-token answers waiting at once; more are answered 429 at once. */
#define ADMIN_DELAYED_MAX 64

/* A wrong token's answer, sent after ADMIN_WRONG_TOKEN_DELAY. */
struct admin_delayed {
	struct admin *admin;
	struct evhttp_request *req;
	struct evhttp_connection *conn;
	struct event *timer;
	bool login;                      /* the login page, else a JSON 401 */
	struct admin_delayed *next;
};

struct admin {
	struct api api;                  /* api.pool: the workers, their rules and counters */
	struct event_base *base;
	struct evhttp *http;
	int fd;                          /* the listening socket, until evhttp owns it */
	struct admin_auth auth;
	char unix_path[CONFIG_ORIGIN_MAX];   /* the Unix socket's file, removed at the end */
	double start_time;               /* seconds since the epoch */
	int stop_pipe[2];                /* a byte here ends the thread's loop */
	struct event *stop_event;
	pthread_t thread;
	bool thread_started;
	struct admin_delayed *delayed;   /* answers waiting */
	unsigned delayed_count;
	double refused_logged_at;        /* monotonic: the last "refused unchecked" line */
};

static double admin_now(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
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
	worker_pool_reloads(admin->api.pool, &process->reloads_succeeded,
			    &process->reloads_failed);
	worker_pool_process_counters(admin->api.pool, &process->counters);
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

static void admin_send_bytes(struct evhttp_request *req, int code, const char *reason,
			     const char *type, const void *data, size_t len)
{
	struct evbuffer *body = evbuffer_new();
	if (body == NULL || evbuffer_add(body, data, len) < 0) {
		if (body != NULL)
			evbuffer_free(body);
		evhttp_send_error(req, 500, "Internal Server Error");
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
	admin_send(req, code, reason, body);
	evbuffer_free(body);
}

static void admin_reply_text(struct evhttp_request *req, int code, const char *reason,
			     const char *text)
{
	char line[512];
	int len = snprintf(line, sizeof line, "%s\n", text);
	admin_send_bytes(req, code, reason, "text/plain; charset=utf-8", line,
			 len < (int)sizeof line ? (size_t)len : sizeof line - 1);
}

static const char *admin_reason(int code)
{
	switch (code) {
	case 200: return "OK";
	case 201: return "Created";
	case 303: return "See Other";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Content Too Large";
	case 429: return "Too Many Requests";
	case 503: return "Service Unavailable";
	default: return code < 500 ? "Error" : "Internal Server Error";
	}
}

/* Sends a JSON value (consumed). */
static void admin_reply_json(struct evhttp_request *req, int code, json_t *value)
{
	char *text = value != NULL ? json_dumps(value, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
	json_decref(value);
	if (text == NULL) {
		evhttp_send_error(req, 500, "Internal Server Error");
		return;
	}
	size_t len = strlen(text);
	struct evbuffer *body = evbuffer_new();
	if (body == NULL || evbuffer_add(body, text, len) < 0 || evbuffer_add(body, "\n", 1) < 0) {
		if (body != NULL)
			evbuffer_free(body);
		free(text);
		evhttp_send_error(req, 500, "Internal Server Error");
		return;
	}
	free(text);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	admin_send(req, code, admin_reason(code), body);
	evbuffer_free(body);
}

static void admin_reply_error(struct evhttp_request *req, int code, const char *message)
{
	admin_reply_json(req, code, json_pack("{s:s}", "error", message));
}

/*
 * Every answer: no script but the page's own files, no framing, no type
 * guessing, no referrer, nothing cached.
 */
static void admin_security_headers(struct evhttp_request *req)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	evhttp_add_header(headers, "Content-Security-Policy",
			  "default-src 'none'; script-src 'self'; style-src 'self'; "
			  "img-src 'self'; connect-src 'self'; form-action 'self'; "
			  "frame-ancestors 'none'; base-uri 'none'");
	evhttp_add_header(headers, "X-Frame-Options", "DENY");
	evhttp_add_header(headers, "X-Content-Type-Options", "nosniff");
	/*
	 * same-origin, not no-referrer: under no-referrer a browser sends
	 * "Origin: null" with the page's own form posts, which the CSRF check
	 * must refuse.
	 */
	evhttp_add_header(headers, "Referrer-Policy", "same-origin");
	evhttp_add_header(headers, "Cache-Control", "no-store");
}

/* "ADDR:PORT" of the request's client, for the log. */
static void admin_peer(struct evhttp_request *req, char *buf, size_t len)
{
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	const char *address = NULL;
	ev_uint16_t port = 0;
	if (conn != NULL)
		evhttp_connection_get_peer(conn, (char **)&address, &port);
	if (address == NULL || address[0] == '\0')
		snprintf(buf, len, "a local client");
	else
		snprintf(buf, len, "%s:%u", address, (unsigned)port);
}

/* The page of a file built into the binary (www.h). */
static void admin_send_file(struct evhttp_request *req, int code, const char *name)
{
	const struct www_file *file = www_find(name);
	if (file == NULL) {
		admin_reply_text(req, 404, "Not Found", "404 not found");
		return;
	}
	admin_send_bytes(req, code, admin_reason(code), file->content_type, file->data,
			 file->size);
}

/* The login page, with a message where its <!--error--> marker is. */
static void admin_send_login(struct evhttp_request *req, int code, const char *message)
{
	static const char marker[] = "<!--error-->";
	const struct www_file *file = www_find("login.html");
	const char *page = file != NULL ? (const char *)file->data : NULL;
	const char *at = page != NULL ? strstr(page, marker) : NULL;
	if (at == NULL || message == NULL) {
		admin_send_file(req, code, "login.html");
		return;
	}
	struct evbuffer *body = evbuffer_new();
	if (body == NULL) {
		evhttp_send_error(req, 500, "Internal Server Error");
		return;
	}
	evbuffer_add(body, page, (size_t)(at - page));
	evbuffer_add_printf(body, "<p id=\"login-error\" class=\"error\" role=\"alert\">%s</p>",
			    message);
	evbuffer_add(body, at + sizeof marker - 1, file->size - (size_t)(at - page) -
		     (sizeof marker - 1));
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  file->content_type);
	admin_send(req, code, admin_reason(code), body);
	evbuffer_free(body);
}

static void admin_delayed_free(struct admin_delayed *delayed)
{
	struct admin *admin = delayed->admin;
	for (struct admin_delayed **p = &admin->delayed; *p != NULL; p = &(*p)->next) {
		if (*p == delayed) {
			*p = delayed->next;
			break;
		}
	}
	admin->delayed_count--;
	event_free(delayed->timer);
	free(delayed);
}

/* The client went away before its answer: nothing to send. */
static void admin_delayed_on_close(struct evhttp_connection *conn, void *arg)
{
	struct admin_delayed *delayed = arg;
	(void)conn;
	admin_delayed_free(delayed);
}

static void admin_delayed_on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct admin_delayed *delayed = arg;
	struct evhttp_request *req = delayed->req;
	bool login = delayed->login;
	(void)fd, (void)what;
	evhttp_connection_set_closecb(delayed->conn, NULL, NULL);
	admin_delayed_free(delayed);
	if (login) {
		admin_send_login(req, 401, "Wrong token.");
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
			  "Bearer realm=\"portrelay\"");
	admin_reply_error(req, 401, "wrong token");
}

/*
 * A wrong token: logged, and answered only after ADMIN_WRONG_TOKEN_DELAY,
 * without holding up anyone else's request.
 */
static void admin_wrong_token(struct admin *admin, struct evhttp_request *req, bool login)
{
	char peer[INET6_ADDRSTRLEN + 16];
	admin_peer(req, peer, sizeof peer);
	log_warn(NULL, "admin: wrong token from %s (%s; %llu so far); answered after %d s",
		 peer, login ? "login form" : "bearer header",
		 (unsigned long long)admin->auth.wrong_tokens, ADMIN_WRONG_TOKEN_DELAY);
	struct admin_delayed *delayed = admin->delayed_count < ADMIN_DELAYED_MAX
						? calloc(1, sizeof *delayed) : NULL;
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	if (delayed != NULL)
		delayed->timer = evtimer_new(admin->base, admin_delayed_on_timer, delayed);
	if (delayed == NULL || delayed->timer == NULL || conn == NULL) {
		free(delayed);
		admin_reply_error(req, 429, "too many wrong tokens: try again later");
		return;
	}
	delayed->admin = admin;
	delayed->req = req;
	delayed->conn = conn;
	delayed->login = login;
	delayed->next = admin->delayed;
	admin->delayed = delayed;
	admin->delayed_count++;
	evhttp_connection_set_closecb(conn, admin_delayed_on_close, delayed);
	struct timeval wait = { .tv_sec = ADMIN_WRONG_TOKEN_DELAY };
	evtimer_add(delayed->timer, &wait);
}

/* Tokens refused unchecked while the guessing credit is spent: logged once a second. */
static void admin_not_checked(struct admin *admin, struct evhttp_request *req)
{
	double now = admin_now();
	if (now - admin->refused_logged_at >= 1.0) {
		admin->refused_logged_at = now;
		log_warn(NULL, "admin: too many wrong tokens: refusing every token for now "
			 "(%llu refused unchecked so far)",
			 (unsigned long long)admin->auth.refused_unchecked);
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
	admin_reply_error(req, 429, "too many wrong tokens: try again later");
}

enum admin_access {
	ADMIN_ACCESS_GRANTED,
	ADMIN_ACCESS_NONE,      /* no credentials: the login page, or 401 */
	ADMIN_ACCESS_ANSWERED,  /* a wrong or unchecked token: already answered */
};

/* Bearer header, else session cookie; no token configured: everyone. */
static enum admin_access admin_access(struct admin *admin, struct evhttp_request *req)
{
	if (!admin_auth_required(&admin->auth))
		return ADMIN_ACCESS_GRANTED;
	struct evkeyvalq *headers = evhttp_request_get_input_headers(req);
	const char *authorization = evhttp_find_header(headers, "Authorization");
	static const char scheme[] = "Bearer ";
	if (authorization != NULL) {
		if (strncasecmp(authorization, scheme, sizeof scheme - 1) != 0)
			return ADMIN_ACCESS_NONE;
		switch (admin_auth_check_token(&admin->auth, authorization + sizeof scheme - 1,
					       admin_now())) {
		case ADMIN_TOKEN_RIGHT:
			return ADMIN_ACCESS_GRANTED;
		case ADMIN_TOKEN_WRONG:
			admin_wrong_token(admin, req, false);
			return ADMIN_ACCESS_ANSWERED;
		case ADMIN_TOKEN_NOT_CHECKED:
		default:
			admin_not_checked(admin, req);
			return ADMIN_ACCESS_ANSWERED;
		}
	}
	if (admin_auth_session_valid(&admin->auth, evhttp_find_header(headers, "Cookie"),
				     admin_now()))
		return ADMIN_ACCESS_GRANTED;
	return ADMIN_ACCESS_NONE;
}

/* The request's body as a string (NUL added), or NULL when empty. */
static char *admin_body(struct evhttp_request *req, size_t *len)
{
	struct evbuffer *input = evhttp_request_get_input_buffer(req);
	*len = evbuffer_get_length(input);
	if (*len == 0)
		return NULL;
	char *text = malloc(*len + 1);
	if (text == NULL)
		return NULL;
	evbuffer_copyout(input, text, *len);
	text[*len] = '\0';
	return text;
}

static void admin_redirect_home(struct evhttp_request *req)
{
	evhttp_add_header(evhttp_request_get_output_headers(req), "Location", "/");
	admin_reply_text(req, 303, "See Other", "see /");
}

/* POST /login: the form's token, for a session cookie. */
static void admin_login(struct admin *admin, struct evhttp_request *req)
{
	if (!admin_auth_required(&admin->auth)) {
		admin_redirect_home(req);
		return;
	}
	size_t len;
	char *body = admin_body(req, &len);
	struct evkeyvalq form;
	TAILQ_INIT(&form);
	const char *token = NULL;
	if (body != NULL && evhttp_parse_query_str(body, &form) == 0)
		token = evhttp_find_header(&form, "token");
	if (token == NULL || token[0] == '\0') {
		admin_send_login(req, 400, "Enter the admin token.");
	} else {
		switch (admin_auth_check_token(&admin->auth, token, admin_now())) {
		case ADMIN_TOKEN_RIGHT: {
			char cookie[256];
			if (admin_auth_session_open(&admin->auth, admin_now(), cookie,
						    sizeof cookie) < 0) {
				admin_reply_text(req, 500, "Internal Server Error",
						 "500 no random bytes for a session");
				break;
			}
			char peer[INET6_ADDRSTRLEN + 16];
			admin_peer(req, peer, sizeof peer);
			log_info(NULL, "admin: %s logged in", peer);
			evhttp_add_header(evhttp_request_get_output_headers(req), "Set-Cookie",
					  cookie);
			explicit_bzero(cookie, sizeof cookie);
			admin_redirect_home(req);
			break;
		}
		case ADMIN_TOKEN_WRONG:
			admin_wrong_token(admin, req, true);
			break;
		case ADMIN_TOKEN_NOT_CHECKED:
		default:
			admin_not_checked(admin, req);
			break;
		}
	}
	evhttp_clear_headers(&form);
	if (body != NULL) {
		explicit_bzero(body, len);
		free(body);
	}
}

static void admin_logout(struct admin *admin, struct evhttp_request *req)
{
	const char *cookie = evhttp_find_header(evhttp_request_get_input_headers(req), "Cookie");
	evhttp_add_header(evhttp_request_get_output_headers(req), "Set-Cookie",
			  admin_auth_session_close(&admin->auth, cookie));
	admin_redirect_home(req);
}

/* /metrics and /status. */
static void admin_send_metrics(struct admin *admin, struct evhttp_request *req, bool metrics)
{
	struct metrics_process process;
	struct ruleset *rules = worker_pool_rules(admin->api.pool);
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
	if (failed)
		admin_reply_text(req, 500, "Internal Server Error", "500 out of memory");
	else
		admin_send_bytes(req, 200, "OK",
				 metrics ? "text/plain; version=0.0.4; charset=utf-8"
					 : "application/json", text, len);
	free(text);
}

static enum api_method admin_api_method(enum evhttp_cmd_type method)
{
	switch (method) {
	case EVHTTP_REQ_GET: return API_GET;
	case EVHTTP_REQ_HEAD: return API_HEAD;
	case EVHTTP_REQ_POST: return API_POST;
	case EVHTTP_REQ_PUT: return API_PUT;
	case EVHTTP_REQ_DELETE: return API_DELETE;
	default: return API_OTHER;
	}
}

static const char *admin_method_name(enum evhttp_cmd_type method)
{
	switch (method) {
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_PATCH: return "PATCH";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	default: return "GET";
	}
}

/*
 * Every change asked through the API, in the log: who, what, and how it
 * ended (the path as sent, percent-encoded, so one line whatever the name).
 */
static void admin_log_change(struct evhttp_request *req, const char *path,
			     const struct api_response *response)
{
	char peer[INET6_ADDRSTRLEN + 16], shown[256];
	size_t len = 0;
	admin_peer(req, peer, sizeof peer);
	for (const char *p = path; *p != '\0' && len + 1 < sizeof shown; p++)
		shown[len++] = (unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f ? '?' : *p;
	shown[len] = '\0';
	const char *error = json_string_value(json_object_get(response->body, "error"));
	if (response->status < 400)
		log_info(NULL, "admin: %s %s %s: %d", peer,
			 admin_method_name(evhttp_request_get_command(req)), shown, response->status);
	else
		log_warn(NULL, "admin: %s %s %s: %d %s", peer,
			 admin_method_name(evhttp_request_get_command(req)), shown, response->status,
			 error != NULL ? error : "");
}

static void admin_serve_api(struct admin *admin, struct evhttp_request *req, const char *path)
{
	if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > API_RULE_BODY_MAX) {
		admin_reply_error(req, 413, "the body is too large: a rule takes well under "
				  "64 KiB");
		return;
	}
	size_t len = 0;
	char *body = admin_body(req, &len);
	struct api_response response;
	api_handle(&admin->api, admin_api_method(evhttp_request_get_command(req)), path, body,
		   len, &response);
	free(body);
	enum evhttp_cmd_type method = evhttp_request_get_command(req);
	if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD)
		admin_log_change(req, path, &response);
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	if (response.location[0] != '\0')
		evhttp_add_header(headers, "Location", response.location);
	if (response.allow != NULL)
		evhttp_add_header(headers, "Allow", response.allow);
	admin_reply_json(req, response.status, response.body);
}

static bool admin_is(const char *path, const char *want)
{
	return strcmp(path, want) == 0;
}

static void admin_on_request(struct evhttp_request *req, void *arg)
{
	struct admin *admin = arg;
	struct evkeyvalq *input = evhttp_request_get_input_headers(req);
	enum evhttp_cmd_type method = evhttp_request_get_command(req);
	bool reads = method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	const char *host = evhttp_find_header(input, "Host");

	admin_security_headers(req);
	if (path == NULL)
		path = "";
	/*
	 * DNS rebinding: a web page under a name made to resolve to 127.0.0.1
	 * must not drive a token-less endpoint. A Unix socket is out of a web
	 * page's reach; /metrics and /status, read-only counters, stay open to
	 * any scraper as they always were.
	 */
	bool scrape = reads && (admin_is(path, "/metrics") || admin_is(path, "/status"));
	if (!admin_auth_required(&admin->auth) && admin->unix_path[0] == '\0' && !scrape &&
	    host != NULL && !admin_auth_host_is_address(host)) {
		admin_reply_error(req, 403, "this endpoint answers only to an IP address or "
				  "localhost in the Host header");
		return;
	}
	if (!reads && !admin_auth_same_origin(evhttp_find_header(input, "Origin"),
					      evhttp_find_header(input, "Sec-Fetch-Site"), host)) {
		admin_reply_error(req, 403, "refused: a request from another origin (cross-site "
				  "request forgery)");
		return;
	}
	/* Public: what the login page itself needs. */
	if (reads && (admin_is(path, "/style.css") || admin_is(path, "/favicon.svg"))) {
		admin_send_file(req, 200, path + 1);
		return;
	}
	/* Browsers ask for it on pages without an icon of their own (a JSON answer). */
	if (reads && admin_is(path, "/favicon.ico")) {
		admin_send_file(req, 200, "favicon.svg");
		return;
	}
	if (admin_is(path, "/login") || admin_is(path, "/logout")) {
		if (reads)
			admin_redirect_home(req);
		else if (method != EVHTTP_REQ_POST)
			admin_reply_error(req, 405, "use POST");
		else if (admin_is(path, "/login"))
			admin_login(admin, req);
		else
			admin_logout(admin, req);
		return;
	}

	enum admin_access access = admin_access(admin, req);
	if (access == ADMIN_ACCESS_ANSWERED)
		return;
	bool page = admin_is(path, "/") || admin_is(path, "/index.html");
	if (access == ADMIN_ACCESS_NONE) {
		if (page && reads) {
			admin_send_login(req, 200, NULL);
			return;
		}
		evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
				  "Bearer realm=\"portrelay\"");
		admin_reply_error(req, 401, "log in first, or send Authorization: Bearer TOKEN");
		return;
	}
	if (strncmp(path, "/api/", 5) == 0 || admin_is(path, "/api")) {
		admin_serve_api(admin, req, path);
		return;
	}
	bool known = page || admin_is(path, "/app.js") || admin_is(path, "/metrics") ||
		     admin_is(path, "/status");
	if (known && !reads) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		admin_reply_text(req, 405, "Method Not Allowed", "405 method not allowed");
	} else if (page) {
		admin_send_file(req, 200, "index.html");
	} else if (admin_is(path, "/app.js")) {
		admin_send_file(req, 200, "app.js");
	} else if (admin_is(path, "/metrics") || admin_is(path, "/status")) {
		admin_send_metrics(admin, req, admin_is(path, "/metrics"));
	} else {
		admin_reply_text(req, 404, "Not Found",
				 "404 not found: try /, /metrics, /status or /api/forwards");
	}
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

struct admin *admin_open(const struct config *cfg, struct worker_pool *pool,
			 int (*apply)(void *arg, const char *candidate, char *err, size_t err_len),
			 void *apply_arg)
{
	struct admin *admin = calloc(1, sizeof *admin);
	if (admin == NULL)
		return NULL;
	admin->api.pool = pool;
	admin->api.apply = apply;
	admin->api.apply_arg = apply_arg;
	admin->fd = -1;
	admin->stop_pipe[0] = admin->stop_pipe[1] = -1;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	admin->start_time = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
	if (cfg->admin_token_file[0] != '\0' &&
	    admin_auth_read_token(&admin->auth, cfg->admin_token_file) < 0)
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
	/*
	 * A rule is well under a kilobyte: the API refuses bodies over
	 * API_RULE_BODY_MAX (413, in JSON); evhttp, bodies four times that.
	 */
	evhttp_set_max_body_size(admin->http, 4 * API_RULE_BODY_MAX);
	evhttp_set_timeout(admin->http, ADMIN_TIMEOUT_S);
	/* The others too, so that they get a 405 naming the allowed ones, not a 501. */
	evhttp_set_allowed_methods(admin->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD |
						EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
						EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
						EVHTTP_REQ_OPTIONS);
	evhttp_set_gencb(admin->http, admin_on_request, admin);
	if (evhttp_accept_socket_with_handle(admin->http, admin->fd) == NULL)
		goto fail_quietly;
	admin->fd = -1;   /* evhttp closes it */
	if (admin_start_thread(admin) < 0)
		goto fail;
	log_info(NULL, "admin: serving the Port Forwarding page, /api/forwards, /metrics and "
		 "/status on %s%s", cfg->admin_listen,
		 admin_auth_required(&admin->auth) ? " (admin token required)" : "");
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
	admin_auth_clear(&admin->auth);
	free(admin);
}
