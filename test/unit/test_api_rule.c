/*
 * test_api_rule.c - rules as the Port Forwarding API takes and gives them
 * (api_rule.h): request bodies parsed, JSON objects turned into a forward's
 * libconfig group field for field and read by the file's own reader
 * (config_read_forward), the errors naming the field at fault, and a rule
 * sent out (api_rule_to_json) read back as the same rule.
 *
 * Internal addresses are numeric: no test resolves a name.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "portrelay/api_rule.h"
#include "portrelay/config.h"
#include "portrelay/net.h"

struct env {
	struct config cfg;       /* defaults: wan_address 0.0.0.0, udp idle 60 s */
	config_t lc;
	config_setting_t *group;
	struct api_rule_error error;
	struct forward fwd;
	char err[1024];
	char field[CONFIG_NAME_MAX];
};

static int env_setup(void **state)
{
	struct env *env = calloc(1, sizeof *env);
	if (env == NULL)
		return -1;
	config_defaults(&env->cfg);
	config_init(&env->lc);
	env->group = config_setting_add(config_root_setting(&env->lc), "rule", CONFIG_TYPE_GROUP);
	*state = env;
	return env->group != NULL ? 0 : -1;
}

static int env_teardown(void **state)
{
	struct env *env = *state;
	config_destroy(&env->lc);
	config_free(&env->cfg);
	free(env);
	return 0;
}

static json_t *parse(const char *text)
{
	json_error_t error;
	json_t *value = json_loads(text, JSON_REJECT_DUPLICATES, &error);
	if (value == NULL) {
		print_error("bad JSON in the test: %s: %s\n", text, error.text);
		fail();
	}
	return value;
}

/* fill_group, then config_read_forward: 0, or -1 with env->field and env->err. */
static int read_rule(struct env *env, const char *text)
{
	json_t *rule = parse(text);
	env->field[0] = '\0';
	env->err[0] = '\0';
	int rc = api_rule_fill_group(rule, env->group, &env->error);
	json_decref(rule);
	if (rc < 0) {
		snprintf(env->field, sizeof env->field, "%s", env->error.field);
		snprintf(env->err, sizeof env->err, "%s", env->error.message);
		return -1;
	}
	return config_read_forward(&env->cfg, env->group, "request", &env->fwd, env->err,
				   sizeof env->err, env->field, sizeof env->field);
}

static void assert_refused(struct env *env, const char *text, const char *field)
{
	if (read_rule(env, text) == 0) {
		print_error("accepted: %s\n", text);
		fail();
	}
	if (strcmp(env->field, field) != 0) {
		print_error("%s: field \"%s\", not \"%s\" (%s)\n", text, env->field, field, env->err);
		fail();
	}
	assert_true(env->err[0] != '\0');
	assert_null(strchr(env->err, '\n'));
}

static void test_parse(void **state)
{
	(void)state;
	struct api_rule_error error;
	const char *ok = "{\"name\": \"web\", \"external_port\": 8080}";
	json_t *rule = api_rule_parse(ok, strlen(ok), &error);
	assert_non_null(rule);
	assert_string_equal(api_rule_name(rule), "web");
	json_decref(rule);

	static const char *const bad[] = {
		"", "not JSON", "{\"name\": ", "[{\"name\": \"web\"}]", "\"web\"", "42", "null",
		"{\"name\": \"a\", \"name\": \"b\"}", "{\"a\": 1} {\"b\": 2}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memset(&error, 'x', sizeof error);
		error.message[sizeof error.message - 1] = error.field[sizeof error.field - 1] = '\0';
		rule = api_rule_parse(bad[i], strlen(bad[i]), &error);
		if (rule != NULL) {
			print_error("parsed: %s\n", bad[i]);
			fail();
		}
		assert_true(error.message[0] != '\0');
		assert_string_equal(error.field, "");
	}
	/* The length counts, not a NUL: a body is not a C string. */
	rule = api_rule_parse("{\"a\": 1}garbage", 8, &error);
	assert_non_null(rule);
	json_decref(rule);

	rule = parse("{\"name\": 5}");
	assert_null(api_rule_name(rule));
	json_decref(rule);
}

