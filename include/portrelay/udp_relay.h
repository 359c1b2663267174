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

#include <stddef.h>
#include <stdint.h>

struct relay_ctx;
struct ruleset;
struct udp_relay;
struct udp_plan;

/* UDP relaying for ctx, with no forward yet; NULL after logging on failure. */
struct udp_relay *udp_relay_new(struct relay_ctx *ctx);

/*
 * Changing the forwards, in two steps so that a reload can fail without
 * changing anything (start-up is a reload from nothing):
 *
 * udp_relay_prepare binds a socket on every external port of every enabled
 * udp/both forward of rules that udp does not run yet in the same place
 * (a port that an older forward has on the same address is shared, not
 * bound again), but reads none of them. NULL with err (after logging) on
 * failure; nothing changed then.
 *
 * udp_relay_commit, after relay_ctx_set_rules(rules): forwards found again
 * keep their sockets and flows and take the new rule (flows open on a
 * changed forward keep their old target); removed ones drain (their open
 * flows go on, new clients are dropped, and they close with their last
 * flow or at drain_timeout); the prepared ones start reading.
 * udp_relay_abort instead closes what prepare opened.
 */
struct udp_plan *udp_relay_prepare(struct udp_relay *udp, const struct ruleset *rules,
				   char *err, size_t err_len);
void udp_relay_commit(struct udp_relay *udp, struct udp_plan *plan);
void udp_relay_abort(struct udp_plan *plan);

/* Closes the flows on old rules whose drain deadline has passed; how many. */
unsigned udp_relay_drain_due(struct udp_relay *udp, uint64_t now_ms);

/* When flows of a changed forward are due to close (drain_timeout); 0: never. */
uint64_t udp_relay_next_drain_ms(const struct udp_relay *udp);

/* External sockets of the current forwards. */
unsigned udp_relay_socket_count(const struct udp_relay *udp);

/* Closes every socket and frees every flow. */
void udp_relay_free(struct udp_relay *udp);

#endif
