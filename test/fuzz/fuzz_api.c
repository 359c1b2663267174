/*
 * fuzz_api.c - libFuzzer target for the Port Forwarding API's request
 * handling (api.h): api_handle called directly, without HTTP (fuzz_admin
 * covers the way there), on a real configuration, ruleset and worker pool.
 *
 * LLVMFuzzerInitialize builds what src/main.c's run() builds, as fuzz_admin
 * does: in a temporary directory (on /dev/shm, so that the API's fsync
 * costs nothing), a configuration file with three read-only forwards (on
 * ports 47101 and 47102 when free, which the seeds' overlaps name) and
 * admin.rules_file naming a rules file with two API rules ("api one",
 * enabled; "api/two%", disabled, a port range, a host name), read by
 * config_load_sources; a ruleset; a one-worker pool (its sockets bound, its
 * loop never run). The API's apply function is fuzz_apply
 * (fuzz_api_common.h): it checks the candidate file and applies nothing, so
 * the running rules and the rules file stay as set up, and every input
 * starts from the same state.
 *
 * Input: byte 0 = MMM (bits 0-2) the method: GET HEAD POST PUT DELETE
 * OTHER POST PUT (writes weigh more: they go deeper); KKK (bits 3-5) the
 * path:
 *   0 /api/forwards                        1 /api/forwards/api%20one
 *   2 /api/forwards/api%20one/disable      3 /api/forwards/api%2Ftwo%25/enable
 *   4 /api/forwards/web (read-only)        5 /api/forwards/ + LINE percent-encoded
 *   6 /api/forwards + LINE as it is        7 LINE as it is (any path)
 * where LINE is the input after byte 0 up to its first newline (kinds 5-7
 * only; a NUL there is no path evhttp would hand over: skipped); and AA
 * (bits 6-7) what apply answers: config refused (409), a port not bound
 * (409), commit failed (500), stopping (503). The rest is the body.
 *
 * Checks beyond the sanitizers:
 *  - the status is one the contract documents, and the one it must be: a
 *    200 only for GET or HEAD (nothing is ever applied), never 201; when
 *    apply ran, exactly once, the status its result maps to (with field
 *    external_port for a port not bound, but for a DELETE); 500 and 503
 *    only then;
 *  - the body is a JSON object, or an array for a 200 on the collection
 *    (one rule per running forward); an error has a string "error" and, if
 *    any, a string "field" naming a field of the file or a key of the body;
 *    a 405 says what is allowed;
 *  - the candidate the API wrote reads back through the file's reader and
 *    completes (fuzz_apply), holds one rule more for a POST, one less for a
 *    DELETE; a POST's or PUT's rule there is the same rule (forward_same_rule)
 *    as the body read by api_rule_fill_group and config_read_forward; an
 *    enable or disable changes that field only; every other rule is as it was;
 *  - afterwards no candidate (rules.conf.new-*) is left, and the rules file
 *    holds the same bytes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "portrelay/api.h"
#include "portrelay/api_rule.h"
#include "portrelay/config.h"
#include "portrelay/log.h"
#include "portrelay/net.h"
#include "portrelay/ruleset.h"
#include "portrelay/worker.h"

#include "fuzz_api_common.h"

/* The ports of "web", "ftp" and "api one" when free (make_seeds.py knows them). */
#define PORT_WEB 47101
#define PORT_FTP 47102
#define PORT_ONE 47103

static char dir[96];
static struct worker_pool *pool;
static struct fuzz_apply applier;
static struct api api;
static struct config ref;              /* the configuration as set up, finished */
static char rules_bytes[8192];         /* the rules file as set up */
static long rules_len;

static const char *const rule_fields[] = {
	"name", "protocol", "external_address", "external_port", "internal_ip",
	"internal_port", "enabled", "ftp", "ftp_data_ports", "proxy_protocol", "source",
	"access_log", "max_connections", "max_connections_per_source",
	"max_flows_per_source", "allow", "deny", "freebind", "udp_idle_timeout",
};

/* The request being handled, for the checks of the candidate. */
static struct {
	enum api_method method;
	int kind;
	bool known;                  /* the harness knows what the path names: */
	bool collection;             /* /api/forwards */
	bool named;                  /* a rule: name */
	char name[256];
	int action;                  /* 0, 1 enable, 2 disable */
	const char *body;
	size_t body_len;
} req;

static void die(const char *what)
{
	fuzz_die("fuzz_api", what);
}

