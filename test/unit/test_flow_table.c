/*
 * test_flow_table.c - the UDP flow table: keys from IPv4/IPv6 client
 * addresses and external ports, insert/lookup/remove, growth and shrink,
 * the hash's mixing step (its 32-bit path equals the 128-bit one) and known
 * hash values, forced hash collisions (backward-shift deletion, runs that
 * wrap around the end of the array), and the recency list used for idle
 * expiry.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "portrelay/flow_table.h"

/* ---- helpers ---------------------------------------------------------------- */

static struct sockaddr_in sin4(const char *ip, uint16_t port)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	assert_int_equal(inet_pton(AF_INET, ip, &a.sin_addr), 1);
	return a;
}

static struct sockaddr_in6 sin6(const char *ip, uint16_t port)
{
	struct sockaddr_in6 a;
	memset(&a, 0, sizeof a);
	a.sin6_family = AF_INET6;
	a.sin6_port = htons(port);
	assert_int_equal(inet_pton(AF_INET6, ip, &a.sin6_addr), 1);
	return a;
}

/* Sets entry's key (from client and external port) and its real hash. */
static void entry_set(struct flow_table *t, struct flow_entry *e, const void *client,
		      uint16_t external_port)
{
	memset(e, 0, sizeof *e);
	flow_key_set(&e->key, (const struct sockaddr *)client, external_port);
	e->hash = flow_table_hash(t, &e->key);
}

static struct flow_entry *find(const struct flow_table *t, const void *client,
			       uint16_t external_port)
{
	struct flow_key key;
	flow_key_set(&key, (const struct sockaddr *)client, external_port);
	return flow_table_lookup(t, &key, flow_table_hash(t, &key));
}

/* A distinct IPv4 client for each i: 10.x.y.z : port derived from i. */
static struct sockaddr_in client_n(uint32_t i)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(0x0a000000u | (i / 7));
	a.sin_port = htons((uint16_t)(1024 + i % 7));
	return a;
}

/* Walks the recency list: fails unless it holds exactly want[0..n) in order. */
static void assert_recency(const struct flow_table *t, struct flow_entry *const *want, size_t n)
{
	size_t i = 0;
	const struct flow_entry *e;
	TAILQ_FOREACH(e, &t->recency, recency) {
		if (i >= n)
			fail_msg("recency list longer than %zu", n);
		if (e != want[i])
			fail_msg("recency position %zu holds the wrong entry", i);
		i++;
	}
	assert_int_equal(i, n);
	if (n > 0)
		assert_ptr_equal(flow_table_oldest(t), want[0]);
	else
		assert_null(flow_table_oldest(t));
}

/* ---- keys -------------------------------------------------------------------------- */

static void test_key_set_ipv4_fills_every_byte(void **state)
{
	(void)state;
	struct sockaddr_in a = sin4("192.0.2.7", 5353);
	struct flow_key k;
	memset(&k, 0xa5, sizeof k);   /* garbage that must not survive */
	flow_key_set(&k, (struct sockaddr *)&a, 8053);

	assert_int_equal(k.family, AF_INET);
	assert_int_equal(k.zero, 0);
	assert_int_equal(k.zero2, 0);
	assert_int_equal(k.client_port, htons(5353));
	assert_int_equal(k.external_port, 8053);
	const uint8_t want_ip[16] = { 192, 0, 2, 7 };
	assert_memory_equal(k.client_ip, want_ip, 16);

	/* Same input over different garbage: byte-identical (memcmp keys). */
	struct flow_key k2;
	memset(&k2, 0x5a, sizeof k2);
	flow_key_set(&k2, (struct sockaddr *)&a, 8053);
	assert_memory_equal(&k, &k2, sizeof k);
}

static void test_key_set_ipv6_ignores_flowinfo(void **state)
{
	(void)state;
	struct sockaddr_in6 a = sin6("2001:db8::42", 40000);
	struct flow_key k;
	memset(&k, 0xff, sizeof k);
	flow_key_set(&k, (struct sockaddr *)&a, 443);
	assert_int_equal(k.family, AF_INET6);
	assert_int_equal(k.zero, 0);
	assert_int_equal(k.zero2, 0);
	assert_int_equal(k.client_port, htons(40000));
	assert_int_equal(k.external_port, 443);
	assert_memory_equal(k.client_ip, &a.sin6_addr, 16);

	/* The flow is the client's address and port, not its flow label. */
	struct sockaddr_in6 b = a;
	b.sin6_flowinfo = htonl(0x12345);
	struct flow_key kb;
	memset(&kb, 0, sizeof kb);
	flow_key_set(&kb, (struct sockaddr *)&b, 443);
	assert_memory_equal(&k, &kb, sizeof k);
}

