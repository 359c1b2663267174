/*
 * port_claims.c - ports held for draining UDP forwards (port_claims.h): a
 * short list under a mutex; touched only by reloads, never per datagram.
 */
#include "portrelay/port_claims.h"

#include <pthread.h>
#include <stdlib.h>

struct port_claim {
	struct net_addr addr;
	uint16_t first, last;
};

struct port_claims {
	pthread_mutex_t lock;
	struct port_claim *items;
	size_t count, capacity;
};

struct port_claims *port_claims_new(void)
{
	struct port_claims *claims = calloc(1, sizeof *claims);
	if (claims != NULL)
		pthread_mutex_init(&claims->lock, NULL);
	return claims;
}

void port_claims_free(struct port_claims *claims)
{
	if (claims == NULL)
		return;
	pthread_mutex_destroy(&claims->lock);
	free(claims->items);
	free(claims);
}

int port_claims_add(struct port_claims *claims, const struct net_addr *addr, uint16_t first,
		    uint16_t last)
{
	int rc = 0;
	pthread_mutex_lock(&claims->lock);
	if (claims->count == claims->capacity) {
		size_t capacity = claims->capacity == 0 ? 8 : claims->capacity * 2;
		struct port_claim *grown = realloc(claims->items, capacity * sizeof *grown);
		if (grown == NULL)
			rc = -1;
		else {
			claims->items = grown;
			claims->capacity = capacity;
		}
	}
	if (rc == 0)
		claims->items[claims->count++] = (struct port_claim){ *addr, first, last };
	pthread_mutex_unlock(&claims->lock);
	return rc;
}

void port_claims_remove(struct port_claims *claims, const struct net_addr *addr, uint16_t first,
			uint16_t last)
{
	pthread_mutex_lock(&claims->lock);
	for (size_t i = 0; i < claims->count; i++) {
		struct port_claim *claim = &claims->items[i];
		if (claim->first == first && claim->last == last &&
		    net_addr_same_ip(&claim->addr, addr)) {
			*claim = claims->items[--claims->count];
			break;
		}
	}
	pthread_mutex_unlock(&claims->lock);
}

bool port_claims_hold(struct port_claims *claims, const struct net_addr *addr)
{
	uint16_t port = net_addr_port(addr);
	bool held = false;
	pthread_mutex_lock(&claims->lock);
	for (size_t i = 0; i < claims->count && !held; i++) {
		const struct port_claim *claim = &claims->items[i];
		held = port >= claim->first && port <= claim->last &&
		       net_addr_same_ip(&claim->addr, addr);
	}
	pthread_mutex_unlock(&claims->lock);
	return held;
}
