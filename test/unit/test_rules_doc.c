/*
 * test_rules_doc.c - admin.rules_file as the Port Forwarding API edits it
 * (rules_doc.h): loaded (a missing file is an empty one), changed in
 * memory, written whole to a candidate beside it that the file's own reader
 * (config_load_rules_file) reads back with the same rules.
 *
 * Each test works in a fresh mkdtemp directory under /tmp, removed by the
 * teardown.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "portrelay/config.h"
#include "portrelay/rules_doc.h"

struct env {
	char dir[64];
	char path[128];          /* the rules file */
	struct rules_doc doc;
	bool loaded;
	char err[1024];
};

static int env_setup(void **state)
{
	struct env *env = calloc(1, sizeof *env);
	if (env == NULL)
		return -1;
	snprintf(env->dir, sizeof env->dir, "/tmp/portrelay-test-XXXXXX");
	if (mkdtemp(env->dir) == NULL) {
		free(env);
		return -1;
	}
	snprintf(env->path, sizeof env->path, "%s/rules.conf", env->dir);
	*state = env;
	return 0;
}

static int env_teardown(void **state)
{
	struct env *env = *state;
	if (env->loaded)
		rules_doc_free(&env->doc);
	DIR *d = opendir(env->dir);
	struct dirent *e;
	char path[400];
	while (d != NULL && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "%s/%s", env->dir, e->d_name);
		unlink(path);
	}
	if (d != NULL)
		closedir(d);
	rmdir(env->dir);
	free(env);
	return 0;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
}

static void load(struct env *env)
{
	if (rules_doc_load(&env->doc, env->path, env->err, sizeof env->err) != 0) {
		print_error("%s\n", env->err);
		fail();
	}
	env->loaded = true;
}

/* Files in the directory but the rules file itself. */
static int others_in_dir(const struct env *env)
{
	DIR *d = opendir(env->dir);
	struct dirent *e;
	int n = 0;
	while (d != NULL && (e = readdir(d)) != NULL)
		n += e->d_name[0] != '.' && strcmp(e->d_name, "rules.conf") != 0;
	if (d != NULL)
		closedir(d);
	return n;
}

/* A rule group, as the API fills it. */
static config_setting_t *add_rule(struct rules_doc *doc, const char *name, int port,
				  const char *internal)
{
	config_setting_t *group = rules_doc_append(doc);
	assert_non_null(group);
	config_setting_t *s = config_setting_add(group, "name", CONFIG_TYPE_STRING);
	assert_non_null(s);
	config_setting_set_string(s, name);
	config_setting_set_string(config_setting_add(group, "protocol", CONFIG_TYPE_STRING), "tcp");
	config_setting_set_int(config_setting_add(group, "external_port", CONFIG_TYPE_INT), port);
	config_setting_set_string(config_setting_add(group, "internal_ip", CONFIG_TYPE_STRING),
				  internal);
	return group;
}

static void test_missing_file_is_empty(void **state)
{
	struct env *env = *state;
	load(env);
	assert_non_null(env->doc.forwards);
	assert_true(config_setting_is_list(env->doc.forwards));
	assert_int_equal(config_setting_length(env->doc.forwards), 0);
	assert_null(rules_doc_find(&env->doc, "web", NULL));
	assert_string_equal(env->doc.path, env->path);
	/* Loading writes nothing. */
	struct stat st;
	assert_int_equal(stat(env->path, &st), -1);
	assert_int_equal(others_in_dir(env), 0);
}

static void test_load_refuses(void **state)
{
	struct env *env = *state;
	write_file(env->path, "forwards = ( { name = \"a\"; }\n  oops\n");
	assert_int_equal(rules_doc_load(&env->doc, env->path, env->err, sizeof env->err), -1);
	assert_non_null(strstr(env->err, env->path));
	write_file(env->path, "forwards = 5;\n");
	assert_int_equal(rules_doc_load(&env->doc, env->path, env->err, sizeof env->err), -1);
	assert_non_null(strstr(env->err, "forwards must be a list"));
	/* A file without forwards: an empty document. */
	write_file(env->path, "# nothing yet\n");
	load(env);
	assert_int_equal(config_setting_length(env->doc.forwards), 0);
}