static void test_fill_group_types(void **state)
{
	struct env *env = *state;
	json_t *rule = parse("{\"name\": \"web\", \"external_port\": 8080, \"big\": 4294967296,"
			     " \"udp_idle_timeout\": 2.5, \"enabled\": false,"
			     " \"allow\": [\"10.0.0.0/8\", \"::1/128\"], \"deny\": [],"
			     " \"max_connections\": null, \"read_only\": true, \"origin\": \"x:1\","
			     " \"counters\": {\"bytes_to_client\": 1}}");
	assert_int_equal(api_rule_fill_group(rule, env->group, &env->error), 0);
	json_decref(rule);
	config_setting_t *s;
	assert_non_null(s = config_setting_get_member(env->group, "name"));
	assert_int_equal(config_setting_type(s), CONFIG_TYPE_STRING);
	assert_string_equal(config_setting_get_string(s), "web");
	assert_non_null(s = config_setting_get_member(env->group, "external_port"));
	assert_int_equal(config_setting_type(s), CONFIG_TYPE_INT);
	assert_int_equal(config_setting_get_int(s), 8080);
	assert_non_null(s = config_setting_get_member(env->group, "big"));
	assert_int_equal(config_setting_type(s), CONFIG_TYPE_INT64);
	assert_true(config_setting_get_int64(s) == 4294967296LL);
	assert_non_null(s = config_setting_get_member(env->group, "udp_idle_timeout"));
	assert_int_equal(config_setting_type(s), CONFIG_TYPE_FLOAT);
	assert_true(config_setting_get_float(s) == 2.5);
	assert_non_null(s = config_setting_get_member(env->group, "enabled"));
	assert_int_equal(config_setting_type(s), CONFIG_TYPE_BOOL);
	assert_false(config_setting_get_bool(s));
	assert_non_null(s = config_setting_get_member(env->group, "allow"));
	assert_int_equal(config_setting_type(s), CONFIG_TYPE_ARRAY);
	assert_int_equal(config_setting_length(s), 2);
	assert_string_equal(config_setting_get_string_elem(s, 1), "::1/128");
	assert_non_null(s = config_setting_get_member(env->group, "deny"));
	assert_int_equal(config_setting_length(s), 0);
	/* null: left out; the output fields: skipped. */
	assert_null(config_setting_get_member(env->group, "max_connections"));
	assert_null(config_setting_get_member(env->group, "read_only"));
	assert_null(config_setting_get_member(env->group, "origin"));
	assert_null(config_setting_get_member(env->group, "counters"));
	assert_int_equal(config_setting_length(env->group), 7);

	/* The group is emptied first. */
	rule = parse("{\"name\": \"other\"}");
	assert_int_equal(api_rule_fill_group(rule, env->group, &env->error), 0);
	json_decref(rule);
	assert_int_equal(config_setting_length(env->group), 1);
}

static void test_fill_group_refuses(void **state)
{
	struct env *env = *state;
	/* Values no field of the file can hold, the field named. */
	assert_refused(env, "{\"name\": \"a\", \"protocol\": {\"x\": 1}}", "protocol");
	assert_refused(env, "{\"name\": \"a\", \"allow\": [\"10.0.0.0/8\", 1]}", "allow");
	assert_refused(env, "{\"name\": \"a\", \"deny\": [[\"10.0.0.0/8\"]]}", "deny");
	assert_refused(env, "{\"name\": \"a\", \"allow\": [null]}", "allow");
	assert_non_null(strstr(env->err, "list of strings"));
	/* Names libconfig cannot hold: unknown, named. */
	assert_refused(env, "{\"name\": \"a\", \"a b\": 1}", "a b");
	assert_refused(env, "{\"name\": \"a\", \"1st\": 1}", "1st");
	assert_refused(env, "{\"name\": \"a\", \"\": 1}", "");
	assert_non_null(strstr(env->err, "unknown field"));
	assert_refused(env, "{\"name\": \"a\", \"a\\tb\": 1}", "a?b");
}

static const char *const valid_base =
	"\"protocol\": \"tcp\", \"external_port\": 8080, \"internal_ip\": \"192.0.2.10\"";

