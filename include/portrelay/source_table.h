/*
 * source_table.h - what each client source holds open, shared by every
 * worker: the count behind max_connections_per_source and
 * max_flows_per_source.
 *
 * A source is a client address (IPv4, or an IPv6 /64: one host's share of
 * addresses), counted per owner (a forward's place, whose limits apply).
 * With SO_REUSEPORT one client's connections land on any worker, so the
 * count must be shared: the table is split into stripes, each with its own
 * lock, taken once when a connection or flow opens and once when it
 * closes, never per byte or datagram. An entry lives while its count is
 * above zero: memory follows what is open, not who ever came.
 */
#ifndef PORTRELAY_SOURCE_TABLE_H
#define PORTRELAY_SOURCE_TABLE_H

#include <stdbool.h>
#include <stdint.h>

#include "portrelay/acl.h"

struct source_table;

/* A source as acl_source_key writes it: an IPv4 address, or an IPv6 /64. */
#define SOURCE_KEY_LEN ACL_SOURCE_KEY_LEN

struct source_table *source_table_new(void);
void source_table_free(struct source_table *table);

/*
 * Counts one more for (owner, source) unless `limit` are open already;
 * false then (nothing counted). A limit of 0 means none: true, not counted.
 * Also false when out of memory.
 */
bool source_table_take(struct source_table *table, const void *owner,
		       const uint8_t source[SOURCE_KEY_LEN], unsigned limit);

/* Counts one less, after a successful take with a nonzero limit. */
void source_table_release(struct source_table *table, const void *owner,
			  const uint8_t source[SOURCE_KEY_LEN]);

/* What (owner, source) holds now (for tests and logs). */
unsigned source_table_count(struct source_table *table, const void *owner,
			    const uint8_t source[SOURCE_KEY_LEN]);

#endif