static void write_file(const char *path, const char *text)
{
	fuzz_write_file("fuzz_api", path, text);
}

static void cleanup(void)
{
	worker_pool_free(pool);
	config_free(&ref);
	fuzz_remove_dir(dir);
}

/* A forward of cfg by name: from the rules file (api) or any; NULL if none. */
static const struct forward *find(const struct config *cfg, const char *name, bool api_only)
{
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *f = &cfg->forwards[i];
		if ((!api_only || f->from_rules_file) && strcmp(f->name, name) == 0)
			return f;
	}
	return NULL;
}

static size_t api_rules(const struct config *cfg)
{
	size_t n = 0;
	for (size_t i = 0; i < cfg->forward_count; i++)
		n += cfg->forwards[i].from_rules_file;
	return n;
}

/*
 * forward_same_rule, whether or not each was resolved: a disabled forward
 * is not (its host need not exist), so both get their internal address the
 * same way first (the resolver is fuzz_getaddrinfo's table: the same answer
 * every time).
 */
static bool same_rule(const struct forward *a, const struct forward *b)
{
	struct forward x = *a, y = *b;
	char why[256];
	if (net_addr_family(&x.internal_addr) == 0)
		net_addr_resolve(x.internal_host, 0, &x.internal_addr, why, sizeof why);
	if (net_addr_family(&y.internal_addr) == 0)
		net_addr_resolve(y.internal_host, 0, &y.internal_addr, why, sizeof why);
	/* Neither resolves (disabled, a name of nowhere): the host names compare. */
	if (net_addr_family(&x.internal_addr) == 0 && net_addr_family(&y.internal_addr) == 0) {
		net_addr_parse_ip("0.0.0.0", 0, &x.internal_addr);
		net_addr_parse_ip("0.0.0.0", 0, &y.internal_addr);
	}
	return forward_same_rule(&x, &y);
}

static void show_forward(const char *what, const struct forward *f)
{
	char buf[1024];
	fprintf(stderr, "%s: \"%s\" %s enabled=%d host=%s idle=%g ftp_data=%u-%u max=%u/%u/%u "
		"log=%d freebind=%d acl=%u proxy=%d source=%d\n", what, f->name,
		forward_describe(f, buf, sizeof buf), f->enabled, f->internal_host,
		f->udp_idle_timeout, f->ftp_data_port_first, f->ftp_data_port_last,
		f->max_connections, f->max_connections_per_source, f->max_flows_per_source,
		f->access_log, f->freebind, f->acl.count, (int)f->proxy_protocol,
		f->source_client);
}

/* The rule the body describes, read as the API reads it; false when it is none. */
static bool expected_rule(const struct config *cfg, struct forward *out)
{
	json_error_t jerr;
	json_t *rule = json_loadb(req.body != NULL ? req.body : "", req.body_len,
				  JSON_REJECT_DUPLICATES, &jerr);
	bool ok = false;
	if (rule == NULL || !json_is_object(rule))
		goto out;
	if (req.method == API_PUT && json_object_get(rule, "name") == NULL)
		json_object_set_new(rule, "name", json_string(req.name));
	config_t lc;
	config_init(&lc);
	config_setting_t *group = config_setting_add(config_root_setting(&lc), "rule",
						     CONFIG_TYPE_GROUP);
	struct api_rule_error error;
	char err[1024], field[CONFIG_NAME_MAX];
	ok = group != NULL && api_rule_fill_group(rule, group, &error) == 0 &&
	     config_read_forward(cfg, group, "expected", out, err, sizeof err, field,
				 sizeof field) == 0;
	config_destroy(&lc);
out:
	json_decref(rule);
	return ok;
}

