/*
 * api_rule.c - rules as JSON, in and out (api_rule.h).
 */
#include "portrelay/api_rule.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "portrelay/acl.h"
#include "portrelay/ruleset.h"

/* Output only: a rule sent back as GET showed it loses them silently. */
static const char *const api_rule_output_fields[] = { "read_only", "origin", "counters" };

static void api_rule_fail(struct api_rule_error *error, const char *field, const char *fmt,
			  ...) __attribute__((format(printf, 3, 4)));

/*
 * Copies text into out (size bytes with its NUL), cut short if need be at
 * the start of a UTF-8 character, never inside one: a name cut in the
 * middle of a character would not be UTF-8, and JSON could not carry it.
 */
static void api_rule_copy_whole_chars(char *out, size_t size, const char *text)
{
	size_t len = strlen(text);
	if (len >= size) {
		len = size - 1;
		/* Back to the first byte of the character that would be cut. */
		while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80)
			len--;
	}
	memcpy(out, text, len);
	out[len] = '\0';
}

static void api_rule_fail(struct api_rule_error *error, const char *field, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(error->message, sizeof error->message, fmt, ap);
	va_end(ap);
	api_rule_copy_whole_chars(error->field, sizeof error->field, field);
}

json_t *api_rule_parse(const char *body, size_t len, struct api_rule_error *error)
{
	json_error_t parse_error;
	json_t *rule = json_loadb(body, len, JSON_REJECT_DUPLICATES, &parse_error);
	if (rule == NULL) {
		api_rule_fail(error, "", "the body is not JSON: %s (line %d, column %d)",
			      parse_error.text, parse_error.line, parse_error.column);
		return NULL;
	}
	if (!json_is_object(rule)) {
		json_decref(rule);
		api_rule_fail(error, "", "the body must be a JSON object: {\"name\": ..., "
			      "\"protocol\": ..., ...}");
		return NULL;
	}
	return rule;
}

const char *api_rule_name(const json_t *rule)
{
	return json_string_value(json_object_get(rule, "name"));
}

static bool api_rule_is_output_field(const char *key)
{
	for (size_t i = 0; i < sizeof api_rule_output_fields / sizeof *api_rule_output_fields; i++) {
		if (strcmp(key, api_rule_output_fields[i]) == 0)
			return true;
	}
	return false;
}

/* An array of strings becomes a libconfig array of strings (allow, deny). */
static int api_rule_add_strings(config_setting_t *group, const char *key, const json_t *list,
				struct api_rule_error *error)
{
	config_setting_t *array = config_setting_add(group, key, CONFIG_TYPE_ARRAY);
	size_t i;
	const json_t *item;

	if (array == NULL)
		return -1;
	json_array_foreach(list, i, item) {
		if (!json_is_string(item)) {
			api_rule_fail(error, key, "%s must be a list of strings: entry #%zu is not "
				      "one", key, i + 1);
			return -2;
		}
		if (config_setting_set_string_elem(array, -1, json_string_value(item)) == NULL)
			return -1;
	}
	return 0;
}

/* One field; -1: the name is none libconfig (so none of the file's) can hold. */
static int api_rule_add_field(config_setting_t *group, const char *key, const json_t *value,
			      struct api_rule_error *error)
{
	config_setting_t *setting = NULL;