static void test_edit(void **state)
{
	struct env *env = *state;
	write_file(env->path, "forwards = (\n"
		   "  { name = \"one\"; protocol = \"tcp\"; external_port = 1001;"
		   " internal_ip = \"192.0.2.1\"; },\n"
		   "  { name = \"two\"; protocol = \"udp\"; external_port = 1002;"
		   " internal_ip = \"192.0.2.2\"; enabled = \"no\"; }\n);\n");
	load(env);
	int index = -1;
	assert_non_null(rules_doc_find(&env->doc, "two", &index));
	assert_int_equal(index, 1);
	assert_non_null(rules_doc_find(&env->doc, "one", &index));
	assert_int_equal(index, 0);
	assert_null(rules_doc_find(&env->doc, "three", &index));
	assert_null(rules_doc_find(&env->doc, "on", NULL));

	add_rule(&env->doc, "three", 1003, "192.0.2.3");
	assert_non_null(rules_doc_find(&env->doc, "three", &index));
	assert_int_equal(index, 2);

	/* enabled: added, changed, and replaced when it was no bool. */
	config_setting_t *one = rules_doc_find(&env->doc, "one", NULL);
	int value = -1;
	assert_int_equal(rules_doc_set_enabled(one, false), 0);
	assert_int_equal(config_setting_lookup_bool(one, "enabled", &value), CONFIG_TRUE);
	assert_int_equal(value, 0);
	assert_int_equal(rules_doc_set_enabled(one, true), 0);
	assert_int_equal(config_setting_lookup_bool(one, "enabled", &value), CONFIG_TRUE);
	assert_int_equal(value, 1);
	config_setting_t *two = rules_doc_find(&env->doc, "two", NULL);
	assert_int_equal(rules_doc_set_enabled(two, true), 0);
	assert_int_equal(config_setting_lookup_bool(two, "enabled", &value), CONFIG_TRUE);
	assert_int_equal(value, 1);

	assert_int_equal(rules_doc_remove(&env->doc, 0), 0);
	assert_null(rules_doc_find(&env->doc, "one", NULL));
	assert_non_null(rules_doc_find(&env->doc, "two", &index));
	assert_int_equal(index, 0);
	assert_int_equal(config_setting_length(env->doc.forwards), 2);
	/* Nothing is written until a candidate is. */
	assert_int_equal(others_in_dir(env), 0);
}

static void test_append_is_bounded(void **state)
{
	struct env *env = *state;
	load(env);
	for (int i = 0; i < RULES_DOC_MAX; i++)
		assert_non_null(rules_doc_append(&env->doc));
	assert_null(rules_doc_append(&env->doc));
	assert_int_equal(config_setting_length(env->doc.forwards), RULES_DOC_MAX);
}