/* ---- insert / lookup / remove ----------------------------------------------------- */

static void test_insert_lookup_remove_ipv4_and_ipv6(void **state)
{
	(void)state;
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	assert_int_equal(flow_table_count(&t), 0);
	assert_null(flow_table_oldest(&t));

	struct sockaddr_in c4 = sin4("203.0.113.5", 1111);
	struct sockaddr_in6 c6 = sin6("2001:db8::5", 1111);
	struct flow_entry e4, e6;
	entry_set(&t, &e4, &c4, 53);
	entry_set(&t, &e6, &c6, 53);

	assert_null(find(&t, &c4, 53));
	assert_int_equal(flow_table_insert(&t, &e4, 100), 0);
	assert_int_equal(flow_table_insert(&t, &e6, 200), 0);
	assert_int_equal(flow_table_count(&t), 2);
	assert_ptr_equal(find(&t, &c4, 53), &e4);
	assert_ptr_equal(find(&t, &c6, 53), &e6);
	assert_int_equal(e4.last_active_ms, 100);
	assert_int_equal(e6.last_active_ms, 200);

	/* The lookup compares keys, not just hashes: a copy of the key finds it. */
	struct flow_key copy = e4.key;
	assert_ptr_equal(flow_table_lookup(&t, &copy, flow_table_hash(&t, &copy)), &e4);

	flow_table_remove(&t, &e4);
	assert_int_equal(flow_table_count(&t), 1);
	assert_null(find(&t, &c4, 53));
	assert_ptr_equal(find(&t, &c6, 53), &e6);
	struct flow_entry *only[] = { &e6 };
	assert_recency(&t, only, 1);

	flow_table_remove(&t, &e6);
	assert_int_equal(flow_table_count(&t), 0);
	assert_null(find(&t, &c6, 53));
	assert_recency(&t, NULL, 0);

	/* Re-insert after removal works. */
	assert_int_equal(flow_table_insert(&t, &e4, 300), 0);
	assert_ptr_equal(find(&t, &c4, 53), &e4);
	flow_table_remove(&t, &e4);
	flow_table_destroy(&t);
}

static void test_same_client_two_external_ports_are_two_flows(void **state)
{
	(void)state;
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	struct sockaddr_in c = sin4("198.51.100.9", 7000);
	struct flow_entry a, b;
	entry_set(&t, &a, &c, 30000);
	entry_set(&t, &b, &c, 30001);
	assert_memory_not_equal(&a.key, &b.key, sizeof a.key);

	assert_int_equal(flow_table_insert(&t, &a, 1), 0);
	assert_ptr_equal(find(&t, &c, 30000), &a);
	assert_null(find(&t, &c, 30001));
	assert_int_equal(flow_table_insert(&t, &b, 2), 0);
	assert_int_equal(flow_table_count(&t), 2);
	assert_ptr_equal(find(&t, &c, 30000), &a);
	assert_ptr_equal(find(&t, &c, 30001), &b);
	assert_null(find(&t, &c, 30002));

	flow_table_remove(&t, &a);
	assert_null(find(&t, &c, 30000));
	assert_ptr_equal(find(&t, &c, 30001), &b);
	flow_table_remove(&t, &b);
	flow_table_destroy(&t);
}

static void test_same_ip_different_port_differ(void **state)
{
	(void)state;
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	struct sockaddr_in c1 = sin4("192.0.2.1", 5000), c2 = sin4("192.0.2.1", 5001);
	struct sockaddr_in6 d1 = sin6("2001:db8::1", 5000), d2 = sin6("2001:db8::1", 5001);
	struct flow_entry e1, f1;
	entry_set(&t, &e1, &c1, 80);
	entry_set(&t, &f1, &d1, 80);
	assert_int_equal(flow_table_insert(&t, &e1, 0), 0);
	assert_int_equal(flow_table_insert(&t, &f1, 0), 0);

	assert_ptr_equal(find(&t, &c1, 80), &e1);
	assert_null(find(&t, &c2, 80));
	assert_ptr_equal(find(&t, &d1, 80), &f1);
	assert_null(find(&t, &d2, 80));

	struct flow_entry e2, f2;
	entry_set(&t, &e2, &c2, 80);
	entry_set(&t, &f2, &d2, 80);
	assert_int_equal(flow_table_insert(&t, &e2, 0), 0);
	assert_int_equal(flow_table_insert(&t, &f2, 0), 0);
	assert_int_equal(flow_table_count(&t), 4);
	assert_ptr_equal(find(&t, &c1, 80), &e1);
	assert_ptr_equal(find(&t, &c2, 80), &e2);
	assert_ptr_equal(find(&t, &d1, 80), &f1);
	assert_ptr_equal(find(&t, &d2, 80), &f2);
	flow_table_destroy(&t);
}