	switch (json_typeof(value)) {
	case JSON_STRING:
		setting = config_setting_add(group, key, CONFIG_TYPE_STRING);
		return setting != NULL && config_setting_set_string(setting,
								     json_string_value(value)) ==
						  CONFIG_TRUE ? 0 : -1;
	case JSON_INTEGER: {
		json_int_t number = json_integer_value(value);
		bool small = number >= INT32_MIN && number <= INT32_MAX;
		setting = config_setting_add(group, key, small ? CONFIG_TYPE_INT : CONFIG_TYPE_INT64);
		if (setting == NULL)
			return -1;
		return (small ? config_setting_set_int(setting, (int)number)
			      : config_setting_set_int64(setting, (long long)number)) == CONFIG_TRUE
			       ? 0 : -1;
	}
	case JSON_REAL:
		setting = config_setting_add(group, key, CONFIG_TYPE_FLOAT);
		return setting != NULL && config_setting_set_float(setting, json_real_value(value)) ==
						  CONFIG_TRUE ? 0 : -1;
	case JSON_TRUE:
	case JSON_FALSE:
		setting = config_setting_add(group, key, CONFIG_TYPE_BOOL);
		return setting != NULL && config_setting_set_bool(setting, json_is_true(value)) ==
						  CONFIG_TRUE ? 0 : -1;
	case JSON_ARRAY:
		return api_rule_add_strings(group, key, value, error);
	case JSON_NULL:
		return 0;
	case JSON_OBJECT:
	default: {
		char shown[CONFIG_NAME_MAX];
		api_rule_copy_whole_chars(shown, sizeof shown, key);
		api_rule_fail(error, shown, "%s must be a string, a number, true or false, or a "
			      "list of strings, not an object", shown);
	}
		return -2;
	}
}

int api_rule_fill_group(const json_t *rule, config_setting_t *group, struct api_rule_error *error)
{
	const char *key;
	const json_t *value;

	while (config_setting_length(group) > 0)
		config_setting_remove_elem(group, 0);
	json_object_foreach((json_t *)rule, key, value) {
		if (api_rule_is_output_field(key))
			continue;
		int rc = api_rule_add_field(group, key, value, error);
		if (rc == -2)
			return -1;
		if (rc < 0) {
			/* libconfig refuses names it cannot hold: none is a field of the file. */
			char shown[CONFIG_NAME_MAX];
			api_rule_copy_whole_chars(shown, sizeof shown, key);
			for (char *p = shown; *p != '\0'; p++)
				if ((unsigned char)*p < 0x20 || *p == 0x7f)
					*p = '?';
			api_rule_fail(error, shown, "unknown field \"%s\"", shown);
			return -1;
		}
	}
	return 0;
}

/*
 * Text of the configuration as a JSON string. The file may hold bytes that
 * are not UTF-8 (a Latin-1 name), which JSON cannot carry: those show as '?'
 * rather than the field going missing.
 */
json_t *api_rule_text(const char *text)
{
	json_t *value = json_string(text);
	if (value != NULL)
		return value;
	char copy[1024];
	size_t len = 0;
	for (const unsigned char *p = (const unsigned char *)text; *p != '\0' && len + 1 < sizeof copy;
	     p++)
		copy[len++] = *p < 0x80 ? (char)*p : '?';
	copy[len] = '\0';
	return json_string(copy);
}

/* A port or a range as the file writes it: 8080 or "30000-30009". */
static json_t *api_rule_ports(uint16_t first, uint16_t last)
{
	if (first == last)
		return json_integer(first);
	char text[16];
	snprintf(text, sizeof text, "%u-%u", first, last);
	return json_string(text);
}

static json_t *api_rule_acl(const struct acl *acl, bool allow)
{
	json_t *list = json_array();
	for (unsigned i = 0; list != NULL && i < acl->count; i++) {
		char text[64];
		if (acl->entries[i].allow == allow)
			json_array_append_new(list, json_string(acl_entry_format(&acl->entries[i], text,
										  sizeof text)));
	}
	return list;
}

static json_t *api_rule_counters(const struct forward *fwd)
{
	struct relay_counters sum;
	memset(&sum, 0, sizeof sum);
	unsigned udp_open = 0, tcp_open = 0;
	if (fwd->stats != NULL) {
		forward_stats_sum(fwd->stats, &sum);
		udp_open = atomic_load_explicit(&fwd->stats->udp_flows_open, memory_order_relaxed);
		tcp_open = atomic_load_explicit(&fwd->stats->tcp_open, memory_order_relaxed);
	}
	return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
			 "tcp_connections_active", (json_int_t)tcp_open,
			 "tcp_connections_total", (json_int_t)sum.tcp_accepted,
			 "udp_flows_active", (json_int_t)udp_open,
			 "udp_flows_total", (json_int_t)sum.udp_flows_created,
			 "bytes_to_internal",
			 (json_int_t)(sum.bytes_to_internal + sum.udp_bytes_to_internal),
			 "bytes_to_client", (json_int_t)(sum.bytes_to_client + sum.udp_bytes_to_client),
			 "udp_datagrams_to_internal", (json_int_t)sum.udp_datagrams_to_internal,
			 "udp_datagrams_to_client", (json_int_t)sum.udp_datagrams_to_client);
}