static void test_write_candidate_reads_back(void **state)
{
	struct env *env = *state;
	load(env);
	add_rule(&env->doc, "web", 18080, "192.0.2.10");
	config_setting_t *g = add_rule(&env->doc, "a \"quoted\" \\ name", 18081, "backend.example");
	assert_int_equal(rules_doc_set_enabled(g, false), 0);
	config_setting_t *allow = config_setting_add(g, "allow", CONFIG_TYPE_ARRAY);
	config_setting_set_string_elem(allow, -1, "10.0.0.0/8");
	config_setting_set_float(config_setting_add(g, "udp_idle_timeout", CONFIG_TYPE_FLOAT), 0.1);

	char candidate[600];
	assert_int_equal(rules_doc_write_candidate(&env->doc, candidate, sizeof candidate,
						   env->err, sizeof env->err), 0);
	/* Beside the file, under its name; the file itself untouched. */
	char prefix[200];
	snprintf(prefix, sizeof prefix, "%s.new-", env->path);
	assert_memory_equal(candidate, prefix, strlen(prefix));
	struct stat st;
	assert_int_equal(stat(candidate, &st), 0);
	assert_int_equal(stat(env->path, &st), -1);
	assert_int_equal(others_in_dir(env), 1);

	/* The header comment comes first. */
	FILE *f = fopen(candidate, "r");
	char line[256];
	assert_non_null(f);
	assert_non_null(fgets(line, sizeof line, f));
	fclose(f);
	assert_memory_equal(line, "# admin.rules_file", strlen("# admin.rules_file"));

	/* The file's reader takes it, with the same rules, as rules of the API. */
	struct config cfg;
	config_defaults(&cfg);
	if (config_load_rules_file(&cfg, env->path, candidate, env->err, sizeof env->err) != 0) {
		print_error("%s\n", env->err);
		fail();
	}
	assert_int_equal(cfg.forward_count, 2);
	assert_string_equal(cfg.forwards[0].name, "web");
	assert_int_equal(cfg.forwards[0].external_port_first, 18080);
	assert_true(cfg.forwards[0].enabled);
	assert_true(cfg.forwards[0].from_rules_file);
	assert_string_equal(cfg.forwards[1].name, "a \"quoted\" \\ name");
	assert_string_equal(cfg.forwards[1].internal_host, "backend.example");
	assert_false(cfg.forwards[1].enabled);
	assert_int_equal(cfg.forwards[1].acl.count, 1);
	assert_true(cfg.forwards[1].udp_idle_timeout == 0.1);
	assert_true(cfg.forwards[1].from_rules_file);
	/* Messages name the rules file, not the candidate. */
	assert_non_null(strstr(cfg.forwards[0].origin, env->path));
	assert_null(strstr(cfg.forwards[0].origin, ".new-"));
	config_free(&cfg);

	/* Loaded again as a document: the same groups. */
	rules_doc_free(&env->doc);
	env->loaded = false;
	assert_int_equal(rename(candidate, env->path), 0);
	load(env);
	assert_int_equal(config_setting_length(env->doc.forwards), 2);
	assert_non_null(rules_doc_find(&env->doc, "a \"quoted\" \\ name", NULL));

	/* An empty document writes a file that holds no rule. */
	rules_doc_remove(&env->doc, 1);
	rules_doc_remove(&env->doc, 0);
	assert_int_equal(rules_doc_write_candidate(&env->doc, candidate, sizeof candidate,
						   env->err, sizeof env->err), 0);
	config_defaults(&cfg);
	assert_int_equal(config_load_rules_file(&cfg, env->path, candidate, env->err,
						sizeof env->err), 0);
	assert_int_equal(cfg.forward_count, 0);
	config_free(&cfg);
	unlink(candidate);
}

static void test_write_candidate_fails_cleanly(void **state)
{
	struct env *env = *state;
	char missing[200], candidate[600];
	snprintf(missing, sizeof missing, "%s/nowhere/rules.conf", env->dir);
	assert_int_equal(rules_doc_load(&env->doc, missing, env->err, sizeof env->err), 0);
	env->loaded = true;
	add_rule(&env->doc, "web", 18080, "192.0.2.10");
	env->err[0] = '\0';
	assert_int_equal(rules_doc_write_candidate(&env->doc, candidate, sizeof candidate,
						   env->err, sizeof env->err), -1);
	assert_true(env->err[0] != '\0');
	assert_non_null(strstr(env->err, missing));
	/* Nothing left behind, nothing made. */
	struct stat st;
	char dir[200];
	snprintf(dir, sizeof dir, "%s/nowhere", env->dir);
	assert_int_equal(stat(dir, &st), -1);
	assert_int_equal(others_in_dir(env), 0);

	/* A candidate name that does not fit: refused, nothing written. */
	assert_int_equal(rules_doc_write_candidate(&env->doc, candidate, 10, env->err,
						   sizeof env->err), -1);
	assert_true(env->err[0] != '\0');
	assert_int_equal(others_in_dir(env), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_missing_file_is_empty, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_load_refuses, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_edit, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_append_is_bounded, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_write_candidate_reads_back, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_write_candidate_fails_cleanly, env_setup,
						env_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
