/*
 * api.c - the Port Forwarding API (api.h).
 */
#include "portrelay/api.h"

#include <event2/http.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "portrelay/api_rule.h"
#include "portrelay/log.h"
#include "portrelay/rules_doc.h"
#include "portrelay/ruleset.h"

#define API_PREFIX "/api/forwards"

/* A request's path, split: the rule's name (decoded) and an action after it. */
struct api_path {
	bool collection;            /* /api/forwards */
	char name[CONFIG_NAME_MAX * 3];
	const char *action;         /* NULL, "enable" or "disable" */
};

static void api_error(struct api_response *out, int status, const char *field,
		      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void api_error(struct api_response *out, int status, const char *field, const char *fmt,
		      ...)
{
	char message[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(message, sizeof message, fmt, ap);
	va_end(ap);
	json_decref(out->body);
	out->status = status;
	out->body = json_pack("{s:o}", "error", api_rule_text(message));
	if (out->body != NULL && field != NULL && field[0] != '\0')
		json_object_set_new(out->body, "field", api_rule_text(field));
}

/* 0 with the path split, -1 for a path that is no rule's (404). */
static int api_parse_path(const char *path, struct api_path *parsed)
{
	memset(parsed, 0, sizeof *parsed);
	size_t prefix = strlen(API_PREFIX);
	if (strncmp(path, API_PREFIX, prefix) != 0)
		return -1;
	const char *rest = path + prefix;
	if (rest[0] == '\0' || strcmp(rest, "/") == 0) {
		parsed->collection = true;
		return 0;
	}
	if (rest[0] != '/')
		return -1;
	rest++;
	const char *slash = strchr(rest, '/');
	size_t encoded_len = slash != NULL ? (size_t)(slash - rest) : strlen(rest);
	if (encoded_len == 0 || encoded_len >= sizeof parsed->name)
		return -1;
	if (slash != NULL) {
		if (strcmp(slash, "/enable") == 0)
			parsed->action = "enable";
		else if (strcmp(slash, "/disable") == 0)
			parsed->action = "disable";
		else
			return -1;
	}
	char encoded[sizeof parsed->name];
	memcpy(encoded, rest, encoded_len);
	encoded[encoded_len] = '\0';
	size_t decoded_len = 0;
	char *decoded = evhttp_uridecode(encoded, 0, &decoded_len);
	if (decoded == NULL)
		return -1;
	/* A %00 would cut the name short: no rule has it. */
	bool ok = decoded_len == strlen(decoded) && decoded_len < sizeof parsed->name;
	if (ok)
		memcpy(parsed->name, decoded, decoded_len + 1);
	free(decoded);
	return ok ? 0 : -1;
}

/* The first forward of that name (owned: of admin.rules_file's), or NULL. */
static const struct forward *api_find(const struct config *cfg, const char *name, bool owned)
{
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *fwd = &cfg->forwards[i];
		if ((!owned || fwd->from_rules_file) && strcmp(fwd->name, name) == 0)
			return fwd;
	}
	return NULL;
}

static void api_reply_rule(struct api_response *out, int status, const struct forward *fwd,
			   const struct config *cfg)
{
	json_decref(out->body);
	out->status = status;
	out->body = api_rule_to_json(fwd, cfg);
	if (out->body == NULL)
		api_error(out, 500, NULL, "out of memory");
}

static void api_list(const struct config *cfg, struct api_response *out)
{
	json_t *list = json_array();
	for (size_t i = 0; list != NULL && i < cfg->forward_count; i++) {
		json_t *rule = api_rule_to_json(&cfg->forwards[i], cfg);
		if (rule == NULL || json_array_append_new(list, rule) < 0) {
			json_decref(list);
			list = NULL;
		}
	}
	if (list == NULL) {
		api_error(out, 500, NULL, "out of memory");
		return;
	}
	out->status = 200;
	out->body = list;
}

/*
 * What a change is: the rule it touches (NULL for a new one), the group of
 * the rules file that will hold it, and the forward it becomes.
 */
struct api_change {
	const struct api *api;
	struct ruleset *rules;        /* running */
	struct rules_doc doc;
	bool doc_loaded;
	const struct forward *before; /* the running rule changed, or NULL */
	struct forward after;         /* what the group reads as */
	bool removes;                 /* DELETE */
};

/* The running rule that the path names, which the API may change; -1 after answering. */
static int api_changeable(struct api_change *change, const char *name, struct api_response *out)
{
	change->before = api_find(&change->rules->cfg, name, true);
	if (change->before != NULL)
		return 0;
	const struct forward *fwd = api_find(&change->rules->cfg, name, false);
	if (fwd == NULL)
		api_error(out, 404, NULL, "no rule named \"%s\"", name);
	else
		api_error(out, 403, NULL, "rule \"%s\" is read-only: it comes from %s; change it "
			  "there (and send SIGHUP)", name, fwd->origin);
	return -1;
}

static int api_load_doc(struct api_change *change, struct api_response *out)
{
	char err[1024];
	const char *path = change->rules->cfg.admin_rules_file;
	if (path[0] == '\0') {
		api_error(out, 409, NULL, "admin.rules_file is not set in the configuration: "
			  "there is nowhere to keep rules made through the API");
		return -1;
	}
	if (rules_doc_load(&change->doc, path, err, sizeof err) < 0) {
		api_error(out, 500, NULL, "admin.rules_file cannot be read: %s", err);
		return -1;
	}
	change->doc_loaded = true;
	return 0;
}

/* The group of the rule being changed, in the file as it is on disk now. */
static config_setting_t *api_doc_group(struct api_change *change, int *index,
				       struct api_response *out)
{
	config_setting_t *group = rules_doc_find(&change->doc, change->before->name, index);
	if (group == NULL)
		api_error(out, 409, NULL, "rule \"%s\" is no longer in %s (was the file edited "
			  "by hand? send SIGHUP to load it)", change->before->name,
			  change->doc.path);
	return group;
}

/* Reads the group as the file's reader would: field errors are 400s. */
static int api_check_group(struct api_change *change, config_setting_t *group, const char *where,
			   struct api_response *out)
{
	char err[1024], field[CONFIG_NAME_MAX];
	if (config_read_forward(&change->rules->cfg, group, where, &change->after, err,
				sizeof err, field, sizeof field) < 0) {
		/* "request: forward ...": the client knows where it came from. */
		size_t where_len = strlen(where);
		const char *message = err;
		if (strncmp(err, where, where_len) == 0 && strncmp(err + where_len, ": ", 2) == 0)
			message = err + where_len + 2;
		api_error(out, 400, field, "%s", message);
		return -1;
	}
	return 0;
}

/* Another rule, running, that has the name or the port the change wants: 409. */
static int api_check_conflicts(struct api_change *change, struct api_response *out)
{
	const struct config *cfg = &change->rules->cfg;
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *other = &cfg->forwards[i];
		if (other == change->before)
			continue;
		if (strcmp(other->name, change->after.name) == 0) {
			api_error(out, 409, "name", "a rule named \"%s\" exists already (%s)",
				  other->name, other->origin);
			return -1;
		}
		if (forward_overlaps(other, &change->after)) {
			char ports[1024];
			api_error(out, 409, "external_port", "its port overlaps rule \"%s\" (%s)",
				  other->name, forward_describe(other, ports, sizeof ports));
			return -1;
		}
	}
	return 0;
}

