/*
 * udp_relay.h - UDP forwarding: one socket per external port, one flow per
 * client.
 *
 * A datagram from a new client address (ip:port, per external port) creates
 * a flow: a socket connected to the internal host:port, so the internal
 * server sees one source port per client and its replies arrive on that
 * socket alone. Replies go back to the client from the external socket, from
 * the address the client sent to.
 *
 * Flows of one forward share a flow table (flow_table.h), bounded by
 * udp.max_flows; when it is full a new client's datagram is dropped and
 * counted (existing flows keep working: a flood of new sources cannot push
 * them out). A flow idle for the forward's UDP idle timeout is closed.
 */
#ifndef PORTRELAY_UDP_RELAY_H
#define PORTRELAY_UDP_RELAY_H

#include <stdint.h>

struct relay_ctx;
struct udp_relay;

/*
 * Binds a UDP socket on every external port of every enabled udp/both
 * forward. NULL (after logging the forward, address:port and reason) on
 * failure; nothing stays open then.
 */
struct udp_relay *udp_relay_open(struct relay_ctx *ctx);

unsigned udp_relay_socket_count(const struct udp_relay *udp);


/* Closes every socket and frees every flow. */
void udp_relay_free(struct udp_relay *udp);

#endif