static void test_ipv4_and_ipv4_mapped_ipv6_differ(void **state)
{
	(void)state;
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	struct sockaddr_in v4 = sin4("192.0.2.33", 6000);
	struct sockaddr_in6 mapped = sin6("::ffff:192.0.2.33", 6000);
	/* ::192.0.2.33 (IPv4-compatible): another IPv6 address again. */
	struct sockaddr_in6 compat = sin6("::192.0.2.33", 6000);

	struct flow_entry e4, em;
	entry_set(&t, &e4, &v4, 9);
	entry_set(&t, &em, &mapped, 9);
	assert_memory_not_equal(&e4.key, &em.key, sizeof e4.key);

	assert_int_equal(flow_table_insert(&t, &e4, 0), 0);
	assert_null(find(&t, &mapped, 9));
	assert_null(find(&t, &compat, 9));
	assert_int_equal(flow_table_insert(&t, &em, 0), 0);
	assert_ptr_equal(find(&t, &v4, 9), &e4);
	assert_ptr_equal(find(&t, &mapped, 9), &em);
	assert_null(find(&t, &compat, 9));
	flow_table_remove(&t, &e4);
	assert_null(find(&t, &v4, 9));
	assert_ptr_equal(find(&t, &mapped, 9), &em);
	flow_table_destroy(&t);
}

static void test_hash_is_deterministic_and_spreads(void **state)
{
	(void)state;
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	/* Same key, same hash; 4096 keys differing in one field: few equal hashes. */
	enum { N = 4096 };
	uint32_t *h = calloc(N, sizeof *h);
	assert_non_null(h);
	for (uint32_t i = 0; i < N; i++) {
		struct sockaddr_in c = sin4("192.0.2.1", (uint16_t)(10000 + i));
		struct flow_key k1, k2;
		flow_key_set(&k1, (struct sockaddr *)&c, 53);
		flow_key_set(&k2, (struct sockaddr *)&c, 53);
		h[i] = flow_table_hash(&t, &k1);
		assert_int_equal(h[i], flow_table_hash(&t, &k2));
	}
	/* Low bits pick the slot: count distinct low 12-bit values (ideal ~2589). */
	static uint8_t seen[N];
	memset(seen, 0, sizeof seen);
	unsigned distinct = 0;
	for (uint32_t i = 0; i < N; i++) {
		if (!seen[h[i] & (N - 1)]) {
			seen[h[i] & (N - 1)] = 1;
			distinct++;
		}
	}
	free(h);
	if (distinct < 2200)
		fail_msg("4096 keys on sequential ports hit only %u of 4096 slots", distinct);
	flow_table_destroy(&t);
}

/* ---- the mixing step on every target ----------------------------------------------------- */

/* a * b as 128 bits, low half xor high half: values from Python's big integers. */
static const uint64_t mix_known[][3] = {
	{ 0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL },
	{ 0xffffffffffffffffULL, 0xffffffffffffffffULL, 0xffffffffffffffffULL },
	{ 0xffffffffffffffffULL, 0x0000000000000001ULL, 0xffffffffffffffffULL },
	{ 0x0000000100000000ULL, 0x0000000100000000ULL, 0x0000000000000001ULL },
	{ 0x00000000ffffffffULL, 0x00000000ffffffffULL, 0xfffffffe00000001ULL },
	{ 0xa0761d6478bd642fULL, 0xe7037ed1a0b428dbULL, 0x1ff5c2923a788d2cULL },
	{ 0x8ebc6af09c88c6e3ULL, 0x589965cc75374cc3ULL, 0x02c45fcca5b24b2aULL },
	{ 0x0123456789abcdefULL, 0xfedcba9876543210ULL, 0x2317228f48165bb2ULL },
};

