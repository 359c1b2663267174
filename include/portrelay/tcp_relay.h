/*
 * tcp_relay.h - one TCP session: connect to the internal host, relay both
 * directions with half-close, close.
 *
 *   accept -> CONNECTING --ok--> RELAYING --both directions done--> freed
 *                 \--refused / timeout--> client reset, freed
 *
 * A session is created by tcp_session_start and freed in exactly one place,
 * tcp_session_free, which also unlinks it from its context.
 */
#ifndef PORTRELAY_TCP_RELAY_H
#define PORTRELAY_TCP_RELAY_H

#include <stdint.h>

#include "portrelay/net.h"

struct relay_ctx;
struct forward;
struct tcp_session;

/*
 * Takes ownership of client_fd (non-blocking) accepted on external port
 * `port` of fwd, and starts connecting to the matching internal port.
 * Returns -1 when the session could not get its second socket for lack of
 * file descriptors (the client has been reset): the caller, which accepts,
 * should stop accepting for a while rather than reset every client in its
 * backlog.
 */
int tcp_session_start(struct relay_ctx *ctx, const struct forward *fwd, uint16_t port,
		      int client_fd, const struct net_addr *client_addr);

/*
 * An FTP data connection (ftp_helper.h): takes ownership of the accepted
 * socket and connects to the target the helper decided, from its source.
 */
struct ftp_data_channel;
void tcp_session_start_data(struct relay_ctx *ctx, const struct forward *fwd,
			    const struct ftp_data_channel *channel);

/* Frees a session without logging, for shutdown. */
void tcp_session_free(struct tcp_session *session);

/* Frees every session of ctx, for shutdown. */
void tcp_sessions_free_all(struct relay_ctx *ctx);

/*
 * After a reload (relay_ctx_set_rules): sessions of a forward that the new
 * rules keep with the same target (forward_same_target: a new name or new
 * timeouts do not matter) move onto the new forward; those of a removed or
 * retargeted forward stay on their old one.
 */
void tcp_sessions_follow_rules(struct relay_ctx *ctx);

/*
 * Closes (resets) the sessions on old rules whose drain deadline has
 * passed; returns how many.
 */
unsigned tcp_sessions_drain_due(struct relay_ctx *ctx, uint64_t now_ms);

#endif
