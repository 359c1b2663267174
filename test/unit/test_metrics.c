/*
 * test_metrics.c - the exposition formats: Prometheus naming (prefix,
 * _total counters, HELP and TYPE once per name, samples of a name together),
 * label values escaped, families only for the forwards that have them, and
 * /status JSON escaping and shape.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "portrelay/metrics.h"

/* ---- helpers ---------------------------------------------------------------- */

static struct forward make_forward(const char *name, enum forward_proto proto, uint16_t port)
{
	struct forward fwd;
	memset(&fwd, 0, sizeof fwd);
	snprintf(fwd.name, sizeof fwd.name, "%s", name);
	fwd.proto = proto;
	assert_int_equal(net_addr_parse_ip("127.0.0.1", 0, &fwd.external_addr), 0);
	fwd.external_port_first = fwd.external_port_last = port;
	snprintf(fwd.internal_host, sizeof fwd.internal_host, "10.0.0.5");
	assert_int_equal(net_addr_parse_ip("10.0.0.5", 0, &fwd.internal_addr), 0);
	fwd.internal_port_first = fwd.internal_port_last = 80;
	fwd.enabled = true;
	return fwd;
}

static const struct metrics_process process = {
	.version = "1.2.3",
	.start_time = 1700000000.5,
	.open_fds = 12,
	.reloads_succeeded = 2,
	.reloads_failed = 1,
};

typedef void (*writer_fn)(FILE *, const struct metrics_process *, const struct metrics_forward *,
			  size_t);

/* Runs a writer into a malloc'd string. */
static char *render(writer_fn write, const struct metrics_forward *forwards, size_t count)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	assert_non_null(out);
	write(out, &process, forwards, count);
	assert_int_equal(fclose(out), 0);
	return text;
}

static char *escaped_label(const char *value)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	metrics_write_label_value(out, value);
	fclose(out);
	return text;
}

static char *escaped_json(const char *value)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	metrics_write_json_string(out, value);
	fclose(out);
	return text;
}

static size_t count_occurrences(const char *text, const char *needle)
{
	size_t n = 0;
	for (const char *p = strstr(text, needle); p != NULL; p = strstr(p + 1, needle))
		n++;
	return n;
}

/* ---- Prometheus ---------------------------------------------------------------- */

static void test_every_name_has_prefix_and_one_help_and_type(void **state)
{
	(void)state;
	struct forward web = make_forward("web", FORWARD_BOTH, 8080);
	struct forward dns = make_forward("dns", FORWARD_BOTH, 5353);
	struct metrics_forward forwards[] = { { .forward = &web }, { .forward = &dns } };
	char *text = render(metrics_write_prometheus, forwards, 2);

	char *copy = strdup(text);
	char seen[4096] = " ";
	char last_family[128] = "";
	for (char *line = strtok(copy, "\n"); line != NULL; line = strtok(NULL, "\n")) {
		char name[128];
		if (strncmp(line, "# HELP ", 7) == 0) {
			assert_int_equal(sscanf(line + 7, "%127s", name), 1);
			char key[140];
			snprintf(key, sizeof key, " %s ", name);
			assert_null(strstr(seen, key));   /* HELP once per name */
			strncat(seen, name, sizeof seen - strlen(seen) - 2);
			strcat(seen, " ");
			snprintf(last_family, sizeof last_family, "%s", name);
			continue;
		}
		if (strncmp(line, "# TYPE ", 7) == 0) {
			char type[32];
			assert_int_equal(sscanf(line + 7, "%127s %31s", name, type), 2);
			assert_string_equal(name, last_family);
			bool counter = strcmp(type, "counter") == 0;
			size_t len = strlen(name);
			/* Counters and only counters end in _total. */
			assert_int_equal(counter, len > 6 && strcmp(name + len - 6, "_total") == 0);
			continue;
		}
		/* A sample belongs to the family of the HELP above it. */
		assert_int_equal(strncmp(line, "portrelay_", 10), 0);
		size_t len = strcspn(line, "{ ");
		assert_int_equal(len, strlen(last_family));
		assert_int_equal(strncmp(line, last_family, len), 0);
	}
	free(copy);
	assert_non_null(strstr(text, "portrelay_build_info{version=\"1.2.3\"} 1\n"));
	assert_non_null(strstr(text, "portrelay_start_time_seconds 1700000000.500\n"));
	assert_non_null(strstr(text, "portrelay_open_fds 12\n"));
	assert_non_null(strstr(text, "portrelay_reloads_total{result=\"success\"} 2\n"));
	assert_non_null(strstr(text, "portrelay_reloads_total{result=\"failure\"} 1\n"));
	assert_int_equal(count_occurrences(text, "# TYPE portrelay_tcp_bytes_total counter\n"), 1);
	free(text);
}

