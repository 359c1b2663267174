/*
 * source_table.c - per-source counts shared by the workers (source_table.h).
 */
#include "portrelay/source_table.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define SOURCE_STRIPES 64          /* locks: workers rarely wait on one another */
#define SOURCE_BUCKETS 256         /* per stripe (64 x 256 heads: 128 KiB); chains grow past that */

struct source_entry {
	struct source_entry *next;
	const void *owner;
	uint8_t source[SOURCE_KEY_LEN];
	unsigned count;
};

struct source_stripe {
	pthread_mutex_t lock;
	struct source_entry *buckets[SOURCE_BUCKETS];
} __attribute__((aligned(64)));

struct source_table {
	uint64_t seed;
	struct source_stripe stripes[SOURCE_STRIPES];
};

/*
 * Keyed by a random seed: sources are chosen by whoever sends, and must
 * not be able to pile up in one chain. Multiply-xorshift rounds on 64-bit
 * words (no 128-bit arithmetic: 32-bit CPUs build this too).
 */
static uint64_t source_mix(uint64_t h)
{
	h ^= h >> 32;
	h *= 0xd6e8feb86659fd93ULL;
	h ^= h >> 32;
	h *= 0xd6e8feb86659fd93ULL;
	h ^= h >> 32;
	return h;
}

static uint64_t source_hash(const struct source_table *table, const void *owner,
			    const uint8_t source[SOURCE_KEY_LEN])
{
	uint64_t words[2];
	memcpy(words, source, sizeof words);
	uint64_t h = source_mix(table->seed ^ (uint64_t)(uintptr_t)owner);
	h = source_mix(h ^ words[0]);
	return source_mix(h ^ words[1]);
}

struct source_table *source_table_new(void)
{
	struct source_table *table = aligned_alloc(64, sizeof *table);
	if (table == NULL)
		return NULL;
	memset(table, 0, sizeof *table);
	if (getrandom(&table->seed, sizeof table->seed, GRND_NONBLOCK) != sizeof table->seed)
		table->seed = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)table;
	for (int i = 0; i < SOURCE_STRIPES; i++)
		pthread_mutex_init(&table->stripes[i].lock, NULL);
	return table;
}

void source_table_free(struct source_table *table)
{
	if (table == NULL)
		return;
	for (int i = 0; i < SOURCE_STRIPES; i++) {
		struct source_stripe *stripe = &table->stripes[i];
		for (int b = 0; b < SOURCE_BUCKETS; b++) {
			struct source_entry *entry = stripe->buckets[b], *next;
			for (; entry != NULL; entry = next) {
				next = entry->next;
				free(entry);
			}
		}
		pthread_mutex_destroy(&stripe->lock);
	}
	free(table);
}

/* The stripe and bucket of a key; the caller locks the stripe. */
static struct source_entry **source_bucket(struct source_table *table, const void *owner,
					   const uint8_t source[SOURCE_KEY_LEN],
					   struct source_stripe **stripe_out)
{
	uint64_t h = source_hash(table, owner, source);
	struct source_stripe *stripe = &table->stripes[h % SOURCE_STRIPES];
	*stripe_out = stripe;
	return &stripe->buckets[(h / SOURCE_STRIPES) % SOURCE_BUCKETS];
}

static struct source_entry **source_find(struct source_entry **link, const void *owner,
					 const uint8_t source[SOURCE_KEY_LEN])
{
	for (; *link != NULL; link = &(*link)->next) {
		if ((*link)->owner == owner && memcmp((*link)->source, source, SOURCE_KEY_LEN) == 0)
			break;
	}
	return link;
}

bool source_table_take(struct source_table *table, const void *owner,
		       const uint8_t source[SOURCE_KEY_LEN], unsigned limit)
{
	if (limit == 0)
		return true;
	struct source_stripe *stripe;
	struct source_entry **bucket = source_bucket(table, owner, source, &stripe);
	bool taken = false;
	pthread_mutex_lock(&stripe->lock);
	struct source_entry **link = source_find(bucket, owner, source);
	if (*link != NULL) {
		if ((*link)->count < limit) {
			(*link)->count++;
			taken = true;
		}
	} else {
		struct source_entry *entry = malloc(sizeof *entry);
		if (entry != NULL) {
			entry->owner = owner;
			memcpy(entry->source, source, SOURCE_KEY_LEN);
			entry->count = 1;
			entry->next = *bucket;
			*bucket = entry;
			taken = true;
		}
	}
	pthread_mutex_unlock(&stripe->lock);
	return taken;
}

void source_table_release(struct source_table *table, const void *owner,
			  const uint8_t source[SOURCE_KEY_LEN])
{
	struct source_stripe *stripe;
	struct source_entry **bucket = source_bucket(table, owner, source, &stripe);
	pthread_mutex_lock(&stripe->lock);
	struct source_entry **link = source_find(bucket, owner, source);
	struct source_entry *entry = *link;
	if (entry != NULL && --entry->count == 0) {
		*link = entry->next;
		free(entry);
	}
	pthread_mutex_unlock(&stripe->lock);
}

unsigned source_table_count(struct source_table *table, const void *owner,
			    const uint8_t source[SOURCE_KEY_LEN])
{
	struct source_stripe *stripe;
	struct source_entry **bucket = source_bucket(table, owner, source, &stripe);
	pthread_mutex_lock(&stripe->lock);
	struct source_entry *entry = *source_find(bucket, owner, source);
	unsigned count = entry != NULL ? entry->count : 0;
	pthread_mutex_unlock(&stripe->lock);
	return count;
}