/* Both paths give the known values, on 64-bit and 32-bit targets alike. */
static void test_mix_known_values(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof mix_known / sizeof mix_known[0]; i++) {
		uint64_t a = mix_known[i][0], b = mix_known[i][1], want = mix_known[i][2];
		if (flow_mix_portable(a, b) != want || flow_mix(a, b) != want)
			fail_msg("mix(%#llx, %#llx): portable %#llx, flow_mix %#llx, want %#llx",
				 (unsigned long long)a, (unsigned long long)b,
				 (unsigned long long)flow_mix_portable(a, b),
				 (unsigned long long)flow_mix(a, b), (unsigned long long)want);
	}
}

/*
 * The 32-bit path equals the 128-bit multiply on edge values (carries out of
 * every 32-bit quarter) and 2,000,000 pseudo-random pairs. Where the compiler
 * has no 128-bit type (32-bit targets) there is nothing to compare with: skip.
 */
static void test_mix_portable_equals_128_bit(void **state)
{
	(void)state;
#ifdef __SIZEOF_INT128__
	static const uint64_t edges[] = {
		0, 1, 2, 0x7fffffffULL, 0x80000000ULL, 0xffffffffULL, 0x100000000ULL,
		0x1ffffffffULL, 0x7fffffffffffffffULL, 0x8000000000000000ULL,
		0xffffffff00000000ULL, 0xffffffff80000000ULL, 0xfffffffffffffffeULL,
		0xffffffffffffffffULL,
	};
	size_t n_edges = sizeof edges / sizeof edges[0];
	uint64_t x = 0x9e3779b97f4a7c15ULL;  /* xorshift64 */
	for (size_t i = 0; i < 2000000 + n_edges * n_edges; i++) {
		uint64_t a, b;
		if (i < n_edges * n_edges) {
			a = edges[i / n_edges];
			b = edges[i % n_edges];
		} else {
			x ^= x << 13; x ^= x >> 7; x ^= x << 17;
			a = x;
			x ^= x << 13; x ^= x >> 7; x ^= x << 17;
			/* Sparse and dense operands too, not only uniform ones. */
			b = (i & 3) == 0 ? x & 0xffffffffULL : (i & 3) == 1 ? x | 0xffffffff00000000ULL : x;
		}
		__uint128_t product = (__uint128_t)a * b;
		uint64_t want = (uint64_t)product ^ (uint64_t)(product >> 64);
		if (flow_mix_portable(a, b) != want || flow_mix(a, b) != want)
			fail_msg("mix(%#llx, %#llx): portable %#llx, flow_mix %#llx, 128-bit %#llx",
				 (unsigned long long)a, (unsigned long long)b,
				 (unsigned long long)flow_mix_portable(a, b),
				 (unsigned long long)flow_mix(a, b), (unsigned long long)want);
	}
#else
	skip();
#endif
}

/*
 * The whole hash, for a fixed seed, is the same on every little-endian target
 * (i386 and x86_64 run this): a 32-bit build spreads flows exactly as a
 * 64-bit one does. Values from a Python model of flow_table_hash.
 */
static void test_hash_known_values(void **state)
{
	(void)state;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	t.seed = 0x0123456789abcdefULL;
	struct sockaddr_in c4 = sin4("192.0.2.1", 5353);
	struct sockaddr_in6 c6 = sin6("2001:db8::1", 5353);
	struct flow_key k4, k6;
	flow_key_set(&k4, (struct sockaddr *)&c4, 53);
	flow_key_set(&k6, (struct sockaddr *)&c6, 53);
	assert_int_equal(flow_table_hash(&t, &k4), 0x289002dfu);
	assert_int_equal(flow_table_hash(&t, &k6), 0x87b0c0e1u);
	flow_table_destroy(&t);
#else
	skip();   /* the key's words, hence the hash, differ on big-endian targets */
#endif
}

/* ---- growth and shrink ------------------------------------------------------------------ */