/* Writes the candidate and has it applied; the answer on failure. */
static int api_apply(struct api_change *change, struct api_response *out)
{
	char candidate[600], err[1024];
	if (rules_doc_write_candidate(&change->doc, candidate, sizeof candidate, err,
				      sizeof err) < 0) {
		api_error(out, 500, NULL, "nothing changed: %s", err);
		return -1;
	}
	int result = change->api->apply(change->api->apply_arg, candidate, err, sizeof err);
	if (result != RELOAD_APPLIED)
		unlink(candidate);
	switch (result) {
	case RELOAD_APPLIED:
		return 0;
	case API_APPLY_STOPPING:
		api_error(out, 503, NULL, "the relay is stopping: nothing changed");
		return -1;
	case RELOAD_APPLY_FAILED:
		api_error(out, 409, change->removes ? NULL : "external_port",
			  "nothing changed: %s", err);
		return -1;
	case RELOAD_COMMIT_FAILED:
		api_error(out, 500, NULL, "nothing changed: %s", err);
		return -1;
	case RELOAD_CONFIG_FAILED:
	default:
		api_error(out, 409, NULL, "nothing changed: the configuration with this change is "
			  "refused: %s", err);
		return -1;
	}
}

/* After a change: the rule as it now runs. */
static void api_reply_applied(struct api_change *change, int status, struct api_response *out)
{
	struct ruleset *now = worker_pool_rules(change->api->pool);
	const struct forward *fwd = api_find(&now->cfg, change->after.name, true);
	if (fwd != NULL)
		api_reply_rule(out, status, fwd, &now->cfg);
	else
		api_error(out, 500, NULL, "the change was applied but the rule is not running: "
			  "another reload came in between");
	ruleset_unref(now);
}

static json_t *api_body(const char *body, size_t body_len, struct api_response *out)
{
	struct api_rule_error error;
	if (body == NULL || body_len == 0) {
		api_error(out, 400, NULL, "the body must be a JSON object: {\"name\": ..., "
			  "\"protocol\": ..., ...}");
		return NULL;
	}
	json_t *rule = api_rule_parse(body, body_len, &error);
	if (rule == NULL)
		api_error(out, 400, error.field, "%s", error.message);
	return rule;
}

