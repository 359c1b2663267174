/*
 * ruleset.h - the forward table as the running relay shares it: an
 * immutable, reference-counted snapshot of one configuration.
 *
 * Start-up publishes the first ruleset; every successful reload publishes
 * a new one. Each worker holds a reference to the ruleset it runs, and
 * keeps an older one alive while connections or flows of its forwards
 * remain (relay.h). Nothing in a published ruleset changes, so workers read
 * it without locks; the only shared writes are the reference counts, taken
 * on publication and release, never per connection.
 *
 * Counters belong to a forward's place (protocol, external address and port
 * range: forward_same_place), not to one ruleset: a reload that finds the
 * place again hands the same forward_stats to the new forward, so counters
 * run on across reloads, and a new place starts at zero.
 */
#ifndef PORTRELAY_RULESET_H
#define PORTRELAY_RULESET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "portrelay/config.h"
#include "portrelay/counters.h"

/*
 * One worker's block, on cache lines of its own: two workers counting
 * side by side must not write the same line.
 */
struct forward_stats_block {
	struct relay_counters counters;
} __attribute__((aligned(64)));

struct forward_stats {
	atomic_uint refs;                  /* forwards of live rulesets that use it */
	/* UDP flows open in every worker: udp.max_flows holds for the process. */
	atomic_uint udp_flows_open;
	/* TCP connections open in every worker: the forward's max_connections. */
	atomic_uint tcp_open;
	struct ruleset_family *family;
	unsigned worker_count;
	struct forward_stats_block per_worker[];
};

/* What the rulesets of one process share: where counters of retired places go. */
struct ruleset_family;

struct ruleset {
	atomic_uint refs;
	uint64_t generation;               /* 1 for the first, +1 per published reload */
	struct ruleset_family *family;
	struct config cfg;                 /* forwards[i].stats set */
};

/*
 * Publishes cfg (its contents are moved in; cfg is left as config_defaults
 * leaves it) as a ruleset with one reference. previous (NULL at start-up)
 * lends its forwards' stats to the forwards in the same place; workers is
 * the number of counter blocks per forward. NULL when out of memory (cfg
 * is then freed).
 */
struct ruleset *ruleset_new(struct config *cfg, const struct ruleset *previous,
			    unsigned workers);

struct ruleset *ruleset_ref(struct ruleset *rules);

/* Drops a reference; the last one frees the ruleset. NULL is ignored. */
void ruleset_unref(struct ruleset *rules);

/* Whether fwd is one of rules' forwards (a pointer into its table). */
static inline bool ruleset_owns(const struct ruleset *rules, const struct forward *fwd)
{
	return fwd >= rules->cfg.forwards && fwd < rules->cfg.forwards + rules->cfg.forward_count;
}

/* The enabled forward of rules in fwd's place, or NULL. */
const struct forward *ruleset_find_place(const struct ruleset *rules, const struct forward *fwd);

/* One worker's counter block of fwd (which must be in a published ruleset). */
static inline struct relay_counters *forward_counters(const struct forward *fwd, unsigned worker)
{
	return &fwd->stats->per_worker[worker].counters;
}

/* sum = fwd's counters, all workers added up; safe while the workers run. */
void forward_stats_sum(const struct forward_stats *stats, struct relay_counters *sum);

/*
 * sum += the counters of every place that no live ruleset has any more
 * (removed forwards whose last connection has ended), so that totals over
 * the process's life keep them.
 */
void ruleset_add_retired_counters(const struct ruleset *rules, struct relay_counters *sum);

#endif
