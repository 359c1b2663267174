/*
 * api.h - the Port Forwarding API: JSON over the admin endpoint.
 *
 *   GET    /api/forwards                  every rule, with its counters
 *   POST   /api/forwards                  add a rule (201)
 *   GET    /api/forwards/NAME             one rule
 *   PUT    /api/forwards/NAME             replace it (a new name renames it)
 *   POST   /api/forwards/NAME/enable      (and /disable)
 *   DELETE /api/forwards/NAME
 *
 * NAME is percent-encoded. Rules made here live in admin.rules_file
 * (rules_doc.h); rules of the configuration file and of -L are read-only.
 * A change is checked as the file's reader checks a forward, then against
 * the running rules (name taken, port overlap), then written to a candidate
 * file and applied by a reload (the caller's apply function, which runs it
 * on the main thread): the same guarantees as SIGHUP, and on any error
 * nothing changes, neither the running rules nor the file.
 *
 * This file knows nothing of HTTP: admin.c authenticates, reads the body
 * and sends what api_handle answers, so the API is tested and fuzzed
 * without sockets.
 */
#ifndef PORTRELAY_API_H
#define PORTRELAY_API_H

#include <jansson.h>
#include <stddef.h>

#include "portrelay/reload.h"
#include "portrelay/worker.h"

enum api_method { API_GET, API_HEAD, API_POST, API_PUT, API_DELETE, API_OTHER };

/* What a reload through the API may also answer: the relay is stopping. */
#define API_APPLY_STOPPING (-100)

struct api {
	struct worker_pool *pool;
	/*
	 * Applies a candidate rules file: reload_run_candidate on the main
	 * thread. Returns an enum reload_result, or API_APPLY_STOPPING.
	 */
	int (*apply)(void *arg, const char *candidate, char *err, size_t err_len);
	void *apply_arg;
};

struct api_response {
	int status;                /* 200, 201, 400 ... */
	json_t *body;              /* owned: the rule(s), or {"error", "field"} */
	char location[600];        /* for 201: the new rule's path */
	const char *allow;         /* for 405: the methods the path takes */
};

/*
 * Answers one request. path is the request's path, still percent-encoded
 * ("/api/forwards/my%20rule/enable"); body may be NULL. Free out->body with
 * json_decref.
 */
void api_handle(const struct api *api, enum api_method method, const char *path,
		const char *body, size_t body_len, struct api_response *out);

#endif