static void test_every_field(void **state)
{
	struct env *env = *state;
	assert_int_equal(read_rule(env, "{\"name\": \"ftp\", \"protocol\": \"tcp\","
				   " \"external_address\": \"127.0.0.1\", \"external_port\": 2121,"
				   " \"internal_ip\": \"192.0.2.10\", \"internal_port\": 21,"
				   " \"enabled\": true, \"ftp\": true, \"ftp_data_ports\": \"31000-31009\","
				   " \"access_log\": true, \"max_connections\": 100,"
				   " \"max_connections_per_source\": 5, \"max_flows_per_source\": 7,"
				   " \"allow\": [\"10.0.0.0/8\"], \"deny\": [\"0.0.0.0/0\"],"
				   " \"freebind\": true}"), 0);
	struct forward *f = &env->fwd;
	char text[NET_ADDR_STRLEN];
	assert_string_equal(f->name, "ftp");
	assert_int_equal(f->proto, FORWARD_TCP);
	assert_string_equal(net_addr_format_ip(&f->external_addr, text, sizeof text), "127.0.0.1");
	assert_int_equal(f->external_port_first, 2121);
	assert_int_equal(f->external_port_last, 2121);
	assert_string_equal(f->internal_host, "192.0.2.10");
	assert_int_equal(f->internal_port_first, 21);
	assert_true(f->enabled);
	assert_true(f->ftp);
	assert_int_equal(f->ftp_data_port_first, 31000);
	assert_int_equal(f->ftp_data_port_last, 31009);
	assert_true(f->access_log);
	assert_int_equal(f->max_connections, 100);
	assert_int_equal(f->max_connections_per_source, 5);
	assert_int_equal(f->max_flows_per_source, 7);
	assert_int_equal(f->acl.count, 2);
	assert_true(f->freebind);
	assert_false(f->from_rules_file);

	assert_int_equal(read_rule(env, "{\"name\": \"dns\", \"protocol\": \"udp\","
				   " \"external_address\": \"::1\", \"external_port\": \"5300-5309\","
				   " \"internal_ip\": \"2001:db8::5\", \"internal_port\": \"6300-6309\","
				   " \"udp_idle_timeout\": 2.5, \"proxy_protocol\": \"v2\","
				   " \"source\": \"client\", \"enabled\": false}"), 0);
	assert_int_equal(f->proto, FORWARD_UDP);
	assert_int_equal(f->external_port_last, 5309);
	assert_int_equal(f->internal_port_first, 6300);
	assert_int_equal(f->internal_port_last, 6309);
	assert_true(f->udp_idle_timeout == 2.5);
	assert_int_equal(f->proxy_protocol, PROXY_V2);
	assert_true(f->source_client);
	assert_false(f->enabled);

	/* Defaults: internal_port is external_port, enabled, wan_address. */
	char text2[256];
	snprintf(text2, sizeof text2, "{\"name\": \"web\", %s}", valid_base);
	assert_int_equal(read_rule(env, text2), 0);
	assert_int_equal(f->internal_port_first, 8080);
	assert_true(f->enabled);
	assert_string_equal(net_addr_format_ip(&f->external_addr, text, sizeof text), "0.0.0.0");
	assert_true(f->udp_idle_timeout == env->cfg.udp_idle_timeout);
	/* null is the same as leaving the field out; output fields are ignored. */
	snprintf(text2, sizeof text2, "{\"name\": \"web\", %s, \"internal_port\": null,"
		 " \"read_only\": true, \"origin\": 5, \"counters\": []}", valid_base);
	assert_int_equal(read_rule(env, text2), 0);
	assert_int_equal(f->internal_port_first, 8080);
}

static void test_errors_name_the_field(void **state)
{
	struct env *env = *state;
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"external_port\": 70000,"
		       " \"internal_ip\": \"192.0.2.1\"}", "external_port");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"external_port\": 0,"
		       " \"internal_ip\": \"192.0.2.1\"}", "external_port");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"external_port\": \"10-5\","
		       " \"internal_ip\": \"192.0.2.1\"}", "external_port");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"external_port\": \"10-15\","
		       " \"internal_ip\": \"192.0.2.1\", \"internal_port\": \"20-21\"}",
		       "internal_port");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"external_port\": 1,"
		       " \"internal_ip\": \"192.0.2.1\", \"internal_port\": 70000}", "internal_port");
	assert_refused(env, "{\"name\": \"a\", \"external_port\": 1, \"internal_ip\": \"192.0.2.1\"}",
		       "protocol");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"internal_ip\": \"192.0.2.1\"}",
		       "external_port");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"external_port\": 1}",
		       "internal_ip");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"sctp\", \"external_port\": 1,"
		       " \"internal_ip\": \"192.0.2.1\"}", "protocol");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"external_port\": 1,"
		       " \"internal_ip\": \"192.0.2.1\", \"enabled\": \"yes\"}", "enabled");
	assert_refused(env, "{\"name\": \"a\\nb\", \"protocol\": \"tcp\", \"external_port\": 1,"
		       " \"internal_ip\": \"192.0.2.1\"}", "name");
	assert_refused(env, "{\"name\": 5, \"protocol\": \"tcp\", \"external_port\": 1,"
		       " \"internal_ip\": \"192.0.2.1\"}", "name");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"external_port\": 1,"
		       " \"internal_ip\": \"192.0.2.1\", \"colour\": \"red\"}", "colour");
	assert_non_null(strstr(env->err, "colour"));
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"external_port\": 1,"
		       " \"external_address\": \"example.com\", \"internal_ip\": \"192.0.2.1\"}",
		       "external_address");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"udp\", \"external_port\": 1,"
		       " \"internal_ip\": \"192.0.2.1\", \"ftp\": true}", "ftp");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"external_port\": 1,"
		       " \"internal_ip\": \"192.0.2.1\", \"allow\": [\"10.0.0.0/33\"]}", "allow");
	assert_refused(env, "{\"name\": \"a\", \"protocol\": \"tcp\", \"external_port\": 1,"
		       " \"internal_ip\": \"192.0.2.1\", \"max_connections\": -1}", "max_connections");
}

