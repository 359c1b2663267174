/*
 * counters.c - adding up counter blocks (counters.h).
 */
#include "portrelay/counters.h"

#include <assert.h>
#include <stddef.h>

void relay_counters_add(struct relay_counters *sum, const struct relay_counters *c)
{
	/* Every field is a uint64_t (checked below): walk them as an array. */
	static_assert(sizeof(struct relay_counters) % sizeof(uint64_t) == 0,
		      "struct relay_counters holds uint64_t fields only");
	uint64_t *to = (uint64_t *)sum;
	const uint64_t *from = (const uint64_t *)c;
	for (size_t i = 0; i < sizeof *c / sizeof(uint64_t); i++)
		to[i] += __atomic_load_n(&from[i], __ATOMIC_RELAXED);
}
