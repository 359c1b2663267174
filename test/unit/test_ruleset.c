/*
 * test_ruleset.c - published forward tables (ruleset.h): the configuration
 * moved in, counters that belong to a forward's place and run on across
 * reloads, reference counts (run under ASan too: a stats block freed too
 * early or never is caught there), the retired totals of removed places,
 * generations, and the per-worker counter blocks' cache lines.
 *
 * Configurations are built from -L specs (config_add_spec + config_finish),
 * as a reload builds them from its sources.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "portrelay/config.h"
#include "portrelay/counters.h"
#include "portrelay/ruleset.h"

#define WORKERS 3

/* A finished configuration of the given specs (NULL terminated). */
static void build(struct config *cfg, const char *const *specs)
{
	char err[1024];

	config_defaults(cfg);
	for (size_t i = 0; specs[i] != NULL; i++) {
		if (config_add_spec(cfg, specs[i], err, sizeof err) != 0) {
			print_error("%s rejected: %s\n", specs[i], err);
			fail();
		}
	}
	if (config_finish(cfg, err, sizeof err) != 0) {
		print_error("config_finish failed: %s\n", err);
		fail();
	}
}

/* A ruleset of the given specs (NULL terminated), after previous (may be NULL). */
static struct ruleset *publish(const struct ruleset *previous, const char *const *specs)
{
	struct config cfg;

	build(&cfg, specs);
	struct ruleset *rules = ruleset_new(&cfg, previous, WORKERS);
	assert_non_null(rules);
	assert_null(cfg.forwards);
	return rules;
}

#define SPECS(...) ((const char *const[]){ __VA_ARGS__, NULL })

static const struct forward *forward_at(const struct ruleset *rules, size_t i)
{
	assert_true(i < rules->cfg.forward_count);
	return &rules->cfg.forwards[i];
}

static unsigned stats_refs(const struct forward *fwd)
{
	return atomic_load(&fwd->stats->refs);
}

static struct relay_counters sum_of(const struct forward *fwd)
{
	struct relay_counters sum;

	forward_stats_sum(fwd->stats, &sum);
	return sum;
}

static struct relay_counters retired_of(const struct ruleset *rules)
{
	struct relay_counters sum;

	memset(&sum, 0, sizeof sum);
	ruleset_add_retired_counters(rules, &sum);
	return sum;
}

static bool counters_are_zero(const struct relay_counters *c)
{
	static const struct relay_counters zero;

	return memcmp(c, &zero, sizeof zero) == 0;
}

/* Some traffic of fwd in every worker: worker w adds w + 1 (times a scale). */
static void count_some(const struct forward *fwd, uint64_t scale)
{
	for (unsigned w = 0; w < WORKERS; w++) {
		struct relay_counters *c = forward_counters(fwd, w);
		c->tcp_accepted += (w + 1) * scale;
		c->tcp_active += 1;
		c->bytes_to_internal += 100 * (w + 1) * scale;
		c->udp_datagrams_to_client += 7 * scale;
	}
}

/* ---- moving the configuration in ------------------------------------------------ */

