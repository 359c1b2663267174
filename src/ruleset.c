/*
 * ruleset.c - published forward tables and the counters that outlive them.
 */
#include "portrelay/ruleset.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct ruleset_family {
	atomic_uint refs;                  /* rulesets and stats of this process alive */
	pthread_mutex_t lock;              /* for retired: places are retired on any thread */
	struct relay_counters retired;
};

static void ruleset_family_unref(struct ruleset_family *family)
{
	if (atomic_fetch_sub(&family->refs, 1) != 1)
		return;
	pthread_mutex_destroy(&family->lock);
	free(family);
}

static struct forward_stats *forward_stats_new(struct ruleset_family *family, unsigned workers)
{
	/* Both sizes are multiples of the blocks' alignment, as aligned_alloc wants. */
	size_t size = sizeof(struct forward_stats) + workers * sizeof(struct forward_stats_block);
	struct forward_stats *stats = aligned_alloc(_Alignof(struct forward_stats_block), size);
	if (stats == NULL)
		return NULL;
	memset(stats, 0, size);
	atomic_init(&stats->refs, 1);
	atomic_init(&stats->udp_flows_open, 0);
	atomic_init(&stats->tcp_open, 0);
	stats->family = family;
	stats->worker_count = workers;
	atomic_fetch_add(&family->refs, 1);
	return stats;
}

void forward_stats_sum(const struct forward_stats *stats, struct relay_counters *sum)
{
	memset(sum, 0, sizeof *sum);
	for (unsigned i = 0; i < stats->worker_count; i++)
		relay_counters_add(sum, &stats->per_worker[i].counters);
}

/* The last forward of the last ruleset in this place is gone: keep its counts. */
static void forward_stats_unref(struct forward_stats *stats)
{
	if (stats == NULL || atomic_fetch_sub(&stats->refs, 1) != 1)
		return;
	struct ruleset_family *family = stats->family;
	struct relay_counters sum;
	forward_stats_sum(stats, &sum);
	sum.tcp_active = 0;   /* a gauge: nothing is active in a retired place */
	pthread_mutex_lock(&family->lock);
	relay_counters_add(&family->retired, &sum);
	pthread_mutex_unlock(&family->lock);
	free(stats);
	ruleset_family_unref(family);
}

const struct forward *ruleset_find_place(const struct ruleset *rules, const struct forward *fwd)
{
	for (size_t i = 0; i < rules->cfg.forward_count; i++) {
		const struct forward *candidate = &rules->cfg.forwards[i];
		if (candidate->enabled && forward_same_place(candidate, fwd))
			return candidate;
	}
	return NULL;
}

static struct ruleset_family *ruleset_family_new(void)
{
	struct ruleset_family *family = calloc(1, sizeof *family);
	if (family == NULL)
		return NULL;
	atomic_init(&family->refs, 1);
	pthread_mutex_init(&family->lock, NULL);
	return family;
}

struct ruleset *ruleset_new(struct config *cfg, const struct ruleset *previous, unsigned workers)
{
	struct ruleset *rules = calloc(1, sizeof *rules);
	if (rules == NULL) {
		config_free(cfg);
		return NULL;
	}
	atomic_init(&rules->refs, 1);
	rules->cfg = *cfg;
	config_defaults(cfg);   /* moved: the table belongs to the ruleset now */
	if (previous != NULL) {
		rules->family = previous->family;
		atomic_fetch_add(&rules->family->refs, 1);
		rules->generation = previous->generation + 1;
	} else {
		rules->family = ruleset_family_new();
		rules->generation = 1;
		if (rules->family == NULL) {
			config_free(&rules->cfg);
			free(rules);
			return NULL;
		}
	}
	for (size_t i = 0; i < rules->cfg.forward_count; i++)
		rules->cfg.forwards[i].stats = NULL;
	for (size_t i = 0; i < rules->cfg.forward_count; i++) {
		struct forward *fwd = &rules->cfg.forwards[i];
		const struct forward *before = previous != NULL && fwd->enabled
						       ? ruleset_find_place(previous, fwd) : NULL;
		if (before != NULL) {
			fwd->stats = before->stats;
			atomic_fetch_add(&fwd->stats->refs, 1);
		} else {
			fwd->stats = forward_stats_new(rules->family, workers);
		}
		if (fwd->stats == NULL) {
			ruleset_unref(rules);
			return NULL;
		}
	}
	return rules;
}

struct ruleset *ruleset_ref(struct ruleset *rules)
{
	atomic_fetch_add(&rules->refs, 1);
	return rules;
}

void ruleset_unref(struct ruleset *rules)
{
	if (rules == NULL || atomic_fetch_sub(&rules->refs, 1) != 1)
		return;
	for (size_t i = 0; i < rules->cfg.forward_count; i++)
		forward_stats_unref(rules->cfg.forwards[i].stats);
	struct ruleset_family *family = rules->family;
	config_free(&rules->cfg);
	free(rules);
	ruleset_family_unref(family);
}

void ruleset_add_retired_counters(const struct ruleset *rules, struct relay_counters *sum)
{
	pthread_mutex_lock(&rules->family->lock);
	relay_counters_add(sum, &rules->family->retired);
	pthread_mutex_unlock(&rules->family->lock);
}
