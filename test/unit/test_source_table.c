/*
 * test_source_table.c - per-source counts shared by the workers: limits,
 * owners kept apart, entries gone at zero, and four threads taking and
 * releasing at once without losing a count.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "portrelay/source_table.h"

static void source_of(uint8_t out[SOURCE_KEY_LEN], unsigned n)
{
	memset(out, 0, SOURCE_KEY_LEN);
	memcpy(out, &n, sizeof n);
}

static void test_limit_holds_per_source_and_owner(void **state)
{
	(void)state;
	struct source_table *table = source_table_new();
	assert_non_null(table);
	int owner_a, owner_b;
	uint8_t one[SOURCE_KEY_LEN], two[SOURCE_KEY_LEN];
	source_of(one, 1);
	source_of(two, 2);

	for (int i = 0; i < 3; i++)
		assert_true(source_table_take(table, &owner_a, one, 3));
	assert_false(source_table_take(table, &owner_a, one, 3));
	assert_int_equal(source_table_count(table, &owner_a, one), 3);
	/* Another source, and the same source under another owner, are apart. */
	assert_true(source_table_take(table, &owner_a, two, 3));
	assert_true(source_table_take(table, &owner_b, one, 3));
	assert_int_equal(source_table_count(table, &owner_b, one), 1);

	source_table_release(table, &owner_a, one);
	assert_int_equal(source_table_count(table, &owner_a, one), 2);
	assert_true(source_table_take(table, &owner_a, one, 3));
	assert_false(source_table_take(table, &owner_a, one, 3));
	source_table_free(table);
}

static void test_zero_limit_counts_nothing(void **state)
{
	(void)state;
	struct source_table *table = source_table_new();
	int owner;
	uint8_t one[SOURCE_KEY_LEN];
	source_of(one, 1);
	for (int i = 0; i < 1000; i++)
		assert_true(source_table_take(table, &owner, one, 0));
	assert_int_equal(source_table_count(table, &owner, one), 0);
	source_table_free(table);
}

/* Many sources come and go: every entry is freed at zero (ASan sees leaks). */
static void test_entries_go_at_zero(void **state)
{
	(void)state;
	struct source_table *table = source_table_new();
	int owner;
	uint8_t source[SOURCE_KEY_LEN];
	for (unsigned n = 0; n < 20000; n++) {
		source_of(source, n);
		assert_true(source_table_take(table, &owner, source, 1));
	}
	for (unsigned n = 0; n < 20000; n++) {
		source_of(source, n);
		assert_int_equal(source_table_count(table, &owner, source), 1);
		source_table_release(table, &owner, source);
		assert_int_equal(source_table_count(table, &owner, source), 0);
	}
	source_table_free(table);
}

struct hammer {
	struct source_table *table;
	int *owner;
	unsigned taken;
};

static void *hammer_run(void *arg)
{
	struct hammer *h = arg;
	uint8_t source[SOURCE_KEY_LEN];
	source_of(source, 7);
	for (int i = 0; i < 20000; i++) {
		if (source_table_take(h->table, h->owner, source, 100)) {
			h->taken++;
			source_table_release(h->table, h->owner, source);
		}
	}
	return NULL;
}

/* Four threads on one source: the count returns to zero, the limit is never passed. */
static void test_threads_share_counts(void **state)
{
	(void)state;
	struct source_table *table = source_table_new();
	int owner;
	pthread_t threads[4];
	struct hammer hammers[4];
	for (int i = 0; i < 4; i++) {
		hammers[i] = (struct hammer){ .table = table, .owner = &owner };
		assert_int_equal(pthread_create(&threads[i], NULL, hammer_run, &hammers[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(threads[i], NULL);
		assert_int_equal(hammers[i].taken, 20000);
	}
	uint8_t source[SOURCE_KEY_LEN];
	source_of(source, 7);
	assert_int_equal(source_table_count(table, &owner, source), 0);
	source_table_free(table);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_limit_holds_per_source_and_owner),
		cmocka_unit_test(test_zero_limit_counts_nothing),
		cmocka_unit_test(test_entries_go_at_zero),
		cmocka_unit_test(test_threads_share_counts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
