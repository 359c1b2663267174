/*
 * port_claims.h - UDP ports the relay itself still holds for draining
 * forwards, shared by the workers.
 *
 * Workers bind a forward's port each (SO_REUSEPORT), worker 0 first after
 * probing that no one else has it (net.h, NET_SHARED_FIRST). A UDP forward
 * that a reload removed keeps its sockets in the workers where flows remain
 * (their replies leave through them). When a later reload adds that port
 * again (a rule disabled and enabled at once), worker 0's probe would find
 * the port taken, by this very process: the claims tell it so, and it joins
 * the port instead of failing. In the workers that still hold it, the new
 * forward takes the draining socket over (udp_relay.c).
 */
#ifndef PORTRELAY_PORT_CLAIMS_H
#define PORTRELAY_PORT_CLAIMS_H

#include <stdbool.h>
#include <stdint.h>

#include "portrelay/net.h"

struct port_claims;

struct port_claims *port_claims_new(void);
void port_claims_free(struct port_claims *claims);

/* The ports first-last on addr's IP are held for a draining forward; -1: no memory. */
int port_claims_add(struct port_claims *claims, const struct net_addr *addr, uint16_t first,
		    uint16_t last);

/* One claim added with the same arguments is gone. */
void port_claims_remove(struct port_claims *claims, const struct net_addr *addr, uint16_t first,
			uint16_t last);

/* Whether addr (IP and port) is held by a claim. */
bool port_claims_hold(struct port_claims *claims, const struct net_addr *addr);

#endif