/* The fields a rule has only when it sets them (a GET, edited, PUT back, keeps them). */
static void api_rule_optional_fields(json_t *out, const struct forward *fwd,
				     const struct config *cfg)
{
	char text[32];
	if (fwd->ftp) {
		json_object_set_new(out, "ftp", json_true());
		/* 0-0: the kernel picks; nothing to write. */
		if (fwd->ftp_data_port_first != 0) {
			snprintf(text, sizeof text, "%u-%u", fwd->ftp_data_port_first,
				 fwd->ftp_data_port_last);
			json_object_set_new(out, "ftp_data_ports", json_string(text));
		}
	}
	if (fwd->proxy_protocol != PROXY_NONE)
		json_object_set_new(out, "proxy_protocol",
				    json_string(fwd->proxy_protocol == PROXY_V1 ? "v1" : "v2"));
	if (fwd->source_client)
		json_object_set_new(out, "source", json_string("client"));
	if (fwd->access_log)
		json_object_set_new(out, "access_log", json_true());
	if (fwd->freebind)
		json_object_set_new(out, "freebind", json_true());
	if (fwd->max_connections != 0)
		json_object_set_new(out, "max_connections", json_integer(fwd->max_connections));
	if (fwd->max_connections_per_source != CONFIG_DEFAULT_MAX_CONNECTIONS_PER_SOURCE)
		json_object_set_new(out, "max_connections_per_source",
				    json_integer(fwd->max_connections_per_source));
	if (fwd->max_flows_per_source != CONFIG_DEFAULT_MAX_FLOWS_PER_SOURCE)
		json_object_set_new(out, "max_flows_per_source",
				    json_integer(fwd->max_flows_per_source));
	if ((fwd->proto & FORWARD_UDP) && fwd->udp_idle_timeout != cfg->udp_idle_timeout)
		json_object_set_new(out, "udp_idle_timeout", json_real(fwd->udp_idle_timeout));
	bool any_allow = false, any_deny = false;
	for (unsigned i = 0; i < fwd->acl.count; i++) {
		any_allow |= fwd->acl.entries[i].allow;
		any_deny |= !fwd->acl.entries[i].allow;
	}
	if (any_allow)
		json_object_set_new(out, "allow", api_rule_acl(&fwd->acl, true));
	if (any_deny)
		json_object_set_new(out, "deny", api_rule_acl(&fwd->acl, false));
}

json_t *api_rule_to_json(const struct forward *fwd, const struct config *cfg)
{
	char address[NET_ADDR_STRLEN];
	json_t *out = json_object();
	if (out == NULL)
		return NULL;
	json_object_set_new(out, "name", api_rule_text(fwd->name));
	json_object_set_new(out, "protocol", json_string(forward_proto_name(fwd->proto)));
	/* Left out when it follows wan_address: a rule fetched and sent back still does. */
	if (!fwd->external_from_wan)
		json_object_set_new(out, "external_address",
				    json_string(net_addr_format_ip(&fwd->external_addr, address,
								   sizeof address)));
	json_object_set_new(out, "external_port",
			    api_rule_ports(fwd->external_port_first, fwd->external_port_last));
	json_object_set_new(out, "internal_ip", api_rule_text(fwd->internal_host));
	json_object_set_new(out, "internal_port",
			    api_rule_ports(fwd->internal_port_first, fwd->internal_port_last));
	json_object_set_new(out, "enabled", json_boolean(fwd->enabled));
	api_rule_optional_fields(out, fwd, cfg);
	json_object_set_new(out, "read_only", json_boolean(!fwd->from_rules_file));
	json_object_set_new(out, "origin", api_rule_text(fwd->origin));
	json_object_set_new(out, "counters", api_rule_counters(fwd));
	return out;
}