static void test_growth_100000_then_remove_every_other(void **state)
{
	(void)state;
	enum { N = 100000 };
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	struct flow_entry *e = calloc(N, sizeof *e);
	assert_non_null(e);

	for (uint32_t i = 0; i < N; i++) {
		struct sockaddr_in c = client_n(i);
		entry_set(&t, &e[i], &c, (uint16_t)(20000 + i % 3));
		if (flow_table_insert(&t, &e[i], i) != 0)
			fail_msg("insert %u failed", i);
		/* Never more than half full. */
		if ((uint64_t)t.count * 2 > t.capacity)
			fail_msg("%u entries in %u slots", t.count, t.capacity);
	}
	assert_int_equal(flow_table_count(&t), N);
	for (uint32_t i = 0; i < N; i++) {
		struct sockaddr_in c = client_n(i);
		if (find(&t, &c, (uint16_t)(20000 + i % 3)) != &e[i])
			fail_msg("entry %u not found after growth", i);
		/* A key that was never inserted (other external port). */
		if (i % 97 == 0 && find(&t, &c, 20003) != NULL)
			fail_msg("entry %u found under a port it never used", i);
	}

	/* Remove every other one. */
	for (uint32_t i = 0; i < N; i += 2)
		flow_table_remove(&t, &e[i]);
	assert_int_equal(flow_table_count(&t), N / 2);
	for (uint32_t i = 0; i < N; i++) {
		struct sockaddr_in c = client_n(i);
		struct flow_entry *got = find(&t, &c, (uint16_t)(20000 + i % 3));
		if (i % 2 == 0 && got != NULL)
			fail_msg("removed entry %u still found", i);
		if (i % 2 == 1 && got != &e[i])
			fail_msg("entry %u lost after removing its neighbours", i);
	}

	/* The recency list holds the odd ones, oldest first. */
	uint32_t expect = 1, listed = 0;
	struct flow_entry *it;
	TAILQ_FOREACH(it, &t.recency, recency) {
		if (it != &e[expect])
			fail_msg("recency position %u: expected entry %u", listed, expect);
		expect += 2;
		listed++;
	}
	assert_int_equal(listed, N / 2);

	/* Remove all but the last 100: the array is given back, all still found. */
	uint32_t peak = t.capacity;
	for (uint32_t i = 1; i < N - 200; i += 2)
		flow_table_remove(&t, &e[i]);
	assert_int_equal(flow_table_count(&t), 100);
	if (t.capacity >= peak || t.capacity > 1024)
		fail_msg("capacity %u after shrinking to 100 entries (peak %u)", t.capacity, peak);
	assert_true((uint64_t)t.count * 2 <= t.capacity);
	for (uint32_t i = N - 200; i < N; i++) {
		struct sockaddr_in c = client_n(i);
		struct flow_entry *got = find(&t, &c, (uint16_t)(20000 + i % 3));
		if (i % 2 == 1 && got != &e[i])
			fail_msg("entry %u lost after shrink", i);
		if (i % 2 == 0 && got != NULL)
			fail_msg("removed entry %u found after shrink", i);
	}
	for (uint32_t i = 0; i < N - 200; i += 1001) {
		struct sockaddr_in c = client_n(i);
		assert_null(find(&t, &c, (uint16_t)(20000 + i % 3)));
	}
	free(e);
	flow_table_destroy(&t);
}

/* ---- collisions ---------------------------------------------------------------------------- */

static void test_forced_equal_hashes_all_found(void **state)
{
	(void)state;
	enum { N = 200 };
	const uint32_t H = 0x5eed1234u;
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	struct flow_entry e[N];
	for (uint32_t i = 0; i < N; i++) {
		struct sockaddr_in6 c = sin6("2001:db8::77", (uint16_t)(1000 + i));
		entry_set(&t, &e[i], &c, 5060);
		e[i].hash = H;   /* one probe run of N entries */
		assert_int_equal(flow_table_insert(&t, &e[i], i), 0);
	}
	assert_int_equal(flow_table_count(&t), N);
	for (uint32_t i = 0; i < N; i++)
		assert_ptr_equal(flow_table_lookup(&t, &e[i].key, H), &e[i]);

	/* An absent key with the same hash: the search ends at the run's end. */
	struct sockaddr_in6 absent = sin6("2001:db8::77", 999);
	struct flow_key ka;
	flow_key_set(&ka, (struct sockaddr *)&absent, 5060);
	assert_null(flow_table_lookup(&t, &ka, H));

	/* Remove from the middle of the run, then from its head, then its tail. */
	uint32_t order[] = { N / 2, N / 2 + 1, N / 3, 0, N - 1, 1, N / 2 - 1 };
	bool gone[N];
	memset(gone, 0, sizeof gone);
	for (size_t r = 0; r < sizeof order / sizeof order[0]; r++) {
		flow_table_remove(&t, &e[order[r]]);
		gone[order[r]] = true;
		for (uint32_t i = 0; i < N; i++) {
			struct flow_entry *got = flow_table_lookup(&t, &e[i].key, H);
			if (gone[i] && got != NULL)
				fail_msg("removed entry %u still found (removal %zu)", i, r);
			if (!gone[i] && got != &e[i])
				fail_msg("entry %u lost after removing entry %u", i, order[r]);
		}
	}
	assert_int_equal(flow_table_count(&t), N - sizeof order / sizeof order[0]);
	flow_table_destroy(&t);
}