/* fuzz_apply's check: the candidate holds the change the request asked, and only it. */
static void check_candidate(const struct config *cfg, void *arg)
{
	(void)arg;
	size_t before = api_rules(&ref), after = api_rules(cfg);
	bool collection = req.collection;
	const char *changed = req.named ? req.name : NULL;   /* its name before */
	const char *renamed = NULL;                           /* its name after */
	struct forward exp;

	if (!req.known) {
		/* A path of the input's: which rule it names is the API's to find out. */
		if (req.method == API_POST)
			CHECK(after == before + 1 || after == before);
		else if (req.method == API_DELETE)
			CHECK(after + 1 == before);
		else
			CHECK(after == before);
		return;
	}
	if (req.method == API_POST && collection)
		CHECK(after == before + 1);
	else if (req.method == API_DELETE)
		CHECK(after + 1 == before);
	else
		CHECK(after == before);
	if (req.method == API_DELETE && changed != NULL)
		CHECK(find(cfg, changed, true) == NULL);
	if ((req.method == API_POST && collection) || (req.method == API_PUT && req.named)) {
		/* The API read the same body into the same rule: it must succeed again. */
		CHECK(expected_rule(cfg, &exp));
		const struct forward *got = find(cfg, exp.name, true);
		/*
		 * A known loss (reported): libconfig writes a float with 15
		 * significant digits, so udp_idle_timeout 0.30000000000000004
		 * comes back from the file as 0.3. Tolerated (a relative 1e-13)
		 * unless FUZZ_API_STRICT is set.
		 */
		if (got != NULL && getenv("FUZZ_API_STRICT") == NULL &&
		    fabs(exp.udp_idle_timeout - got->udp_idle_timeout) <=
			    1e-13 * fabs(exp.udp_idle_timeout))
			exp.udp_idle_timeout = got->udp_idle_timeout;
		if (got == NULL || !same_rule(&exp, got)) {
			show_forward("expected", &exp);
			if (got != NULL)
				show_forward("in the file", got);
			CHECK(got != NULL && same_rule(&exp, got));
		}
		renamed = got->name;
		if (changed != NULL && strcmp(changed, renamed) != 0)
			CHECK(find(cfg, changed, true) == NULL);
	}
	if (req.method == API_POST && req.action != 0 && changed != NULL) {
		const struct forward *was = find(&ref, changed, true);
		const struct forward *got = find(cfg, changed, true);
		CHECK(was != NULL && got != NULL);
		struct forward want = *was;
		want.enabled = req.action == 1;
		if (!same_rule(&want, got)) {
			show_forward("expected", &want);
			show_forward("in the file", got);
			CHECK(same_rule(&want, got));
		}
		renamed = changed;
	}
	/* Every other rule of the file stays as it was. */
	for (size_t i = 0; i < ref.forward_count; i++) {
		const struct forward *was = &ref.forwards[i];
		if (!was->from_rules_file || (changed != NULL && strcmp(was->name, changed) == 0) ||
		    (renamed != NULL && strcmp(was->name, renamed) == 0))
			continue;
		const struct forward *got = find(cfg, was->name, true);
		CHECK(got != NULL && same_rule(was, got));
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	signal(SIGPIPE, SIG_IGN);
	log_set_level(LOG_LEVEL_ERROR);
	struct stat st;
	const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
	fuzz_remove_stale_dirs(base, "portrelay-fuzz-api");
	snprintf(dir, sizeof dir, "%s/portrelay-fuzz-api.%ld.XXXXXX", base, (long)getpid());
	if (mkdtemp(dir) == NULL)
		die("mkdtemp");
	snprintf(applier.config_path, sizeof applier.config_path, "%s/portrelay.conf", dir);
	snprintf(applier.rules_file, sizeof applier.rules_file, "%s/rules.conf", dir);

	char text[4096];
	unsigned web = fuzz_free_port(PORT_WEB), ftp = fuzz_free_port(PORT_FTP), one = fuzz_free_port(PORT_ONE);
	if (web == 0 || ftp == 0 || one == 0)
		die("no free port");
	snprintf(text, sizeof text,
		 "log_level = \"error\";\n"
		 "workers = 1;\n"
		 "admin = { listen = \"127.0.0.1:1\"; rules_file = \"%s\"; };\n"
		 "forwards = (\n"
		 "  { name = \"web\"; protocol = \"both\"; external_address = \"127.0.0.1\";\n"
		 "    external_port = %u; internal_ip = \"127.0.0.1\"; internal_port = 9; },\n"
		 "  { name = \"ftp\"; protocol = \"tcp\"; ftp = true; external_address = \"127.0.0.1\";\n"
		 "    external_port = %u; internal_ip = \"127.0.0.1\"; internal_port = 21; },\n"
		 "  { name = \"off\"; protocol = \"udp\"; enabled = false; external_address = \"127.0.0.1\";\n"
		 "    external_port = 1; internal_ip = \"::1\"; internal_port = 1; }\n"
		 ");\n", applier.rules_file, web, ftp);
	write_file(applier.config_path, text);
	snprintf(text, sizeof text,
		 "forwards = (\n"
		 "  { name = \"api one\"; protocol = \"tcp\"; external_address = \"127.0.0.1\";\n"
		 "    external_port = %u; internal_ip = \"192.0.2.7\"; internal_port = 80;\n"
		 "    max_connections = 10; allow = [ \"127.0.0.0/8\" ]; access_log = true; },\n"
		 "  { name = \"api/two%%\"; protocol = \"udp\"; enabled = false;\n"
		 "    external_address = \"127.0.0.1\"; external_port = \"40000-40009\";\n"
		 "    internal_ip = \"backend.test\"; internal_port = \"50000-50009\";\n"
		 "    udp_idle_timeout = 5.0; proxy_protocol = \"v2\"; }\n"
		 ");\n", one);
	write_file(applier.rules_file, text);
	rules_len = fuzz_read_file(applier.rules_file, rules_bytes, sizeof rules_bytes);
	if (rules_len <= 0)
		die("rules file");

	struct config cfg;
	char err[1024];
	struct config_sources sources = { .path = applier.config_path };
	if (config_load_sources(&cfg, &sources, err, sizeof err) < 0 ||
	    config_load_sources(&ref, &sources, err, sizeof err) < 0) {
		fprintf(stderr, "fuzz_api setup: %s\n", err);
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
	ruleset_unref(rules);   /* the pool holds them */
	applier.check = check_candidate;
	api.pool = pool;
	api.apply = fuzz_apply;
	api.apply_arg = &applier;
	atexit(cleanup);
	return 0;
}

static bool known_field(const char *field)
{
	for (size_t i = 0; i < sizeof rule_fields / sizeof rule_fields[0]; i++) {
		if (strcmp(field, rule_fields[i]) == 0)
			return true;
	}
	return false;
}

/* A key of the body, as api_rule.c names it (cut to a field's size, or sanitized). */
static bool body_key(const char *field)
{
	json_error_t jerr;
	json_t *rule = json_loadb(req.body != NULL ? req.body : "", req.body_len, 0, &jerr);
	const char *key;
	json_t *value;
	bool found = false;
	json_object_foreach(rule, key, value) {
		char cut[CONFIG_NAME_MAX], clean[CONFIG_NAME_MAX];
		snprintf(cut, sizeof cut, "%s", key);
		snprintf(clean, sizeof clean, "%s", key);
		for (char *p = clean; *p != '\0'; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				*p = '?';
		found |= strcmp(field, cut) == 0 || strcmp(field, clean) == 0;
	}
	json_decref(rule);
	return found;
}

static void show_response(const struct api_response *out, const char *path)
{
	char *text = out->body != NULL ? json_dumps(out->body, JSON_COMPACT) : NULL;
	fprintf(stderr, "request: method %d, path \"%s\", %zu body bytes\nresponse: %d %s\n",
		(int)req.method, path, req.body_len, out->status, text != NULL ? text : "(none)");
	free(text);
}

#define CHECK_RESPONSE(cond)                                                             \
	do {                                                                             \
		if (!(cond)) {                                                           \
			show_response(&out, path);                                       \
			CHECK(cond);                                                     \
		}                                                                        \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const enum api_method methods[8] = { API_GET, API_HEAD, API_POST, API_PUT,
						    API_DELETE, API_OTHER, API_POST, API_PUT };
	static const char *const fixed[5] = {
		"/api/forwards", "/api/forwards/api%20one", "/api/forwards/api%20one/disable",
		"/api/forwards/api%2Ftwo%25/enable", "/api/forwards/web",
	};
	char path[1024];
	if (size < 1)
		return 0;
	memset(&req, 0, sizeof req);
	req.method = methods[data[0] & 7];
	req.kind = (data[0] >> 3) & 7;
	applier.result = (enum fuzz_apply_result)(data[0] >> 6);
	applier.calls = 0;
	const uint8_t *rest = data + 1;
	size_t rest_len = size - 1;
	if (req.kind < 5) {
		snprintf(path, sizeof path, "%s", fixed[req.kind]);
		static const char *const names[5] = { NULL, "api one", "api one", "api/two%", "web" };
		static const int actions[5] = { 0, 0, 2, 1, 0 };
		req.named = names[req.kind] != NULL;
		snprintf(req.name, sizeof req.name, "%s", req.named ? names[req.kind] : "");
		req.action = actions[req.kind];
		req.known = true;
		req.collection = req.kind == 0;
	} else {
		const uint8_t *nl = memchr(rest, '\n', rest_len);
		size_t line_len = nl != NULL ? (size_t)(nl - rest) : rest_len;
		if (line_len > 600 || memchr(rest, '\0', line_len) != NULL)
			return -1;
		char line[601];
		memcpy(line, rest, line_len);
		line[line_len] = '\0';
		rest += line_len + (nl != NULL);
		rest_len -= line_len + (nl != NULL);
		if (req.kind == 5) {
			char *encoded = evhttp_uriencode(line, -1, 0);
			CHECK(encoded != NULL);
			snprintf(path, sizeof path, "/api/forwards/%s", encoded);
			free(encoded);
			/* The API's name buffer: longer encodings are no rule's (404). */
			req.named = line_len > 0 && strlen(path) - strlen("/api/forwards/") < 192;
			req.known = true;
			req.collection = line_len == 0;
			snprintf(req.name, sizeof req.name, "%s", line);
		} else if (req.kind == 6) {
			snprintf(path, sizeof path, "/api/forwards%s", line);
		} else {
			snprintf(path, sizeof path, "%s", line);
		}
	}
	/* The body exactly as long as it is (no NUL after it): over-reads show. */
	char *body = rest_len > 0 ? malloc(rest_len) : NULL;
	if (rest_len > 0) {
		CHECK(body != NULL);
		memcpy(body, rest, rest_len);
	}
	req.body = body;
	req.body_len = rest_len;

	struct api_response out;
	api_handle(&api, req.method, path, body, rest_len, &out);
	static int show = -1;
	if (show < 0)
		show = getenv("FUZZ_API_SHOW") != NULL;   /* every answer, to check the seeds */
	if (show)
		show_response(&out, path);

	/* The status: documented, and the one it must be. */
	int s = out.status;
	CHECK_RESPONSE(s == 200 || s == 400 || s == 403 || s == 404 || s == 405 || s == 409 ||
		       s == 500 || s == 503);
	CHECK_RESPONSE(applier.calls <= 1);
	if (applier.calls == 1) {
		CHECK_RESPONSE(s == fuzz_apply_status(applier.result));
	} else {
		CHECK_RESPONSE(s != 500 && s != 503);
	}
	if (s == 200)
		CHECK_RESPONSE(req.method == API_GET || req.method == API_HEAD);
	CHECK_RESPONSE(out.body != NULL);
	if (s == 405)
		CHECK_RESPONSE(out.allow != NULL && out.allow[0] != '\0');
	CHECK_RESPONSE(out.location[0] == '\0');   /* no rule was created */

	/* The body: an array of rules on the collection, else an object. */
	if (s == 200 && json_is_array(out.body)) {
		struct ruleset *now = worker_pool_rules(pool);
		CHECK_RESPONSE(req.collection || !req.known);
		CHECK_RESPONSE(json_array_size(out.body) == now->cfg.forward_count);
		ruleset_unref(now);
	} else {
		CHECK_RESPONSE(json_is_object(out.body));
	}
	if (s == 200 && json_is_object(out.body)) {
		CHECK_RESPONSE(json_is_string(json_object_get(out.body, "name")));
		CHECK_RESPONSE(json_is_object(json_object_get(out.body, "counters")));
	}
	if (s != 200) {
		json_t *error = json_object_get(out.body, "error");
		json_t *field = json_object_get(out.body, "field");
		CHECK_RESPONSE(json_is_string(error) && json_string_length(error) > 0);
		CHECK_RESPONSE(field == NULL || json_is_string(field));
		if (field != NULL)
			CHECK_RESPONSE(known_field(json_string_value(field)) ||
				       body_key(json_string_value(field)));
		if (applier.calls == 1 && applier.result == FUZZ_APPLY_APPLY_FAILED &&
		    req.method != API_DELETE)
			CHECK_RESPONSE(field != NULL &&
				       strcmp(json_string_value(field), "external_port") == 0);
	}
	/* What admin.c sends: the body must dump. */
	char *text = json_dumps(out.body, JSON_COMPACT | JSON_ENSURE_ASCII);
	CHECK_RESPONSE(text != NULL);
	free(text);

	/* Nothing changed on disk: no candidate left, the file as it was. */
	CHECK_RESPONSE(!fuzz_candidate_left(dir));
	char now_bytes[sizeof rules_bytes];
	long now_len = fuzz_read_file(applier.rules_file, now_bytes, sizeof now_bytes);
	CHECK_RESPONSE(now_len == rules_len && memcmp(now_bytes, rules_bytes, (size_t)rules_len) == 0);

	json_decref(out.body);
	free(body);
	return 0;
}