static void test_counters_per_forward_with_labels(void **state)
{
	(void)state;
	struct forward web = make_forward("web", FORWARD_TCP, 8080);
	struct forward dns = make_forward("dns", FORWARD_UDP, 5353);
	struct metrics_forward forwards[] = { { .forward = &web }, { .forward = &dns } };
	forwards[0].counters.tcp_accepted = 7;
	forwards[0].counters.bytes_to_internal = 1000;
	forwards[0].counters.bytes_to_client = 123456789012ULL;
	forwards[0].counters.tcp_connect_refused = 3;
	forwards[0].counters.tcp_connect_timeout = 4;
	forwards[1].counters.udp_datagrams_to_client = 9;
	forwards[1].counters.udp_bytes_to_internal = 640;
	forwards[1].counters.udp_bytes_to_client = 4096;
	forwards[1].counters.udp_dropped_table_full = 5;
	forwards[1].udp_flows_active = 6;
	char *text = render(metrics_write_prometheus, forwards, 2);

	assert_non_null(strstr(text, "portrelay_tcp_connections_total{forward=\"web\"} 7\n"));
	assert_non_null(strstr(text,
		"portrelay_tcp_bytes_total{forward=\"web\",direction=\"to_internal\"} 1000\n"));
	assert_non_null(strstr(text,
		"portrelay_tcp_bytes_total{forward=\"web\",direction=\"to_client\"} 123456789012\n"));
	assert_non_null(strstr(text,
		"portrelay_tcp_connect_failures_total{forward=\"web\",reason=\"refused\"} 3\n"));
	assert_non_null(strstr(text,
		"portrelay_tcp_connect_failures_total{forward=\"web\",reason=\"timeout\"} 4\n"));
	assert_non_null(strstr(text,
		"portrelay_tcp_connect_failures_total{forward=\"web\",reason=\"other\"} 0\n"));
	assert_non_null(strstr(text,
		"portrelay_udp_datagrams_total{forward=\"dns\",direction=\"to_client\"} 9\n"));
	assert_non_null(strstr(text,
		"portrelay_udp_bytes_total{forward=\"dns\",direction=\"to_internal\"} 640\n"));
	assert_non_null(strstr(text,
		"portrelay_udp_bytes_total{forward=\"dns\",direction=\"to_client\"} 4096\n"));
	assert_non_null(strstr(text,
		"portrelay_udp_dropped_datagrams_total{forward=\"dns\",reason=\"table_full\"} 5\n"));
	assert_non_null(strstr(text, "portrelay_udp_flows_active{forward=\"dns\"} 6\n"));
	/* A TCP forward has no UDP samples and the other way round; FTP only with ftp. */
	assert_null(strstr(text, "portrelay_udp_flows_active{forward=\"web\"}"));
	assert_null(strstr(text, "portrelay_tcp_connections_total{forward=\"dns\"}"));
	assert_null(strstr(text, "portrelay_ftp_"));
	free(text);
}

static void test_disabled_forward_has_no_samples(void **state)
{
	(void)state;
	struct forward off = make_forward("off", FORWARD_BOTH, 8080);
	off.enabled = false;
	struct metrics_forward forwards[] = { { .forward = &off } };
	char *text = render(metrics_write_prometheus, forwards, 1);
	assert_null(strstr(text, "forward="));
	/* And no HELP without a sample either. */
	assert_null(strstr(text, "# HELP portrelay_tcp_"));
	free(text);
}

static void test_ftp_forward_has_ftp_family(void **state)
{
	(void)state;
	struct forward ftp = make_forward("ftp", FORWARD_TCP, 21);
	ftp.ftp = true;
	struct metrics_forward forwards[] = { { .forward = &ftp } };
	forwards[0].counters.ftp_data_expired = 2;
	char *text = render(metrics_write_prometheus, forwards, 1);
	assert_non_null(strstr(text,
		"portrelay_ftp_data_listeners_closed_total{forward=\"ftp\",result=\"expired\"} 2\n"));
	free(text);
}