/*
 * Entries whose home slots sit at the end of the array, so that their probe
 * runs wrap around to slot 0, mixed with entries homed at slots 0 and 1:
 * removing any one of them must leave the others findable. The table starts
 * at capacity 16 and stays there with at most 8 entries.
 */
static void test_collisions_wrapping_around_the_array(void **state)
{
	(void)state;
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	uint32_t cap = t.capacity;
	assert_true(cap >= 16);
	const uint32_t homes[] = { cap - 2, cap - 1, cap - 1, 0, cap - 2, 1, 0, cap - 1 };
	enum { N = sizeof homes / sizeof homes[0] };

	/* Every removal order of a few patterns: each position removed first. */
	for (uint32_t first = 0; first < N; first++) {
		struct flow_entry e[N];
		bool gone[N];
		memset(gone, 0, sizeof gone);
		for (uint32_t i = 0; i < N; i++) {
			struct sockaddr_in c = sin4("192.0.2.200", (uint16_t)(4000 + i));
			entry_set(&t, &e[i], &c, 1);
			e[i].hash = 0xabc00000u * 16 + homes[i];   /* low bits: the home */
			assert_int_equal(flow_table_insert(&t, &e[i], i), 0);
		}
		assert_int_equal(t.capacity, cap);
		for (uint32_t step = 0; step < N; step++) {
			uint32_t victim = (first + step * 3) % N;
			while (gone[victim])
				victim = (victim + 1) % N;
			flow_table_remove(&t, &e[victim]);
			gone[victim] = true;
			for (uint32_t i = 0; i < N; i++) {
				struct flow_entry *got = flow_table_lookup(&t, &e[i].key, e[i].hash);
				if (gone[i] && got != NULL)
					fail_msg("first=%u: removed entry %u still found", first, i);
				if (!gone[i] && got != &e[i])
					fail_msg("first=%u: entry %u (home %u) lost after removing "
						 "entry %u (home %u)",
						 first, i, homes[i], victim, homes[victim]);
			}
		}
		assert_int_equal(flow_table_count(&t), 0);
	}
	flow_table_destroy(&t);
}

/*
 * Random inserts and removals against a reference model, with hashes from a
 * small set (many collisions, runs wrapping the end of the array), across
 * growth and shrink.
 */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 16);
}

static void test_random_operations_match_a_model(void **state)
{
	(void)state;
	enum { N = 600, OPS = 60000 };
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	struct flow_entry *e = calloc(N, sizeof *e);
	bool *in = calloc(N, sizeof *in);
	assert_non_null(e);
	assert_non_null(in);
	for (uint32_t i = 0; i < N; i++) {
		struct sockaddr_in c = client_n(i);
		entry_set(&t, &e[i], &c, 7);
		/* 64 hash values: near 0 and near UINT32_MAX (the last slots). */
		uint32_t r = rng() % 64;
		e[i].hash = r < 32 ? r : UINT32_MAX - (r - 32);
	}
	uint32_t count = 0;
	/* Phases: grow to ~N, shrink to ~0, grow again. */
	for (uint32_t op = 0; op < OPS; op++) {
		uint32_t phase = op / (OPS / 3);
		uint32_t insert_pct = phase == 1 ? 5 : 75;
		uint32_t i = rng() % N;
		if (!in[i] && rng() % 100 < insert_pct) {
			assert_int_equal(flow_table_insert(&t, &e[i], op), 0);
			in[i] = true;
			count++;
		} else if (in[i] && rng() % 100 >= insert_pct) {
			flow_table_remove(&t, &e[i]);
			in[i] = false;
			count--;
		}
		if (flow_table_count(&t) != count)
			fail_msg("op %u: count %u, model %u", op, flow_table_count(&t), count);
		if (op % 1000 == 0 || op == OPS - 1) {
			for (uint32_t j = 0; j < N; j++) {
				struct flow_entry *got = flow_table_lookup(&t, &e[j].key, e[j].hash);
				if (in[j] && got != &e[j])
					fail_msg("op %u: entry %u (hash %08x) not found", op, j, e[j].hash);
				if (!in[j] && got != NULL)
					fail_msg("op %u: absent entry %u found", op, j);
			}
		}
	}
	free(e);
	free(in);
	flow_table_destroy(&t);
}