/* The forward, out as JSON and back in: the same rule. */
static void round_trip(struct env *env, const char *text)
{
	if (read_rule(env, text) != 0) {
		print_error("%s: %s\n", text, env->err);
		fail();
	}
	struct forward first = env->fwd;
	json_t *out = api_rule_to_json(&first, &env->cfg);
	assert_non_null(out);
	assert_true(json_is_true(json_object_get(out, "read_only")));
	assert_true(json_is_string(json_object_get(out, "origin")));
	json_t *counters = json_object_get(out, "counters");
	assert_int_equal(json_object_size(counters), 8);
	assert_int_equal(json_integer_value(json_object_get(counters, "bytes_to_internal")), 0);
	char *dumped = json_dumps(out, JSON_COMPACT);
	json_decref(out);
	assert_non_null(dumped);
	if (read_rule(env, dumped) != 0) {
		print_error("%s read back from %s: %s\n", dumped, text, env->err);
		fail();
	}
	/*
	 * A disabled forward's host is not resolved (family 0), and
	 * forward_same_rule compares addresses: resolve both (numeric here).
	 */
	char why[256];
	if (!first.enabled) {
		assert_int_equal(net_addr_resolve(first.internal_host, 0, &first.internal_addr, why,
						  sizeof why), 0);
		assert_int_equal(net_addr_resolve(env->fwd.internal_host, 0,
						  &env->fwd.internal_addr, why, sizeof why), 0);
	}
	if (!forward_same_rule(&first, &env->fwd)) {
		print_error("not the same rule: %s\nfrom %s\n", dumped, text);
		fail();
	}
	free(dumped);
}

static void test_to_json_round_trip(void **state)
{
	struct env *env = *state;
	round_trip(env, "{\"name\": \"web\", \"protocol\": \"tcp\", \"external_port\": 8080,"
		   " \"internal_ip\": \"192.0.2.10\", \"internal_port\": 80}");
	round_trip(env, "{\"name\": \"game\", \"protocol\": \"both\", \"external_address\": \"::\","
		   " \"external_port\": \"30000-30009\", \"internal_ip\": \"2001:db8::5\","
		   " \"internal_port\": \"40000-40009\", \"udp_idle_timeout\": 5.5,"
		   " \"max_flows_per_source\": 0, \"max_connections_per_source\": 3}");
	round_trip(env, "{\"name\": \"ftp\", \"protocol\": \"tcp\", \"external_address\": \"127.0.0.1\","
		   " \"external_port\": 2121, \"internal_ip\": \"192.0.2.10\", \"internal_port\": 21,"
		   " \"ftp\": true, \"ftp_data_ports\": \"31000-31009\", \"access_log\": true,"
		   " \"allow\": [\"10.0.0.0/8\", \"2001:db8::/32\"], \"deny\": [\"0.0.0.0/0\"],"
		   " \"max_connections\": 10, \"freebind\": true}");
	round_trip(env, "{\"name\": \"off\", \"protocol\": \"udp\", \"external_port\": 53,"
		   " \"internal_ip\": \"192.0.2.53\", \"enabled\": false, \"proxy_protocol\": \"v2\","
		   " \"source\": \"client\"}");
	round_trip(env, "{\"name\": \"proxy\", \"protocol\": \"tcp\", \"external_port\": 443,"
		   " \"internal_ip\": \"192.0.2.1\", \"proxy_protocol\": \"v1\"}");
	/* The JSON output of a name that needs escaping. */
	round_trip(env, "{\"name\": \"<img src=x> \\\"q\\\" \\u00e9\", \"protocol\": \"tcp\","
		   " \"external_port\": 8081, \"internal_ip\": \"192.0.2.1\"}");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test_setup_teardown(test_fill_group_types, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_fill_group_refuses, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_every_field, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_errors_name_the_field, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_to_json_round_trip, env_setup, env_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