static void test_label_values_are_escaped(void **state)
{
	(void)state;
	char *text = escaped_label("a\"b\\c\nd");
	assert_string_equal(text, "a\\\"b\\\\c\\nd");
	free(text);

	struct forward odd = make_forward("say \"hi\" \\ there", FORWARD_TCP, 8080);
	struct metrics_forward forwards[] = { { .forward = &odd } };
	text = render(metrics_write_prometheus, forwards, 1);
	assert_non_null(strstr(text,
		"portrelay_tcp_connections_total{forward=\"say \\\"hi\\\" \\\\ there\"} 0\n"));
	free(text);
}

/* ---- JSON ------------------------------------------------------------------------ */

static void test_json_strings_are_escaped(void **state)
{
	(void)state;
	char *text = escaped_json("q\"b\\n\nt\tc\x01" "d\x7f");
	assert_string_equal(text, "\"q\\\"b\\\\n\\nt\\tc\\u0001d\\u007f\"");
	free(text);
	text = escaped_json("caf\xc3\xa9");   /* UTF-8 passes through */
	assert_string_equal(text, "\"caf\xc3\xa9\"");
	free(text);
}

static void test_json_has_rules_listeners_and_counters(void **state)
{
	(void)state;
	struct forward web = make_forward("we\"b", FORWARD_BOTH, 8080);
	web.external_port_last = 8089;
	web.internal_port_first = 80;
	web.internal_port_last = 89;
	struct forward off = make_forward("off", FORWARD_UDP, 9000);
	off.enabled = false;
	struct metrics_forward forwards[] = { { .forward = &web }, { .forward = &off } };
	forwards[0].counters.tcp_accepted = 4;
	forwards[0].counters.tcp_connect_other = 1;
	forwards[0].udp_flows_active = 2;
	char *text = render(metrics_write_json, forwards, 2);

	assert_int_equal(strncmp(text, "{\"version\":\"1.2.3\",", 19), 0);
	assert_non_null(strstr(text, "\"name\":\"we\\\"b\""));
	assert_non_null(strstr(text, "\"protocol\":\"both\",\"external_address\":\"127.0.0.1\","
				     "\"external_port\":\"8080-8089\",\"internal_ip\":\"10.0.0.5\","
				     "\"internal_port\":\"80-89\",\"enabled\":true"));
	assert_non_null(strstr(text, "\"listeners\":[{\"protocol\":\"tcp\",\"address\":"
				     "\"127.0.0.1\",\"port\":\"8080-8089\",\"sockets\":10},"
				     "{\"protocol\":\"udp\""));
	assert_non_null(strstr(text, "\"tcp_connections_total\":4"));
	assert_non_null(strstr(text, "\"tcp_connect_failures_total\":{\"refused\":0,"
				     "\"timeout\":0,\"other\":1}"));
	assert_non_null(strstr(text, "\"udp_flows_active\":2"));
	/* A hand-written rule is read-only; one of admin.rules_file is not. */
	assert_non_null(strstr(text, "\"ftp\":false,\"read_only\":true,\"listeners\":[{"));
	/* A disabled forward is listed, with its rule, and listens nowhere. */
	assert_non_null(strstr(text, "\"enabled\":false,\"ftp\":false,\"read_only\":true,"
				     "\"listeners\":[],"));
	assert_non_null(strstr(text, "\"reloads_total\":{\"success\":2,\"failure\":1}"));
	/* Balanced braces and brackets outside strings: a cheap well-formedness check. */
	int depth = 0;
	bool in_string = false;
	for (const char *p = text; *p != '\0'; p++) {
		if (in_string) {
			if (*p == '\\')
				p++;
			else if (*p == '"')
				in_string = false;
			continue;
		}
		if (*p == '"')
			in_string = true;
		else if (*p == '{' || *p == '[')
			depth++;
		else if (*p == '}' || *p == ']')
			assert_true(--depth >= 0);
	}
	assert_int_equal(depth, 0);
	assert_false(in_string);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_name_has_prefix_and_one_help_and_type),
		cmocka_unit_test(test_counters_per_forward_with_labels),
		cmocka_unit_test(test_disabled_forward_has_no_samples),
		cmocka_unit_test(test_ftp_forward_has_ftp_family),
		cmocka_unit_test(test_label_values_are_escaped),
		cmocka_unit_test(test_json_strings_are_escaped),
		cmocka_unit_test(test_json_has_rules_listeners_and_counters),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