static void test_new_moves_the_config_in_and_leaves_cfg_empty(void **state)
{
	struct config cfg;

	(void)state;
	build(&cfg, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80", "udp:127.0.0.1:5353:127.0.0.1:53"));
	cfg.drain_timeout = 2.5;
	cfg.log_level = LOG_LEVEL_DEBUG;
	snprintf(cfg.wan_address, sizeof cfg.wan_address, "127.0.0.9");
	struct forward *table = cfg.forwards;
	assert_null(table[0].stats);   /* not published yet */

	struct ruleset *rules = ruleset_new(&cfg, NULL, WORKERS);
	assert_non_null(rules);

	/* cfg is as config_defaults leaves it: no table, default settings. */
	assert_null(cfg.forwards);
	assert_int_equal(cfg.forward_count, 0);
	assert_true(cfg.drain_timeout == 0.0);
	assert_int_equal(cfg.log_level, LOG_LEVEL_INFO);
	assert_string_equal(cfg.wan_address, "0.0.0.0");
	config_free(&cfg);   /* harmless: nothing of the ruleset's is freed (ASan) */

	/* The ruleset has the table itself and the settings. */
	assert_ptr_equal(rules->cfg.forwards, table);
	assert_int_equal(rules->cfg.forward_count, 2);
	assert_true(rules->cfg.drain_timeout == 2.5);
	assert_int_equal(rules->cfg.log_level, LOG_LEVEL_DEBUG);
	assert_string_equal(rules->cfg.wan_address, "127.0.0.9");
	assert_int_equal(atomic_load(&rules->refs), 1);
	assert_int_equal(rules->generation, 1);

	/* Every forward has stats of its own, with one zeroed block per worker. */
	for (size_t i = 0; i < 2; i++) {
		const struct forward *fwd = forward_at(rules, i);
		assert_non_null(fwd->stats);
		assert_int_equal(fwd->stats->worker_count, WORKERS);
		assert_int_equal(stats_refs(fwd), 1);
		assert_int_equal(atomic_load(&fwd->stats->udp_flows_open), 0);
		struct relay_counters sum = sum_of(fwd);
		assert_true(counters_are_zero(&sum));
	}
	assert_ptr_not_equal(forward_at(rules, 0)->stats, forward_at(rules, 1)->stats);
	ruleset_unref(rules);
}

static void test_first_ruleset_has_no_retired_counts_and_generations_count_up(void **state)
{
	(void)state;
	struct ruleset *r1 = publish(NULL, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80"));
	struct ruleset *r2 = publish(r1, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80"));
	struct ruleset *r3 = publish(r2, SPECS("tcp:127.0.0.1:8081:127.0.0.1:80"));
	struct ruleset *r4 = publish(r3, SPECS("tcp:127.0.0.1:8081:127.0.0.1:80"));

	assert_int_equal(r1->generation, 1);
	assert_int_equal(r2->generation, 2);
	assert_int_equal(r3->generation, 3);
	assert_int_equal(r4->generation, 4);
	struct relay_counters retired = retired_of(r4);
	assert_true(counters_are_zero(&retired));

	/* A ruleset published without a previous one starts a family of its own. */
	struct ruleset *other = publish(NULL, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80"));
	assert_int_equal(other->generation, 1);
	assert_ptr_not_equal(other->family, r1->family);
	assert_ptr_equal(r4->family, r1->family);
	assert_ptr_not_equal(forward_at(other, 0)->stats, forward_at(r2, 0)->stats);

	ruleset_unref(r1);
	ruleset_unref(r2);
	ruleset_unref(r3);
	ruleset_unref(r4);
	ruleset_unref(other);
}

/* ---- counters follow the place ----------------------------------------------------- */

static void test_same_place_shares_stats_and_counters_carry_on(void **state)
{
	(void)state;
	struct ruleset *old = publish(NULL, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80",
						  "both:127.0.0.1:9000-9004:127.0.0.1:19000-19004"));
	const struct forward *old_tcp = forward_at(old, 0), *old_both = forward_at(old, 1);
	count_some(old_tcp, 1);
	count_some(old_both, 10);
	atomic_store(&old_both->stats->udp_flows_open, 4);

	/* The same forwards, listed the other way round. */
	struct ruleset *new = publish(old, SPECS("both:127.0.0.1:9000-9004:127.0.0.1:19000-19004",
						 "tcp:127.0.0.1:8080:127.0.0.1:80"));
	const struct forward *new_both = forward_at(new, 0), *new_tcp = forward_at(new, 1);
	assert_ptr_equal(new_tcp->stats, old_tcp->stats);
	assert_ptr_equal(new_both->stats, old_both->stats);
	assert_int_equal(stats_refs(new_tcp), 2);
	assert_int_equal(stats_refs(new_both), 2);

	/* What the old forwards counted is read through the new ones... */
	struct relay_counters sum = sum_of(new_tcp);
	assert_int_equal(sum.tcp_accepted, 1 + 2 + 3);
	assert_int_equal(sum.tcp_active, WORKERS);
	assert_int_equal(sum.bytes_to_internal, 100 + 200 + 300);
	assert_int_equal(sum.udp_datagrams_to_client, 7 * WORKERS);
	sum = sum_of(new_both);
	assert_int_equal(sum.tcp_accepted, 10 * (1 + 2 + 3));
	assert_int_equal(atomic_load(&new_both->stats->udp_flows_open), 4);

	/* ... and counting goes on in the same blocks. */
	forward_counters(new_tcp, 1)->tcp_accepted += 1000;
	assert_int_equal(forward_counters(old_tcp, 1)->tcp_accepted, 1002);
	sum = sum_of(old_tcp);
	assert_int_equal(sum.tcp_accepted, 1006);

	ruleset_unref(old);
	ruleset_unref(new);
}

static void test_changed_target_in_the_same_place_shares_stats(void **state)
{
	(void)state;
	struct ruleset *old = publish(NULL, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80",
						  "udp:127.0.0.1:5353-5354:127.0.0.1:53-54"));
	count_some(forward_at(old, 0), 1);
	count_some(forward_at(old, 1), 2);

	/* Another host and other ports behind the same external places. */
	struct ruleset *new = publish(old, SPECS("tcp:127.0.0.1:8080:127.0.0.2:8000",
						 "udp:127.0.0.1:5353-5354:[::1]:1053-1054"));
	assert_false(forward_same_rule(forward_at(old, 0), forward_at(new, 0)));
	assert_false(forward_same_rule(forward_at(old, 1), forward_at(new, 1)));
	assert_ptr_equal(forward_at(new, 0)->stats, forward_at(old, 0)->stats);
	assert_ptr_equal(forward_at(new, 1)->stats, forward_at(old, 1)->stats);
	struct relay_counters sum = sum_of(forward_at(new, 1));
	assert_int_equal(sum.tcp_accepted, 2 * (1 + 2 + 3));

	ruleset_unref(old);
	ruleset_unref(new);
}

static void test_new_place_gets_fresh_zeroed_stats(void **state)
{
	(void)state;
	struct ruleset *old = publish(NULL, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80"));
	count_some(forward_at(old, 0), 1);

	struct ruleset *new = publish(old, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80",
						 "tcp:127.0.0.1:8081:127.0.0.1:80"));
	const struct forward *added = forward_at(new, 1);
	assert_ptr_not_equal(added->stats, forward_at(old, 0)->stats);
	assert_int_equal(stats_refs(added), 1);
	assert_int_equal(added->stats->worker_count, WORKERS);
	struct relay_counters sum = sum_of(added);
	assert_true(counters_are_zero(&sum));
	assert_int_equal(atomic_load(&added->stats->udp_flows_open), 0);

	ruleset_unref(old);
	ruleset_unref(new);
}

/* Each of these is a different place from tcp:127.0.0.1:8080-8081. */
static void test_changed_ports_protocol_or_address_is_a_new_place(void **state)
{
	static const char *const moved[] = {
		"tcp:127.0.0.1:8080:127.0.0.1:80",              /* the range shrank */
		"tcp:127.0.0.1:8080-8082:127.0.0.1:80-82",      /* the range grew */
		"tcp:127.0.0.1:8081-8082:127.0.0.1:81-82",      /* the range moved */
		"udp:127.0.0.1:8080-8081:127.0.0.1:80-81",      /* another protocol */
		"both:127.0.0.1:8080-8081:127.0.0.1:80-81",     /* tcp and udp is not tcp */
		"tcp:127.0.0.2:8080-8081:127.0.0.1:80-81",      /* another address */
		"tcp:0.0.0.0:8080-8081:127.0.0.1:80-81",        /* the wildcard */
		"tcp:[::1]:8080-8081:127.0.0.1:80-81",          /* another family */
	};

	(void)state;
	for (size_t i = 0; i < sizeof moved / sizeof moved[0]; i++) {
		struct ruleset *old = publish(NULL, SPECS("tcp:127.0.0.1:8080-8081:127.0.0.1:80-81"));
		count_some(forward_at(old, 0), 1);
		struct ruleset *new = publish(old, SPECS(moved[i]));
		const struct forward *fwd = forward_at(new, 0);
		struct relay_counters sum = sum_of(fwd);
		if (fwd->stats == forward_at(old, 0)->stats || !counters_are_zero(&sum) ||
		    ruleset_find_place(old, fwd) != NULL ||
		    ruleset_find_place(new, forward_at(old, 0)) != NULL) {
			print_error("%s took the place of tcp:127.0.0.1:8080-8081\n", moved[i]);
			fail();
		}
		ruleset_unref(old);
		ruleset_unref(new);
	}
}

static void test_wan_address_default_is_the_same_place_as_written_out(void **state)
{
	(void)state;
	/* No address: wan_address, 0.0.0.0 by default. */
	struct ruleset *old = publish(NULL, SPECS("tcp:8080:127.0.0.1:80"));
	count_some(forward_at(old, 0), 1);
	struct ruleset *new = publish(old, SPECS("tcp:0.0.0.0:8080:127.0.0.1:80"));
	assert_ptr_equal(forward_at(new, 0)->stats, forward_at(old, 0)->stats);
	ruleset_unref(old);
	ruleset_unref(new);
}

/* ---- disabled forwards -------------------------------------------------------------- */

static void test_disabled_forwards_are_not_found_and_lend_nothing(void **state)
{
	struct config cfg;

	(void)state;
	/* Two forwards on one place, the first disabled (no overlap then). */
	build(&cfg, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80"));
	cfg.forwards[0].enabled = false;
	char err[1024];
	assert_int_equal(config_add_spec(&cfg, "tcp:127.0.0.1:8080:127.0.0.2:80", err, sizeof err), 0);
	assert_int_equal(config_add_spec(&cfg, "udp:127.0.0.1:5353:127.0.0.1:53", err, sizeof err), 0);
	cfg.forwards[2].enabled = false;
	assert_int_equal(config_finish(&cfg, err, sizeof err), 0);
	struct ruleset *old = ruleset_new(&cfg, NULL, WORKERS);
	assert_non_null(old);

	/* The enabled one of the place is found, for either forward as the key. */
	const struct forward *off = forward_at(old, 0), *on = forward_at(old, 1);
	const struct forward *off_udp = forward_at(old, 2);
	assert_ptr_equal(ruleset_find_place(old, off), on);
	assert_ptr_equal(ruleset_find_place(old, on), on);
	/* A place that only a disabled forward has is not found. */
	assert_null(ruleset_find_place(old, off_udp));
	/* Disabled forwards have stats too (of their own): whoever reads them may. */
	assert_non_null(off->stats);
	assert_ptr_not_equal(off->stats, on->stats);
	count_some(off_udp, 5);

	/* The disabled udp place, enabled now, starts at zero. */
	struct ruleset *new = publish(old, SPECS("udp:127.0.0.1:5353:127.0.0.1:53"));
	assert_ptr_not_equal(forward_at(new, 0)->stats, off_udp->stats);
	struct relay_counters sum = sum_of(forward_at(new, 0));
	assert_true(counters_are_zero(&sum));

	/* A forward disabled by the reload takes nothing over from the enabled one. */
	build(&cfg, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80"));
	cfg.forwards[0].enabled = false;
	struct ruleset *newer = ruleset_new(&cfg, old, WORKERS);
	assert_non_null(newer);
	assert_ptr_not_equal(forward_at(newer, 0)->stats, on->stats);
	assert_null(ruleset_find_place(newer, on));
	assert_int_equal(stats_refs(on), 1);

	ruleset_unref(old);
	ruleset_unref(new);
	ruleset_unref(newer);
}

static void test_owns_only_its_own_forwards(void **state)
{
	(void)state;
	struct ruleset *old = publish(NULL, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80",
						  "tcp:127.0.0.1:8081:127.0.0.1:81"));
	struct ruleset *new = publish(old, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80",
						 "tcp:127.0.0.1:8081:127.0.0.1:81"));
	for (size_t i = 0; i < 2; i++) {
		assert_true(ruleset_owns(old, forward_at(old, i)));
		assert_true(ruleset_owns(new, forward_at(new, i)));
		/* The same rule, the same stats, but another ruleset's forward. */
		assert_false(ruleset_owns(old, forward_at(new, i)));
		assert_false(ruleset_owns(new, forward_at(old, i)));
	}
	struct forward copy = *forward_at(old, 0);
	assert_false(ruleset_owns(old, &copy));
	assert_false(ruleset_owns(old, old->cfg.forwards + old->cfg.forward_count));

	struct config empty;
	config_defaults(&empty);
	struct ruleset *none = ruleset_new(&empty, new, WORKERS);
	assert_non_null(none);
	assert_int_equal(none->cfg.forward_count, 0);
	assert_false(ruleset_owns(none, forward_at(new, 0)));
	assert_null(ruleset_find_place(none, forward_at(new, 0)));

	ruleset_unref(old);
	ruleset_unref(new);
	ruleset_unref(none);
}

/* ---- reference counts and retired places -------------------------------------------- */

static void test_unref_of_the_old_ruleset_keeps_shared_stats_alive(void **state)
{
	(void)state;
	struct ruleset *old = publish(NULL, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80"));
	count_some(forward_at(old, 0), 1);
	struct ruleset *new = publish(old, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80"));
	const struct forward *fwd = forward_at(new, 0);
	assert_int_equal(stats_refs(fwd), 2);

	/* A reference taken and dropped leaves it alive. */
	assert_ptr_equal(ruleset_ref(old), old);
	assert_int_equal(atomic_load(&old->refs), 2);
	ruleset_unref(old);
	assert_int_equal(atomic_load(&old->refs), 1);
	assert_int_equal(stats_refs(fwd), 2);

	ruleset_unref(old);   /* the last reference: old is freed, its place lives on */
	ruleset_unref(NULL);
	assert_int_equal(stats_refs(fwd), 1);
	/* Read and written after old is gone: ASan reports it if the block went with it. */
	forward_counters(fwd, WORKERS - 1)->tcp_accepted += 4;
	struct relay_counters sum = sum_of(fwd);
	assert_int_equal(sum.tcp_accepted, 1 + 2 + 3 + 4);
	/* A place still in use is not retired. */
	struct relay_counters retired = retired_of(new);
	assert_true(counters_are_zero(&retired));

	/* The third generation still finds it. */
	struct ruleset *newer = publish(new, SPECS("tcp:127.0.0.1:8080:127.0.0.1:8000"));
	ruleset_unref(new);
	sum = sum_of(forward_at(newer, 0));
	assert_int_equal(sum.tcp_accepted, 10);
	ruleset_unref(newer);
}

static void test_removed_place_moves_to_the_retired_totals_with_the_last_ruleset(void **state)
{
	(void)state;
	struct ruleset *r1 = publish(NULL, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80",
						 "udp:127.0.0.1:5353:127.0.0.1:53"));
	count_some(forward_at(r1, 0), 1);     /* kept */
	count_some(forward_at(r1, 1), 10);    /* removed by r2 */

	struct ruleset *r2 = publish(r1, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80"));
	/* r1 still holds the removed place: not retired yet. */
	struct relay_counters retired = retired_of(r2);
	assert_true(counters_are_zero(&retired));

	/* More counted on the removed place while old connections finish. */
	forward_counters(forward_at(r1, 1), 0)->udp_flows_expired += 2;
	ruleset_unref(r1);

	retired = retired_of(r2);
	assert_int_equal(retired.tcp_accepted, 10 * (1 + 2 + 3));
	assert_int_equal(retired.bytes_to_internal, 1000 * (1 + 2 + 3));
	assert_int_equal(retired.udp_datagrams_to_client, 70 * WORKERS);
	assert_int_equal(retired.udp_flows_expired, 2);
	assert_int_equal(retired.tcp_active, 0);   /* a gauge: nothing is active there */
	/* The kept place counts on by itself, not in the retired totals. */
	struct relay_counters kept = sum_of(forward_at(r2, 0));
	assert_int_equal(kept.tcp_accepted, 1 + 2 + 3);
	assert_int_equal(kept.tcp_active, WORKERS);

	/* Added to the sum, not stored over it. */
	struct relay_counters sum;
	memset(&sum, 0, sizeof sum);
	sum.tcp_accepted = 1;
	ruleset_add_retired_counters(r2, &sum);
	assert_int_equal(sum.tcp_accepted, 1 + 60);

	/* Now the kept one goes too, and both places' counts are in the totals. */
	struct ruleset *r3 = publish(r2, SPECS("tcp:127.0.0.1:9090:127.0.0.1:80"));
	ruleset_unref(r2);
	retired = retired_of(r3);
	assert_int_equal(retired.tcp_accepted, 60 + 6);
	assert_int_equal(retired.tcp_active, 0);
	/* Every ruleset of the family sees the same totals. */
	struct ruleset *r4 = publish(r3, SPECS("tcp:127.0.0.1:9090:127.0.0.1:80"));
	struct relay_counters retired4 = retired_of(r4);
	assert_memory_equal(&retired4, &retired, sizeof retired);
	ruleset_unref(r3);
	ruleset_unref(r4);
}

/* A place removed and added back starts again at zero; the old counts are retired. */
static void test_place_removed_and_added_back_starts_at_zero(void **state)
{
	(void)state;
	struct ruleset *r1 = publish(NULL, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80"));
	count_some(forward_at(r1, 0), 1);
	struct ruleset *r2 = publish(r1, SPECS("tcp:127.0.0.1:8081:127.0.0.1:80"));
	struct ruleset *r3 = publish(r2, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80"));
	/* r1 (connections of the removed forward still running) is alive, but not r3's previous. */
	assert_ptr_not_equal(forward_at(r3, 0)->stats, forward_at(r1, 0)->stats);
	struct relay_counters sum = sum_of(forward_at(r3, 0));
	assert_true(counters_are_zero(&sum));
	ruleset_unref(r1);
	ruleset_unref(r2);
	struct relay_counters retired = retired_of(r3);
	assert_int_equal(retired.tcp_accepted, 6);
	ruleset_unref(r3);
}

/* ---- the per-worker blocks ---------------------------------------------------------- */

static void test_worker_blocks_are_aligned_and_on_lines_of_their_own(void **state)
{
	static const unsigned worker_counts[] = { 1, 2, 3, 7, 64 };

	(void)state;
	assert_int_equal(_Alignof(struct forward_stats_block), 64);
	assert_int_equal(sizeof(struct forward_stats_block) % 64, 0);
	for (size_t k = 0; k < sizeof worker_counts / sizeof worker_counts[0]; k++) {
		unsigned workers = worker_counts[k];
		struct config cfg;
		build(&cfg, SPECS("tcp:127.0.0.1:8080:127.0.0.1:80", "udp:127.0.0.1:53:127.0.0.1:5353"));
		struct ruleset *rules = ruleset_new(&cfg, NULL, workers);
		assert_non_null(rules);
		for (size_t f = 0; f < rules->cfg.forward_count; f++) {
			const struct forward *fwd = forward_at(rules, f);
			assert_int_equal(fwd->stats->worker_count, workers);
			/* The shared fields are on lines of their own too. */
			uintptr_t header_end = (uintptr_t)&fwd->stats->worker_count +
					       sizeof fwd->stats->worker_count;
			assert_true(header_end <= (uintptr_t)forward_counters(fwd, 0));
			for (unsigned w = 0; w < workers; w++) {
				uintptr_t start = (uintptr_t)forward_counters(fwd, w);
				uintptr_t end = start + sizeof(struct relay_counters);
				assert_int_equal(start % 64, 0);
				assert_ptr_equal(forward_counters(fwd, w),
						 &fwd->stats->per_worker[w].counters);
				if (w + 1 < workers) {
					uintptr_t next = (uintptr_t)forward_counters(fwd, w + 1);
					/* Distinct, and the last line of one is not the next's first. */
					assert_true(next >= end);
					assert_true((end - 1) / 64 < next / 64);
				}
			}
			/* Every block is writable (ASan: inside the allocation) and counted once. */
			for (unsigned w = 0; w < workers; w++)
				forward_counters(fwd, w)->bytes_to_client = w + 1;
			struct relay_counters sum = sum_of(fwd);
			assert_int_equal(sum.bytes_to_client, (uint64_t)workers * (workers + 1) / 2);
		}
		ruleset_unref(rules);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_new_moves_the_config_in_and_leaves_cfg_empty),
		cmocka_unit_test(test_first_ruleset_has_no_retired_counts_and_generations_count_up),
		cmocka_unit_test(test_same_place_shares_stats_and_counters_carry_on),
		cmocka_unit_test(test_changed_target_in_the_same_place_shares_stats),
		cmocka_unit_test(test_new_place_gets_fresh_zeroed_stats),
		cmocka_unit_test(test_changed_ports_protocol_or_address_is_a_new_place),
		cmocka_unit_test(test_wan_address_default_is_the_same_place_as_written_out),
		cmocka_unit_test(test_disabled_forwards_are_not_found_and_lend_nothing),
		cmocka_unit_test(test_owns_only_its_own_forwards),
		cmocka_unit_test(test_unref_of_the_old_ruleset_keeps_shared_stats_alive),
		cmocka_unit_test(test_removed_place_moves_to_the_retired_totals_with_the_last_ruleset),
		cmocka_unit_test(test_place_removed_and_added_back_starts_at_zero),
		cmocka_unit_test(test_worker_blocks_are_aligned_and_on_lines_of_their_own),
	};

	return cmocka_run_group_tests_name("ruleset", tests, NULL, NULL);
}