/* ---- recency and expiry --------------------------------------------------------------- */

static void test_oldest_is_least_recently_touched(void **state)
{
	(void)state;
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	struct flow_entry e[4];
	for (int i = 0; i < 4; i++) {
		struct sockaddr_in c = sin4("192.0.2.50", (uint16_t)(100 + i));
		entry_set(&t, &e[i], &c, 1);
		assert_int_equal(flow_table_insert(&t, &e[i], 1000 + (uint64_t)i), 0);
	}
	struct flow_entry *o1[] = { &e[0], &e[1], &e[2], &e[3] };
	assert_recency(&t, o1, 4);

	/* Touch the oldest: it moves to the tail with the new time. */
	flow_table_touch(&t, &e[0], 2000);
	assert_int_equal(e[0].last_active_ms, 2000);
	struct flow_entry *o2[] = { &e[1], &e[2], &e[3], &e[0] };
	assert_recency(&t, o2, 4);

	/* Touch a middle one. */
	flow_table_touch(&t, &e[2], 2001);
	struct flow_entry *o3[] = { &e[1], &e[3], &e[0], &e[2] };
	assert_recency(&t, o3, 4);

	/* Touching the newest keeps the order, updates the time. */
	flow_table_touch(&t, &e[2], 2002);
	assert_int_equal(e[2].last_active_ms, 2002);
	assert_recency(&t, o3, 4);

	/* Removing the oldest makes the next one the oldest. */
	flow_table_remove(&t, &e[1]);
	struct flow_entry *o4[] = { &e[3], &e[0], &e[2] };
	assert_recency(&t, o4, 3);
	/* Touch still finds the entry in the table afterwards. */
	assert_ptr_equal(flow_table_lookup(&t, &e[3].key, e[3].hash), &e[3]);
	flow_table_destroy(&t);
}

static void test_expiry_loop_removes_exactly_the_idle_ones_in_order(void **state)
{
	(void)state;
	enum { N = 50 };
	const uint64_t timeout = 1000;
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	struct flow_entry e[N];
	/* Entry i created at 10*i ms. */
	for (uint32_t i = 0; i < N; i++) {
		struct sockaddr_in6 c = sin6("2001:db8::9", (uint16_t)(30000 + i));
		entry_set(&t, &e[i], &c, 161);
		assert_int_equal(flow_table_insert(&t, &e[i], 10 * (uint64_t)i), 0);
	}
	/* Every multiple of 3 is active again at 900 + i. */
	for (uint32_t i = 0; i < N; i += 3)
		flow_table_touch(&t, &e[i], 900 + (uint64_t)i);

	/*
	 * At now = 1250: idle (now - last >= 1000) are the untouched ones with
	 * 10*i <= 250, i.e. i <= 25 and i % 3 != 0, oldest first.
	 */
	uint64_t now = 1250;
	uint32_t expected[N], nexp = 0;
	for (uint32_t i = 0; i <= 25; i++)
		if (i % 3 != 0)
			expected[nexp++] = i;

	uint32_t popped = 0;
	struct flow_entry *oldest;
	while ((oldest = flow_table_oldest(&t)) != NULL && now - oldest->last_active_ms >= timeout) {
		if (popped >= nexp)
			fail_msg("expired more than the %u idle entries", nexp);
		if (oldest != &e[expected[popped]])
			fail_msg("expiry %u: expected entry %u, got entry %td", popped,
				 expected[popped], oldest - e);
		flow_table_remove(&t, oldest);
		popped++;
	}
	assert_int_equal(popped, nexp);
	assert_int_equal(flow_table_count(&t), N - nexp);
	/* The survivors are all there; the expired are gone. */
	for (uint32_t i = 0; i < N; i++) {
		bool expired = i <= 25 && i % 3 != 0;
		struct flow_entry *got = flow_table_lookup(&t, &e[i].key, e[i].hash);
		if (expired)
			assert_null(got);
		else
			assert_ptr_equal(got, &e[i]);
	}
	/* The next to expire is the untouched entry 26 (last active at 260). */
	assert_ptr_equal(flow_table_oldest(&t), &e[26]);

	/* Far later: everything goes, in recency order (untouched first, then touched). */
	now = 100000;
	uint32_t left = flow_table_count(&t);
	uint64_t prev = 0;
	while ((oldest = flow_table_oldest(&t)) != NULL && now - oldest->last_active_ms >= timeout) {
		assert_true(oldest->last_active_ms >= prev);
		prev = oldest->last_active_ms;
		flow_table_remove(&t, oldest);
		left--;
	}
	assert_int_equal(left, 0);
	assert_int_equal(flow_table_count(&t), 0);
	flow_table_destroy(&t);
}