/* POST /api/forwards and PUT /api/forwards/NAME. */
static void api_put_rule(struct api_change *change, const char *name, const char *body,
			 size_t body_len, struct api_response *out)
{
	struct api_rule_error error;
	json_t *rule = api_body(body, body_len, out);
	if (rule == NULL)
		return;
	if (name != NULL && api_rule_name(rule) == NULL && json_object_get(rule, "name") == NULL)
		json_object_set_new(rule, "name", json_string(name));
	if (api_rule_name(rule) == NULL) {
		api_error(out, 400, "name", json_object_get(rule, "name") == NULL
			  ? "name is required: rules made through the API are known by it"
			  : "name must be a string");
		goto out;
	}
	if ((name != NULL && api_changeable(change, name, out) < 0) || api_load_doc(change, out) < 0)
		goto out;
	int index = -1;
	config_setting_t *group = name != NULL ? api_doc_group(change, &index, out)
					       : rules_doc_append(&change->doc);
	if (group == NULL) {
		if (name == NULL)
			api_error(out, 409, NULL, "admin.rules_file holds %d rules already: the "
				  "most it takes", RULES_DOC_MAX);
		goto out;
	}
	if (api_rule_fill_group(rule, group, &error) < 0) {
		api_error(out, 400, error.field, "%s", error.message);
		goto out;
	}
	if (api_check_group(change, group, "request", out) < 0 ||
	    api_check_conflicts(change, out) < 0 || api_apply(change, out) < 0)
		goto out;
	api_reply_applied(change, name != NULL ? 200 : 201, out);
	if (name == NULL && out->status == 201) {
		char *encoded = evhttp_uriencode(change->after.name, -1, 0);
		if (encoded != NULL)
			snprintf(out->location, sizeof out->location, API_PREFIX "/%s", encoded);
		free(encoded);
	}
out:
	json_decref(rule);
}

static void api_set_enabled(struct api_change *change, const char *name, bool enabled,
			    struct api_response *out)
{
	int index;
	config_setting_t *group;
	if (api_changeable(change, name, out) < 0 || api_load_doc(change, out) < 0 ||
	    (group = api_doc_group(change, &index, out)) == NULL)
		return;
	if (rules_doc_set_enabled(group, enabled) < 0) {
		api_error(out, 500, NULL, "out of memory");
		return;
	}
	if (api_check_group(change, group, change->doc.path, out) < 0 ||
	    api_check_conflicts(change, out) < 0 || api_apply(change, out) < 0)
		return;
	api_reply_applied(change, 200, out);
}

static void api_delete(struct api_change *change, const char *name, struct api_response *out)
{
	int index;
	if (api_changeable(change, name, out) < 0 || api_load_doc(change, out) < 0 ||
	    api_doc_group(change, &index, out) == NULL)
		return;
	change->removes = true;
	/* The answer is the rule as it ran, read before it goes. */
	json_t *removed = api_rule_to_json(change->before, &change->rules->cfg);
	if (removed == NULL || rules_doc_remove(&change->doc, index) < 0) {
		json_decref(removed);
		api_error(out, 500, NULL, "out of memory");
		return;
	}
	if (api_apply(change, out) < 0) {
		json_decref(removed);
		return;
	}
	json_decref(out->body);
	out->status = 200;
	out->body = removed;
}

static void api_not_allowed(struct api_response *out, const char *allow)
{
	out->allow = allow;
	api_error(out, 405, NULL, "method not allowed here: %s", allow);
}

void api_handle(const struct api *api, enum api_method method, const char *path,
		const char *body, size_t body_len, struct api_response *out)
{
	struct api_path parsed;
	memset(out, 0, sizeof *out);
	if (api_parse_path(path, &parsed) < 0) {
		api_error(out, 404, NULL, "not found: the API is at " API_PREFIX);
		return;
	}
	struct api_change change = { .api = api, .rules = worker_pool_rules(api->pool) };
	bool reads = method == API_GET || method == API_HEAD;
	if (parsed.collection) {
		if (reads)
			api_list(&change.rules->cfg, out);
		else if (method == API_POST)
			api_put_rule(&change, NULL, body, body_len, out);
		else
			api_not_allowed(out, "GET, HEAD, POST");
	} else if (parsed.action != NULL) {
		if (method == API_POST)
			api_set_enabled(&change, parsed.name, strcmp(parsed.action, "enable") == 0,
					out);
		else
			api_not_allowed(out, "POST");
	} else if (reads) {
		const struct forward *fwd = api_find(&change.rules->cfg, parsed.name, false);
		if (fwd != NULL)
			api_reply_rule(out, 200, fwd, &change.rules->cfg);
		else
			api_error(out, 404, NULL, "no rule named \"%s\"", parsed.name);
	} else if (method == API_PUT) {
		api_put_rule(&change, parsed.name, body, body_len, out);
	} else if (method == API_DELETE) {
		api_delete(&change, parsed.name, out);
	} else {
		api_not_allowed(out, "GET, HEAD, PUT, DELETE");
	}
	if (change.doc_loaded)
		rules_doc_free(&change.doc);
	ruleset_unref(change.rules);
	if (out->body == NULL && out->status != 0)
		api_error(out, 500, NULL, "out of memory");
}
