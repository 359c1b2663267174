/*
 * api_rule.h - a forwarding rule as the Port Forwarding API sends and takes
 * it: a JSON object with the configuration file's field names.
 *
 * Rules come in as JSON and are kept in admin.rules_file, a libconfig file:
 * api_rule_fill_group turns the object into a forward's group, field for
 * field, and the configuration's own reader checks it (config_read_forward),
 * so the API accepts exactly what the file accepts. Rules go out with
 * api_rule_to_json, from the running forward, with its live counters.
 */
#ifndef PORTRELAY_API_RULE_H
#define PORTRELAY_API_RULE_H

#include <jansson.h>
#include <libconfig.h>
#include <stddef.h>

#include "portrelay/config.h"

/* Request bodies larger than this are refused (413). */
#define API_RULE_BODY_MAX (64 * 1024)

/* What went wrong with a rule: a message and the field at fault ("" for none). */
struct api_rule_error {
	char message[1024];
	char field[CONFIG_NAME_MAX];
};

/*
 * Parses a request body: one JSON object (duplicate keys refused). NULL
 * with error set when it is not.
 */
json_t *api_rule_parse(const char *body, size_t len, struct api_rule_error *error);

/*
 * Makes group (a forward's group: emptied first) hold the object's fields:
 * strings, integers, reals, booleans, arrays of strings; null is the same
 * as leaving the field out. The fields the API adds on output (read_only,
 * origin, counters) are skipped. -1 with error set for a value no field of
 * the file can hold.
 */
int api_rule_fill_group(const json_t *rule, config_setting_t *group,
			struct api_rule_error *error);

/*
 * A JSON string of text (at most 1023 bytes of it when it is not UTF-8:
 * then bytes above 0x7f show as '?'). NULL when out of memory.
 */
json_t *api_rule_text(const char *text);

/* The rule's name, or NULL when it has none that is a string. */
const char *api_rule_name(const json_t *rule);

/*
 * The forward as the API shows it: its fields, read_only, origin and its
 * counters (zero when it is disabled). cfg is the configuration the forward
 * belongs to (for the defaults it left out). NULL when out of memory.
 */
json_t *api_rule_to_json(const struct forward *fwd, const struct config *cfg);

#endif
