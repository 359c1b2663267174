/*
 * counters.c - adding up counter blocks (counters.h).
 */
#include "portrelay/counters.h"

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

/*
 * One field, as its worker last wrote it. Where a uint64_t is wider than a
 * machine word (32-bit targets), the worker's plain increment is two word
 * stores, and a load between them can pair an old half with a new one; the
 * result differs from both values only when the increment carried into the
 * high word. Such a pair is seen only while the worker is between those two
 * stores, so the field is loaded until two loads in a row agree (counters.h).
 */
static uint64_t relay_counter_load(const uint64_t *field)
{
	uint64_t value = __atomic_load_n(field, __ATOMIC_RELAXED);
#if UINTPTR_MAX < UINT64_MAX
	for (int tries = 0; tries < 8; tries++) {
		uint64_t again = __atomic_load_n(field, __ATOMIC_RELAXED);
		if (again == value)
			break;
		value = again;
	}
#endif
	return value;
}

void relay_counters_add(struct relay_counters *sum, const struct relay_counters *c)
{
	/* Every field is a uint64_t (checked below): walk them as an array. */
	static_assert(sizeof(struct relay_counters) % sizeof(uint64_t) == 0,
		      "struct relay_counters holds uint64_t fields only");
	uint64_t *to = (uint64_t *)sum;
	const uint64_t *from = (const uint64_t *)c;
	for (size_t i = 0; i < sizeof *c / sizeof(uint64_t); i++)
		to[i] += relay_counter_load(&from[i]);
}
