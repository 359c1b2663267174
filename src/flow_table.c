/*
 * flow_table.c - open-addressing hash table of UDP flows, with a recency
 * list for idle expiry and least-recently-used order.
 */
#include "portrelay/flow_table.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define FLOW_TABLE_MIN_CAPACITY 16

void flow_key_set(struct flow_key *key, const struct sockaddr *client, uint16_t external_port)
{
	memset(key, 0, sizeof *key);
	key->family = (uint8_t)client->sa_family;
	key->external_port = external_port;
	if (client->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)client;
		key->client_port = sin->sin_port;
		memcpy(key->client_ip, &sin->sin_addr, 4);
	} else if (client->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)client;
		key->client_port = sin6->sin6_port;
		memcpy(key->client_ip, &sin6->sin6_addr, 16);
		key->client_scope = sin6->sin6_scope_id;
	}
}

void flow_key_set_local(struct flow_key *key, const void *ip, size_t len)
{
	memcpy(key->local_ip, ip, len <= sizeof key->local_ip ? len : sizeof key->local_ip);
}

uint32_t flow_table_hash(const struct flow_table *table, const struct flow_key *key)
{
	uint64_t words[6];
	_Static_assert(sizeof *key == sizeof words, "flow_key is six 64-bit words");
	memcpy(words, key, sizeof words);
	/*
	 * Keyed by a per-table random seed: source addresses are chosen by
	 * whoever sends, and must not be able to pile up in one probe run.
	 */
	uint64_t h = flow_mix(words[0] ^ table->seed ^ 0xa0761d6478bd642fULL,
			      words[1] ^ 0xe7037ed1a0b428dbULL);
	h = flow_mix(h ^ words[2] ^ 0x8ebc6af09c88c6e3ULL, table->seed ^ 0x589965cc75374cc3ULL);
	/* The local address and scope, only where there are some (wildcard binds, link-local). */
	if ((words[3] | words[4] | words[5]) != 0) {
		h = flow_mix(h ^ words[3] ^ 0x1d8e4e27c47d124fULL, words[4] ^ 0xd6e8feb86659fd93ULL);
		h = flow_mix(h ^ words[5], table->seed ^ 0xa0761d6478bd642fULL);
	}
	return (uint32_t)(h ^ (h >> 32));
}

static int flow_table_alloc_slots(struct flow_table *table, uint32_t capacity)
{
	struct flow_entry **old_slots = table->slots;
	uint32_t old_capacity = table->capacity;
	struct flow_entry **slots = calloc(capacity, sizeof *slots);
	if (slots == NULL)
		return -1;
	table->slots = slots;
	table->capacity = capacity;
	/* Re-place every entry by its stored hash; nothing is hashed again. */
	for (uint32_t i = 0; i < old_capacity; i++) {
		struct flow_entry *entry = old_slots[i];
		if (entry == NULL)
			continue;
		uint32_t slot = entry->hash & (capacity - 1);
		while (slots[slot] != NULL)
			slot = (slot + 1) & (capacity - 1);
		slots[slot] = entry;
	}
	free(old_slots);
	return 0;
}

int flow_table_init(struct flow_table *table)
{
	memset(table, 0, sizeof *table);
	TAILQ_INIT(&table->recency);
	if (getrandom(&table->seed, sizeof table->seed, GRND_NONBLOCK) != sizeof table->seed) {
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		table->seed = (uint64_t)now.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)table;
	}
	return flow_table_alloc_slots(table, FLOW_TABLE_MIN_CAPACITY);
}

void flow_table_destroy(struct flow_table *table)
{
	free(table->slots);
	table->slots = NULL;
	table->capacity = 0;
	table->count = 0;
	TAILQ_INIT(&table->recency);
}

/* The slot holding entry, or the empty slot where a search for key ends. */
static uint32_t flow_table_find_slot(const struct flow_table *table, const struct flow_key *key,
				     uint32_t hash)
{
	uint32_t mask = table->capacity - 1;
	uint32_t slot = hash & mask;
	for (;;) {
		const struct flow_entry *entry = table->slots[slot];
		if (entry == NULL ||
		    (entry->hash == hash && memcmp(&entry->key, key, sizeof *key) == 0))
			return slot;
		slot = (slot + 1) & mask;
	}
}

struct flow_entry *flow_table_lookup(const struct flow_table *table, const struct flow_key *key,
				     uint32_t hash)
{
	return table->slots[flow_table_find_slot(table, key, hash)];
}

int flow_table_insert(struct flow_table *table, struct flow_entry *entry, uint64_t now_ms)
{
	/* At most half full keeps probe runs short. */
	if ((table->count + 1) * 2 > table->capacity &&
	    flow_table_alloc_slots(table, table->capacity * 2) < 0)
		return -1;
	uint32_t slot = flow_table_find_slot(table, &entry->key, entry->hash);
	table->slots[slot] = entry;
	table->count++;
	entry->last_active_ms = now_ms;
	TAILQ_INSERT_TAIL(&table->recency, entry, recency);
	return 0;
}

/*
 * Backward-shift deletion: move later members of the probe run into the
 * hole so that lookups never need tombstones.
 */
static void flow_table_close_hole(struct flow_table *table, uint32_t hole)
{
	uint32_t mask = table->capacity - 1;
	uint32_t next = (hole + 1) & mask;
	while (table->slots[next] != NULL) {
		uint32_t home = table->slots[next]->hash & mask;
		/* Can the entry at `next` move back to `hole`? Only if its home
		 * slot is not in the cyclic range (hole, next]. */
		if (((next - home) & mask) >= ((next - hole) & mask)) {
			table->slots[hole] = table->slots[next];
			hole = next;
		}
		next = (next + 1) & mask;
	}
	table->slots[hole] = NULL;
}

void flow_table_remove(struct flow_table *table, struct flow_entry *entry)
{
	uint32_t slot = flow_table_find_slot(table, &entry->key, entry->hash);
	if (table->slots[slot] != entry)
		return;
	flow_table_close_hole(table, slot);
	table->count--;
	TAILQ_REMOVE(&table->recency, entry, recency);
	/* Give memory back after a flood has passed; failure to shrink is harmless. */
	if (table->capacity > 8 * FLOW_TABLE_MIN_CAPACITY && table->count * 8 < table->capacity)
		flow_table_alloc_slots(table, table->capacity / 2);
}

void flow_table_touch(struct flow_table *table, struct flow_entry *entry, uint64_t now_ms)
{
	entry->last_active_ms = now_ms;
	if (TAILQ_NEXT(entry, recency) != NULL) {
		TAILQ_REMOVE(&table->recency, entry, recency);
		TAILQ_INSERT_TAIL(&table->recency, entry, recency);
	}
}

struct flow_entry *flow_table_oldest(const struct flow_table *table)
{
	return TAILQ_FIRST(&table->recency);
}

uint32_t flow_table_count(const struct flow_table *table)
{
	return table->count;
}