/*
 * Two clients with the same link-local address and port on two links, and
 * one client talking to two local addresses: four flows, not one.
 */
static void test_scope_and_local_address_are_part_of_the_key(void **state)
{
	(void)state;
	struct flow_table t;
	assert_int_equal(flow_table_init(&t), 0);
	struct sockaddr_in6 on_eth0 = sin6("fe80::1", 5000), on_eth1 = on_eth0;
	on_eth0.sin6_scope_id = 2;
	on_eth1.sin6_scope_id = 3;
	struct flow_entry entries[4];
	memset(entries, 0, sizeof entries);
	flow_key_set(&entries[0].key, (struct sockaddr *)&on_eth0, 53);
	flow_key_set(&entries[1].key, (struct sockaddr *)&on_eth1, 53);
	assert_int_equal(entries[0].key.client_scope, 2);
	assert_memory_not_equal(&entries[0].key, &entries[1].key, sizeof entries[0].key);

	struct sockaddr_in client = sin4("198.51.100.9", 4000);
	const uint8_t local_a[4] = { 192, 0, 2, 1 }, local_b[4] = { 192, 0, 2, 2 };
	flow_key_set(&entries[2].key, (struct sockaddr *)&client, 53);
	flow_key_set_local(&entries[2].key, local_a, sizeof local_a);
	flow_key_set(&entries[3].key, (struct sockaddr *)&client, 53);
	flow_key_set_local(&entries[3].key, local_b, sizeof local_b);
	assert_memory_not_equal(&entries[2].key, &entries[3].key, sizeof entries[2].key);

	for (int i = 0; i < 4; i++) {
		entries[i].hash = flow_table_hash(&t, &entries[i].key);
		assert_int_equal(flow_table_insert(&t, &entries[i], 100), 0);
	}
	assert_int_equal(flow_table_count(&t), 4);
	for (int i = 0; i < 4; i++)
		assert_ptr_equal(flow_table_lookup(&t, &entries[i].key, entries[i].hash), &entries[i]);
	for (int i = 0; i < 4; i++)
		flow_table_remove(&t, &entries[i]);
	flow_table_destroy(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scope_and_local_address_are_part_of_the_key),
		cmocka_unit_test(test_key_set_ipv4_fills_every_byte),
		cmocka_unit_test(test_key_set_ipv6_ignores_flowinfo),
		cmocka_unit_test(test_insert_lookup_remove_ipv4_and_ipv6),
		cmocka_unit_test(test_same_client_two_external_ports_are_two_flows),
		cmocka_unit_test(test_same_ip_different_port_differ),
		cmocka_unit_test(test_ipv4_and_ipv4_mapped_ipv6_differ),
		cmocka_unit_test(test_hash_is_deterministic_and_spreads),
		cmocka_unit_test(test_mix_known_values),
		cmocka_unit_test(test_mix_portable_equals_128_bit),
		cmocka_unit_test(test_hash_known_values),
		cmocka_unit_test(test_growth_100000_then_remove_every_other),
		cmocka_unit_test(test_forced_equal_hashes_all_found),
		cmocka_unit_test(test_collisions_wrapping_around_the_array),
		cmocka_unit_test(test_random_operations_match_a_model),
		cmocka_unit_test(test_oldest_is_least_recently_touched),
		cmocka_unit_test(test_expiry_loop_removes_exactly_the_idle_ones_in_order),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
