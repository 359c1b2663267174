/*
 * flow_table.h - the UDP flow table: a hash table of flows keyed by the
 * client's address and the external port it sent to, plus a list of the
 * same flows from least to most recently active.
 *
 * The table is a plain container: it knows nothing of sockets. A flow embeds
 * a struct flow_entry; the table stores pointers to entries and never
 * allocates or frees them.
 *
 * Hashing: open addressing with linear probing over a power-of-two array of
 * pointers (a pointer a slot, at most half full), seeded per table so that a
 * flood of chosen source addresses cannot aim at one chain. The hash of a
 * datagram's key is computed once and passed to both lookup and insert.
 *
 * Expiry: every flow of a table has the same idle timeout, so the recency
 * list is also the expiry order. Touching a flow moves it to the tail (O(1));
 * the caller's single timer expires flows from the head. No per-packet timer
 * work, no scan of the table.
 */
#ifndef PORTRELAY_FLOW_TABLE_H
#define PORTRELAY_FLOW_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

/* Compared with memcmp: every byte, padding included, is set. */
struct flow_key {
	uint8_t family;          /* AF_INET or AF_INET6 */
	uint8_t zero;
	uint16_t client_port;    /* network order */
	uint16_t external_port;  /* host order */
	uint16_t zero2;
	uint8_t client_ip[16];   /* IPv4 in the first 4 bytes, rest zero */
	/*
	 * On a wildcard bind, the address the client sent to (a host with two
	 * addresses answers each from its own); zero otherwise. And the
	 * client's IPv6 scope: two clients with one link-local address on two
	 * links are two flows.
	 */
	uint8_t local_ip[16];
	uint32_t client_scope;
	uint32_t zero3;
};

struct flow_entry {
	struct flow_key key;
	uint32_t hash;
	uint64_t last_active_ms;
	TAILQ_ENTRY(flow_entry) recency;
};

TAILQ_HEAD(flow_recency_list, flow_entry);

struct flow_table {
	struct flow_entry **slots;
	uint32_t capacity;       /* a power of two */
	uint32_t count;
	uint64_t seed;
	struct flow_recency_list recency;   /* head: least recently active */
};

/* 0, or -1 when out of memory. */
int flow_table_init(struct flow_table *table);
/* Frees the slot array; the entries belong to the caller. */
void flow_table_destroy(struct flow_table *table);

/* Fills a key from a client's sockaddr (IPv4 or IPv6) and the external port. */
void flow_key_set(struct flow_key *key, const struct sockaddr *client, uint16_t external_port);

/* The local address the datagram was sent to: 4 (IPv4) or 16 bytes. */
void flow_key_set_local(struct flow_key *key, const void *ip, size_t len);

uint32_t flow_table_hash(const struct flow_table *table, const struct flow_key *key);

/*
 * flow_table_hash's mixing step (as in wyhash): the 128-bit product a * b,
 * its low 64 bits xor its high 64 bits. flow_mix_portable computes it from
 * 32-bit halves on any target (32-bit CPUs have no 128-bit integer type);
 * flow_mix is one 64x64->128 multiply where the compiler has __uint128_t and
 * flow_mix_portable elsewhere. Both give the same value for every input, so
 * the hash is the same on every target (the unit tests check it).
 */
static inline uint64_t flow_mix_portable(uint64_t a, uint64_t b)
{
	uint64_t a_lo = (uint32_t)a, a_hi = a >> 32;
	uint64_t b_lo = (uint32_t)b, b_hi = b >> 32;
	uint64_t lo_lo = a_lo * b_lo, lo_hi = a_lo * b_hi;
	uint64_t hi_lo = a_hi * b_lo, hi_hi = a_hi * b_hi;
	/* Bits 32-95 of the product, before the carries out of bit 63: < 3 * 2^32. */
	uint64_t middle = (lo_lo >> 32) + (uint32_t)lo_hi + (uint32_t)hi_lo;
	uint64_t high = hi_hi + (lo_hi >> 32) + (hi_lo >> 32) + (middle >> 32);
	uint64_t low = a * b;
	return low ^ high;
}

static inline uint64_t flow_mix(uint64_t a, uint64_t b)
{
#ifdef __SIZEOF_INT128__
	__uint128_t product = (__uint128_t)a * b;
	return (uint64_t)product ^ (uint64_t)(product >> 64);
#else
	return flow_mix_portable(a, b);
#endif
}

/* The entry with this key (hash from flow_table_hash), or NULL. */
struct flow_entry *flow_table_lookup(const struct flow_table *table, const struct flow_key *key,
				     uint32_t hash);

/*
 * Adds entry (key and hash set by the caller, key not present) as the most
 * recently active, at now_ms. Grows the array when half full. -1 when out of
 * memory (entry not added).
 */
int flow_table_insert(struct flow_table *table, struct flow_entry *entry, uint64_t now_ms);

void flow_table_remove(struct flow_table *table, struct flow_entry *entry);

/* Marks entry active at now_ms: it moves to the tail of the recency list. */
void flow_table_touch(struct flow_table *table, struct flow_entry *entry, uint64_t now_ms);

/* The least recently active entry, or NULL when empty. */
struct flow_entry *flow_table_oldest(const struct flow_table *table);

uint32_t flow_table_count(const struct flow_table *table);

#endif
